"""The sharding-strategies harness: its HLO parsing, and one small end-to-end run."""

import csv
import importlib.util
import os

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def harness():
    path = os.path.join(ROOT, "experiments", "sharding_strategies", "run.py")
    spec = importlib.util.spec_from_file_location("sharding_strategies_run", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_shape_bytes_and_collective_parsing_on_a_compiled_program():
    run = harness()
    assert run.shape_bytes("f32[8,64]{1,0}") == 8 * 64 * 4
    assert run.shape_bytes("(f32[8]{0}, bf16[2,3]{1,0})") == 32 + 12
    mesh = jax.make_mesh((8,), ("x",), axis_types=(jax.sharding.AxisType.Auto,))

    def f(a):  # one all-reduce of 16 floats, one all-gather into 8 x 16 floats
        return jax.lax.psum(a, "x"), jax.lax.all_gather(a, "x", tiled=True)

    g = jax.jit(jax.shard_map(f, mesh=mesh, in_specs=P("x"), out_specs=(P(), P()), check_vma=False))
    hlo = g.lower(jnp.zeros((8 * 16,), jnp.float32)).compile().as_text()
    found = run.collectives(hlo)
    assert found["all-reduce"] == {"count": 1, "bytes": 16 * 4}
    assert found["all-gather"] == {"count": 1, "bytes": 8 * 16 * 4}
    assert found["reduce-scatter"]["count"] == 0


def test_harness_compares_dp_and_fsdp(tmp_path):
    run = harness()
    assert run.main(["run.py", "--mesh", "fsdp=8", "--strategies", "dp,fsdp", "--batch", "16", "--no-time",
                     "--out", str(tmp_path)]) == 0
    stem = tmp_path / "cpu_clip-shapes_data1_fsdp8_tensor1"
    with open(f"{stem}.csv") as f:
        rows = {r["strategy"]: r for r in csv.DictReader(f)}
    assert set(rows) == {"dp", "fsdp"}
    for key in ("param_bytes", "opt_bytes"):
        np.testing.assert_allclose(int(rows["fsdp"][key]) * 8, int(rows["dp"][key]), rtol=0.05)
    assert int(rows["fsdp"]["all-gather_count"]) > int(rows["dp"]["all-gather_count"])
    assert "| fsdp |" in open(f"{stem}.md").read() and os.path.getsize(f"{stem}.png") > 10_000
