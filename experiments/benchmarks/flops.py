"""Analytic FLOPs of one training step, extending ``mmjax.profile`` (two-tower forward) to the decoder LM
and the early-fusion model.

Convention (open_clip's and MaxText's): FLOPs = 2 x multiply-accumulates of the matrix products; layer
norms, softmax, activations, rotary embeddings, embedding look-ups and the optimizer are not counted.
A training step is 3 x the forward pass (the backward pass costs two matmuls per forward matmul: one for
the input's gradient, one for the weight's). Attention is counted over the full ``S x S`` score matrix
(masked entries included), as the dense kernels compute it.

Per example, forward:

  two-tower (mmjax.profile): image_flops + text_flops; plus, per step, the B x B logits: 2 B^2 E
  decoder LM (S tokens, width D, depth L, MLP width M, K key/value heads of size h = D / heads, vocab V):
      2 * [ L * (2 S D^2  +  2 S D (K h)  +  2 S^2 D  +  3 S D M)  +  S D V ]
      (q and out projections 2 S D^2; k and v projections 2 S D K h; q.k^T and attention x v 2 S^2 D;
       SwiGLU gate, up, down 3 S D M; the LM head S D V)
  early fusion: ViT (image_flops without the projection to embed_dim) per image
      + projector 2 * N_img * (D_vit D + (n - 1) D^2) for an ``mlp{n}x_gelu`` projector on N_img tokens
      + the decoder LM over all S positions (image placeholders included)
"""

from __future__ import annotations

from mmjax import profile


def two_tower_forward_flops(cfg: dict) -> int:
    """Forward FLOPs of one image-text pair (open_clip's GFLOPs column)."""
    return profile.image_flops(cfg) + profile.text_flops(cfg)


def two_tower_train_flops(cfg: dict, batch: int) -> int:
    """One training step on ``batch`` pairs: 3 x (forward per pair x batch + the B x B logits)."""
    return 3 * (two_tower_forward_flops(cfg) * batch + 2 * batch * batch * cfg["embed_dim"])


def lm_forward_flops(lm: dict, seq: int) -> int:
    """Forward FLOPs of the decoder LM on one sequence of ``seq`` positions."""
    d, m, v = lm["width"], lm["mlp_dim"], lm["vocab_size"]
    kv = (lm.get("num_kv_heads") or lm["num_heads"]) * (d // lm["num_heads"])
    per_layer = 2 * seq * d * d + 2 * seq * d * kv + 2 * seq * seq * d + 3 * seq * d * m
    return 2 * (lm["depth"] * per_layer + seq * d * v)


def projector_depth(projector: str) -> int:
    return 1 if projector == "linear" else int(projector.removeprefix("mlp").removesuffix("x_gelu"))


def early_fusion_image_tokens(cfg: dict) -> int:
    im = cfg["image"]
    grid = cfg["image_size"] // im["patch_size"] // cfg.get("image_pool", 1)
    return grid * grid + (cfg.get("vision_tokens", "patches") == "all" and im.get("pool", "cls") == "cls")


def early_fusion_forward_flops(cfg: dict, seq: int) -> int:
    """Forward FLOPs of one example: one image through the ViT and projector, ``seq`` LM positions."""
    vit = profile.image_flops(dict(cfg, embed_dim=0))  # no projection to an embedding
    n_img, d_vit, d = early_fusion_image_tokens(cfg), cfg["image"]["width"], cfg["lm"]["width"]
    proj = 2 * n_img * (d_vit * d + (projector_depth(cfg.get("projector", "mlp2x_gelu")) - 1) * d * d)
    return vit + proj + lm_forward_flops(cfg["lm"], seq)


def early_fusion_train_flops(cfg: dict, batch: int, seq: int) -> int:
    return 3 * batch * early_fusion_forward_flops(cfg, seq)
