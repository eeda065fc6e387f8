"""Named models. ``list_models()`` names them; ``model_config(name)`` gives a plain dict that
configs copy and override; ``build(cfg)`` turns such a dict into a linen module.

Model configs:

* ``{"type": "two_tower", "image_size", "embed_dim", "image": {ViT fields}, "text": {TextTransformer
  fields}}`` (plus optional ``temperature_init``, ``bias_init``): CLIP / SigLIP;
* ``{"type": "early_fusion", "image_size", "image": {ViT fields}, "lm": {DecoderLM fields}, "projector",
  "vision_tokens", "image_pool", "image_pool_op", "grid_pos_embed", "grid_pos_std", "grid_pos_init",
  "attn_mask", "turns", "fixed_image_tokens"}``: LLaVA-style; the special token ids come from the tokenizer
  (``build(cfg, dtype, image_id=..., sep_id=..., pad_id=..., eot_id=...)``);
* ``{"type": "deep_fusion", ..., "num_latents", "resampler_depth", "resampler_heads",
  "cross_attn_every_n_layers", "only_attend_immediate_media", "max_images", "grid_pos_embed",
  "grid_pos_std", "grid_pos_init", "attn_mask", "turns"}``: Flamingo-style;
* ``{"type": "lm", "image_size", "lm": {DecoderLM fields}, "turns"}``: the LM alone, images ignored (a blind
  baseline, and LM pretraining for the fusion models).

A config imported from Hugging Face (``mmjax.interop.hf``) also has an ``hf`` entry (the source's
architecture and token ids, which the module does not need) and, for early fusion, the special token
ids ``image_id``, ``sep_id``, ``pad_id``; ``build`` ignores ``hf``, and its ``fields`` override the ids.
"""

from __future__ import annotations

import copy
import re
from typing import Any, Mapping

import jax
import jax.numpy as jnp

from mmjax.models import lm as lm_lib
from mmjax.models import vit as vit_lib

_CLIP_VISION = dict(pool="cls", patch_bias=False, pre_norm=True, activation="quick_gelu")
_CLIP_TEXT = dict(vocab_size=49408, max_len=77, pool="argmax", activation="quick_gelu")


def _clip(vision: str, image_size: int, embed_dim: int, text_width: int, text_heads: int) -> dict:
    return dict(
        type="two_tower",
        image_size=image_size,
        embed_dim=embed_dim,
        image=dict(**vit_lib.variant(vision), **_CLIP_VISION),
        text=dict(width=text_width, depth=12, num_heads=text_heads, mlp_dim=4 * text_width, **_CLIP_TEXT),
    )


_MODELS: dict[str, dict] = {
    # OpenAI CLIP architectures (parameter counts match the released checkpoints exactly).
    "clip-vit-b32": _clip("B/32", 224, 512, 512, 8),
    "clip-vit-b16": _clip("B/16", 224, 512, 512, 8),
    "clip-vit-l14": _clip("L/14", 224, 768, 768, 12),
    # Small two-tower model for the embedded 64x64 shapes dataset (trains on a laptop CPU).
    "clip-shapes": dict(
        type="two_tower",
        image_size=64,
        embed_dim=64,
        image=dict(
            width=64,
            depth=2,
            num_heads=2,
            mlp_dim=256,
            patch_size=8,
            stem_channels=(8, 16, 32),
            # colour-invariant first convolution + a separate colour path (mmjax/models/vit.py): shapes
            # named alike in every colour, so unseen colour-shape pairs too (docs/learning.md)
            stem_colour="split",
            pool="gap",
            patch_bias=True,
            pre_norm=False,
            activation="gelu",
        ),
        text=dict(
            vocab_size=128,
            max_len=32,
            width=64,
            depth=2,
            num_heads=2,
            mlp_dim=256,
            eot_id=2,
            pool="eot",
            activation="gelu",
        ),
    ),
}

# The vision tower of "clip-shapes" (so its CLIP checkpoint loads into it) and a small decoder LM.
_MODELS["llava-shapes"] = dict(
    type="early_fusion",
    image_size=64,
    image=copy.deepcopy(_MODELS["clip-shapes"]["image"]),
    lm=lm_lib.variant("lm-shapes", vocab_size=128),
    projector="mlp2x_gelu",
    vision_tokens="patches",
    image_pool=2,
    image_pool_op="mean",
    grid_pos_embed=False,
    grid_pos_std=0.02,
    grid_pos_init="normal",
    attn_mask="prefix",
    turns="conversation",
    fixed_image_tokens=False,
)

# The same vision tower and LM with Flamingo-style gated cross-attention (a resampler to 8 tokens).
_MODELS["flamingo-shapes"] = dict(
    type="deep_fusion",
    image_size=64,
    image=copy.deepcopy(_MODELS["clip-shapes"]["image"]),
    lm=lm_lib.variant("lm-shapes", vocab_size=128),
    num_latents=8,
    resampler_depth=2,
    resampler_heads=2,
    cross_attn_every_n_layers=1,
    only_attend_immediate_media=True,
    max_images=0,
    grid_pos_embed=False,
    grid_pos_std=0.02,
    grid_pos_init="normal",
    attn_mask="causal",
    turns="conversation",
)

# The LM of both fusion models on its own (text-only pretraining, and the blind VQA baseline).
_MODELS["lm-shapes"] = dict(
    type="lm", image_size=64, lm=lm_lib.variant("lm-shapes", vocab_size=128), turns="conversation"
)


def list_models(type: str | None = None) -> list[str]:  # shadows the builtin: named like the config key
    """Names of the models (of one ``type``: "two_tower", "early_fusion", "deep_fusion", "lm"), sorted."""
    return sorted(name for name, cfg in _MODELS.items() if type in (None, cfg["type"]))


# Speed/memory levers of the towers, listed in every named config so that the command line can set them
# (``--config.model.image.remat=dots``); the defaults are the plain stack. See docs/performance.md.
_LEVERS = {
    "image": {"remat": "none", "scan": False},
    "text": {"remat": "none", "scan": False},
    "lm": {"remat": "none", "scan": False},
}


def model_config(name: str) -> dict:
    if name not in _MODELS:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(list_models())}")
    cfg = copy.deepcopy(_MODELS[name])
    for tower, levers in _LEVERS.items():
        if isinstance(cfg.get(tower), dict):
            cfg[tower] = {**levers, **cfg[tower]}
    return cfg


def unstack_layers(params: Mapping) -> dict:
    """Parameters (plain arrays, e.g. ``nn.unbox``-ed) of towers built with ``scan=True`` in the unrolled
    layout: every ``blocks`` entry (a leading ``layers`` axis) becomes ``block_0 ... block_{n-1}``, what
    the same model with ``scan=False`` takes (and what the Hugging Face export reads). The inverse of
    :func:`stack_layers`."""
    out = {}
    for key, value in params.items():
        if key == "blocks":
            depth = jax.tree.leaves(value)[0].shape[0]
            out.update({f"block_{i}": jax.tree.map(lambda x, i=i: x[i], value) for i in range(depth)})
        else:
            out[key] = unstack_layers(value) if isinstance(value, Mapping) else value
    return out


def stack_layers(params: Mapping) -> dict:
    """The inverse of :func:`unstack_layers`: every run ``block_0 ... block_{n-1}`` becomes one ``blocks``
    entry with a leading axis, the layout of towers (and LMs) built with ``scan=True``."""
    names = [k for k in params if re.fullmatch(r"block_\d+", k)]
    out = {k: stack_layers(v) if isinstance(v, Mapping) else v for k, v in params.items() if k not in names}
    if names:
        if sorted(names) != sorted(f"block_{i}" for i in range(len(names))):
            raise ValueError(
                f"stack_layers: blocks {sorted(names)} are not block_0 ... block_{len(names) - 1}"
            )
        out["blocks"] = jax.tree.map(
            lambda *xs: jnp.stack(xs), *[params[f"block_{i}"] for i in range(len(names))]
        )
    return out


DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def build(cfg: Mapping[str, Any], dtype: str = "float32", **fields):
    """Build the linen module described by a model config (a dict or ConfigDict); ``fields`` are extra
    module fields that are not hyper-parameters (the fusion models' special token ids)."""
    from mmjax.models.deep_fusion import DeepFusion
    from mmjax.models.early_fusion import EarlyFusion
    from mmjax.models.text import TextTransformer
    from mmjax.models.two_tower import TwoTower

    cfg = {k: v for k, v in dict(cfg).items() if k != "hf"}  # "hf": where an imported model came from
    cfg.update(fields)  # module fields given here win over the config's (an imported LLaVA's token ids)
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    kind = cfg.pop("type", "two_tower")
    dt = DTYPES[dtype]
    cfg.pop("image_size", None)
    if kind == "lm":
        return lm_lib.BlindLM(lm=lm_lib.DecoderLM(**dict(cfg.pop("lm")), dtype=dt), dtype=dt, **cfg)
    image = vit_lib.ViT(**dict(cfg.pop("image")), dtype=dt)
    if kind == "two_tower":
        return TwoTower(image=image, text=TextTransformer(**dict(cfg.pop("text")), dtype=dt), dtype=dt, **cfg)
    if kind in ("early_fusion", "deep_fusion"):
        cls = EarlyFusion if kind == "early_fusion" else DeepFusion
        return cls(image=image, lm=lm_lib.DecoderLM(**dict(cfg.pop("lm")), dtype=dt), dtype=dt, **cfg)
    raise ValueError(f"unknown model type {kind!r}; known types: two_tower, early_fusion, deep_fusion, lm")
