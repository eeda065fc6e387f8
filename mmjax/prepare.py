"""``python -m mmjax.prepare``: turn your own image-caption data into an ArrayRecord dataset.

Reads one of four input layouts and writes a TFDS-format ArrayRecord dataset (splits ``train`` and
``validation``) that TFDS, Grain and ``open_prepared`` read without TensorFlow:

* ``csv`` / ``tsv``: a table with a header; ``--image-key`` (default ``filepath``) and ``--caption-key``
  (default ``title``) name the image-path and caption columns (open_clip's convention). Image paths are
  relative to the table's folder, or absolute.
* ``jsonl``: one JSON object per line, keyed like the table.
* ``webdataset``: tar shards of ``KEY.jpg|jpeg|png|webp`` with ``KEY.txt`` or ``KEY.json`` captions (and an
  optional ``KEY.cls`` integer label); ``--input`` is one shard, a brace pattern
  (``shards/{00000..00009}.tar``), a glob or a folder of ``*.tar``.
* ``imagefolder``: one subfolder per class; the caption is the class name with ``_``/``-`` as spaces.

Every record holds ``image`` (the re-encoded RGB image's bytes, JPEG or PNG), ``captions`` (a sequence of
texts), ``label`` (int64, -1 without one) and ``key`` (the original path or key). A record's split depends
only on its key (``split_for_key``). Bad rows (missing or undecodable files, blank or undecodable captions)
are skipped and counted per reason in ``summary.json``; unusual image modes, EXIF rotations and large
images are converted, never skipped.

The work is cut into units (``--shard-size`` rows, or one input tar); each unit writes its own shards and a
done-marker under ``OUTPUT/.progress``, so a killed run resumes where it stopped, and the result does not
depend on ``--workers``. ``summary.json`` is written last: its presence marks a finished dataset. See
``docs/prepare.md``.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import contextlib
import csv
import glob
import hashlib
import io
import json
import math
import multiprocessing
import os
import re
import shutil
import sys
import tarfile
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

DATASET_NAME = "prepared"
SPLITS = ("train", "validation")
FORMATS = ("csv", "tsv", "jsonl", "webdataset", "imagefolder")
IMAGE_FORMATS = ("jpeg", "png")
SUMMARY_FILE = "summary.json"
PROGRESS_DIR = ".progress"
OPTIONS_FILE = "options.json"
# Bump when the records written for the same input and options change, so stale partial runs are refused.
LAYOUT_VERSION = 1
JPEG_QUALITY = 95
ARRAY_RECORD_OPTIONS = "group_size:1"  # what TFDS writes: one record per chunk, for fast random access
WEBDATASET_IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
IMAGEFOLDER_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})
DEFAULT_CAPTION_KEYS = ("caption", "text", "title")  # webdataset json, when --caption-key is not given
MAX_OFFENDERS = 5  # per skip reason, in the log and in summary.json

EXAMPLES = """\
examples:
  csv (or tsv): a header row; image paths relative to the table's folder (or absolute)
      data/train.csv          filepath,title
                              images/0001.jpg,a dog on a beach
      python -m mmjax.prepare --format=csv --input=data/train.csv --output=out/mydata
      python -m mmjax.prepare --format=tsv --input=data/cc.tsv --image-key=path --caption-key=caption \\
          --output=out/cc

  jsonl: one object per line
      data/pairs.jsonl        {"image": "images/0001.jpg", "caption": "a dog on a beach"}
      python -m mmjax.prepare --format=jsonl --input=data/pairs.jsonl --image-key=image \\
          --caption-key=caption --output=out/mydata

  webdataset: tar shards of KEY.jpg|jpeg|png|webp + KEY.txt or KEY.json (LAION / CC layout)
      shards/00000.tar        000000001.jpg 000000001.txt 000000002.jpg 000000002.json ...
      python -m mmjax.prepare --format=webdataset --input='shards/{00000..00009}.tar' --output=out/laion
      python -m mmjax.prepare --format=webdataset --input=shards/ --output=out/laion

  imagefolder: one subfolder per class; caption = class name with _ and - as spaces
      pets/golden_retriever/1.jpg  pets/tabby-cat/2.png ...
      python -m mmjax.prepare --format=imagefolder --input=pets --output=out/pets

A killed run resumes when rerun with the same command; a finished one is left as it is.
Read the result with mmjax.prepare.open_prepared(DIR, "train") or tfds.builder_from_directory(DIR).
"""


class PrepareError(Exception):
    """A problem with the input, the options or the output directory: reported as one line."""

    def __init__(self, message: str, exit_code: int = 2):
        super().__init__(message)
        self.exit_code = exit_code


class _Skip(Exception):
    """A row that cannot become a record, with the reason it is counted under."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


# --------------------------------------------------------------------------------------------------------
# Records


def record_features():
    """The ``tfds.features.FeaturesDict`` of a record: ``image``, ``captions``, ``label``, ``key``."""
    import tensorflow_datasets as tfds

    return tfds.features.FeaturesDict(
        {
            # TFDS's Image feature needs TensorFlow to encode; the encoded bytes are stored as they are.
            "image": tfds.features.Tensor(shape=(), dtype=np.object_),
            "captions": tfds.features.Sequence(tfds.features.Text()),
            "label": np.int64,
            "key": tfds.features.Text(),
        }
    )


class RecordSerializer:
    """Serializes record dicts as TFDS does, but deterministically.

    TFDS's ``FeaturesDict.serialize_example`` leaves the order of the tf.Example's feature map to the
    protobuf runtime, which differs between processes; sorted map entries make the bytes independent of
    the process (and so of ``--workers``).
    """

    def __init__(self):
        from tensorflow_datasets.core import example_serializer

        self.features = record_features()
        self._serializer = example_serializer.ExampleSerializer(self.features.get_serialized_info())

    def __call__(self, record: dict) -> bytes:
        example = self._serializer.get_tf_example(self.features.encode_example(record))
        return example.SerializeToString(deterministic=True)


def split_for_key(key: str, validation_fraction: float) -> str:
    """The split of the record with ``key``: a stable hash, independent of order, workers and reruns."""
    digest = hashlib.sha1(key.encode("utf-8", "surrogatepass")).digest()
    position = int.from_bytes(digest[:8], "big") / 2.0**64
    return "validation" if position < validation_fraction else "train"


def _has_surrogates(text: str) -> bool:
    # Bytes that are not UTF-8 come through the "surrogateescape" decoding as lone surrogates.
    return any("\ud800" <= ch <= "\udfff" for ch in text)


def _printable(text: str) -> str:
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _clean_captions(value: Any) -> list[str]:
    """The stripped, non-blank captions of ``value`` (a string or a list of strings); raises ``_Skip``."""
    if value is None:
        raise _Skip("no_caption")
    values = value if isinstance(value, list) else [value]
    if not all(isinstance(v, str) for v in values):
        raise _Skip("malformed_row")
    if any(_has_surrogates(v) for v in values):
        raise _Skip("undecodable_text")
    captions = [v.strip() for v in values if v.strip()]
    if not captions:
        raise _Skip("empty_caption")
    return captions


# --------------------------------------------------------------------------------------------------------
# Images


def to_rgb(im):
    """``im`` as an 8-bit RGB image: transparency composited on white, 16-bit and float rescaled."""
    from PIL import Image

    if im.mode.startswith("I;16") or im.mode == "I":
        # 16-bit greyscale (PNG, TIFF): Pillow's own conversion to L clips at 255 instead of rescaling.
        values = np.asarray(im).astype(np.int64)
        im = Image.fromarray(((np.clip(values, 0, 65535) + 128) // 257).astype(np.uint8), "L")
    elif im.mode == "F":
        values = np.nan_to_num(np.asarray(im, dtype=np.float64))
        scale = 255.0 if values.size and values.max() <= 1.0 else 1.0
        im = Image.fromarray(np.clip(np.rint(values * scale), 0, 255).astype(np.uint8), "L")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info:
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return im if im.mode == "RGB" else im.convert("RGB")


def encode_image(
    data: bytes, max_side: int = 512, image_format: str = "jpeg"
) -> tuple[bytes, tuple[int, int]]:
    """Decode ``data``, convert it to RGB, downscale it to ``max_side`` and re-encode it.

    Returns the encoded bytes and the stored ``(width, height)``. Raises ``_Skip("undecodable_image")`` for
    data Pillow cannot fully decode (truncated files included), ``_Skip("image_too_large")`` for
    decompression bombs.
    """
    from PIL import Image, ImageOps

    try:
        im = Image.open(io.BytesIO(data))
        if max_side and im.format == "JPEG" and min(im.size) >= 2 * max_side:
            # Decode big JPEGs at a reduced DCT scale (still at least max_side on each side): much faster.
            im.draft(im.mode, (max_side, max_side))
        im.load()  # decodes everything: truncated or corrupt data raises here
    except Image.DecompressionBombError:
        raise _Skip("image_too_large") from None
    except Exception:  # Pillow raises many types (OSError, SyntaxError, ValueError, ...) for bad data
        raise _Skip("undecodable_image") from None
    try:
        im = ImageOps.exif_transpose(im)
    except Exception:  # malformed EXIF: keep the pixels as stored
        pass
    try:
        im = to_rgb(im)
    except ValueError:  # a mode Pillow cannot convert (e.g. LAB)
        raise _Skip("unsupported_image_mode") from None
    width, height = im.size
    if max_side and max(width, height) > max_side:
        if width >= height:
            size = (max_side, max(1, round(height * max_side / width)))
        else:
            size = (max(1, round(width * max_side / height)), max_side)
        im = im.resize(size, Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    if image_format == "png":
        im.save(buffer, format="PNG", compress_level=6)
    else:
        im.save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue(), im.size


def _read_image_file(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except (FileNotFoundError, NotADirectoryError):
        raise _Skip("missing_file") from None
    except OSError:
        raise _Skip("unreadable_file") from None


# --------------------------------------------------------------------------------------------------------
# Input planning: the units of work, computed identically on every run


def _resolve(base_dir: str, path: str) -> str:
    return os.path.normpath(os.path.join(base_dir, os.path.expanduser(path)))


def _file_digest(path: str) -> str:
    digest = hashlib.sha1()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _row(key: Any, base_dir: str, captions: Any, label: int, where: str) -> tuple:
    """One planned row ``(key, path, captions, label, problem, where)``; ``problem`` is a skip reason."""
    if not isinstance(key, str) and key is not None:
        return ("", None, None, label, "malformed_row", where)
    if not key or not key.strip():
        return ("", None, None, label, "no_image", where)
    try:
        cleaned = _clean_captions(captions)
    except _Skip as skip:
        return (key, None, None, label, skip.reason, where)
    if _has_surrogates(key):
        return (key, None, None, label, "undecodable_text", where)
    return (key, _resolve(base_dir, key), cleaned, label, None, where)


def _missing_column(path: str, kind: str, name: str, flag: str, present: Sequence[str]) -> PrepareError:
    role = "image paths" if flag == "--image-key" else "captions"
    names = ", ".join(_printable(p) for p in present) or "none"
    return PrepareError(
        f"{path}: no {kind} {name!r} for the {role} ({kind}s present: {names}); "
        f"name the right one with {flag}=NAME"
    )


def _sniff_delimiter(header_line: str, image_key: str, caption_key: str) -> str:
    """The delimiter (of , TAB ; |) that splits the header into columns holding both keys, else the most."""
    best, best_score = ",", (False, 0)
    for delimiter in (",", "\t", ";", "|"):
        fields = next(csv.reader([header_line], delimiter=delimiter), [])
        score = (image_key in fields and caption_key in fields, len(fields))
        if score > best_score:
            best, best_score = delimiter, score
    return best


def _plan_table(path: str, fmt: str, image_key: str, caption_key: str) -> tuple[list[tuple], str]:
    """The rows of a csv/tsv file and the digest of its bytes."""
    base_dir = os.path.dirname(path)
    # Undecodable bytes survive as surrogates and are settled per row (only the used columns matter).
    with open(path, encoding="utf-8-sig", errors="surrogateescape", newline="") as f:
        header_line = f.readline()
        if fmt == "tsv" or path.lower().endswith(".tsv"):
            delimiter = "\t"
        else:
            delimiter = _sniff_delimiter(header_line, image_key, caption_key)
        f.seek(0)  # (utf-8-sig skips the byte-order mark again)
        reader = csv.reader(f, delimiter=delimiter)
        header = next(reader, None)
        if header is None:
            raise PrepareError(f"{path} is empty; a header row naming the columns is needed")
        header = [h.strip() for h in header]
        for name, flag in ((image_key, "--image-key"), (caption_key, "--caption-key")):
            if name not in header:
                raise _missing_column(path, "column", name, flag, header)
        image_col, caption_col = header.index(image_key), header.index(caption_key)
        rows = []
        for fields in reader:
            where = f"line {reader.line_num}"
            if not fields or (len(fields) == 1 and not fields[0].strip()):
                continue  # blank line
            if len(fields) <= max(image_col, caption_col):
                rows.append(("", None, None, -1, "malformed_row", where))
                continue
            rows.append(_row(fields[image_col].strip(), base_dir, fields[caption_col], -1, where))
    return rows, _file_digest(path)


def _plan_jsonl(path: str, image_key: str, caption_key: str) -> tuple[list[tuple], str]:
    """The rows of a JSON-lines file and the digest of its bytes."""
    base_dir = os.path.dirname(path)
    rows, checked = [], False
    with open(path, "rb") as f:
        for number, line in enumerate(f, start=1):
            if number == 1 and line.startswith(b"\xef\xbb\xbf"):
                line = line[3:]
            if not line.strip():
                continue
            where = f"line {number}"
            try:
                obj = json.loads(line.decode("utf-8", "surrogateescape"))
            except ValueError:
                rows.append(("", None, None, -1, "malformed_row", where))
                continue
            if not isinstance(obj, dict):
                rows.append(("", None, None, -1, "malformed_row", where))
                continue
            if not checked:
                for name, flag in ((image_key, "--image-key"), (caption_key, "--caption-key")):
                    if name not in obj:
                        raise _missing_column(f"{path} (first record)", "key", name, flag, list(obj))
                checked = True
            if obj.get(image_key) is None:
                rows.append(("", None, None, -1, "no_image", where))
                continue
            rows.append(_row(obj[image_key], base_dir, obj.get(caption_key), -1, where))
    if not rows:
        raise PrepareError(f"{path} holds no records; expected one JSON object per line")
    return rows, _file_digest(path)


def class_caption(class_name: str) -> str:
    """An imagefolder class's caption: ``golden_retriever`` or ``golden-retriever``: ``golden retriever``."""
    return " ".join(re.sub(r"[_-]+", " ", class_name).split())


def _plan_imagefolder(root: str, output: str) -> tuple[list[tuple], str, list[str]]:
    """The rows of an image folder (classes, then files, sorted), a digest of its listing, the classes."""
    if not os.path.isdir(root):
        raise PrepareError(f"--input={root} is not a folder; imagefolder needs one subfolder per class")
    class_names = sorted(
        e.name
        for e in os.scandir(root)
        if e.is_dir(follow_symlinks=True) and not e.name.startswith(".") and os.path.abspath(e.path) != output
    )
    if not class_names:
        raise PrepareError(f"{root} has no class subfolders; imagefolder expects {root}/CLASS_NAME/IMAGE")
    rows, listing = [], hashlib.sha1()
    for label, class_name in enumerate(class_names):
        class_dir = os.path.join(root, class_name)
        files = []
        for dirpath, dirnames, filenames in os.walk(class_dir, followlinks=True):
            dirnames[:] = sorted(
                d for d in dirnames if not d.startswith(".") and os.path.join(dirpath, d) != output
            )
            for name in filenames:
                if not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGEFOLDER_EXTENSIONS:
                    files.append(os.path.relpath(os.path.join(dirpath, name), root).replace(os.sep, "/"))
        caption = class_caption(class_name)
        for key in sorted(files):
            try:
                size = os.path.getsize(os.path.join(root, key))
            except OSError:
                size = -1
            listing.update(f"{key}\0{size}\n".encode("utf-8", "surrogateescape"))
            rows.append(_row(key, root, caption, label, key))
    if not rows:
        raise PrepareError(
            f"{root} holds no images ({', '.join(sorted(IMAGEFOLDER_EXTENSIONS))}) in its classes"
        )
    return rows, listing.hexdigest(), class_names


def expand_braces(pattern: str) -> list[str]:
    """Expand ``{a,b}`` lists and ``{00000..00009}`` ranges (zero-padding kept), left to right."""
    match = re.search(r"\{([^{}]*)\}", pattern)
    if not match:
        return [pattern]
    head, body, tail = pattern[: match.start()], match.group(1), pattern[match.end() :]
    numeric = re.fullmatch(r"(-?\d+)\.\.(-?\d+)", body)
    if numeric:
        lo, hi = numeric.groups()
        width = len(lo) if lo.startswith("0") or lo.startswith("-0") else 0
        step = 1 if int(hi) >= int(lo) else -1
        options = [f"{i:0{width}d}" for i in range(int(lo), int(hi) + step, step)]
    elif "," in body:
        options = body.split(",")
    else:
        options = ["{" + body + "}"]  # not a brace expression: kept literally
    return [head + option + t for option in options for t in expand_braces(tail)]


def webdataset_shards(spec: str) -> list[str]:
    """The tar files of ``--input``: one file, a folder (its ``*.tar``, sorted), a brace pattern or a glob."""
    if os.path.isdir(spec):
        shards = sorted(glob.glob(os.path.join(glob.escape(spec), "*.tar")))
        if not shards:
            raise PrepareError(
                f"--input={spec} is a folder without *.tar files; pass shard files or a pattern"
            )
        return [os.path.abspath(s) for s in shards]
    shards = []
    for path in expand_braces(spec):
        if glob.has_magic(path):
            matched = sorted(glob.glob(path))
            if not matched:
                raise PrepareError(f"--input pattern {path} matches no file")
            shards.extend(matched)
        else:
            shards.append(path)
    for path in shards:
        if not os.path.isfile(path):
            raise PrepareError(f"webdataset shard {path} does not exist; check --input={spec}")
    return [os.path.abspath(s) for s in shards]


def _plan(opts: argparse.Namespace) -> dict:
    """The deterministic units of work for ``opts``, with a digest identifying the input."""
    fmt, source = opts.format, opts.input
    plan: dict[str, Any] = {"class_names": None}
    if fmt == "webdataset":
        shards = webdataset_shards(source)
        listing = [[s, os.path.getsize(s), os.stat(s).st_mtime_ns] for s in shards]
        plan["digest"] = hashlib.sha1(json.dumps(listing).encode()).hexdigest()
        plan["units"] = [
            {"kind": "tar", "tar": s, "digest": hashlib.sha1(json.dumps(entry).encode()).hexdigest()}
            for s, entry in zip(shards, listing)
        ]
        plan["total"], plan["unit_name"] = len(shards), "shard"
        return plan
    path = os.path.abspath(source)
    if fmt == "imagefolder":
        rows, plan["digest"], plan["class_names"] = _plan_imagefolder(path, os.path.abspath(opts.output))
    elif not os.path.isfile(path):
        raise PrepareError(f"--input={source} is not a file; {fmt} needs the path of one {fmt} file")
    elif fmt == "jsonl":
        rows, plan["digest"] = _plan_jsonl(path, opts.image_key, opts.caption_key)
    else:
        rows, plan["digest"] = _plan_table(path, fmt, opts.image_key, opts.caption_key)
    if not rows:
        raise PrepareError(f"{source} has no rows below its header; nothing to prepare")
    units = []
    for start in range(0, len(rows), opts.shard_size):
        chunk = rows[start : start + opts.shard_size]
        digest = hashlib.sha1(json.dumps(chunk, ensure_ascii=True).encode()).hexdigest()
        units.append({"kind": "rows", "rows": chunk, "digest": digest})
    plan["units"], plan["total"], plan["unit_name"] = units, len(rows), "row"
    return plan


# --------------------------------------------------------------------------------------------------------
# Work units (run in worker processes, or in-process with --workers=1)


def _row_examples(rows: list[tuple], settings: dict) -> Iterator[tuple]:
    """``("ok", key, image, captions, label)`` or ``("skip", reason, offender)`` per planned row."""
    for key, path, captions, label, problem, where in rows:
        offender = f"{where}: {_printable(key)}" if where != key else _printable(key)
        if problem:
            yield ("skip", problem, offender)
            continue
        try:
            image, _ = encode_image(_read_image_file(path), settings["max_side"], settings["image_format"])
        except _Skip as skip:
            yield ("skip", skip.reason, f"{offender} ({path})" if skip.reason == "missing_file" else offender)
            continue
        yield ("ok", key, image, captions, label)


def _tar_groups(tar_path: str) -> Iterator[tuple[str, dict[str, bytes]]]:
    """``(key, {extension: bytes})`` per sample: consecutive members sharing a key (webdataset's grouping)."""
    wanted = set(WEBDATASET_IMAGE_EXTENSIONS) | {"txt", "json", "cls"}
    key, parts = None, {}
    with tarfile.open(tar_path, "r|*") as tar:
        for member in tar:
            if not member.isfile():
                continue
            folder, _, name = member.name.rpartition("/")
            stem, dot, extension = name.partition(".")
            if not stem or not dot:
                continue  # hidden files (._x.jpg) and names without an extension are no sample parts
            member_key = f"{folder}/{stem}" if folder else stem
            if member_key != key:
                if key is not None:
                    yield key, parts
                key, parts = member_key, {}
            extension = extension.lower()
            if extension in wanted and extension not in parts:
                parts[extension] = tar.extractfile(member).read()
    if key is not None:
        yield key, parts


def _tar_sample_caption(parts: dict[str, bytes], caption_key: str | None) -> list[str]:
    """The captions of one webdataset sample (``KEY.txt``, or ``KEY.json``); raises ``_Skip``."""
    use_json = "json" in parts and (caption_key is not None or "txt" not in parts)
    if use_json:
        try:
            obj = json.loads(parts["json"].decode("utf-8"))
        except ValueError:  # bad UTF-8 or bad JSON
            raise _Skip("undecodable_text") from None
        if not isinstance(obj, dict):
            raise _Skip("no_caption")
        keys = [caption_key] if caption_key is not None else DEFAULT_CAPTION_KEYS
        value = next((obj[k] for k in keys if obj.get(k) is not None), None)
        return _clean_captions(value)
    if "txt" in parts:
        try:
            return _clean_captions(parts["txt"].decode("utf-8"))
        except UnicodeDecodeError:
            raise _Skip("undecodable_text") from None
    raise _Skip("no_caption")


def _tar_examples(tar_path: str, settings: dict) -> Iterator[tuple]:
    """Like ``_row_examples``, for the samples of one webdataset tar."""
    name = os.path.basename(tar_path)
    groups = _tar_groups(tar_path)
    while True:
        try:
            key, parts = next(groups)
        except StopIteration:
            return
        except (tarfile.TarError, OSError, EOFError):  # a damaged tar: keep what was read, count it once
            yield ("skip", "corrupt_tar", tar_path)
            return
        offender = f"{name}:{_printable(key)}"
        try:
            image_ext = next((e for e in WEBDATASET_IMAGE_EXTENSIONS if e in parts), None)
            if image_ext is None:
                raise _Skip("no_image")
            captions = _tar_sample_caption(parts, settings["caption_key"])
            if _has_surrogates(key):
                raise _Skip("undecodable_text")
            label = -1
            if "cls" in parts:
                with contextlib.suppress(ValueError):
                    label = int(parts["cls"].decode("ascii").strip())
            image, _ = encode_image(parts[image_ext], settings["max_side"], settings["image_format"])
        except _Skip as skip:
            yield ("skip", skip.reason, offender)
            continue
        yield ("ok", key, image, captions, label)


def _staged_path(progress_dir: str, index: int, split: str) -> str:
    return os.path.join(progress_dir, f"unit-{index:05d}-{split}.array_record")


def _marker_path(progress_dir: str, index: int) -> str:
    return os.path.join(progress_dir, f"unit-{index:05d}.json")


def _fsync(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_json_atomic(path: str, obj: Any) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=1, sort_keys=True)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _run_unit(job: dict) -> dict:
    """Write one unit's shards (to temporary names, renamed when complete), then its done-marker."""
    from array_record.python.array_record_module import ArrayRecordWriter

    settings, progress_dir, index = job["settings"], job["progress_dir"], job["index"]
    serialize = RecordSerializer()
    writers: dict[str, Any] = {}
    written = {split: 0 for split in SPLITS}
    skipped: collections.Counter = collections.Counter()
    offenders: dict[str, list[str]] = {}
    seen = 0
    if job["kind"] == "tar":
        examples = _tar_examples(job["tar"], settings)
    else:
        examples = _row_examples(job["rows"], settings)
    try:
        for example in examples:
            if example[0] == "skip":
                _, reason, offender = example
                if reason != "corrupt_tar":
                    seen += 1
                skipped[reason] += 1
                if len(offenders.setdefault(reason, [])) < MAX_OFFENDERS:
                    offenders[reason].append(offender)
                continue
            _, key, image, captions, label = example
            seen += 1
            split = split_for_key(key, settings["validation_fraction"])
            if split not in writers:
                writers[split] = ArrayRecordWriter(
                    _staged_path(progress_dir, index, split) + ".tmp", ARRAY_RECORD_OPTIONS
                )
            record = {"image": image, "captions": captions, "label": label, "key": key}
            writers[split].write(serialize(record))
            written[split] += 1
    finally:
        for writer in writers.values():
            writer.close()
    sizes = {}
    for split in writers:
        staged = _staged_path(progress_dir, index, split)
        _fsync(staged + ".tmp")
        os.replace(staged + ".tmp", staged)
        sizes[split] = os.path.getsize(staged)
    marker = {
        "unit": index,
        "digest": job["digest"],
        "seen": seen,
        "written": written,
        "bytes": sizes,
        "skipped": dict(sorted(skipped.items())),
        "offenders": offenders,
    }
    _write_json_atomic(_marker_path(progress_dir, index), marker)
    return marker


def _valid_marker(progress_dir: str, index: int, digest: str) -> dict | None:
    """The done-marker of unit ``index`` if it belongs to this input and its shards are all there."""
    try:
        with open(_marker_path(progress_dir, index), encoding="utf-8") as f:
            marker = json.load(f)
        if marker["unit"] != index or marker["digest"] != digest:
            return None
        for split in SPLITS:
            count = marker["written"][split]
            staged = _staged_path(progress_dir, index, split)
            if count and os.path.getsize(staged) != marker["bytes"][split]:
                return None
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return marker


def _execute(jobs: list[dict], workers: int) -> Iterator[dict]:
    """The markers of ``jobs`` as they finish: in-process for one worker, else in a process pool."""
    if workers <= 1 or len(jobs) <= 1:
        for job in jobs:
            yield _run_unit(job)
        return
    # "spawn": the caller may hold threads (JAX, Grain) that make forking unsafe.
    context = multiprocessing.get_context("spawn")
    pool = concurrent.futures.ProcessPoolExecutor(max_workers=min(workers, len(jobs)), mp_context=context)
    try:
        futures = [pool.submit(_run_unit, job) for job in jobs]
        for future in concurrent.futures.as_completed(futures):
            yield future.result()
    except BaseException:
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)


# --------------------------------------------------------------------------------------------------------
# The whole run


def _log(message: str) -> None:
    print(f"mmjax.prepare: {message}", file=sys.stderr, flush=True)


def _recorded_options(opts: argparse.Namespace, plan: dict) -> dict:
    """What a resumed run must share with the first one (not the worker count)."""
    rows = opts.format != "webdataset"
    return {
        "layout_version": LAYOUT_VERSION,
        "format": opts.format,
        "input": os.path.abspath(opts.input),
        "input_digest": plan["digest"],
        "image_key": opts.image_key if opts.format in ("csv", "tsv", "jsonl") else None,
        "caption_key": opts.caption_key if opts.format != "imagefolder" else None,
        "validation_fraction": opts.validation_fraction,
        "max_side": opts.max_side,
        "image_format": opts.image_format,
        "shard_size": opts.shard_size if rows else None,
        "units": len(plan["units"]),
    }


def _differences(old: dict, new: dict) -> str:
    changed = [
        f"{k}: {old.get(k)!r} -> {new.get(k)!r}"
        for k in sorted(set(old) | set(new))
        if old.get(k) != new.get(k)
    ]
    return "; ".join(changed)


@contextlib.contextmanager
def _exclusive(progress_dir: str):
    """Hold a lock on ``progress_dir`` so that two runs never write the same output."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no locking
        yield
        return
    with open(os.path.join(progress_dir, "lock"), "a") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise PrepareError(
                f"another mmjax.prepare run is writing {os.path.dirname(progress_dir)}; wait for it to finish"
            ) from None
        yield


def _shard_name(split: str, shard: int, num_shards: int) -> str:
    return f"{DATASET_NAME}-{split}.array_record-{shard:05d}-of-{num_shards:05d}"


def _place(staged: str, final: str) -> None:
    """Make ``final`` the data of ``staged``: a hard link (no copy), or a copy where links are unsupported."""
    if os.path.exists(final) and os.path.samefile(staged, final):
        return
    tmp = final + ".tmp"
    with contextlib.suppress(FileNotFoundError):
        os.remove(tmp)
    try:
        os.link(staged, tmp)
    except OSError:
        shutil.copyfile(staged, tmp)
    os.replace(tmp, final)


def _finalize(output: str, progress_dir: str, opts, plan: dict, recorded: dict, markers: list[dict]) -> dict:
    """Name the shards as TFDS expects, write the TFDS metadata, then ``summary.json`` (last)."""
    import tensorflow_datasets as tfds

    written = {split: sum(m["written"][split] for m in markers) for split in SPLITS}
    if not any(written.values()):
        raise PrepareError(f"no records written: all {sum(m['seen'] for m in markers)} rows were skipped", 1)
    split_infos, shards, expected = [], {}, set()
    for split in SPLITS:
        units = [(i, m) for i, m in enumerate(markers) if m["written"][split]]  # no empty shard files
        shards[split] = len(units)
        for shard, (index, _) in enumerate(units):
            name = _shard_name(split, shard, len(units))
            _place(_staged_path(progress_dir, index, split), os.path.join(output, name))
            expected.add(name)
        if units:
            lengths = [m["written"][split] for _, m in units]
            num_bytes = sum(m["bytes"][split] for _, m in units)
            split_infos.append(tfds.core.SplitInfo(name=split, shard_lengths=lengths, num_bytes=num_bytes))
    for name in os.listdir(output):  # shards left by an earlier, different finalization
        if name.startswith(f"{DATASET_NAME}-") and ".array_record-" in name and name not in expected:
            os.remove(os.path.join(output, name))
    tfds.folder_dataset.write_metadata(
        data_dir=output,
        features=record_features(),
        split_infos=split_infos,
        version="1.0.0",
        check_data=False,  # its check reads through tf.data
        description=f"Image-caption records prepared by mmjax.prepare from {opts.format} input {opts.input}.",
        disable_shuffling=True,  # record i of a split is the i-th in unit order
    )
    skipped: collections.Counter = collections.Counter()
    examples: dict[str, list[str]] = {}
    for marker in markers:
        skipped.update(marker["skipped"])
        for reason, offenders in marker["offenders"].items():
            room = MAX_OFFENDERS - len(examples.setdefault(reason, []))
            examples[reason].extend(offenders[: max(room, 0)])
    summary = {
        "format": opts.format,
        "input": os.path.abspath(opts.input),
        "rows": sum(m["seen"] for m in markers),
        "written": written,
        "skipped": dict(sorted(skipped.items())),
        "skipped_examples": dict(sorted(examples.items())),
        "shards": shards,
        "units": len(markers),
        "image_format": opts.image_format,
        "max_side": opts.max_side,
        "options": recorded,
    }
    if plan["class_names"] is not None:
        summary["class_names"] = plan["class_names"]
    _write_json_atomic(os.path.join(output, SUMMARY_FILE), summary)
    return summary


def _report(summary: dict, output: str) -> None:
    for reason, offenders in summary["skipped_examples"].items():
        for offender in offenders:
            _log(f"skipped ({reason}): {offender}")
        more = summary["skipped"][reason] - len(offenders)
        if more > 0:
            _log(f"skipped ({reason}): ... and {more} more")
    skipped = ", ".join(f"{r}={n}" for r, n in summary["skipped"].items()) or "none"
    w = summary["written"]
    _log(f"wrote train={w['train']} validation={w['validation']} records to {output} (skipped: {skipped})")


def prepare(opts: argparse.Namespace) -> dict:
    """Run (or resume, or confirm) the preparation described by parsed command-line ``opts``; the summary."""
    from tqdm import tqdm

    output = os.path.abspath(opts.output)
    progress_dir = os.path.join(output, PROGRESS_DIR)
    plan = _plan(opts)
    recorded = _recorded_options(opts, plan)
    summary_path = os.path.join(output, SUMMARY_FILE)
    if os.path.exists(summary_path):
        summary = read_summary(output)
        if summary.get("options") != recorded:
            raise PrepareError(
                f"{output} already holds a dataset prepared with other input or options "
                f"({_differences(summary.get('options') or {}, recorded)}); use a new --output or delete it"
            )
        w = summary["written"]
        _log(
            f"{output} is already complete (train={w['train']}, validation={w['validation']}); nothing to do"
        )
        return summary
    options_path = os.path.join(progress_dir, OPTIONS_FILE)
    if os.path.exists(output) and not os.path.isdir(output):
        raise PrepareError(f"--output={output} is a file; pass a folder (new or from an earlier run)")
    if os.path.isdir(output) and os.listdir(output) and not os.path.exists(options_path):
        raise PrepareError(
            f"--output={output} is not empty and holds no mmjax.prepare run; pass a new folder"
        )
    os.makedirs(progress_dir, exist_ok=True)
    with _exclusive(progress_dir):
        if os.path.exists(options_path):
            with open(options_path, encoding="utf-8") as f:
                previous = json.load(f)
            if previous != recorded:
                raise PrepareError(
                    f"{output} holds a partial run with other input or options "
                    f"({_differences(previous, recorded)}); rerun that exact command to resume it, "
                    "or use a new --output"
                )
        else:
            _write_json_atomic(options_path, recorded)
        for name in os.listdir(progress_dir):  # left by a killed run
            if name.endswith(".tmp"):
                os.remove(os.path.join(progress_dir, name))
        settings = {
            "max_side": opts.max_side,
            "image_format": opts.image_format,
            "validation_fraction": opts.validation_fraction,
            "caption_key": opts.caption_key,
        }
        markers: dict[int, dict] = {}
        jobs = []
        for index, unit in enumerate(plan["units"]):
            marker = _valid_marker(progress_dir, index, unit["digest"])
            if marker is not None:
                markers[index] = marker
            else:
                jobs.append({**unit, "index": index, "settings": settings, "progress_dir": progress_dir})
        workers = max(1, min(opts.workers, len(jobs)))
        units = len(plan["units"])
        _log(
            f"{opts.format} input {opts.input}: {plan['total']} {plan['unit_name']}s in {units} units, "
            f"{units - len(jobs)} already done; {len(jobs)} to do with {workers} worker(s) -> {output}"
        )
        rows_of = (lambda job: len(job["rows"])) if opts.format != "webdataset" else (lambda job: 1)
        done = plan["total"] - sum(rows_of(job) for job in jobs)
        by_index = {job["index"]: job for job in jobs}
        with tqdm(
            total=plan["total"],
            initial=done,
            unit=plan["unit_name"],
            desc="prepare",
            file=sys.stderr,
            disable=None,
        ) as bar:
            for marker in _execute(jobs, workers):
                markers[marker["unit"]] = marker
                bar.update(rows_of(by_index[marker["unit"]]))
                bar.set_postfix(
                    written=sum(sum(m["written"].values()) for m in markers.values()), refresh=False
                )
        summary = _finalize(output, progress_dir, opts, plan, recorded, [markers[i] for i in range(units)])
    _report(summary, output)
    return summary


# --------------------------------------------------------------------------------------------------------
# Reading a prepared dataset


def read_summary(path: str) -> dict:
    """The ``summary.json`` of the prepared dataset in ``path``; a ``ValueError`` if it is not one (yet)."""
    summary_path = os.path.join(path, SUMMARY_FILE)
    if not os.path.isfile(summary_path):
        unfinished = os.path.isdir(os.path.join(path, PROGRESS_DIR))
        hint = (
            "an unfinished run: rerun its python -m mmjax.prepare command to complete it"
            if unfinished
            else "run python -m mmjax.prepare --format=... --input=... --output=" + path + " first"
        )
        raise ValueError(f"{path} is not a prepared dataset (no {SUMMARY_FILE}); {hint}")
    with open(summary_path, encoding="utf-8") as f:
        return json.load(f)


class PreparedSource:
    """Random access to one split of a prepared dataset: ``len(source)``, ``source[i]`` → a record dict.

    A record holds ``image`` (encoded bytes), ``captions`` (a list of UTF-8 ``bytes``), ``label`` (int),
    ``key`` (UTF-8 ``bytes``) and ``id`` (``i``). Picklable (it reopens the files after unpickling), so
    Grain's worker processes can use it: ``grain.MapDataset.source(open_prepared(path, "train"))``.
    """

    def __init__(self, path: str, split: str, length: int):
        self._path, self._split, self._length = path, split, length
        self._source = None

    def _records(self):
        if self._source is None:
            import tensorflow_datasets as tfds

            self._source = tfds.builder_from_directory(self._path).as_data_source(self._split)
        return self._source

    def __len__(self) -> int:
        return self._length

    def _index(self, i: int) -> int:
        i = int(i)
        if i < 0:
            i += self._length
        if not 0 <= i < self._length:
            raise IndexError(f"record {i} out of range for split {self._split!r} of {self._length} records")
        return i

    def __getitem__(self, i: int) -> dict:
        i = self._index(i)
        return {**self._records()[i], "id": np.int64(i)}

    def __getitems__(self, indices: Sequence[int]) -> list[dict]:
        indices = [self._index(i) for i in indices]
        if not indices:
            return []
        records = self._records().__getitems__(indices)
        return [{**r, "id": np.int64(i)} for r, i in zip(records, indices)]

    def __iter__(self):
        for i in range(self._length):
            yield self[i]

    def __getstate__(self) -> dict:
        return {"path": self._path, "split": self._split, "length": self._length}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["path"], state["split"], state["length"])

    def __repr__(self) -> str:
        return f"PreparedSource(path={self._path!r}, split={self._split!r}, records={self._length})"


def open_prepared(path: str, split: str) -> PreparedSource:
    """Random access to ``split`` (``train`` or ``validation``) of the prepared dataset in ``path``."""
    summary = read_summary(path)
    written = summary.get("written", {})
    if split not in written:
        raise ValueError(f"{path} has no split {split!r}; its splits are {', '.join(written)}")
    return PreparedSource(os.path.abspath(path), split, int(written[split]))


# --------------------------------------------------------------------------------------------------------
# Command line


class _UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line instead of argparse's usage block
        raise _UsageError(message)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {text}")
    return value


def _max_side(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be at least 1 (or 0: keep the size), got {text}")
    return value


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0 or math.isnan(value):
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m mmjax.prepare``."""
    parser = _Parser(
        prog="python -m mmjax.prepare",
        usage=(
            "%(prog)s --format=csv|tsv|jsonl|webdataset|imagefolder --input=PATH --output=DIR\n"
            "       [--image-key=filepath] [--caption-key=title] [--validation-fraction=0.05]\n"
            "       [--workers=N] [--max-side=512] [--shard-size=4096] [--image-format=jpeg|png]"
        ),
        description=(
            "Turn image-caption data (csv/tsv, jsonl, webdataset tars or an image folder) into an\n"
            "ArrayRecord dataset in TFDS layout (splits train and validation), readable without TensorFlow.\n"
            "Bad rows are skipped and counted in DIR/summary.json; images are converted to RGB."
        ),
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add = parser.add_argument
    add(
        "--format",
        required=True,
        choices=FORMATS,
        metavar="FORMAT",
        help="csv, tsv (csv with tabs), jsonl, webdataset or imagefolder",
    )
    add(
        "--input",
        required=True,
        metavar="PATH",
        help="a csv/tsv/jsonl file; tar shards (one file, a {a..b} pattern, a folder); an image folder",
    )
    add("--output", required=True, metavar="DIR", help="the dataset folder to write (resumed if partial)")
    add("--image-key", default="filepath", metavar="NAME", help="csv/jsonl: image path column (filepath)")
    add(
        "--caption-key",
        default=None,
        metavar="NAME",
        help="csv/jsonl: caption column (title); webdataset: KEY.json key (caption, text, title)",
    )
    add(
        "--validation-fraction",
        type=_fraction,
        default=0.05,
        metavar="F",
        help="share of records (by a hash of their key) in the validation split (0.05)",
    )
    add(
        "--workers",
        type=_positive_int,
        default=os.cpu_count() or 1,
        metavar="N",
        help="worker processes (default: all cores; 1: in-process)",
    )
    add(
        "--max-side",
        type=_max_side,
        default=512,
        metavar="PX",
        help="downscale so that the longest side is at most PX (512; 0: keep the size)",
    )
    add(
        "--shard-size",
        type=_positive_int,
        default=4096,
        metavar="ROWS",
        help="csv/jsonl/imagefolder: rows per work unit and output shard (4096)",
    )
    add(
        "--image-format",
        choices=IMAGE_FORMATS,
        default="jpeg",
        metavar="FMT",
        help="stored encoding: jpeg (quality 95) or png (jpeg)",
    )
    return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parsed options with format-dependent defaults filled in; raises ``_UsageError``."""
    opts = build_parser().parse_args(argv)
    if opts.caption_key is None and opts.format != "webdataset":
        opts.caption_key = "title"
    if opts.format != "webdataset" and not os.path.exists(opts.input):
        raise _UsageError(f"--input={opts.input} does not exist")
    return opts


def main(argv: Sequence[str] | None = None) -> int:
    """The command line: 0 on success, 2 for bad flags, input or output folder, 1 for other failures."""
    try:
        opts = parse_args(argv)
        prepare(opts)
    except _UsageError as e:
        _log(f"error: {e} (see python -m mmjax.prepare --help)")
        return 2
    except PrepareError as e:
        _log(f"error: {e}")
        return e.exit_code
    return 0


if __name__ == "__main__":
    # Run the importable module's main, so that worker processes find its functions as mmjax.prepare.*.
    from mmjax import prepare as _module

    sys.exit(_module.main())
