"""Causal text transformer for the contrastive tower, pooled at the end-of-text (EOT) token.

``TextTransformer(...)(tokens) -> (pooled, extras)``: ``tokens`` is int ``[batch, seq]`` laid out as
``[BOS] words... [EOT] PAD...`` (see ``mmjax.data.tokenizer``); ``pooled`` is ``[batch, width]``,
the final-norm output at the pooling position; ``extras["tokens"]`` holds every position.

Pooling:
* ``"eot"``: the first position whose id is ``eot_id`` (our tokenizers);
* ``"argmax"``: the position of the largest id (OpenAI CLIP, whose EOT has the largest id);
* ``"last"``: the final position;
* ``"mean"``: the mean over every non-padding position (``tokens != pad_id``). With causal attention the
  residual stream of each word reaches the pooled vector directly, so the embedding of a text is close to
  a sum over its words: new combinations of known words ("a green star" when only green circles and blue
  stars were seen) land where their words put them (docs/learning.md measures this on the shapes dataset).
Causal attention means a position never sees padding that follows it, so the pooled vector does
not depend on the padding length. ``causal=False`` (SigLIP) attends in both directions, over padding
too (SigLIP pads every text to ``max_len`` and pools the last position).
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from mmjax.models import layers


class TextTransformer(nn.Module, kw_only=True):
    vocab_size: int
    max_len: int
    width: int
    depth: int
    num_heads: int
    mlp_dim: int
    eot_id: int = 2
    pad_id: int = 0  # "mean" pooling leaves these positions out
    pool: str = "eot"
    activation: str = "gelu"
    dtype: layers.Dtype = jnp.float32
    norm_eps: float = 1e-5  # epsilon of every layer norm (SigLIP: 1e-6)
    causal: bool = True  # False: bidirectional attention (SigLIP)
    remat: str = "none"  # encoder blocks: "none" | "dots" | "full" (layers.Encoder; same params and results)
    scan: bool = False  # nn.scan over the encoder blocks; True changes the parameter layout (layers.Encoder)

    def check(self, seq_len: int) -> None:
        layers.check_heads(self.width, self.num_heads, "TextTransformer")
        if seq_len > self.max_len:
            raise ValueError(
                f"TextTransformer: {seq_len} tokens exceed max_len {self.max_len}; "
                "tokenize with max_len <= the model's max_len"
            )
        if self.pool not in ("eot", "argmax", "last", "mean"):
            raise ValueError(
                f"TextTransformer: pool must be 'eot', 'argmax', 'last' or 'mean', got {self.pool!r}"
            )

    def pool_index(self, tokens):
        if self.pool == "eot":
            return jnp.argmax(tokens == self.eot_id, axis=-1)  # first EOT
        if self.pool == "argmax":
            return jnp.argmax(tokens, axis=-1)
        return jnp.full(tokens.shape[:1], tokens.shape[1] - 1)

    @nn.compact
    def __call__(self, tokens):
        self.check(tokens.shape[1])
        embed = nn.Embed(
            self.vocab_size,
            self.width,
            dtype=self.dtype,
            embedding_init=nn.with_logical_partitioning(nn.initializers.normal(0.02), ("vocab", "embed")),
            name="token_embed",
        )
        pos = self.param(
            "pos_embedding",
            nn.with_logical_partitioning(nn.initializers.normal(0.01), (None, "embed")),
            (self.max_len, self.width),
        )
        x = embed(tokens) + pos[None, : tokens.shape[1]].astype(self.dtype)
        x = nn.with_logical_constraint(x, layers.ACT_AXES)
        x = layers.Encoder(
            depth=self.depth,
            num_heads=self.num_heads,
            mlp_dim=self.mlp_dim,
            activation=self.activation,
            dtype=self.dtype,
            norm_eps=self.norm_eps,
            remat=self.remat,
            scan=self.scan,
            name="encoder",
        )(x, causal=self.causal)
        x = layers.layer_norm("ln_final", dtype=self.dtype, eps=self.norm_eps)(x)
        if self.pool == "mean":
            keep = (tokens != self.pad_id)[..., None].astype(x.dtype)
            pooled = (x * keep).sum(axis=1) / jnp.maximum(keep.sum(axis=1), 1)
        else:
            pooled = jnp.take_along_axis(x, self.pool_index(tokens)[:, None, None], axis=1)[:, 0]
        return pooled, {"tokens": x}
