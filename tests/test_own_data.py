"""Training on a user's own data: ``python -m mmjax.prepare`` output read through the registry ("prepared"),
images of any size cropped and normalised as the model expects, ``configs/clip_custom.py`` and
``configs/lit_custom.py`` (the image tower locked)."""

import csv
import os

import jax
import numpy as np
import pytest
from helpers import saved_params
from PIL import Image

from mmjax import config as config_lib
from mmjax import prepare, train
from mmjax.config import DataError
from mmjax.data import images, pipeline
from mmjax.data.tokenizer import ByteTokenizer
from mmjax.interop import preprocess
from mmjax.run import build_run

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORDS = ("red", "green", "blue", "round", "square", "striped", "dotted", "plain")


def _textured(rng, w, h) -> np.ndarray:
    """A non-flat, non-square image: a gradient plus noise (a wrong crop or filter shows)."""
    x = np.linspace(0, 255, w)[None, :, None] * np.ones((h, 1, 3)) * np.array([1.0, 0.5, 0.2])
    return np.clip(x + rng.integers(-40, 40, (h, w, 3)), 0, 255).astype(np.uint8)


def _prepare(argv) -> None:
    assert prepare.main(argv) == 0


@pytest.fixture(scope="module")
def pairs_dir(tmp_path_factory):
    """A csv of 48 image-caption pairs, images of six sizes (none square at the model's size), prepared."""
    root = tmp_path_factory.mktemp("pairs")
    rng = np.random.default_rng(0)
    sizes = [(40, 30), (30, 50), (64, 48), (33, 33), (80, 20), (45, 60)]
    with open(root / "pairs.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["filepath", "title"])
        for i in range(48):
            w, h = sizes[i % len(sizes)]
            Image.fromarray(_textured(rng, w, h)).save(root / f"{i}.png")
            writer.writerow([f"{i}.png", " ".join(rng.choice(WORDS, 3)) + f" photo {i}"])
    out = str(root / "prepared")
    _prepare(
        ["--format=csv", f"--input={root / 'pairs.csv'}", f"--output={out}", "--validation-fraction=0.25"]
    )
    return out


def _config(spec, **overrides):
    cfg = config_lib.load_file(os.path.join(ROOT, "configs", spec))
    for key, value in overrides.items():
        config_lib.override(cfg, key, str(value))
    return cfg


@pytest.fixture(scope="module")
def custom_run(pairs_dir, tmp_path_factory):
    cfg = _config("clip_custom.py:tiny", **{"data.path": pairs_dir})
    workdir = str(tmp_path_factory.mktemp("custom_run"))
    return cfg, workdir, train.train_and_evaluate(cfg, workdir)


# ------------------------------------------------------------------------------------------ the views
def test_centre_crop_is_the_hf_processors(tmp_path):
    """The evaluation view equals mmjax.interop.preprocess (itself checked against transformers' CLIP
    processor in tests/interop) on non-square textured images: shortest side bicubic, centre crop."""
    rng = np.random.default_rng(1)
    config = dict(size={"shortest_edge": 24}, resample=3, do_center_crop=True, crop_size=24)
    config.update(do_rescale=False, do_normalize=False)
    for w, h in ((40, 30), (30, 57), (24, 24), (100, 25)):
        Image.fromarray(_textured(rng, w, h)).save(tmp_path / "x.png")
        want = preprocess.load_image(str(tmp_path / "x.png"), config, 24)
        got = images.resize_center_crop(np.asarray(Image.open(tmp_path / "x.png")), 24)
        assert got.shape == (24, 24, 3) and got.dtype == np.uint8
        np.testing.assert_array_equal(got, want.astype(np.uint8))


def test_the_siglip_view_is_the_hf_processors_resize(tmp_path):
    """``data.eval_view="resize"`` squashes as SigLIP's processor does (resize to height x width, no crop),
    equal to mmjax.interop.preprocess on that processor's fields; an unknown view is one line."""
    rng = np.random.default_rng(6)
    config = dict(size={"height": 24, "width": 24}, resample=3, do_center_crop=False)
    config.update(do_rescale=False, do_normalize=False)
    for w, h in ((40, 30), (30, 57)):
        Image.fromarray(_textured(rng, w, h)).save(tmp_path / "x.png")
        want = preprocess.load_image(str(tmp_path / "x.png"), config, 24)
        got = images.eval_view(np.asarray(Image.open(tmp_path / "x.png")), 24, "resize")
        np.testing.assert_array_equal(got, want.astype(np.uint8))
    with pytest.raises(ValueError, match=r"data.eval_view='crop' is unknown; valid views: center, resize"):
        images.eval_view(np.zeros((30, 40, 3), np.uint8), 24, "crop")


def test_random_resized_crop():
    image = _textured(np.random.default_rng(2), 60, 40)
    crop = lambda seed, **kw: images.random_resized_crop(image, 16, np.random.default_rng(seed), **kw)  # noqa: E731
    assert crop(0).shape == (16, 16, 3) and crop(0).dtype == np.uint8
    np.testing.assert_array_equal(crop(0, scale=(0.3, 1)), crop(0, scale=(0.3, 1)))  # a function of the rng
    assert not np.array_equal(crop(0, scale=(0.3, 1)), crop(1, scale=(0.3, 1)))
    # at open_clip's scale (0.9-1) few boxes of a 3:2 image fit an aspect in 3/4-4/3: mostly the fallback,
    # the centred 53x40 box (aspect 4/3)
    fallback = np.asarray(Image.fromarray(image[:, 3:56]).resize((16, 16), Image.Resampling.BICUBIC))
    assert sum(np.array_equal(crop(seed), fallback) for seed in range(20)) >= 10
    # the whole image at its own aspect: a plain resize
    whole = np.asarray(Image.fromarray(image).resize((16, 16), Image.Resampling.BICUBIC))
    np.testing.assert_array_equal(crop(3, scale=(1.0, 1.0), ratio=(1.5, 1.5)), whole)
    # no box of that aspect fits ten times: the centred box of the nearest allowed aspect
    tall = _textured(np.random.default_rng(3), 10, 80)
    got = images.random_resized_crop(tall, 8, np.random.default_rng(0), scale=(1.0, 1.0), ratio=(1.0, 1.0))
    want = np.asarray(Image.fromarray(tall[35:45]).resize((8, 8), Image.Resampling.BICUBIC))
    np.testing.assert_array_equal(got, want)


def test_normalisations_and_their_inverse():
    x = np.random.default_rng(4).integers(0, 256, (5, 4, 3), dtype=np.uint8)
    np.testing.assert_array_equal(images.normalize(x), x.astype(np.float32) / 127.5 - 1)
    mean, std = images.NORMALIZATIONS["clip"]
    np.testing.assert_allclose(
        images.normalize(x, "clip"), (x / 255 - np.array(mean)) / np.array(std), atol=1e-5
    )
    for name in images.NORMALIZATIONS:
        np.testing.assert_array_equal(images.denormalize(images.normalize(x, name), name), x)
    with pytest.raises(ValueError, match=r"data.normalization='bgr' is unknown; valid names: minus_one_one"):
        images.normalize(x, "bgr")


def test_an_image_of_another_size_without_a_crop_is_one_line(pairs_dir):
    cfg = _config("clip_custom.py:tiny", **{"data.path": pairs_dir, "data.crop": "none"})
    it = iter(
        pipeline.train_loader(
            cfg.data, tokenizer=ByteTokenizer(), global_batch_size=8, seed=0, shard_index=0, shard_count=1
        )
    )
    with pytest.raises(DataError, match=r"data.image_size=32 and data.crop='none'; set data.crop="):
        next(it)  # the pipeline's own check, before batching would fail on mixed sizes
    view = pipeline.ImageView("none", 32)
    with pytest.raises(
        DataError, match=r"^an image of 40x30 pixels, but data.image_size=32 and data.crop='none'; "
    ):
        view(np.zeros((30, 40, 3), np.uint8), np.random.default_rng(0))
    with pytest.raises(
        ValueError, match="data.crop='random' is unknown; valid crops: none, center, random_resized"
    ):
        pipeline.ImageView("random", 32)


# ------------------------------------------------------------------------------ the prepared dataset
def test_prepared_batches_are_cropped_and_normalised(pairs_dir):
    cfg = _config("clip_custom.py:tiny", **{"data.path": pairs_dir})
    tok = ByteTokenizer()
    it = iter(
        pipeline.train_loader(
            cfg.data, tokenizer=tok, global_batch_size=8, seed=0, shard_index=0, shard_count=1
        )
    )
    batch = next(it)
    assert batch["image"].shape == (8, 32, 32, 3) and batch["image"].dtype == np.float32
    mean, std = images.NORMALIZATIONS["clip"]
    low, high = (0 - np.array(mean)) / np.array(std), (1 - np.array(mean)) / np.array(std)
    assert (batch["image"] >= low - 1e-5).all() and (batch["image"] <= high + 1e-5).all()
    assert batch["image"].min() < -1.2  # CLIP's normalisation, not [-1, 1]
    source = pipeline.data_source(cfg.data, "train")
    for i, text in zip(batch["id"], batch["text"]):
        assert tok.decode(text) == source[int(i)]["captions"][0].decode()


def test_the_prepared_dataset_needs_a_path(pairs_dir):
    cfg = _config("clip_custom.py:tiny")
    with pytest.raises(ValueError, match=r"set --config.data.path=DIR to its output folder"):
        pipeline.data_source(cfg.data, "train")
    assert pipeline.class_names(_config("clip_custom.py:tiny", **{"data.path": pairs_dir}).data) == []


def test_clip_custom_trains_and_evaluates_retrieval(custom_run, pairs_dir):
    cfg, workdir, results = custom_run
    written = prepare.read_summary(pairs_dir)["written"]
    assert results["eval_split"] == "validation" and results["eval_examples"] == written["validation"]
    assert "i2t_r1" in results and "t2i_r5" in results and 0 <= results["i2t_r1"] <= 1
    assert not any(k.startswith("zero_shot") for k in results)  # a csv names no classes
    assert os.path.exists(os.path.join(workdir, "report.md"))
    start = jax.device_get(build_run(cfg).init(init_from=False).params)
    end = saved_params(workdir, cfg)
    moved = jax.tree.map(lambda a, b: not np.array_equal(a, b), start, end)
    assert all(jax.tree.leaves(moved))  # every parameter trained


def test_zero_shot_on_a_prepared_imagefolder(tmp_path):
    rng = np.random.default_rng(5)
    for name in ("tabby_cat", "golden-retriever", "parrot"):
        (tmp_path / "folder" / name).mkdir(parents=True)
        for i in range(8):
            Image.fromarray(_textured(rng, 30 + i, 36)).save(tmp_path / "folder" / name / f"{i}.jpg")
    out = str(tmp_path / "prepared")
    _prepare(
        [
            "--format=imagefolder",
            f"--input={tmp_path / 'folder'}",
            f"--output={out}",
            "--validation-fraction=0.5",
        ]
    )
    cfg = _config("clip_custom.py:tiny", **{"data.path": out, "total_steps": 2, "checkpoint_every": 2})
    results = train.train_and_evaluate(cfg, str(tmp_path / "run"))
    assert pipeline.class_names(cfg.data) == ["golden retriever", "parrot", "tabby cat"]  # as captioned
    assert results["zero_shot_classes"] == 3 and 0 <= results["zero_shot_top1"] <= 1


def test_lit_locks_the_image_tower(custom_run, pairs_dir, tmp_path):
    clip_cfg, clip_workdir, _ = custom_run
    cfg = _config(f"lit_custom.py:tiny,run={clip_workdir}", **{"data.path": pairs_dir, "total_steps": 4})
    train.train_and_evaluate(cfg, str(tmp_path / "lit"))
    clip, lit = saved_params(clip_workdir, clip_cfg), saved_params(str(tmp_path / "lit"), cfg)
    for tower in ("image", "image_proj"):
        jax.tree.map(np.testing.assert_array_equal, lit[tower], clip[tower])  # loaded, then locked
    start = jax.device_get(build_run(cfg).init(init_from=False).params)
    for tower in ("text", "text_proj"):  # trained from scratch
        changed = jax.tree.map(lambda a, b: not np.array_equal(a, b), lit[tower], start[tower])
        assert all(jax.tree.leaves(changed)), tower


def test_lit_needs_one_pretrained_image_tower():
    with pytest.raises(config_lib.ConfigError, match=r"locks a pretrained image tower: give it one"):
        _config("lit_custom.py:tiny")
