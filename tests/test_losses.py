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
    row = -np.mean([logits[0, 0] - np.log(np.exp(logits[0]).sum()), logits[1, 1] - np.log(np.exp(logits[1]).sum())])
    col = -np.mean([logits[0, 0] - np.log(np.exp(logits[:, 0]).sum()),
                    logits[1, 1] - np.log(np.exp(logits[:, 1]).sum())])
    loss, _ = losses.softmax_contrastive_loss(a, b, jnp.float32(2.0))
    np.testing.assert_allclose(loss, (row + col) / 2, rtol=1e-6)


def test_float32_for_bfloat16_inputs():
    a = normalized(jax.random.normal(jax.random.key(0), (4, 8))).astype(jnp.bfloat16)
    loss, _ = losses.softmax_contrastive_loss(a, a, jnp.bfloat16(10.0))
    assert loss.dtype == jnp.float32
    assert loss == pytest.approx(float(losses.softmax_contrastive_loss(a.astype(jnp.float32), a.astype(jnp.float32),
                                                                        jnp.float32(10.0))[0]), rel=1e-6)


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
