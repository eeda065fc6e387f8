"""VQA metrics: exact-match accuracy after answer normalisation, overall and per question type.

Answers on "shapes" are single words, so exact match is the right metric (the VQA v2 "min(#humans/3, 1)"
soft score needs ten human answers per question, which we do not have).
"""

from __future__ import annotations

import re
from collections import defaultdict

_PUNCTUATION = re.compile(r"[?,.!;:]")


def normalize_answer(text: str) -> str:
    """Lowercase, drop the punctuation ``?,.!;:``, strip and collapse whitespace."""
    return " ".join(_PUNCTUATION.sub("", text.lower()).split())


def vqa_metrics(predictions: list[str], answers: list[str], types: list[str]) -> dict:
    """``{"vqa_accuracy", "vqa_questions", "vqa_accuracy_<type>" for each type present}``."""
    if not len(predictions) == len(answers) == len(types):
        raise ValueError(
            f"lengths differ: {len(predictions)} predictions, {len(answers)} answers, "
            f"{len(types)} question types"
        )
    if not predictions:
        raise ValueError("vqa_metrics needs at least one question; got none")
    by_type = defaultdict(list)
    for p, a, t in zip(predictions, answers, types):
        by_type[t].append(normalize_answer(p) == normalize_answer(a))
    hits = [h for group in by_type.values() for h in group]
    out = {"vqa_accuracy": sum(hits) / len(hits), "vqa_questions": len(hits)}
    out.update({f"vqa_accuracy_{t}": sum(group) / len(group) for t, group in sorted(by_type.items())})
    return out
