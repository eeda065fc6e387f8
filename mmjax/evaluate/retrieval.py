"""Image<->text retrieval recall@k.

A retrieval counts as a hit at k when any *positive* candidate is among the k best. By default the
only positive of query i is candidate i; ``keys`` makes every pair with equal keys positive (e.g. two
test images whose canonical captions are identical are interchangeable answers).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def recall_at_k(similarity: np.ndarray, positive: np.ndarray, ks: Sequence[int]) -> dict[int, float]:
    """``similarity[q, c]`` query-candidate scores; ``positive[q, c]`` boolean, at least one per row.
    The rank of a query is the number of candidates that score strictly above its best positive."""
    similarity = np.asarray(similarity, np.float64)
    best = np.where(positive, similarity, -np.inf).max(axis=1)
    rank = (similarity > best[:, None]).sum(axis=1)
    return {k: float(np.mean(rank < k)) for k in ks}


def retrieval_metrics(image_emb, text_emb, keys: Sequence | None = None, ks: Sequence[int] = (1, 5, 10)):
    """``{"i2t_r1", "i2t_r5", ..., "t2i_r10"}`` for paired ``image_emb[i]`` <-> ``text_emb[i]``."""
    image_emb, text_emb = np.asarray(image_emb), np.asarray(text_emb)
    n = len(image_emb)
    if keys is None:
        positive = np.eye(n, dtype=bool)
    else:
        keys = np.asarray(keys)
        positive = keys[:, None] == keys[None, :]
    sim = image_emb @ text_emb.T
    out = {}
    for name, s, pos in (("i2t", sim, positive), ("t2i", sim.T, positive.T)):
        for k, r in recall_at_k(s, pos, ks).items():
            out[f"{name}_r{k}"] = r
    return out
