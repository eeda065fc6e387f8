"""experiments/benchmarks: FLOP formulas, the benchmark end to end at a tiny size, and the model options
it measures (remat, scan, attention implementation): defaults unchanged, non-defaults equivalent."""

import csv
import os
import re
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
    cfg = dict(
        image_size=8,
        image_pool=1,
        projector="mlp2x_gelu",
        vision_tokens="patches",
        lm=lm,
        image=dict(width=4, depth=1, num_heads=1, mlp_dim=8, patch_size=4, pool="cls"),
    )
    # ViT: 4 patches x 48 x 4 = 768 patch MACs; 5 tokens: 4*5*16 + 2*25*4 + 2*5*4*8 = 320+200+320 = 840
    # projector (2 layers) on 4 tokens: 4*(4*8 + 8*8) = 384
    assert flops.early_fusion_forward_flops(cfg, 3) == 2 * (768 + 840) + 2 * 384 + flops.lm_forward_flops(
        lm, 3
    )
    assert flops.early_fusion_train_flops(cfg, 2, 3) == 6 * flops.early_fusion_forward_flops(cfg, 3)


# gpu_session.sh at tiny sizes (MMJAX_BENCH_SMOKE=1) with the data stack unimportable: the prepared GPU
# script's commands all run, and a GPU/TPU machine with only jax, flax, optax, ml_collections (and torch
# for the references) can run the benchmark.
_NO_DATA_STACK = """
import sys
for name in ("grain", "PIL", "tensorflow_datasets", "array_record", "tensorflow", "matplotlib"):
    sys.modules[name] = None  # 'import name' raises ImportError; importlib.util.find_spec(name) is None
"""


def test_gpu_session_script_runs_at_tiny_size_without_the_data_stack(tmp_path):
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(_NO_DATA_STACK)
    env = dict(os.environ, MMJAX_BENCH_SMOKE="1", PYTHONPATH=str(tmp_path / "site"))
    # one CPU device (the suite simulates 8); keep conftest's fast-compile flags
    env["XLA_FLAGS"] = " ".join(
        f for f in env.get("XLA_FLAGS", "").split() if "xla_force_host_platform_device_count" not in f
    )
    out = tmp_path / "out"
    proc = subprocess.run(
        ["bash", os.path.join(BENCH, "gpu_session.sh"), "1", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "Traceback" not in proc.stdout, proc.stdout[-3000:]
    with open(out / "cpu_clip-tiny_part1.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["lever"] for r in rows] == ["bf16+attn_cudnn", "bf16+attn_cudnn@4", "bf16", "torch eager"]
    for col in (
        "compile_s",
        "step_ms",
        "throughput",
        "tflops_per_device",
        "mfu_vs_measured_fp32",
        "mfu_vs_measured_bf16",
        "device",
        "versions",
        "date",
        "command",
    ):
        assert rows[0][col] not in ("", None), col
    assert float(rows[0]["step_ms"]) > 0 and float(rows[0]["mfu_vs_measured_fp32"]) > 0
    assert all(np.isfinite(float(r["loss"])) for r in rows)
    # the @4 variant: bf16 compute at 4 examples per device, its FLOPs counted for 4 (the others run 2)
    assert (rows[1]["dtype"], rows[1]["batch_per_device"]) == ("bfloat16", "4")
    assert float(rows[1]["tflop_per_step"]) == pytest.approx(float(rows[0]["tflop_per_step"]) * 2, rel=1e-3)
    md = (out / "cpu_clip-tiny_part1.md").read_text()
    assert "MFU vs measured fp32 peak" in md and "| bf16+attn_cudnn@4 (bfloat16) | torch eager |" in md
    with open(out / "cpu_llava-tiny_part1.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["unit"] for r in rows] == ["tokens/s"] * 2 and all(float(r["throughput"]) > 0 for r in rows)
    assert (out / "clip.log").read_text().endswith("cpu_clip-tiny_part1.csv\n")
    # part 2's variants parse (it is not run here: seven more compiles)
    import run

    script = open(os.path.join(BENCH, "gpu_session.sh")).read()
    specs = [v.replace("$big", "4") for m in re.findall(r"--levers (\S+)", script) for v in m.split(",")]
    assert len(specs) == 12 and all(run.parse_variant(v) for v in specs if v != "baseline")


def test_variants_parse_and_combine():
    import run

    assert run.parse_variant("baseline") == (frozenset(), None)
    assert run.parse_variant("bf16+attn_cudnn+remat_dots@512") == ({"bf16", "attn_cudnn", "remat_dots"}, 512)
    for spec, message in [
        ("turbo", "unknown lever ['turbo']"),
        ("bf16+", "unknown lever ['']"),
        ("remat_dots+remat_full", "choose one of them"),
        ("bf16@0", "positive integer"),
        ("bf16@x", "positive integer"),
        ("baseline+bf16", "unknown lever ['baseline']"),
    ]:
        with pytest.raises(ValueError, match=re.escape(message)):
            run.parse_variant(spec)
    config = run.make_config("clip-tiny", frozenset({"attn_cudnn", "remat_full", "scan"}), 3)
    assert config.dtype == "bfloat16" and config.batch_size == 3 * jax.device_count()
    assert [(config.model[t].remat, config.model[t].scan) for t in ("image", "text")] == [("full", True)] * 2
    config = run.make_config("llava-tiny", frozenset({"remat_dots", "scan"}), 1)
    assert (config.model.lm.remat, config.model.lm.scan, config.model.image.scan) == ("dots", True, True)


def test_a_failing_or_late_variant_is_listed_and_the_others_still_run(tmp_path, monkeypatch):
    """One variant failing to compile (e.g. out of memory), one failing at its first step, and --budget-s
    spent: each is one line in the results, and the others are timed and written."""
    import run

    def fake_build(model, spec, batch):
        if spec == "bf16":
            raise RuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate 80.00GiB.\nmore")
        row = {
            "model": model,
            "lever": spec,
            "framework": "mmjax (jax)",
            "dtype": "float32",
            "batch_per_device": batch,
            "flops_per_step": 1e6,
            "items_per_step": batch,
            "unit": "pairs/s",
            "compile_s": 0.0,
            "temp_mib": 1.0,
        }

        def run_step():
            if spec == "scan":
                raise ValueError("step failed")
            row["loss"] = 1.0

        return row, run_step

    monkeypatch.setattr(run, "build_runner", fake_build)
    args = ["run.py", "--model", "clip-tiny", "--steps", "2", "--peak-n", "64", "--out", str(tmp_path)]
    assert run.main(args + ["--levers", "baseline,bf16,scan,xla_gpu_flags"]) == 0
    md = (tmp_path / "cpu_clip-tiny.md").read_text()
    assert "| baseline | mmjax" in md and "| scan | mmjax" not in md
    assert (
        "- bf16: failed (RuntimeError: RESOURCE_EXHAUSTED: Out of memory while trying to allocate 80.00GiB.)"
        in md
    )
    assert "- scan: failed while running (ValueError: step failed)" in md
    assert "- xla_gpu_flags: skipped (xla_gpu_flags: GPU only" in md
    assert run.main(args + ["--levers", "baseline,no_donate", "--budget-s", "0"]) == 0
    md = (tmp_path / "cpu_clip-tiny.md").read_text()
    assert "- baseline: not run (--budget-s 0 spent)" in md and "- no_donate: not run" in md


def test_targets_are_checked_on_the_fastest_variant():
    import run

    def row(lever, throughput, datasheet=float("nan"), measured=0.3, framework="mmjax (jax)"):
        return dict(
            lever=lever,
            framework=framework,
            throughput=throughput,
            mfu_vs_datasheet_bf16=datasheet,
            mfu_vs_measured_bf16=measured,
        )

    rows = [
        row("bf16", 100, 0.35),
        row("bf16+attn_cudnn@512", 130, 0.455),
        row("open_clip bf16 autocast + torch.compile", 70, framework="open_clip 3.3.0"),
    ]
    assert run.target_lines("clip-vit-b16", rows)[1:] == [
        "Targets (fastest mmjax variant: bf16+attn_cudnn@512):",
        "",
        "| target | measured | met |",
        "|---|---|---|",
        "| MFU >= 40 % (vs the datasheet bf16 peak) | 45.5 % | yes |",
        "| pairs/s >= 2x open_clip bf16 autocast + torch.compile | 1.86x | **no** |",
    ]
    assert (
        run.target_lines("llava-b16-base", [row("bf16", 1)])[-1]
        == "| MFU >= 35 % (vs the measured bf16 peak) | 30.0 % | **no** |"
    )
    assert (
        run.target_lines("clip-small", [row("baseline", 60)])[-1]
        == "| pairs/s >= 1.5x torch eager | not measured (no torch eager row) | – |"
    )
    assert run.target_lines("clip-tiny", rows) == []


def test_benchmark_rejects_unknown_lever(capsys):
    import run  # experiments/benchmarks/run.py (argument errors stop it before any work)

    with pytest.raises(SystemExit) as e:
        run.main(["run.py", "--levers", "baseline,bf16+turbo"])
    assert (
        e.value.code == 2 and "--levers: unknown lever ['turbo'] in 'bf16+turbo'" in capsys.readouterr().err
    )


# ----------------------------------------------------------------------------------- model options
X = jax.random.normal(jax.random.key(1), (2, 5, 16))
MASK = jnp.array([[True] * 5, [True] * 3 + [False] * 2])[:, None, None, :]


class _OldEncoder(nn.Module):
    """The encoder as it was before the remat/scan options: a plain loop of blocks."""

    @nn.compact
    def __call__(self, x, causal, mask):
        for i in range(3):
            block = layers.EncoderBlock(num_heads=2, mlp_dim=32, activation="quick_gelu", name=f"block_{i}")
            x = block(x, causal=causal, mask=mask)
        return x


def _encoder(**kw):
    return layers.Encoder(depth=3, num_heads=2, mlp_dim=32, activation="quick_gelu", **kw)


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
    stacked = models.stack_layers(params)
    assert list(stacked["params"]) == ["blocks"]
    (l0, g0), (l1, g1) = _loss_and_grads(_encoder(), params), _loss_and_grads(scanned, stacked)
    np.testing.assert_allclose(l0, l1, rtol=1e-5)
    g0 = models.stack_layers(g0)
    for a, b in zip(jax.tree.leaves(g0["params"]["blocks"]), jax.tree.leaves(g1["params"]["blocks"])):
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

    def f(m):
        return jax.jit(jax.value_and_grad(lambda p: (m.apply(p, tokens)[0] ** 2).mean()))(params)

    (l0, g0), (l1, g1) = f(base), f(rem)
    np.testing.assert_allclose(l0, l1, rtol=1e-6)
    for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g1)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("remat", ["none", "dots"])
def test_lm_scan_equals_the_unrolled_lm_on_restacked_parameters(remat):
    tokens = jnp.arange(14).reshape(2, 7) % 50
    kw = dict(vocab_size=64, width=32, depth=3, num_heads=4, num_kv_heads=2, mlp_dim=48)
    base, scanned = lm_lib.DecoderLM(**kw), lm_lib.DecoderLM(**kw, scan=True, remat=remat)
    params = nn.unbox(base.init(jax.random.key(0), tokens))
    boxed = scanned.init(jax.random.key(0), tokens)["params"]["blocks"]["attn"]["q"]["kernel"]
    assert boxed.names == ("layers", "embed", "heads", "kv") and boxed.value.shape == (3, 32, 4, 8)
    stacked = models.stack_layers(params)
    assert set(stacked["params"]) == {"blocks", "token_embed", "ln_final", "lm_head"}

    def f(m, p):
        return jax.jit(jax.value_and_grad(lambda p: (m.apply(p, tokens)[0] ** 2).mean()))(p)

    (l0, g0), (l1, g1) = f(base, params), f(scanned, stacked)
    np.testing.assert_allclose(l0, l1, rtol=1e-6)
    for a, b in zip(jax.tree.leaves(models.stack_layers(g0)), jax.tree.leaves(g1)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    cache = lm_lib.init_cache(scanned, 2, 9)
    assert cache["k"].shape == (3, 2, 9, 2, 8)  # one stacked {"k", "v"}: [depth, B, T, kv heads, head]


def test_stack_layers_refuses_a_gap_and_deep_fusion_refuses_a_scanned_lm():
    with pytest.raises(ValueError, match=r"blocks \['block_0', 'block_2'\] are not block_0 ... block_1"):
        models.stack_layers({"block_0": {"w": jnp.ones(2)}, "block_2": {"w": jnp.ones(2)}})
    cfg = models.model_config("flamingo-shapes")
    cfg["lm"]["scan"] = True
    with pytest.raises(ValueError, match="DeepFusion: model.lm.scan=True is not supported"):
        models.build(cfg, image_id=5, sep_id=4).num_image_tokens(cfg["image_size"])


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
