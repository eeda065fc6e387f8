"""The command lines on tiny exported directories: ``python -m mmjax.zero_shot`` (CLIP) and
``python -m mmjax.generate`` (LLaVA), checked against transformers on the same inputs, and the image
preprocessing they share (``mmjax.interop.preprocess``) against transformers' image processors."""

import json
import os
import subprocess
import sys

os.environ["HF_HUB_OFFLINE"] = "1"

import jax
import numpy as np
import pytest
from helpers import require  # importorskip, but an error under CI=true

torch = require("torch")
transformers = require("transformers")
tokenizers = require("tokenizers")

import helpers  # noqa: E402
from helpers import perturbed, tiny_llava_config  # noqa: E402

from mmjax.commands import generate, zero_shot  # noqa: E402
from mmjax.interop import hf, preprocess  # noqa: E402

transformers.logging.set_verbosity_error()
WORDS, PREPROCESS = helpers.HF_WORDS, helpers.HF_PREPROCESS


def _write_images(directory, sizes):
    from PIL import Image

    rng = np.random.default_rng(0)
    paths = []
    for i, (w, h) in enumerate(sizes):
        path = os.path.join(directory, f"img{i}.png")
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def _textured_images(directory):
    """PNG files of several non-square sizes (odd crop offsets; one smaller than the model's input, so it is
    enlarged): random noise, colour gradients, and one greyscale image (converted to RGB)."""
    from PIL import Image

    rng = np.random.default_rng(1)
    images = {}
    for w, h in [(61, 40), (37, 50), (31, 29), (100, 33), (20, 25)]:
        yy, xx = np.mgrid[0:h, 0:w]
        ramp = np.stack([xx / (w - 1), yy / (h - 1), (xx + yy) / (w + h - 2)], -1)
        images[f"noise_{w}x{h}"] = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        images[f"gradient_{w}x{h}"] = Image.fromarray((255 * ramp).round().astype(np.uint8))
    images["grey_45x30"] = Image.fromarray(rng.integers(0, 256, (30, 45), dtype=np.uint8), mode="L")
    paths = {}
    for name, image in images.items():
        paths[name] = os.path.join(directory, f"{name}.png")
        image.save(paths[name])
    return paths


def _pil_processor(name):
    """transformers' PIL image processor (the default one without torchvision; transformers 5 names it
    ``...Pil``): ``preprocess.load_image`` resizes with PIL, as it does."""
    return getattr(transformers, f"{name}Pil", None) or getattr(transformers, name)


@pytest.mark.parametrize("resample", [3, 2], ids=["bicubic", "bilinear"])
@pytest.mark.parametrize("processor", ["CLIPImageProcessor", "SiglipImageProcessor"])
def test_preprocess_equals_transformers_image_processors(processor, resample, tmp_path):
    """``preprocess.load_image`` with the ``preprocessor_config.json`` that transformers' own processor writes
    == that processor's ``pixel_values``, on textured non-square images. CLIP: shortest edge 30, centre crop
    30x30, its own mean/std; SigLIP: resize to 28x28, mean/std 0.5. Both resize with PIL from the same uint8
    image, so only float32 rounding of the rescale and normalisation differs: tolerance 1e-5 (one grey level
    is 0.015 after normalisation)."""
    kwargs = (
        dict(
            size={"shortest_edge": 30},
            crop_size={"height": 30, "width": 30},
            do_center_crop=True,
            image_mean=[0.48, 0.46, 0.41],
            image_std=[0.27, 0.26, 0.28],
        )
        if processor == "CLIPImageProcessor"
        else dict(size={"height": 28, "width": 28})
    )
    proc = _pil_processor(processor)(resample=resample, **kwargs)
    proc.save_pretrained(str(tmp_path / "model"))
    config = preprocess.processor_config(str(tmp_path / "model"))
    assert config["resample"] == resample and config["image_processor_type"] == processor
    from PIL import Image

    for name, path in _textured_images(str(tmp_path)).items():
        ours = preprocess.load_image(path, config, 30)
        with Image.open(path) as image:
            theirs = proc(images=image, return_tensors="np")["pixel_values"][0].transpose(1, 2, 0)
        assert ours.shape == theirs.shape and ours.dtype == np.float32, name
        np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-5, err_msg=name)
        assert ours.std() > 0.1, name  # textured: a wrong offset or filter would show


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    directory = str(tmp_path_factory.mktemp("clip"))
    return helpers.save_tiny_clip(directory), directory


def test_zero_shot_command_prints_one_json_line_per_image(clip_dir, tmp_path):
    model, directory = clip_dir
    images = _write_images(str(tmp_path), [(30, 30), (50, 37)])
    labels = ["w5 w6", "w7", "w8 w9 w10"]
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mmjax.zero_shot",
            "--model",
            directory,
            "--labels",
            ",".join(labels),
            *images,
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["image"] for r in rows] == images and all(list(r["probs"]) == labels for r in rows)
    # the same probabilities from transformers on the same pixels and tokens (eos_token_id 2 = argmax pooling)
    tok = hf.load_tokenizer(directory)
    ids = torch.from_numpy(tok.tokenize_like_hf(labels, 8).astype(np.int64))
    assert ids[1].tolist() == [1, 7, 2, 0, 0, 0, 0, 0]
    pixels = np.stack([preprocess.load_image(p, PREPROCESS, 30) for p in images])
    pixels = torch.from_numpy(pixels).permute(0, 3, 1, 2)
    with torch.no_grad():
        expected = model(input_ids=ids, pixel_values=pixels).logits_per_image.softmax(-1).numpy()
    got = np.array([[r["probs"][label] for label in labels] for r in rows])
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)
    assert np.abs(got[0] - got[1]).max() > 1e-4  # the two images are told apart


def _with_clip_normalisation(source, destination) -> str:
    """A copy of the model directory ``source`` whose image processor normalises with OpenAI CLIP's mean
    and std (one of mmjax's data.normalization names; the fixture's own values are none)."""
    import shutil

    from mmjax.data import images

    shutil.copytree(source, destination)
    mean, std = images.NORMALIZATIONS["clip"]
    processor = dict(PREPROCESS, image_mean=list(mean), image_std=list(std))
    (destination / "preprocessor_config.json").write_text(json.dumps(processor))
    return str(destination)


def test_clip_custom_fine_tunes_an_imported_clip(clip_dir, tmp_path):
    """``configs/clip_custom.py:hf=DIR``: the model, tokenizer, image size and normalisation of the directory,
    its weights loaded when the run starts (read once; the config reads only config.json and the scalars)
    and trained on a prepared dataset."""

    from PIL import Image

    from mmjax import checkpoint, prepare, train
    from mmjax import config as config_lib
    from mmjax.run import build_run

    directory = _with_clip_normalisation(clip_dir[1], tmp_path / "clip")
    rng = np.random.default_rng(0)
    rows = ["filepath,title"]
    for i in range(24):
        Image.fromarray(rng.integers(0, 256, (20 + i, 40, 3), dtype=np.uint8)).save(tmp_path / f"{i}.png")
        rows.append(f"{i}.png,w{3 + i % 7} w{10 + i % 5} w{20 + i}")
    (tmp_path / "pairs.csv").write_text("\n".join(rows) + "\n")
    data = str(tmp_path / "prepared")
    assert prepare.main(["--format=csv", f"--input={tmp_path / 'pairs.csv'}", f"--output={data}"]) == 0

    cfg = config_lib.load_file(f"configs/clip_custom.py:tiny,hf={directory}")
    config_lib.override(cfg, "data.path", data)
    config_lib.override(cfg, "total_steps", "3")
    want_cfg, want = hf.load(directory)
    assert cfg.model.to_dict() == want_cfg.to_dict()  # from config.json and logit_scale alone
    assert (cfg.data.image_size, cfg.data.normalization, cfg.data.max_len) == (30, "clip", 8)
    assert cfg.data.tokenizer == f"hf:{directory}" and cfg.init_from.hf == directory
    run = build_run(cfg)
    start = jax.device_get(run.init().params)  # the imported weights, everywhere
    jax.tree.map(np.testing.assert_array_equal, start, jax.device_get(want))
    workdir = str(tmp_path / "run")
    results = train.train_and_evaluate(cfg, workdir)
    assert "i2t_r1" in results
    end = jax.device_get(checkpoint.load_params(workdir, run.init(init_from=False).params, (".*",)))
    flat = lambda tree: {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_leaves_with_path(tree)}  # noqa: E731
    still = [k for k, v in flat(start).items() if np.array_equal(v, flat(end)[k])]
    # fine-tuned from the import: everything moved but perhaps the key biases (a softmax ignores a constant
    # added to every logit, so their gradient is zero up to rounding, which Adam may still turn into a step
    # on some CPUs)
    assert len(still) < len(flat(start)) and all("'key']['bias'" in k for k in still), still


def test_zero_shot_command_rejects_a_non_two_tower_directory(tmp_path, capsys):
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["BertModel"]}))
    (tmp_path / "model.safetensors").write_bytes(b"")
    assert zero_shot.main(["--model", str(tmp_path), "--labels", "a,b", "x.png"]) == 2
    assert "unsupported architecture 'BertModel'" in capsys.readouterr().err


@pytest.fixture(scope="module")
def llava_dir(tmp_path_factory):
    config = tiny_llava_config(vision_layers=2, patch_size=10, max_positions=64)
    torch.manual_seed(0)
    model = perturbed(transformers.LlavaForConditionalGeneration(config), 4)
    cfg, params = hf.load(model)
    directory = hf.save(cfg, params, str(tmp_path_factory.mktemp("llava")))
    helpers.save_word_tokenizer(directory)
    with open(os.path.join(directory, "preprocessor_config.json"), "w") as f:
        json.dump(PREPROCESS, f)
    return model, directory


def test_generate_command_matches_transformers_greedy(llava_dir, tmp_path, capsys):
    model, directory = llava_dir
    images = _write_images(str(tmp_path), [(45, 30)])
    prompt = "w10 <image> w11 w12"
    assert generate.main(["--model", directory, "--prompt", prompt, "--max-new-tokens", "5", *images]) == 0
    row = json.loads(capsys.readouterr().out.strip())
    assert row["image"] == images[0] and row["prompt"] == prompt
    ids = [1, 10] + [63] * 9 + [11, 12]  # a 3x3 patch grid: 9 image tokens where <image> stands
    pixels = torch.from_numpy(preprocess.load_image(images[0], PREPROCESS, 30)[None]).permute(0, 3, 1, 2)
    with torch.no_grad():
        expected = model.generate(
            input_ids=torch.tensor([ids]), pixel_values=pixels, max_new_tokens=5, do_sample=False
        )[0, len(ids) :].tolist()
    if 2 in expected:
        expected = expected[: expected.index(2) + 1]
    assert row["tokens"] == expected
    assert row["text"] == " ".join(WORDS[t] for t in expected if t > 2)


def test_unreadable_weights_are_one_line(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["CLIPModel"]}))
    (tmp_path / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(hf.InteropError, match=r"model\.safetensors: not a readable safetensors file \(.*\)$"):
        hf.load(str(tmp_path))


def test_a_hub_id_reads_the_offline_cache(clip_dir, tmp_path, monkeypatch):
    """``hf.load``, the tokenizer, ``read_model_config`` and ``configs/clip_custom.py:hf=ORG/NAME`` take a
    Hub id: with HF_HUB_OFFLINE=1 the snapshot in HF_HUB_CACHE (filled here by hand, no network); an id
    the cache lacks is one line."""
    import shutil

    from mmjax import config as config_lib
    from mmjax.interop import hub

    _, directory = clip_dir
    cache, commit = tmp_path / "hub", "0123456789abcdef0123456789abcdef01234567"
    repo = cache / "models--tiny-org--tiny-clip"
    shutil.copytree(_with_clip_normalisation(directory, tmp_path / "clip"), repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    snapshot = str(repo / "snapshots" / commit)
    assert hub.resolve("tiny-org/tiny-clip") == snapshot and hub.resolve(directory) == directory
    cfg, params = hf.load("tiny-org/tiny-clip")
    want_cfg, want = hf.load(directory)
    assert cfg.to_dict() == want_cfg.to_dict() == hf.read_model_config("tiny-org/tiny-clip").to_dict()
    jax.tree.map(np.testing.assert_array_equal, params, want)
    assert hf.load_tokenizer("tiny-org/tiny-clip").encode("w5 w7") == [5, 7]
    c = config_lib.load_file("configs/clip_custom.py:tiny,hf=tiny-org/tiny-clip")
    assert c.init_from.hf == snapshot and c.data.tokenizer == f"hf:{snapshot}"  # resolved once, when loaded
    with pytest.raises(
        hf.InteropError, match=r"^other/model: cannot get this Hub model \(HF_HUB_OFFLINE is set"
    ):
        hf.load("other/model")


def test_the_config_takes_the_directorys_image_view(clip_dir, tmp_path):
    """A processor that squashes to height x width without a centre crop, with mean and std 0.5 (SigLIP's):
    ``clip_custom.py:hf=DIR`` evaluates with ``data.eval_view="resize"`` and ``normalization="siglip"``;
    CLIP's fields give "center" and "clip"."""
    import shutil

    from mmjax import config as config_lib

    directory = tmp_path / "squash"
    shutil.copytree(clip_dir[1], directory)
    processor = dict(PREPROCESS, size={"height": 30, "width": 30}, do_center_crop=False)
    processor.update(image_mean=[0.5] * 3, image_std=[0.5] * 3)
    (directory / "preprocessor_config.json").write_text(json.dumps(processor))
    c = config_lib.load_file(f"configs/clip_custom.py:tiny,hf={directory}")
    assert (c.data.eval_view, c.data.normalization) == ("resize", "siglip")
    clip = _with_clip_normalisation(clip_dir[1], tmp_path / "clip")
    c = config_lib.load_file(f"configs/clip_custom.py:tiny,hf={clip}")
    assert (c.data.eval_view, c.data.normalization) == ("center", "clip")
