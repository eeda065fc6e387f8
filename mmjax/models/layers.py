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


def attention(q, k, v, *, causal: bool = False, mask: jax.Array | None = None):
    """Scaled dot-product attention on ``[batch, seq, heads, head_dim]`` inputs.

    ``mask`` (optional) is boolean, broadcastable to ``[batch, heads, q_len, kv_len]``; True = attend.
    ``jax.nn.dot_product_attention`` computes the softmax in float32 and picks the fastest
    implementation XLA offers for the platform.
    """
    return jax.nn.dot_product_attention(q, k, v, mask=mask, is_causal=causal)


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

    @nn.compact
    def __call__(self, x, *, causal: bool = False, mask=None):
        h = layer_norm("ln_attn", self.dtype)(x)
        x = x + MultiHeadAttention(self.num_heads, self.dtype, name="attn")(h, causal=causal, mask=mask)
        x = nn.with_logical_constraint(x, ACT_AXES)
        h = layer_norm("ln_mlp", self.dtype)(x)
        x = x + Mlp(self.mlp_dim, self.activation, self.dtype, name="mlp")(h)
        return nn.with_logical_constraint(x, ACT_AXES)


class Encoder(nn.Module):
    """A stack of ``depth`` :class:`EncoderBlock` s (``block_0`` ... ``block_{depth-1}``)."""

    depth: int
    num_heads: int
    mlp_dim: int
    activation: str = "gelu"
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, *, causal: bool = False, mask=None):
        for i in range(self.depth):
            block = EncoderBlock(self.num_heads, self.mlp_dim, self.activation, self.dtype, name=f"block_{i}")
            x = block(x, causal=causal, mask=mask)
        return x
