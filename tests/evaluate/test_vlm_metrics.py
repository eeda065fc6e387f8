"""Captioning (BLEU, object correctness) and VQA metrics on hand-computed cases; the VLM report grid."""

import math

import numpy as np
import pytest

from mmjax.data import shapes
from mmjax.evaluate import captioning, report, vqa
from mmjax.evaluate.captioning import bleu


def _scene_objects(example) -> set[tuple[str, str]]:
    o = example["objects"]
    return {(shapes.COLOURS[c], shapes.SHAPES[s]) for c, s in zip(o["colour"], o["shape"])}


def test_bleu_identical_text_is_one():
    text = "a large red circle in the top left and a small blue square in the center on a grey background"
    assert bleu([text], [[text]]) == 1.0
    assert (
        bleu([text, "a blue star on a teal background"], [[text], ["a blue star on a teal background"]])
        == 1.0
    )


def test_bleu_hand_computed_corpus():
    hyps = ["a red circle on a grey background", "a blue star"]
    refs = [["a large red circle on a grey background"], ["a blue square"]]
    # Pair 1 (c=7, r=8): 1-grams 7/7; 2-grams 5/6 ("a red" missing); 3-grams 4/5; 4-grams 3/4.
    # Pair 2 (c=3, r=3): 1-grams 2/3; 2-grams 1/2; 3-grams 0/1; 4-grams 0/0.
    # Corpus sums: p1 = 9/10, p2 = 6/8, p3 = 4/6, p4 = 3/4; product = 27/80 = 0.3375.
    # BP = exp(1 - r/c) = exp(1 - 11/10) = exp(-0.1).  BLEU = exp(-0.1) * 0.3375 ** 0.25 = 0.68967...
    expected = math.exp(-0.1) * 0.3375**0.25
    assert bleu(hyps, refs) == pytest.approx(expected, abs=1e-9)
    assert bleu(hyps, refs) == pytest.approx(0.6896663, abs=1e-6)
    # Pair 1 alone: product 1 * 5/6 * 4/5 * 3/4 = 1/2, BP = exp(1 - 8/7).
    assert bleu(hyps[:1], refs[:1]) == pytest.approx(math.exp(-1 / 7) * 0.5**0.25, abs=1e-9)


def test_bleu_brevity_penalty():
    # Every n-gram matches (precisions 1), but c = 5 < r = 7: BLEU = BP = exp(1 - 7/5).
    assert bleu(["a red circle on a"], [["a red circle on a grey background"]]) == pytest.approx(
        math.exp(-0.4), abs=1e-12
    )


def test_bleu_clips_repeated_words():
    # "the" matches at most once (its count in the reference): p1 = 1/4; c = 4 > r = 2, so BP = 1.
    assert bleu(["the the the the"], [["the cat"]], max_n=1) == pytest.approx(0.25, abs=1e-12)
    # Clipping takes the maximum count over references: two "the"s in the second one.
    assert bleu(["the the the the"], [["the cat", "the the"]], max_n=1) == pytest.approx(0.5, abs=1e-12)


def test_bleu_uses_the_closest_reference_length():
    refs = ["a b c", "a b c d e f", "a b c d e f g h i j"]  # lengths 3, 6, 10
    # c = 5: closest is 6 (not the shortest 3, not the longest 10), so BP = exp(1 - 6/5).
    assert bleu(["a b c d e"], [refs], max_n=1) == pytest.approx(math.exp(-0.2), abs=1e-12)
    # c = 4 is 2 away from both 2 and 6: the tie goes to the shorter, r = 2 < c, BP = 1.
    assert bleu(["a b c d"], [["a b c d e f", "a b"]], max_n=1) == 1.0


def test_bleu_zero_without_a_matching_4gram():
    hyp, ref = "a red circle on a grey", "a red circle in the top left on a grey background"
    assert bleu([hyp], [[ref]]) == 0.0
    assert bleu([hyp], [[ref]], max_n=3) > 0.0  # 1- to 3-grams do match
    assert bleu([], []) == 0.0
    assert bleu(["a b c"], [["a b c"]]) == 0.0  # no 4-grams at all: no smoothing


def test_mentioned_objects_hand_made():
    text = "a large red circle in the top left and a small blue square in the center on a grey background"
    assert captioning.mentioned_objects(text) == {("red", "circle"), ("blue", "square")}
    assert captioning.mentioned_objects("a red and blue circle on a white background") == {("blue", "circle")}
    assert captioning.mentioned_objects("a grey background") == set()


def test_caption_correct_on_dataset_captions():
    multi = 0
    for i in range(30):
        example = shapes.generate_example(0, "train", i)
        objects = _scene_objects(example)
        caps = shapes.captions(example["scene"], np.random.default_rng(i))
        for j in range(5):  # every paraphrase but the last names every object
            assert captioning.caption_correct(caps[j], objects), (caps[j], objects)
        # The last, alt-text style caption names only the main object.
        assert captioning.caption_correct(caps[5], objects) == (len(objects) == 1), (caps[5], objects)
        multi += len(objects) > 1
        # Swap the colour of the main object: never correct.
        words = caps[0].split()
        k = next(k for k, w in enumerate(words) if w in shapes.COLOURS)
        words[k] = next(c for c in shapes.COLOURS if c != words[k])
        assert not captioning.caption_correct(" ".join(words), objects)
    assert multi >= 5  # the loop covers multi-object scenes


def test_caption_metrics_values():
    refs = [["a red circle on a grey background"], ["a large blue square and a small red star"]]
    objects = [{("red", "circle")}, {("blue", "square"), ("red", "star")}]
    generated = ["a red circle on a grey background", "a large blue square"]
    m = captioning.caption_metrics(generated, refs, objects)
    assert m["caption_objects_correct"] == 0.5 and m["caption_examples"] == 2
    assert m["caption_bleu4"] == pytest.approx(bleu(generated, refs)) and 0 < m["caption_bleu4"] < 1
    with pytest.raises(ValueError, match="lengths differ"):
        captioning.caption_metrics(generated, refs[:1], objects)


def test_normalize_answer():
    assert vqa.normalize_answer("  Red? ") == "red"
    assert vqa.normalize_answer("Yes, it is!") == "yes it is"
    assert vqa.normalize_answer("two.;:") == "two"
    assert vqa.normalize_answer("a   blue\tstar") == "a blue star"


def test_vqa_metrics_per_type():
    predictions = ["Red", "circle?", "two", "yes", "no", " Yes."]
    answers = ["red", "square", "two", "yes", "yes", "yes"]
    types = ["colour", "shape", "count", "exists", "exists", "position"]
    m = vqa.vqa_metrics(predictions, answers, types)
    assert m == {
        "vqa_accuracy": 4 / 6,
        "vqa_questions": 6,
        "vqa_accuracy_colour": 1.0,
        "vqa_accuracy_count": 1.0,
        "vqa_accuracy_exists": 0.5,
        "vqa_accuracy_position": 1.0,
        "vqa_accuracy_shape": 0.0,
    }
    with pytest.raises(ValueError, match="at least one question"):
        vqa.vqa_metrics([], [], [])


@pytest.mark.parametrize("n", [1, 6])
def test_vlm_grid_writes_png(tmp_path, n):
    examples = [shapes.generate_example(0, "validation", i) for i in range(n)]
    images = np.stack([e["image"] for e in examples]).astype(np.float32) / 127.5 - 1
    panels = [
        [
            f"Q: {e['questions'][0]}",
            f"A: {e['answers'][0]} (✓ {e['answers'][0]})",
            f"caption: {e['captions'][0]}",
        ]
        for e in examples
    ]
    path = tmp_path / "grid.png"
    report.vlm_grid(str(path), images, panels, title="shapes VQA + captions")
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
