"""Losses. Everything here computes in float32 whatever the model's compute dtype."""

from __future__ import annotations

import jax.numpy as jnp
import optax


def softmax_contrastive_loss(image_emb, text_emb, logit_scale, hard_negative_emb=None):
    """Symmetric InfoNCE (CLIP) loss for a batch of matching pairs ``(image_emb[i], text_emb[i])``.

    ``loss = (CE(logits, diag) + CE(logits.T, diag)) / 2`` with ``logits = scale * image @ text.T``.
    ``hard_negative_emb`` (optional, ``[B', D]``): extra texts that match no image, appended to every
    image's candidates in the image->text direction (NegCLIP).
    Returns ``(loss, metrics)``; metrics hold the image->text and text->image in-batch accuracies.
    """
    image_emb = image_emb.astype(jnp.float32)
    text_emb = text_emb.astype(jnp.float32)
    scale = logit_scale.astype(jnp.float32)
    logits = scale * image_emb @ text_emb.T
    labels = jnp.arange(logits.shape[0])
    i2t_logits = logits
    if hard_negative_emb is not None:
        i2t_logits = jnp.concatenate([logits, scale * image_emb @ hard_negative_emb.astype(jnp.float32).T], axis=1)
    i2t = optax.softmax_cross_entropy_with_integer_labels(i2t_logits, labels).mean()
    t2i = optax.softmax_cross_entropy_with_integer_labels(logits.T, labels).mean()
    metrics = {
        "i2t_acc": jnp.mean(jnp.argmax(logits, axis=1) == labels),
        "t2i_acc": jnp.mean(jnp.argmax(logits, axis=0) == labels),
    }
    return (i2t + t2i) / 2, metrics
