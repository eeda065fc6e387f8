"""Captioning metrics: corpus BLEU and an object-level check for the "shapes" dataset (numpy/python only).

BLEU measures n-gram overlap with reference captions; on "shapes" it rewards getting the template right
as much as the content. ``caption_objects_correct`` asks the question that matters: does the caption name
exactly the (colour, shape) pairs that are in the picture?
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Iterable, Sequence

from mmjax.data.shapes import COLOURS, SHAPES


def _ngrams(tokens: Sequence[str], n: int) -> Counter:
    return Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))


def bleu(hypotheses: list[str], references: list[list[str]], max_n: int = 4) -> float:
    """Corpus-level BLEU (Papineni et al. 2002) on whitespace tokens.

    For each n in 1..``max_n`` the precision is the sum over the corpus of *clipped* n-gram matches
    (a hypothesis n-gram counts at most as often as it occurs in any single reference) divided by the
    sum of hypothesis n-gram counts. BLEU is the geometric mean of these precisions (uniform weights)
    times the brevity penalty ``BP = 1 if c > r else exp(1 - r / c)``, where c is the total hypothesis
    length and r the sum, per hypothesis, of the reference length closest to the hypothesis length
    (ties go to the shorter reference). No smoothing: 0.0 if any precision has zero matches (or zero
    n-grams), and 0.0 for an empty corpus. The value lies in [0, 1].
    """
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} reference lists")
    matches, totals = [0] * max_n, [0] * max_n
    c = r = 0
    for hyp, refs in zip(hypotheses, references):
        hyp_tokens = hyp.split()
        ref_tokens = [ref.split() for ref in refs]
        if not ref_tokens:
            raise ValueError(f"no reference for hypothesis {hyp!r}")
        c += len(hyp_tokens)
        r += min((len(t) for t in ref_tokens), key=lambda length: (abs(length - len(hyp_tokens)), length))
        for n in range(1, max_n + 1):
            hyp_counts = _ngrams(hyp_tokens, n)
            max_ref = Counter()
            for t in ref_tokens:
                max_ref |= _ngrams(t, n)  # elementwise max over references
            matches[n - 1] += sum(min(count, max_ref[g]) for g, count in hyp_counts.items())
            totals[n - 1] += sum(hyp_counts.values())
    if not hypotheses or min(matches) == 0:
        return 0.0
    log_precision = sum(math.log(m / t) for m, t in zip(matches, totals)) / max_n
    brevity = 1.0 if c > r else math.exp(1 - r / c)
    return brevity * math.exp(log_precision)


def mentioned_objects(text: str) -> set[tuple[str, str]]:
    """The (colour, shape) pairs ``text`` names: every colour word immediately followed by a shape word
    (a size word before the colour, as in "a large red circle", makes no difference)."""
    words = text.lower().split()
    return {(a, b) for a, b in zip(words, words[1:]) if a in COLOURS and b in SHAPES}


def caption_correct(generated: str, objects: Iterable[tuple[str, str]]) -> bool:
    """True iff ``generated`` names exactly the scene's (colour, shape) pairs: none missing, none extra."""
    return mentioned_objects(generated) == set(objects)


def caption_metrics(
    generated: list[str], references: list[list[str]], objects: list[set[tuple[str, str]]]
) -> dict:
    """``{"caption_bleu4", "caption_objects_correct", "caption_examples"}`` for paired generated captions,
    reference captions and scene objects (sets of (colour, shape) names)."""
    if not len(generated) == len(references) == len(objects):
        raise ValueError(
            f"lengths differ: {len(generated)} generated, {len(references)} reference lists, "
            f"{len(objects)} object sets"
        )
    if not generated:
        raise ValueError("no captions to evaluate")
    correct = sum(caption_correct(g, o) for g, o in zip(generated, objects))
    return {
        "caption_bleu4": bleu(generated, references, max_n=4),
        "caption_objects_correct": correct / len(generated),
        "caption_examples": len(generated),
    }
