"""How one weight is laid out in transformers and in mmjax: a :class:`Rule` names both sides and a *kind*.

Kinds: ``copy``; ``flat`` (reshaped to one axis); ``drop0`` (without mmjax's leading axis of 1); ``conv``
(torch ``[out, in, p, p]`` vs mmjax ``[p, p, in, out]``); ``dense<k>`` (a torch ``Linear`` weight
``[out, in]`` vs an mmjax kernel whose first ``k`` axes are inputs). ``hf_shape``, ``array_to_hf`` and
``array_from_hf`` apply a kind; ``split_fused`` and ``fuse`` handle ``torch.nn.MultiheadAttention``'s
q/k/v stacked in one array, so that each part gets a rule of its own.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Mapping

import numpy as np

from mmjax.interop import InteropError

_FUSED = ("in_proj_weight", "in_proj_bias")  # torch.nn.MultiheadAttention's q/k/v stacked on axis 0


@dataclasses.dataclass(frozen=True)
class Rule:
    hf: str  # key in the transformers state dict
    mm: str  # "/"-joined path in the mmjax params tree
    kind: str = "copy"  # copy | flat | drop0 | conv | dense<k>


def hf_shape(kind: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    """The transformers shape of an mmjax array of ``shape``."""
    if kind == "copy":
        return tuple(shape)
    if kind == "flat":
        return (math.prod(shape),)
    if kind == "drop0":
        return tuple(shape[1:])
    if kind == "conv":
        return (shape[3], shape[2], shape[0], shape[1])
    k = int(kind[len("dense") :])
    return (math.prod(shape[k:]), math.prod(shape[:k]))


def array_to_hf(kind: str, x: np.ndarray) -> np.ndarray:
    """The transformers array of the mmjax array ``x``."""
    if kind == "conv":
        return np.ascontiguousarray(x.transpose(3, 2, 0, 1))
    if kind.startswith("dense"):
        k = int(kind[len("dense") :])
        return np.ascontiguousarray(x.reshape(math.prod(x.shape[:k]), -1).T)
    return x.reshape(hf_shape(kind, x.shape))


def array_from_hf(kind: str, x: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """The mmjax array of ``shape`` from the transformers array ``x``."""
    if kind == "conv":
        return np.ascontiguousarray(x.transpose(2, 3, 1, 0))
    if kind.startswith("dense"):
        return np.ascontiguousarray(x.T).reshape(shape)
    return x.reshape(shape)


def split_fused(state: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``...in_proj_weight`` [3w, w] -> ``...in_proj_weight:q|k|v`` [w, w] (and the biases)."""
    out = {}
    for key, x in state.items():
        if key.endswith(_FUSED):
            if x.shape[0] % 3:
                raise InteropError(
                    f"weight {key!r} has shape {tuple(x.shape)}: its first axis should hold "
                    "query, key and value, a multiple of 3"
                )
            for part, name in zip(np.split(x, 3), "qkv"):
                out[f"{key}:{name}"] = part
        else:
            out[key] = x
    return out


def fuse(state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The inverse of :func:`split_fused`: ``...:q``, ``...:k``, ``...:v`` stacked back into one array."""
    out = {k: v for k, v in state.items() if not k.endswith((":q", ":k", ":v"))}
    for key in {k[:-2] for k in state if k.endswith(":q")}:
        out[key] = np.concatenate([state[f"{key}:{n}"] for n in "qkv"])
    return out
