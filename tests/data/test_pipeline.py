import os
import time

import grain
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
import pytest

from mmjax.data import pipeline, shapes, shapes_builder

SIZES = dict(num_train=64, num_validation=16, num_test=16)


def _cfg(data_dir, **overrides):
    cfg = dict(
        name="shapes",
        data_dir=data_dir,
        seed=0,
        image_size=64,
        max_len=32,
        flip_prob=0.5,
        worker_count=0,
        worker_buffer_size=None,
        caption_sampling="random",
        **SIZES,
    )
    cfg.update(overrides)
    return ml_collections.ConfigDict(cfg)


def _batches(cfg, tok, n, *, seed=0, batch=16, **kwargs):
    it = iter(
        pipeline.train_loader(
            cfg,
            tokenizer=tok,
            global_batch_size=batch,
            seed=seed,
            shard_index=kwargs.pop("shard_index", 0),
            shard_count=kwargs.pop("shard_count", 1),
            **kwargs,
        )
    )
    return [next(it) for _ in range(n)]


def _assert_same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for k in x:
            np.testing.assert_array_equal(x[k], y[k])


def test_ensure_built_is_a_fast_no_op_the_second_time(data_dir):
    builder_dir = shapes_builder.get_builder(data_dir, **SIZES).data_dir
    mtime = os.path.getmtime(builder_dir)
    start = time.perf_counter()
    builder = shapes_builder.ensure_built(data_dir, **SIZES)
    assert time.perf_counter() - start < 2.0
    assert os.path.getmtime(builder_dir) == mtime
    assert builder.info.splits["train"].num_examples == SIZES["num_train"]
    assert "s0_px64_n64_16_16" in str(builder_dir)


def test_records_match_the_generator(data_dir):
    source = shapes_builder.ensure_built(data_dir, **SIZES).as_data_source("test")
    for i in (0, 5, 15):
        record, ex = source[i], shapes.generate_example(0, "test", i)
        assert record["id"] == i and record["label"] == ex["label"]
        assert [c.decode() for c in record["captions"]] == ex["captions"]
        np.testing.assert_array_equal(pipeline.decode_image(record["image_png"]), ex["image"])


def test_batch_layout(data_dir, tok):
    (batch,) = _batches(_cfg(data_dir), tok, 1)
    assert batch["image"].dtype == np.float32 and batch["image"].shape == (16, 64, 64, 3)
    assert batch["image"].min() >= -1 and batch["image"].max() <= 1
    assert batch["text"].dtype == np.int32 and batch["text"].shape == (16, 32)
    assert (batch["text"][:, 0] == tok.bos_id).all() and ((batch["text"] == tok.eot_id).sum(1) == 1).all()
    assert batch["label"].dtype == np.int32 and batch["id"].dtype == np.int32 and not batch["truncated"].any()


def test_same_seed_same_batches_and_new_order_each_epoch(data_dir, tok):
    cfg = _cfg(data_dir)
    a = _batches(cfg, tok, 8, seed=3)
    _assert_same(a, _batches(cfg, tok, 8, seed=3))
    other = _batches(cfg, tok, 4, seed=4)
    assert not np.array_equal(
        np.concatenate([b["id"] for b in a[:4]]), np.concatenate([b["id"] for b in other])
    )
    epoch1, epoch2 = (np.concatenate([b["id"] for b in a[k : k + 4]]) for k in (0, 4))
    assert sorted(epoch1) == sorted(epoch2) == list(range(64)) and not np.array_equal(epoch1, epoch2)


def test_num_epochs_ends_iteration(data_dir, tok):
    it = iter(
        pipeline.train_loader(
            _cfg(data_dir),
            tokenizer=tok,
            global_batch_size=16,
            seed=0,
            shard_index=0,
            shard_count=1,
            num_epochs=2,
        )
    )
    assert len(list(it)) == 8


def test_shards_are_disjoint(data_dir, tok):
    cfg = _cfg(data_dir)
    ids = [
        np.concatenate([b["id"] for b in _batches(cfg, tok, 4, shard_index=i, shard_count=2)]) for i in (0, 1)
    ]
    assert ids[0].shape == (32,) and set(ids[0]).isdisjoint(ids[1]) and len(set(ids[0]) | set(ids[1])) == 64


def test_process_batches_concatenate_to_the_global_batch(data_dir, tok):
    """Process p's local batch is the p-th block of rows of the one-process global batch (augmentation and
    epoch boundaries included), so the global batches do not depend on the number of processes."""
    cfg = _cfg(data_dir, hard_negatives=True)
    want = _batches(cfg, tok, 5, seed=2)  # 5 x 16 rows: into the second epoch of 64
    for n in (2, 4):
        shards = [_batches(cfg, tok, 5, seed=2, shard_index=p, shard_count=n) for p in range(n)]
        _assert_same(
            want, [{k: np.concatenate([s[t][k] for s in shards]) for k in want[t]} for t in range(5)]
        )


def test_shards_end_together(data_dir, tok):
    """With a finite number of epochs every process gets as many batches as one process would."""
    counts = [
        len(
            list(
                pipeline.train_loader(
                    _cfg(data_dir),
                    tokenizer=tok,
                    global_batch_size=24,
                    seed=0,
                    shard_index=p,
                    shard_count=n,
                    num_epochs=1,
                )
            )
        )
        for n in (1, 2)
        for p in range(n)
    ]
    assert counts == [2, 2, 2]


def test_batch_not_divisible_by_shards(data_dir, tok):
    with pytest.raises(ValueError, match=r"global batch size 10 .* 4"):
        pipeline.train_loader(
            _cfg(data_dir), tokenizer=tok, global_batch_size=10, seed=0, shard_index=0, shard_count=4
        )


def test_state_restore_resumes_exactly(data_dir, tok):
    loader = pipeline.train_loader(
        _cfg(data_dir), tokenizer=tok, global_batch_size=8, seed=1, shard_index=0, shard_count=1
    )
    it = iter(loader)
    for _ in range(3):
        next(it)
    state = it.get_state()
    want = [next(it) for _ in range(2)]
    fresh = iter(loader)
    fresh.set_state(state)
    _assert_same(want, [next(fresh) for _ in range(2)])


def test_orbax_checkpoint_of_iterator(data_dir, tok, tmp_path):
    loader = pipeline.train_loader(
        _cfg(data_dir), tokenizer=tok, global_batch_size=8, seed=1, shard_index=0, shard_count=1
    )
    it = iter(loader)
    next(it)
    with ocp.CheckpointManager(str(tmp_path / "ckpt")) as manager:
        manager.save(1, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(it)))
        manager.wait_until_finished()
        want = [next(it) for _ in range(2)]
        fresh = iter(loader)
        manager.restore(1, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(fresh)))
    _assert_same(want, [next(fresh) for _ in range(2)])


def test_flip_keeps_caption_consistent(data_dir, tok):
    full = pipeline.load_split(_cfg(data_dir), "train", tokenizer=tok)
    for flip_prob in (0.0, 1.0):
        cfg = _cfg(data_dir, flip_prob=flip_prob, caption_sampling="canonical")
        (batch,) = _batches(cfg, tok, 1, batch=32)
        for i, image, text in zip(batch["id"], batch["image"], batch["text"]):
            caption = full["caption"][i]
            want_image, want_text = (
                (np.fliplr(full["image"][i]), shapes.flip_text(caption))
                if flip_prob
                else (full["image"][i], caption)
            )
            np.testing.assert_array_equal(image, want_image)
            assert tok.decode(text) == want_text
    assert "left" in caption or "right" in caption or "center" in caption or "middle" in caption


def test_random_caption_sampling_uses_all_captions(data_dir, tok):
    full = pipeline.load_split(_cfg(data_dir), "train", tokenizer=tok)
    batches = _batches(_cfg(data_dir, flip_prob=0.0), tok, 8)
    picked = {(int(i), tok.decode(t)) for b in batches for i, t in zip(b["id"], b["text"])}
    assert all(text in full["captions"][i] for i, text in picked)
    assert sum(text != full["caption"][i] for i, text in picked) > len(picked) // 2


def test_workers_give_the_same_batches(data_dir, tok):
    want = _batches(_cfg(data_dir), tok, 3, seed=2)
    it = iter(
        pipeline.train_loader(
            _cfg(data_dir, worker_count=2),
            tokenizer=tok,
            global_batch_size=16,
            seed=2,
            shard_index=0,
            shard_count=1,
        )
    )
    try:
        _assert_same(want, [next(it) for _ in range(3)])
    finally:
        it.close()


def test_load_split(data_dir, tok):
    d = pipeline.load_split(_cfg(data_dir), "test", tokenizer=tok, max_examples=10)
    assert d["image"].shape == (10, 64, 64, 3) and d["image"].dtype == np.float32
    assert d["text"].shape == (10, 32) and d["text"].dtype == np.int32
    np.testing.assert_array_equal(d["text"], tok.tokenize(d["caption"], 32))
    assert d["caption"] == [c[0] for c in d["captions"]] and d["label"].dtype == np.int32
    assert len(d["questions"]) == len(d["answers"]) == len(d["question_types"]) == 10
    assert d["class_names"] == shapes.CLASS_NAMES == pipeline.class_names(_cfg(data_dir))
    assert all(shapes.is_held_out(*d["class_names"][label].split()) for label in d["label"])
    np.testing.assert_array_equal(
        pipeline.denormalize(d["image"][0]), shapes.generate_example(0, "test", 0)["image"]
    )


def test_bad_names(data_dir, tok):
    with pytest.raises(ValueError, match="unknown split 'dev'; valid splits: train, validation, test"):
        pipeline.load_split(_cfg(data_dir), "dev", tokenizer=tok)
    with pytest.raises(ValueError, match="unknown dataset 'mnist'"):
        pipeline.class_names(_cfg(data_dir, name="mnist"))


def test_prompt_templates_use_known_words(tok):
    templates = pipeline.prompt_templates()
    assert len(templates) >= 4 and all("{}" in t for t in templates)
    for t in templates:
        assert tok.unk_id not in tok.encode(t.format("red circle"))


def test_hard_negative_captions_differ_in_one_shape_word(data_dir, tok):
    (batch,) = _batches(_cfg(data_dir, hard_negatives=True), tok, 1, batch=16)
    shape_ids = {tok.encode(s)[0] for s in shapes.SHAPES}
    for text, neg in zip(batch["text"], batch["text_neg"]):
        changed = np.flatnonzero(text != neg)
        assert len(changed) == 1 and text[changed[0]] in shape_ids and neg[changed[0]] in shape_ids
    (plain,) = _batches(_cfg(data_dir), tok, 1, batch=16)
    assert "text_neg" not in plain


def test_short_caption_prob_picks_the_main_object_caption(data_dir, tok):
    full = pipeline.load_split(_cfg(data_dir), "train", tokenizer=tok)
    (always,) = _batches(_cfg(data_dir, flip_prob=0.0, short_caption_prob=1.0), tok, 1, batch=32)
    for i, text in zip(always["id"], always["text"]):
        assert tok.decode(text) == full["captions"][i][shapes.SHORT_CAPTION]
    # part of the time: both kinds occur; at 0 the batches are the default's, draw for draw
    half = _batches(_cfg(data_dir, flip_prob=0.0, short_caption_prob=0.5), tok, 4)
    short = [
        tok.decode(t) == full["captions"][i][shapes.SHORT_CAPTION]
        for b in half
        for i, t in zip(b["id"], b["text"])
    ]
    assert 0.35 < np.mean(short) < 0.85  # 0.5 + 0.5 / 6 expected
    _assert_same(_batches(_cfg(data_dir, short_caption_prob=0.0), tok, 2), _batches(_cfg(data_dir), tok, 2))
    with pytest.raises(ValueError, match=r"short_caption_prob=1.5 is not a probability"):
        _batches(_cfg(data_dir, short_caption_prob=1.5), tok, 1)


def test_extra_short_caption_is_a_second_text_of_the_same_example(data_dir, tok):
    full = pipeline.load_split(_cfg(data_dir), "train", tokenizer=tok)
    (batch,) = _batches(_cfg(data_dir, extra_short_caption=True), tok, 1, batch=32)
    (plain,) = _batches(_cfg(data_dir), tok, 1, batch=32)
    assert "text_short" not in plain
    _assert_same([{k: v for k, v in batch.items() if k != "text_short"}], [plain])  # nothing else changes
    for i, short in zip(batch["id"], batch["text_short"]):
        assert tok.decode(short) == full["captions"][i][shapes.SHORT_CAPTION]  # names no side: flips keep it
