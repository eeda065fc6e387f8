"""Hugging Face ``transformers`` <-> mmjax: configs and weights, both ways. The public entry point.

    cfg, params = hf.load("path/to/dir")          # config.json + model.safetensors (or a model object)
    model = models.build(cfg)                     # an mmjax module; model.apply({"params": params}, ...)
    hf.save(cfg, params, "out/dir")               # transformers' from_pretrained("out/dir") loads it
    tok = hf.load_tokenizer("path/to/dir")        # tokenizer.json -> mmjax Tokenizer

Supported: ``CLIPModel`` and ``SiglipModel`` (-> ``two_tower``), ``LlavaForConditionalGeneration`` with a
CLIP vision tower and a Llama LM (-> ``early_fusion``). ``cfg`` is a model section in the form the
repo's configs use (``mmjax.models``), plus ``cfg.hf``: the source architecture and the token ids
the module itself does not need (so a saved directory gets them back).

Each architecture is a config converter (``hf_configs``) and a list of rules (``hf_rules``): every weight
is moved by a rule ``(hf key, mmjax path, kind)``, whose kind says how the array is laid out in each
framework (``hf_layouts``). The same rules drive import (``from_hf``) and export (``to_hf``), so export
-> import is the identity. Bad inputs raise :class:`InteropError`, one line naming the key and both
shapes. ``load_tokenizer`` and :class:`HfTokenizer` live in ``hf_tokenizer``.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
from typing import Any, Callable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from mmjax import models
from mmjax.interop import InteropError, hf_configs, hf_rules, hub
from mmjax.interop.hf_layouts import Rule, array_from_hf, array_to_hf, fuse, hf_shape, split_fused
from mmjax.interop.hf_tokenizer import HfTokenizer, load_tokenizer

__all__ = [
    "SUPPORTED",
    "HfTokenizer",
    "InteropError",
    "architecture",
    "from_hf",
    "load",
    "load_tokenizer",
    "param_shapes",
    "read_dir",
    "save",
    "to_hf",
]

SUPPORTED = ("CLIPModel", "SiglipModel", "LlavaForConditionalGeneration")
_MODEL_TYPES = {"clip": "CLIPModel", "siglip": "SiglipModel", "llava": "LlavaForConditionalGeneration"}


# ----------------------------------------------------------------------------- architectures
@dataclasses.dataclass(frozen=True)
class _Arch:
    config_from_hf: Callable[[Mapping, Mapping], dict]  # (hf config, state dict) -> mmjax model section
    config_to_hf: Callable[[Mapping, Mapping], dict]  # (mmjax model section, flat params) -> hf config
    rules: Callable[[Mapping], list[Rule]]  # mmjax model section -> one rule per parameter


_ARCHS = {
    "CLIPModel": _Arch(hf_configs.clip_from_hf, hf_configs.clip_to_hf, hf_rules.clip_rules),
    "SiglipModel": _Arch(hf_configs.siglip_from_hf, hf_configs.siglip_to_hf, hf_rules.siglip_rules),
    "LlavaForConditionalGeneration": _Arch(
        hf_configs.llava_from_hf, hf_configs.llava_to_hf, hf_rules.llava_rules
    ),
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
    raise InteropError(
        f"cannot export model type {cfg.get('type')!r}; supported: two_tower (CLIP, SigLIP), "
        "early_fusion (LLaVA)"
    )


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
        raise InteropError(
            f"{arch}: the conversion rules do not match the mmjax model (rules without a "
            f"parameter: {extra[:3]}, parameters without a rule: {lacking[:3]})"
        )


def _to_plain(cfg) -> dict:
    """A ConfigDict or mapping as nested plain dicts (tuples kept)."""
    to_dict = getattr(cfg, "to_dict", None)
    return to_dict() if to_dict else json.loads(json.dumps(cfg))


# ----------------------------------------------------------------------------- import / export
def from_hf(hf_config: Mapping, state: Mapping[str, Any]):
    """``(config, params)`` of the mmjax model equivalent to a transformers config (a dict, as in
    ``config.json``) and state dict (key -> array)."""
    arch = architecture(hf_config)
    spec = _ARCHS[arch]
    state = split_fused({k: v for k, v in state.items() if not k.endswith("position_ids")})
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
        raise InteropError(
            f"{arch}: unexpected weight {unexpected[0]!r}{more}; the config does not describe it"
        )
    flat = {}
    for r in rules:
        want, x = hf_shape(r.kind, shapes[r.mm]), state[r.hf]
        if tuple(x.shape) != want:
            raise InteropError(
                f"{arch}: weight {r.hf.replace(':', ' part ')!r} has shape {tuple(x.shape)}, "
                f"expected {want} (mmjax {r.mm!r} {shapes[r.mm]})"
            )
        flat[r.mm] = array_from_hf(r.kind, np.asarray(x, np.float32), shapes[r.mm])
    return ml_collections.ConfigDict(cfg), _unflatten(flat)


def to_hf(cfg, params) -> tuple[dict, dict[str, np.ndarray]]:
    """``(hf_config, state)``: the transformers config (dict) and state dict (numpy) of an mmjax model."""
    cfg = _to_plain(cfg)
    scanned = [t for t in ("image", "text", "lm") if isinstance(cfg.get(t), Mapping) and cfg[t].get("scan")]
    if scanned:  # stacked layers (scan=True): export the unrolled layout, the same numbers
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
        what = (
            f"parameter {missing[0]!r} is missing" if missing else f"unexpected parameter {unexpected[0]!r}"
        )
        raise InteropError(f"cannot export to {arch}: {what} for this config")
    state = {}
    for r in rules:
        if flat[r.mm].shape != shapes[r.mm]:
            raise InteropError(
                f"cannot export to {arch}: parameter {r.mm!r} has shape {flat[r.mm].shape}, "
                f"expected {shapes[r.mm]} from the config"
            )
        state[r.hf] = array_to_hf(r.kind, flat[r.mm])
    return hf_config, fuse(state)


def read_dir(directory: str) -> tuple[dict, dict[str, np.ndarray]]:
    """``(hf_config, state)`` from a directory with ``config.json`` and ``model.safetensors`` (or the
    shards listed by ``model.safetensors.index.json``)."""
    from safetensors.numpy import load_file  # lazy: the optional [hf] extra

    config_path = os.path.join(directory, "config.json")
    if not os.path.isfile(config_path):
        raise InteropError(f"{directory!r} has no config.json; pass a directory written by save_pretrained")
    with open(config_path) as f:
        hf_config = json.load(f)
    architecture(hf_config)  # an unsupported model fails before its weights are read
    single = os.path.join(directory, "model.safetensors")
    index = os.path.join(directory, "model.safetensors.index.json")
    if os.path.isfile(single):
        files = [single]
    elif os.path.isfile(index):
        with open(index) as f:
            files = [os.path.join(directory, n) for n in sorted(set(json.load(f)["weight_map"].values()))]
    else:
        raise InteropError(
            f"{directory!r} has no model.safetensors (nor model.safetensors.index.json); "
            "save the model with safe_serialization"
        )
    state = {}
    for path in files:
        try:
            try:
                state.update(load_file(path))
            except TypeError:  # bfloat16: numpy has no such dtype; read through jax, then float32
                from safetensors.flax import load_file as load_jax  # lazy: the optional [hf] extra

                state.update({k: np.asarray(v, np.float32) for k, v in load_jax(path).items()})
        except Exception as e:  # safetensors raises its own error types
            raise InteropError(f"{path}: not a readable safetensors file ({e})") from None
    return hf_config, state


# The weights a model's config is read from (its temperature and bias init), beside config.json.
CONFIG_WEIGHTS = ("logit_scale", "logit_bias")


def read_model_config(directory: str) -> ml_collections.ConfigDict:
    """The mmjax model config of a Hugging Face directory, as ``load`` gives it, reading ``config.json``
    and only the scalar weights it needs (``CONFIG_WEIGHTS``), not the whole model: for a config file
    (e.g. ``configs/clip_custom.py:hf=DIR``) whose run then loads the weights once (``init_from.hf``)."""
    from safetensors import safe_open  # lazy: the optional [hf] extra

    directory = hub.resolve(directory)
    config_path = os.path.join(directory, "config.json")
    if not os.path.isfile(config_path):
        raise InteropError(f"{directory!r} has no config.json; pass a directory written by save_pretrained")
    with open(config_path) as f:
        hf_config = json.load(f)
    arch = architecture(hf_config)
    files = sorted(glob.glob(os.path.join(directory, "*.safetensors")))
    if not files:
        raise InteropError(
            f"{directory!r} has no safetensors weights; save the model with safe_serialization"
        )
    state = {}
    for path in files:
        with safe_open(path, framework="flax") as f:  # flax: bfloat16 reads too
            for key in set(f.keys()) & set(CONFIG_WEIGHTS):
                state[key] = np.asarray(f.get_tensor(key), np.float32)
    return ml_collections.ConfigDict(_ARCHS[arch].config_from_hf(hf_config, state))


def load(source):
    """``(config, params)`` from a directory (``config.json`` + safetensors), a Hugging Face Hub id
    (``mmjax.interop.hub.resolve``: the cache, or a download) or a transformers model."""
    if isinstance(source, (str, os.PathLike)):
        return from_hf(*read_dir(hub.resolve(os.fspath(source))))
    hf_config = source.config.to_dict()
    name = type(source).__name__
    if name not in _ARCHS:
        raise InteropError(f"unsupported architecture {name!r}; supported: {', '.join(SUPPORTED)}")
    hf_config["architectures"] = [name]
    state = {k: v.detach().float().cpu().numpy() for k, v in source.state_dict().items()}
    return from_hf(hf_config, state)


def save(cfg, params, directory: str) -> str:
    """Write ``config.json`` + ``model.safetensors`` that ``transformers``' ``from_pretrained`` loads."""
    from safetensors.numpy import save_file  # lazy: the optional [hf] extra

    hf_config, state = to_hf(cfg, params)
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(hf_config, f, indent=2, sort_keys=True)
    save_file(state, os.path.join(directory, "model.safetensors"), metadata={"format": "pt"})
    return directory
