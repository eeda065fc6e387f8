"""Independent turns (``turns="independent"``, ``lm.text_layout``): in a row that packs several
question-answer turns after the image, each later turn gives exactly the logits it gives alone in its
row, the first turn is unchanged, and with ``turns="conversation"`` a later turn does see the earlier
ones (so the equality tested here is not vacuous). Early fusion, deep fusion and the blind LM."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax import models
from mmjax.models import lm as lm_lib

IMG, SEP, PAD, BOS, EOT = 66, 67, 0, 1, 2
FIRST, SECOND = ([5, 6, 7], [8]), ([9, 10], [11, 12])  # (question, answer) of two turns


def build(name, **overrides):
    cfg = models.model_config(name)
    if "image" in cfg:
        cfg["image"].update(width=32, depth=1, num_heads=2, mlp_dim=64)
    cfg["lm"] = lm_lib.variant("lm-tiny", vocab_size=70)
    cfg.update(overrides)
    return models.build(cfg, image_id=IMG, sep_id=SEP, pad_id=PAD, eot_id=EOT)


def row(n_img, turns, length=24):
    ids = [BOS] + [IMG] * n_img
    for question, answer in turns:
        ids += [*question, SEP, *answer, EOT]
    return ids + [PAD] * (length - len(ids))


def open_gates(params):  # deep fusion's gates start at 0 (no image at all): open them
    return jax.tree_util.tree_map_with_path(
        lambda path, x: x + 0.7 if "gate" in jax.tree_util.keystr(path) else x, params
    )


@pytest.mark.parametrize("name", ["llava-shapes", "flamingo-shapes", "lm-shapes"])
def test_each_turn_is_laid_out_as_if_alone(name):
    overrides = dict(attn_mask="causal") if name != "lm-shapes" else {}
    plain = build(name, **overrides)
    packed = build(name, turns="independent", **overrides)
    n = {"llava-shapes": 16, "flamingo-shapes": 1, "lm-shapes": 0}[name]  # [IMG] tokens per image
    images = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (1, 64, 64, 3)), jnp.float32)
    both = np.array([row(n, [FIRST, SECOND])], np.int32)
    alone = np.array([row(n, [SECOND])], np.int32)
    params = nn.unbox(plain.init(jax.random.key(0), images, both)["params"])
    params = open_gates(params) if name == "flamingo-shapes" else params

    def logits(model, tokens):
        return np.asarray(model.apply({"params": params}, images, tokens)[0][0])

    start = 1 + n + len(FIRST[0]) + 1 + len(FIRST[1]) + 1  # where the second turn starts in `both`
    second = slice(start, start + len(SECOND[0]) + len(SECOND[1]) + 2)
    on_its_own = logits(plain, alone)[1 + n : 1 + n + second.stop - second.start]
    np.testing.assert_allclose(logits(packed, both)[second], on_its_own, rtol=1e-5, atol=1e-5)
    # the first turn, and a row of one turn, are as before (padding's logits are never used)
    real = int((alone != PAD).sum())
    np.testing.assert_allclose(
        logits(packed, both)[:start], logits(plain, both)[:start], rtol=1e-6, atol=1e-6
    )
    np.testing.assert_allclose(
        logits(packed, alone)[:real], logits(plain, alone)[:real], rtol=1e-6, atol=1e-6
    )
    # in a conversation the second turn sees the first: its logits differ
    assert np.abs(logits(plain, both)[second] - on_its_own).max() > 1e-3


def test_independent_turns_positions_and_mask():
    tokens = jnp.asarray([row(2, [FIRST, SECOND], length=17)])
    positions, same_turn = lm_lib.independent_turns(tokens, tokens != PAD, IMG, EOT)
    # BOS IMG IMG 5 6 7 SEP 8 EOT | 9 10 SEP 11 12 EOT | PAD PAD (padding's positions are never used)
    assert positions[0, :15].tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 8, 3, 4, 5, 6, 7, 8]
    sees = np.asarray(same_turn[0, 10])  # the second turn's "10"
    assert sees[:3].all() and not sees[3:9].any() and sees[9:15].all()


@pytest.mark.parametrize("name", ["llava-shapes", "flamingo-shapes", "lm-shapes"])
def test_turns_errors(name):
    with pytest.raises(ValueError, match="turns must be one of conversation, independent, got 'packed'"):
        build(name, turns="packed").num_image_tokens(64)
    cfg = models.model_config(name)
    cfg["turns"] = "independent"
    with pytest.raises(ValueError, match="turns='independent' needs eot_id"):
        models.build(cfg, image_id=IMG, sep_id=SEP, pad_id=PAD).num_image_tokens(64)
    if name != "lm-shapes":
        with pytest.raises(ValueError, match="turns='independent' needs attn_mask='causal'"):
            build(name, turns="independent", attn_mask="prefix").num_image_tokens(64)
