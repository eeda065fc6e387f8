"""CLIP / SigLIP two-tower model: image and text towers, linear projections, L2 normalisation and a
learned temperature (and, for SigLIP, a learned bias).

``TwoTower(...)(images, tokens) -> (out, extras)`` with ``out = {"image": [B, D], "text": [B, D],
"logit_scale": [], "logit_bias": [] (SigLIP only)}``; embeddings are L2-normalised float32.
``encode_image`` / ``encode_text`` run one tower (use them with ``model.apply(..., method=...)``).

``object_head=True`` adds a second image projection, ``out["image_object"]`` (``encode_image_object``):
the embedding that texts naming one object are scored against -- the short captions of
``data.extra_short_caption`` in training, the zero-shot prompts in evaluation -- while ``out["image"]``
stays the one for whole-scene captions (retrieval). Without it ``encode_image_object`` is
``encode_image``.

``scene_pool="tokens"`` makes ``out["image"]`` a projection of every patch token, flattened, instead of the
pooled output: a caption says where each object is ("a small red star in the top left"), and an average
over tokens keeps that only as far as each token's features carry it; on the shapes dataset image->text
R@1 rises from about 53 to 90 % (docs/learning.md). The object head keeps the pooled output (a shape is
named the same wherever it is).

``image_projection=False`` (SigLIP) uses the image tower's pooled output itself (then ``embed_dim`` must
equal its width); ``text_proj_bias=True`` (SigLIP's text head) gives the text projection a bias.

The temperature is stored as ``log(scale)``, initialised to ``log(1/0.07)`` and clipped at
``max_scale`` (100) in the forward pass, as in CLIP.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax.numpy as jnp

from mmjax.models import layers
from mmjax.models.text import TextTransformer
from mmjax.models.vit import ViT


def _l2_normalize(x):
    x = x.astype(jnp.float32)
    return x / jnp.sqrt(jnp.sum(x * x, axis=-1, keepdims=True) + 1e-12)


class TwoTower(nn.Module, kw_only=True):
    image: ViT
    text: TextTransformer
    embed_dim: int
    temperature_init: float = 1 / 0.07
    max_scale: float = 100.0
    bias_init: float | None = None  # set (e.g. -10) for SigLIP's sigmoid loss
    dtype: layers.Dtype = jnp.float32
    image_projection: bool = True  # False: no image projection (SigLIP)
    text_proj_bias: bool = False  # True: the text projection has a bias (SigLIP)
    object_head: bool = False  # True: a second image projection for texts that name one object
    # what the whole-scene projection (``image``) reads: "pooled" (the tower's pooled output) or "tokens"
    # (every patch token, flattened: a linear map that keeps where things are, which pooling averages away)
    scene_pool: str = "pooled"

    def setup(self):
        if self.scene_pool not in ("pooled", "tokens"):
            raise ValueError(f"TwoTower: scene_pool must be 'pooled' or 'tokens', got {self.scene_pool!r}")
        if self.scene_pool == "tokens" and not self.image_projection:
            raise ValueError(
                "TwoTower: scene_pool='tokens' needs the image projection (image_projection=True)"
            )
        proj = lambda name, bias=False: nn.Dense(  # noqa: E731
            self.embed_dim,
            use_bias=bias,
            dtype=self.dtype,
            name=name,
            kernel_init=layers.dense_init(("embed", "proj"), nn.initializers.normal(0.02)),
            bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("proj",)),
        )
        if self.image_projection:
            self.image_proj = proj("image_proj")
        if self.object_head:
            self.image_proj_object = proj("image_proj_object")
        self.text_proj = proj("text_proj", self.text_proj_bias)
        self.logit_scale = self.param(
            "logit_scale",
            nn.with_logical_partitioning(nn.initializers.constant(math.log(self.temperature_init)), ()),
            (),
        )
        if self.bias_init is not None:
            self.logit_bias = self.param(
                "logit_bias", nn.with_logical_partitioning(nn.initializers.constant(self.bias_init), ()), ()
            )

    def _project_image(self, pooled, extras):
        if self.scene_pool == "tokens":
            tokens = extras["patch_tokens"]
            return _l2_normalize(self.image_proj(tokens.reshape(tokens.shape[0], -1)))
        return _l2_normalize(self.image_proj(pooled) if self.image_projection else pooled)

    def _project_object(self, pooled, extras):
        return (
            _l2_normalize(self.image_proj_object(pooled))
            if self.object_head
            else self._project_image(pooled, extras)
        )

    def encode_image(self, images):
        pooled, extras = self.image(images)
        return self._project_image(pooled, extras), extras

    def encode_image_object(self, images):
        """The image embedding to compare with texts that name one object (zero-shot prompts, the short
        captions): the object head's projection, or ``encode_image``'s where there is none."""
        pooled, extras = self.image(images)
        return self._project_object(pooled, extras), extras

    def encode_image_both(self, images):
        """``((encode_image, encode_image_object), extras)`` from one pass of the image tower."""
        pooled, extras = self.image(images)
        return (self._project_image(pooled, extras), self._project_object(pooled, extras)), extras

    def encode_text(self, tokens):
        pooled, extras = self.text(tokens)
        return _l2_normalize(self.text_proj(pooled)), extras

    def __call__(self, images, tokens):
        pooled, img_extras = self.image(images)
        txt, txt_extras = self.encode_text(tokens)
        out = {
            "image": self._project_image(pooled, img_extras),
            "text": txt,
            "logit_scale": jnp.exp(jnp.minimum(self.logit_scale, math.log(self.max_scale))),
        }
        if self.object_head:
            out["image_object"] = self._project_object(pooled, img_extras)
        if self.bias_init is not None:
            out["logit_bias"] = self.logit_bias
        return out, {"image": img_extras, "text": txt_extras}
