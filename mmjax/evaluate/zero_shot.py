"""Zero-shot classification: class embeddings from prompt templates, top-k accuracy."""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np


def class_embeddings(
    encode_text: Callable[[np.ndarray], np.ndarray],
    tokenize: Callable,
    class_names: Sequence[str],
    templates: Sequence[str],
) -> np.ndarray:
    """``[num_classes, dim]``: per class, the L2-normalised mean of its prompts' text embeddings.

    ``tokenize(list_of_str) -> int array``; ``encode_text(tokens) -> L2-normalised embeddings``.
    """
    prompts = [t.format(name) for name in class_names for t in templates]
    emb = np.asarray(encode_text(tokenize(prompts)), np.float32)
    emb = emb.reshape(len(class_names), len(templates), -1).mean(axis=1)
    return emb / np.linalg.norm(emb, axis=-1, keepdims=True)


def topk_accuracy(logits: np.ndarray, labels: np.ndarray, ks: Sequence[int] = (1, 5)) -> dict[str, float]:
    """``{"top1": ..., "top5": ...}``: fraction of rows whose label is among the k largest logits.

    Ties are resolved against the true label (a label tied with k others is not in the top k).
    """
    logits, labels = np.asarray(logits), np.asarray(labels)
    true = logits[np.arange(len(labels)), labels]
    rank = (logits > true[:, None]).sum(axis=1) + (logits == true[:, None]).sum(axis=1) - 1
    return {f"top{k}": float(np.mean(rank < k)) for k in ks}
