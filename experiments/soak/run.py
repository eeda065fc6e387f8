"""Soak test of exact resume: a run killed with SIGKILL at random moments and rerun each time ends with
the same parameters, bit for bit, as a run that was never interrupted.

    python experiments/soak/run.py [--steps 2000] [--checkpoint-every 50] [--kills 5] [--seed 0]
                                   [--workdir runs/soak]

Both runs are ``python -m mmjax.train --config=configs/clip_shapes.py:tiny`` with ``total_steps`` and
``checkpoint_every`` set, as a user would run them. The interrupted one is started, killed with ``kill -9``
once it has logged a randomly drawn step plus a random fraction of a second (so a kill can land anywhere:
inside a step, while a checkpoint is being written, before the first checkpoint), and started again with
the same command, ``--kills`` times, then left to finish. Compared at the end: every array of the final
train state (parameters and optimizer state), every logged metric but the throughput, and the final
evaluation. Writes ``results/soak.{md,json}`` next to this file and prints the table.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np

from mmjax.metrics_log import last_logged_step

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
TIMING = ("examples_per_sec",)  # metrics that measure the machine, not the run


def command(workdir: str, args) -> list[str]:
    return [
        sys.executable,
        "-m",
        "mmjax.train",
        "--config=configs/clip_shapes.py:tiny",
        f"--workdir={workdir}",
        f"--config.total_steps={args.steps}",
        f"--config.checkpoint_every={args.checkpoint_every}",
        f"--config.log_every={args.log_every}",
    ]


def start(workdir: str, args, log_path: str) -> subprocess.Popen:
    log = open(log_path, "w")
    return subprocess.Popen(
        command(workdir, args),
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
        env=dict(os.environ, JAX_PLATFORMS="cpu"),
    )


def committed_steps(workdir: str) -> list[int]:
    try:
        return sorted(int(n) for n in os.listdir(os.path.join(workdir, "checkpoints")) if n.isdigit())
    except FileNotFoundError:
        return []


def resumed_from(log_path: str) -> int:
    with open(log_path) as f:
        match = re.search(r"resumed from \S+/(\d+)", f.read())
    return int(match.group(1)) if match else 0


def run_to_end(workdir: str, args, log_path: str) -> float:
    t0 = time.perf_counter()
    proc = start(workdir, args, log_path)
    if proc.wait() != 0:
        sys.exit(f"error: {' '.join(command(workdir, args))} failed (exit {proc.returncode}); see {log_path}")
    return time.perf_counter() - t0


def interrupted_run(workdir: str, args, rng: np.random.Generator) -> tuple[list[dict], float]:
    """Kill the run ``args.kills`` times at random moments, rerunning it each time; then let it finish."""
    # Kill moments: after a logged step drawn uniformly from the run (sorted: the run moves forward), plus
    # up to a second, so a kill falls anywhere in a step or a checkpoint write.
    targets = np.sort(rng.integers(1, args.steps - 2 * args.log_every, size=args.kills))
    kills, t0 = [], time.perf_counter()
    for k, target in enumerate(targets):
        log_path = os.path.join(workdir, f"attempt{k}.log")
        proc = start(workdir, args, log_path)
        while proc.poll() is None and last_logged_step(workdir) < target:
            time.sleep(0.01)
        delay = float(rng.uniform(0, 1))
        time.sleep(delay)
        finished = proc.poll() is not None
        if not finished:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        kills.append(
            {
                "attempt": k + 1,
                "started_from": resumed_from(log_path),
                "target_step": int(target),
                "delay_s": round(delay, 3),
                "last_logged_step": last_logged_step(workdir),
                "latest_checkpoint": (committed_steps(workdir) or [None])[-1],
                "save_in_flight": any("tmp" in n for n in os.listdir(os.path.join(workdir, "checkpoints")))
                if os.path.isdir(os.path.join(workdir, "checkpoints"))
                else False,
                "killed": not finished,
            }
        )
        print(f"kill {k + 1}: {kills[-1]}", flush=True)
    log_path = os.path.join(workdir, "final.log")
    proc = start(workdir, args, log_path)
    if proc.wait() != 0:
        sys.exit(f"error: the final rerun failed (exit {proc.returncode}); see {log_path}")
    kills.append({"attempt": args.kills + 1, "started_from": resumed_from(log_path), "finished": True})
    return kills, time.perf_counter() - t0


def final_state(workdir: str, step: int) -> dict:
    import jax
    import orbax.checkpoint as ocp

    checkpointer = ocp.StandardCheckpointer()
    try:
        state = checkpointer.restore(os.path.join(workdir, "checkpoints", str(step), "state"))
    finally:
        checkpointer.close()
    return dict(jax.tree_util.tree_flatten_with_path(jax.device_get(state))[0])


def metrics(workdir: str) -> list[dict]:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [{k: v for k, v in json.loads(line).items() if k not in TIMING} for line in f]


def results(workdir: str) -> dict:
    with open(os.path.join(workdir, "results.json")) as f:
        return {k: v for k, v in json.load(f).items() if k != "train_seconds"}


def compare(reference: str, resumed: str, step: int) -> dict:
    a, b = final_state(reference, step), final_state(resumed, step)
    if a.keys() != b.keys():
        raise SystemExit("error: the two final states have different structures")
    differing = [str(path) for path in a if not np.array_equal(a[path], b[path])]
    max_diff = max(
        float(np.max(np.abs(np.asarray(a[p], np.float64) - np.asarray(b[p], np.float64))))
        if np.size(a[p])
        else 0.0
        for p in a
    )
    ma, mb = metrics(reference), metrics(resumed)
    return {
        "arrays": len(a),
        "values": int(sum(np.size(v) for v in a.values())),
        "arrays_differing": len(differing),
        "first_differing": differing[:3],
        "max_abs_diff": max_diff,
        "logged_records": len(ma),
        "metrics_identical": ma == mb,
        "results_identical": results(reference) == results(resumed),
    }


def write_report(summary: dict, path_md: str) -> str:
    c, kills = summary["comparison"], summary["kills"]
    rows = [
        "| attempt | started from checkpoint | killed after logged step | + delay (s) | latest committed "
        "checkpoint after the kill | a save was in flight |",
        "|---|---|---|---|---|---|",
    ]
    for k in kills[:-1]:
        rows.append(
            f"| {k['attempt']} | {k['started_from']} | {k['last_logged_step']} | {k['delay_s']} | "
            f"{k['latest_checkpoint']} | {'yes' if k['save_in_flight'] else 'no'} |"
        )
    rows.append(f"| {kills[-1]['attempt']} | {kills[-1]['started_from']} | (ran to the end) | | | |")
    verdict = (
        "identical"
        if c["arrays_differing"] == 0 and c["metrics_identical"] and c["results_identical"]
        else "DIFFERENT"
    )
    text = "\n".join(
        [
            "# Soak test: killed and resumed vs uninterrupted",
            "",
            f"Command: `{summary['command']}`; {summary['steps']} steps of `configs/clip_shapes.py:tiny`, "
            f"checkpoint every {summary['checkpoint_every']}, killed with SIGKILL "
            f"{summary['kills_requested']} times at random moments (seed {summary['seed']}). "
            f"Machine: {summary['machine']}; jax {summary['jax']}; {summary['date']}.",
            "",
            *rows,
            "",
            f"**Final train state: {verdict}.** {c['arrays']} arrays ({c['values']:,} values) compared "
            f"with `np.array_equal`: {c['arrays_differing']} differ (largest absolute difference "
            f"{c['max_abs_diff']:g}). "
            f"The {c['logged_records']} logged metric records (all but the throughput) are "
            f"{'identical' if c['metrics_identical'] else 'DIFFERENT'}; the final evaluation is "
            f"{'identical' if c['results_identical'] else 'DIFFERENT'}.",
            "",
            f"Wall time: uninterrupted {summary['reference_s']:.0f} s; killed and resumed "
            f"{summary['resumed_s']:.0f} s (each restart pays start-up and compilation again, and the steps "
            "after the last checkpoint are redone).",
            "",
        ]
    )
    with open(path_md, "w") as f:
        f.write(text)
    return text


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--checkpoint-every", type=int, default=50)
    parser.add_argument("--log-every", type=int, default=10)
    parser.add_argument("--kills", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", default=os.path.join(ROOT, "runs", "soak"))
    parser.add_argument("--results", default=RESULTS, help="where soak.{md,json} go")
    args = parser.parse_args()
    if args.steps <= 2 * args.log_every + args.kills:
        parser.error("--steps is too small for that many kills")
    import shutil

    reference, resumed = os.path.join(args.workdir, "uninterrupted"), os.path.join(args.workdir, "killed")
    for d in (reference, resumed):
        shutil.rmtree(d, ignore_errors=True)
        os.makedirs(d)
    print(f"uninterrupted run: {reference}", flush=True)
    reference_s = run_to_end(reference, args, os.path.join(reference, "run.log"))
    print(f"  {reference_s:.0f} s\nkilled and resumed run: {resumed}", flush=True)
    kills, resumed_s = interrupted_run(resumed, args, np.random.default_rng(args.seed))

    import platform

    import jax

    summary = {
        "steps": args.steps,
        "checkpoint_every": args.checkpoint_every,
        "kills_requested": args.kills,
        "seed": args.seed,
        "command": " ".join(["python", *command("DIR", args)[1:]]),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "jax": jax.__version__,
        "date": time.strftime("%Y-%m-%d"),
        "reference_s": reference_s,
        "resumed_s": resumed_s,
        "kills": kills,
        "comparison": compare(reference, resumed, args.steps),
    }
    os.makedirs(args.results, exist_ok=True)
    with open(os.path.join(args.results, "soak.json"), "w") as f:
        json.dump(summary, f, indent=2)
    print(write_report(summary, os.path.join(args.results, "soak.md")))
    c = summary["comparison"]
    return 0 if c["arrays_differing"] == 0 and c["metrics_identical"] and c["results_identical"] else 1


if __name__ == "__main__":
    sys.exit(main())
