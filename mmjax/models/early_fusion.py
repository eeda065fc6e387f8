"""Early fusion (LLaVA-style): a vision tower's patch tokens, projected into the language model's
embedding space, replace the image placeholder tokens of the prompt; the decoder LM does the rest.

A sequence is laid out as ``[BOS] [IMG] x N prompt... [SEP] answer... [EOT] PAD...`` (see
``mmjax.data.pipeline.encode_vlm``): the ``N`` placeholders take the ``N`` projected image tokens, in
order. With ``images [B, T, H, W, 3]`` there are ``T x N`` placeholders, taking the images' tokens one
image after the other (their positions tell the images apart). ``attn_mask="prefix"`` makes image +
prompt + the first ``[SEP]`` one bidirectional prefix (prefix-LM, as in PaliGemma); ``"causal"`` keeps
every token causal (LLaVA). Only answer tokens carry a loss (the task's job, with
``losses.answer_weights``). A row may hold more turns after the first answer (``question [SEP] answer
[EOT]``): they are causal, and each answer carries a loss. With ``turns="conversation"`` a later turn
sees the earlier ones (a dialogue); with ``turns="independent"`` (causal mask only) it sees the image
and itself, at the positions it would have alone (``lm.text_layout``): a row packs independent
questions, as a one-question prompt is asked at generation, and no answer can be read off an earlier
turn's words.

``EarlyFusion(...)(images, tokens) -> (logits [B, S, vocab], extras)`` for training and scoring;
``prefill(images, prompts, max_new_tokens)`` and ``decode(token, state)`` generate with a KV cache
(``mmjax.generate``). Both paths build their inputs with the same functions, so decoding with the
cache gives the tokens of decoding by full recomputation.

Projectors: ``linear`` or ``mlp{N}x_gelu`` (N linear layers with GELU between; LLaVA-1.5 uses
``mlp2x_gelu``). ``vision_tokens``: ``"patches"`` (patch tokens only) or ``"all"`` (with the CLS token
when the tower has one). ``image_pool=k`` merges k x k neighbouring patches first (k^2 fewer image
tokens for the LM): ``image_pool_op="mean"`` averages them, ``"concat"`` lays them side by side in one
k^2-times-wider vector for the projector (space-to-depth, InternVL's "pixel shuffle"), so that a small
object is not averaged with its neighbours. ``grid_pos_embed=True`` adds a learned embedding per grid
token to the projected tokens (normal(``grid_pos_std``) at init, or with ``grid_pos_init="sincos"`` 2-D
sine-cosine coordinates of that RMS, ``layers.sincos_grid``), so each token says where it is: a CLIP
tower's patch tokens keep little of their position embedding (a pooled contrastive loss has little use
for it), and the LM's rotary positions shape attention scores, not what an attended token passes on.
"""

from __future__ import annotations

import re

import flax.linen as nn
import jax.numpy as jnp

from mmjax.models import layers
from mmjax.models import lm as lm_lib
from mmjax.models.lm import DecoderLM
from mmjax.models.vit import ViT


class EarlyFusion(nn.Module, kw_only=True):
    image: ViT
    lm: DecoderLM
    image_id: int
    sep_id: int
    pad_id: int = 0
    projector: str = "mlp2x_gelu"
    vision_tokens: str = "patches"
    image_pool: int = 1
    image_pool_op: str = "mean"
    grid_pos_embed: bool = False
    grid_pos_std: float = 0.02
    grid_pos_init: str = "normal"  # or "sincos": 2-D sine-cosine coordinates (layers.sincos_grid)
    attn_mask: str = "prefix"
    eot_id: int | None = None
    turns: str = "conversation"  # or "independent": rows pack independent questions (lm.text_layout)
    fixed_image_tokens: bool = False  # every LM block reads the projected image tokens as they came in
    dtype: layers.Dtype = jnp.float32

    def projector_depth(self) -> int:
        m = re.fullmatch(r"linear|mlp(\d+)x_gelu", self.projector)
        if not m or (m.group(1) and int(m.group(1)) < 1):
            raise ValueError(
                f"EarlyFusion: unknown projector {self.projector!r}; use 'linear' or 'mlp<N>x_gelu'"
            )
        return int(m.group(1) or 1)

    def num_image_tokens(self, image_size: int) -> int:
        """How many ``[IMG]`` placeholders a prompt needs for images of ``image_size`` pixels."""
        self.check(image_size)
        grid = image_size // self.image.patch_size // self.image_pool
        return grid * grid + self.keeps_cls()

    def keeps_cls(self) -> bool:
        """Whether the image tokens start with the tower's CLS token."""
        return self.vision_tokens == "all" and self.image.pool == "cls"

    def check(self, image_size: int) -> None:
        self.image.check((image_size, image_size))
        self.lm.check()
        self.projector_depth()
        if self.vision_tokens not in ("patches", "all"):
            raise ValueError(
                f"EarlyFusion: vision_tokens must be 'patches' or 'all', got {self.vision_tokens!r}"
            )
        if self.image_pool_op not in ("mean", "concat"):
            raise ValueError(
                f"EarlyFusion: image_pool_op must be 'mean' or 'concat', got {self.image_pool_op!r}"
            )
        if self.image_pool_op == "concat" and self.image_pool > 1 and self.keeps_cls():
            raise ValueError(
                "EarlyFusion: image_pool_op='concat' makes the grid tokens wider than the CLS token; "
                "use vision_tokens='patches' or image_pool_op='mean'"
            )
        if self.attn_mask not in ("causal", "prefix"):
            raise ValueError(f"EarlyFusion: attn_mask must be 'causal' or 'prefix', got {self.attn_mask!r}")
        lm_lib.check_turns("EarlyFusion", self.turns, self.eot_id, self.attn_mask)
        if self.fixed_image_tokens and self.lm.scan:
            raise ValueError(
                "EarlyFusion: fixed_image_tokens=True resets the image tokens between the LM's blocks, "
                "which a scanned LM (lm.scan=True) runs as one loop; set lm.scan=False"
            )
        grid = image_size // self.image.patch_size
        if self.image_pool < 1 or grid % self.image_pool:
            raise ValueError(
                f"EarlyFusion: image_pool {self.image_pool} does not divide the {grid}x{grid} patch "
                "grid; choose a divisor"
            )

    def setup(self):
        self.proj = [
            nn.Dense(
                self.lm.width,
                dtype=self.dtype,
                kernel_init=layers.dense_init((None, "embed")),
                bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)),
            )
            for _ in range(self.projector_depth())
        ]
        if self.grid_pos_embed:
            self.grid_pos = layers.AddPositionEmbedding(init_std=self.grid_pos_std, init=self.grid_pos_init)

    def image_tokens(self, images):
        """``[B, T * N, lm.width]``: the projected image tokens that fill the placeholders, image after
        image for ``images [B, T, H, W, 3]`` (``[B, H, W, 3]``: T = 1)."""
        if images.ndim == 5:  # several images per row: their tokens one after the other
            b, t = images.shape[:2]
            x = self.image_tokens(images.reshape(b * t, *images.shape[2:]))
            return nn.with_logical_constraint(x.reshape(b, t * x.shape[1], x.shape[2]), layers.ACT_AXES)
        _, extras = self.image(images)
        x = extras["patch_tokens"]
        cls, x = (x[:, :1], x[:, 1:]) if self.image.pool == "cls" else (None, x)
        if self.image_pool > 1:
            b, n, w = x.shape
            g, k = int(round(n**0.5)), self.image_pool
            x = x.reshape(b, g // k, k, g // k, k, w)
            if self.image_pool_op == "mean":
                x = x.mean(axis=(2, 4)).reshape(b, -1, w)
            else:  # "concat": space-to-depth, the k x k patches side by side in one k^2 * w vector
                x = x.transpose(0, 1, 3, 2, 4, 5).reshape(b, (g // k) ** 2, k * k * w)
        n_cls = int(self.keeps_cls())
        if n_cls:
            x = jnp.concatenate([cls, x], axis=1)
        for i, dense in enumerate(self.proj):
            x = dense(x) if i == 0 else dense(layers.ACTIVATIONS["gelu"](x))
        if self.grid_pos_embed:  # the grid tokens only (not the CLS token)
            x = jnp.concatenate([x[:, :n_cls], self.grid_pos(x[:, n_cls:])], axis=1)
        return nn.with_logical_constraint(x, layers.ACT_AXES)

    def inputs(self, images, tokens):
        """``(embeddings, valid, prefix)`` of a batch: token embeddings with the image tokens spliced in
        at the ``[IMG]`` placeholders, the real-token mask and the prefix-LM prefix (or None)."""
        valid = tokens != self.pad_id
        is_image = tokens == self.image_id
        img = self.image_tokens(images)
        slot = jnp.clip(jnp.cumsum(is_image, axis=1) - 1, 0, img.shape[1] - 1)  # k-th placeholder <- token k
        spliced = jnp.take_along_axis(img, slot[..., None], axis=1)
        x = jnp.where(is_image[..., None], spliced.astype(self.dtype), self.lm.embed(tokens))
        prefix = (
            lm_lib.prefix_through_first(tokens == self.sep_id, valid) if self.attn_mask == "prefix" else None
        )
        return x, valid, prefix

    def keep_image_tokens(self, tokens, x):
        """``before_layer`` for the LM with ``fixed_image_tokens``: before every block after the first,
        the image positions get their input ``x`` back, so each block's keys and values there are the
        projected image tokens themselves (the LM reads the image, it does not rewrite it); None
        without it."""
        if not self.fixed_image_tokens:
            return None
        is_image = (tokens == self.image_id)[..., None]
        return lambda i, h: h if i == 0 else jnp.where(is_image, x.astype(h.dtype), h)

    def __call__(self, images, tokens):
        x, valid, prefix = self.inputs(images, tokens)
        positions, mask = lm_lib.text_layout(
            tokens, valid, prefix, turns=self.turns, image_id=self.image_id, eot_id=self.eot_id
        )
        logits, extras = self.lm(
            embeddings=x, positions=positions, mask=mask, before_layer=self.keep_image_tokens(tokens, x)
        )
        return logits, {"hidden": extras["hidden"], "valid": valid, "prefix": prefix}

    def prefill(self, images, prompts, max_new_tokens: int):
        """Run the (left-padded) prompts, filling a KV cache with room for ``max_new_tokens`` more;
        returns ``(logits of the last position [B, vocab], state)`` (see ``lm.prefill``)."""
        x, valid, prefix = self.inputs(images, prompts)
        return lm_lib.prefill(
            self.lm, x, valid, prefix, max_new_tokens, before_layer=self.keep_image_tokens(prompts, x)
        )

    def decode(self, token, state):
        """One step: ``token [B]`` goes into the next cache slot; returns ``(logits [B, vocab], state)``."""
        return lm_lib.decode(self.lm, self.lm.embed(token[:, None]), state)
