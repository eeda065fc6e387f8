"""Early fusion (LLaVA-style) against deep fusion (Flamingo-style) on the same data, vision tower and LM.

Every variant starts from the same two pretrained parts: the vision tower of the main job's CLIP
(``runs/clip_shapes``) and the text-only LM of ``configs/lm_shapes.py`` (``runs/lm_shapes``). The
vision tower is frozen everywhere. Variants (``--variants``):

* ``early``: LLaVA's second stage. An MLP projector splices 16 image tokens into the LM's input, and the
  projector and the LM learn (``configs/llava_shapes.py:stage=2``).
* ``early_frozen_lm``: the same with the LM frozen, so only the projector learns, as in LLaVA's first
  stage.
* ``deep``: Flamingo. A perceiver resampler gives 8 visual tokens per image, and gated cross-attention
  before every LM layer reads them. The LM is frozen; the resampler, the blocks and the two new token
  embeddings learn (``configs/flamingo_shapes.py``).
* ``deep_lm``: the same with the LM learning too (Flamingo's ablation of freezing the LM), so that
  both designs are seen with the LM frozen and with it trained.

Each variant trains for ``--steps`` through ``mmjax.train`` (same data order, batch, optimizer and
schedule). Its checkpoints every ``--eval-every`` steps, and its starting weights, are scored on the
VQA questions of the first ``--eval-images`` test images. The script also records trainable and total
parameters, tokens per example, compiled step time (median, variants interleaved), memory
(``memory_analysis``) and FLOPs (``cost_analysis``). It writes
``<out>/<platform>_fusion_comparison.{md,csv,png}`` and ``..._curves.csv``.

    python experiments/fusion_comparison/run.py                  # 800 steps each, ~25 min on 2 CPU cores
    python experiments/fusion_comparison/run.py --tiny --steps 4 --eval-every 2 --eval-images 4  # smoke test
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

import jax  # noqa: E402
import numpy as np  # noqa: E402

from mmjax import config as config_lib  # noqa: E402
from mmjax import train  # noqa: E402
from mmjax.profile import time_interleaved  # noqa: E402
from mmjax.run import build_run  # noqa: E402

VARIANTS = ("early", "early_frozen_lm", "deep", "deep_lm")
LABELS = {
    "early": "early fusion (projector + LM train)",
    "early_frozen_lm": "early fusion (projector only)",
    "deep": "deep fusion (resampler + xattn train)",
    "deep_lm": "deep fusion (resampler + xattn + LM train)",
}
CLIP_RUN, LM_RUN = "runs/clip_shapes", "runs/lm_shapes"


def variant_config(name: str, args):
    """The config of one variant: the shipped configs, with the same pretrained parts and schedule."""
    tiny = ",tiny" if args.tiny else ""
    if name.startswith("deep"):
        c = config_lib.load_file(os.path.join(ROOT, "configs", "flamingo_shapes.py") + tiny.replace(",", ":"))
        if name == "deep_lm":
            c.optimizer.freeze_regex = (r"image/.*",)
    else:
        c = config_lib.load_file(os.path.join(ROOT, "configs", "llava_shapes.py") + ":stage=2" + tiny)
        c.init_from = dict(
            workdir=None if args.tiny else CLIP_RUN,
            regex=(r"image/.*",),
            also=() if args.tiny else ((LM_RUN, (r"lm/.*",)),),
        )
        c.optimizer.freeze_regex = (r"image/.*",) + ((r"lm/.*",) if name == "early_frozen_lm" else ())
        # the recipe the committed table was measured with (a prefix mask, no grid positions, no prior,
        # conversation turns, averaged patches into the MLP projector, the stored questions): the shipped
        # config's is measured in docs/vqa_learning.md, sections 7 and 8
        c.model.update(
            attn_mask="prefix",
            grid_pos_embed=False,
            turns="conversation",
            image_pool_op="mean",
            projector="mlp2x_gelu",
        )
        c.data.vqa_questions = "stored"
        c.loss.prior_from = None
    c.total_steps = args.steps
    c.checkpoint_every = args.eval_every
    c.keep_checkpoints = args.steps // args.eval_every + 1
    c.log_every = min(c.log_every, args.eval_every)
    c.eval.num_examples = args.eval_images
    return c


def count(tree, mask=None) -> int:
    sizes = jax.tree.map(lambda x: int(np.prod(x.shape)), tree)
    if mask is not None:
        sizes = jax.tree.map(lambda n, keep: n if keep else 0, sizes, mask)
    return int(sum(jax.tree.leaves(sizes)))


def setup(config):
    """``(run, state)``: the variant's run (``build_run``) and the train state it starts from (step 0,
    ``init_from`` applied)."""
    run = build_run(config)
    return run, run.init()


def accuracy_curve(name, config, workdir, task, params0, data) -> list[dict]:
    """VQA on ``data`` of the starting weights and of every checkpoint of the run in ``workdir``."""
    from mmjax.checkpoint import load_params
    from mmjax.evaluate import vlm

    steps = [0] + sorted(int(s) for s in os.listdir(os.path.join(workdir, "checkpoints")) if s.isdigit())
    cache = os.path.join(workdir, f"vqa_curve_{len(data['caption'])}_images.json")
    if os.path.exists(cache):  # scored before: the checkpoints do not change once written
        with open(cache) as f:
            curve = json.load(f)
        if [c["step"] for c in curve] == steps:
            return curve
    curve = []
    for step in steps:
        params = params0 if step == 0 else load_params(workdir, params0, (".*",), step=step)
        _, _, metrics = vlm.answer_questions(task, params, data, config.eval.batch_size)
        curve.append({"variant": name, "step": step, **metrics})
        print(f"{name:16s} step {step:4d}: VQA {100 * metrics['vqa_accuracy']:.1f} %", file=sys.stderr)
    with open(cache, "w") as f:
        json.dump(curve, f)
    return curve


def profile(name, run, state) -> tuple[dict, callable]:
    """Sizes, tokens, memory and FLOPs of one variant's compiled train step; and a function running it."""
    from mmjax.models import deep_fusion

    config, task = run.config, run.task
    local = next(iter(task.train_loader(config.batch_size, config.seed)))
    batch = run.global_batch(local)
    with run.context():
        t0 = time.perf_counter()
        compiled = run.train_step.lower(state, batch).compile()
        compile_s = time.perf_counter() - t0
    mem = compiled.memory_analysis()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    model = task.model
    visual = model.num_latents if isinstance(model, deep_fusion.DeepFusion) else 0
    tokens = np.asarray(local["tokens"])
    row = {
        "variant": name,
        "trainable_params": count(state.params, run.trainable),
        "total_params": count(state.params),
        "lm_positions_per_image": task.num_image_tokens,  # [IMG] positions one image takes in the LM's input
        "visual_tokens_per_image": visual or task.num_image_tokens,  # what the text attends to, per image
        "tokens_per_example": float((tokens != task.tokenizer.pad_id).sum(1).mean()),  # LM positions used
        "batch": config.batch_size,
        "compile_s": compile_s,
        "argument_bytes": getattr(mem, "argument_size_in_bytes", None) if mem is not None else None,
        "temp_bytes": getattr(mem, "temp_size_in_bytes", None) if mem is not None else None,
        "gflops_per_step": float(cost.get("flops", float("nan"))) / 1e9 if cost else float("nan"),
    }
    held = {"state": state}

    def run_step():
        held["state"], metrics = compiled(held["state"], batch)  # the state is donated
        jax.block_until_ready(metrics)

    return row, run_step


MiB = 2**20


def markdown(rows, curves, header: str) -> str:
    final = {c["variant"]: c for c in curves}  # the last step of each variant
    cols = [
        "variant",
        "trainable / total params",
        "image positions in LM input",
        "visual tokens per image",
        "LM tokens per example",
        "step ms",
        "train state + batch MiB",
        "temp MiB",
        "GFLOPs/step",
        "VQA at start",
        "VQA at end",
        "best VQA (step)",
    ]
    lines = [header, "", "| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for r in rows:
        mine = [c for c in curves if c["variant"] == r["variant"]]
        best = max(mine, key=lambda c: c["vqa_accuracy"])
        lines.append(
            "| "
            + " | ".join(
                [
                    LABELS[r["variant"]],
                    f"{r['trainable_params']:,} / {r['total_params']:,} "
                    f"({100 * r['trainable_params'] / r['total_params']:.1f} %)",
                    str(r["lm_positions_per_image"]),
                    str(r["visual_tokens_per_image"]),
                    f"{r['tokens_per_example']:.1f}",
                    f"{1e3 * r['step_s']:.0f}",
                    "n/a" if r["argument_bytes"] is None else f"{r['argument_bytes'] / MiB:.1f}",
                    "n/a" if r["temp_bytes"] is None else f"{r['temp_bytes'] / MiB:.1f}",
                    f"{r['gflops_per_step']:.1f}",
                    f"{100 * mine[0]['vqa_accuracy']:.1f} %",
                    f"{100 * final[r['variant']]['vqa_accuracy']:.1f} %",
                    f"{100 * best['vqa_accuracy']:.1f} % ({best['step']})",
                ]
            )
            + " |"
        )
    types = sorted(k.removeprefix("vqa_accuracy_") for k in curves[0] if k.startswith("vqa_accuracy_"))
    lines += [
        "",
        "VQA accuracy (%) at the last step, by question type:",
        "",
        "| variant | " + " | ".join(types) + " |",
        "|---|" + "---|" * len(types),
    ]
    for r in rows:
        c = final[r["variant"]]
        lines.append(
            f"| {LABELS[r['variant']]} | "
            + " | ".join(f"{100 * c[f'vqa_accuracy_{t}']:.1f}" for t in types)
            + " |"
        )
    lines += [
        "",
        "Step ms: median compiled train step (batch as in the table's config, variants interleaved). "
        "Train state + batch / temp: `memory_analysis()` of the compiled step (temp: activations, "
        "gradients, workspace). GFLOPs/step: `cost_analysis()`. LM tokens per example: mean non-pad "
        "positions of a training row. VQA: greedy exact match on the eval images' questions.",
    ]
    return "\n".join(lines) + "\n"


def chart(rows, curves, title: str, path: str) -> None:
    from mmjax.evaluate.report import figure

    fig = figure(figsize=(15, 4.2))
    axes = fig.subplots(1, 3, gridspec_kw={"width_ratios": [1.6, 1, 1]})
    for r in rows:
        mine = [c for c in curves if c["variant"] == r["variant"]]
        axes[0].plot(
            [c["step"] for c in mine],
            [100 * c["vqa_accuracy"] for c in mine],
            marker="o",
            label=LABELS[r["variant"]],
        )
    axes[0].set(title="VQA accuracy vs training steps", xlabel="step", ylabel="exact match, %")
    axes[0].grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    x = np.arange(len(rows))
    names = [r["variant"] for r in rows]
    axes[1].bar(x - 0.2, [r["trainable_params"] / 1e6 for r in rows], 0.4, label="trainable")
    axes[1].bar(x + 0.2, [r["total_params"] / 1e6 for r in rows], 0.4, label="total")
    axes[1].set(title="parameters", ylabel="millions", xticks=x, xticklabels=names)
    axes[1].legend(fontsize=8)
    bars = axes[2].bar(x, [1e3 * r["step_s"] for r in rows], 0.5, color="tab:gray")
    axes[2].bar_label(
        bars,
        labels=[f"{1e3 * r['step_s']:.0f} ms\n{(r['temp_bytes'] or 0) / MiB:.0f} MiB temp" for r in rows],
        fontsize=7,
    )
    axes[2].set(
        title="train step time (median)",
        ylabel="ms",
        xticks=x,
        xticklabels=names,
        ylim=(0, 1.2e3 * max(r["step_s"] for r in rows)),
    )
    for ax in axes[1:]:
        ax.tick_params(axis="x", labelsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def write_csv(path, rows) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--steps", type=int, default=800, help="training steps per variant")
    parser.add_argument("--eval-every", type=int, default=100, help="steps between scored checkpoints")
    parser.add_argument("--eval-images", type=int, default=200, help="test images whose questions are scored")
    parser.add_argument(
        "--time-rounds", type=int, default=5, help="timed steps per variant after one warm-up"
    )
    parser.add_argument("--tiny", action="store_true", help="the tiny configs, random weights (for tests)")
    parser.add_argument(
        "--workdir",
        default=os.path.join(ROOT, "runs", "fusion_comparison"),
        help="where the runs go (a finished run and its scores are reused, an unfinished one resumed)",
    )
    parser.add_argument("--out", default=os.path.join(ROOT, "experiments", "fusion_comparison", "results"))
    args = parser.parse_args(argv[1:])
    names = [v for v in args.variants.split(",") if v]
    if not names or set(names) - set(VARIANTS):
        parser.error(f"--variants {args.variants!r}: choose from {', '.join(VARIANTS)}")
    if args.steps < 1 or args.eval_every < 1 or args.steps % args.eval_every:
        parser.error(f"--steps {args.steps} must be a positive multiple of --eval-every {args.eval_every}")
    if not args.tiny:
        for run in (CLIP_RUN, LM_RUN):
            if not os.path.isdir(os.path.join(ROOT, run, "checkpoints")):
                parser.error(
                    f"{run} has no checkpoint: train it first (README: the main job, and "
                    "python -m mmjax.train --config=configs/lm_shapes.py --workdir=runs/lm_shapes)"
                )
        os.chdir(ROOT)  # the configs name those runs relative to the repository

    from mmjax.data import pipeline

    os.makedirs(args.workdir, exist_ok=True)
    rows, runners, curves = [], [], []
    for name in names:
        config = variant_config(name, args)
        workdir = os.path.join(args.workdir, name)
        if not (
            os.path.exists(os.path.join(workdir, "results.json"))
            and os.path.isdir(os.path.join(workdir, "checkpoints", str(args.steps)))
        ):
            train.train_and_evaluate(config, workdir)  # else finished and evaluated before: reuse it
        run, state = setup(config)
        data = pipeline.load_split(
            config.data, config.eval.split, tokenizer=run.task.tokenizer, max_examples=args.eval_images
        )
        curves += accuracy_curve(name, config, workdir, run.task, state.params, data)
        row, run_step = profile(name, run, state)
        with open(os.path.join(workdir, "results.json")) as f:
            results = json.load(f)
        row["caption_bleu4"] = results["caption_bleu4"]
        rows.append(row)
        runners.append(run_step)
    for row, seconds in zip(rows, map(statistics.median, time_interleaved(runners, args.time_rounds)[0])):
        row["step_s"] = seconds

    dev = jax.devices()[0]
    os.makedirs(args.out, exist_ok=True)
    stem = os.path.join(args.out, f"{dev.platform}{'_tiny' if args.tiny else ''}_fusion_comparison")
    header = (
        f"{len(jax.devices())} x {dev.device_kind}, jax {jax.__version__}, {args.steps} steps per variant, "
        f"batch {rows[0]['batch']}, VQA on the {curves[0]['vqa_questions']} questions of "
        f"{args.eval_images} test images, {time.strftime('%Y-%m-%d')}"
    )
    with open(stem + ".md", "w") as f:
        f.write(markdown(rows, curves, header))
    write_csv(stem + ".csv", rows)
    write_csv(stem + "_curves.csv", curves)
    chart(
        rows,
        curves,
        f"early vs deep fusion on shapes VQA ({dev.device_kind}, {args.steps} steps)",
        stem + ".png",
    )
    print(f"wrote {stem}.md, .csv, _curves.csv, .png", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
