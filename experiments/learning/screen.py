"""Fast screening of CLIP recipes on the shapes dataset: the train split in memory, the project's task,
optimizer and train step (``train.make_optimizer``, ``train.make_train_step``), zero-shot on validation
(seen pairs) and test (held-out pairs), split by attribute. No Grain, no checkpoints: a screen, not a run.

    python experiments/learning/screen.py --steps=300 [--set model.image.stem_channels="(16, 32, 64)" ...]
        [--captions=random|main:P|short|attr:P] [--grey=P] [--tag NAME]

--captions: random (one of the record's six captions, as the main job), main:P (the short main-object
caption with probability P), short ("a <colour> <shape>" of the main object only), attr:P (with
probability 1-P one of "a <colour> <shape>", "a <shape>", "a <colour> object"); --grey=P: a greyscale image
with the colour words left out of its caption.

Prints one JSON line per run (appended to experiments/learning/results/screen.jsonl).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import jax
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))

from mmjax import train as train_lib  # noqa: E402
from mmjax import config as config_lib  # noqa: E402
from mmjax import sharding, tasks  # noqa: E402
from mmjax.data import pipeline, shapes  # noqa: E402
from mmjax.evaluate import zero_shot, retrieval  # noqa: E402
from mmjax.evaluate import contrastive  # noqa: E402
from mmjax.evaluate.contrastive import batched  # noqa: E402


def load_config(spec, sets):
    """``spec`` (``configs/x.py[:arg]``) with ``KEY=VALUE`` overrides, as ``python -m mmjax.train`` reads them."""
    c = config_lib.load_file(spec)
    for s in sets:
        key, _, value = s.partition("=")
        config_lib.override(c, key, value)
    return c


def report(row: dict, name: str) -> None:
    """Print ``row`` as one JSON line and append it to ``experiments/learning/results/<name>``."""
    print(json.dumps(row), flush=True)
    results = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
    os.makedirs(results, exist_ok=True)
    with open(os.path.join(results, name), "a") as f:
        f.write(json.dumps(row) + "\n")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="configs/clip_shapes.py")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--set", action="append", default=[])
    ap.add_argument("--captions", default="random")
    ap.add_argument("--tag", default="")
    ap.add_argument("--grey", type=float, default=0.0, help="probability of a greyscale image, colour words dropped")
    a = ap.parse_args()
    c = load_config(a.config, a.set)
    c.total_steps = a.steps
    task = tasks.get_task(c)
    tok = task.tokenizer
    t0 = time.time()
    src = pipeline._data_source(c.data, "train")
    n = len(src)
    recs = [src[i] for i in range(n)]
    images = np.stack([pipeline.record_image(r) for r in recs])
    caps = [pipeline.texts(r, "captions") for r in recs]
    K = len(caps[0])
    labels = np.array([r["label"] for r in recs])
    flat = [x for cs in caps for x in cs]
    toks = tok.tokenize(flat, c.data.max_len).reshape(n, K, -1)
    toks_f = tok.tokenize([shapes.flip_text(x) for x in flat], c.data.max_len).reshape(n, K, -1)
    if a.grey:
        if a.captions == "short":  # the grey image's short caption names its shape only
            toks_g = np.repeat(tok.tokenize([f"a {shapes.SHAPES[y % 6]}" for y in labels], c.data.max_len)[:, None],
                               K, 1)
            toks_gf = toks_g
        else:
            drop = lambda t: " ".join(w for w in t.split() if w not in shapes.COLOURS)  # noqa: E731
            toks_g = tok.tokenize([drop(x) for x in flat], c.data.max_len).reshape(n, K, -1)
            toks_gf = tok.tokenize([drop(shapes.flip_text(x)) for x in flat], c.data.max_len).reshape(n, K, -1)
        grey_img = np.repeat((images.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32))
                             .round().astype(np.uint8)[..., None], 3, -1)
    load_s = time.time() - t0

    if a.captions == "short":  # diagnostic: the class name alone, "a red star"
        short = tok.tokenize([f"a {shapes.CLASS_NAMES[y]}" for y in labels], c.data.max_len)
        toks = np.repeat(short[:, None], K, 1)
        toks_f = toks
    kind, _, p = a.captions.partition(":")
    probs = np.full(K, 1.0 / K)
    if kind == "attr":  # diagnostic: main object "a c s" / "a s" / "a c object", mixed with the record's
        pr = float(p or 0)  # probability of the record's own captions
        col = [shapes.COLOURS[y // 6] for y in labels]
        shp = [shapes.SHAPES[y % 6] for y in labels]
        extra = [tok.tokenize([f"a {c_} {s_}" for c_, s_ in zip(col, shp)], c.data.max_len),
                 tok.tokenize([f"a {s_}" for s_ in shp], c.data.max_len),
                 tok.tokenize([f"a {c_} object" for c_ in col], c.data.max_len)]
        extra = np.stack(extra, 1)
        toks = np.concatenate([toks, extra], 1)
        toks_f = np.concatenate([toks_f, extra], 1)
        probs = np.concatenate([np.full(K, pr / K), np.full(3, (1 - pr) / 3)])
        K = K + 3
    if kind == "main":
        probs = np.full(K, (1 - float(p)) / (K - 1))
        probs[K - 1] = float(p)

    tx = train_lib.make_optimizer(c, task)
    mesh = jax.make_mesh((1,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    with jax.set_mesh(mesh):
        state, _ = train_lib.init_state(task, tx, c.seed, mesh, sharding.logical_rules(c.sharding))
        step = jax.jit(train_lib.make_train_step(task, tx, c.seed), donate_argnums=0)
        rng = np.random.default_rng(c.seed)
        B = c.batch_size
        losses = []
        t1 = time.time()
        for s in range(a.steps):
            idx = rng.integers(0, n, B)
            which = rng.choice(K, size=B, p=probs)
            flip = rng.random(B) < c.data.flip_prob
            img = images[idx].copy()
            img[flip] = img[flip, :, ::-1]
            txt = np.where(flip[:, None], toks_f[idx, which], toks[idx, which])
            if a.grey:
                g = rng.random(B) < a.grey
                gi = grey_img[idx]
                gi[flip] = gi[flip, :, ::-1]
                img = np.where(g[:, None, None, None], gi, img)
                gw = np.minimum(which, toks_g.shape[1] - 1)
                gt = np.where(flip[:, None], toks_gf[idx, gw], toks_g[idx, gw])
                txt = np.where(g[:, None], gt, txt)
            batch = {"image": pipeline.normalize(img), "text": txt.astype(np.int32)}
            state, m = step(state, batch)
            if s % 25 == 0 or s == a.steps - 1:
                losses.append(float(m["loss"]))
        jax.block_until_ready(state)
        train_s = time.time() - t1
        params = state.params
        res = dict(tag=a.tag, sets=a.set, captions=a.captions, grey=a.grey, steps=a.steps, load_s=round(load_s, 1),
                   train_s=round(train_s, 1), ms_step=round(1000 * train_s / a.steps, 1),
                   loss_first=round(losses[0], 3), loss_last=round(losses[-1], 3))
        enc_i = jax.jit(lambda x: task.model.apply({"params": params}, x, method="encode_image")[0])
        enc_t = jax.jit(lambda x: task.model.apply({"params": params}, x, method="encode_text")[0])
        names = pipeline.class_names(c.data)
        cls = zero_shot.class_embeddings(lambda t: batched(enc_t, t, 250),
                                         lambda t: tok.tokenize(t, c.data.max_len), names,
                                         pipeline.prompt_templates(c.data))
        for split in ("validation", "test"):
            d = pipeline.load_split(c.data, split, tokenizer=tok, max_examples=1000)
            ie = batched(enc_i, d["image"], 250)
            zs = contrastive.zero_shot_metrics(ie @ cls.T, d["label"], names)  # as results.json has them
            for key, name in (("top1", "top1"), ("colour", "colour_accuracy"), ("shape", "shape_accuracy")):
                res[f"{split}_{key}"] = round(zs[name] * 100, 1)
            if split == "test":
                te = batched(enc_t, d["text"], 250)
                r = retrieval.retrieval_metrics(ie, te, keys=d["caption"])
                res["test_i2t_r1"] = round(r["i2t_r1"] * 100, 1)
    report(res, "screen.jsonl")


if __name__ == "__main__":
    main()
