"""The screens' results as a markdown table: python experiments/learning/table.py [results/screen.jsonl]."""

import json
import os
import sys

COLUMNS = ("validation_top1", "validation_shape", "test_top1", "test_colour", "test_shape", "test_i2t_r1")


def recipe(row: dict) -> str:
    sets = " ".join(s.replace("model.", "") for s in row["sets"])
    extras = "".join(f" {key}={row[key]}" for key in ("grey", "twins") if row.get(key))
    extras += f" negatives={row['negatives']}" if row.get("negatives", "all") != "all" else ""
    extras += " +short" if row.get("extra_short") else ""
    return f"`{row['captions']}{extras}` {sets}".strip()


def main(path: str) -> None:
    rows = [json.loads(line) for line in open(path)]
    print("| tag | recipe | steps | " + " | ".join(COLUMNS) + " |")
    print("|---" * (3 + len(COLUMNS)) + "|")
    for r in rows:
        print(
            f"| {r['tag']} | {recipe(r)} | {r['steps']} | "
            + " | ".join(str(r.get(c, "–")) for c in COLUMNS)
            + " |"
        )


if __name__ == "__main__":
    main(
        sys.argv[1]
        if len(sys.argv) > 1
        else os.path.join(os.path.dirname(__file__), "results", "screen.jsonl")
    )
