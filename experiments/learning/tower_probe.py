"""How fast can an image tower learn the main object's shape, supervised? (A diagnostic, not a recipe:
the real model learns from captions alone.) The ViT from a config, a linear head on its pooled output,
cross-entropy on the main object's shape (6 classes) and colour (8), AdamW; accuracy on validation (seen
pairs) and test (held-out pairs: does shape learned with separate heads transfer to unseen pairs?).

    python experiments/learning/tower_probe.py --steps=300 [--set model.image.pool=map ...]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path.insert(0, os.path.dirname(__file__))

from screen import load_config, report  # noqa: E402

from mmjax import models  # noqa: E402
from mmjax.data import pipeline, tokenizer  # noqa: E402


class Probe(nn.Module):
    tower: nn.Module

    @nn.compact
    def __call__(self, x):
        pooled, _ = self.tower(x)
        return nn.Dense(6)(pooled), nn.Dense(8)(pooled)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--set", action="append", default=[])
    ap.add_argument(
        "--scramble",
        action="store_true",
        help="each training image's colours through a random orthogonal 3x3 map (colour identity lost, "
        "shapes kept); shape head only: does a tower that cannot see colour name held-out pairs' shapes?",
    )
    a = ap.parse_args()
    c = load_config("configs/clip_shapes.py", a.set)
    tower = models.build(c.model).image
    model = Probe(tower)
    src = pipeline.data_source(c.data, "train")
    n = 8000
    recs = [src[i] for i in range(n)]
    images = np.stack([pipeline.record_image(r) for r in recs])
    labels = np.array([r["label"] for r in recs])
    val = pipeline.load_split(c.data, "validation", tokenizer=tokenizer.get_tokenizer(c.data.tokenizer))
    params = nn.unbox(model.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3)))["params"])
    sched = optax.warmup_cosine_decay_schedule(0.0, a.lr, 50, a.steps)
    tx = optax.adamw(sched, b1=0.9, b2=0.98, weight_decay=0.1)
    opt = tx.init(params)

    def loss_fn(p, x, y):
        ls, lc = model.apply({"params": p}, x)
        return optax.softmax_cross_entropy_with_integer_labels(ls, y % 6).mean() + (
            0.0 if a.scramble else optax.softmax_cross_entropy_with_integer_labels(lc, y // 6).mean()
        )

    @jax.jit
    def step(p, o, x, y):
        loss, g = jax.value_and_grad(loss_fn)(p, x, y)
        u, o = tx.update(g, o, p)
        return optax.apply_updates(p, u), o, loss

    rng = np.random.default_rng(0)
    t = time.time()
    for s in range(a.steps):
        idx = rng.integers(0, n, 128)
        x = pipeline.normalize(images[idx])
        if a.scramble:
            q, r = np.linalg.qr(rng.standard_normal((128, 3, 3)))
            x = np.einsum("bhwc,bcd->bhwd", x, q * np.sign(np.diagonal(r, 0, 1, 2))[:, None]).astype(
                np.float32
            )
        params, opt, loss = step(params, opt, x, labels[idx])
    jax.block_until_ready(params)
    secs = time.time() - t
    row = {"sets": a.set, "scramble": a.scramble, "lr": a.lr, "steps": a.steps, "train_s": round(secs, 1)}
    test = pipeline.load_split(c.data, "test", tokenizer=tokenizer.get_tokenizer(c.data.tokenizer))
    for prefix, d in (("", val), ("test_", test)):  # test: every main object a held-out colour-shape pair
        ls, lc = jax.jit(model.apply)({"params": params}, d["image"])
        y = d["label"]
        row[prefix + "shape"] = round(float((np.argmax(ls, 1) == y % 6).mean()) * 100, 1)
        row[prefix + "colour"] = round(float((np.argmax(lc, 1) == y // 6).mean()) * 100, 1)
    report(row, "tower_probe.jsonl")


if __name__ == "__main__":
    main()
