"""The optimizer from config: schedule, weight-decay mask and freezing by regex."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from mmjax import optimizer
from mmjax.config import ConfigError

PARAMS = {
    "image": {"fc": {"kernel": jnp.ones((2, 2)), "bias": jnp.ones((2,))}},
    "text": {"embed": {"embedding": jnp.ones((3, 2))}},
    "logit_scale": jnp.ones(()),
}


def opt_cfg(**kw):
    base = dict(
        name="adamw",
        lr=0.1,
        b1=0.9,
        b2=0.98,
        eps=1e-6,
        weight_decay=0.5,
        warmup_steps=2,
        end_lr_factor=0.0,
        grad_clip_norm=1.0,
        weight_decay_regex=(r".*/kernel", r".*/embedding"),
        freeze_regex=(),
    )
    return ml_collections.ConfigDict(dict(base, **kw))


def test_warmup_then_cosine_to_zero():
    s = optimizer.schedule(opt_cfg(), total_steps=10)
    assert float(s(0)) == 0.0 and float(s(2)) == pytest.approx(0.1) and float(s(10)) == pytest.approx(0.0)
    assert float(s(1)) == pytest.approx(0.05) and float(s(6)) < 0.1


def test_path_labels():
    labels = optimizer.path_labels(PARAMS, [r"image/.*"], "frozen", "trained")
    assert labels["image"]["fc"]["kernel"] == "frozen" and labels["text"]["embed"]["embedding"] == "trained"
    with pytest.raises(ConfigError, match=r"invalid parameter regex '\('"):
        optimizer.path_labels(PARAMS, ["("], 1, 0)


def test_weight_decay_only_on_matching_paths():
    """With zero gradients, AdamW moves only the decayed parameters (by lr * wd * value)."""
    tx = optimizer.make(opt_cfg(warmup_steps=0), 10, PARAMS)
    state = tx.init(PARAMS)
    zeros = jax.tree.map(jnp.zeros_like, PARAMS)
    updates, _ = tx.update(zeros, state, PARAMS)
    np.testing.assert_allclose(updates["image"]["fc"]["kernel"], -0.1 * 0.5, rtol=1e-5)
    np.testing.assert_allclose(updates["text"]["embed"]["embedding"], -0.1 * 0.5, rtol=1e-5)
    assert float(jnp.abs(updates["image"]["fc"]["bias"]).max()) == 0.0
    assert float(updates["logit_scale"]) == 0.0


def test_frozen_parameters_do_not_move_and_have_no_optimizer_state():
    tx = optimizer.make(opt_cfg(warmup_steps=0, freeze_regex=(r"image/.*",)), 10, PARAMS)
    state = tx.init(PARAMS)
    grads = jax.tree.map(jnp.ones_like, PARAMS)
    updates, _ = tx.update(grads, state, PARAMS)
    assert float(jnp.abs(updates["image"]["fc"]["kernel"]).max()) == 0.0
    assert float(jnp.abs(updates["text"]["embed"]["embedding"]).max()) > 0.0
    floats = sum(x.size for x in jax.tree.leaves(state) if jnp.issubdtype(x.dtype, jnp.floating))
    trained = 3 * 2 + 1  # embedding + logit_scale, each with mu and nu; nothing for the frozen image tower
    assert floats == 2 * trained


def test_unknown_optimizer():
    with pytest.raises(ConfigError, match="unknown optimizer 'sgdd'; known: adamw"):
        optimizer.make(opt_cfg(name="sgdd"), 10, PARAMS)
