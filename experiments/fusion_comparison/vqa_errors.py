"""Where a fusion model's VQA errors are: accuracy by question type, split by whether the object asked
about is a held-out colour-shape pair, and for wrong colour/shape answers how often they name a pair seen
in training (a language prior says "red objects are never circles") against an even spread.

    python experiments/fusion_comparison/vqa_errors.py --workdir=runs/llava_shapes [--split=test] \
        [--images=1000] [--tag=NAME] [--step=N]

The run is scored as it trained: its config saved with the checkpoint (``mmjax.tasks.from_run``), the
command-line overrides it had included.

Prints one JSON line and appends it to ``results/vqa_errors.jsonl``. Position questions are split into
one-object ("is the red circle on the left?") and two-object ones ("... to the left of ...", "above");
colour and shape questions into those about "the biggest object" (the word names no attribute) and
those naming the object by its other attribute ("what shape is the green object?", where a prior learned
from the question's words can answer against the image), and those again by whether the named object is
the main one (the biggest) or a smaller distractor (``_named_main``, ``_named_distractor``; on the test
split the main object is a held-out pair, the distractors mostly seen ones). For wrong answers to named
questions, ``wrong_named_answers_of_another_object``: how often the answer is the asked attribute of
*another* object in the scene (the model read the wrong object), against ``..._if_spread_evenly``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402

from mmjax import tasks  # noqa: E402
from mmjax.data import shapes  # noqa: E402


def _percent(hits: list[bool]) -> float | None:
    return round(100 * float(np.mean(hits)), 1) if hits else None


def target_pair(question: str, answer: str, label: int) -> tuple[str, str] | None:
    """The (colour, shape) a colour or shape question asks about, from its words and answer (the main
    object's label for "the biggest object")."""
    words = question.rstrip("?").split()
    if "biggest" in words:
        c, s = divmod(int(label), len(shapes.SHAPES))
        return shapes.COLOURS[c], shapes.SHAPES[s]
    if words[:2] == ["what", "colour"]:
        return answer, words[-1]
    if words[:2] == ["what", "shape"]:
        return words[-2], answer
    return None


def other_objects_attribute(scene, question: str, kind: str) -> set[str]:
    """The ``kind`` ("colour" or "shape") of every object of ``scene`` but the one ``question`` names."""
    words = question.rstrip("?").split()
    named = [o for o in scene.objects if shapes.COLOURS[o.colour] in words or shapes.SHAPES[o.shape] in words]
    names = shapes.COLOURS if kind == "colour" else shapes.SHAPES
    return {names[getattr(o, kind)] for o in scene.objects if o not in named[:1]}


def analyse(rows, predicted, labels, scenes=None) -> dict:
    """Accuracy per type and held-out/seen target, and where wrong colour/shape answers go (``scenes``,
    the rows' scenes by image index, for whether they name another object's attribute)."""
    out: dict = {}
    by: dict[str, list[bool]] = {}
    wrong_seen, spread_seen, wrong_other, spread_other = [], [], [], []
    for (i, q, a, t), p in zip(rows, predicted):
        p = p.strip()
        ok = p == a
        by.setdefault(t, []).append(ok)
        if t == "position":
            kind = "two" if any(w in q.split() for w in ("of", "above", "below")) else "one"
            by.setdefault(f"position_{kind}_object", []).append(ok)
        if t in ("colour", "shape"):  # the main object asked for by size, or an object named by the other
            by.setdefault(f"{t}_{'biggest' if 'biggest' in q.split() else 'named'}", []).append(ok)
        pair = target_pair(q, a, labels[i]) if t in ("colour", "shape") else None
        if pair is None:
            continue
        held = shapes.is_held_out(*pair)
        by.setdefault(f"{t}_{'held_out' if held else 'seen'}_target", []).append(ok)
        if scenes is not None and "biggest" not in q.split():  # named: the main object or a smaller one
            main = scenes[i].objects[0]
            is_main = pair == (shapes.COLOURS[main.colour], shapes.SHAPES[main.shape])
            by.setdefault(f"{t}_named_{'main' if is_main else 'distractor'}", []).append(ok)
        options = shapes.COLOURS if t == "colour" else shapes.SHAPES
        if ok or p not in options:
            continue
        as_pair = (lambda x: (x, pair[1])) if t == "colour" else (lambda x: (pair[0], x))
        wrong_seen.append(not shapes.is_held_out(*as_pair(p)))
        others = [x for x in options if x != a]
        spread_seen.append(np.mean([not shapes.is_held_out(*as_pair(x)) for x in others]))
        if scenes is not None and "biggest" not in q.split():
            theirs = other_objects_attribute(scenes[i], q, t) - {a}
            wrong_other.append(p in theirs)
            spread_other.append(len(theirs) / len(others))
    out.update({f"accuracy_{k}": _percent(v) for k, v in sorted(by.items())})
    out.update({f"questions_{k}": len(v) for k, v in sorted(by.items())})
    out["wrong_answers_naming_a_seen_pair"] = _percent(wrong_seen)
    out["the_same_if_spread_evenly"] = round(100 * float(np.mean(spread_seen)), 1) if spread_seen else None
    if wrong_other:
        out["wrong_named_answers_of_another_object"] = _percent(wrong_other)
        out["wrong_named_answers_of_another_object_if_spread_evenly"] = _percent(spread_other)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", required=True, help="the trained run")
    ap.add_argument("--step", type=int, default=None, help="its checkpoint to score (default: the latest)")
    ap.add_argument("--split", default="test")
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--tag", default="")
    a = ap.parse_args()

    from mmjax.data import loaders
    from mmjax.evaluate import vlm

    cfg, task, params = tasks.from_run(a.workdir, a.step)
    data = loaders.load_split(cfg.data, a.split, tokenizer=task.tokenizer, max_examples=a.images)
    rows, predicted, metrics = vlm.answer_questions(task, params, data, cfg.eval.batch_size)
    scenes = [  # example i of a split is a pure function of (seed, split, i, image size)
        shapes.example_scene(cfg.data.seed, a.split, int(i), cfg.data.image_size)[0] for i in data["id"]
    ]
    row = {
        "tag": a.tag or a.workdir,
        "workdir": a.workdir,
        "split": a.split,
        **({"step": a.step} if a.step is not None else {}),
        "images": len(data["caption"]),
        "vqa_accuracy": round(100 * metrics["vqa_accuracy"], 1),
        **analyse(rows, predicted, data["label"], scenes),
    }
    print(json.dumps(row))
    os.makedirs(os.path.join(os.path.dirname(__file__), "results"), exist_ok=True)
    with open(os.path.join(os.path.dirname(__file__), "results", "vqa_errors.jsonl"), "a") as f:
        f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
