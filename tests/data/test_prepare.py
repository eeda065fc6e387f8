"""``python -m mmjax.prepare``: every input format, image conversions and skips, the split, resuming.

All inputs are written here with Pillow into ``tmp_path`` (tiny images, a few dozen rows); nothing is
downloaded. Most runs call ``prepare.main`` in-process; the resume test runs the real command in a
subprocess and kills it with SIGKILL while it is inside its second work unit (blocked on a FIFO).
"""

import collections
import contextlib
import glob
import io
import json
import os
import pickle
import signal
import subprocess
import sys
import tarfile
import time

import grain
import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

import mmjax
from mmjax import prepare

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(mmjax.__file__)))
MAX_SIDE = 64


def run(*args) -> tuple[int, str]:
    """``prepare.main(args)`` in-process: its exit code and what it logged."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = prepare.main([str(a) for a in args])
    return code, err.getvalue()


def cli(*args, **kwargs) -> subprocess.Popen:
    """The real command line, in its own process group (so a kill reaches any worker too)."""
    env = {**os.environ, "PYTHONPATH": REPO_ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.Popen(
        [sys.executable, "-m", "mmjax.prepare", *map(str, args)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        **kwargs,
    )


def records(out, split) -> list[tuple]:
    """``(key, captions, label)`` of every record of ``split``, in order."""
    return [
        (r["key"].decode(), tuple(c.decode() for c in r["captions"]), int(r["label"]))
        for r in prepare.open_prepared(str(out), split)
    ]


def all_records(out) -> dict:
    return {split: records(out, split) for split in prepare.SPLITS}


def shard_bytes(out) -> dict:
    return {
        os.path.basename(p): open(p, "rb").read() for p in sorted(glob.glob(os.path.join(out, "prepared-*")))
    }


def decode(image_bytes) -> np.ndarray:
    im = Image.open(io.BytesIO(image_bytes))
    assert im.mode == "RGB"
    array = np.asarray(im)
    assert array.dtype == np.uint8 and array.ndim == 3 and array.shape[2] == 3
    return array


def jpeg_bytes(im, **kwargs) -> bytes:
    buffer = io.BytesIO()
    im.save(buffer, format="JPEG", quality=95, **kwargs)
    return buffer.getvalue()


def png_bytes(im, **kwargs) -> bytes:
    buffer = io.BytesIO()
    im.save(buffer, format="PNG", **kwargs)
    return buffer.getvalue()


def near(pixel, rgb, tol=12) -> bool:
    return bool(np.all(np.abs(pixel.astype(int) - np.array(rgb)) <= tol))


def small_image(seed: int, size=(16, 16)) -> Image.Image:
    return Image.new("RGB", size, ((seed * 37) % 256, (seed * 91) % 256, (seed * 53) % 256))


# --------------------------------------------------------------------------------------------------------
# The image matrix (csv): conversions and skips


def write_matrix_images(folder) -> dict[str, bytes]:
    """Every image case: name -> file bytes."""
    rgba = Image.new("RGBA", (24, 24), (0, 0, 0, 0))
    rgba.paste((0, 0, 255, 255), (12, 0, 24, 24))  # left half fully transparent, right half opaque blue
    palette = Image.new("P", (24, 24), 0)
    palette.putpalette([0, 0, 0, 0, 255, 0] + [0, 0, 0] * 254)
    palette.paste(1, (12, 0, 24, 24))  # index 0 (transparent) on the left, green on the right
    i16 = np.zeros((16, 16), np.uint16)
    i16[:8] = 65535
    i16_image = Image.fromarray(i16)
    assert i16_image.mode == "I;16"
    rotated = Image.new("RGB", (40, 20), (255, 0, 0))
    rotated.paste((0, 0, 255), (0, 0, 10, 10))  # a blue top-left corner
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    full = jpeg_bytes(noise)
    files = {
        "rgb.jpg": jpeg_bytes(Image.new("RGB", (32, 24), (10, 200, 30))),
        "cmyk.jpg": jpeg_bytes(Image.new("CMYK", (24, 24), (0, 255, 255, 0))),
        "grey.png": png_bytes(Image.new("L", (20, 16), 100)),
        "la.png": png_bytes(Image.new("LA", (16, 16), (50, 0))),
        "rgba.png": png_bytes(rgba),
        "palette.png": png_bytes(palette, transparency=0),
        "i16.png": png_bytes(i16_image),
        "rotated.jpg": jpeg_bytes(rotated, exif=exif.tobytes()),
        "big.png": png_bytes(Image.new("RGB", (200, 100), (200, 100, 50))),
        "big.jpg": jpeg_bytes(Image.new("RGB", (160, 130), (30, 60, 220))),  # decoded at a reduced scale
        "copy1.jpg": jpeg_bytes(small_image(1)),
        "copy2.jpg": jpeg_bytes(small_image(2)),
        "truncated.jpg": full[: len(full) * 6 // 10],
        "garbage.jpg": bytes(np.random.default_rng(1).integers(0, 256, 500, dtype=np.uint8)),
    }
    os.makedirs(folder, exist_ok=True)
    for name, data in files.items():
        with open(os.path.join(folder, name), "wb") as f:
            f.write(data)
    return files


@pytest.fixture(scope="module")
def matrix(tmp_path_factory):
    """A csv over every image case, prepared once: ``(out, expected captions by key, log)``."""
    root = tmp_path_factory.mktemp("matrix")
    write_matrix_images(root / "images")
    big = str(root / "images" / "big.png")  # an absolute path
    captions = {
        "images/rgb.jpg": "a green square",
        "images/cmyk.jpg": "cmyk, from print",
        "images/grey.png": "grey",
        "images/la.png": "grey with alpha",
        "images/rgba.png": "crème brûlée, half transparent",
        "images/palette.png": 'a "palette" image',
        "images/i16.png": "sixteen bits",
        "images/rotated.jpg": "rotated by exif",
        big: "too big",
        "images/big.jpg": "big jpeg",
    }
    lines = [b"filepath,title,extra"]
    lines += [f'{k},"{v.replace(chr(34), chr(34) * 2)}",x'.encode() for k, v in captions.items()]
    lines += [
        b"images/truncated.jpg,truncated,x",
        b"images/garbage.jpg,garbage,x",
        b"images/missing.jpg,nowhere,x",
        b"images/copy1.jpg,   ,x",  # blank caption
        b"images/copy2.jpg,caf\xe9 au lait \xff,x",  # not UTF-8
    ]
    (root / "pairs.csv").write_bytes(b"\n".join(lines) + b"\n")
    out = root / "out"
    args = ["--format=csv", f"--input={root / 'pairs.csv'}", f"--output={out}", f"--max-side={MAX_SIDE}"]
    code, log = run(*args, "--workers=1", "--shard-size=4", "--validation-fraction=0.3")
    assert code == 0, log
    return out, captions, log


def test_matrix_summary_counts_every_skip_reason(matrix):
    out, captions, log = matrix
    summary = prepare.read_summary(str(out))
    assert summary["skipped"] == {
        "empty_caption": 1,
        "missing_file": 1,
        "undecodable_image": 2,
        "undecodable_text": 1,
    }
    assert sum(summary["written"].values()) == len(captions) == 10
    assert summary["rows"] == 15 and summary["format"] == "csv" and "class_names" not in summary
    assert 0 < summary["written"]["validation"] < 10  # both splits are exercised
    # The log names the offenders with their reason.
    assert "skipped (undecodable_image): line 12: images/truncated.jpg" in log
    assert "skipped (undecodable_image): line 13: images/garbage.jpg" in log
    assert "skipped (missing_file): line 14: images/missing.jpg" in log
    assert "skipped (empty_caption): line 15: images/copy1.jpg" in log
    assert "skipped (undecodable_text): line 16: images/copy2.jpg" in log


def test_matrix_records_round_trip_and_split_by_key_hash(matrix):
    out, captions, _ = matrix
    seen = {}
    for split in prepare.SPLITS:
        for key, caps, label in records(out, split):
            assert prepare.split_for_key(key, 0.3) == split
            assert label == -1
            seen[key] = caps[0]
    assert seen == captions
    # Input order within each split.
    order = [k for k in captions if k in seen]
    assert [k for k, _, _ in all_records(out)["train"]] == [
        k for k in order if prepare.split_for_key(k, 0.3) == "train"
    ]


def test_matrix_images_are_converted_to_rgb(matrix):
    out, captions, _ = matrix
    images = {}
    for split in prepare.SPLITS:
        for r in prepare.open_prepared(str(out), split):
            images[r["key"].decode()] = decode(r["image"])
    assert images.keys() == captions.keys()
    assert images["images/rgb.jpg"].shape == (24, 32, 3)  # small images are not upscaled
    assert near(images["images/rgb.jpg"][12, 16], (10, 200, 30))
    assert near(images["images/cmyk.jpg"][12, 12], (255, 0, 0), tol=20)
    assert near(images["images/grey.png"][8, 10], (100, 100, 100))
    assert near(images["images/la.png"][8, 8], (255, 255, 255))  # fully transparent: white
    assert near(images["images/rgba.png"][12, 2], (255, 255, 255)) and near(
        images["images/rgba.png"][12, 20], (0, 0, 255)
    )
    assert near(images["images/palette.png"][12, 2], (255, 255, 255))
    assert near(images["images/palette.png"][12, 20], (0, 255, 0))
    assert near(images["images/i16.png"][2, 2], (255, 255, 255)) and near(
        images["images/i16.png"][13, 2], (0, 0, 0)
    )
    rotated = images["images/rotated.jpg"]
    assert rotated.shape == (40, 20, 3)  # EXIF orientation applied: 40x20 landscape -> 20x40 portrait
    assert near(rotated[2, 17], (0, 0, 255), tol=40) and near(rotated[37, 2], (255, 0, 0), tol=40)
    big = images[next(k for k in captions if k.endswith("big.png"))]
    assert big.shape == (MAX_SIDE // 2, MAX_SIDE, 3)  # longest side = max-side, aspect kept
    assert images["images/big.jpg"].shape == (52, MAX_SIDE, 3)  # 160x130 -> 64x52
    assert near(images["images/big.jpg"][26, 32], (30, 60, 220))


def test_matrix_reads_through_tfds_grain_and_open_prepared(matrix):
    out, _, _ = matrix
    builder = tfds.builder_from_directory(str(out))
    for split in prepare.SPLITS:
        source = prepare.open_prepared(str(out), split)
        via_tfds = builder.as_data_source(split)
        assert len(via_tfds) == len(source) == builder.info.splits[split].num_examples
        shards = sorted(glob.glob(str(out / f"prepared-{split}.array_record-*")))
        via_grain = grain.sources.ArrayRecordDataSource(shards)
        assert len(via_grain) == len(source)
        for i in range(len(source)):
            record = source[i]
            assert record["id"] == i
            assert set(record) == {"image", "captions", "label", "key", "id"}
            raw = builder.info.features.deserialize_example_np(via_grain[i])
            for r in (via_tfds[i], raw):
                assert r["key"] == record["key"] and r["image"] == record["image"]
                assert list(r["captions"]) == list(record["captions"]) and r["label"] == record["label"]
    train = prepare.open_prepared(str(out), "train")
    first = grain.MapDataset.source(train)[0]
    assert first["key"] == train[0]["key"] and first["id"] == 0
    assert pickle.loads(pickle.dumps(train))[-1]["key"] == train[len(train) - 1]["key"]
    with pytest.raises(IndexError):
        train[len(train)]
    with pytest.raises(ValueError, match="no split 'test'"):
        prepare.open_prepared(str(out), "test")


def test_finished_dataset_is_left_untouched(matrix):
    out, _, _ = matrix
    summary = prepare.read_summary(str(out))
    before = mtimes(out)
    code, log = run(*cli_args_of(summary, out), "--workers=2")
    assert code == 0 and "already complete" in log
    assert mtimes(out) == before


def test_open_prepared_rejects_a_folder_that_is_not_prepared(tmp_path):
    with pytest.raises(
        ValueError, match=r"is not a prepared dataset \(no summary.json\); run python -m mmjax.prepare"
    ):
        prepare.open_prepared(str(tmp_path), "train")


# --------------------------------------------------------------------------------------------------------
# Other table formats


def test_tsv_with_custom_columns_and_relative_paths(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "meta").mkdir()
    for i in range(3):
        small_image(i).save(tmp_path / "images" / f"{i}.png")
    rows = ["id\tpath\tcaption"] + [f"{i}\t../images/{i}.png\tpicture {i}, with a comma" for i in range(3)]
    (tmp_path / "meta" / "pairs.tsv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "out"
    base = [f"--input={tmp_path / 'meta' / 'pairs.tsv'}", f"--output={out}", "--workers=1"]
    code, log = run("--format=csv", *base, "--image-key=path", "--caption-key=caption", "--image-format=png")
    assert code == 0, log
    got = sorted(r for split in prepare.SPLITS for r in records(out, split))
    assert got == [(f"../images/{i}.png", (f"picture {i}, with a comma",), -1) for i in range(3)]
    record = next(r for split in prepare.SPLITS for r in prepare.open_prepared(str(out), split))
    assert record["image"].startswith(b"\x89PNG")
    # A semicolon-separated .csv: the delimiter is sniffed from the header.
    rows = ["path;caption"] + [f"images/{i}.png;semi {i}" for i in range(3)]
    (tmp_path / "semi.csv").write_text("\n".join(rows) + "\n")
    out2 = tmp_path / "out2"
    code, log = run(
        "--format=csv",
        f"--input={tmp_path / 'semi.csv'}",
        f"--output={out2}",
        "--workers=1",
        "--image-key=path",
        "--caption-key=caption",
        "--validation-fraction=0",
    )
    assert code == 0, log
    assert records(out2, "train") == [(f"images/{i}.png", (f"semi {i}",), -1) for i in range(3)]
    # --validation-fraction=0: an empty validation split, which the TFDS metadata leaves out.
    assert len(prepare.open_prepared(str(out2), "validation")) == 0
    assert list(tfds.builder_from_directory(str(out2)).info.splits) == ["train"]
    assert prepare.read_summary(str(out2))["shards"] == {"train": 1, "validation": 0}


def test_jsonl_rows_and_skips(tmp_path):
    (tmp_path / "img").mkdir()
    for i in range(6):
        small_image(i).save(tmp_path / "img" / f"{i}.jpg")
    lines = [
        json.dumps({"image": "img/0.jpg", "caption": "zero", "extra": 1}).encode(),
        json.dumps({"image": "img/1.jpg", "caption": ["one", "  ", "uno "]}).encode(),
        json.dumps({"image": "img/2.jpg", "caption": ""}).encode(),
        b'{"image": "img/3.jpg", "caption": "bad \xff\xfe bytes"}',
        b"this is not json",
        json.dumps({"image": "img/4.jpg"}).encode(),
        b"",
        json.dumps({"image": "img/5.jpg", "caption": "f\u00fcnf \u2605"}, ensure_ascii=False).encode(),
        json.dumps({"image": "img/absent.jpg", "caption": "absent"}).encode(),
    ]
    (tmp_path / "pairs.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    out = tmp_path / "out"
    code, log = run(
        "--format=jsonl",
        f"--input={tmp_path / 'pairs.jsonl'}",
        f"--output={out}",
        "--workers=1",
        "--image-key=image",
        "--caption-key=caption",
        "--shard-size=3",
    )
    assert code == 0, log
    summary = prepare.read_summary(str(out))
    assert summary["skipped"] == {
        "empty_caption": 1,
        "undecodable_text": 1,
        "malformed_row": 1,
        "no_caption": 1,
        "missing_file": 1,
    }
    assert summary["units"] == 3 and summary["rows"] == 8
    got = sorted(r for split in prepare.SPLITS for r in records(out, split))
    assert got == [
        ("img/0.jpg", ("zero",), -1),
        ("img/1.jpg", ("one", "uno"), -1),
        ("img/5.jpg", ("f\u00fcnf \u2605",), -1),
    ]


def one_line_error(log: str, *fragments: str) -> None:
    lines = log.strip().splitlines()
    assert len(lines) == 1, log
    for fragment in fragments:
        assert fragment in lines[0], log


def test_missing_column_or_key_is_one_clear_error(tmp_path):
    (tmp_path / "a.csv").write_text("path,text\nx.jpg,hello\n")
    code, log = run("--format=csv", f"--input={tmp_path / 'a.csv'}", f"--output={tmp_path / 'o1'}")
    assert code == 2
    one_line_error(log, "'filepath'", "path, text", "--image-key")
    code, log = run(
        "--format=csv", f"--input={tmp_path / 'a.csv'}", f"--output={tmp_path / 'o1'}", "--image-key=path"
    )
    assert code == 2
    one_line_error(log, "'title'", "path, text", "--caption-key")
    (tmp_path / "a.jsonl").write_text('{"url": "x.jpg", "caption": "c"}\n')
    code, log = run("--format=jsonl", f"--input={tmp_path / 'a.jsonl'}", f"--output={tmp_path / 'o2'}")
    assert code == 2
    one_line_error(log, "'filepath'", "url, caption", "--image-key")
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o2").exists()


@pytest.mark.parametrize(
    "flags, fragment",
    [
        (["--format=xml"], "invalid choice: 'xml'"),
        (["--validation-fraction=2"], "between 0 and 1"),
        (["--workers=0"], "at least 1"),
        (["--max-side=-3"], "at least 1"),
        (["--input=/nonexistent/pairs.csv"], "does not exist"),
        (["--bogus=1"], "unrecognized arguments"),
    ],
)
def test_bad_flags_are_one_clear_error_line(tmp_path, flags, fragment):
    (tmp_path / "a.csv").write_text("filepath,title\n")
    base = {
        "--format": "--format=csv",
        "--input": f"--input={tmp_path / 'a.csv'}",
        "--output": f"--output={tmp_path}/o",
    }
    for flag in flags:
        base[flag.split("=")[0]] = flag
    code, log = run(*base.values())
    assert code == 2
    one_line_error(log, fragment, "--help")


def test_help_has_an_example_per_format(capsys):
    with pytest.raises(SystemExit) as exit_info:
        prepare.main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for example in (
        "--format=csv",
        "--format=tsv",
        "--format=jsonl",
        "--format=webdataset",
        "--format=imagefolder",
    ):
        assert f"python -m mmjax.prepare {example}" in text
    assert "{00000..00009}" in text and "--validation-fraction" in text and "--shard-size" in text


# --------------------------------------------------------------------------------------------------------
# webdataset and imagefolder


def write_tar(path, members: list[tuple[str, bytes]]) -> None:
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def webp_bytes(im) -> bytes:
    buffer = io.BytesIO()
    im.save(buffer, format="WEBP", lossless=True)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    folder = tmp_path_factory.mktemp("wds") / "shards"
    folder.mkdir()
    write_tar(
        folder / "00000.tar",
        [
            ("000000.jpg", jpeg_bytes(small_image(0))),
            ("000000.txt", b"a txt caption\n"),
            ("000001.png", png_bytes(small_image(1))),
            ("000001.txt", b"second one"),
            ("000002.jpg", jpeg_bytes(small_image(2))),  # no caption
            ("000003.txt", b"a caption without an image"),
            ("000004.jpg", b"not an image at all"),
            ("000004.txt", b"garbage"),
        ],
    )
    write_tar(
        folder / "00001.tar",
        [
            ("000005.webp", webp_bytes(small_image(5))),
            ("000005.json", json.dumps({"caption": "from json", "url": "http://x"}).encode()),
            ("sub/000006.jpg", jpeg_bytes(small_image(6))),
            ("sub/000006.json", json.dumps({"text": "the text key"}).encode()),
            ("000007.jpeg", jpeg_bytes(small_image(7))),
            ("000007.json", json.dumps({"title": "  a title  "}).encode()),
            ("000007.cls", b"3\n"),
            ("000008.jpg", jpeg_bytes(small_image(8))),
            ("000008.txt", b"bad \xc3\x28 utf8"),
            ("000009.jpg", jpeg_bytes(small_image(9))),
            ("000009.txt", b"   "),
        ],
    )
    (folder / "README").write_text("not a shard")
    return folder


WDS_EXPECTED = [
    ("000000", ("a txt caption",), -1),
    ("000001", ("second one",), -1),
    ("000005", ("from json",), -1),
    ("sub/000006", ("the text key",), -1),
    ("000007", ("a title",), 3),
]


def test_webdataset_brace_pattern_and_folder(shards, tmp_path):
    results = {}
    for name, spec in (("brace", f"{shards}/{{00000..00001}}.tar"), ("folder", str(shards))):
        out = tmp_path / name
        code, log = run("--format=webdataset", f"--input={spec}", f"--output={out}", "--workers=1")
        assert code == 0, log
        summary = prepare.read_summary(str(out))
        assert summary["skipped"] == {
            "no_caption": 1,
            "no_image": 1,
            "undecodable_image": 1,
            "undecodable_text": 1,
            "empty_caption": 1,
        }
        assert summary["units"] == 2 and summary["rows"] == 10
        results[name] = all_records(out)
        assert "skipped (no_caption): 00000.tar:000002" in log
        assert shard_bytes(out)
    assert results["brace"] == results["folder"]
    assert sorted(sum(results["brace"].values(), [])) == sorted(WDS_EXPECTED)
    # One shard file.
    out = tmp_path / "single"
    code, log = run(
        "--format=webdataset", f"--input={shards / '00001.tar'}", f"--output={out}", "--workers=1"
    )
    assert code == 0, log
    assert sum(prepare.read_summary(str(out))["written"].values()) == 3
    # A missing shard of a pattern.
    code, log = run(
        "--format=webdataset", f"--input={shards}/{{00000..00002}}.tar", f"--output={tmp_path / 'x'}"
    )
    assert code == 2
    one_line_error(log, "00002.tar does not exist")


def test_imagefolder_labels_and_class_names(tmp_path):
    root = tmp_path / "pets"
    layout = {
        "golden_retriever": ["b.jpg", "a.png"],
        "tabby-cat": ["x.jpg", "nested/y.jpg"],
        "zebra": ["z.jpg"],
    }
    for i, (name, files) in enumerate(layout.items()):
        for j, file in enumerate(files):
            (root / name / file).parent.mkdir(parents=True, exist_ok=True)
            small_image(10 * i + j).save(root / name / file)
    (root / "zebra" / "notes.txt").write_text("not an image")
    (root / "zebra" / "broken.jpg").write_bytes(b"\xff\xd8\xff broken")
    (root / "stray.jpg").write_bytes(jpeg_bytes(small_image(99)))  # not in a class folder
    out = tmp_path / "out"
    code, log = run(
        "--format=imagefolder", f"--input={root}", f"--output={out}", "--workers=1", "--shard-size=2"
    )
    assert code == 0, log
    summary = prepare.read_summary(str(out))
    assert summary["class_names"] == ["golden_retriever", "tabby-cat", "zebra"]
    assert summary["skipped"] == {"undecodable_image": 1}
    got = sorted(r for s in prepare.SPLITS for r in records(out, s))
    assert got == [
        ("golden_retriever/a.png", ("golden retriever",), 0),
        ("golden_retriever/b.jpg", ("golden retriever",), 0),
        ("tabby-cat/nested/y.jpg", ("tabby cat",), 1),
        ("tabby-cat/x.jpg", ("tabby cat",), 1),
        ("zebra/z.jpg", ("zebra",), 2),
    ]


# --------------------------------------------------------------------------------------------------------
# Determinism: the split, worker counts, shard sizes


def write_table(root, n: int) -> str:
    (root / "images").mkdir(exist_ok=True)
    for i in range(n):
        if not (root / "images" / f"{i:02d}.png").exists():
            small_image(i).save(root / "images" / f"{i:02d}.png")
    path = root / "pairs.csv"
    path.write_text(
        "filepath,title\n" + "".join(f"images/{i:02d}.png,caption number {i}\n" for i in range(n))
    )
    return str(path)


def test_split_and_bytes_do_not_depend_on_workers_or_shard_size(tmp_path):
    table = write_table(tmp_path, 20)
    outputs = {}
    for shard_size, workers in ((2, 1), (5, 1), (2, 2)):
        out = tmp_path / f"out_{shard_size}_{workers}"
        code, log = run(
            "--format=csv",
            f"--input={table}",
            f"--output={out}",
            f"--shard-size={shard_size}",
            f"--workers={workers}",
            "--validation-fraction=0.25",
        )
        assert code == 0, log
        outputs[shard_size, workers] = out
    results = {k: all_records(out) for k, out in outputs.items()}
    assert results[2, 1] == results[5, 1] == results[2, 2]
    validation = [key for key, _, _ in results[2, 1]["validation"]]
    assert validation == [
        f"images/{i:02d}.png"
        for i in range(20)
        if prepare.split_for_key(f"images/{i:02d}.png", 0.25) == "validation"
    ]
    assert 0 < len(validation) < 20
    assert shard_bytes(outputs[2, 1]) == shard_bytes(outputs[2, 2])
    assert len(shard_bytes(outputs[2, 1])) > len(shard_bytes(outputs[5, 1]))
    summaries = [prepare.read_summary(str(outputs[k])) for k in ((2, 1), (2, 2))]
    assert summaries[0] == summaries[1]


# --------------------------------------------------------------------------------------------------------
# Resuming


def mtimes(folder) -> dict:
    found = {}
    for dirpath, _, filenames in os.walk(folder):
        for name in filenames:
            stat = os.stat(os.path.join(dirpath, name))
            found[os.path.relpath(os.path.join(dirpath, name), folder)] = (stat.st_mtime_ns, stat.st_size)
    return found


def cli_args_of(summary: dict, out) -> list[str]:
    """The flags that reproduce a finished run (from its recorded options)."""
    o = summary["options"]
    flags = ["format", "input", "image_key", "caption_key", "validation_fraction", "max_side", "shard_size"]
    return [f"--{k.replace('_', '-')}={o[k]}" for k in flags + ["image_format"]] + [f"--output={out}"]


def wait_for(condition, proc, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            raise AssertionError(f"the run ended before {what}: {proc.communicate()}")
        if time.monotonic() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def test_resume_after_sigkill_and_after_a_simulated_crash(tmp_path):
    table = write_table(tmp_path, 6)
    slow = tmp_path / "images" / "03.png"  # the second row of the second unit (shard size 2)
    image = slow.read_bytes()
    slow.unlink()
    os.mkfifo(slow)  # reading it blocks: the run is stuck inside unit 1 until it is killed
    out = tmp_path / "out"
    args = [
        "--format=csv",
        f"--input={table}",
        f"--output={out}",
        "--shard-size=2",
        "--validation-fraction=0.5",
    ]
    progress = out / prepare.PROGRESS_DIR
    proc = cli(*args, "--workers=1")
    try:
        wait_for(lambda: (progress / "unit-00000.json").exists(), proc, "the first unit's marker")
        wait_for(
            lambda: glob.glob(str(progress / "unit-00001-*.tmp")), proc, "the second unit's temporary shard"
        )
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    assert not (progress / "unit-00001.json").exists() and not (out / "summary.json").exists()
    with pytest.raises(ValueError, match="unfinished run"):
        prepare.open_prepared(str(out), "train")
    slow.unlink()
    slow.write_bytes(image)

    # Other options on the partial output: refused, through the real command line.
    refused = cli(*args, "--max-side=32")
    _, err = refused.communicate(timeout=120)
    assert refused.returncode == 2
    one_line_error(err, "partial run with other input or options", "max_side: 512 -> 32")

    code, log = run(*args, "--workers=1")
    assert code == 0, log
    assert "3 units, 1 already done" in log
    assert not glob.glob(str(progress / "*.tmp")) and not glob.glob(str(out / "*.tmp"))
    reference = tmp_path / "reference"
    code, log = run(*args[:2], f"--output={reference}", *args[3:], "--workers=1")
    assert code == 0, log
    expected = all_records(reference)
    assert expected["train"] and expected["validation"]
    assert all_records(out) == expected  # in order
    for split in prepare.SPLITS:
        assert collections.Counter(records(out, split)) == collections.Counter(expected[split])
    assert shard_bytes(out) == shard_bytes(reference)

    # A crash simulated by hand: unit 1's marker and shards gone, stray temporary files left behind.
    (out / "summary.json").unlink()
    (progress / "unit-00001.json").unlink()
    for path in glob.glob(str(progress / "unit-00001-*.array_record")):
        os.remove(path)
    (progress / "unit-00002-train.array_record.tmp").write_bytes(b"half written")
    (out / "prepared-train.array_record-00000-of-00003.tmp").write_bytes(b"half linked")
    code, log = run(*args, "--workers=2")
    assert code == 0, log
    assert "3 units, 2 already done" in log
    assert all_records(out) == expected and shard_bytes(out) == shard_bytes(reference)
    assert not glob.glob(str(progress / "*.tmp")) and not glob.glob(str(out / "*.tmp"))

    # Finished: a rerun changes nothing.
    before = mtimes(out)
    code, log = run(*args, "--workers=1")
    assert code == 0 and "already complete" in log
    assert mtimes(out) == before
    code, log = run(*args, "--validation-fraction=0.1")
    assert code == 2
    one_line_error(log, "already holds a dataset prepared with other input or options", "validation_fraction")
