"""Linear probes of an image tower: what do its features say about the main object's colour, shape, size
and position, on seen pairs (validation) and on held-out pairs (test)?

    python experiments/learning/probe.py --params=FILE [--set KEY=VALUE ...] [--tag NAME]
    python experiments/learning/probe.py --random [--tag random]      # the tower at initialisation

``--params``: a screen's parameters (``screen.py --save=FILE``, same ``--set``). Features: ``pooled`` (the
tower's pooled output, what the projections read) and ``patch`` (every patch token, flattened). Each
probe is a softmax regression (standardised features, AdamW, weight decay) scored two ways:

* ``within``: fitted on one half of a split, scored on the other half (and the reverse, averaged): is the
  attribute *linearly present* in the features of these images? On test this asks whether the tower
  represents the shape of objects whose colour-shape pair it never saw, whatever a text readout does.
* ``shape_within_colour``: shape among the objects of one colour (test: each colour has one or two
  held-out shapes, so a plain shape probe there can read the colour instead), with its chance level.
* ``transfer`` (test only): fitted on all of validation (seen pairs), scored on test (held-out pairs): does
  a readout learned on seen pairs carry over, as zero-shot must?

The probe is a diagnostic and fits on evaluation images; the model never sees them. One JSON line per
run, appended to ``experiments/learning/results/probe.jsonl``.
"""

from __future__ import annotations

import argparse
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path.insert(0, os.path.dirname(__file__))

from screen import load_config, report  # noqa: E402

from mmjax.data import pipeline  # noqa: E402
from mmjax.run import build_run  # noqa: E402

ATTRIBUTES = ("colour", "shape", "size", "position")


def load_model(spec: str, sets: list[str], params_path: str = ""):
    """``(config, task, params)``: the config's model with the parameters ``screen.py --save`` wrote, or
    freshly initialised ones (``params_path`` empty)."""
    c = load_config(spec, sets)
    run = build_run(c)
    with run.context():
        params = run.init().params
    if params_path:
        import flax.serialization

        with open(params_path, "rb") as f:
            params = flax.serialization.from_bytes(jax.device_get(params), f.read())
    return c, run.task, params


def main_object_attributes(records) -> dict[str, np.ndarray]:
    """The main object's (first object's) colour, shape, size class and grid cell (row * 3 + col)."""
    obj = [r["objects"] for r in records]
    return {
        "colour": np.array([o["colour"][0] for o in obj]),
        "shape": np.array([o["shape"][0] for o in obj]),
        "size": np.array([o["size"][0] for o in obj]),
        "position": np.array([o["row"][0] * 3 + o["col"][0] for o in obj]),
    }


def fit_probe(x_train, y_train, x_test, y_test, *, steps=500, lr=1e-2, weight_decay=1e-3) -> float:
    """Accuracy on (x_test, y_test) of a softmax regression fitted on (x_train, y_train)."""
    mean, std = x_train.mean(0), x_train.std(0) + 1e-6
    xa, xb = jnp.asarray((x_train - mean) / std), jnp.asarray((x_test - mean) / std)
    k = int(max(y_train.max(), y_test.max())) + 1
    params = {"w": jnp.zeros((xa.shape[1], k)), "b": jnp.zeros(k)}
    tx = optax.adamw(lr, weight_decay=weight_decay)

    def loss(p):
        logits = xa @ p["w"] + p["b"]
        return optax.softmax_cross_entropy_with_integer_labels(logits, jnp.asarray(y_train)).mean()

    @jax.jit
    def run(p):
        def body(carry, _):
            p, o = carry
            g = jax.grad(loss)(p)
            u, o = tx.update(g, o, p)
            return (optax.apply_updates(p, u), o), None

        (p, _), _ = jax.lax.scan(body, (p, tx.init(p)), None, length=steps)
        return p

    p = run(params)
    return float(np.mean(np.asarray(jnp.argmax(xb @ p["w"] + p["b"], 1)) == y_test))


def within(x, y) -> float:
    """Two-fold accuracy: fit on one half, score on the other, both ways, averaged."""
    half = len(y) // 2
    a, b = slice(0, half), slice(half, None)
    return (fit_probe(x[a], y[a], x[b], y[b]) + fit_probe(x[b], y[b], x[a], y[a])) / 2


def within_colour(x, shape, colour) -> tuple[float, float]:
    """Shape among objects of one colour (two-fold ``within`` per colour with two or more shapes, averaged
    over colours) and its chance level: on test, where each colour has only one or two (held-out) shapes,
    a plain shape probe reads the colour; this one cannot."""
    accs, chances = [], []
    for c in np.unique(colour):
        rows = np.flatnonzero(colour == c)
        rows = rows[np.random.default_rng(0).permutation(len(rows))]  # both halves hold every shape
        k = len(np.unique(shape[rows]))
        if k >= 2 and len(rows) >= 20:
            accs.append(within(x[rows], shape[rows]))
            chances.append(1 / k)
    return float(np.mean(accs)), float(np.mean(chances))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="configs/clip_shapes.py")
    ap.add_argument("--set", action="append", default=[])
    ap.add_argument("--params", default="", help="parameters written by screen.py --save")
    ap.add_argument("--random", action="store_true", help="probe the tower at initialisation")
    ap.add_argument("--tag", default="")
    a = ap.parse_args()
    if bool(a.params) == a.random:
        ap.error("give exactly one of --params=FILE and --random")
    c, task, params = load_model(a.config, a.set, a.params)
    image_tower = jax.jit(lambda x: task.model.apply({"params": params}, x, method=lambda m, x: m.image(x)))

    def features(images):
        pooled, patch = [], []
        for i in range(0, len(images), 250):
            p, extras = image_tower(images[i : i + 250])
            pooled.append(np.asarray(p))
            patch.append(np.asarray(extras["patch_tokens"]).reshape(len(p), -1))
        return {"pooled": np.concatenate(pooled), "patch": np.concatenate(patch)}

    row = {"tag": a.tag, "sets": a.set, "params": a.params or "random"}
    data = {}
    for split in ("validation", "test"):
        src = pipeline.data_source(c.data, split)
        records = [src[i] for i in range(min(len(src), 1000))]
        images = pipeline.normalize(np.stack([pipeline.record_image(r) for r in records]))
        data[split] = (features(images), main_object_attributes(records))
    for kind in ("pooled", "patch"):
        for attr in ATTRIBUTES:
            for split in ("validation", "test"):
                feats, attrs = data[split]
                row[f"{kind}_{attr}_{split}"] = round(100 * within(feats[kind], attrs[attr]), 1)
            (fv, av), (ft, at) = data["validation"], data["test"]
            row[f"{kind}_{attr}_transfer"] = round(100 * fit_probe(fv[kind], av[attr], ft[kind], at[attr]), 1)
        for split in ("validation", "test"):
            feats, attrs = data[split]
            acc, chance = within_colour(feats[kind], attrs["shape"], attrs["colour"])
            row[f"{kind}_shape_within_colour_{split}"] = round(100 * acc, 1)
            row[f"shape_within_colour_chance_{split}"] = round(100 * chance, 1)
    report(row, "probe.jsonl")


if __name__ == "__main__":
    main()
