"""The dataset registry of ``pipeline``: datasets other than shapes, by object or by import path."""

import io
import sys
import textwrap

import ml_collections
import numpy as np
import pytest
from PIL import Image

from mmjax.data import pipeline, shapes

SIZES = dict(num_train=64, num_validation=16, num_test=16)  # as in conftest.py
CAPTIONS = ("a red circle", "a blue square", "a green star", "a yellow cross")


def _records(n: int, size: int = 16) -> list[dict]:
    """``n`` records of a captions-only dataset (no questions/answers/question_types fields)."""
    out = []
    for i in range(n):
        buffer = io.BytesIO()
        Image.fromarray(np.full((size, size, 3), 10 * i, np.uint8)).save(buffer, format="PNG")
        out.append(
            {
                "id": i,
                "image_png": buffer.getvalue(),
                "label": i % 2,
                "captions": [CAPTIONS[i % 4], CAPTIONS[(i + 1) % 4]],
            }
        )
    return out


def _tiny(**kwargs) -> pipeline.Dataset:
    records = {"train": _records(12), "test": _records(5)}
    return pipeline.Dataset(
        source=lambda data_cfg, split: records[split],
        class_names=lambda data_cfg: ["dark", "light"],
        splits=("train", "test"),
        **kwargs,
    )


@pytest.fixture
def registry(monkeypatch):
    """A copy of the registry for the test: what it registers is gone afterwards."""
    from mmjax.data import registry

    datasets = dict(registry.DATASETS)
    monkeypatch.setattr(registry, "DATASETS", datasets)
    monkeypatch.setattr(pipeline, "DATASETS", datasets)  # the re-export names the same dict
    return datasets


def _cfg(name="tiny", **overrides):
    return ml_collections.ConfigDict(
        {
            **dict(
                name=name,
                image_size=16,
                max_len=8,
                flip_prob=0.0,
                worker_count=0,
                caption_sampling="canonical",
            ),
            **overrides,
        }
    )


def _batches(cfg, tok, n, batch=4):
    it = iter(
        pipeline.train_loader(
            cfg, tokenizer=tok, global_batch_size=batch, seed=0, shard_index=0, shard_count=1
        )
    )
    try:
        return [next(it) for _ in range(n)]
    finally:
        if hasattr(it, "close"):
            it.close()


def test_train_batches_come_from_a_registered_dataset(registry, tok):
    pipeline.register_dataset("tiny", _tiny())
    batches = _batches(_cfg(), tok, 3)  # 12 records: one epoch
    ids = np.concatenate([b["id"] for b in batches])
    assert sorted(ids) == list(range(12))
    for b in batches:
        assert b["image"].shape == (4, 16, 16, 3) and b["image"].dtype == np.float32
        assert b["text"].shape == (4, 8) and not b["truncated"].any()
        for i, image, text, label in zip(b["id"], b["image"], b["text"], b["label"]):
            assert (pipeline.denormalize(image) == 10 * i).all()
            assert tok.decode(text) == CAPTIONS[i % 4] and label == i % 2


def test_workers_read_a_dataset_registered_at_run_time(registry, tok):
    """Spawned Grain workers never see this registration: they get the pickled pipeline, source included."""
    pipeline.register_dataset("tiny", _tiny())
    want, got = _batches(_cfg(), tok, 2), _batches(_cfg(worker_count=1), tok, 2)
    for x, y in zip(want, got):
        assert x.keys() == y.keys() and all(np.array_equal(x[k], y[k]) for k in x)


def test_load_split_of_a_captions_only_dataset(registry, tok):
    pipeline.register_dataset("tiny", _tiny())
    d = pipeline.load_split(_cfg(), "test", tokenizer=tok)
    assert d["image"].shape == (5, 16, 16, 3) and d["caption"] == [CAPTIONS[i % 4] for i in range(5)]
    assert d["questions"] == d["answers"] == d["question_types"] == [[]] * 5
    assert d["class_names"] == pipeline.class_names(_cfg()) == ["dark", "light"]
    assert d["label"].tolist() == [0, 1, 0, 1, 0] and d["id"].tolist() == list(range(5))


def test_prompt_templates_per_dataset(registry, data_dir):
    pipeline.register_dataset("tiny", _tiny())
    pipeline.register_dataset("own", _tiny(prompt_templates=lambda data_cfg: ["{} here"]))
    shapes_cfg = ml_collections.ConfigDict(dict(name="shapes", data_dir=data_dir, **SIZES))
    assert (
        pipeline.prompt_templates() == pipeline.prompt_templates(shapes_cfg) == list(shapes.PROMPT_TEMPLATES)
    )
    assert pipeline.prompt_templates(_cfg()) == list(pipeline.GENERIC_PROMPT_TEMPLATES)
    assert pipeline.prompt_templates(_cfg("own")) == ["{} here"]


def test_unknown_dataset_and_split(registry, tok):
    pipeline.register_dataset("tiny", _tiny())
    names = ", ".join(sorted(registry))  # the built-in ones (shapes, prepared, the TFDS catalog) and tiny
    assert "shapes" in names and "cifar10" in names and "tiny" in names
    with pytest.raises(ValueError, match=rf"^unknown dataset 'mnist'; valid names: {names}$"):
        pipeline.train_loader(
            _cfg("mnist"), tokenizer=tok, global_batch_size=4, seed=0, shard_index=0, shard_count=1
        )
    with pytest.raises(ValueError, match=r"^unknown split 'validation'; valid splits: train, test$"):
        pipeline.load_split(_cfg(), "validation", tokenizer=tok)


def test_register_by_import_path_is_lazy(registry, tok, tmp_path, monkeypatch):
    (tmp_path / "mmjax_tiny_dataset.py").write_text(
        textwrap.dedent("""
        import io

        import numpy as np
        from PIL import Image

        from mmjax.data import pipeline


        def png(i):
            buffer = io.BytesIO()
            Image.fromarray(np.full((16, 16, 3), i, np.uint8)).save(buffer, format="PNG")
            return buffer.getvalue()


        RECORDS = [{"id": i, "image_png": png(i), "label": i % 2, "captions": ["a red circle"],
                    "questions": ["what colour is the circle?"], "answers": ["red"],
                    "question_types": ["colour"]}
                   for i in range(6)]
        DATASET = pipeline.Dataset(source=lambda data_cfg, split: RECORDS,
                                   class_names=lambda data_cfg: ["dark", "light"])
        """)
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    pipeline.register_dataset("by_path", "mmjax_tiny_dataset:DATASET")
    assert "mmjax_tiny_dataset" not in sys.modules  # nothing imported until a config names it
    try:
        d = pipeline.load_split(_cfg("by_path"), "validation", tokenizer=tok)
        assert isinstance(registry["by_path"], pipeline.Dataset)  # resolved once, then cached
    finally:
        sys.modules.pop("mmjax_tiny_dataset", None)
    assert d["id"].tolist() == list(range(6)) and d["answers"] == [["red"]] * 6
    assert pipeline.class_names(_cfg("by_path")) == ["dark", "light"]


def test_bad_registrations(registry):
    with pytest.raises(ValueError, match="not of the form 'package.module:ATTRIBUTE'"):
        pipeline.register_dataset("bad", "mmjax.data.shapes.CLASS_NAMES")
    with pytest.raises(TypeError, match="must be a registry.Dataset"):
        pipeline.register_dataset("bad", ["not", "a", "dataset"])
    pipeline.register_dataset("missing", "mmjax.data.no_such_module:DATASET")
    with pytest.raises(
        ValueError,
        match=r"'missing' is registered as 'mmjax.data.no_such_module:DATASET', which "
        "does not import: ModuleNotFoundError",
    ):
        pipeline.class_names(_cfg("missing"))
    pipeline.register_dataset("wrong", "mmjax.data.shapes:CLASS_NAMES")
    with pytest.raises(TypeError, match="'mmjax.data.shapes:CLASS_NAMES' is a list, not a registry.Dataset"):
        pipeline.class_names(_cfg("wrong"))


def test_every_registered_dataset_resolves():
    """Import paths fail only when used: resolve every built-in registration here instead."""
    for name in list(pipeline.DATASETS):
        assert isinstance(pipeline.get_dataset(name), pipeline.Dataset)


# The first three shapes training batches (seed 0, batches of 8, flips and hard negatives on), first recorded
# as sums before the dataset registry replaced the hard-coded "shapes" branches, here written out as the
# draws of that same stream: per row, its record's id, which of the record's 6 captions was drawn, whether
# the example was mirrored, and the shape word its hard negative puts in.
RECORDED = {
    "id": [[49, 4, 10, 45, 39, 63, 27, 9], [62, 20, 54, 7, 23, 13, 28, 35], [16, 0, 33, 53, 12, 59, 25, 44]],
    "caption": [[0, 5, 1, 4, 4, 2, 0, 1], [0, 4, 3, 5, 0, 1, 1, 0], [3, 4, 1, 0, 4, 3, 1, 5]],
    "mirrored": [[1, 1, 1, 1, 0, 1, 0, 1], [0, 0, 1, 1, 0, 0, 0, 1], [0, 0, 0, 0, 1, 1, 0, 1]],
    "negative": [
        ["triangle", "circle", "diamond", "cross", "square", "square", "triangle", "diamond"],
        ["cross", "circle", "triangle", "circle", "square", "cross", "diamond", "cross"],
        ["cross", "star", "diamond", "square", "star", "cross", "triangle", "star"],
    ],
}


def test_shapes_batches_are_unchanged(data_dir, tok):
    """Stability is the point of this test: a seed gives the same shapes training stream in every version
    (the same records in the same order, and the same caption, flip and hard negative drawn for each), so a
    recorded run can be reproduced; the draws are compared with ``RECORDED``. What each row must be, whatever
    was drawn, is asserted directly: its record's label, its record's image or its mirror image, one of its
    record's captions (mirrored with the image), and a negative one shape word away from that caption."""
    cfg = ml_collections.ConfigDict(
        dict(
            name="shapes",
            data_dir=data_dir,
            seed=0,
            image_size=64,
            max_len=32,
            flip_prob=0.5,
            worker_count=0,
            caption_sampling="random",
            hard_negatives=True,
            **SIZES,
        )
    )
    it = iter(
        pipeline.train_loader(cfg, tokenizer=tok, global_batch_size=8, seed=0, shard_index=0, shard_count=1)
    )
    batches = [next(it) for _ in range(3)]
    full = pipeline.load_split(cfg, "train", tokenizer=tok)
    drawn = {key: [] for key in RECORDED}
    for b in batches:
        row = {key: [] for key in RECORDED}
        for i, image, label, text, neg in zip(b["id"], b["image"], b["label"], b["text"], b["text_neg"]):
            mirrored = not np.array_equal(image, full["image"][i])
            assert not mirrored or np.array_equal(image, full["image"][i][:, ::-1]), f"record {i}: image"
            assert label == full["label"][i]
            captions = [shapes.flip_text(c) if mirrored else c for c in full["captions"][i]]
            caption, negative = tok.decode(text), tok.decode(neg)
            assert caption in captions, (i, caption, captions)
            changed = [(a, n) for a, n in zip(caption.split(), negative.split()) if a != n]
            assert len(negative.split()) == len(caption.split()) and len(changed) == 1, (caption, negative)
            assert changed[0][0] in shapes.SHAPES and changed[0][1] in shapes.SHAPES, changed
            for key, value in (
                ("id", int(i)),
                ("caption", captions.index(caption)),
                ("mirrored", int(mirrored)),
                ("negative", changed[0][1]),
            ):
                row[key].append(value)
        for key in RECORDED:
            drawn[key].append(row[key])
    assert drawn == RECORDED


def _shout(text: str) -> str:  # module level: a transform's functions are pickled into Grain's workers
    return text.replace("red", "blue")


def test_the_text_grammar_is_the_datasets(registry, tok):
    """Flips mirror the text with the dataset's ``flip_text``; a dataset without one keeps its texts, and
    options that need grammar it lacks fail when the pipeline is built, naming the option."""
    pipeline.register_dataset("plain", _tiny())
    pipeline.register_dataset("mirrored", _tiny(flip_text=_shout))
    for name, want in (("plain", CAPTIONS[0]), ("mirrored", "a blue circle")):
        (batch,) = _batches(_cfg(name, flip_prob=1.0), tok, 1)
        for i, text in zip(batch["id"], batch["text"]):
            assert tok.decode(text) == (want if i % 4 == 0 else CAPTIONS[i % 4])
    with pytest.raises(ValueError, match=r"data.hard_negatives=True, .*Dataset.negative_caption"):
        _batches(_cfg("plain", hard_negatives=True), tok, 1)
    with pytest.raises(ValueError, match=r"data.images_per_example=2, .*Dataset.about_image"):
        pipeline.vlm_preprocess(_cfg("plain", images_per_example=2), tok, 4)
    with pytest.raises(ValueError, match=r"no two-image examples \(Dataset.about_image\)"):
        pipeline.load_pairs(_cfg("plain", caption_prompt="what is in the image"), "test", tokenizer=tok)


def test_the_registry_needs_no_data_stack():
    """A task asks the registry for its dataset's attribute words (the minimal-pair negatives of the main
    job) with Grain, TFDS and Pillow unimportable, as on a GPU machine that only benchmarks steps."""
    import subprocess

    code = textwrap.dedent(
        """
        import sys
        for name in ("grain", "PIL", "tensorflow_datasets", "array_record"):
            sys.modules[name] = None
        from mmjax import config, tasks
        from mmjax.data import registry, shapes
        cfg = config.load_file("configs/clip_shapes.py:tiny")
        assert cfg.loss.short_negatives == "minimal_pairs" and cfg.data.extra_short_caption
        task = tasks.get_task(cfg)
        assert registry.attribute_words(cfg.data) == (shapes.COLOURS, shapes.SHAPES)
        assert [len(g) for g in task.attribute_ids] == [len(shapes.COLOURS), len(shapes.SHAPES)]
        assert "mmjax.data.pipeline" not in sys.modules
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
