import dataclasses
import re

import numpy as np
import pytest

from mmjax.data import shapes as S


def _examples(split, n, seed=0):
    return [S.generate_example(seed, split, i) for i in range(n)]


@pytest.fixture(scope="module")
def train_examples():
    return _examples("train", 300) + _examples("validation", 100)


@pytest.fixture(scope="module")
def test_examples():
    return _examples("test", 100)


def _texts(ex):
    return ex["captions"] + ex["questions"] + ex["answers"]


def test_determinism():
    a, b = S.generate_example(0, "train", 7), S.generate_example(0, "train", 7)
    assert a["image"].tobytes() == b["image"].tobytes()
    assert a["captions"] == b["captions"] and a["questions"] == b["questions"]
    other = [S.generate_example(1, "train", i) for i in range(5)]
    assert any(
        o["image"].tobytes() != S.generate_example(0, "train", i)["image"].tobytes()
        for i, o in enumerate(other)
    )
    assert S.generate_example(0, "train", 7, image_size=32)["image"].shape == (32, 32, 3)


def test_held_out_combos_cover_a_fifth_and_leave_every_colour_and_shape_seen():
    total = len(S.COLOURS) * len(S.SHAPES)
    assert len(S.HELD_OUT_COMBOS) >= 0.2 * total
    seen = [(c, s) for c in S.COLOURS for s in S.SHAPES if not S.is_held_out(c, s)]
    assert {c for c, _ in seen} == set(S.COLOURS) and {s for _, s in seen} == set(S.SHAPES)
    assert len(S.SHAPES) >= 6 and len(S.COLOURS) >= 8


def test_held_out_combos_never_in_train_or_validation(train_examples):
    patterns = [re.compile(rf"\b{c} {s}\b") for c, s in S.HELD_OUT_COMBOS]
    for ex in train_examples:
        for c, s in zip(ex["objects"]["colour"], ex["objects"]["shape"]):
            assert not S.is_held_out(S.COLOURS[c], S.SHAPES[s])
        for text in _texts(ex):
            assert not any(p.search(text) for p in patterns), text


def test_test_split_main_objects_are_held_out(test_examples):
    for ex in test_examples:
        assert S.is_held_out(*S.CLASS_NAMES[ex["label"]].split())
    assert len({ex["label"] for ex in test_examples}) > 5


def test_labels_match_class_names_and_captions_mention_main_object(train_examples, test_examples):
    assert len(S.CLASS_NAMES) == len(S.COLOURS) * len(S.SHAPES)
    for ex in train_examples + test_examples:
        colour, shape = S.COLOURS[ex["objects"]["colour"][0]], S.SHAPES[ex["objects"]["shape"][0]]
        assert S.CLASS_NAMES[ex["label"]] == f"{colour} {shape}"
        assert ex["label"] == S.label_of(colour, shape)
        assert len(ex["captions"]) == S.NUM_CAPTIONS
        assert all(f"{colour} {shape}" in c for c in ex["captions"])
        assert ex["captions"][0] == S.canonical_caption(ex["scene"])


def test_main_object_strictly_largest_and_cells_distinct(train_examples, test_examples):
    for ex in train_examples + test_examples:
        objs = ex["scene"].objects
        assert 1 <= len(objs) <= 3
        assert all(objs[0].size > o.size and objs[0].px > o.px for o in objs[1:])
        assert len({(o.row, o.col) for o in objs}) == len(objs)
        assert len({(o.colour, o.shape) for o in objs}) == len(objs)


def test_background_far_from_object_colours():
    for bg in S.BACKGROUND_RGB:
        for obj in S.COLOUR_RGB:
            distance = np.linalg.norm(np.subtract(bg, obj, dtype=float))
            assert distance - np.sqrt(3) * S.BACKGROUND_JITTER > 60, (bg, obj)


def test_questions_answered_correctly_on_hand_checked_scene():
    red_circle = S.Obj(colour=0, shape=0, size=2, row=0, col=0, x=1, y=1, px=20)
    blue_square = S.Obj(colour=2, shape=1, size=0, row=2, col=2, x=50, y=50, px=10)
    scene = S.Scene((red_circle, blue_square), background=0, bg_kind=0, bg_seed=0, image_size=64)
    expected = {
        "what colour is the circle?": "red",
        "what colour is the square?": "blue",
        "what colour is the biggest object?": "red",
        "what shape is the red object?": "circle",
        "what shape is the blue object?": "square",
        "what shape is the biggest object?": "circle",
        "how many objects are there?": "two",
        "is there a red circle?": "yes",
        "is there a blue square?": "yes",
        "is the red circle to the left of the blue square?": "yes",
        "is the red circle to the right of the blue square?": "no",
        "is the blue square to the left of the red circle?": "no",
        "is the blue square to the right of the red circle?": "yes",
    }
    asked = set()
    for seed in range(60):
        qs, ans, types = S.questions(scene, np.random.default_rng(seed))
        assert sorted(types) == sorted(S.QUESTION_TYPES + ("exists",))
        for q, a, t in zip(qs, ans, types):
            if t == "exists" and a == "no":
                assert q not in expected
            else:
                assert expected[q] == a, q
            asked.add(q)
    assert len(asked & set(expected)) >= 10
    assert S.canonical_caption(scene) == (
        "a large red circle in the top left and a small blue square in the bottom right on a grey background"
    )


def test_object_questions_ask_about_every_object_and_are_answered_correctly():
    red_circle = S.Obj(colour=0, shape=0, size=2, row=0, col=0, x=1, y=1, px=20)
    red_square = S.Obj(colour=0, shape=1, size=0, row=2, col=0, x=1, y=50, px=10)
    blue_square = S.Obj(colour=2, shape=1, size=0, row=2, col=2, x=50, y=50, px=10)
    objs = (red_circle, red_square, blue_square)
    stored = {k: np.array([getattr(o, k) for o in objs]) for k in ("colour", "shape", "size", "row", "col")}
    truth = {  # the red and the square are not unique: no question names them that way
        "what colour is the circle?": "red",
        "what shape is the blue object?": "square",
        **{f"is the red circle {w} the red square?": a for w, a in (("above", "yes"), ("below", "no"))},
        **{f"is the red square {w} the red circle?": a for w, a in (("above", "no"), ("below", "yes"))},
    }
    for a, b in (("red circle", "blue square"), ("red square", "blue square")):
        truth |= {f"is the {a} to the left of the {b}?": "yes", f"is the {a} to the right of the {b}?": "no"}
        truth |= {f"is the {b} to the left of the {a}?": "no", f"is the {b} to the right of the {a}?": "yes"}
    answers = set()
    for seed in range(40):
        qs, ans = S.object_questions(stored, np.random.default_rng(seed))
        assert qs[:2] == ["what colour is the circle?", "what shape is the blue object?"]
        assert len(qs) == 2 + 3  # one question per pair of objects
        for q, a in zip(qs, ans):
            assert truth[q] == a, q
        answers |= set(ans[2:])
    assert answers == {"yes", "no"}


def test_object_questions_with_sides_ask_each_objects_side_after_the_same_relations():
    big = S.Obj(colour=0, shape=0, size=2, row=0, col=0, x=1, y=1, px=20)  # top left
    small = S.Obj(colour=2, shape=1, size=0, row=1, col=1, x=25, y=25, px=10)  # centre: no true side
    stored = {k: np.array([getattr(o, k) for o in (big, small)]) for k in ("colour", "shape", "row", "col")}
    truth = {
        **{f"is the red circle {w}?": a for w, a in (("on the left", "yes"), ("at the top", "yes"))},
        **{f"is the red circle {w}?": "no" for w in ("on the right", "at the bottom")},
        **{
            f"is the blue square {w}?": "no"
            for w in ("on the left", "on the right", "at the top", "at the bottom")
        },
    }
    answers = set()
    for seed in range(40):
        plain = S.object_questions(stored, np.random.default_rng(seed))
        qs, ans = S.object_questions(stored, np.random.default_rng(seed), sides=True)
        assert (qs[: len(plain[0])], ans[: len(plain[1])]) == plain  # the same draws, then the sides
        (q1, q2), (a1, a2) = qs[len(plain[0]) :], ans[len(plain[1]) :]
        assert q1.startswith("is the red circle ") and q2.startswith("is the blue square ")
        assert (truth[q1], truth[q2]) == (a1, a2)
        answers.add(a1)
    assert answers == {"yes", "no"}  # the biggest object's true sides are asked too, at even odds


def test_pair_shortcut_flags_questions_whose_distractors_cannot_be_the_answer():
    """A question about "the star" in a scene with a green object teaches "green objects are never stars"
    (green star is held out); the same question without one, and questions of other kinds, do not."""
    assert S.is_held_out("green", "star") and not S.is_held_out("blue", "star")
    assert not S.is_held_out("green", "circle") and not S.is_held_out("blue", "circle")
    C, H = S.COLOURS.index, S.SHAPES.index

    def objects(*pairs):
        return {"colour": np.array([C(c) for c, _ in pairs]), "shape": np.array([H(h) for _, h in pairs])}

    with_green = objects(("blue", "star"), ("green", "circle"))
    assert S.pair_shortcut(with_green, "what colour is the star?")
    assert not S.pair_shortcut(with_green, "what colour is the circle?")  # blue and green circles are seen
    assert not S.pair_shortcut(objects(("blue", "star"), ("blue", "circle")), "what colour is the star?")
    # a shape question names a colour: the shortcut is a shape that colour never has
    assert S.pair_shortcut(objects(("green", "circle"), ("blue", "star")), "what shape is the green object?")
    assert not S.pair_shortcut(with_green, "what shape is the blue object?")  # blue has no held-out shape
    for q in (
        "how many objects are there?",
        "is there a green circle?",
        "what colour is the biggest object?",
    ):
        assert not S.pair_shortcut(with_green, q)
    # in the training split, about a third of the colour/shape questions of object_questions are such
    rng, flagged = np.random.default_rng(0), []
    for i in range(300):
        scene = S.example_scene(0, "train", i, 64)[0]
        stored = {
            k: np.array([getattr(o, k) for o in scene.objects]) for k in ("colour", "shape", "row", "col")
        }
        flagged += [
            S.pair_shortcut(stored, q) for q in S.object_questions(stored, rng)[0] if q.startswith("what")
        ]
    assert 0.2 < np.mean(flagged) < 0.45


def test_exists_balanced_and_position_not_degenerate(train_examples):
    answers = [(t, a) for ex in train_examples for t, a in zip(ex["question_types"], ex["answers"])]
    exists = [a for t, a in answers if t == "exists"]
    assert exists.count("yes") == exists.count("no")
    position = [a for t, a in answers if t == "position"]
    assert 0.3 < position.count("yes") / len(position) < 0.7


@pytest.mark.parametrize("index", range(12))
def test_flip_consistency(index):
    rng = np.random.default_rng([5, index])
    scene = S.sample_scene(rng, "train")
    flipped = S.flip_scene(scene)
    np.testing.assert_array_equal(S.render(flipped), np.fliplr(S.render(scene)))
    assert S.flip_scene(flipped) == scene
    assert S.canonical_caption(flipped) == S.flip_text(S.canonical_caption(scene))
    caps, caps_flipped = (
        S.captions(scene, np.random.default_rng(index)),
        S.captions(flipped, np.random.default_rng(index)),
    )
    assert caps_flipped == [S.flip_text(c) for c in caps]
    (q, a, _), (qf, af, _) = (
        S.questions(scene, np.random.default_rng(index)),
        S.questions(flipped, np.random.default_rng(index)),
    )
    assert qf == [S.flip_text(x) for x in q] and af == a


def test_render_with_other_colours_changes_only_the_objects():
    scene = S.sample_scene(np.random.default_rng([5, 3]), "train")
    own = tuple(S.COLOUR_RGB[o.colour] for o in scene.objects)
    np.testing.assert_array_equal(S.render(scene, own), S.render(scene))
    other = S.render(scene, ((1, 2, 3),) * len(scene.objects))
    mask = np.zeros(other.shape[:2], bool)
    for o in scene.objects:
        mask[o.y : o.y + o.px, o.x : o.x + o.px] |= S.shape_mask(S.SHAPES[o.shape], o.px)
    assert (other[mask] == (1, 2, 3)).all()
    np.testing.assert_array_equal(other[~mask], S.render(scene)[~mask])


def test_flip_text():
    assert (
        S.flip_text("a red circle in the top left to the right of a star?")
        == "a red circle in the top right to the left of a star?"
    )


def test_bad_split():
    with pytest.raises(ValueError, match="unknown split 'dev'"):
        S.generate_example(0, "dev", 0)


def test_swap_shape_word_changes_exactly_one_shape():
    rng = np.random.default_rng(0)
    text = "a large red circle in the top left and a small blue square in the center"
    for _ in range(20):
        swapped = S.swap_shape_word(text, rng)
        diff = [(a, b) for a, b in zip(text.split(), swapped.split()) if a != b]
        assert len(diff) == 1 and diff[0][0] in S.SHAPES and diff[0][1] in S.SHAPES
    assert S.swap_shape_word("a picture of nothing", rng) == "a picture of nothing"


def test_swapped_shapes_never_name_a_held_out_combination():
    rng = np.random.default_rng(1)
    colour, shape = S.HELD_OUT_COMBOS[0]
    seen_shape = next(s for s in S.SHAPES if not S.is_held_out(colour, s))
    for _ in range(50):
        words = S.swap_shape_word(f"a small {colour} {seen_shape} in the center", rng).split()
        assert not S.is_held_out(words[2], words[3])


@pytest.mark.parametrize("split", ["train", "test"])
def test_example_scene_is_the_examples_scene(split):
    for i in range(5):
        scene, _ = S.example_scene(3, split, i)
        example = S.generate_example(3, split, i)
        assert scene == example["scene"]
        np.testing.assert_array_equal(S.render(scene), example["image"])
    with pytest.raises(ValueError, match="unknown split 'dev'"):
        S.example_scene(3, "dev", 0)


def test_twin_changes_only_the_main_objects_shape_to_a_seen_pair():
    for i in range(200):
        scene, rng = S.example_scene(0, "train", i)
        twin = S.twin_scene(scene, rng)
        main, new = scene.objects[0], twin.objects[0]
        assert new.shape != main.shape and twin.objects[1:] == scene.objects[1:]
        assert dataclasses.replace(new, shape=main.shape) == main and twin.background == scene.background
        assert not any(S.is_held_out(S.COLOURS[o.colour], S.SHAPES[o.shape]) for o in twin.objects)
        assert len({(o.colour, o.shape) for o in twin.objects}) == len(twin.objects)
        a, b = S.render(scene), S.render(twin)
        changed = np.argwhere((a != b).any(-1))  # pixels change only inside the main object's box
        assert len(changed) and (changed.min(0) >= (main.y, main.x)).all()
        assert (changed.max(0) < (main.y + main.px, main.x + main.px)).all()
        words = [
            (x, y)
            for x, y in zip(S.canonical_caption(scene).split(), S.canonical_caption(twin).split())
            if x != y
        ]
        assert words == [(S.SHAPES[main.shape], S.SHAPES[new.shape])]
