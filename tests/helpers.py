"""Helpers shared by the tests (``import helpers``: pytest puts ``tests/`` on ``sys.path``)."""

import json
import os

import pytest

from mmjax import config as config_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def in_ci(value: str | None) -> bool:
    """Whether the ``CI`` environment variable's value says this is a CI run (``true``, ``1``, ``yes``: GitHub
    Actions, GitLab and most others set ``CI=true``)."""
    return (value or "").strip().lower() in ("true", "1", "yes")


def require(module: str):
    """``pytest.importorskip(module)`` for the optional parity extra (torch, transformers, safetensors,
    tokenizers), except in CI (``in_ci($CI)``), where a module that does not import fails the run: CI installs
    the extra, and a silent skip there would hide every parity test."""
    try:
        return pytest.importorskip(module, exc_type=ImportError)  # (a broken install too)
    except pytest.skip.Exception as e:
        if in_ci(os.environ.get("CI")):
            pytest.fail(
                f"CI={os.environ['CI']}: {module!r} does not import, so the parity tests cannot run "
                f"({e}); install the extra: pip install -e '.[test,parity]'",
                pytrace=False,
            )
        raise


TRAINED = dict(
    total_steps=30, log_every=2, checkpoint_every=10
)  # the ``trained`` fixture's run (conftest.py)


def tiny_config(data_dir, **overrides):
    """``configs/clip_shapes.py:tiny`` reading ``data_dir``, with ``--config.KEY=VALUE``-style overrides."""
    cfg = config_lib.load_file(os.path.join(ROOT, "configs/clip_shapes.py:tiny"))
    config_lib.override(cfg, "data.data_dir", data_dir)
    for key, value in overrides.items():
        config_lib.override(cfg, key, str(value))
    return cfg


def saved_params(workdir, cfg):
    """The parameters of the latest checkpoint in ``workdir`` (a run of ``cfg``), as numpy."""
    import flax.linen as nn
    import jax

    from mmjax import checkpoint, tasks

    task = tasks.get_task(cfg)
    params = jax.eval_shape(lambda: nn.unbox(task.init(jax.random.key(0))))
    return jax.device_get(checkpoint.load_params(workdir, params, (".*",)))


def step_with_grads(run):
    """``run.step_fn`` jitted with ``run``'s shardings (the state not donated), also returning the gradients
    of the loss at the state it is given: ``(state, metrics, grads)`` (all parameters' gradients, frozen ones
    too). Equivalence tests compare them: Adam's update ignores a uniform scale of the gradient (a psum where
    a pmean belongs), and clipping hides it too. Call it inside ``run.context()``."""
    import jax

    seed = run.config.seed

    def step(state, batch):
        rng = jax.random.fold_in(jax.random.key(seed), state.step)  # as the train step makes it
        grads = jax.grad(lambda p: run.task.loss(p, batch, rng)[0])(state.params)
        return *run.step_fn(state, batch), grads

    return jax.jit(
        step,
        in_shardings=(run.shardings, run.batch_sharding),
        out_shardings=(run.shardings, None, run.shardings.params),
    )


def assert_grads_close(got, want):
    """Gradient trees equal up to float32 sums in another order: per leaf, rtol 1e-4 and an absolute
    tolerance of 1e-5 of the leaf's largest gradient (+1e-7, for gradients that are zero up to rounding)."""
    import flax
    import numpy as np

    want = flax.traverse_util.flatten_dict(want, sep="/")
    for name, g in flax.traverse_util.flatten_dict(got, sep="/").items():
        w = want[name]
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-7 + 1e-5 * np.abs(w).max(), err_msg=name)


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


# A word-level vocabulary of 64 ids ("<image>" = 63, for LLaVA) and the image processor fields of the tiny
# Hugging Face directories the command-line tests write (shortest edge 30, centre crop 30x30).
HF_WORDS = ["<pad>", "<s>", "</s>"] + [f"w{i}" for i in range(3, 63)] + ["<image>"]
HF_PREPROCESS = {
    "do_resize": True,
    "size": {"shortest_edge": 30},
    "resample": 3,
    "do_center_crop": True,
    "crop_size": {"height": 30, "width": 30},
    "do_rescale": True,
    "rescale_factor": 1 / 255,
    "do_normalize": True,
    "image_mean": [0.48, 0.46, 0.41],
    "image_std": [0.27, 0.26, 0.28],
}


def save_word_tokenizer(directory):
    """A word-level ``tokenizer.json`` over ``HF_WORDS`` ("<s> $A </s>"; unknown words: <pad>) and its
    ``tokenizer_config.json``."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(HF_WORDS)}, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.add_special_tokens(["<pad>", "<s>", "</s>", "<image>"])
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", special_tokens=[("<s>", 1), ("</s>", 2)]
    )
    tok.save(os.path.join(directory, "tokenizer.json"))
    with open(os.path.join(directory, "tokenizer_config.json"), "w") as f:
        json.dump({"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>"}, f)


def save_tiny_clip(directory):
    """A tiny random transformers ``CLIPModel`` (width 36, 3 heads, 30-pixel images, every weight
    perturbed, seed 0) saved in ``directory`` with ``save_word_tokenizer`` and ``HF_PREPROCESS``; returns
    the model."""
    import torch
    import transformers

    config = transformers.CLIPConfig(
        text_config=dict(
            vocab_size=64,
            hidden_size=36,
            intermediate_size=37,
            num_hidden_layers=1,
            num_attention_heads=3,
            max_position_embeddings=8,
            bos_token_id=1,
            eos_token_id=2,
            pad_token_id=0,
        ),
        vision_config=dict(
            hidden_size=36,
            intermediate_size=37,
            num_hidden_layers=1,
            num_attention_heads=3,
            image_size=30,
            patch_size=6,
        ),
        projection_dim=20,
    )
    torch.manual_seed(0)
    model = perturbed(transformers.CLIPModel(config), 3)
    model.save_pretrained(directory)
    save_word_tokenizer(directory)
    with open(os.path.join(directory, "preprocessor_config.json"), "w") as f:
        json.dump(HF_PREPROCESS, f)
    return model


def tiny_llava_config(*, vision_layers: int, patch_size: int, max_positions: int, image_token_id: int = 63):
    """A tiny random ``transformers.LlavaConfig``: a CLIP vision tower of width 36 with 3 heads on 30-pixel
    images, a 2-layer Llama of width 32 with grouped-query attention (4 heads, 2 key/value heads), 64 ids."""
    import transformers

    return transformers.LlavaConfig(
        vision_config=dict(
            model_type="clip_vision_model",
            hidden_size=36,
            intermediate_size=37,
            num_hidden_layers=vision_layers,
            num_attention_heads=3,
            image_size=30,
            patch_size=patch_size,
        ),
        text_config=dict(
            model_type="llama",
            vocab_size=64,
            hidden_size=32,
            intermediate_size=40,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=max_positions,
            pad_token_id=0,
            bos_token_id=1,
            eos_token_id=2,
        ),
        image_token_id=image_token_id,
    )
