"""Linear probes behind docs/vqa_learning.md: what a fusion model's inputs and hidden states carry.

    # the vision tower's patch tokens at each object's centre (and the 2 x 2-averaged tokens the LM gets):
    # the object's colour, shape and column; colour and shape scored on the smaller objects alone too
    python experiments/fusion_comparison/probes.py tokens --workdir=runs/clip_shapes
    # the LM's hidden state at the [SEP] position of one-object position questions, after each block:
    # the object's column, the question's side word (left/right/top/bottom), the yes/no answer
    python experiments/fusion_comparison/probes.py answer --workdir=runs/llava_shapes
    # the same for two-object "is the A to the left of the B?": both columns, the relation word, the
    # comparison, the answer
    python experiments/fusion_comparison/probes.py relation --workdir=runs/llava_shapes

Each run is read as it trained: its config saved with the checkpoint (``mmjax.tasks.from_run``).

Ridge regression onto one-hot targets (a closed form, no extra dependency), fitted on the first half
of the examples and scored on the second; prints one JSON line per probe set.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from mmjax import tasks  # noqa: E402
from mmjax.data import images, shapes  # noqa: E402

SIDES = ("left", "right", "top", "bottom")


def ridge_accuracy(
    features: np.ndarray, labels: np.ndarray, classes: int, l2: float = 1.0, scored: np.ndarray | None = None
) -> float:
    """Accuracy (%) on the second half of a ridge fit to one-hot ``labels`` on the first half (only the
    examples of the second half where ``scored`` is True, if given)."""
    n = len(features) // 2
    x = np.concatenate([features, np.ones((len(features), 1))], axis=1).astype(np.float64)
    y = np.eye(classes)[labels]
    w = np.linalg.solve(x[:n].T @ x[:n] + l2 * np.eye(x.shape[1]), x[:n].T @ y[:n])
    hits = (x[n:] @ w).argmax(1) == labels[n:]
    return round(100 * float(np.mean(hits if scored is None else hits[np.asarray(scored)[n:]])), 1)


def pixels(examples) -> jnp.ndarray:
    """The examples' images as the shapes configs feed them (``images.normalize``'s default)."""
    return jnp.asarray(images.normalize(np.stack([e["image"] for e in examples])))


def token_probes(workdir: str, scenes: int) -> dict:
    cfg, task, params = tasks.from_run(workdir)  # the run as it trained (its saved config)
    examples = [shapes.generate_example(0, "validation", i) for i in range(scenes)]
    grab = jax.jit(lambda x: task.model.apply({"params": params}, x, method=lambda m, y: m.image(y)[1]))
    tokens = np.concatenate(
        [np.asarray(grab(pixels(examples[i : i + 250]))["patch_tokens"]) for i in range(0, scenes, 250)]
    )
    g, w = int(round(tokens.shape[1] ** 0.5)), tokens.shape[-1]
    patch = cfg.model.image_size // g  # pixels per token side
    pooled = tokens.reshape(-1, g // 2, 2, g // 2, 2, w).mean((2, 4)).reshape(len(tokens), -1, w)
    feats = {"patch": [], "pool2": []}
    colour, shape, column, distractor = [], [], [], []
    for e, t, p in zip(examples, tokens, pooled):
        for k, o in enumerate(e["scene"].objects):
            cx, cy = o.x + o.px // 2, o.y + o.px // 2
            feats["patch"].append(t[(cy // patch) * g + cx // patch])
            feats["pool2"].append(p[(cy // (2 * patch)) * (g // 2) + cx // (2 * patch)])
            colour.append(o.colour), shape.append(o.shape), column.append(o.col), distractor.append(k > 0)
    targets = {"colour": (colour, 8), "shape": (shape, 6), "column": (column, 3)}
    # the same probes scored on the smaller objects alone (not the scene's main object)
    scored = {}
    for t in ("colour", "shape"):
        targets[f"{t}, distractors"], scored[f"{t}, distractors"] = targets[t], distractor
    return probe_table({kind: np.array(f) for kind, f in feats.items()}, targets, scored=scored)


def position_questions(scenes: int, objects: int):
    """``scenes`` (example, position question, answer) triples of scenes with ``objects`` objects
    (validation images, then training ones); with 2+ objects only "to the left/right of" questions."""
    out, index = [], 0
    while len(out) < scenes:
        split, i = ("validation", index) if index < 1000 else ("train", index)
        e = shapes.generate_example(0, split, i)
        index += 1
        if (len(e["scene"].objects) == 1) != (objects == 1) or len(e["scene"].objects) < objects:
            continue
        q, a = next(
            (q, a) for q, a, t in zip(e["questions"], e["answers"], e["question_types"]) if t == "position"
        )
        if objects > 1 and " of the " not in q:
            continue
        out.append((e, q, a))
    return out


def sep_states(workdir: str, items) -> dict[str, np.ndarray]:
    """The LM's hidden state at the ``[SEP]`` of each item's question, after each block."""
    from mmjax.data import layout

    cfg, task, params = tasks.from_run(workdir)
    tok = task.tokenizer
    rows = np.stack(
        [layout.encode_vlm(tok, task.num_image_tokens, q, None, cfg.data.max_len)[0] for _, q, _ in items]
    )
    sep = np.array([np.flatnonzero(r == tok.sep_id)[0] for r in rows])
    hidden: dict[str, list] = {}
    for s in range(0, len(items), 200):
        _, state = task.model.apply(
            {"params": params},
            pixels([e for e, _, _ in items[s : s + 200]]),
            jnp.asarray(rows[s : s + 200]),
            capture_intermediates=True,
            mutable=["intermediates"],
        )
        lm = state["intermediates"]["lm"]
        for name in sorted(k for k in lm if k.startswith("block_")):
            h = np.asarray(lm[name]["__call__"][0][0])
            hidden.setdefault(name, []).append(h[np.arange(len(h)), sep[s : s + 200]])
    return {name: np.concatenate(h) for name, h in hidden.items()}


def answer_probes(workdir: str, scenes: int) -> dict:
    """One-object position questions: the object's column, the side word, the answer."""
    items = position_questions(scenes, 1)
    column = np.array([e["scene"].objects[0].col for e, _, _ in items])
    side = np.array([next(k for k, w in enumerate(SIDES) if w in q.rstrip("?").split()) for _, q, _ in items])
    answer = np.array([int(a == "yes") for _, _, a in items])
    targets = {"column": (column, 3), "side_word": (side, len(SIDES)), "answer": (answer, 2)}
    return probe_table(sep_states(workdir, items), targets) | {
        "yes_share": round(100 * float(answer.mean()), 1)
    }


def relation_probes(workdir: str, scenes: int) -> dict:
    """Two-object "is the A to the left/right of the B?": A's and B's columns, the relation word, whether A
    is left of B, the answer."""
    items = position_questions(scenes, 2)
    cols, words, left, answer = [], [], [], []
    for e, q, a in items:
        names = {o.name: o for o in e["scene"].objects}
        first, second = (names[n] for n in sorted((n for n in names if f"the {n}" in q), key=q.index))
        cols.append((first.col, second.col)), words.append(int(" right of " in q))
        left.append(int(first.col < second.col)), answer.append(int(a == "yes"))
    cols = np.array(cols)
    targets = {
        "first_column": (cols[:, 0], 3),
        "second_column": (cols[:, 1], 3),
        "relation_word": (np.array(words), 2),
        "first_is_left": (np.array(left), 2),
        "answer": (np.array(answer), 2),
    }
    return probe_table(sep_states(workdir, items), targets)


def probe_table(hidden: dict[str, np.ndarray], targets: dict, scored: dict | None = None) -> dict:
    """{features: {target: accuracy}} for ``targets`` {name: (labels, classes)}; a target named in
    ``scored`` {name: bool mask} is scored on those examples alone."""
    scored = scored or {}
    return {
        name: {t: ridge_accuracy(h, np.asarray(y), k, scored=scored.get(t)) for t, (y, k) in targets.items()}
        for name, h in hidden.items()
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("probe", choices=("tokens", "answer", "relation"))
    ap.add_argument("--workdir", required=True)
    ap.add_argument(
        "--scenes", type=int, default=None, help="default: 1500 (tokens), 1200 (answer, relation)"
    )
    a = ap.parse_args()
    if a.probe == "tokens":
        out = token_probes(a.workdir, a.scenes or 1500)
    elif a.probe == "answer":
        out = answer_probes(a.workdir, a.scenes or 1200)
    else:
        out = relation_probes(a.workdir, a.scenes or 1200)
    print(json.dumps({"probe": a.probe, "workdir": a.workdir, **out}))


if __name__ == "__main__":
    main()
