"""Zero-shot image classification with a Hugging Face CLIP or SigLIP directory (no torch needed).

    python -m mmjax.zero_shot --model DIR --labels "cat,dog,bird" [--template "a photo of a {}"] IMAGE...

DIR holds ``config.json`` + ``model.safetensors`` (e.g. written by ``mmjax.interop.hf.save`` or
``save_pretrained``), ``tokenizer.json`` and ``preprocessor_config.json``. Prints one JSON line per
image: ``{"image": PATH, "probs": {"cat": 0.91, ...}}`` (softmax over the labels of the model's logits
for CLIP; for SigLIP, each label's own sigmoid, as SigLIP is trained).
"""

from __future__ import annotations

import argparse
import json
import sys

import jax.numpy as jnp
import numpy as np

from mmjax.commands import load_hf_model
from mmjax.config import ConfigError
from mmjax.interop import preprocess


def classify(model_dir: str, labels: list[str], images: list[str], template: str = "{}") -> list[dict]:
    """One ``{"image": path, "probs": {label: p}}`` per image of ``images``."""
    cfg, params, model, tok, pre = load_hf_model(model_dir, "two_tower", "zero-shot needs CLIP or SigLIP")
    tokens = tok.tokenize_like_hf([template.format(label) for label in labels], cfg.text.max_len)
    pixels = np.stack([preprocess.load_image(p, pre, cfg.image_size) for p in images])
    out, _ = model.apply({"params": params}, jnp.asarray(pixels), jnp.asarray(tokens))
    logits = out["image"] @ out["text"].T * out["logit_scale"] + out.get("logit_bias", 0.0)
    logits = np.asarray(logits, np.float64)
    if "logit_bias" in out:  # SigLIP: independent sigmoids
        probs = 1 / (1 + np.exp(-logits))
    else:
        probs = np.exp(logits - logits.max(axis=1, keepdims=True))
        probs /= probs.sum(axis=1, keepdims=True)
    return [
        {"image": path, "probs": {label: float(p) for label, p in zip(labels, row)}}
        for path, row in zip(images, probs)
    ]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mmjax.zero_shot", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model",
        required=True,
        help="directory with config.json, model.safetensors, tokenizer.json, preprocessor_config.json",
    )
    parser.add_argument("--labels", required=True, help="comma-separated class names")
    parser.add_argument("--template", default="{}", help='text for each label, e.g. "a photo of a {}"')
    parser.add_argument("images", nargs="+")
    args = parser.parse_args(argv)
    labels = [label.strip() for label in args.labels.split(",") if label.strip()]
    try:
        for row in classify(args.model, labels, args.images, args.template):
            print(json.dumps(row), flush=True)
    except (ConfigError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
