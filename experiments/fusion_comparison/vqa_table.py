"""A markdown table of ``results/vqa_errors.jsonl`` rows: VQA by question type, validation beside test.

    python experiments/fusion_comparison/vqa_table.py [TAG ...]     # default: every row, in file order

One line per (tag, step) with validation and test side by side where both were scored."""

from __future__ import annotations

import json
import os
import sys

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "vqa_errors.jsonl")
COLUMNS = (
    ("VQA", "vqa_accuracy"),
    ("colour", "accuracy_colour"),
    ("shape", "accuracy_shape"),
    ("count", "accuracy_count"),
    ("exists", "accuracy_exists"),
    ("position", "accuracy_position"),
    ("position, 1 object", "accuracy_position_one_object"),
    ("position, 2 objects", "accuracy_position_two_object"),
    ("colour, named main", "accuracy_colour_named_main"),
    ("colour, named distractor", "accuracy_colour_named_distractor"),
    ("shape, named main", "accuracy_shape_named_main"),
    ("shape, named distractor", "accuracy_shape_named_distractor"),
)


def table(rows: list[dict], tags: list[str]) -> str:
    keyed: dict[tuple, dict] = {}
    for r in rows:
        if tags and r["tag"] not in tags:
            continue
        keyed.setdefault((r["tag"], r.get("step")), {})[r["split"]] = r
    first = {tag: i for i, (tag, _) in reversed(list(enumerate(keyed)))}  # a tag's first appearance
    rank = (lambda tag: tags.index(tag)) if tags else first.get
    order = sorted(keyed, key=lambda k: (rank(k[0]), float("inf") if k[1] is None else k[1]))
    head = "| run | step | " + " | ".join(f"{name} val / test" for name, _ in COLUMNS) + " |"
    lines = [head, "|" + "---|" * (len(COLUMNS) + 2)]
    for tag, step in order:
        by_split = keyed[(tag, step)]

        def cell(key):
            val, test = (by_split.get(s, {}).get(key) for s in ("validation", "test"))
            return " / ".join("–" if v is None else f"{v:.1f}" for v in (val, test))

        lines.append(f"| {tag} | {step or 'last'} | " + " | ".join(cell(k) for _, k in COLUMNS) + " |")
    return "\n".join(lines)


def main():
    with open(RESULTS) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    print(table(rows, sys.argv[1:]))


if __name__ == "__main__":
    main()
