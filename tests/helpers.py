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


def tiny_llava_config(*, vision_layers: int, patch_size: int, max_positions: int, image_token_id: int = 63):
    """A tiny random ``transformers.LlavaConfig``: a CLIP vision tower of width 36 with 3 heads on 30-pixel
    images, a 2-layer Llama of width 32 with grouped-query attention (4 heads, 2 key/value heads), 64 ids."""
    import transformers

    return transformers.LlavaConfig(
        vision_config=dict(model_type="clip_vision_model", hidden_size=36, intermediate_size=37,
                           num_hidden_layers=vision_layers, num_attention_heads=3, image_size=30,
                           patch_size=patch_size),
        text_config=dict(model_type="llama", vocab_size=64, hidden_size=32, intermediate_size=40, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=max_positions,
                         pad_token_id=0, bos_token_id=1, eos_token_id=2),
        image_token_id=image_token_id)
