"""Hugging Face ``transformers`` <-> mmjax: configs and weights, both ways.

    cfg, params = hf.load("path/to/dir")          # config.json + model.safetensors (or a model object)
    model = models.build(cfg)                     # an mmjax module; model.apply({"params": params}, ...)
    hf.save(cfg, params, "out/dir")               # transformers' from_pretrained("out/dir") loads it

Supported: ``CLIPModel`` and ``SiglipModel`` (-> ``two_tower``), ``LlavaForConditionalGeneration`` with a
CLIP vision tower and a Llama LM (-> ``early_fusion``). ``cfg`` is a model section in the form the
repo's configs use (``mmjax.models``), plus ``cfg.hf``: the source architecture and the token ids
the module itself does not need (so a saved directory gets them back).

Every weight is moved by a *rule* ``(hf key, mmjax path, kind)``; ``kind`` says how the array is laid out
in each framework (``dense<k>``: a torch ``Linear`` weight ``[out, in]`` vs an mmjax kernel whose first
``k`` axes are inputs; ``conv``: ``[out, in, p, p]`` vs ``[p, p, in, out]``; ``flat``/``drop0``: reshapes).
The same rules drive import and export, so export -> import is the identity. Bad inputs raise
:class:`InteropError`, one line naming the key and both shapes.

``load_tokenizer(path)`` reads a ``tokenizer.json`` (with the ``tokenizers`` package) into an
``mmjax.data.tokenizer.Tokenizer``, so the pipeline and the command lines use it like the built-in ones.

torch, transformers, safetensors and tokenizers are imported inside the functions that need them only.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any, Mapping

import numpy as np

from mmjax.config import ConfigError
from mmjax.data.tokenizer import Tokenizer

SUPPORTED = ("CLIPModel", "SiglipModel", "LlavaForConditionalGeneration")
_MODEL_TYPES = {"clip": "CLIPModel", "siglip": "SiglipModel", "llava": "LlavaForConditionalGeneration"}
_ACT_FROM_HF = {"quick_gelu": "quick_gelu", "gelu": "gelu", "gelu_pytorch_tanh": "gelu_tanh",
                "gelu_new": "gelu_tanh", "relu": "relu"}
_ACT_TO_HF = {"quick_gelu": "quick_gelu", "gelu": "gelu", "gelu_tanh": "gelu_pytorch_tanh", "relu": "relu"}
_FUSED = ("in_proj_weight", "in_proj_bias")  # torch.nn.MultiheadAttention's q/k/v stacked on axis 0


class InteropError(ConfigError):
    """A model or directory that cannot be converted (unsupported architecture or option, missing or
    unexpected weights, shape mismatch); printed as one line."""


@dataclasses.dataclass(frozen=True)
class Rule:
    hf: str  # key in the transformers state dict
    mm: str  # "/"-joined path in the mmjax params tree
    kind: str = "copy"  # copy | flat | drop0 | conv | dense<k>


# ----------------------------------------------------------------------------- array layouts
def _hf_shape(kind: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    """The transformers shape of an mmjax array of ``shape``."""
    if kind == "copy":
        return tuple(shape)
    if kind == "flat":
        return (math.prod(shape),)
    if kind == "drop0":
        return tuple(shape[1:])
    if kind == "conv":
        return (shape[3], shape[2], shape[0], shape[1])
    k = int(kind[len("dense"):])
    return (math.prod(shape[k:]), math.prod(shape[:k]))


def _to_hf(kind: str, x: np.ndarray) -> np.ndarray:
    if kind == "conv":
        return np.ascontiguousarray(x.transpose(3, 2, 0, 1))
    if kind.startswith("dense"):
        k = int(kind[len("dense"):])
        return np.ascontiguousarray(x.reshape(math.prod(x.shape[:k]), -1).T)
    return x.reshape(_hf_shape(kind, x.shape))


def _from_hf(kind: str, x: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    if kind == "conv":
        return np.ascontiguousarray(x.transpose(2, 3, 1, 0))
    if kind.startswith("dense"):
        return np.ascontiguousarray(x.T).reshape(shape)
    return x.reshape(shape)


def _split_fused(state: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``...in_proj_weight`` [3w, w] -> ``...in_proj_weight:q|k|v`` [w, w] (and the biases)."""
    out = {}
    for key, x in state.items():
        if key.endswith(_FUSED):
            if x.shape[0] % 3:
                raise InteropError(f"weight {key!r} has shape {tuple(x.shape)}: its first axis should hold "
                                   "query, key and value, a multiple of 3")
            for part, name in zip(np.split(x, 3), "qkv"):
                out[f"{key}:{name}"] = part
        else:
            out[key] = x
    return out


def _fuse(state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    out = {k: v for k, v in state.items() if not k.endswith((":q", ":k", ":v"))}
    for key in {k[:-2] for k in state if k.endswith(":q")}:
        out[key] = np.concatenate([state[f"{key}:{n}"] for n in "qkv"])
    return out


# ----------------------------------------------------------------------------- rules per tower
def _encoder_rules(hf: str, mm: str, depth: int) -> list[Rule]:
    rules = []
    for i in range(depth):
        h, m = f"{hf}.layers.{i}", f"{mm}/block_{i}"
        rules += [Rule(f"{h}.layer_norm1.weight", f"{m}/ln_attn/scale"), Rule(f"{h}.layer_norm1.bias", f"{m}/ln_attn/bias"),
                  Rule(f"{h}.layer_norm2.weight", f"{m}/ln_mlp/scale"), Rule(f"{h}.layer_norm2.bias", f"{m}/ln_mlp/bias")]
        rules += _attention_rules(f"{h}.self_attn", f"{m}/attn",
                                  [(f"{h}.self_attn.{n}_proj.weight", f"{h}.self_attn.{n}_proj.bias") for n in "qkv"])
        rules += _mlp_rules(f"{h}.mlp", f"{m}/mlp")
    return rules


def _attention_rules(hf: str, mm: str, qkv: list[tuple[str, str]]) -> list[Rule]:
    """q/k/v from ``qkv`` = [(weight key, bias key)] * 3, and ``{hf}.out_proj``."""
    rules = []
    for (weight, bias), name in zip(qkv, ("query", "key", "value")):
        rules += [Rule(weight, f"{mm}/{name}/kernel", "dense1"), Rule(bias, f"{mm}/{name}/bias", "flat")]
    return rules + [Rule(f"{hf}.out_proj.weight", f"{mm}/out/kernel", "dense2"),
                    Rule(f"{hf}.out_proj.bias", f"{mm}/out/bias")]


def _mlp_rules(hf: str, mm: str) -> list[Rule]:
    return [Rule(f"{hf}.{n}.weight", f"{mm}/{n}/kernel", "dense1") for n in ("fc1", "fc2")] + \
           [Rule(f"{hf}.{n}.bias", f"{mm}/{n}/bias") for n in ("fc1", "fc2")]


def _ln(hf: str, mm: str) -> list[Rule]:
    return [Rule(f"{hf}.weight", f"{mm}/scale"), Rule(f"{hf}.bias", f"{mm}/bias")]


def _vit_rules(hf: str, mm: str, image: Mapping) -> list[Rule]:
    e = f"{hf}.embeddings"
    rules = [Rule(f"{e}.patch_embedding.weight", f"{mm}/patch_kernel", "conv"),
             Rule(f"{e}.position_embedding.weight", f"{mm}/pos_embedding", "drop0")]
    if image.get("patch_bias", True):
        rules.append(Rule(f"{e}.patch_embedding.bias", f"{mm}/patch_bias"))
    if image.get("pool", "cls") == "cls":
        rules.append(Rule(f"{e}.class_embedding", f"{mm}/cls", "flat"))
    if image.get("pre_norm", False):
        rules += _ln(f"{hf}.pre_layrnorm", f"{mm}/ln_pre")
    rules += _encoder_rules(f"{hf}.encoder", f"{mm}/encoder", image["depth"])
    rules += _ln(f"{hf}.post_layernorm", f"{mm}/ln_post")
    if image.get("pool") == "map":
        a, m = f"{hf}.head.attention", f"{mm}/map_head"
        rules += [Rule(f"{hf}.head.probe", f"{m}/probe")]
        rules += _attention_rules(a, m, [(f"{a}.in_proj_weight:{n}", f"{a}.in_proj_bias:{n}") for n in "qkv"])
        rules += _ln(f"{hf}.head.layernorm", f"{m}/ln") + _mlp_rules(f"{hf}.head.mlp", f"{m}/mlp")
    return rules


def _text_rules(hf: str, mm: str, text: Mapping) -> list[Rule]:
    return [Rule(f"{hf}.embeddings.token_embedding.weight", f"{mm}/token_embed/embedding"),
            Rule(f"{hf}.embeddings.position_embedding.weight", f"{mm}/pos_embedding"),
            *_encoder_rules(f"{hf}.encoder", f"{mm}/encoder", text["depth"]),
            *_ln(f"{hf}.final_layer_norm", f"{mm}/ln_final")]


def _llama_rules(hf: str, head: str, mm: str, lm: Mapping) -> list[Rule]:
    rules = [Rule(f"{hf}.embed_tokens.weight", f"{mm}/token_embed/embedding"),
             Rule(f"{hf}.norm.weight", f"{mm}/ln_final/scale")]
    for i in range(lm["depth"]):
        h, m = f"{hf}.layers.{i}", f"{mm}/block_{i}"
        rules += [Rule(f"{h}.input_layernorm.weight", f"{m}/ln_attn/scale"),
                  Rule(f"{h}.post_attention_layernorm.weight", f"{m}/ln_mlp/scale"),
                  *(Rule(f"{h}.self_attn.{n}_proj.weight", f"{m}/attn/{n}/kernel", "dense1") for n in "qkv"),
                  Rule(f"{h}.self_attn.o_proj.weight", f"{m}/attn/o/kernel", "dense2"),
                  *(Rule(f"{h}.mlp.{n}_proj.weight", f"{m}/mlp/{n}/kernel", "dense1") for n in ("gate", "up", "down"))]
    if not lm.get("tie_embeddings", False):
        rules.append(Rule(f"{head}.weight", f"{mm}/lm_head/kernel", "dense1"))
    return rules


# ----------------------------------------------------------------------------- configs
def _get(d: Mapping, key: str, default=None):
    value = d.get(key, default)
    return default if value is None else value


def _single(value, what: str) -> int:
    """An int from a value that transformers allows to be an int or a pair (image and patch sizes)."""
    if isinstance(value, (list, tuple)):
        if len(set(value)) != 1:
            raise InteropError(f"{what} {list(value)} is not square; mmjax's import supports square sizes only")
        value = value[0]
    return int(value)


def _act(name: str, where: str) -> str:
    if name not in _ACT_FROM_HF:
        raise InteropError(f"{where}: activation {name!r} is not supported; supported: {', '.join(_ACT_FROM_HF)}")
    return _ACT_FROM_HF[name]


def _vit_from_hf(v: Mapping, **fields) -> dict:
    heads, width = v["num_attention_heads"], v["hidden_size"]
    return dict(width=width, depth=v["num_hidden_layers"], num_heads=heads, mlp_dim=v["intermediate_size"],
                patch_size=_single(v["patch_size"], "vision patch_size"), activation=_act(v["hidden_act"], "vision"),
                norm_eps=float(v["layer_norm_eps"]), **fields)


def _vit_to_hf(image: Mapping, image_size: int) -> dict:
    return dict(hidden_size=image["width"], intermediate_size=image["mlp_dim"], num_hidden_layers=image["depth"],
                num_attention_heads=image["num_heads"], num_channels=3, image_size=image_size,
                patch_size=image["patch_size"], hidden_act=_ACT_TO_HF[image.get("activation", "gelu")],
                layer_norm_eps=image.get("norm_eps", 1e-5))


def _scale_fields(state: Mapping[str, np.ndarray]) -> dict:
    """``temperature_init`` and ``max_scale`` so that mmjax's clipped temperature equals HF's unclipped one."""
    log_scale = float(np.asarray(state["logit_scale"], np.float32).reshape(-1)[0]) if "logit_scale" in state else 0.0
    scale = math.exp(log_scale)
    return dict(temperature_init=scale, max_scale=100.0 if scale <= 100.0 else 2.0 * scale)


def _clip_config(h: Mapping, state: Mapping) -> dict:
    v, t = h["vision_config"], h["text_config"]
    eos = t.get("eos_token_id")
    eos = eos[0] if isinstance(eos, (list, tuple)) else eos
    # transformers pools at the largest id when eos_token_id == 2 (configs written before its PR #24773)
    pool = "argmax" if eos == 2 or eos is None else "eot"
    return dict(
        type="two_tower", image_size=_single(v["image_size"], "vision image_size"), embed_dim=h["projection_dim"],
        image=_vit_from_hf(v, pool="cls", patch_bias=False, pre_norm=True),
        text=dict(vocab_size=t["vocab_size"], max_len=t["max_position_embeddings"], width=t["hidden_size"],
                  depth=t["num_hidden_layers"], num_heads=t["num_attention_heads"], mlp_dim=t["intermediate_size"],
                  eot_id=int(eos if eos is not None else 2), pool=pool, activation=_act(t["hidden_act"], "text"),
                  norm_eps=float(t["layer_norm_eps"]), causal=True),
        **_scale_fields(state),
        hf=dict(architecture="CLIPModel", bos_token_id=t.get("bos_token_id"), pad_token_id=t.get("pad_token_id"),
                eos_token_id=eos),
    )


def _siglip_config(h: Mapping, state: Mapping) -> dict:
    v, t = h["vision_config"], h["text_config"]
    if not v.get("vision_use_head", True):
        raise InteropError("SiglipModel with vision_use_head=False has no pooled image embedding; not supported")
    embed_dim = _get(t, "projection_size", t["hidden_size"])
    if embed_dim != v["hidden_size"]:
        raise InteropError(f"SiglipModel: text projection_size {embed_dim} differs from the vision hidden_size "
                           f"{v['hidden_size']}; the embeddings could not be compared")
    eos = t.get("eos_token_id")
    bias = float(np.asarray(state["logit_bias"], np.float32).reshape(-1)[0]) if "logit_bias" in state else 0.0
    return dict(
        type="two_tower", image_size=_single(v["image_size"], "vision image_size"), embed_dim=embed_dim,
        image=_vit_from_hf(v, pool="map", patch_bias=True, pre_norm=False),
        text=dict(vocab_size=t["vocab_size"], max_len=t["max_position_embeddings"], width=t["hidden_size"],
                  depth=t["num_hidden_layers"], num_heads=t["num_attention_heads"], mlp_dim=t["intermediate_size"],
                  eot_id=int(eos if isinstance(eos, int) else 2), pool="last", activation=_act(t["hidden_act"], "text"),
                  norm_eps=float(t["layer_norm_eps"]), causal=False),
        **_scale_fields(state), bias_init=bias, image_projection=False, text_proj_bias=True,
        hf=dict(architecture="SiglipModel", bos_token_id=t.get("bos_token_id"), pad_token_id=t.get("pad_token_id"),
                eos_token_id=eos),
    )


def _llava_config(h: Mapping, state: Mapping) -> dict:
    v, t = h["vision_config"], h["text_config"]
    if v.get("model_type", "clip_vision_model") != "clip_vision_model":
        raise InteropError(f"LLaVA: vision tower {v.get('model_type')!r} is not supported; supported: clip_vision_model")
    if t.get("model_type", "llama") != "llama":
        raise InteropError(f"LLaVA: language model {t.get('model_type')!r} is not supported; supported: llama")
    layer = h.get("vision_feature_layer", -2)
    if not isinstance(layer, int):
        raise InteropError(f"LLaVA: vision_feature_layer {layer!r} (several layers) is not supported; use one layer")
    strategy = h.get("vision_feature_select_strategy", "default")
    if strategy not in ("default", "full"):
        raise InteropError(f"LLaVA: vision_feature_select_strategy {strategy!r} is not supported; use default or full")
    if h.get("projector_hidden_act", "gelu") != "gelu" or not h.get("multimodal_projector_bias", True):
        raise InteropError("LLaVA: only the projector linear-gelu-linear with biases (mlp2x_gelu) is supported, got "
                           f"activation {h.get('projector_hidden_act')!r}, bias {h.get('multimodal_projector_bias')}")
    for key, want in (("hidden_act", "silu"), ("attention_bias", False), ("mlp_bias", False)):
        if t.get(key, want) != want:
            raise InteropError(f"LLaVA: text_config.{key}={t.get(key)!r} is not supported; mmjax's LM needs {want!r}")
    heads = t["num_attention_heads"]
    if _get(t, "head_dim", t["hidden_size"] // heads) * heads != t["hidden_size"]:
        raise InteropError(f"LLaVA: text_config.head_dim {t['head_dim']} x {heads} heads != hidden_size "
                           f"{t['hidden_size']}; not supported")
    rope = dict(_get(t, "rope_parameters", {}) or {})
    if rope.get("rope_type", "default") != "default" or _get(t, "rope_scaling", None):
        raise InteropError(f"LLaVA: rope scaling {rope or t.get('rope_scaling')!r} is not supported; only default rope")
    theta = float(rope.get("rope_theta", _get(t, "rope_theta", 10000.0)))
    image_id = h.get("image_token_id", h.get("image_token_index"))
    pad = _get(h, "pad_token_id", t.get("pad_token_id"))
    return dict(
        type="early_fusion", image_size=_single(v["image_size"], "vision image_size"),
        image=_vit_from_hf(v, pool="cls", patch_bias=False, pre_norm=True, feature_layer=layer),
        lm=dict(vocab_size=t["vocab_size"], width=t["hidden_size"], depth=t["num_hidden_layers"], num_heads=heads,
                num_kv_heads=_get(t, "num_key_value_heads", heads), mlp_dim=t["intermediate_size"], rope_theta=theta,
                norm_eps=float(t["rms_norm_eps"]),
                tie_embeddings=bool(_get(t, "tie_word_embeddings", h.get("tie_word_embeddings", False)))),
        projector="mlp2x_gelu", vision_tokens="patches" if strategy == "default" else "all", image_pool=1,
        attn_mask="causal", image_id=int(image_id), sep_id=-1, pad_id=int(pad) if pad is not None else -1,
        hf=dict(architecture="LlavaForConditionalGeneration", bos_token_id=t.get("bos_token_id"),
                pad_token_id=pad, eos_token_id=t.get("eos_token_id"), max_position_embeddings=t.get("max_position_embeddings")),
    )


def _require(cfg: Mapping, path: str, allowed, arch: str) -> None:
    node = cfg
    for part in path.split("."):
        node = node.get(part) if isinstance(node, Mapping) else None
    node = tuple(node) if isinstance(node, list) else node
    if node not in allowed:
        raise InteropError(f"cannot export to {arch}: model.{path}={node!r}, {arch} needs one of {list(allowed)}")


def _clip_to_hf(cfg: Mapping, state: Mapping) -> dict:
    image, text, hf = cfg["image"], cfg["text"], dict(cfg.get("hf", {}))
    for path, allowed in (("image.pool", ("cls",)), ("image.patch_bias", (False,)), ("image.pre_norm", (True,)),
                          ("image.stem_channels", (None, ())), ("image.num_classes", (None, 0)),
                          ("text.causal", (None, True)), ("text.pool", ("argmax", "eot")),
                          ("image_projection", (None, True)), ("text_proj_bias", (None, False))):
        _require(cfg, path, allowed, "CLIPModel")
    if text.get("pool") == "eot" and text.get("eot_id", 2) == 2:
        raise InteropError("cannot export to CLIPModel: model.text.pool='eot' with eot_id=2; transformers pools at "
                           "the largest id when eos_token_id == 2 (use pool='argmax' or another EOT id)")
    eos = 2 if text.get("pool") == "argmax" else text["eot_id"]
    return dict(
        architectures=["CLIPModel"], model_type="clip", projection_dim=cfg["embed_dim"],
        logit_scale_init_value=math.log(cfg.get("temperature_init", 1 / 0.07)), dtype="float32",
        vision_config=dict(_vit_to_hf(image, cfg["image_size"]), projection_dim=cfg["embed_dim"]),
        text_config=dict(vocab_size=text["vocab_size"], hidden_size=text["width"], intermediate_size=text["mlp_dim"],
                         num_hidden_layers=text["depth"], num_attention_heads=text["num_heads"],
                         max_position_embeddings=text["max_len"], hidden_act=_ACT_TO_HF[text.get("activation", "gelu")],
                         layer_norm_eps=text.get("norm_eps", 1e-5), projection_dim=cfg["embed_dim"],
                         bos_token_id=hf.get("bos_token_id"), pad_token_id=hf.get("pad_token_id"), eos_token_id=eos),
    )


def _siglip_to_hf(cfg: Mapping, state: Mapping) -> dict:
    image, text, hf = cfg["image"], cfg["text"], dict(cfg.get("hf", {}))
    for path, allowed in (("image.pool", ("map",)), ("image.patch_bias", (True,)), ("image.pre_norm", (False,)),
                          ("image.stem_channels", (None, ())), ("image.num_classes", (None, 0)),
                          ("text.causal", (False,)), ("text.pool", ("last",)), ("image_projection", (False,)),
                          ("text_proj_bias", (True,))):
        _require(cfg, path, allowed, "SiglipModel")
    return dict(
        architectures=["SiglipModel"], model_type="siglip", dtype="float32",
        vision_config=dict(_vit_to_hf(image, cfg["image_size"]), vision_use_head=True),
        text_config=dict(vocab_size=text["vocab_size"], hidden_size=text["width"], intermediate_size=text["mlp_dim"],
                         num_hidden_layers=text["depth"], num_attention_heads=text["num_heads"],
                         max_position_embeddings=text["max_len"], hidden_act=_ACT_TO_HF[text.get("activation", "gelu")],
                         layer_norm_eps=text.get("norm_eps", 1e-5), projection_size=cfg["embed_dim"],
                         bos_token_id=hf.get("bos_token_id"), pad_token_id=hf.get("pad_token_id"),
                         eos_token_id=hf.get("eos_token_id", text.get("eot_id"))),
    )


def _llava_to_hf(cfg: Mapping, state: Mapping) -> dict:
    image, lm, hf = cfg["image"], cfg["lm"], dict(cfg.get("hf", {}))
    for path, allowed in (("image.pool", ("cls",)), ("image.patch_bias", (False,)), ("image.pre_norm", (True,)),
                          ("image.stem_channels", (None, ())), ("projector", ("mlp2x_gelu",)),
                          ("image_pool", (None, 1)), ("attn_mask", ("causal",)), ("vision_tokens", ("patches", "all"))):
        _require(cfg, path, allowed, "LlavaForConditionalGeneration")
    layer, depth = image.get("feature_layer"), image["depth"]
    if layer is None or not -depth - 1 <= layer <= depth:
        raise InteropError(f"cannot export to LlavaForConditionalGeneration: model.image.feature_layer={layer!r}; "
                           "LLaVA feeds the hidden states of one encoder layer (e.g. -2), not the final-norm output")
    pad = cfg.get("pad_id")
    return dict(
        architectures=["LlavaForConditionalGeneration"], model_type="llava", dtype="float32",
        vision_config=dict(_vit_to_hf(image, cfg["image_size"]), model_type="clip_vision_model"),
        text_config=dict(model_type="llama", vocab_size=lm["vocab_size"], hidden_size=lm["width"],
                         intermediate_size=lm["mlp_dim"], num_hidden_layers=lm["depth"], num_attention_heads=lm["num_heads"],
                         num_key_value_heads=lm.get("num_kv_heads") or lm["num_heads"], hidden_act="silu",
                         rms_norm_eps=lm.get("norm_eps", 1e-6),
                         rope_parameters=dict(rope_type="default", rope_theta=lm.get("rope_theta", 10000.0)),
                         max_position_embeddings=hf.get("max_position_embeddings") or 4096,
                         tie_word_embeddings=bool(lm.get("tie_embeddings", False)),
                         bos_token_id=hf.get("bos_token_id"), eos_token_id=hf.get("eos_token_id"),
                         pad_token_id=pad if pad is not None and pad >= 0 else None),
        image_token_id=cfg["image_id"], projector_hidden_act="gelu", multimodal_projector_bias=True,
        vision_feature_layer=layer,
        vision_feature_select_strategy="default" if cfg["vision_tokens"] == "patches" else "full",
        tie_word_embeddings=bool(lm.get("tie_embeddings", False)),
        pad_token_id=pad if pad is not None and pad >= 0 else None,
    )


def _clip_rules(cfg: Mapping) -> list[Rule]:
    return [*_vit_rules("vision_model", "image", cfg["image"]), *_text_rules("text_model", "text", cfg["text"]),
            Rule("visual_projection.weight", "image_proj/kernel", "dense1"),
            Rule("text_projection.weight", "text_proj/kernel", "dense1"), Rule("logit_scale", "logit_scale")]


def _siglip_rules(cfg: Mapping) -> list[Rule]:
    return [*_vit_rules("vision_model", "image", cfg["image"]), *_text_rules("text_model", "text", cfg["text"]),
            Rule("text_model.head.weight", "text_proj/kernel", "dense1"), Rule("text_model.head.bias", "text_proj/bias"),
            Rule("logit_scale", "logit_scale", "flat"), Rule("logit_bias", "logit_bias", "flat")]


def _llava_rules(cfg: Mapping) -> list[Rule]:
    p = "model.multi_modal_projector"
    return [*_vit_rules("model.vision_tower", "image", cfg["image"]),
            Rule(f"{p}.linear_1.weight", "proj_0/kernel", "dense1"), Rule(f"{p}.linear_1.bias", "proj_0/bias"),
            Rule(f"{p}.linear_2.weight", "proj_1/kernel", "dense1"), Rule(f"{p}.linear_2.bias", "proj_1/bias"),
            *_llama_rules("model.language_model", "lm_head", "lm", cfg["lm"])]


@dataclasses.dataclass(frozen=True)
class _Arch:
    config_from_hf: Any
    config_to_hf: Any
    rules: Any
    mm_type: str


_ARCHS = {
    "CLIPModel": _Arch(_clip_config, _clip_to_hf, _clip_rules, "two_tower"),
    "SiglipModel": _Arch(_siglip_config, _siglip_to_hf, _siglip_rules, "two_tower"),
    "LlavaForConditionalGeneration": _Arch(_llava_config, _llava_to_hf, _llava_rules, "early_fusion"),
}


def architecture(hf_config: Mapping) -> str:
    """The supported architecture a transformers config describes, or :class:`InteropError`."""
    names = list(hf_config.get("architectures") or [])
    for name in names:
        if name in _ARCHS:
            return name
    name = names[0] if names else _MODEL_TYPES.get(hf_config.get("model_type"), hf_config.get("model_type"))
    if name not in _ARCHS:
        raise InteropError(f"unsupported architecture {name!r}; supported: {', '.join(SUPPORTED)}")
    return name


def _mm_architecture(cfg: Mapping) -> str:
    hf = cfg.get("hf") or {}
    if hf.get("architecture") in _ARCHS:
        return hf["architecture"]
    if cfg.get("type") == "early_fusion":
        return "LlavaForConditionalGeneration"
    if cfg.get("type", "two_tower") == "two_tower":
        return "SiglipModel" if cfg["image"].get("pool") == "map" else "CLIPModel"
    raise InteropError(f"cannot export model type {cfg.get('type')!r}; supported: two_tower (CLIP, SigLIP), "
                       "early_fusion (LLaVA)")


# ----------------------------------------------------------------------------- params trees
def _flatten(tree: Mapping, prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(_flatten(value, path + "/"))
        else:
            out[path] = value
    return out


def _unflatten(flat: Mapping[str, Any]) -> dict:
    tree: dict = {}
    for path, value in flat.items():
        *parents, leaf = path.split("/")
        node = tree
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return tree


def param_shapes(cfg: Mapping) -> dict[str, tuple[int, ...]]:
    """``{"/"-joined path: shape}`` of the parameters of the mmjax model ``cfg`` describes (no compute)."""
    import flax.linen as nn
    import jax
    import jax.numpy as jnp

    from mmjax import models

    model = models.build(cfg)
    s = cfg["image_size"]
    images = jnp.zeros((1, s, s, 3), jnp.float32)
    tokens = jnp.zeros((1, cfg["text"]["max_len"] if cfg.get("type") == "two_tower" else 4), jnp.int32)
    shapes = jax.eval_shape(lambda: nn.unbox(model.init(jax.random.key(0), images, tokens))["params"])
    return {k: tuple(v.shape) for k, v in _flatten(shapes).items()}


def _check_coverage(rules: list[Rule], shapes: Mapping, arch: str) -> None:
    """Internal consistency: the rules name every mmjax parameter exactly once."""
    names = [r.mm for r in rules]
    if sorted(names) != sorted(shapes):
        extra, lacking = sorted(set(names) - set(shapes)), sorted(set(shapes) - set(names))
        raise InteropError(f"{arch}: the conversion rules do not match the mmjax model (rules without a parameter: "
                           f"{extra[:3]}, parameters without a rule: {lacking[:3]})")


def _to_plain(cfg) -> dict:
    """A ConfigDict or mapping as nested plain dicts (tuples kept)."""
    to_dict = getattr(cfg, "to_dict", None)
    return to_dict() if to_dict else json.loads(json.dumps(cfg))


# ----------------------------------------------------------------------------- import / export
def from_hf(hf_config: Mapping, state: Mapping[str, Any]):
    """``(config, params)`` of the mmjax model equivalent to a transformers config (a dict, as in
    ``config.json``) and state dict (key -> array)."""
    import ml_collections

    arch = architecture(hf_config)
    spec = _ARCHS[arch]
    state = _split_fused({k: v for k, v in state.items() if not k.endswith("position_ids")})
    cfg = spec.config_from_hf(hf_config, state)
    if cfg.get("type") == "early_fusion" and cfg["lm"]["tie_embeddings"]:
        state.pop("lm_head.weight", None)  # some checkpoints store the tied copy
    shapes = param_shapes(cfg)
    rules = spec.rules(cfg)
    _check_coverage(rules, shapes, arch)
    known = {r.hf for r in rules}
    missing = [r.hf for r in rules if r.hf not in state]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise InteropError(f"{arch}: weight {missing[0].replace(':', ' part ')!r} is missing{more}")
    unexpected = sorted(set(state) - known)
    if unexpected:
        more = f" (and {len(unexpected) - 1} more)" if len(unexpected) > 1 else ""
        raise InteropError(f"{arch}: unexpected weight {unexpected[0]!r}{more}; the config does not describe it")
    flat = {}
    for r in rules:
        want, x = _hf_shape(r.kind, shapes[r.mm]), state[r.hf]
        if tuple(x.shape) != want:
            raise InteropError(f"{arch}: weight {r.hf.replace(':', ' part ')!r} has shape {tuple(x.shape)}, expected "
                               f"{want} (mmjax {r.mm!r} {shapes[r.mm]})")
        flat[r.mm] = _from_hf(r.kind, np.asarray(x, np.float32), shapes[r.mm])
    return ml_collections.ConfigDict(cfg), _unflatten(flat)


def to_hf(cfg, params) -> tuple[dict, dict[str, np.ndarray]]:
    """``(hf_config, state)``: the transformers config (dict) and state dict (numpy) of an mmjax model."""
    cfg = _to_plain(cfg)
    scanned = [t for t in ("image", "text", "lm") if isinstance(cfg.get(t), Mapping) and cfg[t].get("scan")]
    if scanned:  # stacked layers (scan=True): export the unrolled layout, the same numbers
        from mmjax import models

        params = models.unstack_layers(params)
        cfg = {**cfg, **{t: {**cfg[t], "scan": False} for t in scanned}}
    arch = _mm_architecture(cfg)
    spec = _ARCHS[arch]
    flat = {k: np.asarray(v, np.float32) for k, v in _flatten(params).items()}
    hf_config = spec.config_to_hf(cfg, flat)
    shapes = param_shapes(cfg)
    rules = spec.rules(cfg)
    _check_coverage(rules, shapes, arch)
    missing, unexpected = sorted(set(shapes) - set(flat)), sorted(set(flat) - set(shapes))
    if missing or unexpected:
        what = f"parameter {missing[0]!r} is missing" if missing else f"unexpected parameter {unexpected[0]!r}"
        raise InteropError(f"cannot export to {arch}: {what} for this config")
    state = {}
    for r in rules:
        if flat[r.mm].shape != shapes[r.mm]:
            raise InteropError(f"cannot export to {arch}: parameter {r.mm!r} has shape {flat[r.mm].shape}, expected "
                               f"{shapes[r.mm]} from the config")
        state[r.hf] = _to_hf(r.kind, flat[r.mm])
    return hf_config, _fuse(state)


def read_dir(directory: str) -> tuple[dict, dict[str, np.ndarray]]:
    """``(hf_config, state)`` from a directory with ``config.json`` and ``model.safetensors`` (or the
    shards listed by ``model.safetensors.index.json``)."""
    from safetensors.numpy import load_file

    config_path = os.path.join(directory, "config.json")
    if not os.path.isfile(config_path):
        raise InteropError(f"{directory!r} has no config.json; pass a directory written by save_pretrained")
    with open(config_path) as f:
        hf_config = json.load(f)
    architecture(hf_config)  # an unsupported model fails before its weights are read
    single, index = os.path.join(directory, "model.safetensors"), os.path.join(directory, "model.safetensors.index.json")
    if os.path.isfile(single):
        files = [single]
    elif os.path.isfile(index):
        with open(index) as f:
            files = [os.path.join(directory, n) for n in sorted(set(json.load(f)["weight_map"].values()))]
    else:
        raise InteropError(f"{directory!r} has no model.safetensors (nor model.safetensors.index.json); "
                           "save the model with safe_serialization")
    state = {}
    for path in files:
        try:
            try:
                state.update(load_file(path))
            except TypeError:  # bfloat16: numpy has no such dtype; read through jax, then float32
                from safetensors.flax import load_file as load_jax

                state.update({k: np.asarray(v, np.float32) for k, v in load_jax(path).items()})
        except Exception as e:  # safetensors raises its own error types
            raise InteropError(f"{path}: not a readable safetensors file ({e})") from None
    return hf_config, state


def load(source):
    """``(config, params)`` from a directory (``config.json`` + safetensors) or a transformers model."""
    if isinstance(source, (str, os.PathLike)):
        return from_hf(*read_dir(os.fspath(source)))
    hf_config = source.config.to_dict()
    name = type(source).__name__
    if name not in _ARCHS:
        raise InteropError(f"unsupported architecture {name!r}; supported: {', '.join(SUPPORTED)}")
    hf_config["architectures"] = [name]
    state = {k: v.detach().float().cpu().numpy() for k, v in source.state_dict().items()}
    return from_hf(hf_config, state)


def save(cfg, params, directory: str) -> str:
    """Write ``config.json`` + ``model.safetensors`` that ``transformers``' ``from_pretrained`` loads."""
    from safetensors.numpy import save_file

    hf_config, state = to_hf(cfg, params)
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(hf_config, f, indent=2, sort_keys=True)
    save_file(state, os.path.join(directory, "model.safetensors"), metadata={"format": "pt"})
    return directory


# ----------------------------------------------------------------------------- tokenizers
class HfTokenizer(Tokenizer):
    """A ``tokenizers.Tokenizer`` behind mmjax's ``Tokenizer`` interface: ``encode`` gives the ids of the
    text alone, ``tokenize`` lays rows out as ``[BOS] ids... [EOS] PAD...`` and truncates keeping the EOS
    (what ``transformers`` gives with ``truncation=True, padding="max_length"`` for CLIP). Specials that
    the vocabulary lacks (e.g. mmjax's ``[SEP]``) are -1: never produced, never matched."""

    def __init__(self, tokenizer, *, bos_id: int, eot_id: int, pad_id: int, image_id: int = -1, sep_id: int = -1):
        self.backend = tokenizer
        self.vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)
        self.bos_id, self.eot_id, self.pad_id, self.image_id, self.sep_id = bos_id, eot_id, pad_id, image_id, sep_id

    def encode(self, text: str) -> list[int]:
        return self.backend.encode(text, add_special_tokens=False).ids

    def tokenize_like_hf(self, texts, max_len: int) -> np.ndarray:
        """int32 ``[len(texts), max_len]`` with the file's own template (e.g. SigLIP's ``words </s>``, no
        BOS), truncated and padded to ``max_len`` by ``tokenizers`` itself: what transformers gives with
        ``truncation=True, padding="max_length"``."""
        backend = self.backend.__class__.from_str(self.backend.to_str())
        backend.enable_truncation(max_len)
        backend.enable_padding(length=max_len, pad_id=self.pad_id)
        return np.array([e.ids for e in backend.encode_batch(list(texts))], np.int32)

    def decode(self, ids) -> str:
        specials = self.special_ids
        text = self.backend.decode([i for i in map(int, ids) if i not in specials], skip_special_tokens=True)
        suffix = getattr(self.backend.model, "end_of_word_suffix", None)  # CLIP's "</w>" marks word ends
        return text.replace(suffix, " ").strip() if suffix else text


def _token_name(value):
    return value.get("content") if isinstance(value, dict) else value


def load_tokenizer(path: str, *, bos_token: str | None = None, eos_token: str | None = None,
                   pad_token: str | None = None, image_token: str | None = None) -> HfTokenizer:
    """An :class:`HfTokenizer` from ``tokenizer.json`` (a file, or a directory holding it). The special
    tokens come from the arguments, else ``tokenizer_config.json`` beside it, else the file's
    post-processor (BOS = its first special, EOS = its last); PAD defaults to EOS (as CLIP's), the image
    token to ``"<image>"`` when the vocabulary has one (LLaVA)."""
    from tokenizers import Tokenizer as Backend

    file = os.path.join(path, "tokenizer.json") if os.path.isdir(path) else path
    if not os.path.isfile(file):
        raise InteropError(f"{path!r} has no tokenizer.json; pass the file or its directory")
    backend = Backend.from_file(file)
    names: dict[str, Any] = {}
    config_path = os.path.join(os.path.dirname(file), "tokenizer_config.json")
    if os.path.isfile(config_path):
        with open(config_path) as f:
            config = json.load(f)
        names = {k: _token_name(config.get(f"{k}_token")) for k in ("bos", "eos", "pad")}
    with open(file) as f:
        post = json.load(f).get("post_processor") or {}
    if post.get("type") in ("RobertaProcessing", "BertProcessing"):
        names["bos"] = names.get("bos") or post["cls"][0]
        names["eos"] = names.get("eos") or post["sep"][0]
    elif post.get("type") == "TemplateProcessing" and post.get("special_tokens"):
        specials = list(post["special_tokens"])
        names["bos"] = names.get("bos") or specials[0]
        names["eos"] = names.get("eos") or specials[-1]
    names.update({k: v for k, v in (("bos", bos_token), ("eos", eos_token), ("pad", pad_token)) if v is not None})
    names["pad"] = names.get("pad") or names.get("eos")

    def token_id(kind: str) -> int:
        name = names.get(kind)
        i = backend.token_to_id(name) if name is not None else None
        if i is None:
            raise InteropError(f"{file}: no {kind} token found (got {name!r}); pass {kind}_token=...")
        return i

    image = backend.token_to_id(image_token or "<image>")
    if image_token is not None and image is None:
        raise InteropError(f"{file}: image token {image_token!r} is not in the vocabulary")
    return HfTokenizer(backend, bos_id=token_id("bos"), eot_id=token_id("eos"), pad_id=token_id("pad"),
                       image_id=-1 if image is None else image)
