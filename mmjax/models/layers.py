"""Transformer building blocks shared by every tower: attention, MLP, block, stack.

Conventions used by all mmjax models:

* Parameters are float32; computation runs in ``dtype`` (e.g. bfloat16 on accelerators);
  attention softmax and layer-norm statistics run in float32.
* Every weight declares *logical* axis names (``embed``, ``heads``, ``kv``, ``mlp``, ``vocab``) and
  every large activation a logical constraint (``batch``, ``seq``, ``embed``); ``mmjax.sharding``
  maps the logical names to mesh axes. Models never name mesh axes.
* Every tower's attention is :class:`Attention` (self/cross, grouped KV heads, rotary, mask, KV
  cache), and its kernel is :func:`attention`, so a faster kernel is a one-line change.
"""

from __future__ import annotations

import contextlib
import warnings
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "gelu": lambda x: nn.gelu(x, approximate=False),
    "gelu_tanh": lambda x: nn.gelu(x, approximate=True),
    "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),  # OpenAI CLIP's activation
    "relu": nn.relu,
}

# Activation layout: (batch, sequence, embedding).
ACT_AXES = ("batch", "seq", "embed")


def dense_init(axes, init=nn.initializers.xavier_uniform()):
    """A kernel initializer annotated with logical axis names."""
    return nn.with_logical_partitioning(init, axes)


def layer_norm(name: str, *, dtype: Dtype, eps: float = 1e-5) -> nn.LayerNorm:
    return nn.LayerNorm(
        epsilon=eps,
        dtype=dtype,
        scale_init=nn.with_logical_partitioning(nn.initializers.ones, ("embed",)),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)),
        name=name,
    )


# Which kernel ``jax.nn.dot_product_attention`` uses: None (default: JAX picks), "xla" or "cudnn". Set it
# with ``attention_implementation(...)`` around tracing (it is read when a function is traced, so a jitted
# function keeps the choice it was traced with).
ATTENTION_IMPLEMENTATIONS = (None, "xla", "cudnn")
_attention_impl: str | None = None
_warned: set = set()


@contextlib.contextmanager
def attention_implementation(name: str | None):
    """Trace attention with ``implementation=name`` inside the ``with`` block. "cudnn" falls back to the
    default (with one warning) where cuDNN cannot run it: not on a GPU, not float16/bfloat16, or shapes
    or masks its kernel does not support."""
    global _attention_impl
    if name not in ATTENTION_IMPLEMENTATIONS:
        raise ValueError(f"unknown attention implementation {name!r}; use None, 'xla' or 'cudnn'")
    previous, _attention_impl = _attention_impl, name
    try:
        yield
    finally:
        _attention_impl = previous


def _fallback(why: str) -> None:
    if why not in _warned:
        _warned.add(why)
        warnings.warn(
            f"attention: cuDNN unavailable ({why}); using JAX's default implementation", stacklevel=3
        )


def attention(q, k, v, *, causal: bool = False, mask: jax.Array | None = None):
    """Scaled dot-product attention on ``[batch, seq, heads, head_dim]`` inputs.

    ``mask`` (optional) is boolean, broadcastable to ``[batch, heads, q_len, kv_len]``; True = attend.
    ``jax.nn.dot_product_attention`` computes the softmax in float32; its kernel is JAX's choice unless
    :func:`attention_implementation` names one.
    """
    impl = _attention_impl
    if impl == "cudnn":
        if jax.default_backend() != "gpu":
            _fallback(f"backend is {jax.default_backend()}")
            impl = None
        elif q.dtype not in (jnp.bfloat16, jnp.float16):
            _fallback(f"dtype {q.dtype}; cuDNN attention needs float16 or bfloat16")
            impl = None
        else:
            try:
                return jax.nn.dot_product_attention(
                    q, k, v, mask=mask, is_causal=causal, implementation="cudnn"
                )
            except (ValueError, NotImplementedError, TypeError, RuntimeError) as e:
                _fallback(f"{type(e).__name__}: {str(e).splitlines()[0][:120]}")
                impl = None
    if impl is None:  # no implementation named: JAX picks the kernel
        return jax.nn.dot_product_attention(q, k, v, mask=mask, is_causal=causal)
    return jax.nn.dot_product_attention(q, k, v, mask=mask, is_causal=causal, implementation=impl)


def check_heads(width: int, num_heads: int, what: str) -> None:
    if num_heads <= 0 or width % num_heads:
        raise ValueError(
            f"{what}: width {width} is not divisible by num_heads {num_heads}; "
            "choose a width that is a multiple of the number of heads"
        )


class AddPositionEmbedding(nn.Module, kw_only=True):
    """``x [B, N, D] + embedding [N, D]``: one learned vector per token position, its shape taken from the
    first call. ``init``: ``"normal"`` draws it from normal(``init_std``) (0.02 as a ViT's; about ``x``'s
    own scale where the embedding must stand out against features that are already large); ``"sincos"``
    starts it at ``sincos_grid``'s table of a square grid of N tokens, scaled to an RMS of ``init_std``:
    coordinates with linear structure, so that "left of" is a difference of two positions, not a table."""

    init_std: float = 0.02
    init: str = "normal"

    @nn.compact
    def __call__(self, x):  # in x's dtype
        if self.init == "normal":
            base = nn.initializers.normal(self.init_std)
        elif self.init == "sincos":

            def base(key, shape, dtype=jnp.float32):
                del key  # deterministic
                return (sincos_grid(shape[0], shape[1]) * (self.init_std * 2**0.5)).astype(dtype)

        else:
            raise ValueError(f"position embedding init {self.init!r}: use 'normal' or 'sincos'")
        init = nn.with_logical_partitioning(base, (None, "embed"))
        embedding = self.param("embedding", init, x.shape[1:])
        return x + embedding.astype(x.dtype)


def sincos_grid(num_tokens: int, width: int) -> jnp.ndarray:
    """``[num_tokens, width]`` 2-D sine-cosine coordinates of a square grid of ``num_tokens`` tokens in
    row-major order (MAE's layout: the first half of the channels the row, the second the column; each half
    ``[sin, cos]`` of ``width // 4`` frequencies), RMS 1/sqrt(2). The frequencies run from a quarter turn per
    cell down to a quarter turn over the whole grid, so the low ones are monotonic in the coordinate (nearly
    linear): a grid of side ``n`` needs ``width`` divisible by 4."""
    side = int(round(num_tokens**0.5))
    if side * side != num_tokens or width % 4:
        raise ValueError(
            f"sincos position embedding: {num_tokens} tokens of width {width}; it needs a square grid "
            "and a width divisible by 4 (use init 'normal')"
        )
    k = width // 4
    fastest, slowest = jnp.pi / 2, jnp.pi / (2 * max(side - 1, 1))
    omega = fastest * (slowest / fastest) ** (jnp.arange(k) / max(k - 1, 1))  # [k]
    coords = jnp.arange(side, dtype=jnp.float32)
    angles = coords[:, None] * omega[None, :]  # [side, k]
    axis = jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=1)  # [side, width / 2]
    rows = jnp.repeat(axis, side, axis=0)  # token t = (t // side, t % side)
    cols = jnp.tile(axis, (side, 1))
    return jnp.concatenate([rows, cols], axis=1)


class HeadsDense(nn.Module, kw_only=True):
    """A linear map written as an einsum over a multi-dimensional kernel, e.g. ``embed -> (heads, kv)``.

    (``nn.DenseGeneral`` initialises a flattened kernel, which cannot carry one logical name per
    dimension, so the attention projections use this instead.)
    """

    eqn: str  # e.g. "bse,ehd->bshd"
    shape: tuple[int, ...]
    axes: tuple[str, ...]
    fan_in_axes: tuple[int, ...]
    use_bias: bool = True
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        fan_out_axes = tuple(i for i in range(len(self.shape)) if i not in self.fan_in_axes)
        init = nn.initializers.xavier_uniform(in_axis=self.fan_in_axes, out_axis=fan_out_axes, batch_axis=())
        kernel = self.param("kernel", nn.with_logical_partitioning(init, self.axes), self.shape)
        y = jnp.einsum(self.eqn, x.astype(self.dtype), kernel.astype(self.dtype))
        if self.use_bias:
            out_shape = tuple(self.shape[i] for i in fan_out_axes)
            out_names = tuple(self.axes[i] for i in fan_out_axes)
            bias = self.param(
                "bias", nn.with_logical_partitioning(nn.initializers.zeros, out_names), out_shape
            )
            y = y + bias.astype(self.dtype)
        return y


def rotary(x: jax.Array, positions: jax.Array, theta: float) -> jax.Array:
    """Rotary position embedding of ``x`` ``[B, S, H, D]`` (the "rotate half" layout of HF Llama)."""
    d = x.shape[-1]
    inv_freq = 1.0 / theta ** (jnp.arange(0, d, 2, dtype=jnp.float32) / d)
    angles = positions[..., None].astype(jnp.float32) * inv_freq  # [B, S, D/2]
    cos = jnp.concatenate([jnp.cos(angles)] * 2, axis=-1)[:, :, None]
    sin = jnp.concatenate([jnp.sin(angles)] * 2, axis=-1)[:, :, None]
    xf = x.astype(jnp.float32)
    rotated = jnp.concatenate([-xf[..., d // 2 :], xf[..., : d // 2]], axis=-1)
    return (xf * cos + rotated * sin).astype(x.dtype)


# Parameter names of the four projections (query, key, value, output): CLIP/ViT/SigLIP's, and Llama's
# (which mmjax's decoder LM and Flamingo-style cross-attention use, as in the Hugging Face layouts).
CLIP_NAMES = ("query", "key", "value", "out")
LLAMA_NAMES = ("q", "k", "v", "o")


class Attention(nn.Module, kw_only=True):
    """Multi-head attention, the one every tower uses: ``Attention(num_heads=...)(x, context=None, *,
    causal=False, mask=None, positions=None, cache=None, index=0)``.

    * Self-attention over ``x [B, S, D]``, or cross-attention: queries from ``x``, keys and values from
      ``context [B, T, C]`` (``C`` may differ from ``D``: Flamingo's text attending to image features).
    * ``num_kv_heads`` < ``num_heads``: grouped-query attention (each key/value head serves
      ``num_heads // num_kv_heads`` query heads); None: as many as query heads.
    * ``rope_theta``: rotary position embeddings of queries and keys at ``positions [B, S]``
      (self-attention only); None: no rotary.
    * ``causal`` and/or a boolean ``mask`` broadcastable to ``[B, heads, S, T]`` (True = attend).
    * ``cache`` ``{"k", "v"}`` of ``[B, T, kv_heads, head_dim]`` (self-attention only): the ``S`` new
      keys/values are written at slots ``index .. index + S - 1`` and the queries attend over all ``T``
      slots; then the call returns ``(out, updated cache)`` instead of ``out``.
    * ``use_bias``: biases on the four projections (CLIP, ViT) or none (Llama); ``names``: their
      parameter names, ``CLIP_NAMES`` or ``LLAMA_NAMES``.

    The head size is ``D // num_heads`` and the output ``[B, S, D]``. Kernels: ``embed -> (heads, kv)``
    and ``(heads, kv) -> embed``; the softmax runs in float32 (:func:`attention`).
    """

    num_heads: int
    num_kv_heads: int | None = None
    use_bias: bool = True
    rope_theta: float | None = None
    names: tuple[str, str, str, str] = CLIP_NAMES
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(
        self, x, context=None, *, causal: bool = False, mask=None, positions=None, cache=None, index=0
    ):
        width = x.shape[-1]
        head_dim = width // self.num_heads
        kv_heads = self.num_kv_heads or self.num_heads
        source = x if context is None else context
        q_name, k_name, v_name, o_name = self.names

        def proj(y, heads, name):
            return HeadsDense(
                eqn="bse,ehd->bshd",
                shape=(y.shape[-1], heads, head_dim),
                axes=("embed", "heads", "kv"),
                fan_in_axes=(0,),
                use_bias=self.use_bias,
                dtype=self.dtype,
                name=name,
            )(y)

        if context is not None and (self.rope_theta is not None or cache is not None):
            raise ValueError(
                "Attention: rotary positions and the KV cache are for self-attention; "
                "a cross-attention context takes neither"
            )
        if self.rope_theta is not None and positions is None:
            raise ValueError("Attention: rope_theta is set, so the call needs positions [batch, seq]")
        q = proj(x, self.num_heads, q_name)
        k, v = proj(source, kv_heads, k_name), proj(source, kv_heads, v_name)
        if self.rope_theta is not None:
            q, k = rotary(q, positions, self.rope_theta), rotary(k, positions, self.rope_theta)
        new_cache = None
        if cache is not None:  # write the new keys/values at slots index.., attend over all slots

            def write(buf, new):
                return jax.lax.dynamic_update_slice(buf, new.astype(buf.dtype), (0, index, 0, 0))

            new_cache = {"k": write(cache["k"], k), "v": write(cache["v"], v)}
            k, v = new_cache["k"].astype(self.dtype), new_cache["v"].astype(self.dtype)
        out = attention(q, k, v, causal=causal, mask=mask)
        out = nn.with_logical_constraint(out, ("batch", "seq", "heads", "kv"))
        out = HeadsDense(
            eqn="bshd,hde->bse",
            shape=(self.num_heads, head_dim, width),
            axes=("heads", "kv", "embed"),
            fan_in_axes=(0, 1),
            use_bias=self.use_bias,
            dtype=self.dtype,
            name=o_name,
        )(out)
        return out if cache is None else (out, new_cache)


class Mlp(nn.Module, kw_only=True):
    """Two-layer feed-forward block: width -> mlp_dim -> width."""

    mlp_dim: int
    activation: str = "gelu"
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        width = x.shape[-1]
        bias = lambda axes: nn.with_logical_partitioning(nn.initializers.zeros, axes)  # noqa: E731
        h = nn.Dense(
            self.mlp_dim,
            dtype=self.dtype,
            kernel_init=dense_init(("embed", "mlp")),
            bias_init=bias(("mlp",)),
            name="fc1",
        )(x)
        h = ACTIVATIONS[self.activation](h)
        h = nn.with_logical_constraint(h, ("batch", "seq", "mlp"))
        return nn.Dense(
            width,
            dtype=self.dtype,
            kernel_init=dense_init(("mlp", "embed")),
            bias_init=bias(("embed",)),
            name="fc2",
        )(h)


class EncoderBlock(nn.Module, kw_only=True):
    """Pre-norm transformer block: x + attn(ln(x)); x + mlp(ln(x))."""

    num_heads: int
    mlp_dim: int
    activation: str = "gelu"
    dtype: Dtype = jnp.float32
    norm_eps: float = 1e-5  # layer-norm epsilon (SigLIP: 1e-6)

    @nn.compact
    def __call__(self, x, *, causal: bool = False, mask=None):
        h = layer_norm("ln_attn", dtype=self.dtype, eps=self.norm_eps)(x)
        h = Attention(num_heads=self.num_heads, dtype=self.dtype, name="attn")(h, causal=causal, mask=mask)
        x = x + h
        x = nn.with_logical_constraint(x, ACT_AXES)
        h = layer_norm("ln_mlp", dtype=self.dtype, eps=self.norm_eps)(x)
        x = x + Mlp(mlp_dim=self.mlp_dim, activation=self.activation, dtype=self.dtype, name="mlp")(h)
        return nn.with_logical_constraint(x, ACT_AXES)


# Rematerialisation policies for the encoder blocks (``Encoder.remat``): "none" keeps every activation
# for the backward pass; "dots" keeps only the outputs of matmuls without batch dimensions (the
# projections and MLP) and recomputes the rest; "full" keeps only each block's input.
REMAT_POLICIES = {
    "none": None,
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    "full": None,
}


class Encoder(nn.Module, kw_only=True):
    """A stack of ``depth`` :class:`EncoderBlock` s (``block_0`` ... ``block_{depth-1}``).

    ``remat`` ("none" | "dots" | "full", see ``REMAT_POLICIES``) recomputes activations in the backward
    pass instead of storing them; the parameters and the results are the same. ``scan=True`` traces one
    block and loops over layers with ``nn.scan`` (faster compiles for deep stacks), which CHANGES THE
    PARAMETER LAYOUT: one ``blocks`` entry whose arrays have a leading ``depth`` axis (logical name
    ``layers``) instead of ``block_0 ...``, so checkpoints of the two layouts do not load into each other.
    Both default to off: the plain unrolled stack.
    """

    depth: int
    num_heads: int
    mlp_dim: int
    activation: str = "gelu"
    dtype: Dtype = jnp.float32
    norm_eps: float = 1e-5
    remat: str = "none"
    scan: bool = False

    def _block(self, name: str, parent=None) -> EncoderBlock:
        where = {} if parent is None else {"parent": parent}
        return EncoderBlock(
            num_heads=self.num_heads,
            mlp_dim=self.mlp_dim,
            activation=self.activation,
            dtype=self.dtype,
            norm_eps=self.norm_eps,
            name=name,
            **where,
        )

    @nn.compact
    def __call__(self, x, *, causal: bool = False, mask=None, return_all: bool = False):
        """The last block's output; with ``return_all``, also the list ``[input, block_0 output, ...]``
        (Hugging Face's ``hidden_states``: ``[i]`` is the input of block ``i``)."""
        if self.remat not in REMAT_POLICIES:
            raise ValueError(f"Encoder: remat must be one of {', '.join(REMAT_POLICIES)}, got {self.remat!r}")
        hidden = [x]
        if self.scan:

            def body(module, carry, mask):
                y = self._block("blocks", module)(carry, causal=causal, mask=mask)
                return y, y

            if self.remat != "none":
                body = nn.remat(body, policy=REMAT_POLICIES[self.remat], prevent_cse=False)
            x, ys = nn.scan(
                body,
                variable_axes={"params": 0},
                split_rngs={"params": True},
                in_axes=nn.broadcast,
                length=self.depth,
                metadata_params={nn.PARTITION_NAME: "layers"},
            )(self, x, mask)
            hidden += [ys[i] for i in range(self.depth)]
            return (x, hidden) if return_all else x
        for i in range(self.depth):
            if self.remat == "none":  # the default: exactly the plain stack
                x = self._block(f"block_{i}")(x, causal=causal, mask=mask)
            else:  # same parameter names; causal is closed over (static), mask passed in

                def run(module, x, mask, name=f"block_{i}"):
                    return self._block(name, module)(x, causal=causal, mask=mask)

                x = nn.remat(run, policy=REMAT_POLICIES[self.remat])(self, x, mask)
            hidden.append(x)
        return (x, hidden) if return_all else x
