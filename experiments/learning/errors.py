"""Where do a trained model's zero-shot errors go? Per split: shape among the six classes of the right
colour, and, of the images named with the right colour but the wrong shape, how often the named pair is a
seen one, against how often errors spread evenly over the colour's other shapes would name one. A prior
against unseen pairs would push that share *above* the even spread; a pull towards them, below. Also
zero-shot top-1 with test-time flip averaging (the mean embedding of an image and its mirror image).

    python experiments/learning/errors.py --params=FILE [--set KEY=VALUE ...] [--tag NAME]

``--params``: a screen's parameters (``screen.py --save=FILE``, the same ``--set``). One JSON line per run,
appended to ``experiments/learning/results/errors.jsonl``.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path.insert(0, os.path.dirname(__file__))

from probe import load_model  # noqa: E402
from screen import report, zero_shot_head  # noqa: E402

from mmjax.data import pipeline, shapes  # noqa: E402
from mmjax.evaluate.contrastive import batched  # noqa: E402


def error_shares(logits: np.ndarray, labels: np.ndarray, held: np.ndarray) -> dict:
    """``logits`` [N, 48] over ``CLASS_NAMES`` (colour-major), ``held`` [48] bool: which classes are
    held-out pairs."""
    n_shapes = len(shapes.SHAPES)
    colour, shape = labels // n_shapes, labels % n_shapes
    rows = np.stack(
        [logits[i, colour[i] * n_shapes : (colour[i] + 1) * n_shapes] for i in range(len(labels))]
    )
    pred = logits.argmax(1)
    wrong_shape = (pred // n_shapes == colour) & (pred % n_shapes != shape)
    even = [
        np.mean([not held[c * n_shapes + s] for s in range(n_shapes) if s != y])
        for c, y in zip(colour[wrong_shape], shape[wrong_shape])
    ]
    gaps = {True: [], False: []}  # logit of each other shape of the right colour minus the true class's
    for i in range(len(labels)):
        for s in range(n_shapes):
            if s != shape[i]:
                gaps[bool(held[colour[i] * n_shapes + s])].append(rows[i, s] - rows[i, shape[i]])
    return {
        "shape_within_colour": float(np.mean(rows.argmax(1) == shape)),
        "errors": int(wrong_shape.sum()),
        "errors_to_seen": float(np.mean(~held[pred[wrong_shape]])),
        "errors_to_seen_if_even": float(np.mean(even)),
        "gap_seen_competitors": float(np.mean(gaps[False])),
        "gap_held_out_competitors": float(np.mean(gaps[True])),
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="configs/clip_shapes.py")
    ap.add_argument("--set", action="append", default=[])
    ap.add_argument("--params", required=True, help="parameters written by screen.py --save")
    ap.add_argument("--tag", default="")
    a = ap.parse_args()
    c, task, params = load_model(a.config, a.set, a.params)
    (_, enc_image, _), names, classes = zero_shot_head(task, params, c.data)
    held = np.array([shapes.is_held_out(*name.split()) for name in names])
    row = {"tag": a.tag, "sets": a.set, "params": a.params}
    for split in ("validation", "test"):
        d = pipeline.load_split(c.data, split, tokenizer=task.tokenizer, max_examples=1000)
        images = batched(enc_image, d["image"], 250)
        logits = np.asarray(images @ classes.T)
        # test-time flip averaging: the mean of the image's and its mirror image's embeddings
        mirrored = batched(enc_image, np.ascontiguousarray(d["image"][:, :, ::-1]), 250)
        for key, z in (("top1", logits), ("top1_flip_average", np.asarray((images + mirrored) @ classes.T))):
            row[f"{split}_{key}"] = round(100 * float(np.mean(z.argmax(1) == np.asarray(d["label"]))), 1)
        for key, value in error_shares(logits, np.asarray(d["label"]), held).items():
            row[f"{split}_{key}"] = round(value * (100 if "gap" not in key and key != "errors" else 1), 3)
    report(row, "errors.jsonl")


if __name__ == "__main__":
    main()
