"""Decoder-only language model (Llama family): RMSNorm pre-norm, SwiGLU MLP, rotary position
embeddings, grouped-query causal attention and an explicit KV cache.

``DecoderLM(...)(tokens=None, *, embeddings=None, positions, mask, cache=None, index=0)
-> (logits, extras)``:

* input either ``tokens`` int ``[B, S]`` or ``embeddings`` ``[B, S, width]`` (the early-fusion model
  splices image tokens into the embeddings it gets from ``embed(tokens)``);
* ``positions`` int ``[B, S]``: rotary positions (``positions_of(valid)`` counts real tokens, so left
  padding does not shift them);
* ``mask`` bool ``[B, 1, S, T]``: which of the ``T`` keys each query sees (``attention_mask``);
  ``T = S`` without a cache, the cache length with one;
* ``cache`` (optional): ``init_cache(...)``, one ``{"k", "v"}`` of ``[B, T, kv_heads, head_dim]`` per
  layer (with ``scan=True`` one ``{"k", "v"}`` of ``[depth, B, T, kv_heads, head_dim]``); the ``S`` new
  keys/values are written at slots ``index .. index + S - 1``.
* ``before_layer(i, x) -> x`` (optional) runs before block ``i`` (deep fusion inserts its gated
  cross-attention there);
* ``logits`` float32 ``[B, S, vocab]``; ``extras = {"hidden": final-norm output, "cache": updated}``.

The cache is a plain argument and result (no mutable collection), so prefill and decode are ordinary
pure functions; ``mmjax.generate`` drives them. Parameter names follow the Hugging Face Llama layout
one-to-one (``q/k/v/o``, ``gate/up/down``, ``ln_attn``, ``ln_mlp``, ``ln_final``, ``lm_head``).
"""

from __future__ import annotations

import copy

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmjax.models import layers

# name -> sizes. "lm-1b" has TinyLlama-1.1B's shape (1,100,048,384 parameters with vocab 32000).
SIZES = {
    "lm-tiny": dict(width=64, depth=2, num_heads=2, num_kv_heads=2, mlp_dim=192),
    "lm-shapes": dict(width=128, depth=3, num_heads=4, num_kv_heads=4, mlp_dim=384),
    "lm-small": dict(width=512, depth=8, num_heads=8, num_kv_heads=8, mlp_dim=1408),
    "lm-base": dict(width=1024, depth=16, num_heads=16, num_kv_heads=8, mlp_dim=2816),
    "lm-1b": dict(width=2048, depth=22, num_heads=32, num_kv_heads=4, mlp_dim=5632),
}


def variant(name: str, vocab_size: int = 32000) -> dict:
    """Hyper-parameters of a named size, e.g. ``variant("lm-small", vocab_size=128)``."""
    if name not in SIZES:
        raise ValueError(f"unknown LM size {name!r}; valid sizes: {', '.join(SIZES)}")
    return dict(copy.deepcopy(SIZES[name]), vocab_size=vocab_size)


# ------------------------------------------------------------------------------------ pure helpers
def positions_of(valid: jax.Array) -> jax.Array:
    """Rotary positions: the index of each token among the real (``valid``) tokens of its row."""
    return jnp.maximum(jnp.cumsum(valid, axis=-1) - 1, 0).astype(jnp.int32)


def attention_mask(
    valid: jax.Array, prefix: jax.Array | None = None, same_turn: jax.Array | None = None
) -> jax.Array:
    """bool ``[B, 1, S, S]``: query ``i`` sees key ``j`` if ``j`` is a real token and ``j <= i``
    (causal), or ``j`` is in the ``prefix`` (prefix-LM: the prefix is bidirectional; later tokens stay
    causal); with ``same_turn [B, S, S]`` (``independent_turns``) only where that allows too. Every
    query also sees itself, so padding rows are never empty (no NaN)."""
    s = valid.shape[-1]
    idx = jnp.arange(s)
    allowed = idx[None, :] <= idx[:, None]  # [S, S]
    if prefix is not None:
        allowed = allowed | prefix[:, None, :]
    if same_turn is not None:
        allowed = allowed & same_turn
    allowed = (allowed & valid[:, None, :]) | jnp.eye(s, dtype=bool)
    return allowed[:, None]


TURNS = ("conversation", "independent")


def check_turns(who: str, turns: str, eot_id: int | None, attn_mask: str = "causal") -> None:
    if turns not in TURNS:
        raise ValueError(f"{who}: turns must be one of {', '.join(TURNS)}, got {turns!r}")
    if turns == "independent" and eot_id is None:
        raise ValueError(f"{who}: turns='independent' needs eot_id (the token that ends a turn); pass it")
    if turns == "independent" and attn_mask != "causal":
        raise ValueError(
            f"{who}: turns='independent' needs attn_mask='causal' (with a prefix the image tokens see the "
            "first question, and later turns would read it through them)"
        )


def independent_turns(tokens: jax.Array, valid: jax.Array, image_id: int, eot_id: int):
    """``(positions [B, S], same_turn [B, S, S])`` for rows that pack several independent turns
    (``prompt [SEP] answer [EOT]``) after a shared context, the row's leading ``[BOS]`` and ``[IMG]``
    tokens: a token sees the shared context and its own turn only, and every turn's positions start
    where the first turn's do, so each turn is laid out as it would be alone in its row (as a
    one-question prompt is at generation). The first turn is unchanged."""
    idx = jnp.arange(tokens.shape[1])
    shared = jnp.cumprod((tokens == image_id) | (idx == 0)[None], axis=1).astype(bool)
    is_eot = tokens == eot_id
    turn = jnp.cumsum(is_eot, axis=1) - is_eot  # a turn's [EOT] belongs to it
    count = jnp.cumsum(valid, axis=1)
    # real tokens up to and including the [EOT] that ended the previous turn
    ended = jax.lax.cummax(jnp.where(is_eot, count, 0), axis=1)
    before = jnp.pad(ended[:, :-1], ((0, 0), (1, 0)))
    later = shared.sum(axis=1, keepdims=True) + count - before - 1
    positions = jnp.maximum(jnp.where(turn == 0, count - 1, later), 0).astype(jnp.int32)
    same_turn = (turn[:, :, None] == turn[:, None, :]) | shared[:, None, :]
    return positions, same_turn


def text_layout(tokens, valid, prefix, *, turns: str, image_id: int, eot_id: int | None):
    """``(positions, mask)`` of a batch of rows for the LM: every turn after the first sees the turns
    before it (``turns="conversation"``) or only the shared context (``"independent"``,
    ``independent_turns``)."""
    if turns == "conversation":
        return positions_of(valid), attention_mask(valid, prefix)
    positions, same_turn = independent_turns(tokens, valid, image_id, eot_id)
    return positions, attention_mask(valid, prefix, same_turn)


def prefix_through_first(is_marker: jax.Array, valid: jax.Array) -> jax.Array:
    """bool ``[B, S]``: the real tokens up to and including the first marker (e.g. ``[SEP]``)."""
    return valid & (jnp.cumsum(is_marker, axis=1) - is_marker == 0)


def prefill(lm: "DecoderLM", embeddings, valid, prefix, max_new_tokens: int, **lm_kwargs):
    """Run left-padded prompt ``embeddings`` through ``lm`` (a bound module), filling a KV cache with
    room for ``max_new_tokens`` more; returns ``(logits of the last position [B, vocab], state)``.
    The fusion models build their inputs, then share this and :func:`decode`."""
    b, s = valid.shape
    mask = jnp.pad(attention_mask(valid, prefix), ((0, 0), (0, 0), (0, 0), (0, max_new_tokens)))
    positions = positions_of(valid)
    cache = init_cache(lm, b, s + max_new_tokens, lm.dtype)
    logits, extras = lm(
        embeddings=embeddings, positions=positions, mask=mask, cache=cache, index=0, **lm_kwargs
    )
    state = {
        "cache": extras["cache"],
        "index": jnp.asarray(s, jnp.int32),
        "slots": jnp.pad(valid, ((0, 0), (0, max_new_tokens)), constant_values=True),
        "position": positions[:, -1] + 1,
    }
    return logits[:, -1], state


def decode(lm: "DecoderLM", embeddings, state, **lm_kwargs):
    """One step: ``embeddings [B, 1, width]`` go into slot ``state["index"]``, attending over every filled
    slot; returns ``(logits [B, vocab], state)``."""
    t = state["index"]
    seen = state["slots"] & (jnp.arange(state["slots"].shape[1]) <= t)
    logits, extras = lm(
        embeddings=embeddings,
        positions=state["position"][:, None],
        mask=seen[:, None, None, :],
        cache=state["cache"],
        index=t,
        **lm_kwargs,
    )
    return logits[:, 0], dict(state, cache=extras["cache"], index=t + 1, position=state["position"] + 1)


def init_cache(lm: "DecoderLM", batch: int, length: int, dtype=jnp.float32) -> list[dict] | dict:
    """An empty KV cache of ``length`` slots for ``lm``: a list of one ``{"k", "v"}`` per layer, or for a
    scanned LM one ``{"k", "v"}`` with a leading ``depth`` axis."""
    shape = (batch, length, lm.kv_heads, lm.width // lm.num_heads)
    if lm.scan:
        return {"k": jnp.zeros((lm.depth, *shape), dtype), "v": jnp.zeros((lm.depth, *shape), dtype)}
    return [{"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype)} for _ in range(lm.depth)]


# ------------------------------------------------------------------------------------------ modules
class RMSNorm(nn.Module, kw_only=True):
    eps: float = 1e-6
    dtype: layers.Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        scale = self.param(
            "scale", nn.with_logical_partitioning(nn.initializers.ones, ("embed",)), (x.shape[-1],)
        )
        xf = x.astype(jnp.float32)
        xf = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + self.eps)
        return (xf.astype(self.dtype) * scale.astype(self.dtype)).astype(self.dtype)


class SwiGLU(nn.Module, kw_only=True):
    """``down(silu(gate(x)) * up(x))`` (Shazeer 2020), without biases."""

    mlp_dim: int
    dtype: layers.Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        def dense(n, axes, name):
            return nn.Dense(
                n, use_bias=False, dtype=self.dtype, kernel_init=layers.dense_init(axes), name=name
            )

        to_mlp = ("embed", "mlp")
        h = nn.silu(dense(self.mlp_dim, to_mlp, "gate")(x)) * dense(self.mlp_dim, to_mlp, "up")(x)
        h = nn.with_logical_constraint(h, ("batch", "seq", "mlp"))
        return dense(x.shape[-1], ("mlp", "embed"), "down")(h)


class DecoderBlock(nn.Module, kw_only=True):
    num_heads: int
    num_kv_heads: int
    mlp_dim: int
    rope_theta: float
    norm_eps: float
    dtype: layers.Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, positions, mask, cache=None, index=0):
        """``(x, cache)``: the block's output and the updated KV cache (None without one)."""
        h = RMSNorm(eps=self.norm_eps, dtype=self.dtype, name="ln_attn")(x)
        attn = layers.Attention(
            num_heads=self.num_heads,
            num_kv_heads=self.num_kv_heads,
            use_bias=False,
            rope_theta=self.rope_theta,
            names=layers.LLAMA_NAMES,
            dtype=self.dtype,
            name="attn",
        )
        if cache is None:
            h = attn(h, mask=mask, positions=positions)
        else:
            h, cache = attn(h, mask=mask, positions=positions, cache=cache, index=index)
        x = nn.with_logical_constraint(x + h, layers.ACT_AXES)
        h = RMSNorm(eps=self.norm_eps, dtype=self.dtype, name="ln_mlp")(x)
        h = SwiGLU(mlp_dim=self.mlp_dim, dtype=self.dtype, name="mlp")(h)
        return nn.with_logical_constraint(x + h, layers.ACT_AXES), cache


class DecoderLM(nn.Module, kw_only=True):
    vocab_size: int
    width: int
    depth: int
    num_heads: int
    mlp_dim: int
    num_kv_heads: int | None = None  # None: as many as query heads (no grouping)
    rope_theta: float = 10000.0
    norm_eps: float = 1e-6
    tie_embeddings: bool = False
    dtype: layers.Dtype = jnp.float32
    remat: str = (
        "none"  # decoder blocks: "none" | "dots" | "full" (layers.REMAT_POLICIES; same params/results)
    )
    # nn.scan over the blocks: one traced block, faster compiles for deep LMs. CHANGES THE PARAMETER LAYOUT
    # (one ``blocks`` entry with a leading ``layers`` axis instead of ``block_0 ...``); no ``before_layer``.
    scan: bool = False

    @property
    def kv_heads(self) -> int:
        return self.num_kv_heads or self.num_heads

    def check(self) -> None:
        layers.check_heads(self.width, self.num_heads, "DecoderLM")
        if self.num_heads % self.kv_heads:
            raise ValueError(
                f"DecoderLM: num_heads {self.num_heads} is not a multiple of num_kv_heads "
                f"{self.kv_heads}; choose num_kv_heads dividing num_heads"
            )
        if (self.width // self.num_heads) % 2:
            raise ValueError(
                f"DecoderLM: head size {self.width // self.num_heads} is odd; rotary embeddings "
                "need an even head size"
            )

    def setup(self):
        self.check()
        self.token_embed = nn.Embed(
            self.vocab_size,
            self.width,
            dtype=self.dtype,
            embedding_init=nn.with_logical_partitioning(nn.initializers.normal(0.02), ("vocab", "embed")),
        )
        if self.remat not in layers.REMAT_POLICIES:
            raise ValueError(
                f"DecoderLM: remat must be one of {', '.join(layers.REMAT_POLICIES)}, got {self.remat!r}"
            )
        block = (
            DecoderBlock
            if self.remat == "none"
            else nn.remat(DecoderBlock, policy=layers.REMAT_POLICIES[self.remat], prevent_cse=not self.scan)
        )
        kw = dict(
            num_heads=self.num_heads,
            num_kv_heads=self.kv_heads,
            mlp_dim=self.mlp_dim,
            rope_theta=self.rope_theta,
            norm_eps=self.norm_eps,
            dtype=self.dtype,
        )
        # carry x; positions, mask and index are shared; the cache is scanned over its layer axis
        if self.scan:
            self.blocks = nn.scan(
                block,
                variable_axes={"params": 0},
                split_rngs={"params": True},
                in_axes=(nn.broadcast, nn.broadcast, 0, nn.broadcast),
                length=self.depth,
                metadata_params={nn.PARTITION_NAME: "layers"},
            )(**kw)
        else:
            self.block = [block(**kw) for _ in range(self.depth)]
        self.ln_final = RMSNorm(eps=self.norm_eps, dtype=self.dtype)
        if not self.tie_embeddings:
            self.lm_head = nn.Dense(
                self.vocab_size,
                use_bias=False,
                dtype=self.dtype,
                kernel_init=layers.dense_init(("embed", "vocab"), nn.initializers.normal(0.02)),
            )

    def embed(self, tokens):
        return self.token_embed(tokens)

    def __call__(
        self,
        tokens=None,
        *,
        embeddings=None,
        positions=None,
        mask=None,
        cache=None,
        index=0,
        before_layer=None,
    ):
        x = self.embed(tokens) if embeddings is None else embeddings.astype(self.dtype)
        x = nn.with_logical_constraint(x, layers.ACT_AXES)
        if positions is None or mask is None:  # plain causal LM over unpadded tokens
            valid = jnp.ones(x.shape[:2], bool)
            positions = positions_of(valid) if positions is None else positions
            mask = attention_mask(valid) if mask is None else mask
        if self.scan:
            if before_layer is not None:
                raise ValueError(
                    "DecoderLM: scan=True runs the blocks as one loop, so nothing can be inserted "
                    "between them (deep fusion's cross-attention); set scan=False"
                )
            x, new_cache = self.blocks(x, positions, mask, cache, index)
        else:
            new_cache = []
            for i, block in enumerate(self.block):
                if before_layer is not None:  # e.g. deep fusion's gated cross-attention: x = f(i, x)
                    x = before_layer(i, x)
                x, c = block(x, positions, mask, None if cache is None else cache[i], index)
                new_cache.append(c)
        x = self.ln_final(x)
        logits = self.token_embed.attend(x) if self.tie_embeddings else self.lm_head(x)
        return logits.astype(jnp.float32), {"hidden": x, "cache": new_cache if cache is not None else None}


class BlindLM(nn.Module, kw_only=True):
    """The decoder LM behind the fusion models' interface, ignoring the images: a text-only baseline
    (what the questions alone give away) and the pretraining stage of an LM that a fusion model later
    loads (``init_from`` with ``lm/.*``) and may keep frozen. Prompts carry no ``[IMG]`` tokens."""

    lm: DecoderLM
    image_id: int
    sep_id: int
    pad_id: int = 0
    eot_id: int | None = None
    turns: str = "conversation"  # or "independent" (text_layout)
    dtype: layers.Dtype = jnp.float32

    def num_image_tokens(self, image_size: int) -> int:
        self.lm.check()
        check_turns("BlindLM", self.turns, self.eot_id)
        return 0

    def __call__(self, images, tokens):
        valid = tokens != self.pad_id
        positions, mask = text_layout(
            tokens, valid, None, turns=self.turns, image_id=self.image_id, eot_id=self.eot_id
        )
        logits, extras = self.lm(tokens, positions=positions, mask=mask)
        return logits, {"hidden": extras["hidden"], "valid": valid}

    def prefill(self, images, prompts, max_new_tokens: int):
        return prefill(self.lm, self.lm.embed(prompts), prompts != self.pad_id, None, max_new_tokens)

    def decode(self, token, state):
        return decode(self.lm, self.lm.embed(token[:, None]), state)
