"""Does a frozen vision tower encode the main object's shape and colour? A linear probe says.

Both fusion models read the scene only through the vision tower of the main job's CLIP, and neither
trains it. This fits one softmax regression per attribute (the main object's shape, its colour) on the
tower's patch tokens of training images, and scores it on the validation split (combinations of colour
and shape seen in training) and the test split (every main object a held-out combination). An
attribute the probe cannot read on the test split is one no frozen-tower VLM can answer questions
about on that split.

    python experiments/fusion_comparison/probe_vision_tower.py                 # runs/clip_shapes
    python experiments/fusion_comparison/probe_vision_tower.py --run DIR --train 4000
"""

from __future__ import annotations

import argparse
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from mmjax import checkpoint, tasks  # noqa: E402
from mmjax import config as config_lib  # noqa: E402
from mmjax.data import pipeline, shapes  # noqa: E402


def features(task, params, data_cfg, split: str, n: int):
    """``(patch tokens flattened [n, P * D], colour ids, shape ids)`` of the main objects."""
    vit = task.model.image
    encode = jax.jit(lambda x: vit.apply({"params": params}, x)[1]["patch_tokens"].reshape(x.shape[0], -1))
    data = pipeline.load_split(data_cfg, split, tokenizer=task.tokenizer, max_examples=n)
    x = np.concatenate(
        [np.asarray(encode(data["image"][i : i + 250])) for i in range(0, len(data["image"]), 250)]
    )
    return x, data["label"] // len(shapes.SHAPES), data["label"] % len(shapes.SHAPES)


def fit_probe(x, y, classes: int, steps: int = 500, weight_decay: float = 1e-2):
    """A softmax regression (AdamW, full batch) on standardised features; returns ``predict(x)``."""
    mu, sd = x.mean(0), x.std(0) + 1e-6
    z = lambda a: jnp.asarray((a - mu) / sd)  # noqa: E731
    tx = optax.adamw(1e-2, weight_decay=weight_decay)
    params = (jnp.zeros((x.shape[1], classes)), jnp.zeros(classes))

    def loss(p, a, b):
        return optax.softmax_cross_entropy_with_integer_labels(a @ p[0] + p[1], b).mean()

    @jax.jit
    def step(p, state, a, b):
        updates, state = tx.update(jax.grad(loss)(p, a, b), state, p)
        return optax.apply_updates(p, updates), state

    state, a, b = tx.init(params), z(x), jnp.asarray(y)
    for _ in range(steps):
        params, state = step(params, state, a, b)
    return lambda q: np.asarray((z(q) @ params[0] + params[1]).argmax(1))


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", default=os.path.join(ROOT, "runs", "clip_shapes"), help="run with the tower")
    parser.add_argument(
        "--config",
        default=os.path.join(ROOT, "configs", "llava_shapes.py") + ":stage=2",
        help="a config whose model.image is the run's tower",
    )
    parser.add_argument(
        "--random", action="store_true", help="probe a randomly initialised tower (a control)"
    )
    parser.add_argument("--train", type=int, default=4000, help="training images for the probe")
    parser.add_argument("--eval", type=int, default=1000, help="validation and test images")
    args = parser.parse_args(argv[1:])
    cfg = config_lib.load_file(args.config)
    task = tasks.get_task(cfg)
    if args.random:
        params, args.run = nn.unbox(task.init(jax.random.key(0)))["image"], "a random tower"
    else:
        abstract = jax.eval_shape(lambda: nn.unbox(task.init(jax.random.key(0))))
        params = checkpoint.load_params(args.run, abstract, (r"image/.*",))["image"]
    train = features(task, params, cfg.data, "train", args.train)
    splits = {s: features(task, params, cfg.data, s, args.eval) for s in ("validation", "test")}
    print(
        f"linear probe on the patch tokens of {args.run} ({train[0].shape[1]} features, {args.train} "
        "training images); accuracy of the main object's attribute\n"
    )
    print("| attribute | chance | train | validation (seen combinations) | test (held-out combinations) |")
    print("|---|---|---|---|---|")
    for name, col, classes in (("colour", 1, len(shapes.COLOURS)), ("shape", 2, len(shapes.SHAPES))):
        predict = fit_probe(train[0], train[col], classes)
        acc = [float((predict(d[0]) == d[col]).mean()) for d in (train, *splits.values())]
        print(f"| {name} | {100 / classes:.1f} % | " + " | ".join(f"{100 * a:.1f} %" for a in acc) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
