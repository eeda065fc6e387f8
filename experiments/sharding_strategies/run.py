"""Which sharding strategy should a model use on a given mesh?

For a named model and mesh, compile mmjax's one train step under each named strategy (dp, fsdp, tp,
fsdp_tp) and measure what each costs: per-device parameter / optimizer / temporary memory, FLOPs, the
collectives in the compiled HLO (count and bytes by kind), the median step time and, where the device's
peak is known, MFU. Writes ``<out>/<platform>_<model>_<mesh>.{md,csv,png}``.

    python experiments/sharding_strategies/run.py                      # clip-shapes, data=2,fsdp=2,tensor=2
    python experiments/sharding_strategies/run.py --mesh fsdp=8
    python experiments/sharding_strategies/run.py --model clip-vit-b32 --batch 16 --no-time

On a CPU-only machine it simulates 8 devices (``--xla_force_host_platform_device_count=8``); on GPU/TPU
it uses the real devices, so the mesh must multiply to their number.
"""

from __future__ import annotations

import argparse
import os
import sys

# Must happen before jax is imported. The flag only affects the host platform, so it is harmless
# where an accelerator is present (jax then defaults to the accelerator's devices).
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
    ).strip()

import csv
import re
import statistics
import time

import jax
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

from mmjax import config as config_lib  # noqa: E402
from mmjax import models, profile, sharding  # noqa: E402
from mmjax.profile import time_interleaved  # noqa: E402
from mmjax.run import build_run  # noqa: E402

COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")

# bf16 dense peak FLOP/s per device, matched against ``jax.devices()[0].device_kind`` (first match wins).
DTYPE_BYTES = {
    "pred": 1,
    "s8": 1,
    "u8": 1,
    "s16": 2,
    "u16": 2,
    "f16": 2,
    "bf16": 2,
    "s32": 4,
    "u32": 4,
    "f32": 4,
    "s64": 8,
    "u64": 8,
    "f64": 8,
    "c64": 8,
    "c128": 16,
    "token": 0,
}


def shape_bytes(shape_text: str) -> int:
    """Bytes of an HLO shape such as ``f32[8,64]{1,0}`` or a tuple ``(f32[8]{0}, bf16[2,3]{1,0})``."""
    total = 0
    for dtype, dims in re.findall(r"\b([a-z]+[0-9]*(?:e[0-9]m[0-9][a-z0-9]*)?)\[([0-9,]*)\]", shape_text):
        size = DTYPE_BYTES.get(dtype, 1 if dtype.startswith("f8") else 4)
        total += size * int(np.prod([int(d) for d in dims.split(",") if d], dtype=np.int64))
    return total


_OP = re.compile(r"=\s*(?P<shape>.*?)\s(?P<op>" + "|".join(COLLECTIVES) + r")(?P<suffix>-start|-done)?\(")


def collectives(hlo_text: str) -> dict[str, dict[str, int]]:
    """Count and result bytes of each collective kind in compiled (per-device) HLO text.

    Asynchronous pairs are counted once, at the ``-done`` op, whose result is the collective's result
    (a ``-start`` op's shape also holds the operand). Ops inside loops are counted once (static count).
    """
    out = {k: {"count": 0, "bytes": 0} for k in COLLECTIVES}
    for line in hlo_text.splitlines():
        m = _OP.search(line)
        if not m or m.group("suffix") == "-start":
            continue
        out[m.group("op")]["count"] += 1
        out[m.group("op")]["bytes"] += shape_bytes(m.group("shape"))
    return out


def parse_mesh(text: str) -> dict[str, int]:
    mesh = {axis: 1 for axis in sharding.MESH_AXES}
    for part in filter(None, text.split(",")):
        axis, eq, size = part.partition("=")
        if not eq or axis not in mesh:
            raise SystemExit(
                f"error: --mesh {text!r}: write e.g. data=2,fsdp=2,tensor=2 (axes: "
                f"{', '.join(sharding.MESH_AXES)})"
            )
        mesh[axis] = int(size)
    return mesh


def make_config(model: str, strategy: str, mesh: dict, batch: int, dtype: str | None):
    config = config_lib.load_file(os.path.join(ROOT, "configs", "clip_shapes.py"))
    config.model = models.model_config(model)
    config.data.image_size = config.model.image_size
    config.data.max_len = config.model.text.max_len
    config.batch_size = batch
    config.sharding.strategy = strategy
    config.mesh = mesh
    if dtype:
        config.dtype = dtype
    return config


def synthetic_batch(task, batch: int, vocab: int, seed: int = 0) -> dict:
    """Random images; token rows ``BOS tokens... EOT PAD...`` with the EOT (id 2) at a random place."""
    rs = np.random.RandomState(seed)
    spec = task.batch_spec(batch)
    image = rs.uniform(-1, 1, spec["image"].shape).astype(np.float32)
    n, length = spec["text"].shape
    text = rs.randint(4, vocab, (n, length)).astype(np.int32)
    text[:, 0] = 1
    eot = rs.randint(2, length, n)
    for i, e in enumerate(eot):
        text[i, e] = 2
        text[i, e + 1 :] = 0
    return {"image": image, "text": text}


def device0_bytes(tree, device) -> int:
    """Bytes of ``tree``'s shards held by ``device`` (arrays: their shards; abstract: shard shapes)."""
    total = 0
    for x in jax.tree.leaves(tree):
        if isinstance(x, jax.Array):
            total += sum(s.data.nbytes for s in x.addressable_shards if s.device == device)
        else:
            index = x.sharding.devices_indices_map(x.shape)[device]
            shape = [len(range(*s.indices(n))) for s, n in zip(index, x.shape)]
            total += int(np.prod(shape, dtype=np.int64)) * x.dtype.itemsize
    return total


def analytic_train_flops(model_cfg: dict, batch: int) -> float:
    """3 x the forward matmul FLOPs of mmjax.profile (backward = 2 x forward), plus the B x B logits."""
    forward = profile.image_flops(model_cfg) + profile.text_flops(model_cfg)
    logits = 2 * batch * batch * model_cfg["embed_dim"]
    return 3 * (forward * batch + logits)


def measure(args, strategy: str, mesh_cfg: dict):
    """Compile and analyse one strategy; returns ``(row, run_step)`` (``run_step`` None with --no-time)."""
    config = make_config(args.model, strategy, mesh_cfg, args.batch, args.dtype)
    run = build_run(config)
    dp = sharding.data_parallel_size(run.mesh, run.rules)
    if args.batch % dp:
        raise SystemExit(
            f"error: --batch {args.batch} is not divisible by {strategy}'s data-parallel size {dp}"
        )
    device = run.mesh.devices.flat[0]
    row = {"strategy": strategy, "batch_axes": "x".join(sharding.batch_axes(run.rules)) or "-"}
    with run.context():
        if args.no_time:  # compile from shapes only: nothing is allocated
            state = run.abstract
            batch = {
                k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=run.batch_sharding)
                for k, v in run.task.batch_spec(args.batch).items()
            }
        else:
            state = run.init(init_from=False)
            batch = run.global_batch(synthetic_batch(run.task, args.batch, config.model.text.vocab_size))
        t0 = time.perf_counter()
        compiled = run.train_step.lower(state, batch).compile()
        row["compile_s"] = time.perf_counter() - t0

    row["param_bytes"] = device0_bytes(state.params, device)
    row["opt_bytes"] = device0_bytes(state.opt_state, device)
    mem = compiled.memory_analysis()
    for key in ("argument", "output", "temp"):
        row[f"{key}_bytes"] = getattr(mem, f"{key}_size_in_bytes", None) if mem is not None else None
    model_cfg = config.model.to_dict()
    row["flops"] = analytic_train_flops(model_cfg, args.batch)
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    row["hlo_flops_per_device"] = float(cost.get("flops", float("nan"))) if cost else float("nan")
    hlo = compiled.as_text()
    if args.dump_hlo:
        os.makedirs(args.dump_hlo, exist_ok=True)
        with open(os.path.join(args.dump_hlo, f"{strategy}.hlo.txt"), "w") as f:
            f.write(hlo)
    for kind, v in collectives(hlo).items():
        row[f"{kind}_count"], row[f"{kind}_bytes"] = v["count"], v["bytes"]

    row["step_ms"] = row["step_ms_min"] = row["mfu"] = float("nan")
    if args.no_time:
        return row, None
    held = {"state": state}

    def run_step():
        held["state"], metrics = compiled(held["state"], batch)  # the state is donated
        jax.block_until_ready((held["state"], metrics))
        return metrics

    return row, run_step


def time_steps(args, rows: list[dict], runners: list) -> None:
    """One warm-up step each, then ``--steps`` rounds of one step per strategy, round-robin, so that
    a change in the machine's load during the run affects every strategy alike."""
    times, metrics = time_interleaved(runners, args.steps)
    peak = profile.datasheet_peak(jax.devices()[0].device_kind)
    for row, t, m in zip(rows, times, metrics):
        row["step_ms"], row["step_ms_min"] = 1e3 * statistics.median(t), 1e3 * min(t)
        row["loss"] = float(m["loss"])
        if peak:
            row["mfu"] = row["flops"] / (row["step_ms"] / 1e3 * jax.device_count() * peak)


MiB = 2**20


def _mib(x):
    return "n/a" if x is None else f"{x / MiB:.2f}"


def markdown(rows: list[dict], header_line: str) -> str:
    cols = [
        "strategy",
        "batch over",
        "params MiB/dev",
        "opt state MiB/dev",
        "args MiB/dev",
        "temp MiB/dev",
        "GFLOPs/step (analytic)",
        "HLO GFLOPs/dev",
    ]
    cols += [f"{k} (n, MiB)" for k in COLLECTIVES] + ["collectives MiB"]
    cols += ["step ms, median (min)", "MFU"]
    lines = [header_line, "", "| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for r in rows:
        cells = [
            r["strategy"],
            r["batch_axes"],
            _mib(r["param_bytes"]),
            _mib(r["opt_bytes"]),
            _mib(r["argument_bytes"]),
            _mib(r["temp_bytes"]),
            f"{r['flops'] / 1e9:.4g}",
            f"{r['hlo_flops_per_device'] / 1e9:.4g}",
        ]
        cells += [
            f"{r[f'{k}_count']}, {r[f'{k}_bytes'] / MiB:.3f}" if r[f"{k}_count"] else "-" for k in COLLECTIVES
        ]
        cells.append(f"{sum(r[f'{k}_bytes'] for k in COLLECTIVES) / MiB:.3f}")
        cells += [
            "n/a" if np.isnan(r["step_ms"]) else f"{r['step_ms']:.1f} ({r['step_ms_min']:.1f})",
            "n/a" if np.isnan(r["mfu"]) else f"{100 * r['mfu']:.1f} %",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "Bytes are per device (device 0). params / opt state: the device's shards of the train state; "
        "args / temp: `memory_analysis()` (args = state + batch; temp = everything else the step "
        "allocates: activations, gradients, gathered weights, workspace). "
        "Collectives: static op count in the compiled HLO and the summed size of their results "
        "(all-gather: the gathered array; reduce-scatter: the scattered piece). "
        "GFLOPs/step: 3 x forward matmul FLOPs of `mmjax.profile` x batch (global); "
        "HLO GFLOPs/dev: `cost_analysis()['flops']` of the partitioned program. "
        "MFU = analytic FLOPs / (step time x devices x bf16 peak).",
    ]
    return "\n".join(lines) + "\n"


def _bars(ax, xs, values, width, top, **kw):
    """Bars labelled with their values; bars under 3 % of ``top`` (the panel's maximum) get no label."""
    bars = ax.bar(xs, values, width, **kw)
    ax.bar_label(bars, labels=[f"{v:.3g}" if v >= 0.03 * top else "" for v in values], fontsize=7)
    return bars


def chart(rows: list[dict], title: str, path: str) -> None:
    from mmjax.evaluate.report import figure

    names = [r["strategy"] for r in rows]
    x = np.arange(len(rows))
    times = [r["step_ms"] for r in rows]
    timed = not any(np.isnan(times))
    fig = figure(figsize=(15 if timed else 10.5, 4.2))
    axes = fig.subplots(1, 3 if timed else 2)
    mem = [("params", "param_bytes"), ("optimizer", "opt_bytes"), ("temp", "temp_bytes")]
    w = 0.8 / len(mem)
    top = max((r[key] or 0) / MiB for r in rows for _, key in mem)
    for i, (label, key) in enumerate(mem):
        _bars(axes[0], x + (i - 1) * w, [(r[key] or 0) / MiB for r in rows], w, top, label=label)
    axes[0].set(title="memory per device", ylabel="MiB", xticks=x, xticklabels=names)
    axes[0].legend()
    kinds = [k for k in COLLECTIVES if any(r[f"{k}_count"] for r in rows)] or list(COLLECTIVES[:1])
    w = 0.8 / len(kinds)
    top = max(r[f"{k}_bytes"] / MiB for r in rows for k in kinds)
    for i, k in enumerate(kinds):
        _bars(
            axes[1],
            x + (i - (len(kinds) - 1) / 2) * w,
            [r[f"{k}_bytes"] / MiB for r in rows],
            w,
            top,
            label=k,
        )
    axes[1].set(
        title="collective result bytes per device, by kind", ylabel="MiB", xticks=x, xticklabels=names
    )
    axes[1].legend()
    if timed:
        _bars(axes[2], x, times, 0.5, max(times), color="tab:gray")
        axes[2].set(title="median step time", ylabel="ms", xticks=x, xticklabels=names)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="clip-shapes", choices=models.list_models("two_tower"))
    parser.add_argument("--mesh", default="data=2,fsdp=2,tensor=2", help="mesh axis sizes, e.g. fsdp=8")
    parser.add_argument("--strategies", default=",".join(sharding.STRATEGIES))
    parser.add_argument("--batch", type=int, default=64, help="global batch size")
    parser.add_argument("--steps", type=int, default=5, help="timed steps after one warm-up")
    parser.add_argument("--dtype", default=None, help="compute dtype (default: the config's, float32)")
    parser.add_argument(
        "--no-time", action="store_true", help="compile and analyse only (no state is allocated)"
    )
    parser.add_argument(
        "--sequential",
        action="store_true",
        help="time each strategy right after compiling it and free its state (less memory; "
        "by default all are kept and timed round-robin, fairer on a busy machine)",
    )
    parser.add_argument("--dump-hlo", metavar="DIR", help="also write each strategy's compiled HLO text here")
    parser.add_argument("--out", default=os.path.join(ROOT, "experiments", "sharding_strategies", "results"))
    args = parser.parse_args(argv[1:])

    if args.steps < 1 or args.batch < 1:
        parser.error("--steps and --batch must be at least 1")
    mesh_cfg = parse_mesh(args.mesh)
    strategies = [s for s in args.strategies.split(",") if s]
    unknown = [s for s in strategies if s not in sharding.STRATEGIES]
    if unknown:
        parser.error(f"unknown strategies {unknown}; known: {', '.join(sharding.STRATEGIES)}")
    n = int(np.prod(list(mesh_cfg.values())))
    if n != jax.device_count():
        parser.error(f"--mesh {args.mesh} has {n} devices but {jax.device_count()} are available")

    dev = jax.devices()[0]
    rows, runners = [], []
    for s in strategies:
        row, run_step = measure(args, s, mesh_cfg)
        rows.append(row)
        if args.sequential and run_step is not None:  # time now and free this strategy's state
            time_steps(args, [row], [run_step])
            run_step = None
        runners.append(run_step)
        print(
            f"{s:8s} compiled in {row['compile_s']:.1f}s: params {_mib(row['param_bytes'])} MiB, "
            f"opt {_mib(row['opt_bytes'])} MiB, temp {_mib(row['temp_bytes'])} MiB per device",
            file=sys.stderr,
        )
    if not args.no_time:
        if not args.sequential:
            time_steps(args, rows, runners)
        for r in rows:
            print(
                f"{r['strategy']:8s} step {r['step_ms']:.1f} ms (median), {r['step_ms_min']:.1f} ms (min)",
                file=sys.stderr,
            )

    mesh_name = "_".join(f"{k}{v}" for k, v in mesh_cfg.items())
    stem = os.path.join(args.out, f"{dev.platform}_{args.model}_{mesh_name}")
    os.makedirs(args.out, exist_ok=True)
    header = (
        f"**{args.model}**, mesh {args.mesh} ({n} x {dev.device_kind}), global batch {args.batch}, "
        f"compute dtype {make_config(args.model, 'dp', mesh_cfg, args.batch, args.dtype).dtype}, "
        f"jax {jax.__version__}, "
        + (
            "timing skipped (--no-time)"
            if args.no_time
            else f"step time = median of {args.steps} steps after one warm-up"
            + ("" if args.sequential else ", strategies interleaved")
        )
    )
    with open(stem + ".md", "w") as f:
        f.write(markdown(rows, header))
    with open(stem + ".csv", "w", newline="") as f:
        fields = ["platform", "device_kind", "jax", "model", "mesh", "batch"] + list(rows[0])
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        for r in rows:
            writer.writerow(
                {
                    "platform": dev.platform,
                    "device_kind": dev.device_kind,
                    "jax": jax.__version__,
                    "model": args.model,
                    "mesh": args.mesh,
                    "batch": args.batch,
                    **r,
                }
            )
    chart(rows, f"{args.model}, mesh {args.mesh}, {n} x {dev.device_kind}, batch {args.batch}", stem + ".png")
    print(f"wrote {stem}.md, .csv, .png", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
