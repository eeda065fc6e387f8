"""experiments/learning: the probes' fits, where zero-shot errors go, and the screen's re-coloured scenes."""

import os
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "experiments", "learning"))

import errors  # noqa: E402
import probe  # noqa: E402
import screen  # noqa: E402

from mmjax.data import shapes  # noqa: E402


def test_probe_reads_a_linear_attribute_and_not_noise():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 400)
    x = rng.standard_normal((400, 16)).astype(np.float32)
    x[np.arange(400), y] += 6  # each value of the attribute along its own feature
    assert probe.within(x, y) > 0.95
    assert probe.within(rng.standard_normal((400, 16)).astype(np.float32), y) < 0.45  # chance 0.25
    # within one colour: shape is read although the colour does not tell it
    colour = rng.integers(0, 2, 400)
    acc, chance = probe.within_colour(x, y, colour)
    assert acc > 0.9 and chance == pytest.approx(0.25)


def test_error_shares_tell_a_pull_towards_held_out_pairs_from_an_even_spread():
    held = np.array([shapes.is_held_out(*name.split()) for name in shapes.CLASS_NAMES])
    green, star, cross, circle = (
        shapes.COLOURS.index("green"),
        *map(shapes.SHAPES.index, ("star", "cross", "circle")),
    )
    assert held[green * 6 + star] and held[green * 6 + cross] and not held[green * 6 + circle]
    labels = np.full(4, green * 6 + star)
    logits = np.zeros((4, 48))
    logits[0, green * 6 + star] = 1  # right
    logits[1:3, green * 6 + cross] = 1  # the colour's other held-out shape
    logits[3, green * 6 + circle] = 1  # a seen pair of the colour
    out = errors.error_shares(logits, labels, held)
    assert out["shape_within_colour"] == pytest.approx(0.25) and out["errors"] == 3
    assert out["errors_to_seen"] == pytest.approx(1 / 3)
    assert out["errors_to_seen_if_even"] == pytest.approx(4 / 5)  # green: 4 seen shapes besides star, cross
    assert out["gap_held_out_competitors"] > out["gap_seen_competitors"]


def test_unnamed_colours_recolour_every_object_far_from_every_named_colour(tmp_path):
    cfg = type("Data", (), {"seed": 3, "image_size": 64})()
    image = screen.unnamed_colours(cfg, 5)
    scene, _ = shapes.example_scene(3, "train", 5, 64)
    plain = shapes.render(scene)
    changed = np.any(image != plain, axis=-1)
    assert changed.sum() == sum(shapes.shape_mask(shapes.SHAPES[o.shape], o.px).sum() for o in scene.objects)
    distances = np.linalg.norm(image[changed][:, None].astype(float) - screen.NAMED_RGB[None], axis=-1)
    assert distances.min() >= 80
    np.testing.assert_array_equal(screen.unnamed_colours(cfg, 5), image)  # deterministic
