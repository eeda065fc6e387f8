"""Vision Transformer (ViT) image encoder with named variants ("Ti/16", "B/32", "L/14", ...).

``ViT(...)(images) -> (pooled, extras)`` where ``images`` is float ``[batch, H, W, 3]``, ``pooled``
is ``[batch, width]`` (or ``[batch, num_classes]`` with a head) and ``extras`` exposes
intermediates by name: ``patch_tokens`` (encoder output for all tokens, after the final norm) and
``pre_logits``. The early-fusion model uses ``patch_tokens``.

Two flavours cover the common checkpoints:
* OpenAI CLIP: ``patch_bias=False, pre_norm=True, pool="cls"``.
* big_vision / Google ViT: ``patch_bias=True, pre_norm=False``, ``pool="cls"`` or ``"gap"``.

``stem_channels=(c1, c2, ...)`` makes a *hybrid* ViT (as in the ViT paper's ResNet+ViT hybrids, and
"Early convolutions help transformers see better", Xiao et al. 2021): each entry is a 3x3 convolution +
ReLU + 2x2 max-pool before the patch embedding, which then covers ``patch_size / 2**len(stem_channels)``
feature-map pixels, so the token grid is unchanged. Convolutions give the translation equivariance a
small ViT trained from scratch on little data lacks (on the shapes dataset a plain 2-layer ViT needs
~10x more steps to tell shapes apart).
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from mmjax.models import layers

# name -> (width, depth, num_heads, mlp_dim), as in the ViT and CLIP papers.
SIZES = {
    "Ti": (192, 12, 3, 768),
    "S": (384, 12, 6, 1536),
    "M": (512, 12, 8, 2048),
    "B": (768, 12, 12, 3072),
    "L": (1024, 24, 16, 4096),
}
PATCHES = (8, 14, 16, 32)


def variant(name: str) -> dict:
    """Hyper-parameters of a named variant, e.g. ``variant("B/16")``."""
    size, _, patch = name.partition("/")
    if size not in SIZES or not patch.isdigit() or int(patch) not in PATCHES:
        valid = ", ".join(f"{s}/{p}" for s in SIZES for p in PATCHES)
        raise ValueError(f"unknown ViT variant {name!r}; valid variants: {valid}")
    width, depth, heads, mlp = SIZES[size]
    return dict(width=width, depth=depth, num_heads=heads, mlp_dim=mlp, patch_size=int(patch))


class ViT(nn.Module):
    width: int
    depth: int
    num_heads: int
    mlp_dim: int
    patch_size: int
    pool: str = "cls"  # "cls" | "gap"
    patch_bias: bool = True
    pre_norm: bool = False
    activation: str = "gelu"
    stem_channels: tuple[int, ...] = ()  # hybrid: conv stages before the patch embedding
    num_classes: int | None = None  # optional linear head on the pooled features
    dtype: layers.Dtype = jnp.float32

    def check(self, image_size: tuple[int, int]) -> None:
        """Raise a one-line ValueError for impossible sizes."""
        layers.check_heads(self.width, self.num_heads, "ViT")
        if self.pool not in ("cls", "gap"):
            raise ValueError(f"ViT: pool must be 'cls' or 'gap', got {self.pool!r}")
        h, w = image_size
        if h % self.patch_size or w % self.patch_size:
            raise ValueError(
                f"ViT: image size {h}x{w} is not divisible by patch size {self.patch_size}; "
                "choose a patch size that divides the image size"
            )
        if self.patch_size % 2 ** len(self.stem_channels):
            raise ValueError(f"ViT: patch size {self.patch_size} is not divisible by the stem's downsampling "
                             f"{2 ** len(self.stem_channels)}; use fewer stem_channels or a larger patch")

    def stem(self, x):
        for i, channels in enumerate(self.stem_channels):
            x = nn.Conv(channels, (3, 3), padding="SAME", dtype=self.dtype, name=f"stem_{i}",
                        kernel_init=layers.dense_init((None, None, None, "embed"), nn.initializers.he_normal()),
                        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)))(x)
            x = nn.max_pool(nn.relu(x), (2, 2), strides=(2, 2))
        return x

    @nn.compact
    def __call__(self, images):
        self.check(images.shape[1:3])
        images = self.stem(images.astype(self.dtype))
        p = self.patch_size // 2 ** len(self.stem_channels)
        # Patch embedding: a stride-p convolution, computed as patchify + one matmul (the same maths;
        # much faster than a strided convolution's gradient on CPU). Kernel layout (p, p, channels, width).
        kernel = self.param("patch_kernel", layers.dense_init((None, None, None, "embed"), nn.initializers.lecun_normal()),
                            (p, p, images.shape[-1], self.width))
        b, h, w, c = images.shape
        patches = images.reshape(b, h // p, p, w // p, p, c)
        x = jnp.einsum("bhpwqc,pqcd->bhwd", patches, kernel.astype(self.dtype)).reshape(b, -1, self.width)
        if self.patch_bias:
            bias = self.param("patch_bias", nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)),
                              (self.width,))
            x = x + bias.astype(self.dtype)
        x = nn.with_logical_constraint(x, layers.ACT_AXES)

        if self.pool == "cls":
            cls = self.param("cls", nn.with_logical_partitioning(nn.initializers.zeros, (None, None, "embed")),
                             (1, 1, self.width))
            x = jnp.concatenate([jnp.broadcast_to(cls, (b, 1, self.width)).astype(x.dtype), x], axis=1)
        pos = self.param("pos_embedding",
                         nn.with_logical_partitioning(nn.initializers.normal(0.02), (None, None, "embed")),
                         (1, x.shape[1], self.width))
        x = nn.with_logical_constraint(x + pos.astype(x.dtype), layers.ACT_AXES)
        if self.pre_norm:
            x = layers.layer_norm("ln_pre", self.dtype)(x)

        x = layers.Encoder(self.depth, self.num_heads, self.mlp_dim, self.activation, self.dtype,
                           name="encoder")(x)
        x = layers.layer_norm("ln_post", self.dtype)(x)
        pooled = x[:, 0] if self.pool == "cls" else x.mean(axis=1)
        extras = {"patch_tokens": x, "pre_logits": pooled}
        if self.num_classes:
            pooled = nn.Dense(self.num_classes, dtype=self.dtype,
                              kernel_init=layers.dense_init(("embed", "vocab"), nn.initializers.zeros),
                              name="head")(pooled)
        return pooled, extras
