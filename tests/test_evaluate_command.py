"""``python -m mmjax.evaluate`` (``mmjax.commands.evaluate``): zero-shot classification of an image folder
by a tiny Hugging Face CLIP checked against transformers image by image, retrieval on a prepared csv dataset,
an mmjax run evaluated as its own training evaluated it, a Hub id from an offline cache, one-line errors."""

import json
import os
import subprocess
import sys

os.environ["HF_HUB_OFFLINE"] = "1"

import helpers
import numpy as np
import pytest
from helpers import require, tiny_config  # require: importorskip, but an error under CI=true

from mmjax.commands import evaluate

PREPROCESS = helpers.HF_PREPROCESS  # transformers' CLIPImageProcessor fields: shortest edge 30, crop 30x30
# class folders; their names (sorted): "w10", "w25", "w5 w32" ("_" reads as a space). The tiny random model
# predicts each of them for some image, far from a tie, with the default and the test's templates.
CLASS_FOLDERS = ("w5_w32", "w10", "w25")
NAMES = ["w10", "w25", "w5 w32"]
HUB_ID = "tiny-org/tiny-clip"


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    """``(model, directory)``: ``helpers.save_tiny_clip``'s tiny random transformers ``CLIPModel``."""
    require("torch")
    transformers = require("transformers")
    require("tokenizers")
    transformers.logging.set_verbosity_error()
    directory = str(tmp_path_factory.mktemp("clip"))
    return helpers.save_tiny_clip(directory), directory


def _textured(rng, w, h, channels=3):
    """A gradient with noise (a wrong crop or filter shows); ``channels`` 4: alpha falling top to bottom."""
    yy, xx = np.mgrid[0:h, 0:w]
    ramp = np.stack([xx / (w - 1), yy / (h - 1), (xx + yy) / (w + h - 2), 1 - yy / (h - 1)], -1)[
        ..., :channels
    ]
    return np.clip(255 * ramp + rng.integers(-60, 60, (h, w, channels)), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    """``(root, paths)``: three class folders of non-square images unlike each other (the tiny random model
    tells them apart), of several modes: RGB, L, RGBA (partly transparent), a palette image, and a JPEG
    whose EXIF orientation says "rotate" (in a nested folder)."""
    from PIL import Image

    root = tmp_path_factory.mktemp("folder")
    first, second, third = (root / folder for folder in CLASS_FOLDERS)
    os.makedirs(first / "more")
    os.makedirs(second)
    os.makedirs(third)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:40, 0:61]
    red = np.zeros((33, 45, 3), np.uint8)
    red[..., 0] = 230
    Image.fromarray(red).save(first / "red.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    Image.fromarray(_textured(rng, 50, 34)).save(first / "more" / "rotated.jpg", exif=exif)
    checks = (((xx // 3 + yy // 3) % 2) * 255).astype(np.uint8)
    Image.fromarray(checks, "L").save(second / "checks.png")
    Image.fromarray(_textured(rng, 24, 40, 4), "RGBA").save(second / "rgba.png")
    stripes = np.zeros((29, 61, 3), np.uint8)
    stripes[..., 1] = 255 * ((yy[:29, :61] // 5) % 2)
    Image.fromarray(stripes).convert("P").save(third / "stripes.png")
    Image.fromarray(np.full((26, 20), 250, np.uint8), "L").save(third / "white.png")
    Image.fromarray(rng.integers(0, 256, (31, 37, 3), dtype=np.uint8)).save(third / "noise.png")
    paths = sorted(
        os.path.relpath(os.path.join(d, f), root).replace(os.sep, "/")
        for d, _, fs in os.walk(root)
        for f in fs
    )
    return str(root), paths


def _transformers_zero_shot(model, directory, root, paths, names, templates):
    """transformers' own zero-shot predictions: its CLIP image processor's pixels (after Pillow's EXIF
    transpose) and the tokenizer's ``tokenize_like_hf`` prompts; per class the renormalised mean of the
    prompts' normalised text features, the argmax of the image features against them. With one template
    this is also the argmax of the model's ``logits_per_image`` (checked)."""
    import torch
    import transformers
    from PIL import Image, ImageOps

    from mmjax.interop import hf

    processor = transformers.CLIPImageProcessorPil(**PREPROCESS)
    pixels = []
    for path in paths:
        with Image.open(os.path.join(root, path)) as image:
            pixels.append(
                processor(images=ImageOps.exif_transpose(image), return_tensors="np")["pixel_values"][0]
            )
    pixels = torch.from_numpy(np.stack(pixels))
    ids = hf.load_tokenizer(directory).tokenize_like_hf([t.format(n) for n in names for t in templates], 8)
    ids = torch.from_numpy(ids.astype(np.int64))
    with torch.no_grad():
        image = model.get_image_features(pixel_values=pixels).pooler_output
        text = model.get_text_features(input_ids=ids).pooler_output
        logits = model(input_ids=ids, pixel_values=pixels).logits_per_image.numpy()
    image = (image / image.norm(dim=-1, keepdim=True)).numpy()
    text = (text / text.norm(dim=-1, keepdim=True)).numpy().reshape(len(names), len(templates), -1).mean(1)
    predicted = (image @ (text / np.linalg.norm(text, axis=-1, keepdims=True)).T).argmax(1)
    if len(templates) == 1:
        np.testing.assert_array_equal(predicted, logits.argmax(1))
    return [names[p] for p in predicted]


def _result(capsys) -> dict:
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 1, out  # one JSON line, nothing else on stdout
    return json.loads(out[0])


def test_image_folder_zero_shot_equals_transformers_per_image(clip_dir, image_folder, tmp_path, capsys):
    """An HF directory on an image folder: each image's prediction is transformers' zero-shot argmax on the
    same image (two templates, one given with "|"), top1 the share of them that name the image's folder,
    one --predictions line per image with its path relative to the folder."""
    model, directory = clip_dir
    root, paths = image_folder
    names, templates = NAMES, ["w3 {}", "w4 {}", "{} w9"]
    predictions = tmp_path / "predictions.jsonl"
    argv = [f"--model={directory}", f"--dataset=imagefolder:{root}", "--templates=w3 {}", "--templates"]
    argv += ["w4 {}|{} w9", "--batch-size=3", f"--predictions={predictions}"]
    assert evaluate.main(argv) == 0
    result = _result(capsys)
    expected = _transformers_zero_shot(model, directory, root, paths, names, templates)
    rows = [json.loads(line) for line in predictions.read_text().splitlines()]
    assert [r["path"] for r in rows] == paths
    assert [r["label"] for r in rows] == [p.split("/")[0].replace("_", " ") for p in paths]
    assert [r["prediction"] for r in rows] == expected
    assert len(set(expected)) > 1, expected  # the images are told apart
    right = np.mean([r["prediction"] == r["label"] for r in rows])
    assert result == {
        "dataset": f"imagefolder:{root}",
        "split": "all",
        "examples": len(paths),
        "top1": pytest.approx(right, abs=1e-9),
        "top5": 1.0,  # three classes
    }


def _fill_hub_cache(cache, directory, repo_id=HUB_ID):
    """The layout of huggingface_hub's cache (``models--ORG--NAME/snapshots/HASH`` and ``refs/main``) holding
    the files of ``directory``, written by hand: no network."""
    import shutil

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = os.path.join(cache, "models--" + repo_id.replace("/", "--"))
    shutil.copytree(directory, os.path.join(repo, "snapshots", commit))
    os.makedirs(os.path.join(repo, "refs"))
    with open(os.path.join(repo, "refs", "main"), "w") as f:
        f.write(commit)


def test_hub_id_from_an_offline_cache_through_the_module(clip_dir, image_folder, tmp_path):
    """``python -m mmjax.evaluate --model=ORG/NAME`` with HF_HUB_OFFLINE=1 reads the model from the cache
    (HF_HUB_CACHE); the default templates are replaced by one, and its predictions are transformers'."""
    model, directory = clip_dir
    root, paths = image_folder
    cache = str(tmp_path / "hub")
    _fill_hub_cache(cache, directory)
    predictions = tmp_path / "p.jsonl"
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HUB_CACHE=cache, HF_HOME=str(tmp_path / "home"))
    proc = subprocess.run(
        [sys.executable, "-m", "mmjax.evaluate", f"--model={HUB_ID}", f"--dataset=imagefolder:{root}"]
        + ["--templates={}", f"--predictions={predictions}"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["examples"] == len(paths)
    expected = _transformers_zero_shot(model, directory, root, paths, NAMES, ["{}"])
    assert [json.loads(line)["prediction"] for line in predictions.read_text().splitlines()] == expected


@pytest.fixture(scope="module")
def prepared_csv(tmp_path_factory):
    """A csv of 12 image-caption pairs (captions in the tiny vocabulary), prepared (a third validation)."""
    from PIL import Image

    from mmjax import prepare

    root = tmp_path_factory.mktemp("pairs")
    rng = np.random.default_rng(1)
    rows = ["filepath,title"]
    for i in range(12):
        Image.fromarray(_textured(rng, 20 + 3 * i, 40 - i)).save(root / f"{i}.png")
        rows.append(f"{i}.png,w{3 + i % 5} w{10 + i % 4} w{20 + i}")
    (root / "pairs.csv").write_text("\n".join(rows) + "\n")
    out = str(root / "prepared")
    argv = ["--format=csv", f"--input={root / 'pairs.csv'}", f"--output={out}", "--workers=1"]
    assert prepare.main(argv + ["--validation-fraction=0.34"]) == 0
    return out, prepare.read_summary(out)


def test_prepared_caption_dataset_gives_retrieval_recalls(clip_dir, prepared_csv, capsys):
    """A prepared csv (no class names): recall@1/5/10 both ways, in [0, 1], over the validation split (the
    default: the dataset has no test split); --predictions is for classification only."""
    _, directory = clip_dir
    path, summary = prepared_csv
    assert evaluate.main([f"--model={directory}", f"--dataset=prepared:{path}", "--batch-size=4"]) == 0
    result = _result(capsys)
    n = summary["written"]["validation"]
    assert 0 < n <= 10 and result["split"] == "validation" and result["examples"] == n
    keys = ["i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10"]
    assert sorted(result) == sorted(["dataset", "split", "examples", *keys])
    assert all(0 <= result[k] <= 1 for k in keys)
    assert result["i2t_r10"] == result["t2i_r10"] == 1.0  # at most 10 candidates
    argv = [f"--model={directory}", f"--dataset=prepared:{path}", "--predictions=p.jsonl"]
    assert evaluate.main(argv) == 2
    captured = capsys.readouterr()
    assert not captured.out and "has no class names" in captured.err


def test_prepared_image_folder_classifies_like_the_folder(clip_dir, image_folder, tmp_path, capsys):
    """The same folder prepared (PNG, all in train) classifies the same: the same pixels (mmjax.prepare and
    the command decode alike), its records' keys as the predictions' paths."""
    from mmjax import prepare

    _, directory = clip_dir
    root, paths = image_folder
    out = str(tmp_path / "prepared")
    argv = ["--format=imagefolder", f"--input={root}", f"--output={out}", "--workers=1", "--image-format=png"]
    assert prepare.main(argv + ["--validation-fraction=0"]) == 0
    lines = {}
    for dataset, extra in ((f"imagefolder:{root}", []), (f"prepared:{out}", ["--split=train"])):
        file = tmp_path / "predictions.jsonl"
        assert (
            evaluate.main([f"--model={directory}", f"--dataset={dataset}", f"--predictions={file}", *extra])
            == 0
        )
        assert _result(capsys)["examples"] == len(paths)
        lines[dataset] = sorted(file.read_text().splitlines())
    assert lines[f"prepared:{out}"] == lines[f"imagefolder:{root}"]


def test_a_run_evaluates_as_its_training_did(data_dir, tmp_path, capsys):
    """An mmjax run directory (two steps of configs/clip_shapes.py:tiny): on its own dataset and split, top-1
    and top-5 are the run's results.json zero-shot ones (its saved config: the same data sizes, crop,
    normalisation, prompts and object head)."""
    from mmjax import train

    workdir = str(tmp_path / "run")
    cfg = tiny_config(data_dir, total_steps=2, log_every=1, checkpoint_every=2)
    results = train.train_and_evaluate(cfg, workdir)
    file = tmp_path / "p.jsonl"
    argv = [f"--model={workdir}", "--dataset=shapes", f"--data-dir={data_dir}", "--split=test"]
    assert evaluate.main(argv + ["--batch-size=12", f"--predictions={file}"]) == 0
    result = _result(capsys)
    assert result["examples"] == results["eval_examples"] == cfg.data.num_test
    assert abs(result["top1"] - results["zero_shot_top1"]) <= 1e-6
    assert abs(result["top5"] - results["zero_shot_top5"]) <= 1e-6
    assert [json.loads(line)["path"] for line in file.read_text().splitlines()] == list(
        range(cfg.data.num_test)
    )


def _vlm_run(directory):
    """A run directory whose checkpoint holds only the config of a fusion-model run."""
    import orbax.checkpoint as ocp

    manager = ocp.CheckpointManager(os.path.join(directory, "checkpoints"))
    config = {"task": "vlm", "model": {"type": "early_fusion"}}
    manager.save(1, args=ocp.args.Composite(config=ocp.args.JsonSave(config)))
    manager.wait_until_finished()
    manager.close()
    return directory


@pytest.mark.parametrize(
    "argv, message",
    [
        ([], "the following arguments are required: --model, --dataset"),
        (["--model=m", "--dataset=shapes", "--batch-size=0"], "--batch-size: expects a positive integer"),
        (["--model=m", "--dataset=shapes", "--bogus"], "unrecognized arguments: --bogus"),
        (["--model=m", "--dataset=nope"], "unknown dataset 'nope'; valid names: "),
        (["--model=m", "--dataset=shapes", "--split=nope"], "unknown split 'nope'; valid splits: train"),
        (["--model=m", "--dataset=shapes", "--templates=a photo"], "'a photo' has no \"{}\""),
        (["--model=./no/such/dir", "--dataset=shapes"], "no such directory, and not a Hugging Face Hub id"),
        (["--model=no-org/no-model", "--dataset=shapes"], "HF_HUB_OFFLINE is set and it is not in the"),
        (["--model={tmp}", "--dataset=shapes"], "is neither an mmjax run directory"),
        (
            ["--model={vlm}", "--dataset=shapes"],
            "is a vlm run of a early_fusion model; python -m mmjax.evaluate",
        ),
        (["--model={hf}", "--dataset=shapes"], "model.safetensors: not a readable safetensors file"),
        (["--model={hf}", "--dataset=imagefolder:{tmp}/none"], "/none: no such folder"),
        (
            ["--model={hf}", "--dataset=imagefolder:{tmp}", "--split=test"],
            "an image folder has one split: all",
        ),
        (["--model={hf}", "--dataset=imagefolder:{tmp}"], "holds no images in class subfolders"),
        (["--model=m", "--dataset=prepared:{tmp}"], "is not a prepared dataset (no summary.json)"),
        (["--model={hf}", "--dataset=prepared"], "--dataset=prepared needs its folder"),
    ],
)
def test_errors_are_one_line_with_status_2(argv, message, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text(json.dumps({"architectures": ["CLIPModel"]}))
    (hf / "model.safetensors").write_bytes(b"not safetensors")
    vlm = _vlm_run(str(tmp_path / "vlm")) if any("{vlm}" in a for a in argv) else ""
    argv = [a.format(tmp=empty, vlm=vlm, hf=hf) for a in argv]
    assert evaluate.main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), captured.err
    assert message in lines[0]
