import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax import losses


def normalized(x):
    return x / jnp.linalg.norm(x, axis=-1, keepdims=True)


def test_symmetric_in_towers():
    a = normalized(jax.random.normal(jax.random.key(0), (8, 16)))
    b = normalized(jax.random.normal(jax.random.key(1), (8, 16)))
    l1, _ = losses.softmax_contrastive_loss(a, b, jnp.float32(10.0))
    l2, _ = losses.softmax_contrastive_loss(b, a, jnp.float32(10.0))
    np.testing.assert_allclose(l1, l2, rtol=1e-6)


def test_minimal_when_pairs_match():
    a = normalized(jax.random.normal(jax.random.key(0), (8, 16)))
    matched, m = losses.softmax_contrastive_loss(a, a, jnp.float32(50.0))
    shuffled, _ = losses.softmax_contrastive_loss(a, a[::-1], jnp.float32(50.0))
    assert matched < shuffled
    assert m["i2t_acc"] == 1.0 and m["t2i_acc"] == 1.0
    # Orthogonal matched pairs with a huge scale: loss -> 0.
    eye = jnp.eye(8)
    near_zero, _ = losses.softmax_contrastive_loss(eye, eye, jnp.float32(100.0))
    assert near_zero < 1e-6


def test_equals_hand_computed_value():
    a = jnp.array([[1.0, 0.0], [0.0, 1.0]])
    b = jnp.array([[1.0, 0.0], [0.6, 0.8]])
    logits = 2.0 * a @ b.T  # [[2, 1.2], [0, 1.6]]
    row = -np.mean(
        [logits[0, 0] - np.log(np.exp(logits[0]).sum()), logits[1, 1] - np.log(np.exp(logits[1]).sum())]
    )
    col = -np.mean(
        [logits[0, 0] - np.log(np.exp(logits[:, 0]).sum()), logits[1, 1] - np.log(np.exp(logits[:, 1]).sum())]
    )
    loss, _ = losses.softmax_contrastive_loss(a, b, jnp.float32(2.0))
    np.testing.assert_allclose(loss, (row + col) / 2, rtol=1e-6)


def test_float32_for_bfloat16_inputs():
    a = normalized(jax.random.normal(jax.random.key(0), (4, 8))).astype(jnp.bfloat16)
    loss, _ = losses.softmax_contrastive_loss(a, a, jnp.bfloat16(10.0))
    assert loss.dtype == jnp.float32
    assert loss == pytest.approx(
        float(
            losses.softmax_contrastive_loss(a.astype(jnp.float32), a.astype(jnp.float32), jnp.float32(10.0))[
                0
            ]
        ),
        rel=1e-6,
    )


def test_hard_negatives_are_extra_image_to_text_candidates():
    img = normalized(jax.random.normal(jax.random.key(0), (4, 8)))
    txt = normalized(jax.random.normal(jax.random.key(1), (4, 8)))
    neg = normalized(jax.random.normal(jax.random.key(2), (4, 8)))
    scale = jnp.float32(5.0)
    loss, _ = losses.softmax_contrastive_loss(img, txt, scale, neg)
    logits = np.asarray(scale * img @ txt.T)
    all_i2t = np.concatenate([logits, np.asarray(scale * img @ neg.T)], axis=1)
    lse = lambda x: np.log(np.exp(x).sum(axis=1))  # noqa: E731
    i2t = np.mean(lse(all_i2t) - np.diag(logits))
    t2i = np.mean(lse(logits.T) - np.diag(logits))
    np.testing.assert_allclose(loss, (i2t + t2i) / 2, rtol=1e-5)
    # A negative identical to the true caption is as likely as the true one: the loss rises.
    same, _ = losses.softmax_contrastive_loss(img, img, jnp.float32(50.0), img)
    plain, _ = losses.softmax_contrastive_loss(img, img, jnp.float32(50.0))
    assert same > plain + 0.3


# --- SigLIP and the sharded forms: equal values and gradients on 8 devices --------------------------


def embeddings(b=16, d=8, seed=0):
    k = jax.random.split(jax.random.key(seed), 3)
    return (
        normalized(jax.random.normal(k[0], (b, d))),
        normalized(jax.random.normal(k[1], (b, d))),
        normalized(jax.random.normal(k[2], (b, d))),
    )


def test_sigmoid_loss_equals_hand_computed_value():
    img, txt, _ = embeddings(4, 3)
    scale, bias = jnp.float32(10.0), jnp.float32(-10.0)
    logits = np.asarray(scale * img @ txt.T + bias, np.float64)
    z = 2 * np.eye(4) - 1
    expected = -np.sum(np.log(1 / (1 + np.exp(-z * logits)))) / 4
    loss, _ = losses.sigmoid_loss(img, txt, scale, bias)
    np.testing.assert_allclose(loss, expected, rtol=1e-6)
    eye = jnp.eye(4)  # orthogonal matched pairs: every pair scores +50, every non-pair -50
    perfect, m = losses.sigmoid_loss(eye, eye, jnp.float32(100.0), jnp.float32(-50.0))
    assert perfect < 1e-6 and m["i2t_acc"] == 1.0 and m["t2i_acc"] == 1.0


def sharded(kind, impl, mesh_axes, negatives=False, mask=None):
    """Loss and gradients w.r.t. (image, text, scale[, bias]) under a mesh with the batch on mesh_axes."""
    import flax.linen as nn

    from mmjax import sharding

    mesh = jax.make_mesh((2, 2, 2), sharding.MESH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * 3)

    def loss_fn(img, txt, scale, bias, neg):
        out = {"image": img, "text": txt, "logit_scale": scale, "logit_bias": bias}
        return losses.contrastive_loss(kind, out, neg if negatives else None, impl=impl, negative_mask=mask)

    grad_fn = jax.jit(jax.value_and_grad(loss_fn, argnums=(0, 1, 2, 3), has_aux=True))
    img, txt, neg = embeddings()
    args = (img, txt, jnp.float32(7.0), jnp.float32(-3.0), neg)
    if mesh_axes is None:
        return grad_fn(*args)
    with jax.set_mesh(mesh), nn.logical_axis_rules((("batch", mesh_axes),)):
        return grad_fn(*args)


@pytest.mark.parametrize(
    "kind,impl,negatives",
    [
        ("softmax", "gather", False),
        ("softmax", "gather", True),
        ("sigmoid", "gather", False),
        ("sigmoid", "ring", False),
    ],
)
@pytest.mark.parametrize("mesh_axes", [("data", "fsdp", "tensor"), ("fsdp",)])
def test_sharded_losses_equal_single_device(kind, impl, negatives, mesh_axes):
    (loss1, m1), grads1 = sharded(kind, "gather", None, negatives)
    (loss8, m8), grads8 = sharded(kind, impl, mesh_axes, negatives)
    np.testing.assert_allclose(loss8, loss1, rtol=1e-6)
    for k in m1:
        np.testing.assert_allclose(m8[k], m1[k], err_msg=k)
    for g8, g1 in zip(grads8, grads1):
        np.testing.assert_allclose(g8, g1, rtol=1e-5, atol=1e-7)
    assert float(jnp.abs(grads1[0]).sum()) > 0 and float(jnp.abs(grads1[2])) > 0


# Captions as token ids: red=10, blue=11; star=20, circle=21, cross=22 (1 BOS, 2 EOT, 30 another word).
CAPTIONS = np.array(
    [
        [1, 10, 20, 2],
        [1, 10, 22, 2],
        [1, 11, 20, 2],
        [1, 11, 21, 2],
        [1, 10, 20, 2],
        [1, 10, 11, 20],
        [1, 30, 10, 2],
        [1, 11, 21, 20],
        [1, 30, 20, 2],
        [1, 30, 21, 2],
        [1, 30, 21, 2],
    ]
)
GROUPS = ((10, 11), (20, 21, 22))


def test_minimal_pair_mask():
    mask = np.asarray(losses.minimal_pair_mask(CAPTIONS, GROUPS))
    want = np.array(
        [  # red star: red cross and blue star only (not blue circle, not its duplicate)
            [1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0],
            [1, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0],
            [1, 0, 1, 1, 1, 0, 0, 0, 0, 0, 0],
            [0, 0, 1, 1, 0, 0, 0, 0, 0, 0, 0],
            [0, 1, 1, 0, 1, 0, 0, 0, 0, 0, 0],
            [0, 0, 0, 0, 0, 1, 0, 1, 0, 0, 0],  # two colours: not simple
            [0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0],  # "red" alone: no other caption names a colour only
            [0, 0, 0, 0, 0, 1, 0, 1, 0, 0, 0],  # two shapes: not simple
            [0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1],  # "star": the captions naming another shape alone
            [0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 0],  # "circle": not its duplicate, not "red star"
            [0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 1],
        ],
        bool,
    )
    np.testing.assert_array_equal(mask, want)
    assert np.asarray(losses.minimal_pair_mask(CAPTIONS, ())).all()


def test_masked_pairs_take_no_part_in_the_loss():
    img = normalized(jax.random.normal(jax.random.key(0), (len(CAPTIONS), 8)))
    txt = normalized(jax.random.normal(jax.random.key(1), (len(CAPTIONS), 8)))
    mask = np.asarray(losses.minimal_pair_mask(CAPTIONS, GROUPS))
    loss, m = losses.softmax_contrastive_loss(img, txt, jnp.float32(4.0), negative_mask=mask)
    logits = np.asarray(4.0 * img @ txt.T, np.float64)
    rows = [logits[i, i] - np.log(np.exp(logits[i][mask[i]]).sum()) for i in range(len(CAPTIONS))]
    cols = [logits[i, i] - np.log(np.exp(logits[:, i][mask[:, i]]).sum()) for i in range(len(CAPTIONS))]
    np.testing.assert_allclose(loss, -(np.mean(rows) + np.mean(cols)) / 2, rtol=1e-6)
    full, _ = losses.softmax_contrastive_loss(img, txt, jnp.float32(4.0))
    assert float(full) > float(loss)  # fewer candidates
    # a text's embedding reaches an image's loss terms only where the mask pairs them
    grad = jax.grad(
        lambda t: losses.softmax_contrastive_loss(img, t, jnp.float32(4.0), negative_mask=mask)[0]
    )
    g_row0 = jax.grad(lambda t: jax.nn.logsumexp(jnp.where(mask[0], 4.0 * img[0] @ t.T, -1e9)))(txt)
    assert float(jnp.abs(g_row0[3]).sum()) == 0 and float(jnp.abs(g_row0[1]).sum()) > 0
    assert float(jnp.abs(grad(txt)).sum()) > 0


@pytest.mark.parametrize("mesh_axes", [("data", "fsdp", "tensor"), ("fsdp",)])
def test_sharded_masked_loss_equals_single_device(mesh_axes):
    mask = losses.minimal_pair_mask(
        np.concatenate([CAPTIONS[:8], CAPTIONS[7::-1]]), GROUPS
    )  # 16 rows, as embeddings()
    (loss1, m1), grads1 = sharded("softmax", "gather", None, mask=mask)
    (loss8, m8), grads8 = sharded("softmax", "gather", mesh_axes, mask=mask)
    np.testing.assert_allclose(loss8, loss1, rtol=1e-6)
    for g8, g1 in zip(grads8, grads1):
        np.testing.assert_allclose(g8, g1, rtol=1e-5, atol=1e-7)
    (plain, _), _ = sharded("softmax", "gather", None)
    assert float(plain) != pytest.approx(float(loss1))  # the mask changed the loss
    with pytest.raises(ValueError, match="minimal_pairs' is only implemented for the softmax loss"):
        sharded("sigmoid", "gather", None, mask=mask)


def test_ring_loss_holds_only_local_blocks():
    """The ring form's compiled program has no [b, B] (local x global) logit block: only [b, b]."""
    import flax.linen as nn

    from mmjax import sharding

    mesh = jax.make_mesh((8, 1, 1), sharding.MESH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * 3)
    img, txt, _ = embeddings(64, 8)

    def loss_fn(impl):
        out = {"image": img, "text": txt, "logit_scale": jnp.float32(10.0), "logit_bias": jnp.float32(-10.0)}
        return jax.jit(jax.grad(lambda o: losses.contrastive_loss("sigmoid", o, impl=impl)[0])).lower(out)

    with jax.set_mesh(mesh), nn.logical_axis_rules((("batch", ("data",)),)):
        ring = loss_fn("ring").compile().as_text()
        gather = loss_fn("gather").compile().as_text()
    assert "f32[8,64]" in gather and "f32[8,64]" not in ring and "f32[8,8]" in ring


def test_unknown_loss_and_impl():
    out = {"image": jnp.ones((2, 2)), "text": jnp.ones((2, 2)), "logit_scale": jnp.float32(1.0)}
    with pytest.raises(ValueError, match="unknown contrastive loss 'cosine'"):
        losses.contrastive_loss("cosine", out)
    with pytest.raises(ValueError, match="loss impl 'ring' is not available for the softmax loss"):
        losses.contrastive_loss("softmax", out, impl="ring")


def reference_sigmoid_loss(img, txt, scale, bias):
    """SigLIP's loss on the whole batch and its gradients, written out in float64 numpy (no JAX, no autodiff):
    ``L = 1/B sum_ij log(1 + exp(-z_ij l_ij))``, ``l = s I T^T + b``, ``z = +1`` on the diagonal, else -1.
    ``dL/dl = -z sigmoid(-z l) / B``; returns ``(loss, (dL/dI, dL/dT, dL/ds, dL/db), i2t_acc, t2i_acc)``."""
    img, txt = np.asarray(img, np.float64), np.asarray(txt, np.float64)
    b = len(img)
    z = 2 * np.eye(b) - 1
    cos = img @ txt.T
    logits = scale * cos + bias
    loss = np.logaddexp(0, -z * logits).sum() / b
    dl = -z / (1 + np.exp(z * logits)) / b
    grads = (scale * dl @ txt, scale * dl.T @ img, (dl * cos).sum(), dl.sum())
    rows = np.arange(b)
    return loss, grads, np.mean(logits.argmax(1) == rows), np.mean(logits.argmax(0) == rows)


@pytest.mark.parametrize("impl", ["ring", "gather"])
@pytest.mark.parametrize("mesh_axes", [None, ("data", "fsdp", "tensor"), ("fsdp",)], ids=["one", "8", "2"])
def test_sigmoid_losses_equal_an_independent_reference(impl, mesh_axes):
    """The sharded SigLIP forms (texts round a ring of 8 or 2 devices; gathered texts) and the single-device
    one == ``reference_sigmoid_loss`` on the full batch: value, metrics and every gradient."""
    (loss, metrics), grads = sharded("sigmoid", impl, mesh_axes)
    img, txt, _ = embeddings()
    ref, ref_grads, i2t, t2i = reference_sigmoid_loss(img, txt, 7.0, -3.0)  # the scale and bias of sharded()
    np.testing.assert_allclose(loss, ref, rtol=1e-6)
    assert metrics["i2t_acc"] == pytest.approx(i2t) and metrics["t2i_acc"] == pytest.approx(t2i)
    for name, g, want in zip(("image", "text", "scale", "bias"), grads, ref_grads):
        np.testing.assert_allclose(g, want, rtol=1e-5, atol=1e-7, err_msg=name)
        assert np.abs(want).max() > 1e-3, name  # a gradient that is there to be got wrong
