"""Text generation for the fusion models: greedy, temperature, top-k and top-p sampling, stop at EOS,
batches of prompts of different lengths.

    fn = make_generate(model, max_new_tokens=32, eos_id=tok.eot_id, pad_id=tok.pad_id)
    new_tokens = fn(params, images, left_pad(prompts, tok.pad_id), jax.random.key(0))  # [B, 32]

Prompts are left-padded (``left_pad``) so every row's last prompt token is in the last column; the model
counts positions over real tokens only, so padding changes nothing. Rows stop independently at
``eos_id`` (kept in the output) and are padded with ``pad_id`` after it; the loop ends when every row
has stopped. ``banned_ids`` (e.g. the image placeholder and separator) are never sampled.

Two ways to decode, one result (a test checks they give the same tokens):

* ``use_cache=True`` (default): ``model.prefill`` runs the prompt once and fills a KV cache, then each
  step ``model.decode`` feeds one token -- O(1) work per new token;
* ``use_cache=False``: each step re-runs the whole sequence (prompt + tokens so far) through
  ``model(images, tokens)`` -- the reference, O(length) per token.

The command line (``python -m mmjax.generate``, a LLaVA directory's answers) is ``mmjax.commands.generate``.
"""

from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np


def left_pad(prompts: Sequence[np.ndarray], pad_id: int, width: int | None = None) -> np.ndarray:
    """int32 ``[B, width]`` (default: the longest prompt): each prompt right-aligned, padded on the
    left with ``pad_id``."""
    width = max(len(p) for p in prompts) if width is None else width
    out = np.full((len(prompts), width), pad_id, np.int32)
    for row, p in enumerate(prompts):
        out[row, width - len(p) :] = p
    return out


def filter_logits(logits, *, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0):
    """float32 logits scaled by ``1/temperature``, with everything outside the ``top_k`` most likely
    tokens and outside the smallest set whose probability reaches ``top_p`` set to ``-inf``."""
    logits = logits.astype(jnp.float32) / temperature
    if top_k:
        kth = jax.lax.top_k(logits, top_k)[0][..., -1:]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    if top_p < 1.0:
        ranked = jnp.sort(logits, axis=-1)[..., ::-1]
        probs = jax.nn.softmax(ranked, axis=-1)
        keep = jnp.cumsum(probs, axis=-1) - probs < top_p  # mass before this token < p: keep it
        threshold = jnp.min(jnp.where(keep, ranked, jnp.inf), axis=-1, keepdims=True)
        logits = jnp.where(logits < threshold, -jnp.inf, logits)
    return logits


def sample(logits, rng, *, temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0):
    """One token id per row: argmax when ``temperature == 0``, else a draw from the filtered logits."""
    if temperature == 0.0:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    filtered = filter_logits(logits, temperature=temperature, top_k=top_k, top_p=top_p)
    return jax.random.categorical(rng, filtered, axis=-1).astype(jnp.int32)


def check_sampling(temperature: float, top_k: int, top_p: float) -> None:
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0 (0: greedy), got {temperature}")
    if top_k < 0:
        raise ValueError(f"top_k must be >= 0 (0: off), got {top_k}")
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1] (1: off), got {top_p}")


def make_generate(
    model,
    *,
    max_new_tokens: int,
    eos_id: int,
    pad_id: int,
    banned_ids: Sequence[int] = (),
    temperature: float = 0.0,
    top_k: int = 0,
    top_p: float = 1.0,
    use_cache: bool = True,
):
    """A jitted ``generate(params, images, prompts, rng) -> int32 [B, max_new_tokens]``."""
    check_sampling(temperature, top_k, top_p)
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    banned = jnp.asarray(list(banned_ids), jnp.int32)
    pick = functools.partial(sample, temperature=temperature, top_k=top_k, top_p=top_p)

    def step(carry, logits):
        """Sample column ``i`` from ``logits``; rows that already stopped get ``pad_id``."""
        i, out, done, rng = carry
        rng, sub = jax.random.split(rng)
        token = jnp.where(done, pad_id, pick(logits.at[:, banned].set(-jnp.inf), sub))
        return i + 1, out.at[:, i].set(token), done | (token == eos_id), rng

    def running(carry):
        i, _, done, _ = carry[:4]
        return (i < max_new_tokens) & ~jnp.all(done)

    def generate(params, images, prompts, rng):
        apply = functools.partial(model.apply, {"params": params})
        b, s = prompts.shape
        start = (jnp.int32(0), jnp.full((b, max_new_tokens), pad_id, jnp.int32), jnp.zeros(b, bool), rng)
        if use_cache:
            logits, state = apply(images, prompts, max_new_tokens, method="prefill")

            def body(carry):
                *head, logits, state = carry
                head = step(tuple(head), logits)
                logits, state = apply(head[1][:, head[0] - 1], state, method="decode")
                return (*head, logits, state)

            return jax.lax.while_loop(running, body, (*start, logits, state))[1]

        def body(carry):  # re-run everything; the prompt and the tokens so far sit in one buffer
            i, out, done, rng = carry
            logits, _ = apply(images, jnp.concatenate([prompts, out], axis=1))
            return step(carry, jax.lax.dynamic_index_in_dim(logits, s - 1 + i, axis=1, keepdims=False))

        return jax.lax.while_loop(running, body, start)[1]

    return jax.jit(generate)


if __name__ == "__main__":  # python -m mmjax.generate: the command is mmjax.commands.generate
    from mmjax.commands.generate import main

    raise SystemExit(main())
