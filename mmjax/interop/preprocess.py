"""Image preprocessing as a Hugging Face image processor does it, with Pillow and numpy (no torch).

``processor_config(model_dir)`` reads a directory's ``preprocessor_config.json``; ``load_image(path,
config, image_size)`` applies it: RGB, resize (shortest edge, or to height x width, with the file's
resampling), centre crop, rescale, normalise. The zero-shot and generation commands feed models with it;
tests/interop/test_hf_cli.py compares it with transformers' CLIP and SigLIP processors.
"""

from __future__ import annotations

import json
import os

import numpy as np
from PIL import Image

_RESAMPLE = {0: "NEAREST", 1: "LANCZOS", 2: "BILINEAR", 3: "BICUBIC", 4: "BOX", 5: "HAMMING"}


def load_image(path: str, config: dict, image_size: int) -> np.ndarray:
    """float32 ``[H, W, 3]``: the image at ``path`` as a transformers image processor prepares it, by the
    ``preprocessor_config.json`` fields in ``config`` (``image_size`` where it names no size)."""
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
        mean = np.asarray(config.get("image_mean", 0.5), np.float32)
        x = (x - mean) / np.asarray(config.get("image_std", 0.5), np.float32)
    return x


def processor_config(model_dir: str) -> dict:
    """The directory's ``preprocessor_config.json`` ({} without one: the defaults of ``load_image``)."""
    path = os.path.join(model_dir, "preprocessor_config.json")
    if not os.path.isfile(path):
        return {}
    with open(path) as f:
        return json.load(f)
