"""Losses: contrastive (single-device and sharded) and the masked LM cross-entropy. Everything
computes in float32.

Two losses on L2-normalised embeddings ``image [B, D]``, ``text [B, D]`` where row i of each is a pair:

* ``softmax`` (CLIP, InfoNCE): ``(CE(logits, diag) + CE(logits.T, diag)) / 2``, ``logits = s * I T^T``.
* ``sigmoid`` (SigLIP): ``-1/B sum_ij log sigmoid(z_ij (s * I_i . T_j + b))`` with ``z_ij = +1`` on the
  diagonal and ``-1`` elsewhere (Zhai et al., 2023).

Each comes in forms that give the same value and gradients:

``*_loss(..., axis_name=None)``
    one device, the full ``B x B`` logit matrix.
``*_loss(..., axis_name=AXES)`` inside ``shard_map`` over the batch axes (``gather``)
    each device holds ``b = B / n`` rows, gathers the *other* tower's embeddings (with gradients:
    the transpose of the all-gather is a reduce-scatter) and computes its ``b x B`` block: local rows
    x global columns; the row sums are ``psum``-ed.
``sigmoid_loss_ring`` inside ``shard_map``
    SigLIP's chunked form: texts travel round the ring of devices with ``ppermute``; at each of the
    ``n`` steps a device scores its images against the ``b`` texts it holds, so it never holds more
    than ``b x b`` logits. Each step is rematerialised in the backward pass, so that holds for the
    gradient too.

:func:`contrastive_loss` picks the form from the active mesh and ``nn.logical_axis_rules``.

:func:`lm_loss` is the token cross-entropy of the fusion models, averaged over the positions whose
weight is non-zero: answer tokens, which :func:`answer_weights` marks (image and prompt positions get
weight 0). It is per row, so plain GSPMD shards it over the batch.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from jax.sharding import PartitionSpec as P

IMPLS = ("gather", "ring")


def _gather(x, axis_name):
    return x if axis_name is None else jax.lax.all_gather(x, axis_name, tiled=True)


def _global_rows(b: int, axis_name):
    """Global indices of this device's ``b`` rows."""
    offset = 0 if axis_name is None else jax.lax.axis_index(axis_name) * b
    return offset + jnp.arange(b)


def _mean_over_devices(x, axis_name):
    return x if axis_name is None else jax.lax.pmean(x, axis_name)


def _varying(x, axis_name):
    """Mark a constant as per-device (shard_map's type system requires it for a scan carry)."""
    pcast = getattr(jax.lax, "pcast", None)
    return pcast(x, axis_name, to="varying") if pcast else jax.lax.pvary(x, axis_name)


def _f32(*xs):
    return [None if x is None else jnp.asarray(x, jnp.float32) for x in xs]


_MASKED = -1e9  # the logit of a pair left out of the softmax (finite: no inf - inf in the gradient)


def minimal_pair_mask(tokens, groups):
    """Which pairs of a batch's captions take part in the softmax loss: ``[B, B]`` bool, symmetric.

    ``groups``: token ids of attribute words, one tuple per attribute (e.g. the colour words, the shape
    words). A caption that names at most one value of every attribute, and at least one value in all, is
    *simple* ("a red star", or "a star" of an image whose colours are not described); two simple captions
    are a pair of the loss only when they name the same attributes and differ in exactly one value ("a red
    cross", "a blue star" for "a red star"; "a circle" for "a star"), a *minimal pair*; other captions pair
    with every other caption that is not simple. Why: with every in-batch caption as a negative, an image
    whose colour never occurs with a shape in training is always contrasted with that shape's captions, so
    the towers learn "red things are never circles" and misname an unseen red circle; among minimal pairs
    that pairing never happens, while each attribute is still contrasted within the other's value. ("a
    star" and "a red star" are no pair: the first may describe the second's image.)
    """
    tokens = jnp.asarray(tokens)
    eye = jnp.eye(tokens.shape[0], dtype=bool)
    if not groups:
        return jnp.ones_like(eye)
    present = [jnp.any(tokens[:, :, None] == jnp.asarray(ids)[None, None, :], axis=1) for ids in groups]
    counts = jnp.stack([p.sum(-1) for p in present], axis=-1)  # [B, attributes]
    simple = jnp.all(counts <= 1, axis=-1) & jnp.any(counts == 1, axis=-1)  # [B]
    same_attributes = jnp.all((counts[:, None] > 0) == (counts[None] > 0), axis=-1)
    differs = sum(jnp.any(p[:, None, :] != p[None, :, :], axis=-1).astype(jnp.int32) for p in present)
    both_simple = simple[:, None] & simple[None, :] & same_attributes
    neither = ~simple[:, None] & ~simple[None, :]
    return eye | (both_simple & (differs == 1)) | neither


def softmax_contrastive_loss(
    image_emb, text_emb, logit_scale, hard_negative_emb=None, negative_mask=None, *, axis_name=None
):
    """Symmetric InfoNCE (CLIP) loss; returns ``(loss, metrics)`` with in-batch accuracies.

    ``hard_negative_emb`` (optional, ``[B', D]``): extra texts that match no image, appended to every
    image's candidates in the image->text direction (NegCLIP). ``negative_mask`` (optional, bool
    ``[b, B]``, symmetric over the global batch, True on the diagonal): which pairs take part; a pair
    marked False is neither a positive nor a negative in either direction (``minimal_pair_mask``).
    ``axis_name``: see the module docstring.
    """
    image_emb, text_emb, scale, hard_negative_emb = _f32(image_emb, text_emb, logit_scale, hard_negative_emb)
    b = image_emb.shape[0]
    labels = _global_rows(b, axis_name)
    i2t_logits = scale * image_emb @ _gather(text_emb, axis_name).T  # [b, B]
    t2i_logits = scale * text_emb @ _gather(image_emb, axis_name).T  # [b, B]
    if negative_mask is not None:  # symmetric, so row i of the mask also serves text i's row
        i2t_logits = jnp.where(negative_mask, i2t_logits, _MASKED)
        t2i_logits = jnp.where(negative_mask, t2i_logits, _MASKED)
    i2t_candidates = i2t_logits
    if hard_negative_emb is not None:
        negatives = _gather(hard_negative_emb, axis_name)
        i2t_candidates = jnp.concatenate([i2t_logits, scale * image_emb @ negatives.T], axis=1)
    i2t = optax.softmax_cross_entropy_with_integer_labels(i2t_candidates, labels).mean()
    t2i = optax.softmax_cross_entropy_with_integer_labels(t2i_logits, labels).mean()
    metrics = {
        "i2t_acc": jnp.mean(jnp.argmax(i2t_logits, axis=1) == labels),
        "t2i_acc": jnp.mean(jnp.argmax(t2i_logits, axis=1) == labels),
    }
    return _mean_over_devices((i2t + t2i) / 2, axis_name), _mean_over_devices(metrics, axis_name)


def _sigmoid_terms(logits, is_pair):
    """``-log sigmoid(z * logits)`` summed, with ``z = +1`` where ``is_pair`` else ``-1``."""
    return -jnp.sum(jax.nn.log_sigmoid(jnp.where(is_pair, logits, -logits)))


def sigmoid_loss(image_emb, text_emb, logit_scale, logit_bias, *, axis_name=None):
    """SigLIP loss (sum over all image-text pairs / B); returns ``(loss, metrics)``."""
    image_emb, text_emb, scale, bias = _f32(image_emb, text_emb, logit_scale, logit_bias)
    b = image_emb.shape[0]
    rows = _global_rows(b, axis_name)
    logits = scale * image_emb @ _gather(text_emb, axis_name).T + bias  # [b, B]
    is_pair = rows[:, None] == jnp.arange(logits.shape[1])[None, :]
    t2i_logits = scale * text_emb @ _gather(image_emb, axis_name).T + bias  # only for the metric
    metrics = {
        "i2t_acc": jnp.mean(jnp.argmax(logits, axis=1) == rows),
        "t2i_acc": jnp.mean(jnp.argmax(jax.lax.stop_gradient(t2i_logits), axis=1) == rows),
    }
    return _mean_over_devices(_sigmoid_terms(logits, is_pair) / b, axis_name), _mean_over_devices(
        metrics, axis_name
    )


def sigmoid_loss_ring(image_emb, text_emb, logit_scale, logit_bias, *, axis_name=None):
    """SigLIP loss with the texts passed round the ring of ``axis_name`` devices (inside ``shard_map``).

    Step k (k = 0 .. n-1): device d holds the texts of device ``(d - k) mod n``, adds their ``b x b``
    block of the loss, and passes them on to ``d + 1``. Also tracks, per image and per travelling text,
    the best score against a non-matching partner, for the in-batch accuracies. With ``axis_name=None``
    (one device, no ring) it is :func:`sigmoid_loss`.
    """
    if axis_name is None:
        return sigmoid_loss(image_emb, text_emb, logit_scale, logit_bias, axis_name=None)
    image_emb, text_emb, scale, bias = _f32(image_emb, text_emb, logit_scale, logit_bias)
    b = image_emb.shape[0]
    n = jax.lax.axis_size(axis_name)
    perm = [(i, (i + 1) % n) for i in range(n)]
    eye = jnp.eye(b, dtype=bool)

    @jax.checkpoint  # keep only the carry per step; recompute the b x b block in the backward pass
    def step(carry, k):
        texts, text_best, text_pos, loss, image_best, image_pos = carry
        logits = scale * image_emb @ texts.T + bias  # [b images, b texts]
        is_pair = eye & (k == 0)  # at step 0 a device holds its own texts
        loss = loss + _sigmoid_terms(logits, is_pair)
        plain = jax.lax.stop_gradient(logits)
        off = jnp.where(is_pair, -jnp.inf, plain)
        image_best = jnp.maximum(image_best, off.max(axis=1))
        image_pos = image_pos + jnp.sum(jnp.where(is_pair, plain, 0.0), axis=1)
        text_best = jnp.maximum(text_best, off.max(axis=0))
        text_pos = text_pos + jnp.sum(jnp.where(is_pair, plain, 0.0), axis=0)
        texts, text_best, text_pos = (
            jax.lax.ppermute(x, axis_name, perm) for x in (texts, text_best, text_pos)
        )
        return (texts, text_best, text_pos, loss, image_best, image_pos), None

    # after n hops every text (and its running best) is back on its own device
    neg_inf, zeros = _varying(jnp.full((b,), -jnp.inf), axis_name), _varying(jnp.zeros((b,)), axis_name)
    init = (text_emb, neg_inf, zeros, _varying(jnp.zeros(()), axis_name), neg_inf, zeros)
    (_, text_best, text_pos, loss, image_best, image_pos), _ = jax.lax.scan(step, init, jnp.arange(n))
    metrics = {"i2t_acc": jnp.mean(image_pos > image_best), "t2i_acc": jnp.mean(text_pos > text_best)}
    return jax.lax.pmean(loss / b, axis_name), jax.lax.pmean(metrics, axis_name)


def shard_over_batch(fn, batch_axes: tuple[str, ...], batched: dict, replicated: dict):
    """``fn(**batched, **replicated, axis_name=batch_axes)`` under ``shard_map`` on the active mesh:
    ``batched`` arrays are split along their leading axis over ``batch_axes``, ``replicated`` ones
    (e.g. the temperature) are not; the outputs are replicated."""
    mapped = jax.shard_map(
        lambda bat, rep: fn(**bat, **rep, axis_name=batch_axes), in_specs=(P(batch_axes), P()), out_specs=P()
    )
    return mapped(batched, replicated)


def check_loss(kind: str, impl: str) -> None:
    """ValueError naming the fix unless ``kind``/``impl`` name a loss form that exists."""
    if kind not in ("softmax", "sigmoid"):
        raise ValueError(f"unknown contrastive loss {kind!r}; use 'softmax' or 'sigmoid'")
    if impl not in IMPLS or (impl == "ring" and kind != "sigmoid"):
        raise ValueError(
            f"loss impl {impl!r} is not available for the {kind} loss; use 'gather'"
            + (" or 'ring'" if kind == "sigmoid" else "")
        )


def contrastive_loss(
    kind: str, out: dict, hard_negative_emb=None, *, impl: str = "gather", negative_mask=None
):
    """The ``kind`` (``softmax`` | ``sigmoid``) loss of a two-tower output ``out``. With an active mesh
    (``jax.set_mesh``) it runs sharded over the mesh axes that ``nn.logical_axis_rules`` give the
    ``batch`` (``impl``: ``gather``, or for ``sigmoid`` also ``ring``); without one, on one device.
    ``negative_mask``: the global ``[B, B]`` mask of ``softmax_contrastive_loss`` (softmax only)."""
    from mmjax import sharding  # lazily: keeps this module free of flax

    check_loss(kind, impl)
    batched = {"image_emb": out["image"], "text_emb": out["text"]}
    replicated = {"logit_scale": out["logit_scale"]}
    if kind == "softmax":
        fn = softmax_contrastive_loss
        if hard_negative_emb is not None:
            batched["hard_negative_emb"] = hard_negative_emb
        if negative_mask is not None:  # each device takes its rows: [b, B]
            batched["negative_mask"] = negative_mask
    else:
        if hard_negative_emb is not None:
            raise ValueError(
                "hard negatives are only implemented for the softmax loss; set "
                "data.hard_negatives=False or loss.kind='softmax'"
            )
        if negative_mask is not None:
            raise ValueError(
                "loss.negatives='minimal_pairs' is only implemented for the softmax loss; set "
                "loss.negatives='all' or loss.kind='softmax'"
            )
        fn = sigmoid_loss_ring if impl == "ring" else sigmoid_loss
        replicated["logit_bias"] = out["logit_bias"]
    axes = sharding.active_batch_axes()
    if not axes:
        return fn(**batched, **replicated, axis_name=None)
    return shard_over_batch(fn, axes, batched, replicated)


def lm_loss(logits, targets, weights):
    """Mean cross-entropy of ``logits [B, S, V]`` against ``targets [B, S]`` over positions with
    ``weights [B, S]`` > 0; returns ``(loss, {"token_accuracy", "target_tokens"})``."""
    logits, w = _f32(logits, weights)
    nll = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
    n = jnp.maximum(w.sum(), 1.0)
    accuracy = ((jnp.argmax(logits, -1) == targets) * w).sum() / n
    return (nll * w).sum() / n, {"token_accuracy": accuracy, "target_tokens": w.sum()}


def answer_weights(tokens, sep_id: int, eot_id: int, pad_id: int):
    """float32 ``[B, S-1]``, the ``weights`` of :func:`lm_loss` for ``targets = tokens[:, 1:]``: 1 where
    the *next* token (the target of position i) belongs to an answer: it follows a ``[SEP]`` whose turn
    has not been closed by an EOT yet (answer words and the closing EOT; every turn of a multi-turn row);
    0 on image, prompt, question and padding tokens."""
    is_sep, is_eot = tokens == sep_id, tokens == eot_id
    open_turn = jnp.cumsum(is_sep, axis=1) > jnp.cumsum(is_eot, axis=1) - is_eot  # SEPs so far > EOTs before
    return (open_turn & ~is_sep & (tokens != pad_id))[:, 1:].astype(jnp.float32)
