"""Transformer building blocks shared by every tower: attention, MLP, block, stack.

Conventions used by all mmjax models:

* Parameters are float32; computation runs in ``dtype`` (e.g. bfloat16 on accelerators);
  attention softmax and layer-norm statistics run in float32.
* Every weight declares *logical* axis names (``embed``, ``heads``, ``kv``, ``mlp``, ``vocab``) and
  every large activation a logical constraint (``batch``, ``seq``, ``embed``); ``mmjax.sharding``
  maps the logical names to mesh axes. Models never name mesh axes.
* All attention goes through :func:`attention`, so a faster kernel is a one-line change.
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


def layer_norm(name: str, dtype: Dtype, eps: float = 1e-5) -> nn.LayerNorm:
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
        warnings.warn(f"attention: cuDNN unavailable ({why}); using JAX's default implementation", stacklevel=3)


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
                return jax.nn.dot_product_attention(q, k, v, mask=mask, is_causal=causal, implementation="cudnn")
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


class HeadsDense(nn.Module):
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
            bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, out_names), out_shape)
            y = y + bias.astype(self.dtype)
        return y


class MultiHeadAttention(nn.Module):
    """Multi-head self-attention with separate q/k/v projections (with biases, as in CLIP/ViT)."""

    num_heads: int
    dtype: Dtype = jnp.float32
    use_bias: bool = True

    @nn.compact
    def __call__(self, x, *, causal: bool = False, mask=None):
        width = x.shape[-1]
        head_dim = width // self.num_heads
        qkv_shape = (width, self.num_heads, head_dim)
        q, k, v = (
            HeadsDense("bse,ehd->bshd", qkv_shape, ("embed", "heads", "kv"), (0,), self.use_bias, self.dtype,
                       name=name)(x)
            for name in ("query", "key", "value")
        )
        out = attention(q, k, v, causal=causal, mask=mask)
        out = nn.with_logical_constraint(out, ("batch", "seq", "heads", "kv"))
        return HeadsDense("bshd,hde->bse", (self.num_heads, head_dim, width), ("heads", "kv", "embed"), (0, 1),
                          self.use_bias, self.dtype, name="out")(out)


class Mlp(nn.Module):
    """Two-layer feed-forward block: width -> mlp_dim -> width."""

    mlp_dim: int
    activation: str = "gelu"
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        width = x.shape[-1]
        bias = lambda axes: nn.with_logical_partitioning(nn.initializers.zeros, axes)  # noqa: E731
        h = nn.Dense(self.mlp_dim, dtype=self.dtype, kernel_init=dense_init(("embed", "mlp")),
                     bias_init=bias(("mlp",)), name="fc1")(x)
        h = ACTIVATIONS[self.activation](h)
        h = nn.with_logical_constraint(h, ("batch", "seq", "mlp"))
        return nn.Dense(width, dtype=self.dtype, kernel_init=dense_init(("mlp", "embed")),
                        bias_init=bias(("embed",)), name="fc2")(h)


class EncoderBlock(nn.Module):
    """Pre-norm transformer block: x + attn(ln(x)); x + mlp(ln(x))."""

    num_heads: int
    mlp_dim: int
    activation: str = "gelu"
    dtype: Dtype = jnp.float32
    norm_eps: float = 1e-5  # layer-norm epsilon (SigLIP: 1e-6)

    @nn.compact
    def __call__(self, x, *, causal: bool = False, mask=None):
        h = layer_norm("ln_attn", self.dtype, self.norm_eps)(x)
        x = x + MultiHeadAttention(self.num_heads, self.dtype, name="attn")(h, causal=causal, mask=mask)
        x = nn.with_logical_constraint(x, ACT_AXES)
        h = layer_norm("ln_mlp", self.dtype, self.norm_eps)(x)
        x = x + Mlp(self.mlp_dim, self.activation, self.dtype, name="mlp")(h)
        return nn.with_logical_constraint(x, ACT_AXES)


# Rematerialisation policies for the encoder blocks (``Encoder.remat``): "none" keeps every activation
# for the backward pass; "dots" keeps only the outputs of matmuls without batch dimensions (the
# projections and MLP) and recomputes the rest; "full" keeps only each block's input.
REMAT_POLICIES = {"none": None, "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable, "full": None}


class Encoder(nn.Module):
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
        return EncoderBlock(self.num_heads, self.mlp_dim, self.activation, self.dtype, self.norm_eps, name=name,
                            **where)

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
            x, ys = nn.scan(body, variable_axes={"params": 0}, split_rngs={"params": True}, in_axes=nn.broadcast,
                            length=self.depth, metadata_params={nn.PARTITION_NAME: "layers"})(self, x, mask)
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
