"""Shapes, dtypes, parameter counts and properties of the model modules."""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax import models, profile
from mmjax.models import layers, text, vit

TINY = dict(
    type="two_tower",
    image_size=32,
    embed_dim=24,
    image=dict(width=24, depth=2, num_heads=3, mlp_dim=48, patch_size=8, pool="cls"),
    text=dict(vocab_size=50, max_len=12, width=24, depth=2, num_heads=3, mlp_dim=48, eot_id=2),
)


def count(tree):
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(tree)))


@pytest.fixture(scope="module")
def tiny():
    model = models.build(TINY)
    images = jax.random.normal(jax.random.key(1), (4, 32, 32, 3))
    tokens = jnp.array([[1, 5, 6, 2] + [0] * 8] * 4, jnp.int32)
    params = model.init(jax.random.key(0), images, tokens)["params"]
    return model, nn.unbox(params), images, tokens


@pytest.mark.parametrize(
    "name,expected",
    [("clip-vit-b32", 151_277_313), ("clip-vit-b16", 149_620_737), ("clip-vit-l14", 427_616_513)],
)
def test_clip_parameter_counts_match_openai(name, expected):
    assert profile.param_counts(models.model_config(name))["params"] == expected


def test_open_clip_flops_reference():
    row = profile.profile("clip-vit-b16")
    assert row["gflops"] == pytest.approx(41.09, abs=0.01)
    assert row["image_gflops"] == pytest.approx(35.13, abs=0.01)
    assert row["text_gflops"] == pytest.approx(5.96, abs=0.01)


@pytest.mark.parametrize("stem,colour", [((), "joint"), ((8, 16), "joint"), ((8, 16), "split")])
def test_analytic_flops_match_xla_cost_analysis(stem, colour):
    """The analytic count equals XLA's count of the dot/convolution FLOPs of the tiny image tower."""
    image = dict(TINY["image"], pool="gap", width=192, mlp_dim=768, activation="relu", stem_channels=stem)
    cfg = dict(TINY, image=dict(image, stem_colour=colour))
    model = models.build(cfg)
    images = jnp.zeros((1, 32, 32, 3))
    params = nn.unbox(model.init(jax.random.key(0), images, jnp.zeros((1, 12), jnp.int32)))
    fn = lambda p, x: model.apply(p, x, method="encode_image")[0]  # noqa: E731
    xla = jax.jit(fn).lower(params, images).compile().cost_analysis()
    xla = xla[0] if isinstance(xla, list) else xla
    # XLA also counts elementwise ops (a few per activation); at this width matmuls dominate.
    assert profile.image_flops(cfg) == pytest.approx(xla["flops"], rel=0.03)


def test_two_tower_shapes_dtypes_and_normalisation(tiny):
    model, params, images, tokens = tiny
    out, extras = model.apply({"params": params}, images, tokens)
    chex.assert_shape([out["image"], out["text"]], (4, 24))
    chex.assert_type([out["image"], out["text"], out["logit_scale"]], jnp.float32)
    np.testing.assert_allclose(jnp.linalg.norm(out["image"], axis=-1), 1, atol=1e-5)
    np.testing.assert_allclose(jnp.linalg.norm(out["text"], axis=-1), 1, atol=1e-5)
    np.testing.assert_allclose(out["logit_scale"], 1 / 0.07, rtol=1e-5)
    chex.assert_shape(extras["image"]["patch_tokens"], (4, 1 + 16, 24))
    chex.assert_shape(extras["text"]["tokens"], (4, 12, 24))
    assert "logit_bias" not in out


def test_bfloat16_compute_keeps_float32_params_and_outputs():
    model = models.build(TINY, dtype="bfloat16")
    images, tokens = jnp.zeros((2, 32, 32, 3)), jnp.ones((2, 12), jnp.int32)
    params = nn.unbox(model.init(jax.random.key(0), images, tokens))
    assert {x.dtype for x in jax.tree.leaves(params)} == {jnp.dtype("float32")}
    out, extras = model.apply(params, images, tokens)
    assert extras["image"]["patch_tokens"].dtype == jnp.bfloat16
    assert out["image"].dtype == jnp.float32


def test_temperature_is_clipped_at_max_scale(tiny):
    model, params, images, tokens = tiny
    params = dict(params, logit_scale=jnp.array(10.0))
    out, _ = model.apply({"params": params}, images, tokens)
    np.testing.assert_allclose(out["logit_scale"], 100.0, rtol=1e-6)


def test_object_head_is_a_second_image_projection(tiny):
    model, params, images, tokens = tiny
    plain, _ = model.apply({"params": params}, images, method="encode_image_object")  # no head: encode_image
    np.testing.assert_array_equal(plain, model.apply({"params": params}, images, method="encode_image")[0])
    two = models.build(dict(TINY, object_head=True))
    p2 = nn.unbox(two.init(jax.random.key(0), images, tokens)["params"])
    assert p2["image_proj_object"]["kernel"].shape == p2["image_proj"]["kernel"].shape
    out, _ = two.apply({"params": p2}, images, tokens)
    obj, _ = two.apply({"params": p2}, images, method="encode_image_object")
    np.testing.assert_allclose(out["image_object"], obj, rtol=1e-6)
    np.testing.assert_allclose(jnp.linalg.norm(obj, axis=-1), 1, atol=1e-5)
    assert not np.allclose(obj, out["image"], atol=1e-3)  # its own projection
    # only the object embedding reaches the object head
    g = jax.grad(lambda p: two.apply({"params": p}, images, tokens)[0]["image"].sum())(p2)
    assert float(jnp.abs(g["image_proj_object"]["kernel"]).sum()) == 0
    # both embeddings from one pass of the tower (the evaluation's), equal to the two methods'
    (scene, both_obj), _ = two.apply({"params": p2}, images, method="encode_image_both")
    np.testing.assert_array_equal(both_obj, obj)
    np.testing.assert_array_equal(scene, two.apply({"params": p2}, images, method="encode_image")[0])


def test_scene_pool_tokens_projects_every_patch_token(tiny):
    _, _, images, tokens = tiny
    model = models.build(dict(TINY, scene_pool="tokens", object_head=True))
    params = nn.unbox(model.init(jax.random.key(0), images, tokens)["params"])
    # 16 patches + the cls token of a 32x32 image with patch 8, each 24 wide, flattened
    assert params["image_proj"]["kernel"].shape == (17 * 24, 24)
    assert params["image_proj_object"]["kernel"].shape == (24, 24)  # the object head reads the pooled token
    out, extras = model.apply({"params": params}, images, tokens)
    flat = extras["image"]["patch_tokens"].reshape(4, -1)
    want = flat @ params["image_proj"]["kernel"]
    np.testing.assert_allclose(out["image"], want / jnp.linalg.norm(want, axis=-1, keepdims=True), rtol=1e-5)
    with pytest.raises(ValueError, match="scene_pool must be 'pooled' or 'tokens'"):
        models.build(dict(TINY, scene_pool="mean")).init(jax.random.key(0), images, tokens)


def test_siglip_bias_parameter():
    model = models.build(dict(TINY, bias_init=-10.0, temperature_init=10.0))
    out, _ = model.apply(
        model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), jnp.ones((1, 12), jnp.int32)),
        jnp.zeros((1, 32, 32, 3)),
        jnp.ones((1, 12), jnp.int32),
    )
    np.testing.assert_allclose(out["logit_bias"], -10.0)
    np.testing.assert_allclose(out["logit_scale"], 10.0, rtol=1e-5)


def test_text_pooling_ignores_padding_and_later_tokens(tiny):
    """Causal attention + EOT pooling: what follows the EOT never changes the embedding."""
    model, params, _, tokens = tiny
    other = tokens.at[:, 4:].set(7)
    a = model.apply({"params": params}, tokens, method="encode_text")[0]
    b = model.apply({"params": params}, other, method="encode_text")[0]
    np.testing.assert_allclose(a, b, atol=1e-6)
    changed = tokens.at[:, 1].set(9)
    c = model.apply({"params": params}, changed, method="encode_text")[0]
    assert np.abs(a - c).max() > 1e-4


def test_text_pool_modes():
    t = text.TextTransformer(vocab_size=10, max_len=5, width=8, depth=1, num_heads=2, mlp_dim=8, eot_id=2)
    tokens = jnp.array([[1, 4, 2, 0, 0], [1, 9, 3, 2, 0]])
    np.testing.assert_array_equal(t.pool_index(tokens), [2, 3])
    np.testing.assert_array_equal(t.clone(pool="argmax").pool_index(tokens), [1, 1])
    np.testing.assert_array_equal(t.clone(pool="last").pool_index(tokens), [4, 4])


def test_text_tower_without_blocks_is_a_bag_of_words():
    """depth=0 + mean pooling (the main job's text tower): the final norm of the mean of token + position
    embeddings over the non-padding positions."""
    t = text.TextTransformer(vocab_size=10, max_len=6, width=8, depth=0, num_heads=2, mlp_dim=8, pool="mean")
    tokens = jnp.array([[1, 4, 2, 0, 0, 0], [1, 9, 3, 5, 2, 0]])
    params = t.init(jax.random.key(0), tokens)
    p = params["params"]
    x = nn.unbox(p["token_embed"]["embedding"])[tokens] + nn.unbox(p["pos_embedding"])[None, :6]
    x = (x - x.mean(-1, keepdims=True)) / jnp.sqrt(
        x.var(-1, keepdims=True) + 1e-5
    )  # ln_final, scale 1 bias 0
    want = jnp.stack([x[0, :3].mean(0), x[1, :5].mean(0)])
    np.testing.assert_allclose(t.apply(params, tokens)[0], want, rtol=1e-5, atol=1e-5)


def test_text_mean_pooling_averages_the_non_padding_positions():
    t = text.TextTransformer(vocab_size=10, max_len=6, width=8, depth=1, num_heads=2, mlp_dim=8, pool="mean")
    tokens = jnp.array([[1, 4, 2, 0, 0, 0], [1, 9, 3, 5, 2, 0]])
    params = t.init(jax.random.key(0), tokens)
    pooled, extras = t.apply(params, tokens)
    want = [extras["tokens"][0, :3].mean(0), extras["tokens"][1, :5].mean(0)]
    np.testing.assert_allclose(pooled, jnp.stack(want), rtol=1e-6, atol=1e-6)
    # causal attention: padding (and what a padding position would see) never reaches the pooled vector
    np.testing.assert_allclose(t.apply(params, tokens.at[:, 5].set(0))[0], pooled, atol=1e-6)
    with pytest.raises(ValueError, match="pool must be 'eot', 'argmax', 'last' or 'mean'"):
        t.clone(pool="max").apply(params, tokens)


def test_causal_attention_matches_explicit_mask():
    q, k, v = (jax.random.normal(jax.random.key(i), (2, 6, 3, 4)) for i in range(3))
    mask = jnp.tril(jnp.ones((6, 6), bool))[None, None]
    np.testing.assert_allclose(
        layers.attention(q, k, v, causal=True), layers.attention(q, k, v, mask=mask), atol=1e-6
    )
    # Position 0 attends only to itself.
    np.testing.assert_allclose(layers.attention(q, k, v, causal=True)[:, 0], v[:, 0], atol=1e-6)


def test_grouped_kv_heads_equal_full_attention_with_repeated_kv_heads():
    """One key/value head per group of query heads is ordinary multi-head attention whose key/value kernels
    repeat each group's head; with a context, keys and values come from it (its width may differ)."""
    x = jax.random.normal(jax.random.key(0), (2, 5, 16))
    ctx = jax.random.normal(jax.random.key(1), (2, 3, 12))
    gqa, full = layers.Attention(num_heads=4, num_kv_heads=2), layers.Attention(num_heads=4)
    for context in (None, ctx):
        p = nn.unbox(gqa.init(jax.random.key(2), x, context))["params"]
        repeated = {
            n: {k: jnp.repeat(w, 2, axis=-2 if k == "kernel" else 0) for k, w in p[n].items()}
            for n in ("key", "value")
        }
        np.testing.assert_allclose(
            gqa.apply({"params": p}, x, context),
            full.apply({"params": {**p, **repeated}}, x, context),
            atol=1e-6,
        )


def test_attention_cache_gives_the_recomputed_outputs():
    """Prefill 4 positions into an 8-slot cache, then decode one: the outputs of attending over all 5."""
    attn = layers.Attention(
        num_heads=2, num_kv_heads=1, use_bias=False, rope_theta=100.0, names=layers.LLAMA_NAMES
    )
    x, pos = jax.random.normal(jax.random.key(0), (2, 5, 8)), jnp.broadcast_to(jnp.arange(5), (2, 5))
    causal = jnp.tril(jnp.ones((5, 5), bool))[None, None]
    params = attn.init(jax.random.key(1), x, mask=causal, positions=pos)
    assert set(params["params"]) == {"q", "k", "v", "o"}
    full = attn.apply(params, x, mask=causal, positions=pos)
    empty = {"k": jnp.zeros((2, 8, 1, 4)), "v": jnp.zeros((2, 8, 1, 4))}
    prefill_mask = jnp.pad(causal[..., :4, :4], ((0, 0), (0, 0), (0, 0), (0, 4)))  # empty slots unseen
    out, cache = attn.apply(params, x[:, :4], mask=prefill_mask, positions=pos[:, :4], cache=empty, index=0)
    last, cache = attn.apply(
        params, x[:, 4:], mask=jnp.arange(8) <= 4, positions=pos[:, 4:], cache=cache, index=4
    )
    np.testing.assert_allclose(jnp.concatenate([out, last], axis=1), full, atol=1e-5)
    assert not cache["k"][:, 5:].any() and cache["k"][:, :5].all()


def test_attention_rejects_what_it_cannot_do():
    x = jnp.ones((1, 3, 8))
    with pytest.raises(ValueError, match="rope_theta is set, so the call needs positions"):
        layers.Attention(num_heads=2, rope_theta=1e4).init(jax.random.key(0), x)
    with pytest.raises(ValueError, match="rotary positions and the KV cache are for self-attention"):
        layers.Attention(num_heads=2).init(jax.random.key(0), x, x, cache={"k": x, "v": x})


@pytest.mark.parametrize(
    "make",
    [
        lambda: layers.Encoder(2, 2, 8),
        lambda: layers.Attention(2),
        lambda: vit.MAPHead(2, 8),
        lambda: layers.HeadsDense("bse,ehd->bshd", (8, 2, 4), ("embed", "heads", "kv"), (0,)),
        lambda: vit.ViT(8, 1, 2, 16, 4),
        lambda: text.TextTransformer(10, 5, 8, 1, 2, 8),
    ],
)
def test_modules_take_keyword_arguments_only(make):
    with pytest.raises(TypeError, match="positional argument"):
        make()


@pytest.mark.parametrize("name", ["Ti/16", "S/32", "B/14", "L/8"])
def test_vit_variants(name):
    hp = vit.variant(name)
    assert hp["width"] % hp["num_heads"] == 0
    assert hp["patch_size"] == int(name.split("/")[1])


@pytest.mark.parametrize("pool,tokens", [("cls", 5), ("gap", 4)])
def test_vit_pooling_and_head(pool, tokens):
    m = vit.ViT(width=8, depth=1, num_heads=2, mlp_dim=16, patch_size=4, pool=pool, num_classes=3)
    x = jnp.ones((2, 8, 8, 3))
    (logits, extras), _ = m.init_with_output(jax.random.key(0), x)
    chex.assert_shape(logits, (2, 3))
    chex.assert_shape(extras["patch_tokens"], (2, tokens, 8))
    if pool == "gap":
        np.testing.assert_allclose(extras["pre_logits"], extras["patch_tokens"].mean(1), atol=1e-6)


def test_every_weight_has_logical_axis_names(tiny):
    model, _, images, tokens = tiny
    boxed = model.init(jax.random.key(0), images, tokens)["params"]
    leaves = jax.tree.leaves(boxed, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
    assert leaves and all(isinstance(x, nn.LogicallyPartitioned) for x in leaves)
    for leaf in leaves:
        assert len(leaf.names) == leaf.value.ndim


@pytest.mark.parametrize(
    "change,message",
    [
        (dict(image=dict(TINY["image"], width=25)), "width 25 is not divisible by num_heads 3"),
        (dict(image=dict(TINY["image"], patch_size=7)), "not divisible by patch size 7"),
        (dict(text=dict(TINY["text"], width=20)), "width 20 is not divisible by num_heads 3"),
    ],
)
def test_impossible_sizes_raise_one_line(change, message):
    model = models.build(dict(TINY, **change))
    with pytest.raises(ValueError, match=message) as e:
        model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), jnp.ones((1, 12), jnp.int32))
    assert "\n" not in str(e.value)


def test_unknown_names_raise():
    with pytest.raises(ValueError, match="unknown model 'clip-foo'; known models: clip-shapes"):
        models.model_config("clip-foo")
    with pytest.raises(ValueError, match="unknown ViT variant 'X/16'"):
        vit.variant("X/16")


@pytest.mark.parametrize("shape", [(2, 8, 8, 3), (1, 7, 9, 4)])
def test_stem_max_pool_is_flax_max_pool(shape):
    """The stem's reshape-and-max pool gives nn.max_pool's values (VALID, odd sizes floor) and gradients."""
    x = jax.random.normal(jax.random.key(0), shape)
    ours = lambda x: vit._max_pool_2x2(x)  # noqa: E731
    theirs = lambda x: nn.max_pool(x, (2, 2), strides=(2, 2))  # noqa: E731
    np.testing.assert_array_equal(ours(x), theirs(x))
    g = lambda f: jax.grad(lambda x: (f(x) * jnp.arange(f(x).size).reshape(f(x).shape)).sum())(x)  # noqa: E731
    np.testing.assert_array_equal(g(ours), g(theirs))  # no ties in random data: one maximum per window


def test_hybrid_stem_keeps_the_token_grid():
    plain = vit.ViT(width=8, depth=1, num_heads=2, mlp_dim=16, patch_size=8, pool="gap")
    hybrid = plain.clone(stem_channels=(4, 6))
    x = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))
    (_, e1), p1 = plain.init_with_output(jax.random.key(0), x)
    (_, e2), p2 = hybrid.init_with_output(jax.random.key(0), x)
    chex.assert_equal_shape([e1["patch_tokens"], e2["patch_tokens"]])  # 4x4 tokens either way
    assert nn.unbox(p2)["params"]["patch_kernel"].shape == (2, 2, 6, 8)  # covers 8 px of the image
    assert {"stem_0", "stem_1"} <= set(p2["params"])
    with pytest.raises(ValueError, match="patch size 8 is not divisible by the stem's downsampling 16"):
        plain.clone(stem_channels=(2, 2, 2, 2)).init(jax.random.key(0), x)


def test_split_colour_stem_sees_shape_the_same_in_every_colour():
    """stem_colour="split": with the colour path silenced, the tower's output is the same under a channel
    permutation, a negation and a rotation of colour space (the shape path is colour-invariant); the
    colour path is what tells the colours apart, and it learns (nonzero gradient)."""
    tower = vit.ViT(
        width=16,
        depth=1,
        num_heads=2,
        mlp_dim=32,
        patch_size=8,
        pool="gap",
        stem_channels=(4, 6),
        stem_colour="split",
    )
    x = jax.random.uniform(jax.random.key(0), (2, 32, 32, 3), minval=-1, maxval=1)
    params = nn.unbox(tower.init(jax.random.key(1), x))
    assert {"stem_0_kernel", "stem_0_bias", "colour_pixel", "colour_embed", "stem_1"} <= set(params["params"])
    assert params["params"]["stem_0_kernel"].shape == (3, 3, 1, 4)
    silenced = jax.tree_util.tree_map_with_path(
        lambda path, a: a * 0 if "colour_embed" in jax.tree_util.keystr(path) else a, params
    )
    out = lambda v, x: tower.apply(v, x)[0]  # noqa: E731
    rotation, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(3, 3)))
    for recoloured in (x[..., ::-1], -x, x @ jnp.asarray(rotation, jnp.float32)):
        np.testing.assert_allclose(out(silenced, recoloured), out(silenced, x), atol=1e-4)
    assert np.abs(out(params, x[..., ::-1]) - out(params, x)).max() > 1e-3  # the colour path sees colour
    grads = jax.grad(lambda v: jnp.sum(out(v, x) ** 2))(params)["params"]
    assert float(jnp.abs(grads["colour_pixel"]["kernel"]).sum()) > 0
    with pytest.raises(ValueError, match="stem_colour='split' needs a convolutional stem"):
        tower.clone(stem_channels=()).init(jax.random.key(0), x)
    with pytest.raises(ValueError, match="stem_colour must be 'joint' or 'split'"):
        tower.clone(stem_colour="grey").init(jax.random.key(0), x)
