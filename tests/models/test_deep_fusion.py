"""Deep fusion: zero gates give the bare LM exactly; an image never changes the logits of text before
it; immediate-only media masking; text before any image is untouched; KV-cache decoding equals full
recomputation."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax import generate, models
from mmjax.models import lm as lm_lib
from mmjax.models.deep_fusion import media_mask

IMG, SEP, PAD, BOS, EOT = 66, 67, 0, 1, 2
# BOS w w IMG w w IMG w SEP w EOT: text, the first image, more text, the second image, the answer
TOKENS = np.array([[BOS, 5, 6, IMG, 7, 8, IMG, 9, SEP, 10, EOT]] * 2, np.int32)
FIRST, SECOND = 3, 6  # positions of the two [IMG] tokens


def build(**overrides):
    cfg = models.model_config("flamingo-shapes")
    cfg["image"].update(width=32, depth=1, num_heads=2, mlp_dim=64)
    cfg["lm"] = lm_lib.variant("lm-tiny", vocab_size=70)
    cfg.update(overrides)
    return models.build(cfg, image_id=IMG, sep_id=SEP, pad_id=PAD)


def open_gates(params, value=0.7):
    return jax.tree_util.tree_map_with_path(
        lambda path, x: x + value if "gate" in jax.tree_util.keystr(path) else x, params
    )


@pytest.fixture(scope="module")
def images():
    return jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (2, 2, 64, 64, 3)), jnp.float32)


@pytest.fixture(scope="module", params=[True, False], ids=["immediate", "all_previous"])
def setup(request, images):
    model = build(only_attend_immediate_media=request.param)
    params = nn.unbox(model.init(jax.random.key(0), images, TOKENS)["params"])
    return model, params


def logits(model, params, images, tokens=TOKENS):
    return np.asarray(model.apply({"params": params}, images, tokens)[0])


def test_media_mask():
    media = jnp.array([[0, 0, 1, 1, 2, 2]])
    immediate = np.asarray(media_mask(media, 2, 3, True))[0, 0]
    assert immediate.shape == (6, 6)
    assert not immediate[:2].any()  # no image yet: nothing to see
    np.testing.assert_array_equal(immediate[2], [1, 1, 1, 0, 0, 0])
    np.testing.assert_array_equal(immediate[4], [0, 0, 0, 1, 1, 1])
    every = np.asarray(media_mask(media, 2, 3, False))[0, 0]
    np.testing.assert_array_equal(every[4], [1, 1, 1, 1, 1, 1])


def test_zero_gates_give_the_bare_lm_exactly(setup, images):
    model, params = setup
    lm = lm_lib.DecoderLM(**lm_lib.variant("lm-tiny", vocab_size=70))
    x = model.apply({"params": params}, jnp.asarray(TOKENS), method="embed")
    valid = jnp.asarray(TOKENS != PAD)
    bare, _ = lm.apply(
        {"params": params["lm"]},
        embeddings=x,
        positions=lm_lib.positions_of(valid),
        mask=lm_lib.attention_mask(valid),
    )
    np.testing.assert_array_equal(logits(model, params, images), np.asarray(bare))
    assert not np.array_equal(logits(model, open_gates(params), images), np.asarray(bare))


def test_an_image_never_changes_text_before_it(setup, images):
    model, params = setup
    params = open_gates(params)
    ref = logits(model, params, images)
    second_changed = logits(model, params, images.at[:, 1].multiply(-1.0))
    np.testing.assert_array_equal(second_changed[:, :SECOND], ref[:, :SECOND])
    assert np.abs(second_changed[:, SECOND:] - ref[:, SECOND:]).max() > 1e-4
    first_changed = logits(model, params, images.at[:, 0].multiply(-1.0))
    np.testing.assert_array_equal(first_changed[:, :FIRST], ref[:, :FIRST])  # text before any image
    if not model.only_attend_immediate_media:  # text after the second image also reads the first
        assert np.abs(first_changed[:, SECOND:] - ref[:, SECOND:]).max() > 1e-4


def test_only_images_named_in_the_text_are_seen(images):
    """One [IMG] in the text: the second image of the row is never attended to."""
    model = build()
    tokens = np.array([[5, IMG, 6, SEP]] * 2, np.int32)
    params = open_gates(nn.unbox(model.init(jax.random.key(0), images, tokens)["params"]))
    ref = logits(model, params, images, tokens)
    np.testing.assert_array_equal(logits(model, params, images.at[:, 1].multiply(-1.0), tokens), ref)
    first = logits(model, params, images.at[:, 0].multiply(-1.0), tokens)
    np.testing.assert_array_equal(first[:, 0], ref[:, 0])
    assert np.abs(first[:, 1:] - ref[:, 1:]).max() > 1e-4


def test_image_slot_embeddings_tell_two_images_apart(images):
    """When text sees every previous image, cross-attention alone cannot tell which image a visual
    token came from: swapping the two images leaves the first gated block's output for the text after
    both unchanged. With ``max_images`` each image's tokens carry its slot's embedding, and the swap
    shows."""

    def first_block(m, images, tokens):
        x, _, _, visual, media = m.inputs(images, tokens)
        return m.fuse(visual, media)(0, x)

    for max_images in (0, 2):
        model = build(only_attend_immediate_media=False, max_images=max_images)
        params = open_gates(nn.unbox(model.init(jax.random.key(0), images, TOKENS)["params"]))
        ref, swapped = (
            np.asarray(model.apply({"params": params}, im, TOKENS, method=first_block))
            for im in (images, images[:, ::-1])
        )
        assert np.abs(swapped[:, FIRST:SECOND] - ref[:, FIRST:SECOND]).max() > 1e-4  # sees only image 1
        if max_images:
            assert params["image_pos_embed"].shape == (2, 32)
            assert np.abs(swapped[:, SECOND:] - ref[:, SECOND:]).max() > 1e-4
        else:
            assert "image_pos_embed" not in params
            np.testing.assert_allclose(swapped[:, SECOND:], ref[:, SECOND:], atol=1e-5)
    with pytest.raises(ValueError, match="2 images per row but max_images=1; raise model.max_images"):
        build(max_images=1).init(jax.random.key(0), images, TOKENS)


def test_grid_position_embedding_reaches_the_visual_tokens(images):
    """``grid_pos_embed=True``: one learned vector per patch (64 at 64 px, the tower's width) is added
    before the resampler; zeroed, the model is the plain one with the same weights."""
    model, plain = build(grid_pos_embed=True), build()
    params = nn.unbox(model.init(jax.random.key(0), images, TOKENS)["params"])
    assert params["grid_pos"]["embedding"].shape == (64, 32)
    rest = {k: v for k, v in params.items() if k != "grid_pos"}
    zeroed = dict(rest, grid_pos={"embedding": jnp.zeros((64, 32))})
    ref = plain.apply({"params": rest}, images, method=plain.visual_tokens)
    np.testing.assert_allclose(
        model.apply({"params": zeroed}, images, method=model.visual_tokens), ref, atol=1e-6
    )
    moved = model.apply({"params": params}, images, method=model.visual_tokens)
    assert np.abs(moved - ref).max() > 1e-3


@pytest.mark.parametrize("sampling", [dict(), dict(temperature=1.0, top_k=8)])
def test_kv_cache_decoding_equals_full_recomputation(setup, images, sampling):
    model, params = setup
    params = open_gates(params)
    prompts = generate.left_pad(
        [np.array([BOS, IMG, 5, 6, SEP]), np.array([BOS, 7, IMG, 8, 9, IMG, 5, SEP])], PAD
    )

    def run(cache):
        decode = generate.make_generate(
            model,
            max_new_tokens=8,
            eos_id=EOT,
            pad_id=PAD,
            banned_ids=(PAD, BOS, IMG, SEP),
            use_cache=cache,
            **sampling,
        )
        return np.asarray(decode(params, images, prompts, jax.random.key(2)))

    np.testing.assert_array_equal(run(True), run(False))


def test_one_media_token_per_image_and_config_errors():
    assert build().num_image_tokens(64) == 1
    with pytest.raises(ValueError, match="cross_attn_every_n_layers"):
        build(cross_attn_every_n_layers=0).num_image_tokens(64)
    model = build(cross_attn_every_n_layers=2, num_latents=0)  # every other layer; adapter, no resampler
    params = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 64, 64, 3)), jnp.asarray(TOKENS[:1]))
    names = set(params["params"])
    assert (
        {"xattn_0", "adapter", "new_token_embed"} <= names
        and "xattn_1" not in names
        and "resampler" not in names
    )
