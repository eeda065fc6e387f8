"""Sharding strategies on 8 simulated devices: every strategy computes what one device computes,
places each parameter where it declares, and FSDP divides the state's memory by the device count;
checkpoints move between meshes."""

import json
import os

import jax
import ml_collections
import numpy as np
import pytest
from helpers import assert_grads_close, step_with_grads
from jax.sharding import PartitionSpec as P

from mmjax import config as config_lib
from mmjax import sharding, train
from mmjax.checkpoint import Checkpointer
from mmjax.run import build_run

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

MESHES = {  # strategy -> a mesh that exercises it
    "dp": dict(data=8, fsdp=1, tensor=1),
    "fsdp": dict(data=1, fsdp=8, tensor=1),
    "tp": dict(data=4, fsdp=1, tensor=2),
    "fsdp_tp": dict(data=2, fsdp=2, tensor=2),
}


def config(strategy="dp", mesh=None, file="clip_shapes", **overrides):
    cfg = config_lib.load_file(os.path.join(ROOT, f"configs/{file}.py:tiny"))
    cfg.sharding.strategy = strategy
    cfg.mesh = ml_collections.ConfigDict(mesh or MESHES[strategy])
    for key, value in overrides.items():
        config_lib.override(cfg, key, str(value))
    return cfg


def synthetic_batches(task, n, batch_size=32):
    spec = task.batch_spec(batch_size)
    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        text = rng.integers(4, 40, spec["text"].shape).astype(np.int32)
        text[:, 0], text[:, 12] = 1, 2  # BOS ... EOT
        batch = {"image": rng.uniform(-1, 1, spec["image"].shape).astype(np.float32), "text": text}
        if task.config.data.get("extra_short_caption"):  # two words of 4..40: some are minimal pairs
            short = np.zeros_like(text)
            short[:, 0], short[:, 1:3], short[:, 3] = 1, rng.integers(4, 40, (batch_size, 2)), 2
            batch["text_short"] = short
        out.append(batch)
    return out


def run_steps(cfg, n=3, devices=None):
    """What ``n`` train steps of ``cfg`` on ``devices`` (default: all) compute, as a dict: per-step ``losses``
    and ``grad_norms``, ``grads`` (the gradients of the last step, at a state that has moved), the
    ``initial`` and final ``params`` (numpy), and the final ``state``.

    Warmup is off: its first step has learning rate 0, so the first update would be empty and two of the
    three losses would be computed on the initial parameters. The gradients are compared as well as the
    parameters because Adam's update ignores a uniform scale of the gradient (a psum for a pmean)."""
    config_lib.override(cfg, "optimizer.warmup_steps", "0")
    run = build_run(cfg, mesh=sharding.make_mesh(cfg.mesh, devices))
    out = {"losses": [], "grad_norms": []}
    with run.context():
        state = run.init()
        out["initial"] = jax.device_get(state.params)
        step = step_with_grads(run)
        for batch in synthetic_batches(run.task, n):
            state, metrics, grads = step(state, run.global_batch(batch))
            out["losses"].append(float(metrics["loss"]))
            out["grad_norms"].append(float(metrics["grad_norm"]))
    return dict(out, grads=jax.device_get(grads), params=jax.device_get(state.params), state=state)


def assert_trained_alike(got, want):
    """``got`` (a sharded run) computed what ``want`` (one device) did: losses, gradient norms, the last
    step's gradients and the final parameters; and the parameters really moved."""
    np.testing.assert_allclose(got["losses"], want["losses"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got["grad_norms"], want["grad_norms"], rtol=1e-5)
    assert_grads_close(got["grads"], want["grads"])
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5), got["params"], want["params"]
    )
    # every parameter trained (Adam's steps are about lr = 2e-3), except the attention key biases: softmax
    # over the keys ignores a shift that is the same for every key, so their gradient is zero up to rounding
    moved = {k: float(np.abs(v - flat(want["initial"])[k]).max()) for k, v in flat(want["params"]).items()}
    assert all(m > 1e-4 for k, m in moved.items() if not k.endswith("/key/bias")), moved


@pytest.fixture(scope="module")
def single_device():
    return {
        file: run_steps(config(mesh=dict(data=1, fsdp=1, tensor=1), file=file), devices=jax.devices()[:1])
        for file in ("clip_shapes", "siglip_shapes")
    }


@pytest.fixture(scope="module")
def runs():
    """strategy -> ``run_steps`` of 3 steps on its mesh, computed on first use."""
    cache = {}

    def get(strategy):
        if strategy not in cache:
            cache[strategy] = run_steps(config(strategy))
        return cache[strategy]

    return get


@pytest.mark.parametrize("strategy", list(MESHES))
def test_strategy_equals_single_device(strategy, single_device, runs):
    assert_trained_alike(runs(strategy), single_device["clip_shapes"])


def test_siglip_ring_on_fsdp_tp_equals_single_device(single_device):
    cfg = config("fsdp_tp", file="siglip_shapes")
    assert cfg.loss.impl == "ring"
    assert_trained_alike(run_steps(cfg), single_device["siglip_shapes"])


# What each strategy declares for representative parameters (tiny model: width 32, 2 heads of 16,
# MLP 64; on each strategy's mesh from MESHES).
QKV = "params/image/encoder/block_0/attn/query/kernel"  # (embed, heads, kv)
QKV_BIAS = "params/image/encoder/block_0/attn/query/bias"  # (heads, kv)
FC1 = "params/text/encoder/block_0/mlp/fc1/kernel"  # (embed, mlp)
FC2 = "params/text/encoder/block_0/mlp/fc2/kernel"  # (mlp, embed)
TOKENS = "params/text/token_embed/embedding"  # (vocab, embed)
LN = "params/text/ln_final/scale"  # (embed,)
SCALE = "params/logit_scale"  # ()
EXPECTED = {
    "dp": {
        QKV: P(None, None, None),
        QKV_BIAS: P(None, None),
        FC1: P(None, None),
        FC2: P(None, None),
        TOKENS: P(None, None),
        LN: P(None),
        SCALE: P(),
    },
    "fsdp": {
        QKV: P("fsdp", None, None),
        QKV_BIAS: P(None, "fsdp"),  # 2 heads: fsdp=8 splits kv
        FC1: P("fsdp", None),
        FC2: P("fsdp", None),
        TOKENS: P("fsdp", None),
        LN: P("fsdp"),
        SCALE: P(),
    },
    "tp": {
        QKV: P(None, "tensor", None),
        QKV_BIAS: P("tensor", None),
        FC1: P(None, "tensor"),
        FC2: P("tensor", None),
        TOKENS: P("tensor", None),
        LN: P(None),
        SCALE: P(),
    },
    "fsdp_tp": {
        QKV: P("fsdp", "tensor", None),
        QKV_BIAS: P("tensor", "fsdp"),
        FC1: P("fsdp", "tensor"),
        FC2: P("tensor", "fsdp"),
        TOKENS: P("tensor", "fsdp"),
        LN: P("fsdp"),
        SCALE: P(),
    },
}


def flat(tree):
    return {
        "/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path): v
        for path, v in jax.tree_util.tree_flatten_with_path(tree)[0]
    }


@pytest.mark.parametrize("strategy", list(MESHES))
def test_parameter_shardings_are_declared(strategy, runs):
    state = runs(strategy)["state"]  # after 3 steps: the train step keeps the placement
    mesh = sharding.make_mesh(config(strategy).mesh)
    params = flat({"params": state.params})
    for name, spec in EXPECTED[strategy].items():
        assert params[name].sharding.spec == spec, name
        assert params[name].sharding.mesh.shape == mesh.shape
    # Adam's moments are placed like their parameters.
    mu = flat({"params": state.opt_state})
    for name, leaf in params.items():
        moments = [v for k, v in mu.items() if k.endswith(name.removeprefix("params/"))]
        assert moments and all(m.sharding.spec == leaf.sharding.spec for m in moments), name


def per_device_bytes(tree):
    """Bytes that device 0 holds of a pytree of arrays."""
    dev = jax.devices()[0]
    return sum(s.data.nbytes for x in jax.tree.leaves(tree) for s in x.addressable_shards if s.device == dev)


def test_fsdp_divides_state_memory_by_device_count(runs):
    dp = per_device_bytes(runs("dp")["state"])
    fsdp = per_device_bytes(runs("fsdp")["state"])
    assert fsdp == pytest.approx(dp / 8, rel=0.05)


def test_custom_rules_and_bad_rules():
    rules = sharding.logical_rules(
        ml_collections.ConfigDict(dict(rules=[["batch", ["data", "fsdp"]], ["embed", "fsdp"]]))
    )
    assert rules == (("batch", ("data", "fsdp")), ("embed", "fsdp"))
    with pytest.raises(config_lib.ConfigError, match="names mesh axis 'model'; the mesh axes are data, fsdp"):
        sharding.logical_rules(ml_collections.ConfigDict(dict(rules=[["mlp", "model"]])))


def test_param_spec_skips_axes_that_do_not_divide():
    mesh = sharding.make_mesh(ml_collections.ConfigDict(dict(data=1, fsdp=2, tensor=4)))
    rules = sharding.STRATEGIES["fsdp_tp"]
    assert sharding.param_spec(("embed", "heads", "kv"), (32, 2, 16), mesh, rules) == P("fsdp", None, None)
    # 2 heads: tensor=4 does not divide them, so the next rule for heads (fsdp) applies
    assert sharding.param_spec(("heads", "kv"), (2, 16), mesh, rules) == P("fsdp", None)
    assert sharding.param_spec(("embed", "mlp"), (32, 64), mesh, rules) == P("fsdp", "tensor")


def test_checkpoint_moves_between_meshes(tmp_path, runs):
    """fsdp=8 -> data=2 x fsdp=4 (fsdp_tp) -> one device: the values survive, the placement is the
    target's."""
    saved = runs("fsdp")["state"]
    ckpt = Checkpointer(str(tmp_path / "ckpt"), async_save=False)
    ckpt.save(3, saved)
    ckpt.wait()
    expected = jax.device_get(saved)
    for cfg, devices in [
        (config("fsdp_tp", dict(data=2, fsdp=4, tensor=1)), None),
        (config("dp", dict(data=1, fsdp=1, tensor=1)), jax.devices()[:1]),
    ]:
        run = build_run(cfg, mesh=sharding.make_mesh(cfg.mesh, devices))
        target, shardings = run.abstract, run.shardings
        restored = ckpt.restore(3, target)
        assert int(restored.step) == 3
        jax.tree.map(np.testing.assert_array_equal, jax.device_get(restored), expected)
        jax.tree.map(
            lambda x, s: (
                (x.sharding.spec, x.sharding.mesh.shape) == (s.spec, s.mesh.shape)
                or pytest.fail(f"{x.sharding} != {s}")
            ),
            restored,
            shardings,
        )
    ckpt.close()


def test_train_command_logs_the_same_losses_under_fsdp_tp_and_dp(tmp_path):
    data_dir = str(tmp_path / "tfds")
    runs = {}
    for strategy, mesh in [("dp", MESHES["dp"]), ("fsdp_tp", MESHES["fsdp_tp"])]:
        cfg = config(strategy, mesh, total_steps=10, log_every=2, **{"data.data_dir": data_dir})
        workdir = str(tmp_path / strategy)
        train.train_and_evaluate(cfg, workdir, stop_at=10)
        with open(os.path.join(workdir, "metrics.jsonl")) as f:
            runs[strategy] = [json.loads(line) for line in f]
    assert len(runs["dp"]) == 5
    for key in ("loss", "grad_norm"):  # (the gradient's scale, which Adam's update does not show)
        np.testing.assert_allclose(
            [r[key] for r in runs["fsdp_tp"]], [r[key] for r in runs["dp"]], rtol=1e-5, err_msg=key
        )
