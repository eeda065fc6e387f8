"""Decoder LM, early fusion and generation: masks, splicing, the answer-only loss, KV-cache decoding
== decoding by full recomputation, batched == one prompt at a time, sampling filters."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax import generate, losses, models
from mmjax.models import layers
from mmjax.models import lm as lm_lib

IMG, SEP, PAD, BOS, EOT = 66, 67, 0, 1, 2
BANNED = (PAD, BOS, IMG, SEP)


def tiny_config(**overrides):
    cfg = models.model_config("llava-shapes")
    cfg["image"].update(width=32, depth=1, num_heads=2, mlp_dim=64)
    cfg["lm"] = lm_lib.variant("lm-tiny", vocab_size=70)
    cfg.update(overrides)
    return cfg


def build(**overrides):
    model = models.build(tiny_config(**overrides), image_id=IMG, sep_id=SEP, pad_id=PAD)
    return model, model.num_image_tokens(64)


def sequence(n_img, prompt, answer=(), length=None):
    ids = [BOS] + [IMG] * n_img + list(prompt) + [SEP] + list(answer) + ([EOT] if answer else [])
    return np.array(ids + [PAD] * ((length or len(ids)) - len(ids)), np.int32)


@pytest.fixture(scope="module")
def images():
    return jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (3, 64, 64, 3)), jnp.float32)


@pytest.fixture(scope="module", params=["prefix", "causal", "causal_fixed"])
def setup(request, images):
    mask, _, fixed = request.param.partition("_")  # causal_fixed: fixed_image_tokens=True
    model, n = build(attn_mask=mask, fixed_image_tokens=bool(fixed))
    tokens = np.stack([sequence(n, [5, 6, 7], [8, 9], 30)] * 3)
    params = nn.unbox(model.init(jax.random.key(0), images, tokens)["params"])
    return model, n, params


def test_lm_1b_has_tinyllama_size():
    lm = lm_lib.DecoderLM(**lm_lib.variant("lm-1b"))
    shapes = jax.eval_shape(lm.init, jax.random.key(0), jnp.zeros((1, 4), jnp.int32))
    assert sum(np.prod(x.shape) for x in jax.tree.leaves(nn.unbox(shapes))) == 1_100_048_384


def test_every_lm_weight_has_logical_names():
    lm = lm_lib.DecoderLM(**lm_lib.variant("lm-tiny", 50))
    boxed = jax.eval_shape(lm.init, jax.random.key(0), jnp.zeros((1, 4), jnp.int32))["params"]
    leaves = jax.tree.leaves(boxed, is_leaf=lambda x: isinstance(x, nn.Partitioned))
    assert leaves and all(isinstance(x, nn.Partitioned) and len(x.names) == x.value.ndim for x in leaves)


def test_bad_sizes_raise_one_line_errors():
    with pytest.raises(ValueError, match="num_kv_heads"):
        lm_lib.DecoderLM(vocab_size=50, width=64, depth=1, num_heads=4, mlp_dim=128, num_kv_heads=3).check()
    with pytest.raises(ValueError, match="unknown projector"):
        build(projector="mlp2x_relu")[0].num_image_tokens(64)
    with pytest.raises(ValueError, match="image_pool 3"):
        build(image_pool=3)[0].num_image_tokens(64)
    with pytest.raises(ValueError, match="image_pool_op must be 'mean' or 'concat', got 'max'"):
        build(image_pool_op="max")[0].num_image_tokens(64)
    with pytest.raises(ValueError, match="wider than the CLS token; use vision_tokens='patches'"):
        build(image_pool_op="concat", vision_tokens="all", image=dict(tiny_config()["image"], pool="cls"))[
            0
        ].num_image_tokens(64)
    with pytest.raises(ValueError, match="unknown LM size"):
        lm_lib.variant("lm-huge")
    scanned = dict(lm_lib.variant("lm-tiny", vocab_size=70), scan=True)
    with pytest.raises(ValueError, match=r"fixed_image_tokens=True .* set lm.scan=False"):
        build(fixed_image_tokens=True, lm=scanned)[0].num_image_tokens(64)


def test_image_token_count():
    assert build(image_pool=1)[1] == 64 and build(image_pool=2)[1] == 16 and build(image_pool=4)[1] == 4
    cls_model, n = build(vision_tokens="all", image=dict(tiny_config()["image"], pool="cls"))
    assert n == 17


def test_concat_pooling_keeps_each_patch_and_can_express_the_mean(images):
    """``image_pool_op="concat"`` (space-to-depth): the projector sees the k x k patches side by side
    (input 4 x 32 wide), so nothing is averaged away; with the first kernel made of four stacked copies of
    the mean model's kernel / 4 it computes exactly the mean-pooled tokens."""
    concat, n = build(image_pool_op="concat")
    mean, _ = build()
    tokens = np.stack([sequence(n, [5, 6, 7], [8, 9], 30)] * 3)
    p_mean = nn.unbox(mean.init(jax.random.key(0), images, tokens)["params"])
    p_concat = nn.unbox(concat.init(jax.random.key(0), images, tokens)["params"])
    assert p_concat["proj_0"]["kernel"].shape == (4 * 32, 64) and p_mean["proj_0"]["kernel"].shape == (32, 64)
    p_concat["proj_0"]["kernel"] = jnp.tile(p_mean["proj_0"]["kernel"] / 4, (4, 1))
    p_concat = {k: v if k == "proj_0" else p_mean[k] for k, v in p_concat.items()}
    p_concat["proj_0"]["bias"] = p_mean["proj_0"]["bias"]
    np.testing.assert_allclose(
        concat.apply({"params": p_concat}, images, method=concat.image_tokens),
        mean.apply({"params": p_mean}, images, method=mean.image_tokens),
        atol=1e-5,
    )
    # the blocks are the right patches: a linear projector that copies block (ki, kj) of each token gives
    # patch (2i + ki, 2j + kj) of the tower's 8 x 8 grid
    lin, _ = build(image_pool_op="concat", projector="linear")
    p_lin = nn.unbox(lin.init(jax.random.key(0), images, tokens)["params"])
    patches = np.asarray(
        lin.apply({"params": p_lin}, images, method=lambda m, x: m.image(x)[1]["patch_tokens"])
    ).reshape(3, 8, 8, 32)
    for ki, kj in ((0, 0), (0, 1), (1, 0), (1, 1)):
        kernel = np.zeros((4 * 32, 64), np.float32)
        kernel[(2 * ki + kj) * 32 : (2 * ki + kj + 1) * 32, :32] = np.eye(32)
        p_lin["proj_0"] = {"kernel": jnp.asarray(kernel), "bias": jnp.zeros(64)}
        out = np.asarray(lin.apply({"params": p_lin}, images, method=lin.image_tokens)).reshape(3, 4, 4, 64)
        np.testing.assert_allclose(out[..., :32], patches[:, ki::2, kj::2], atol=1e-6)


@pytest.mark.parametrize("with_cls", [False, True], ids=["patches", "cls_and_patches"])
def test_grid_position_embedding_adds_one_vector_per_grid_token(images, with_cls):
    """``grid_pos_embed=True``: the image tokens are the plain model's (same weights) plus the learned
    embedding of their grid cell; a CLS token gets none."""
    extra = dict(vision_tokens="all", image=dict(tiny_config()["image"], pool="cls")) if with_cls else {}
    model, n = build(grid_pos_embed=True, **extra)
    plain, _ = build(**extra)
    tokens = np.stack([sequence(n, [5, 6, 7], [8, 9], 40)] * 3)
    params = nn.unbox(model.init(jax.random.key(0), images, tokens)["params"])
    embedding = params["grid_pos"]["embedding"]
    assert embedding.shape == (16, 64)  # the 4 x 4 pooled grid, the LM's width
    rest = {k: v for k, v in params.items() if k != "grid_pos"}
    assert "grid_pos" not in nn.unbox(plain.init(jax.random.key(0), images, tokens)["params"])
    with_pos = model.apply({"params": params}, images, method=model.image_tokens)
    without = plain.apply({"params": rest}, images, method=plain.image_tokens)
    np.testing.assert_allclose(
        with_pos[:, int(with_cls) :] - without[:, int(with_cls) :],
        np.broadcast_to(embedding, (3, 16, 64)),
        atol=1e-5,
    )
    if with_cls:
        np.testing.assert_array_equal(with_pos[:, 0], without[:, 0])


def test_grid_position_embedding_sincos_init_is_monotonic_coordinates(images):
    """``grid_pos_init="sincos"``: the embedding starts at the 2-D sine-cosine table of the 4 x 4 grid,
    RMS ``grid_pos_std``; the row half depends on the row only, the column half on the column only, some
    channels are monotonic in the coordinate, and the table is the same for every seed (still learned)."""
    model, n = build(grid_pos_embed=True, grid_pos_init="sincos", grid_pos_std=0.5)
    tokens = np.stack([sequence(n, [5, 6, 7], [8, 9], 40)] * 3)
    params = nn.unbox(model.init(jax.random.key(0), images, tokens)["params"])
    table = np.asarray(params["grid_pos"]["embedding"]).reshape(4, 4, 64)
    np.testing.assert_allclose(np.sqrt((table**2).mean()), 0.5, rtol=1e-5)
    rows, cols = table[..., :32], table[..., 32:]
    np.testing.assert_allclose(rows, np.broadcast_to(rows[:, :1], rows.shape), atol=1e-6)  # row only
    np.testing.assert_allclose(cols, np.broadcast_to(cols[:1], cols.shape), atol=1e-6)  # column only
    np.testing.assert_allclose(cols[0, :, :16], rows[:, 0, :16], atol=1e-6)  # the same code per axis
    # the slowest sine spans a quarter turn over the grid: strictly increasing along the column
    assert np.all(np.diff(cols[0, :, 15]) > 0) and cols[0, 0, 15] == 0
    again = nn.unbox(model.init(jax.random.key(1), images, tokens)["params"])["grid_pos"]["embedding"]
    np.testing.assert_array_equal(again, params["grid_pos"]["embedding"])
    bad, _ = build(grid_pos_embed=True, grid_pos_init="fourier")
    with pytest.raises(ValueError, match="use 'normal' or 'sincos'"):
        bad.init(jax.random.key(0), images, tokens)
    with pytest.raises(ValueError, match="needs a square grid"):
        layers.sincos_grid(12, 64)


def test_masks_causal_and_prefix():
    valid = jnp.array([[True] * 6 + [False] * 2])
    causal = np.asarray(lm_lib.attention_mask(valid))[0, 0]
    upper = np.triu(np.ones((8, 8), bool), 1)
    assert not causal[upper].any()  # no token sees a later one
    assert causal[np.tril_indices(6)].all() and not causal[:6, 6:].any()  # padding is never seen ...
    assert causal.diagonal().all()  # ... but every row sees itself (no empty softmax)
    prefix = jnp.array([[True] * 3 + [False] * 5])
    pm = np.asarray(lm_lib.attention_mask(valid, prefix))[0, 0]
    assert pm[:3, :3].all()  # the prefix is bidirectional
    assert not pm[:3, 3:].any()  # the prefix never sees the answer
    np.testing.assert_array_equal(pm[3:, 3:], causal[3:, 3:])  # the answer stays causal
    assert pm[3:6, :3].all()


def test_model_prefix_is_image_prompt_and_sep():
    model, n = build(attn_mask="prefix")
    tokens = jnp.asarray(sequence(n, [5, 6], [8], 30))[None]
    (_, extras), _ = model.init_with_output(jax.random.key(0), jnp.zeros((1, 64, 64, 3)), tokens)
    sep_at = 1 + n + 2
    assert (
        np.asarray(extras["prefix"][0, : sep_at + 1]).all()
        and not np.asarray(extras["prefix"][0, sep_at + 1 :]).any()
    )


def _logits(model, params, images, tokens):
    return np.asarray(model.apply({"params": params}, images[:1], jnp.asarray(tokens)[None])[0][0])


def test_changing_a_token_only_changes_what_may_see_it(setup, images):
    """Causal: logits before position k never depend on token k. Prefix-LM: prompt tokens see each other
    (changing a later prompt token changes earlier prompt positions), never the answer."""
    model, n, params = setup
    base = sequence(n, [5, 6, 7], [8, 9, 10], 30)
    ref = _logits(model, params, images, base)
    answer_k = 1 + n + 3 + 1 + 1  # the second answer token
    changed = base.copy()
    changed[answer_k] = 40
    np.testing.assert_array_equal(_logits(model, params, images, changed)[:answer_k], ref[:answer_k])
    prompt_k = 1 + n + 2  # the last prompt token
    changed = base.copy()
    changed[prompt_k] = 40
    earlier = np.abs(_logits(model, params, images, changed)[:prompt_k] - ref[:prompt_k]).max()
    if model.attn_mask == "causal":
        assert earlier == 0
    else:
        assert earlier > 1e-4


def test_fixed_image_tokens_give_each_block_the_projected_image_tokens(images):
    """With ``fixed_image_tokens`` every block reads the projected image tokens as its input at the image
    positions: the same as running the blocks by hand and putting them back in between, and not the same
    as letting the LM rewrite them (the option changes something)."""
    model, n = build(attn_mask="causal", fixed_image_tokens=True)
    plain = build(attn_mask="causal")[0]
    tokens = jnp.asarray(np.stack([sequence(n, [5, 6, 7], [8, 9], 30)] * 3))
    params = nn.unbox(model.init(jax.random.key(0), images, tokens)["params"])

    def by_hand(m, images, tokens):
        x, valid, _ = m.inputs(images, tokens)
        h, is_image = x, (tokens == IMG)[..., None]
        for i, block in enumerate(m.lm.block):
            h = h if i == 0 else jnp.where(is_image, x, h)
            h, _ = block(h, lm_lib.positions_of(valid), lm_lib.attention_mask(valid), None, 0)
        return m.lm.lm_head(m.lm.ln_final(h))

    fixed = model.apply({"params": params}, images, tokens)[0]
    text = np.asarray(tokens[0] != IMG)
    np.testing.assert_allclose(
        fixed[:, text], model.apply({"params": params}, images, tokens, method=by_hand)[:, text], atol=1e-5
    )
    assert np.abs(fixed[:, text] - plain.apply({"params": params}, images, tokens)[0][:, text]).max() > 1e-3


def test_image_tokens_are_spliced_at_the_placeholders(setup, images):
    model, n, params = setup
    tokens = jnp.asarray(np.stack([sequence(n, [5, 6], [8], 30)] * 3))
    x, valid, _ = model.apply({"params": params}, images, tokens, method="inputs")
    img = model.apply({"params": params}, images, method="image_tokens")
    np.testing.assert_allclose(x[:, 1 : 1 + n], img, rtol=0, atol=0)
    emb = model.apply({"params": params}, tokens, method=lambda m, t: m.lm.embed(t))
    np.testing.assert_array_equal(x[:, 1 + n :], emb[:, 1 + n :])
    assert np.asarray(valid).sum(axis=1).tolist() == [1 + n + 2 + 1 + 2] * 3


def test_two_images_per_row_fill_their_placeholders_in_order(setup, images):
    """``[B, 2, H, W, 3]``: the first n placeholders take the first image's tokens, the next n the
    second's; the second image never changes the first image's tokens (causal) and does change later text."""
    model, n, params = setup
    pair = jnp.stack([images, images[::-1]], axis=1)  # [3, 2, H, W, 3]
    tokens = jnp.asarray(np.stack([sequence(2 * n, [5, 6], [8], 50)] * 3))
    x, _, _ = model.apply({"params": params}, pair, tokens, method="inputs")
    one = lambda im: model.apply({"params": params}, im, method="image_tokens")  # noqa: E731
    np.testing.assert_array_equal(x[:, 1 : 1 + n], one(images))
    np.testing.assert_array_equal(x[:, 1 + n : 1 + 2 * n], one(images[::-1]))
    if model.attn_mask == "causal":
        ref = _logits(model, params, pair, tokens[0])
        changed = _logits(model, params, pair.at[:, 1].multiply(-1.0), tokens[0])
        np.testing.assert_array_equal(changed[: 1 + n], ref[: 1 + n])
        assert np.abs(changed[1 + 2 * n :] - ref[1 + 2 * n :]).max() > 1e-4


def test_loss_counts_only_answer_tokens():
    tokens = jnp.asarray(sequence(3, [5, 6], [8, 9], 12))[None]  # BOS I I I 5 6 SEP 8 9 EOT PAD PAD
    w = np.asarray(losses.answer_weights(tokens, SEP, EOT, PAD))[0]
    # position i predicts token i+1: the targets 8, 9, EOT sit at positions 6, 7, 8
    np.testing.assert_array_equal(w, [0, 0, 0, 0, 0, 0, 1, 1, 1, 0, 0])
    # two turns: BOS I 5 SEP 8 EOT 6 7 SEP 9 EOT PAD -> targets 8, EOT, 9, EOT
    two = jnp.array([[BOS, IMG, 5, SEP, 8, EOT, 6, 7, SEP, 9, EOT, PAD]])
    np.testing.assert_array_equal(
        losses.answer_weights(two, SEP, EOT, PAD)[0], [0, 0, 0, 1, 1, 0, 0, 0, 1, 1, 0]
    )
    logits = jax.random.normal(jax.random.key(0), (1, 11, 70))
    loss, metrics = losses.lm_loss(logits, tokens[:, 1:], w[None])
    logp = jax.nn.log_softmax(logits[0])
    expected = -np.mean([logp[6, 8], logp[7, 9], logp[8, EOT]])
    np.testing.assert_allclose(loss, expected, rtol=1e-6)
    assert metrics["target_tokens"] == 3
    noisy = logits.at[:, :6].set(100.0 * jax.random.normal(jax.random.key(1), (1, 6, 70)))  # prompt positions
    np.testing.assert_allclose(losses.lm_loss(noisy, tokens[:, 1:], w[None])[0], loss, rtol=1e-6)


def _prompts(n):
    rng = np.random.default_rng(1)
    return [sequence(n, rng.integers(4, 60, size=k)) for k in (2, 5, 9)]


@pytest.mark.parametrize("sampling", [dict(), dict(temperature=1.0, top_k=10, top_p=0.9)])
def test_kv_cache_decoding_equals_full_recomputation(setup, images, sampling):
    model, n, params = setup
    prompts = generate.left_pad(_prompts(n), PAD)

    def run(cache):
        decode = generate.make_generate(
            model, max_new_tokens=10, eos_id=EOT, pad_id=PAD, banned_ids=BANNED, use_cache=cache, **sampling
        )
        return np.asarray(decode(params, images, prompts, jax.random.key(3)))

    with_cache, without = run(True), run(False)
    np.testing.assert_array_equal(with_cache, without)
    assert not np.isin(with_cache, BANNED[1:]).any()


def test_batched_prompts_of_different_lengths_equal_one_at_a_time(setup, images):
    model, n, params = setup
    prompts = _prompts(n)
    fn = generate.make_generate(model, max_new_tokens=8, eos_id=EOT, pad_id=PAD, banned_ids=BANNED)
    batched = np.asarray(fn(params, images, generate.left_pad(prompts, PAD), jax.random.key(0)))
    for i, p in enumerate(prompts):
        np.testing.assert_array_equal(
            np.asarray(fn(params, images[i : i + 1], p[None], jax.random.key(0)))[0], batched[i]
        )


def test_generation_stops_at_eos():
    """A model whose every logit favours EOS after the first token: rows end with EOS, then padding."""

    class Fake:
        def apply(self, variables, *args, method=None):
            b = args[0].shape[0]
            logits = jnp.zeros((b, 10)).at[:, 5].set(1.0)
            if method == "prefill":
                return logits, {"n": jnp.zeros((), jnp.int32)}
            if method == "decode":
                return jnp.zeros((b, 10)).at[:, EOT].set(1.0), args[1]
            return jnp.broadcast_to(logits[:, None], (b, args[1].shape[1], 10)), None

    for cache in (True, False):
        out = generate.make_generate(Fake(), max_new_tokens=5, eos_id=EOT, pad_id=PAD, use_cache=cache)(
            None, jnp.zeros((2, 1)), jnp.ones((2, 3), jnp.int32), jax.random.key(0)
        )
        if cache:
            np.testing.assert_array_equal(out, [[5, EOT, PAD, PAD, PAD]] * 2)
        else:  # the fake full model never says EOS: all 5 tokens
            np.testing.assert_array_equal(out, [[5] * 5] * 2)


def test_sampling_filters():
    logits = jnp.log(jnp.array([[0.5, 0.3, 0.15, 0.05]]))

    def keep(**kw):
        return np.isfinite(np.asarray(generate.filter_logits(logits, **kw)))[0].tolist()

    assert keep(top_k=2) == [True, True, False, False]
    assert keep(top_p=0.5) == [True, False, False, False]
    assert keep(top_p=0.79) == [True, True, False, False]
    assert keep(top_p=0.81) == [True, True, True, False]
    np.testing.assert_allclose(generate.filter_logits(logits, temperature=2.0), logits / 2.0)
    assert generate.sample(logits, jax.random.key(0)).tolist() == [0]  # temperature 0: argmax
    draws = jax.vmap(lambda k: generate.sample(logits, k, temperature=1.0, top_k=2))(
        jax.random.split(jax.random.key(0), 2000)
    )
    counts = np.bincount(np.asarray(draws).ravel(), minlength=4)
    assert counts[2:].sum() == 0 and abs(counts[0] / 2000 - 0.5 / 0.8) < 0.04
    with pytest.raises(ValueError, match="top_p"):
        generate.make_generate(None, max_new_tokens=1, eos_id=2, pad_id=0, top_p=0.0)


def test_blind_lm_ignores_images_and_decodes_like_recomputation(images):
    model = models.build(
        dict(type="lm", image_size=64, lm=lm_lib.variant("lm-tiny", vocab_size=70)),
        image_id=IMG,
        sep_id=SEP,
        pad_id=PAD,
    )
    assert model.num_image_tokens(64) == 0
    prompts = generate.left_pad([np.array([BOS, 5, 6, SEP]), np.array([BOS, 7, 8, 9, 10, SEP])], PAD)
    params = nn.unbox(model.init(jax.random.key(0), images[:2], prompts)["params"])
    assert set(params) == {"lm"}
    np.testing.assert_array_equal(
        model.apply({"params": params}, images[:2], prompts)[0],
        model.apply({"params": params}, -images[:2], prompts)[0],
    )

    def run(cache):
        decode = generate.make_generate(
            model, max_new_tokens=6, eos_id=EOT, pad_id=PAD, banned_ids=BANNED, use_cache=cache
        )
        return np.asarray(decode(params, images[:2], prompts, jax.random.key(0)))

    np.testing.assert_array_equal(run(True), run(False))
