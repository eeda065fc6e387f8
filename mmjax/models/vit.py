"""Vision Transformer (ViT) image encoder with named variants ("Ti/16", "B/32", "L/14", ...).

``ViT(...)(images) -> (pooled, extras)`` where ``images`` is float ``[batch, H, W, 3]``, ``pooled``
is ``[batch, width]`` (or ``[batch, num_classes]`` with a head) and ``extras`` exposes
intermediates by name: ``patch_tokens`` (encoder output for all tokens, after the final norm) and
``pre_logits``. The early-fusion model uses ``patch_tokens``.

Two flavours cover the common checkpoints:
* OpenAI CLIP: ``patch_bias=False, pre_norm=True, pool="cls"``.
* big_vision / Google ViT: ``patch_bias=True, pre_norm=False``, ``pool="cls"`` or ``"gap"``.
* SigLIP: ``patch_bias=True, pre_norm=False, pool="map"`` (multi-head attention pooling: a learned
  probe attends over the tokens, then LayerNorm + MLP with a residual), ``norm_eps=1e-6``.

``feature_layer=i`` (default None) makes ``extras["patch_tokens"]`` the hidden states *entering*
encoder block ``i`` (negative: from the end, ``-1`` = the last block's output), without the final
norm: the features LLaVA feeds its projector (``vision_feature_layer=-2``). ``pooled`` is unchanged.

``stem_channels=(c1, c2, ...)`` makes a *hybrid* ViT (as in the ViT paper's ResNet+ViT hybrids, and
"Early convolutions help transformers see better", Xiao et al. 2021): each entry is a 3x3 convolution +
ReLU + 2x2 max-pool before the patch embedding, which then covers ``patch_size / 2**len(stem_channels)``
feature-map pixels, so the token grid is unchanged. Convolutions give the translation equivariance a
small ViT trained from scratch on little data lacks (on the shapes dataset a plain 2-layer ViT needs
~10x more steps to tell shapes apart).

``stem_colour="split"`` (hybrid only) keeps shape and colour apart at the input. The first stem
convolution applies one bank of zero-mean single-channel 3x3 filters to each colour channel and combines
the three responses per filter by their root-sum-square: an edge map that is the same for an outline
drawn in any colour on any background, up to the contrast's magnitude (it is invariant under every
orthogonal map of colour space, a channel permutation or a negation included). The colour enters
through a separate path: a per-pixel layer (``colour_hidden`` units, ReLU) averaged over each patch and
projected into the patch embedding. With the default ``"joint"`` the first convolution mixes the
channels, so every shape feature is learned per colour; on the shapes dataset that is what keeps a
contrastive tower from naming colour-shape pairs it never saw (docs/learning.md).
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


def _mean_pool(x, k: int):
    """``[b, h, w, c]`` -> ``[b, h // k, w // k, c]``: the mean of each ``k x k`` block (``h``, ``w``
    divisible by ``k``)."""
    b, h, w, c = x.shape
    return x.reshape(b, h // k, k, w // k, k, c).mean(axis=(2, 4))


def _max_pool_2x2(x):
    """``nn.max_pool(x, (2, 2), strides=(2, 2))`` (VALID) as a reshape and a max: the same values, and on
    XLA's CPU backend a much faster gradient than max_pool's select-and-scatter (the stem's cost halves)."""
    b, h, w, c = x.shape
    x = x[:, : h // 2 * 2, : w // 2 * 2]
    return x.reshape(b, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


class ViT(nn.Module, kw_only=True):
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
    stem_colour: str = "joint"  # "joint" | "split": colour-invariant first convolution + a colour path
    colour_hidden: int = 16  # width of the per-pixel colour layer (stem_colour="split")
    num_classes: int | None = None  # optional linear head on the pooled features
    dtype: layers.Dtype = jnp.float32
    norm_eps: float = 1e-5  # epsilon of every layer norm
    feature_layer: int | None = (
        None  # None: patch_tokens after the final norm; i: hidden states before block i
    )
    remat: str = "none"  # encoder blocks: "none" | "dots" | "full" (layers.Encoder; same params and results)
    scan: bool = False  # nn.scan over the encoder blocks; True changes the parameter layout (layers.Encoder)

    def check(self, image_size: tuple[int, int]) -> None:
        """Raise a one-line ValueError for impossible sizes."""
        layers.check_heads(self.width, self.num_heads, "ViT")
        if self.pool not in ("cls", "gap", "map"):
            raise ValueError(f"ViT: pool must be 'cls', 'gap' or 'map', got {self.pool!r}")
        if self.feature_layer is not None and not -self.depth - 1 <= self.feature_layer <= self.depth:
            raise ValueError(
                f"ViT: feature_layer {self.feature_layer} is out of range for depth {self.depth}; "
                f"use -{self.depth + 1} .. {self.depth}"
            )
        h, w = image_size
        if h % self.patch_size or w % self.patch_size:
            raise ValueError(
                f"ViT: image size {h}x{w} is not divisible by patch size {self.patch_size}; "
                "choose a patch size that divides the image size"
            )
        if self.stem_colour not in ("joint", "split"):
            raise ValueError(f"ViT: stem_colour must be 'joint' or 'split', got {self.stem_colour!r}")
        if self.stem_colour == "split" and not self.stem_channels:
            raise ValueError(
                "ViT: stem_colour='split' needs a convolutional stem; set stem_channels, e.g. (8, 16, 32)"
            )
        if self.patch_size % 2 ** len(self.stem_channels):
            raise ValueError(
                f"ViT: patch size {self.patch_size} is not divisible by the stem's downsampling "
                f"{2 ** len(self.stem_channels)}; use fewer stem_channels or a larger patch"
            )

    def _split_conv(self, x, channels):
        """The colour-invariant first convolution of ``stem_colour="split"``: zero-mean single-channel
        filters on each colour channel, the three responses combined by their root-sum-square."""
        kernel = self.param(
            "stem_0_kernel",
            layers.dense_init((None, None, None, "embed"), nn.initializers.he_normal()),
            (3, 3, 1, channels),
        )
        kernel = (kernel - kernel.mean(axis=(0, 1, 2), keepdims=True)).astype(self.dtype)
        # as nine shifted copies and one matmul (SAME zero padding): on XLA's CPU backend about 1.3x
        # faster than a convolution over the channels folded into the batch
        b, h, w, _ = x.shape
        padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
        taps = jnp.stack([padded[:, i : i + h, j : j + w] for i in range(3) for j in range(3)], axis=-1)
        y = jnp.einsum("bhwct,tf->bhwcf", taps, kernel.reshape(9, channels))
        y = jnp.sqrt(jnp.sum(jnp.square(y), axis=3) + 1e-6)
        bias = self.param(
            "stem_0_bias", nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)), (channels,)
        )
        return y + bias.astype(self.dtype)

    def _colour_path(self, images):
        """``stem_colour="split"``: a per-pixel layer (on the image at half resolution), averaged over each
        patch and projected: ``[batch, tokens, width]``."""
        images = _mean_pool(images, 2)  # at half resolution: the same colours, a quarter of the cost
        hidden = nn.Dense(
            self.colour_hidden,
            dtype=self.dtype,
            name="colour_pixel",
            kernel_init=layers.dense_init((None, "embed"), nn.initializers.he_normal()),
            bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)),
        )(images)
        hidden = _mean_pool(nn.relu(hidden), self.patch_size // 2)  # one vector per patch
        return nn.Dense(
            self.width,
            use_bias=False,
            dtype=self.dtype,
            name="colour_embed",
            kernel_init=layers.dense_init((None, "embed"), nn.initializers.lecun_normal()),
        )(hidden.reshape(hidden.shape[0], -1, self.colour_hidden))

    def stem(self, x):
        for i, channels in enumerate(self.stem_channels):
            if i == 0 and self.stem_colour == "split":
                x = _max_pool_2x2(nn.relu(self._split_conv(x, channels)))
                continue
            x = nn.Conv(
                channels,
                (3, 3),
                padding="SAME",
                dtype=self.dtype,
                name=f"stem_{i}",
                kernel_init=layers.dense_init((None, None, None, "embed"), nn.initializers.he_normal()),
                bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)),
            )(x)
            x = _max_pool_2x2(nn.relu(x))
        return x

    @nn.compact
    def __call__(self, images):
        self.check(images.shape[1:3])
        pixels = images.astype(self.dtype)
        images = self.stem(pixels)
        p = self.patch_size // 2 ** len(self.stem_channels)
        # Patch embedding: a stride-p convolution, computed as patchify + one matmul (the same maths;
        # much faster than a strided convolution's gradient on CPU). Kernel layout (p, p, channels, width).
        kernel = self.param(
            "patch_kernel",
            layers.dense_init((None, None, None, "embed"), nn.initializers.lecun_normal()),
            (p, p, images.shape[-1], self.width),
        )
        b, h, w, c = images.shape
        patches = images.reshape(b, h // p, p, w // p, p, c)
        x = jnp.einsum("bhpwqc,pqcd->bhwd", patches, kernel.astype(self.dtype)).reshape(b, -1, self.width)
        if self.patch_bias:
            bias = self.param(
                "patch_bias", nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)), (self.width,)
            )
            x = x + bias.astype(self.dtype)
        if self.stem_colour == "split":
            x = x + self._colour_path(pixels)
        x = nn.with_logical_constraint(x, layers.ACT_AXES)

        if self.pool == "cls":
            cls = self.param(
                "cls",
                nn.with_logical_partitioning(nn.initializers.zeros, (None, None, "embed")),
                (1, 1, self.width),
            )
            x = jnp.concatenate([jnp.broadcast_to(cls, (b, 1, self.width)).astype(x.dtype), x], axis=1)
        pos = self.param(
            "pos_embedding",
            nn.with_logical_partitioning(nn.initializers.normal(0.02), (None, None, "embed")),
            (1, x.shape[1], self.width),
        )
        x = nn.with_logical_constraint(x + pos.astype(x.dtype), layers.ACT_AXES)
        if self.pre_norm:
            x = layers.layer_norm("ln_pre", dtype=self.dtype, eps=self.norm_eps)(x)

        x, hidden = layers.Encoder(
            depth=self.depth,
            num_heads=self.num_heads,
            mlp_dim=self.mlp_dim,
            activation=self.activation,
            dtype=self.dtype,
            norm_eps=self.norm_eps,
            remat=self.remat,
            scan=self.scan,
            name="encoder",
        )(x, return_all=True)
        x = layers.layer_norm("ln_post", dtype=self.dtype, eps=self.norm_eps)(x)
        if self.pool == "map":
            pooled = MAPHead(
                num_heads=self.num_heads,
                mlp_dim=self.mlp_dim,
                activation=self.activation,
                norm_eps=self.norm_eps,
                dtype=self.dtype,
                name="map_head",
            )(x)
        else:
            pooled = x[:, 0] if self.pool == "cls" else x.mean(axis=1)
        tokens = x if self.feature_layer is None else hidden[self.feature_layer]
        extras = {"patch_tokens": tokens, "pre_logits": pooled}
        if self.num_classes:
            pooled = nn.Dense(
                self.num_classes,
                dtype=self.dtype,
                kernel_init=layers.dense_init(("embed", "vocab"), nn.initializers.zeros),
                name="head",
            )(pooled)
        return pooled, extras


class MAPHead(nn.Module, kw_only=True):
    """Multi-head attention pooling (SigLIP, big_vision's ``MAPHead``): a learned ``probe`` query attends
    over the tokens (:class:`layers.Attention` with the tokens as its context); then ``y + mlp(ln(y))``.
    Returns ``[batch, width]``."""

    num_heads: int
    mlp_dim: int
    activation: str = "gelu_tanh"
    norm_eps: float = 1e-6
    dtype: layers.Dtype = jnp.float32

    def setup(self):
        # The attention shares this module's scope, so its projections are map_head/{query,key,value,out}
        # (big_vision's and the Hugging Face import's layout), not map_head/attention/...
        self.attention = layers.Attention(num_heads=self.num_heads, dtype=self.dtype)
        nn.share_scope(self, self.attention)

    @nn.compact
    def __call__(self, x):
        b, _, width = x.shape
        probe = self.param(
            "probe",
            nn.with_logical_partitioning(nn.initializers.normal(0.02), (None, None, "embed")),
            (1, 1, width),
        )
        y = self.attention(jnp.broadcast_to(probe, (b, 1, width)).astype(self.dtype), context=x)
        y = y + layers.Mlp(mlp_dim=self.mlp_dim, activation=self.activation, dtype=self.dtype, name="mlp")(
            layers.layer_norm("ln", dtype=self.dtype, eps=self.norm_eps)(y)
        )
        return y[:, 0]
