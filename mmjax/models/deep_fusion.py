"""Deep fusion (Flamingo-style): a perceiver resampler turns each image's patch tokens into a fixed
number of visual tokens, and gated cross-attention blocks inside the decoder LM let text tokens
attend to them (Alayrac et al., 2022).

A sequence holds one ``[IMG]`` token where each image occurs (its *media location*), e.g.
``[BOS] [IMG] what colour is the star [SEP] red [EOT]``; ``images`` are ``[B, H, W, 3]`` (one image per
row) or ``[B, T, H, W, 3]`` (``T`` images, the ``t``-th for the ``t``-th ``[IMG]``).

* **Media masking** (``media_mask``): a text token sees the visual tokens of the most recent preceding
  image only (``only_attend_immediate_media=True``, Flamingo's choice) or of every preceding image; the
  ``[IMG]`` token itself belongs to its image. Text before the first image gets no update from the
  gated blocks at all (their output is multiplied by ``has_media``), so its logits are the bare LM's.
* **Several images**: when text may attend to every preceding image, it must also tell them apart
  ("in the second image ..."). ``max_images > 0`` adds a learned embedding per image slot to that
  image's visual tokens (Flamingo's learned time embeddings, per image instead of per frame).
* **Gated cross-attention** (``GatedCrossAttentionBlock``): ``x + tanh(a) * xattn(ln(x), visual)``,
  then ``x + tanh(b) * ffw(ln(x))``, with ``a = b = 0`` at initialisation, so the untrained model *is*
  the LM. One block before every ``cross_attn_every_n_layers``-th LM layer. Visual features and media
  locations are arguments of pure functions, not module state (open_flamingo's ``condition_vis_x``).
* **Resampler** (``PerceiverResampler``): ``num_latents`` learned queries attend to the patch tokens
  and to themselves, ``resampler_depth`` times. ``num_latents=0`` uses a linear adapter on the patch
  tokens instead. ``grid_pos_embed=True`` first adds a learned embedding per patch to the patch tokens
  (``grid_pos_std``, ``grid_pos_init``: as in early fusion), so that the visual tokens can carry where
  things are (a CLIP tower's patch tokens mostly do not).
* **New tokens**: ``[IMG]`` and ``[SEP]`` get their own trainable embeddings (``new_token_embed``), so
  the LM's embedding table can stay frozen.

``DeepFusion(...)(images, tokens) -> (logits, extras)``; ``prefill``/``decode`` generate with a KV cache
(the visual tokens are computed once, at prefill), through ``mmjax.generate`` like early fusion.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from mmjax.models import layers
from mmjax.models import lm as lm_lib
from mmjax.models.lm import DecoderLM
from mmjax.models.vit import ViT


def media_mask(media: jnp.ndarray, num_images: int, tokens_per_image: int, only_immediate: bool):
    """bool ``[B, 1, S, num_images * tokens_per_image]``: which visual tokens each text position sees.
    ``media [B, S]`` counts the ``[IMG]`` tokens at or before each position (0: no image yet)."""
    image_of_key = jnp.repeat(jnp.arange(1, num_images + 1), tokens_per_image)  # [T * L]
    m = media[..., None]
    return ((image_of_key == m) if only_immediate else (image_of_key <= m))[:, None]


def _cross_attention(num_heads: int, dtype, name: str) -> layers.Attention:
    """Queries from the text (or latents), keys and values from ``context``; no biases, Llama's names."""
    return layers.Attention(
        num_heads=num_heads, use_bias=False, names=layers.LLAMA_NAMES, dtype=dtype, name=name
    )


class PerceiverResampler(nn.Module, kw_only=True):
    """``[N_images, P, D]`` patch tokens -> ``[N_images, num_latents, D]`` visual tokens."""

    num_latents: int
    depth: int
    num_heads: int
    mlp_dim: int
    dtype: layers.Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        d = x.shape[-1]
        latents = self.param(
            "latents",
            nn.with_logical_partitioning(nn.initializers.normal(0.02), (None, "embed")),
            (self.num_latents, d),
        )
        z = jnp.broadcast_to(latents.astype(self.dtype), (x.shape[0], self.num_latents, d))
        for i in range(self.depth):  # the latents attend to the patch tokens and to themselves
            ctx = jnp.concatenate(
                [
                    layers.layer_norm(f"ln_media_{i}", dtype=self.dtype)(x),
                    layers.layer_norm(f"ln_latents_{i}", dtype=self.dtype)(z),
                ],
                axis=1,
            )
            z = z + _cross_attention(self.num_heads, self.dtype, f"attn_{i}")(
                layers.layer_norm(f"ln_query_{i}", dtype=self.dtype)(z), context=ctx
            )
            z = z + layers.Mlp(mlp_dim=self.mlp_dim, activation="gelu", dtype=self.dtype, name=f"mlp_{i}")(
                layers.layer_norm(f"ln_mlp_{i}", dtype=self.dtype)(z)
            )
        return layers.layer_norm("ln_out", dtype=self.dtype)(z)


class GatedCrossAttentionBlock(nn.Module, kw_only=True):
    num_heads: int
    mlp_dim: int
    dtype: layers.Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, visual, mask, has_media):
        def gate(name):
            init = nn.with_logical_partitioning(nn.initializers.zeros, ())
            return jnp.tanh(self.param(name, init, ())).astype(self.dtype)

        on = has_media[..., None].astype(self.dtype)  # text before the first image: no update at all
        h = _cross_attention(self.num_heads, self.dtype, "xattn")(
            layers.layer_norm("ln_xattn", dtype=self.dtype)(x), context=visual, mask=mask
        )
        x = x + gate("attn_gate") * h * on
        h = layers.Mlp(mlp_dim=self.mlp_dim, activation="gelu", dtype=self.dtype, name="ffw")(
            layers.layer_norm("ln_ffw", dtype=self.dtype)(x)
        )
        return nn.with_logical_constraint(x + gate("ffw_gate") * h * on, layers.ACT_AXES)


class DeepFusion(nn.Module, kw_only=True):
    image: ViT
    lm: DecoderLM
    image_id: int
    sep_id: int
    pad_id: int = 0
    num_latents: int = 8  # 0: no resampler (a linear adapter on the patch tokens)
    resampler_depth: int = 2
    resampler_heads: int = 2
    cross_attn_every_n_layers: int = 1
    only_attend_immediate_media: bool = True
    max_images: int = 0  # > 0: a learned embedding per image slot, added to its visual tokens
    # True: a learned embedding per patch, added to the patch tokens before the resampler, so the visual
    # tokens can say where things are (as EarlyFusion.grid_pos_embed)
    grid_pos_embed: bool = False
    grid_pos_std: float = 0.02
    grid_pos_init: str = "normal"  # or "sincos": 2-D sine-cosine coordinates (layers.sincos_grid)
    attn_mask: str = "causal"
    eot_id: int | None = None
    turns: str = "conversation"  # or "independent": rows pack independent questions (lm.text_layout)
    dtype: layers.Dtype = jnp.float32

    def num_image_tokens(self, image_size: int) -> int:
        """How many ``[IMG]`` tokens stand for one image in the text: one (its media location)."""
        self.check(image_size)
        return 1

    def check(self, image_size: int) -> None:
        self.image.check((image_size, image_size))
        self.lm.check()
        layers.check_heads(self.image.width, self.resampler_heads, "DeepFusion resampler")
        if self.cross_attn_every_n_layers < 1:
            raise ValueError(
                f"DeepFusion: cross_attn_every_n_layers must be >= 1, got {self.cross_attn_every_n_layers}"
            )
        if self.attn_mask not in ("causal", "prefix"):
            raise ValueError(f"DeepFusion: attn_mask must be 'causal' or 'prefix', got {self.attn_mask!r}")
        lm_lib.check_turns("DeepFusion", self.turns, self.eot_id, self.attn_mask)
        if self.max_images < 0:
            raise ValueError(f"DeepFusion: max_images must be >= 0, got {self.max_images}")
        if self.lm.scan:
            raise ValueError(
                "DeepFusion: model.lm.scan=True is not supported (the gated cross-attention sits "
                "between decoder blocks, which scan runs as one loop); set model.lm.scan=False"
            )

    def setup(self):
        w = self.image.width
        if self.num_latents:
            self.resampler = PerceiverResampler(
                num_latents=self.num_latents,
                depth=self.resampler_depth,
                num_heads=self.resampler_heads,
                mlp_dim=4 * w,
                dtype=self.dtype,
            )
        else:
            self.adapter = nn.Dense(
                w,
                dtype=self.dtype,
                kernel_init=layers.dense_init((None, "embed")),
                bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)),
            )
        if self.grid_pos_embed:
            self.grid_pos = layers.AddPositionEmbedding(init_std=self.grid_pos_std, init=self.grid_pos_init)
        n = self.cross_attn_every_n_layers
        self.xattn = [
            GatedCrossAttentionBlock(num_heads=self.lm.num_heads, mlp_dim=self.lm.mlp_dim, dtype=self.dtype)
            for _ in range(0, self.lm.depth, n)
        ]
        self.new_token_embed = self.param(
            "new_token_embed",
            nn.with_logical_partitioning(nn.initializers.normal(0.02), (None, "embed")),
            (2, self.lm.width),
        )
        if self.max_images:  # as Flamingo's learned time embeddings (random normal, as open_flamingo's)
            self.image_pos_embed = self.param(
                "image_pos_embed",
                nn.with_logical_partitioning(nn.initializers.normal(1.0), (None, "embed")),
                (self.max_images, self.image.width),
            )

    def visual_tokens(self, images):
        """``[B, T, L, D]``: ``L`` visual tokens for each of a row's ``T`` images."""
        if images.ndim == 4:
            images = images[:, None]
        b, t = images.shape[:2]
        _, extras = self.image(images.reshape(b * t, *images.shape[2:]))
        x = extras["patch_tokens"]
        if self.grid_pos_embed:
            x = self.grid_pos(x)
        x = self.resampler(x) if self.num_latents else self.adapter(x)
        x = x.reshape(b, t, *x.shape[1:])
        if self.max_images:
            if t > self.max_images:
                raise ValueError(
                    f"DeepFusion: {t} images per row but max_images={self.max_images}; raise model.max_images"
                )
            x = x + self.image_pos_embed[:t, None].astype(x.dtype)
        return x

    def embed(self, tokens):
        x = self.lm.embed(tokens)
        new = self.new_token_embed.astype(x.dtype)
        x = jnp.where((tokens == self.image_id)[..., None], new[0], x)
        return jnp.where((tokens == self.sep_id)[..., None], new[1], x)

    def fuse(self, visual, media):
        """``before_layer(i, x)`` for the LM: the gated block before every N-th layer, text attending
        to ``visual [B, T, L, D]`` as ``media [B, S]`` allows."""
        b, t, n_tok, d = visual.shape
        # Rows without an image would have nothing to attend to: let them see everything (their update
        # is multiplied by has_media = 0 anyway), so no kernel ever meets an empty softmax.
        mask = media_mask(media, t, n_tok, self.only_attend_immediate_media) | (media == 0)[:, None, :, None]
        flat = visual.reshape(b, t * n_tok, d)

        def before_layer(i, x):
            n = self.cross_attn_every_n_layers
            return x if i % n else self.xattn[i // n](x, flat, mask, media > 0)

        return before_layer

    def inputs(self, images, tokens):
        """``(embeddings, valid, prefix, visual [B, T, L, D], media [B, S])``."""
        valid = tokens != self.pad_id
        prefix = (
            lm_lib.prefix_through_first(tokens == self.sep_id, valid) if self.attn_mask == "prefix" else None
        )
        media = jnp.cumsum(tokens == self.image_id, axis=1)
        return self.embed(tokens), valid, prefix, self.visual_tokens(images), media

    def __call__(self, images, tokens):
        x, valid, prefix, visual, media = self.inputs(images, tokens)
        positions, mask = lm_lib.text_layout(
            tokens, valid, prefix, turns=self.turns, image_id=self.image_id, eot_id=self.eot_id
        )
        logits, extras = self.lm(
            embeddings=x, positions=positions, mask=mask, before_layer=self.fuse(visual, media)
        )
        return logits, {"hidden": extras["hidden"], "valid": valid, "prefix": prefix, "media": media}

    def prefill(self, images, prompts, max_new_tokens: int):
        x, valid, prefix, visual, media = self.inputs(images, prompts)
        logits, state = lm_lib.prefill(
            self.lm, x, valid, prefix, max_new_tokens, before_layer=self.fuse(visual, media)
        )
        return logits, dict(state, visual=visual, media=media[:, -1])

    def decode(self, token, state):
        """One step; generated tokens add no image (``[IMG]`` is never sampled), so each keeps seeing
        the prompt's last image(s)."""
        fuse = self.fuse(state["visual"], state["media"][:, None])
        return lm_lib.decode(self.lm, self.embed(token[:, None]), state, before_layer=fuse)
