"""experiments/benchmarks: FLOP formulas, the benchmark end to end at a tiny size, and the model options
it measures (remat, scan, attention implementation): defaults unchanged, non-defaults equivalent."""

import csv
import os
import subprocess
import sys
import warnings

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax import models
from mmjax.models import layers
from mmjax.models import lm as lm_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "experiments", "benchmarks")
sys.path.insert(0, BENCH)

import flops  # noqa: E402


def test_flops_reproduce_open_clip_vit_b16():
    cfg = models.model_config("clip-vit-b16")
    assert round(flops.two_tower_forward_flops(cfg) / 1e9, 2) == 41.09
    # a step of 3 x (forward x batch + the B x B logits)
    assert flops.two_tower_train_flops(cfg, 4) == 3 * (4 * flops.two_tower_forward_flops(cfg) + 2 * 16 * 512)


def test_lm_and_early_fusion_flops_by_hand():
    # width 8, 2 heads (head 4), 1 kv head (4), MLP 16, vocab 10, depth 1, S = 3
    lm = dict(width=8, depth=1, num_heads=2, num_kv_heads=1, mlp_dim=16, vocab_size=10)
    # MACs: q,o 2*3*64=384; k,v 2*3*8*4=192; scores+mix 2*9*8=144; SwiGLU 3*3*8*16=1152; head 3*8*10=240
    assert flops.lm_forward_flops(lm, 3) == 2 * (384 + 192 + 144 + 1152 + 240)
    cfg = dict(image_size=8, image_pool=1, projector="mlp2x_gelu", vision_tokens="patches", lm=lm,
               image=dict(width=4, depth=1, num_heads=1, mlp_dim=8, patch_size=4, pool="cls"))
    # ViT: 4 patches x 48 x 4 = 768 patch MACs; 5 tokens: 4*5*16 + 2*25*4 + 2*5*4*8 = 320+200+320 = 840
    # projector (2 layers) on 4 tokens: 4*(4*8 + 8*8) = 384
    assert flops.early_fusion_forward_flops(cfg, 3) == 2 * (768 + 840) + 2 * 384 + flops.lm_forward_flops(lm, 3)
    assert flops.early_fusion_train_flops(cfg, 2, 3) == 6 * flops.early_fusion_forward_flops(cfg, 3)


def test_benchmark_runs_end_to_end(tmp_path):
    env = dict(os.environ)
    # one CPU device (the suite simulates 8); keep conftest's fast-compile flags
    env["XLA_FLAGS"] = " ".join(f for f in env.get("XLA_FLAGS", "").split()
                                if "xla_force_host_platform_device_count" not in f)
    cmd = [sys.executable, os.path.join(BENCH, "run.py"), "--model", "clip-tiny", "--batch", "2", "--steps", "2",
           "--levers", "baseline", "--peak-n", "128", "--out", str(tmp_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    with open(tmp_path / "cpu_clip-tiny.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["lever"] for r in rows] == ["baseline"]
    for col in ("compile_s", "step_ms", "throughput", "tflops_per_device", "mfu_vs_measured_fp32",
                "mfu_vs_measured_bf16", "device", "versions", "date", "command"):
        assert rows[0][col] not in ("", None), col
    assert float(rows[0]["step_ms"]) > 0 and float(rows[0]["mfu_vs_measured_fp32"]) > 0
    assert np.isfinite(float(rows[0]["loss"]))
    md = (tmp_path / "cpu_clip-tiny.md").read_text()
    assert "MFU vs measured fp32 peak" in md and "compile s" in md and "xla_gpu_flags" not in md


def test_benchmark_rejects_unknown_lever(capsys):
    import run  # experiments/benchmarks/run.py (argument errors stop it before any work)

    with pytest.raises(SystemExit) as e:
        run.main(["run.py", "--levers", "turbo"])
    assert e.value.code == 2 and "unknown ['turbo']" in capsys.readouterr().err


# ----------------------------------------------------------------------------------- model options
X = jax.random.normal(jax.random.key(1), (2, 5, 16))
MASK = jnp.array([[True] * 5, [True] * 3 + [False] * 2])[:, None, None, :]


class _OldEncoder(nn.Module):
    """The encoder as it was before the remat/scan options: a plain loop of blocks."""

    @nn.compact
    def __call__(self, x, causal, mask):
        for i in range(3):
            x = layers.EncoderBlock(2, 32, "quick_gelu", name=f"block_{i}")(x, causal=causal, mask=mask)
        return x


def _encoder(**kw):
    return layers.Encoder(3, 2, 32, "quick_gelu", **kw)


def _loss_and_grads(module, params, causal=True):
    f = lambda p: (module.apply(p, X, causal=causal, mask=MASK) ** 2).mean()  # noqa: E731
    return jax.jit(jax.value_and_grad(f))(params)


def test_encoder_default_is_the_old_encoder_bit_for_bit():
    new, old = _encoder(), _OldEncoder()
    p_new = new.init(jax.random.key(0), X, causal=True, mask=MASK)
    p_old = old.init(jax.random.key(0), X, True, MASK)
    assert jax.tree.structure(p_new) == jax.tree.structure(p_old)
    assert all(bool((a == b).all()) for a, b in zip(jax.tree.leaves(p_new), jax.tree.leaves(p_old)))
    y_new = new.apply(p_new, X, causal=True, mask=MASK)
    y_old = old.apply(p_old, X, True, MASK)
    assert bool((y_new == y_old).all())


@pytest.mark.parametrize("remat", ["dots", "full"])
def test_remat_gives_the_same_parameters_loss_and_grads(remat):
    params = _encoder().init(jax.random.key(0), X, causal=True, mask=MASK)
    p_remat = _encoder(remat=remat).init(jax.random.key(0), X, causal=True, mask=MASK)
    assert jax.tree.structure(params) == jax.tree.structure(p_remat)
    (l0, g0), (l1, g1) = _loss_and_grads(_encoder(), params), _loss_and_grads(_encoder(remat=remat), params)
    np.testing.assert_allclose(l0, l1, rtol=1e-6)
    for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g1)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("remat", ["none", "dots"])
def test_scan_equals_the_unrolled_stack_on_restacked_parameters(remat):
    params = nn.unbox(_encoder().init(jax.random.key(0), X, causal=True, mask=MASK))
    scanned = _encoder(scan=True, remat=remat)
    boxed = scanned.init(jax.random.key(0), X, causal=True, mask=MASK)
    kernel = boxed["params"]["blocks"]["attn"]["query"]["kernel"]
    assert kernel.names == ("layers", "embed", "heads", "kv") and kernel.value.shape == (3, 16, 2, 8)
    blocks = [params["params"][f"block_{i}"] for i in range(3)]
    stacked = {"params": {"blocks": jax.tree.map(lambda *xs: jnp.stack(xs), *blocks)}}
    (l0, g0), (l1, g1) = _loss_and_grads(_encoder(), params), _loss_and_grads(scanned, stacked)
    np.testing.assert_allclose(l0, l1, rtol=1e-5)
    g0 = jax.tree.map(lambda *xs: jnp.stack(xs), *[g0["params"][f"block_{i}"] for i in range(3)])
    for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g1["params"]["blocks"])):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    _, hidden = scanned.apply(stacked, X, causal=True, mask=MASK, return_all=True)
    _, hidden0 = _encoder().apply(params, X, causal=True, mask=MASK, return_all=True)
    assert len(hidden) == len(hidden0) == 4
    np.testing.assert_allclose(hidden[2], hidden0[2], rtol=1e-5, atol=1e-6)


def test_lm_remat_gives_the_same_loss_and_grads():
    tokens = jnp.arange(12).reshape(2, 6) % 50
    kw = dict(vocab_size=64, width=32, depth=1, num_heads=2, mlp_dim=64)
    base, rem = lm_lib.DecoderLM(**kw), lm_lib.DecoderLM(**kw, remat="dots")
    params = base.init(jax.random.key(0), tokens)
    assert jax.tree.structure(params) == jax.tree.structure(rem.init(jax.random.key(0), tokens))
    f = lambda m: jax.jit(jax.value_and_grad(lambda p: (m.apply(p, tokens)[0] ** 2).mean()))(params)  # noqa: E731
    (l0, g0), (l1, g1) = f(base), f(rem)
    np.testing.assert_allclose(l0, l1, rtol=1e-6)
    for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g1)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_model_options_default_off_and_reach_the_towers():
    vit = models.build(models.model_config("clip-shapes")).image
    assert (vit.remat, vit.scan) == ("none", False)
    assert lm_lib.DecoderLM(vocab_size=8, width=8, depth=1, num_heads=2, mlp_dim=8).remat == "none"
    with pytest.raises(ValueError, match="remat must be one of"):
        _encoder(remat="some").init(jax.random.key(0), X, causal=True, mask=MASK)


def test_attention_implementation_switch():
    q, k, v = (jax.random.normal(jax.random.key(i), (2, 5, 2, 8)) for i in range(3))
    ref = layers.attention(q, k, v, mask=MASK)
    with layers.attention_implementation("xla"):
        np.testing.assert_allclose(layers.attention(q, k, v, mask=MASK), ref, rtol=1e-6, atol=1e-6)
    if jax.default_backend() != "gpu":  # cuDNN falls back to the default call, with a warning
        with layers.attention_implementation("cudnn"), warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            layers._warned.clear()
            out = layers.attention(q, k, v, mask=MASK)
        assert bool((out == ref).all()) and any("cuDNN unavailable" in str(x.message) for x in w)
    with pytest.raises(ValueError, match="unknown attention implementation"):
        with layers.attention_implementation("flash"):
            pass
