"""The optimizer from ``config.optimizer``: AdamW, linear warmup + cosine decay, global-norm
clipping, and regex lists over parameter paths (``"image/encoder/block_0/mlp/fc1/kernel"``) that choose
which parameters get weight decay and which are frozen. Frozen parameters get no optimizer state.
"""

from __future__ import annotations

import re
from typing import Sequence

import flax
import jax
import optax

from mmjax.config import ConfigError


def param_paths(params) -> dict[tuple[str, ...], str]:
    return {k: "/".join(k) for k in flax.traverse_util.flatten_dict(flax.core.unfreeze(params))}


def path_labels(params, patterns: Sequence[str], match: str, default: str):
    """A tree like ``params`` with ``match`` where the path fully matches a regex, else ``default``."""
    compiled = []
    for p in patterns:
        try:
            compiled.append(re.compile(p))
        except re.error as e:
            raise ConfigError(f"invalid parameter regex {p!r}: {e}") from None
    flat = {
        k: (match if any(r.fullmatch(path) for r in compiled) else default)
        for k, path in param_paths(params).items()
    }
    return flax.traverse_util.unflatten_dict(flat)


def schedule(opt_cfg, total_steps: int) -> optax.Schedule:
    warmup = min(int(opt_cfg.warmup_steps), max(total_steps - 1, 0))
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=opt_cfg.lr,
        warmup_steps=warmup,
        decay_steps=max(total_steps, warmup + 1),
        end_value=opt_cfg.lr * opt_cfg.end_lr_factor,
    )


def trainable(opt_cfg, params):
    """A tree like ``params``: False for the frozen parameters (``freeze_regex``), True for the rest."""
    return path_labels(params, opt_cfg.freeze_regex, False, True)


def make(opt_cfg, total_steps: int, params) -> optax.GradientTransformation:
    """``params`` may be concrete, abstract or logically boxed: only its structure and paths are used."""
    if opt_cfg.name != "adamw":
        raise ConfigError(f"unknown optimizer {opt_cfg.name!r}; known: adamw")
    decay = path_labels(params, opt_cfg.weight_decay_regex, True, False)
    tx = optax.adamw(
        schedule(opt_cfg, total_steps),
        b1=opt_cfg.b1,
        b2=opt_cfg.b2,
        eps=opt_cfg.eps,
        weight_decay=opt_cfg.weight_decay,
        mask=decay,
    )
    if opt_cfg.grad_clip_norm:
        tx = optax.chain(optax.clip_by_global_norm(opt_cfg.grad_clip_norm), tx)
    if opt_cfg.freeze_regex:
        labels = jax.tree.map(lambda t: "trained" if t else "frozen", trainable(opt_cfg, params))
        tx = optax.multi_transform({"trained": tx, "frozen": optax.set_to_zero()}, labels)
    return tx
