"""Evaluation metrics on hand-built cases with known answers."""

import numpy as np
import pytest

from mmjax.evaluate import retrieval, zero_shot


def test_topk_accuracy_known_answer():
    logits = np.array([[0.9, 0.1, 0.0], [0.2, 0.3, 0.5], [0.5, 0.4, 0.1], [0.1, 0.2, 0.7]])
    labels = np.array([0, 1, 1, 0])
    # ranks of the true label: 0, 1, 1, 2
    assert zero_shot.topk_accuracy(logits, labels, ks=(1, 2, 3)) == {"top1": 0.25, "top2": 0.75, "top3": 1.0}


def test_topk_ties_count_against_the_label():
    assert zero_shot.topk_accuracy(np.array([[1.0, 1.0]]), np.array([1]), ks=(1,))["top1"] == 0.0


def test_class_embeddings_average_templates():
    table = {"a x": [1.0, 0.0], "the x": [0.0, 1.0], "a y": [0.0, 1.0], "the y": [0.0, 1.0]}
    emb = zero_shot.class_embeddings(
        lambda t: np.array([table[s] for s in t]), lambda s: list(s), ["x", "y"], ["a {}", "the {}"]
    )
    np.testing.assert_allclose(emb, [[0.5**0.5, 0.5**0.5], [0.0, 1.0]], atol=1e-6)


def test_retrieval_known_answer():
    img = np.eye(3)
    txt = np.array([[1.0, 0, 0], [0, 0, 1.0], [0, 1.0, 0]])  # texts 1 and 2 swapped
    m = retrieval.retrieval_metrics(img, txt, ks=(1, 2))
    assert m["i2t_r1"] == pytest.approx(1 / 3) and m["t2i_r1"] == pytest.approx(1 / 3)
    assert m["i2t_r2"] == 1.0


def test_retrieval_equal_keys_are_positives():
    img = np.eye(2)
    txt = np.array([[0, 1.0], [1.0, 0]])
    assert retrieval.retrieval_metrics(img, txt, ks=(1,))["i2t_r1"] == 0.0
    assert retrieval.retrieval_metrics(img, txt, keys=["same", "same"], ks=(1,))["i2t_r1"] == 1.0


def test_perfect_and_chance_retrieval():
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(200, 64))
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    assert retrieval.retrieval_metrics(emb, emb)["i2t_r1"] == 1.0
    other = rng.normal(size=(200, 64))
    assert retrieval.retrieval_metrics(emb, other)["i2t_r10"] < 0.2


def test_zero_shot_per_attribute_accuracy():
    from mmjax.evaluate.contrastive import zero_shot_metrics

    names = ["red circle", "red star", "blue circle", "blue star"]
    labels = np.array([0, 1, 2, 3])
    # predicted: right; right colour, wrong shape; right colour, wrong shape; wrong colour, right shape
    logits = np.eye(4)[[0, 0, 3, 1]]
    out = zero_shot_metrics(logits, labels, names)
    assert out["top1"] == 0.25 and out["colour_accuracy"] == 0.75 and out["shape_accuracy"] == 0.5
    assert "colour_accuracy" not in zero_shot_metrics(
        logits, labels, ["a", "b", "c", "d"]
    )  # not "colour shape" names
