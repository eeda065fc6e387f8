"""Fast screening of CLIP recipes on the shapes dataset: the train split in memory, the project's task,
optimizer and train step (``mmjax.run.build_run``, as training builds them), zero-shot on validation
(seen pairs) and test (held-out pairs), split by attribute. No Grain, no checkpoints: a screen, not a run.

    python experiments/learning/screen.py --steps=300 [--set model.image.stem_channels="(16, 32, 64)" ...]
        [--captions=random|main:P|short|attr:P] [--grey=P] [--twins=F] [--tag NAME]

--captions: random (one of the record's six captions, as the main job), main:P (the short main-object
caption with probability P), short ("a <colour> <shape>" of the main object only), attr:P (with
probability 1-P one of "a <colour> <shape>", "a <shape>", "a <colour> object"); --grey=P: a greyscale image
with the colour words left out of its caption; --twins=F: a fraction F of each batch is pairs of a scene
and its counterfactual twin (``shapes.twin_scene``: the main object's shape swapped to another seen pair).

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

from mmjax import config as config_lib  # noqa: E402
from mmjax import losses  # noqa: E402
from mmjax.data import pipeline, shapes  # noqa: E402
from mmjax.evaluate import (  # noqa: E402
    contrastive,  # noqa: E402
    retrieval,
    zero_shot,
)
from mmjax.evaluate.contrastive import batched  # noqa: E402
from mmjax.run import build_run  # noqa: E402


def load_config(spec, sets):
    """``spec`` (``configs/x.py[:arg]``) with ``KEY=VALUE`` overrides, as ``python -m mmjax.train``
    reads them."""
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


def _mask_negatives(task):
    """Diagnostic: the softmax loss over the allowed pairs only (``batch["allowed"]``, [B, B], True on the
    diagonal): a negative left out neither pushes nor pulls (the package's masked loss, with a mask from
    the labels instead of ``losses.minimal_pair_mask``). One device, one caption, no hard negatives."""

    def loss(params, batch, rng):
        out, _ = task.model.apply({"params": params}, batch["image"], batch["text"])
        ce, metrics = losses.softmax_contrastive_loss(
            out["image"], out["text"], out["logit_scale"], negative_mask=batch["allowed"]
        )
        return ce, dict(metrics, logit_scale=out["logit_scale"])

    task.loss = loss


def zero_shot_head(task, params, data_cfg):
    """``((encode_image, encode_image_object, encode_text), class_names, class_embeddings)``: the jitted
    encoders of ``params`` and the prompt embedding of every class, as the evaluation builds them."""
    encoders = tuple(
        jax.jit(lambda x, m=method: task.model.apply({"params": params}, x, method=m)[0])
        for method in ("encode_image", "encode_image_object", "encode_text")
    )
    names = pipeline.class_names(data_cfg)
    classes = zero_shot.class_embeddings(
        lambda t: batched(encoders[2], t, 250),
        lambda t: task.tokenizer.tokenize(t, data_cfg.max_len),
        names,
        pipeline.prompt_templates(data_cfg),
    )
    return encoders, names, classes


NAMED_RGB = np.array(shapes.COLOUR_RGB + shapes.BACKGROUND_RGB, np.float32)


def unnamed_colours(data_cfg, i: int, min_distance: float = 80.0) -> np.ndarray:
    """Training scene ``i`` rendered with every object in a random colour at least ``min_distance`` (RGB)
    from every named colour and background: no image of a named colour-shape pair, held-out or not."""
    scene, _ = shapes.example_scene(data_cfg.seed, "train", i, data_cfg.image_size)
    colour_rng = np.random.default_rng([data_cfg.seed, 7919, i])
    rgb = []
    while len(rgb) < len(scene.objects):
        x = colour_rng.integers(0, 256, 3)
        if np.linalg.norm(NAMED_RGB - x, axis=1).min() >= min_distance:
            rgb.append(tuple(int(v) for v in x))
    return shapes.render(scene, tuple(rgb))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="configs/clip_shapes.py")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--set", action="append", default=[])
    ap.add_argument("--captions", default="random")
    ap.add_argument("--tag", default="")
    ap.add_argument(
        "--grey", type=float, default=0.0, help="probability of a greyscale image, colour words dropped"
    )
    ap.add_argument(
        "--grey-kind",
        default="luminance",
        choices=("luminance", "unnamed"),
        help="what a --grey row's image is: the scene in greyscale (luminance), or the scene with every "
        "object in a random colour far from every named colour and background (unnamed)",
    )
    ap.add_argument(
        "--negatives",
        default="all",
        choices=("all", "dedupe", "share"),
        help="diagnostic (main-object labels): which in-batch pairs are negatives: all; all but "
        "those with the same main object; only those sharing its colour or its shape",
    )
    ap.add_argument(
        "--extra-short",
        action="store_true",
        help="each image also gets its record's short caption as text_short (the task's second "
        "loss; loss.short_negatives applies to it)",
    )
    ap.add_argument(
        "--twins",
        type=float,
        default=0.0,
        help="fraction of each batch that is pairs (scene, its twin with the main shape swapped)",
    )
    ap.add_argument(
        "--first",
        default="",
        help="N:KEY=VALUE[;KEY=VALUE]: the first N steps train with these overrides (a schedule; e.g. "
        "'200:loss.short_weight=1.0' learns from the short captions alone first), then the --set config",
    )
    ap.add_argument("--save", default="", help="write the trained parameters here (msgpack), for probe.py")
    a = ap.parse_args()
    if a.grey and a.twins:
        ap.error("--grey and --twins do not combine (the grey rows would replace the twins)")
    c = load_config(a.config, a.set)
    c.total_steps = a.steps
    run = build_run(c)
    if a.negatives != "all":
        _mask_negatives(run.task)
    first_steps, first_step = 0, None
    if a.first:  # the same state through a second jitted step with the overrides (same optimizer, schedule)
        n_first, _, sets = a.first.partition(":")
        c_first = load_config(a.config, a.set + sets.split(";"))
        c_first.total_steps = a.steps
        first_steps, first_step = int(n_first), build_run(c_first).train_step
    task = run.task
    tok = task.tokenizer
    t0 = time.time()
    src = pipeline.data_source(c.data, "train")
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
        drop = lambda t: " ".join(w for w in t.split() if w not in shapes.COLOURS)  # noqa: E731
        if a.captions == "short":  # the grey image's short caption names its shape only
            toks_g = np.repeat(
                tok.tokenize([f"a {shapes.SHAPES[y % 6]}" for y in labels], c.data.max_len)[:, None], K, 1
            )
            toks_gf = toks_g
        else:
            toks_g = tok.tokenize([drop(x) for x in flat], c.data.max_len).reshape(n, K, -1)
            toks_gf = tok.tokenize([drop(shapes.flip_text(x)) for x in flat], c.data.max_len).reshape(
                n, K, -1
            )
        if a.grey_kind == "unnamed":
            grey_img = np.stack([unnamed_colours(c.data, i) for i in range(n)])
        else:
            grey_img = np.repeat(
                (images.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32))
                .round()
                .astype(np.uint8)[..., None],
                3,
                -1,
            )
    if a.twins:  # the twin of every training scene, its captions (same kinds, same order) and label
        twin_img, twin_caps, twin_labels = [], [], []
        for i in range(n):
            scene, rng_i = shapes.example_scene(c.data.seed, "train", i, c.data.image_size)
            twin = shapes.twin_scene(scene, rng_i)
            twin_img.append(shapes.render(twin))
            twin_caps.append(shapes.captions(twin, rng_i))
            twin_labels.append(twin.label)
        twin_img, twin_labels = np.stack(twin_img), np.array(twin_labels)
        twin_flat = [x for cs in twin_caps for x in cs]
        twin_toks = tok.tokenize(twin_flat, c.data.max_len).reshape(n, K, -1)
        twin_toks_f = tok.tokenize([shapes.flip_text(x) for x in twin_flat], c.data.max_len).reshape(n, K, -1)
    if a.extra_short:  # the record's short caption (captions[SHORT_CAPTION]); it never names a side
        toks_short = tok.tokenize([cs[shapes.SHORT_CAPTION] for cs in caps], c.data.max_len)
        if a.grey:  # a grey image's short caption without its colour word: "a photo of a large star"
            toks_short_g = tok.tokenize([drop(cs[shapes.SHORT_CAPTION]) for cs in caps], c.data.max_len)
        if a.twins:
            twin_short = tok.tokenize([cs[shapes.SHORT_CAPTION] for cs in twin_caps], c.data.max_len)
    load_s = time.time() - t0

    if a.captions == "short":  # diagnostic: the class name alone, "a red star"
        short = tok.tokenize([f"a {shapes.CLASS_NAMES[y]}" for y in labels], c.data.max_len)
        toks = np.repeat(short[:, None], K, 1)
        toks_f = toks
        if a.twins:
            twin_toks = np.repeat(
                tok.tokenize([f"a {shapes.CLASS_NAMES[y]}" for y in twin_labels], c.data.max_len)[:, None],
                K,
                1,
            )
            twin_toks_f = twin_toks
    kind, _, p = a.captions.partition(":")
    probs = np.full(K, 1.0 / K)
    if kind == "attr":  # diagnostic: main object "a c s" / "a s" / "a c object", mixed with the record's
        pr = float(p or 0)  # probability of the record's own captions
        col = [shapes.COLOURS[y // 6] for y in labels]
        shp = [shapes.SHAPES[y % 6] for y in labels]
        extra = [
            tok.tokenize([f"a {c_} {s_}" for c_, s_ in zip(col, shp)], c.data.max_len),
            tok.tokenize([f"a {s_}" for s_ in shp], c.data.max_len),
            tok.tokenize([f"a {c_} object" for c_ in col], c.data.max_len),
        ]
        extra = np.stack(extra, 1)
        toks = np.concatenate([toks, extra], 1)
        toks_f = np.concatenate([toks_f, extra], 1)
        probs = np.concatenate([np.full(K, pr / K), np.full(3, (1 - pr) / 3)])
        K = K + 3
    if kind == "main":
        probs = np.full(K, (1 - float(p)) / (K - 1))
        probs[K - 1] = float(p)

    with run.context():
        state = run.init()
        step = run.train_step
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
            # the last k rows become the twins of the k rows before them (same flip, caption kind)
            if a.twins:
                k = int(round(a.twins * B / 2))
                src_rows = np.arange(B - 2 * k, B - k)
                j, w, f = idx[src_rows], which[src_rows], flip[src_rows]
                img[B - k :] = np.where(f[:, None, None, None], twin_img[j][:, :, ::-1], twin_img[j])
                w = np.minimum(w, twin_toks.shape[1] - 1)
                txt[B - k :] = np.where(f[:, None], twin_toks_f[j, w], twin_toks[j, w])
            if a.grey:
                g = rng.random(B) < a.grey
                gi = grey_img[idx]
                gi[flip] = gi[flip, :, ::-1]
                img = np.where(g[:, None, None, None], gi, img)
                gw = np.minimum(which, toks_g.shape[1] - 1)
                gt = np.where(flip[:, None], toks_gf[idx, gw], toks_g[idx, gw])
                txt = np.where(g[:, None], gt, txt)
            batch = {"image": pipeline.normalize(img), "text": txt.astype(np.int32)}
            if a.extra_short:
                short_rows = toks_short[idx]
                if a.grey:
                    short_rows = np.where(g[:, None], toks_short_g[idx], short_rows)
                if a.twins:
                    short_rows[B - k :] = twin_short[j]
                batch["text_short"] = short_rows.astype(np.int32)  # no side words: the same when flipped
            if a.negatives != "all":
                y = labels[idx]
                if a.twins:
                    y[B - k :] = twin_labels[j]
                col, shp = y // 6, y % 6
                same_c, same_s = col[:, None] == col[None], shp[:, None] == shp[None]
                allowed = ~(same_c & same_s) if a.negatives == "dedupe" else same_c != same_s
                # the rule among the short main-object captions; long ones among themselves
                if kind == "main":
                    short = which == K - 1
                    allowed = np.where(short[:, None] & short[None], allowed, ~short[:, None] & ~short[None])
                batch["allowed"] = allowed | np.eye(B, dtype=bool)
            state, m = (first_step if s < first_steps else step)(state, batch)
            if s % 25 == 0 or s == a.steps - 1:
                losses.append(float(m["loss"]))
        jax.block_until_ready(state)
        train_s = time.time() - t1
        params = state.params
        if a.save:
            import flax.serialization

            with open(a.save, "wb") as f:
                f.write(flax.serialization.to_bytes(jax.device_get(params)))
        res = dict(
            tag=a.tag,
            sets=a.set,
            captions=a.captions,
            grey=a.grey,
            grey_kind=a.grey_kind,
            twins=a.twins,
            negatives=a.negatives,
            extra_short=a.extra_short,
            first=a.first,
            steps=a.steps,
            load_s=round(load_s, 1),
            train_s=round(train_s, 1),
            ms_step=round(1000 * train_s / a.steps, 1),
            loss_first=round(losses[0], 3),
            loss_last=round(losses[-1], 3),
        )
        (enc_i, enc_o, enc_t), names, cls = zero_shot_head(task, params, c.data)
        for split in ("validation", "test"):
            d = pipeline.load_split(c.data, split, tokenizer=tok, max_examples=1000)
            ie = batched(enc_i, d["image"], 250)
            logits = batched(enc_o, d["image"], 250) @ cls.T
            zs = contrastive.zero_shot_metrics(logits, d["label"], names)  # as results.json has them
            for key, name in (("top1", "top1"), ("colour", "colour_accuracy"), ("shape", "shape_accuracy")):
                res[f"{split}_{key}"] = round(zs[name] * 100, 1)
            if split == "test":
                # how often a held-out image is named as a seen pair, and top-1 among the held-out classes
                # alone (no measure of a prior by itself: errors spread over a colour's shapes mostly name
                # seen pairs; errors.py compares with that spread)
                held = np.array([shapes.is_held_out(*name.split()) for name in names])
                res["test_pred_seen"] = round(float((~held[logits.argmax(1)]).mean()) * 100, 1)
                res["test_top1_heldout_only"] = round(zs["top1_split_classes_only"] * 100, 1)
                te = batched(enc_t, d["text"], 250)
                r = retrieval.retrieval_metrics(ie, te, keys=d["caption"])
                res["test_i2t_r1"] = round(r["i2t_r1"] * 100, 1)
    report(res, "screen.jsonl")


if __name__ == "__main__":
    main()
