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
import os
import sys

import numpy as np

_RESAMPLE = {0: "NEAREST", 1: "LANCZOS", 2: "BILINEAR", 3: "BICUBIC", 4: "BOX", 5: "HAMMING"}


def preprocess(path: str, config: dict, image_size: int) -> np.ndarray:
    """float32 ``[H, W, 3]`` as a transformers image processor prepares it: RGB, resize (shortest edge, or
    to height x width), centre crop, rescale, normalise (``preprocessor_config.json`` fields)."""
    from PIL import Image

    image = Image.open(path).convert("RGB")
    resample = getattr(Image.Resampling, _RESAMPLE.get(config.get("resample", 3), "BICUBIC"))
    if config.get("do_resize", True):
        size = config.get("size", {"shortest_edge": image_size})
        size = {"shortest_edge": size} if isinstance(size, int) else size
        if "shortest_edge" in size:
            w, h = image.size
            short = size["shortest_edge"]
            new = (short, int(short * h / w)) if w <= h else (int(short * w / h), short)
            image = image.resize(new, resample)
        else:
            image = image.resize((size["width"], size["height"]), resample)
    if config.get("do_center_crop", False):
        crop = config.get("crop_size", image_size)
        ch, cw = (crop, crop) if isinstance(crop, int) else (crop["height"], crop["width"])
        w, h = image.size
        left, top = (w - cw) // 2, (h - ch) // 2
        image = image.crop((left, top, left + cw, top + ch))
    x = np.asarray(image, np.float32)
    if config.get("do_rescale", True):
        x = x * np.float32(config.get("rescale_factor", 1 / 255))
    if config.get("do_normalize", True):
        x = (x - np.asarray(config.get("image_mean", 0.5), np.float32)) / np.asarray(config.get("image_std", 0.5),
                                                                                      np.float32)
    return x


def preprocessor_config(model_dir: str) -> dict:
    """The directory's ``preprocessor_config.json`` ({} without one: the defaults of ``preprocess``)."""
    path = os.path.join(model_dir, "preprocessor_config.json")
    if not os.path.isfile(path):
        return {}
    with open(path) as f:
        return json.load(f)


def classify(model_dir: str, labels: list[str], images: list[str], template: str = "{}") -> list[dict]:
    import jax.numpy as jnp

    from mmjax import models
    from mmjax.interop import hf

    cfg, params = hf.load(model_dir)
    if cfg.get("type") != "two_tower":
        raise hf.InteropError(f"{model_dir!r} is a {cfg.get('type')} model; zero-shot needs CLIP or SigLIP")
    tok = hf.load_tokenizer(model_dir)
    pre = preprocessor_config(model_dir)
    model = models.build(cfg)
    tokens = tok.tokenize_like_hf([template.format(label) for label in labels], cfg.text.max_len)
    pixels = np.stack([preprocess(p, pre, cfg.image_size) for p in images])
    out, _ = model.apply({"params": params}, jnp.asarray(pixels), jnp.asarray(tokens))
    logits = np.asarray(out["image"] @ out["text"].T * out["logit_scale"] + out.get("logit_bias", 0.0), np.float64)
    if "logit_bias" in out:  # SigLIP: independent sigmoids
        probs = 1 / (1 + np.exp(-logits))
    else:
        probs = np.exp(logits - logits.max(axis=1, keepdims=True))
        probs /= probs.sum(axis=1, keepdims=True)
    return [{"image": path, "probs": {label: float(p) for label, p in zip(labels, row)}}
            for path, row in zip(images, probs)]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mmjax.zero_shot", description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="directory with config.json, model.safetensors, "
                                                       "tokenizer.json, preprocessor_config.json")
    parser.add_argument("--labels", required=True, help="comma-separated class names")
    parser.add_argument("--template", default="{}", help='text for each label, e.g. "a photo of a {}"')
    parser.add_argument("images", nargs="+")
    args = parser.parse_args(argv)
    from mmjax.config import ConfigError

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
