"""The screens' results as a markdown table: python experiments/learning/table.py [results/screen.jsonl];
the linear probes' (probe.py): python experiments/learning/table.py results/probe.jsonl."""

import json
import os
import sys

COLUMNS = ("validation_top1", "validation_shape", "test_top1", "test_colour", "test_shape", "test_i2t_r1")


def recipe(row: dict) -> str:
    sets = " ".join(s.replace("model.", "") for s in row["sets"])
    extras = "".join(f" {key}={row[key]}" for key in ("grey", "twins", "first") if row.get(key))
    extras += (
        f" ({row['grey_kind']})"
        if row.get("grey") and row.get("grey_kind", "luminance") != "luminance"
        else ""
    )
    extras += f" negatives={row['negatives']}" if row.get("negatives", "all") != "all" else ""
    extras += " +short" if row.get("extra_short") else ""
    return f"`{row['captions']}{extras}` {sets}".strip()


def probe_table(rows: list[dict]) -> None:
    """One row per tower and feature kind: each attribute on validation / test (two-fold within the split),
    shape within one colour, and shape fitted on validation then scored on test."""
    attrs = ("colour", "shape", "size", "position")
    print(
        "| tower | features | "
        + " | ".join(f"{a} val / test" for a in attrs)
        + " | shape within colour val / test | shape val → test |"
    )
    print("|---" * (4 + len(attrs)) + "|")
    for r in rows:
        for kind in ("pooled", "patch"):
            cells = [f"{r[f'{kind}_{a}_validation']} / {r[f'{kind}_{a}_test']}" for a in attrs]
            within = (
                f"{r[f'{kind}_shape_within_colour_validation']} / {r[f'{kind}_shape_within_colour_test']}"
            )
            print(
                f"| {r['tag']} | {kind} | "
                + " | ".join(cells)
                + f" | {within} | {r[f'{kind}_shape_transfer']} |"
            )
    r = rows[0]
    print(
        f"\nChance: colour 12.5, shape 16.7, size 3 classes, position 11.1 (9 cells); shape within colour "
        f"{r['shape_within_colour_chance_validation']} / {r['shape_within_colour_chance_test']}."
    )


def main(path: str) -> None:
    rows = [json.loads(line) for line in open(path)]
    if rows and "pooled_shape_validation" in rows[0]:
        return probe_table(rows)
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
