"""Helpers shared by the train-loop tests (``import helpers``: pytest puts ``tests/`` on ``sys.path``)."""

import json
import os

from mmjax import config as config_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


TRAINED = dict(total_steps=30, log_every=2, checkpoint_every=10)  # the ``trained`` fixture's run (conftest.py)


def tiny_config(data_dir, **overrides):
    """``configs/clip_shapes.py:tiny`` reading ``data_dir``, with ``--config.KEY=VALUE``-style overrides."""
    cfg = config_lib.load_file(os.path.join(ROOT, "configs/clip_shapes.py:tiny"))
    config_lib.override(cfg, "data.data_dir", data_dir)
    for key, value in overrides.items():
        config_lib.override(cfg, key, str(value))
    return cfg


def read_metrics(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def perturbed(model, seed: int):
    """A torch model with every parameter moved by N(0, 0.05) noise, in eval mode: random-init models have
    ones/zeros layer norms, which would let a swapped scale and bias pass a parity test."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    return model.eval()
