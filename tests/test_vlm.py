"""Fusion models through the one train loop: stage 1 loads a CLIP vision tower and trains only the
projector (frozen parameters unchanged, no optimizer state for them); stage 2 starts from stage 1's
weights; deep fusion trains only its resampler, cross-attention and new tokens; the sharded steps equal
the single-device ones (gradients included, deep fusion's with its gates open); init_from errors name the
parameter."""

import json
import os

import flax
import flax.linen as nn
import jax
import ml_collections
import numpy as np
import pytest
from helpers import assert_grads_close, saved_params, step_with_grads

from mmjax import checkpoint, sharding, tasks, train
from mmjax import config as config_lib
from mmjax import optimizer as optimizer_lib
from mmjax.config import ConfigError
from mmjax.run import build_run

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("tfds"))


def load(spec, data_dir, **overrides):
    cfg = config_lib.load_file(os.path.join(ROOT, "configs", spec))
    config_lib.override(cfg, "data.data_dir", data_dir)
    for key, value in overrides.items():
        config_lib.override(cfg, key, str(value))
    return cfg


def initial_params(cfg):
    """The parameters a run of ``cfg`` starts from (initialised as ``train`` does, on the same mesh)."""
    return jax.device_get(build_run(cfg).init(init_from=False).params)


def flat(tree):
    return flax.traverse_util.flatten_dict(tree, sep="/")


@pytest.fixture(scope="module")
def clip_run(data_dir, tmp_path_factory):
    """A tiny CLIP checkpoint (initial weights are enough to check what is loaded)."""
    workdir = str(tmp_path_factory.mktemp("clip"))
    cfg = load("clip_shapes.py:tiny", data_dir)
    state = build_run(cfg, mesh=sharding.make_mesh(cfg.mesh, jax.devices()[:1])).init(seed=7)
    ckpt = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"))
    ckpt.save(1, state)
    ckpt.wait()
    ckpt.close()
    return workdir, jax.device_get(state.params)


@pytest.fixture(scope="module")
def stage1(clip_run, data_dir, tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("stage1"))
    cfg = load(
        "llava_shapes.py:stage=1,tiny",
        data_dir,
        **{"init_from.workdir": clip_run[0], "total_steps": 4, "eval.num_examples": 8},
    )
    results = train.train_and_evaluate(cfg, workdir)
    return workdir, cfg, results


def test_stage1_trains_only_the_projector_and_grid_positions_on_the_clip_vision_tower(stage1, clip_run):
    workdir, cfg, results = stage1
    final = flat(saved_params(workdir, cfg))
    initial = flat(initial_params(cfg))
    clip = flat(clip_run[1])
    for key, value in final.items():
        if key.startswith("image/"):  # loaded from CLIP, then frozen
            np.testing.assert_array_equal(value, clip[key], err_msg=key)
        elif key.startswith("lm/"):  # frozen at its initial value
            np.testing.assert_array_equal(value, initial[key], err_msg=key)
        else:
            # the projector and the position vector per image token it feeds
            assert key.startswith(("proj_", "grid_pos/")) and not np.array_equal(value, initial[key]), key
    # results and report
    for key in (
        "vqa_accuracy",
        "vqa_accuracy_colour",
        "vqa_accuracy_count",
        "caption_bleu4",
        "caption_objects_correct",
        "steps",
    ):
        assert key in results
    assert results["steps"] == 4 and results["vqa_questions"] >= 8 * 5
    with open(os.path.join(workdir, "results.json")) as f:
        assert json.load(f) == results
    assert sorted(os.listdir(clip_run[0])) == ["checkpoints"]  # the source run is only read
    assert os.path.getsize(os.path.join(workdir, "examples.png")) > 5000
    assert "examples.png" in open(os.path.join(workdir, "report.md")).read()


def test_from_run_reads_the_run_as_it_trained(stage1, tmp_path):
    """``tasks.from_run``: the config saved with the checkpoint (the command-line overrides included) and
    its weights; a directory without a checkpoint is one line saying to train it first."""
    workdir, cfg, _ = stage1
    config, task, params = tasks.from_run(workdir)
    assert config.total_steps == 4 and config.eval.num_examples == 8  # the overrides the run had
    assert config.init_from.workdir == cfg.init_from.workdir
    assert task.model.lm.width == cfg.model.lm.width
    assert config.model.image.stem_channels == tuple(cfg.model.image.stem_channels)  # JSON's list undone
    hash(task.model)  # jit needs hashable module fields
    saved = flat(saved_params(workdir, cfg))
    got = flat(jax.device_get(params))
    assert got.keys() == saved.keys()
    for key, value in saved.items():
        np.testing.assert_array_equal(got[key], value, err_msg=key)
    with pytest.raises(ConfigError, match="no checkpoint with a saved config; train it first"):
        tasks.from_run(str(tmp_path))


def test_frozen_parameters_have_no_optimizer_state(data_dir):
    cfg = load("llava_shapes.py:stage=1,tiny", data_dir)
    task = tasks.get_task(cfg)
    params = jax.eval_shape(lambda: nn.unbox(task.init(jax.random.key(0))))
    tx = optimizer_lib.make(cfg.optimizer, cfg.total_steps, params)
    opt_state = jax.eval_shape(tx.init, params)
    size = lambda tree: sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))  # noqa: E731
    projector = {k: v for k, v in params.items() if k.startswith("proj_") or k == "grid_pos"}
    assert "grid_pos" in projector  # the config's position vector per image token learns with it
    assert size(opt_state) - size(projector) * 2 < 10  # Adam's two moments of the projector (+ counters)


def test_stage2_starts_from_stage1_weights(stage1, data_dir, tmp_path):
    s1_dir, s1_cfg, _ = stage1
    cfg = load(
        "llava_shapes.py:stage=2,tiny",
        data_dir,
        **{"init_from.workdir": s1_dir, "total_steps": 1, "optimizer.lr": 0.0, "eval.num_examples": 2},
    )
    assert cfg.init_from.regex == (".*",) and cfg.optimizer.freeze_regex == ("image/.*",)
    train.train_and_evaluate(cfg, str(tmp_path))
    jax.tree.map(
        np.testing.assert_array_equal, saved_params(str(tmp_path), cfg), saved_params(s1_dir, s1_cfg)
    )


def test_init_from_errors_name_the_parameter(clip_run, data_dir):
    cfg = load("llava_shapes.py:stage=1,tiny", data_dir)
    params = jax.eval_shape(lambda: nn.unbox(tasks.get_task(cfg).init(jax.random.key(0))))
    wider = load("llava_shapes.py:stage=1,tiny", data_dir, **{"model.image.width": 64})
    wide_params = jax.eval_shape(lambda: nn.unbox(tasks.get_task(wider).init(jax.random.key(0))))
    mismatch = r"'image/colour_embed/kernel' has shape \(16, 32\) in .* but \(16, 64\) in the model"
    with pytest.raises(ConfigError, match=mismatch):
        checkpoint.load_params(clip_run[0], wide_params, ("image/.*",))
    with pytest.raises(ConfigError, match="matches no parameter"):
        checkpoint.load_params(clip_run[0], params, ("vision/.*",))
    with pytest.raises(ConfigError, match="'lm/ln_final/scale' is not in checkpoint"):
        checkpoint.load_params(clip_run[0], params, ("lm/ln_final/.*",))
    with pytest.raises(ConfigError, match="no checkpoint in"):
        checkpoint.load_params(os.path.join(clip_run[0], "missing"), params, (".*",))


def test_deep_fusion_on_pairs_trains_only_resampler_cross_attention_and_new_tokens(data_dir, tmp_path):
    """The two-image config: only the resampler, the blocks, the new tokens and the image-slot
    embeddings train (and only they have Adam moments); evaluation asks both images' questions."""
    cfg = load("flamingo_shapes.py:pairs,tiny", data_dir, **{"total_steps": 4, "eval.num_examples": 4})
    results = train.train_and_evaluate(cfg, str(tmp_path))  # 4 steps: the gates open at step 2
    assert results["vqa_questions"] == 4 * 2 * 6  # both images' six questions, for each of 4 pairs
    assert 0 <= results["vqa_accuracy_images_swapped"] <= 1
    assert results["caption_examples"] == 4 and os.path.getsize(tmp_path / "examples.png") > 10_000
    final, initial = flat(saved_params(str(tmp_path), cfg)), flat(initial_params(cfg))
    trained = [k for k in final if not np.array_equal(final[k], initial[k])]
    assert trained and all(
        k.split("/")[0] in ("resampler", "new_token_embed", "image_pos_embed") or k.startswith("xattn_")
        for k in trained
    )
    assert any(k.endswith("attn_gate") for k in trained)  # the gates open
    assert "image_pos_embed" in trained and final["image_pos_embed"].shape == (2, cfg.model.image.width)
    params = jax.eval_shape(lambda: nn.unbox(tasks.get_task(cfg).init(jax.random.key(0))))
    opt_state = jax.eval_shape(optimizer_lib.make(cfg.optimizer, 4, params).init, params)
    size = lambda tree: sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))  # noqa: E731
    learnable = {k: v for k, v in params.items() if k not in ("image", "lm")}
    assert 0 <= size(opt_state) - 2 * size(learnable) < 10  # Adam moments of the learnable part only


@pytest.fixture(scope="module")
def blind_lm(data_dir, tmp_path_factory):
    """A tiny blind LM run (configs/lm_shapes.py:tiny, 2 steps): ``(workdir, config)``."""
    lm_dir = str(tmp_path_factory.mktemp("lm"))
    lm_cfg = load("lm_shapes.py:tiny", data_dir, **{"total_steps": 2, "eval.num_examples": 2})
    train.train_and_evaluate(lm_cfg, lm_dir)
    return lm_dir, lm_cfg


def test_deep_fusion_loads_its_vision_tower_and_lm_from_two_runs(clip_run, blind_lm, data_dir, tmp_path):
    lm_dir, lm_cfg = blind_lm
    cfg = load(
        "flamingo_shapes.py:tiny",
        data_dir,
        **{
            "init_from.workdir": clip_run[0],
            "init_from.also": f"(({lm_dir!r}, ('lm/.*',)),)",
            "total_steps": 1,
            "eval.num_examples": 2,
        },
    )
    train.train_and_evaluate(cfg, str(tmp_path / "flamingo"))
    final, lm, clip = (
        flat(saved_params(str(tmp_path / "flamingo"), cfg)),
        flat(saved_params(lm_dir, lm_cfg)),
        flat(clip_run[1]),
    )
    for key, value in final.items():
        if key.split("/")[0] in ("image", "lm"):  # loaded, then frozen
            np.testing.assert_array_equal(value, (clip if key.startswith("image/") else lm)[key], err_msg=key)


def test_init_sources():
    assert checkpoint.init_sources(None) == [] and checkpoint.init_sources(dict(workdir=None, regex=())) == []
    assert checkpoint.init_sources(dict(workdir="a", regex=("x/.*",), also=(("b", ("y/.*",)),))) == [
        ("a", ("x/.*",)),
        ("b", ("y/.*",)),
    ]
    with pytest.raises(ConfigError, match="not a \\(workdir"):
        checkpoint.init_sources(dict(workdir=None, regex=(), also=(("b", "y/.*"),)))


GATE = 0.5  # deep fusion's gates start at 0 (tanh(0) = 0): no gradient reaches its resampler and blocks


@pytest.mark.parametrize(
    "spec", ["llava_shapes.py:stage=2,tiny", "flamingo_shapes.py:tiny", "flamingo_shapes.py:trained_lm,tiny"]
)
def test_vlm_step_sharded_equals_single_device(data_dir, spec):
    """Two steps on fsdp_tp over 8 devices == on one: losses, gradient norms, the gradients (at the moved
    state of the second step: Adam's update would hide a gradient's scale) and the parameters. Warmup is off
    (its first step has lr 0) and deep fusion's gates are set to GATE, so that every trainable part moves."""

    def two_steps(mesh_shape, strategy, devices):
        cfg = load(spec, data_dir, **{"optimizer.warmup_steps": 0})
        cfg.mesh, cfg.sharding.strategy = ml_collections.ConfigDict(mesh_shape), strategy
        run = build_run(cfg, mesh=sharding.make_mesh(cfg.mesh, devices))
        task = run.task
        from mmjax.data.pipeline import encode_vlm

        qa = [
            ("what colour is the star", "red"),
            ("how many objects are there", "two"),
            ("what is in the image", "a small blue circle in the center on a grey background"),
        ] * 3
        tokens = np.stack(
            [encode_vlm(task.tokenizer, task.num_image_tokens, q, a, cfg.data.max_len)[0] for q, a in qa[:8]]
        )
        images = np.random.default_rng(0).uniform(-1, 1, (8, 64, 64, 3)).astype(np.float32)
        batch = {"image": images, "tokens": tokens}
        with run.context():
            state = run.init(init_from=False)
            params = jax.tree_util.tree_map_with_path(
                lambda path, x: np.full_like(x, GATE) if "gate" in jax.tree_util.keystr(path) else x,
                jax.device_get(state.params),
            )
            state = state.replace(params=jax.device_put(params, run.shardings.params))
            step = step_with_grads(run)
            losses, grad_norms = [], []
            for _ in range(2):
                state, metrics, grads = step(state, run.global_batch(batch))
                losses.append(float(metrics["loss"]))
                grad_norms.append(float(metrics["grad_norm"]))
        return losses, grad_norms, jax.device_get(grads), params, jax.device_get(state.params), run.trainable

    one = two_steps(dict(data=1, fsdp=1, tensor=1), "dp", jax.devices()[:1])
    many = two_steps(dict(data=2, fsdp=2, tensor=2), "fsdp_tp", jax.devices())
    np.testing.assert_allclose(many[0], one[0], rtol=1e-5)
    np.testing.assert_allclose(many[1], one[1], rtol=1e-5)
    assert_grads_close(many[2], one[2])
    # Adam divides each update by the gradient's own size, so where a gradient is at rounding level (eps=1e-8)
    # the update's rounding is a fraction of lr=1e-3: the gradients above are the tight check
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=5e-5), many[4], one[4])
    grads, initial, final, trainable = (flat(x) for x in one[2:])
    for key, t in trainable.items():  # the trainable parameters had gradients and moved; the frozen did not
        moved = np.abs(final[key] - initial[key]).max()
        if not t:
            assert moved == 0, key
        elif not key.endswith("/key/bias"):  # (softmax ignores a shift shared by all keys: no gradient)
            assert moved > 1e-4 and np.abs(grads[key]).max() > 1e-6, (key, moved)
    parts = {k.split("/")[0] for k, t in trainable.items() if t}
    deep = {"resampler", "new_token_embed", "xattn_0", "xattn_1"}
    assert parts == (
        (deep | {"lm", "grid_pos"} if "trained_lm" in spec else deep)
        if "flamingo" in spec
        else {"lm", "proj_0", "grid_pos"}  # the linear projector: one layer
    ), parts


def test_early_fusion_pairs_config_gives_two_images_and_their_placeholders(data_dir):
    cfg = load("llava_shapes.py:stage=2,pairs,tiny", data_dir)
    task = tasks.get_task(cfg)
    batch = next(iter(task.train_loader(4, 0)))
    assert task.num_image_tokens == 2 * 16 and batch["image"].shape == (4, 2, 64, 64, 3)
    assert ((batch["tokens"] == task.tokenizer.image_id).sum(1) == 32).all()
    loss, metrics = task.loss(nn.unbox(task.init(jax.random.key(0))), batch, None)
    assert np.isfinite(loss) and metrics["target_tokens"] > 0


@pytest.mark.parametrize("spec", ["llava_shapes.py:stage=2,tiny", "flamingo_shapes.py:tiny"])
def test_prior_from_adds_the_blind_lms_log_probs_of_the_text_without_image_tokens(spec, blind_lm, data_dir):
    """loss.prior_from: the loss is the cross-entropy of model logits + prior_weight x the blind LM's
    log-probabilities, those computed on the row without its [IMG] placeholders (the blind LM's own
    layout); prior_weight=0 is the plain loss; the blind LM's parameters are not trained (not in the
    model's parameters) and get no gradient; the model's gradient changes."""
    lm_dir, lm_cfg = blind_lm
    plain_cfg = load(spec, data_dir)
    whole = {"loss.prior_from": lm_dir, "loss.prior_groups": ()}  # the whole vocabulary, no groups
    plain, task = tasks.get_task(plain_cfg), tasks.get_task(load(spec, data_dir, **whole))
    off = tasks.get_task(load(spec, data_dir, **whole, **{"loss.prior_weight": 0.0}))
    batch = jax.tree.map(np.asarray, next(iter(plain.train_loader(4, 0))))
    params = initial_params(plain_cfg)
    assert (
        flat(params).keys()
        == flat(initial_params(load(spec, data_dir, **{"loss.prior_from": lm_dir}))).keys()
    )

    tokens, image_id = batch["tokens"], task.tokenizer.image_id
    blind, prior_params = task.prior
    np.testing.assert_array_equal(
        flat(prior_params)["lm/ln_final/scale"], flat(saved_params(lm_dir, lm_cfg))["lm/ln_final/scale"]
    )
    row = tokens[0][tokens[0] != image_id]  # the blind LM's layout: [BOS] prompt [SEP] answer [EOT] PAD
    row = np.concatenate([row, np.zeros(len(tokens[0]) - len(row), row.dtype)])
    expected = jax.nn.log_softmax(blind.apply({"params": prior_params}, None, row[None])[0][0], axis=-1)
    text_positions = np.flatnonzero(tokens[0] != image_id)
    got = np.asarray(task.prior_logits(tokens))[0]
    np.testing.assert_allclose(got[text_positions], np.asarray(expected)[: len(text_positions)], atol=1e-5)

    loss = lambda t, p: t.loss(p, batch, None)[0]  # noqa: E731
    assert abs(float(loss(task, params)) - float(loss(plain, params))) > 1e-3
    np.testing.assert_allclose(float(loss(off, params)), float(loss(plain, params)), rtol=1e-6)
    g_prior, g_plain = jax.grad(lambda p: loss(task, p))(params), jax.grad(lambda p: loss(plain, p))(params)
    moved = [
        k
        for k, v in flat(g_prior).items()
        if np.abs(np.asarray(v) - np.asarray(flat(g_plain)[k])).max() > 1e-6
    ]
    assert moved  # the prior changes what the model learns


def test_prior_groups_keep_the_prior_to_the_choice_within_a_group(blind_lm, data_dir):
    """loss.prior_groups: a grouped word's prior is the blind LM's log-probability of it among its group
    (so each group's prior probabilities sum to 1), every other token's prior is 0; bad groups are one
    clear error."""
    lm_dir, _ = blind_lm
    spec = "llava_shapes.py:stage=2,tiny"
    groups = ("red green blue yellow purple orange white black", "yes no")
    full = tasks.get_task(load(spec, data_dir, **{"loss.prior_from": lm_dir, "loss.prior_groups": ()}))
    task = tasks.get_task(load(spec, data_dir, **{"loss.prior_from": lm_dir, "loss.prior_groups": groups}))
    tokens = np.asarray(next(iter(full.train_loader(2, 0)))["tokens"])
    logp, grouped = np.asarray(full.prior_logits(tokens)), np.asarray(task.prior_logits(tokens))
    text = tokens != task.tokenizer.image_id
    for group in groups:
        ids = [task.tokenizer.encode(w)[0] for w in group.split()]
        expected = logp[..., ids] - np.log(np.exp(logp[..., ids]).sum(-1, keepdims=True))
        np.testing.assert_allclose(grouped[text][:, ids], expected[text], atol=1e-5)
        np.testing.assert_allclose(np.exp(grouped[text][:, ids]).sum(-1), 1.0, atol=1e-5)
    others = np.setdiff1d(np.arange(grouped.shape[-1]), np.nonzero(task.prior_groups.sum(1))[0])
    assert np.abs(grouped[..., others]).max() == 0 and np.abs(logp[text][:, others]).max() > 0.1
    with_prior = {"loss.prior_from": lm_dir}
    with pytest.raises(ConfigError, match="'blue' is in more than one group; keep one"):
        tasks.get_task(load(spec, data_dir, **with_prior, **{"loss.prior_groups": ("red blue", "blue")}))
    with pytest.raises(ConfigError, match="'purplish' is not one token of 'shapes_words'"):
        tasks.get_task(load(spec, data_dir, **with_prior, **{"loss.prior_groups": ("red purplish",)}))
    # without a prior the groups are not read (a config may keep them for another tokenizer)
    assert (
        tasks.get_task(load(spec, data_dir, **{"loss.prior_groups": ("red purplish",)})).prior_groups is None
    )


def test_prior_is_built_as_its_own_run_was(data_dir, tmp_path):
    """loss.prior_from reads the blind LM's architecture from that run's saved config: a one-block prior
    under a two-block fusion LM gives the one-block LM's log-probabilities; another tokenizer is one line."""
    lm_dir = str(tmp_path / "lm1")
    lm_cfg = load(
        "lm_shapes.py:tiny", data_dir, **{"total_steps": 1, "eval.num_examples": 2, "model.lm.depth": 1}
    )
    train.train_and_evaluate(lm_cfg, lm_dir)
    cfg = load(
        "llava_shapes.py:stage=2,tiny", data_dir, **{"loss.prior_from": lm_dir, "loss.prior_groups": ()}
    )
    task = tasks.get_task(cfg)
    blind, prior_params = task.prior
    assert cfg.model.lm.depth == 2 and blind.lm.depth == 1 and "block_1" not in prior_params["lm"]
    tokens = np.asarray(next(iter(task.train_loader(2, 0)))["tokens"])
    first = tokens[:1, : np.argmax(tokens[0] == task.tokenizer.image_id)]  # [BOS] before the image tokens
    expected = jax.nn.log_softmax(blind.apply({"params": prior_params}, None, first)[0], axis=-1)
    np.testing.assert_allclose(
        np.asarray(task.prior_logits(tokens))[0, : first.shape[1]], expected[0], atol=1e-5
    )
    other = load("llava_shapes.py:stage=2,tiny", data_dir, **{"loss.prior_from": lm_dir})
    config_lib.override(other, "data.tokenizer", "bytes")
    config_lib.override(other, "model.lm.vocab_size", "512")
    with pytest.raises(ConfigError, match="that run's tokenizer 'shapes_words' is not this run's 'bytes'"):
        tasks.get_task(other)
    missing = load("llava_shapes.py:stage=2,tiny", data_dir, **{"loss.prior_from": str(tmp_path / "none")})
    with pytest.raises(
        ConfigError,
        match=r"^loss.prior_from=.*none: .*no checkpoint .*; train the blind LM first: .*lm_shapes.py",
    ):
        tasks.get_task(missing)
