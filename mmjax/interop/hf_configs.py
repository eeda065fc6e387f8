"""The config converters per architecture: a transformers ``config.json`` <-> an mmjax model section.

``<arch>_from_hf(hf_config, state)`` gives the mmjax model section (a dict in the form of the repo's
configs, plus ``hf``: the source architecture and the token ids the module does not need);
``<arch>_to_hf(cfg, flat_params)`` gives the ``config.json`` dict, after checking that the architecture
can express every option of ``cfg``. Either way, an option the other side lacks is an
:class:`InteropError` naming it. The state dict is read only for values that live in the weights
(the logit scale and bias).
"""

from __future__ import annotations

import math
from typing import Mapping

import numpy as np

from mmjax.interop import InteropError

_ACT_FROM_HF = {
    "quick_gelu": "quick_gelu",
    "gelu": "gelu",
    "gelu_pytorch_tanh": "gelu_tanh",
    "gelu_new": "gelu_tanh",
    "relu": "relu",
}
_ACT_TO_HF = {"quick_gelu": "quick_gelu", "gelu": "gelu", "gelu_tanh": "gelu_pytorch_tanh", "relu": "relu"}


# ----------------------------------------------------------------------------- shared pieces
def _get(d: Mapping, key: str, default=None):
    value = d.get(key, default)
    return default if value is None else value


def _single(value, what: str) -> int:
    """An int from a value that transformers allows to be an int or a pair (image and patch sizes)."""
    if isinstance(value, (list, tuple)):
        if len(set(value)) != 1:
            raise InteropError(
                f"{what} {list(value)} is not square; mmjax's import supports square sizes only"
            )
        value = value[0]
    return int(value)


def _act(name: str, where: str) -> str:
    if name not in _ACT_FROM_HF:
        raise InteropError(
            f"{where}: activation {name!r} is not supported; supported: {', '.join(_ACT_FROM_HF)}"
        )
    return _ACT_FROM_HF[name]


def _require(cfg: Mapping, path: str, allowed, arch: str) -> None:
    node = cfg
    for part in path.split("."):
        node = node.get(part) if isinstance(node, Mapping) else None
    node = tuple(node) if isinstance(node, list) else node
    if node not in allowed:
        raise InteropError(
            f"cannot export to {arch}: model.{path}={node!r}, {arch} needs one of {list(allowed)}"
        )


def _vit_from_hf(v: Mapping, **fields) -> dict:
    heads, width = v["num_attention_heads"], v["hidden_size"]
    return dict(
        width=width,
        depth=v["num_hidden_layers"],
        num_heads=heads,
        mlp_dim=v["intermediate_size"],
        patch_size=_single(v["patch_size"], "vision patch_size"),
        activation=_act(v["hidden_act"], "vision"),
        norm_eps=float(v["layer_norm_eps"]),
        **fields,
    )


def _vit_to_hf(image: Mapping, image_size: int) -> dict:
    return dict(
        hidden_size=image["width"],
        intermediate_size=image["mlp_dim"],
        num_hidden_layers=image["depth"],
        num_attention_heads=image["num_heads"],
        num_channels=3,
        image_size=image_size,
        patch_size=image["patch_size"],
        hidden_act=_ACT_TO_HF[image.get("activation", "gelu")],
        layer_norm_eps=image.get("norm_eps", 1e-5),
    )


def _text_to_hf(text: Mapping) -> dict:
    return dict(
        vocab_size=text["vocab_size"],
        hidden_size=text["width"],
        intermediate_size=text["mlp_dim"],
        num_hidden_layers=text["depth"],
        num_attention_heads=text["num_heads"],
        max_position_embeddings=text["max_len"],
        hidden_act=_ACT_TO_HF[text.get("activation", "gelu")],
        layer_norm_eps=text.get("norm_eps", 1e-5),
    )


def _first(state: Mapping[str, np.ndarray], key: str) -> float:
    """The scalar ``state[key]`` (stored as ``[]`` or ``[1]``), 0 where the state lacks it."""
    return float(np.asarray(state[key], np.float32).reshape(-1)[0]) if key in state else 0.0


def _scale_fields(state: Mapping[str, np.ndarray]) -> dict:
    """``temperature_init`` and ``max_scale`` such that mmjax's clipped temperature equals transformers'
    unclipped one."""
    scale = math.exp(_first(state, "logit_scale"))
    return dict(temperature_init=scale, max_scale=100.0 if scale <= 100.0 else 2.0 * scale)


# ----------------------------------------------------------------------------- CLIP
def clip_from_hf(h: Mapping, state: Mapping) -> dict:
    v, t = h["vision_config"], h["text_config"]
    eos = t.get("eos_token_id")
    eos = eos[0] if isinstance(eos, (list, tuple)) else eos
    # transformers pools at the largest id when eos_token_id == 2 (configs written before its PR #24773)
    pool = "argmax" if eos == 2 or eos is None else "eot"
    return dict(
        type="two_tower",
        image_size=_single(v["image_size"], "vision image_size"),
        embed_dim=h["projection_dim"],
        image=_vit_from_hf(v, pool="cls", patch_bias=False, pre_norm=True),
        text=dict(
            vocab_size=t["vocab_size"],
            max_len=t["max_position_embeddings"],
            width=t["hidden_size"],
            depth=t["num_hidden_layers"],
            num_heads=t["num_attention_heads"],
            mlp_dim=t["intermediate_size"],
            eot_id=int(eos if eos is not None else 2),
            pool=pool,
            activation=_act(t["hidden_act"], "text"),
            norm_eps=float(t["layer_norm_eps"]),
            causal=True,
        ),
        **_scale_fields(state),
        hf=dict(
            architecture="CLIPModel",
            bos_token_id=t.get("bos_token_id"),
            pad_token_id=t.get("pad_token_id"),
            eos_token_id=eos,
        ),
    )


def clip_to_hf(cfg: Mapping, state: Mapping) -> dict:
    image, text, hf = cfg["image"], cfg["text"], dict(cfg.get("hf", {}))
    for path, allowed in (
        ("image.pool", ("cls",)),
        ("image.patch_bias", (False,)),
        ("image.pre_norm", (True,)),
        ("image.stem_channels", (None, ())),
        ("image.num_classes", (None, 0)),
        ("text.causal", (None, True)),
        ("text.pool", ("argmax", "eot")),
        ("image_projection", (None, True)),
        ("text_proj_bias", (None, False)),
        ("object_head", (None, False)),  # one image projection in transformers
        ("scene_pool", (None, "pooled")),
    ):
        _require(cfg, path, allowed, "CLIPModel")
    if text.get("pool") == "eot" and text.get("eot_id", 2) == 2:
        raise InteropError(
            "cannot export to CLIPModel: model.text.pool='eot' with eot_id=2; "
            "transformers pools at the largest id when eos_token_id == 2 "
            "(use pool='argmax' or another EOT id)"
        )
    eos = 2 if text.get("pool") == "argmax" else text["eot_id"]
    return dict(
        architectures=["CLIPModel"],
        model_type="clip",
        projection_dim=cfg["embed_dim"],
        logit_scale_init_value=math.log(cfg.get("temperature_init", 1 / 0.07)),
        dtype="float32",
        vision_config=dict(_vit_to_hf(image, cfg["image_size"]), projection_dim=cfg["embed_dim"]),
        text_config=dict(
            _text_to_hf(text),
            projection_dim=cfg["embed_dim"],
            bos_token_id=hf.get("bos_token_id"),
            pad_token_id=hf.get("pad_token_id"),
            eos_token_id=eos,
        ),
    )


# ----------------------------------------------------------------------------- SigLIP
def siglip_from_hf(h: Mapping, state: Mapping) -> dict:
    v, t = h["vision_config"], h["text_config"]
    if not v.get("vision_use_head", True):
        raise InteropError(
            "SiglipModel with vision_use_head=False has no pooled image embedding; not supported"
        )
    embed_dim = _get(t, "projection_size", t["hidden_size"])
    if embed_dim != v["hidden_size"]:
        raise InteropError(
            f"SiglipModel: text projection_size {embed_dim} differs from the vision "
            f"hidden_size {v['hidden_size']}; the embeddings could not be compared"
        )
    eos = t.get("eos_token_id")
    bias = _first(state, "logit_bias")
    return dict(
        type="two_tower",
        image_size=_single(v["image_size"], "vision image_size"),
        embed_dim=embed_dim,
        image=_vit_from_hf(v, pool="map", patch_bias=True, pre_norm=False),
        text=dict(
            vocab_size=t["vocab_size"],
            max_len=t["max_position_embeddings"],
            width=t["hidden_size"],
            depth=t["num_hidden_layers"],
            num_heads=t["num_attention_heads"],
            mlp_dim=t["intermediate_size"],
            eot_id=int(eos if isinstance(eos, int) else 2),
            pool="last",
            activation=_act(t["hidden_act"], "text"),
            norm_eps=float(t["layer_norm_eps"]),
            causal=False,
        ),
        **_scale_fields(state),
        bias_init=bias,
        image_projection=False,
        text_proj_bias=True,
        hf=dict(
            architecture="SiglipModel",
            bos_token_id=t.get("bos_token_id"),
            pad_token_id=t.get("pad_token_id"),
            eos_token_id=eos,
        ),
    )


def siglip_to_hf(cfg: Mapping, state: Mapping) -> dict:
    image, text, hf = cfg["image"], cfg["text"], dict(cfg.get("hf", {}))
    for path, allowed in (
        ("image.pool", ("map",)),
        ("image.patch_bias", (True,)),
        ("image.pre_norm", (False,)),
        ("image.stem_channels", (None, ())),
        ("image.num_classes", (None, 0)),
        ("text.causal", (False,)),
        ("text.pool", ("last",)),
        ("image_projection", (False,)),
        ("text_proj_bias", (True,)),
        ("object_head", (None, False)),
        ("scene_pool", (None, "pooled")),
    ):
        _require(cfg, path, allowed, "SiglipModel")
    return dict(
        architectures=["SiglipModel"],
        model_type="siglip",
        dtype="float32",
        vision_config=dict(_vit_to_hf(image, cfg["image_size"]), vision_use_head=True),
        text_config=dict(
            _text_to_hf(text),
            projection_size=cfg["embed_dim"],
            bos_token_id=hf.get("bos_token_id"),
            pad_token_id=hf.get("pad_token_id"),
            eos_token_id=hf.get("eos_token_id", text.get("eot_id")),
        ),
    )


# ----------------------------------------------------------------------------- LLaVA
def llava_from_hf(h: Mapping, state: Mapping) -> dict:
    v, t = h["vision_config"], h["text_config"]
    if v.get("model_type", "clip_vision_model") != "clip_vision_model":
        raise InteropError(
            f"LLaVA: vision tower {v.get('model_type')!r} is not supported; supported: clip_vision_model"
        )
    if t.get("model_type", "llama") != "llama":
        raise InteropError(
            f"LLaVA: language model {t.get('model_type')!r} is not supported; supported: llama"
        )
    layer = h.get("vision_feature_layer", -2)
    if not isinstance(layer, int):
        raise InteropError(
            f"LLaVA: vision_feature_layer {layer!r} (several layers) is not supported; use one layer"
        )
    strategy = h.get("vision_feature_select_strategy", "default")
    if strategy not in ("default", "full"):
        raise InteropError(
            f"LLaVA: vision_feature_select_strategy {strategy!r} is not supported; use default or full"
        )
    if h.get("projector_hidden_act", "gelu") != "gelu" or not h.get("multimodal_projector_bias", True):
        raise InteropError(
            "LLaVA: only the projector linear-gelu-linear with biases (mlp2x_gelu) is "
            f"supported, got activation {h.get('projector_hidden_act')!r}, "
            f"bias {h.get('multimodal_projector_bias')}"
        )
    for key, want in (("hidden_act", "silu"), ("attention_bias", False), ("mlp_bias", False)):
        if t.get(key, want) != want:
            raise InteropError(
                f"LLaVA: text_config.{key}={t.get(key)!r} is not supported; mmjax's LM needs {want!r}"
            )
    heads = t["num_attention_heads"]
    if _get(t, "head_dim", t["hidden_size"] // heads) * heads != t["hidden_size"]:
        raise InteropError(
            f"LLaVA: text_config.head_dim {t['head_dim']} x {heads} heads != hidden_size "
            f"{t['hidden_size']}; not supported"
        )
    rope = dict(_get(t, "rope_parameters", {}) or {})
    if rope.get("rope_type", "default") != "default" or _get(t, "rope_scaling", None):
        raise InteropError(
            f"LLaVA: rope scaling {rope or t.get('rope_scaling')!r} is not supported; only default rope"
        )
    theta = float(rope.get("rope_theta", _get(t, "rope_theta", 10000.0)))
    image_id = h.get("image_token_id", h.get("image_token_index"))
    pad = _get(h, "pad_token_id", t.get("pad_token_id"))
    tied = bool(_get(t, "tie_word_embeddings", h.get("tie_word_embeddings", False)))
    return dict(
        type="early_fusion",
        image_size=_single(v["image_size"], "vision image_size"),
        image=_vit_from_hf(v, pool="cls", patch_bias=False, pre_norm=True, feature_layer=layer),
        lm=dict(
            vocab_size=t["vocab_size"],
            width=t["hidden_size"],
            depth=t["num_hidden_layers"],
            num_heads=heads,
            num_kv_heads=_get(t, "num_key_value_heads", heads),
            mlp_dim=t["intermediate_size"],
            rope_theta=theta,
            norm_eps=float(t["rms_norm_eps"]),
            tie_embeddings=tied,
        ),
        projector="mlp2x_gelu",
        vision_tokens="patches" if strategy == "default" else "all",
        image_pool=1,
        attn_mask="causal",
        image_id=int(image_id),
        sep_id=-1,
        pad_id=int(pad) if pad is not None else -1,
        hf=dict(
            architecture="LlavaForConditionalGeneration",
            bos_token_id=t.get("bos_token_id"),
            pad_token_id=pad,
            eos_token_id=t.get("eos_token_id"),
            max_position_embeddings=t.get("max_position_embeddings"),
        ),
    )


def llava_to_hf(cfg: Mapping, state: Mapping) -> dict:
    image, lm, hf = cfg["image"], cfg["lm"], dict(cfg.get("hf", {}))
    for path, allowed in (
        ("image.pool", ("cls",)),
        ("image.patch_bias", (False,)),
        ("image.pre_norm", (True,)),
        ("image.stem_channels", (None, ())),
        ("projector", ("mlp2x_gelu",)),
        ("image_pool", (None, 1)),
        ("attn_mask", ("causal",)),
        ("vision_tokens", ("patches", "all")),
    ):
        _require(cfg, path, allowed, "LlavaForConditionalGeneration")
    layer, depth = image.get("feature_layer"), image["depth"]
    if layer is None or not -depth - 1 <= layer <= depth:
        raise InteropError(
            "cannot export to LlavaForConditionalGeneration: "
            f"model.image.feature_layer={layer!r}; LLaVA feeds the hidden states of one "
            "encoder layer (e.g. -2), not the final-norm output"
        )
    pad = cfg.get("pad_id")
    return dict(
        architectures=["LlavaForConditionalGeneration"],
        model_type="llava",
        dtype="float32",
        vision_config=dict(_vit_to_hf(image, cfg["image_size"]), model_type="clip_vision_model"),
        text_config=dict(
            model_type="llama",
            vocab_size=lm["vocab_size"],
            hidden_size=lm["width"],
            intermediate_size=lm["mlp_dim"],
            num_hidden_layers=lm["depth"],
            num_attention_heads=lm["num_heads"],
            num_key_value_heads=lm.get("num_kv_heads") or lm["num_heads"],
            hidden_act="silu",
            rms_norm_eps=lm.get("norm_eps", 1e-6),
            rope_parameters=dict(rope_type="default", rope_theta=lm.get("rope_theta", 10000.0)),
            max_position_embeddings=hf.get("max_position_embeddings") or 4096,
            tie_word_embeddings=bool(lm.get("tie_embeddings", False)),
            bos_token_id=hf.get("bos_token_id"),
            eos_token_id=hf.get("eos_token_id"),
            pad_token_id=pad if pad is not None and pad >= 0 else None,
        ),
        image_token_id=cfg["image_id"],
        projector_hidden_act="gelu",
        multimodal_projector_bias=True,
        vision_feature_layer=layer,
        vision_feature_select_strategy="default" if cfg["vision_tokens"] == "patches" else "full",
        tie_word_embeddings=bool(lm.get("tie_embeddings", False)),
        pad_token_id=pad if pad is not None and pad >= 0 else None,
    )
