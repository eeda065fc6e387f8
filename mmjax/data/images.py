"""Image operations of the input pipeline, in numpy and Pillow (no Grain, no TFDS): crops and normalisation.

``resize_center_crop(image, size)``: the evaluation view of CLIP's processor (shortest side to ``size``,
bicubic, the centre ``size`` x ``size``); ``resize(image, size)``: SigLIP's (squashed to ``size`` x
``size``); ``eval_view`` picks one by ``data.eval_view``. ``random_resized_crop(image, size, rng)``: the
training view (a random box of ``scale`` of the area and ``ratio`` aspect, resized to ``size``: Inception's
crop, as torchvision's ``RandomResizedCrop`` and open_clip's training transform, whose default scale is
(0.9, 1)). ``normalize(image, normalization)``: uint8 -> float32 with a model's mean and std
(``NORMALIZATIONS``).
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

# name -> (mean, std) per RGB channel, of pixels in [0, 1]; "minus_one_one" is x / 127.5 - 1 exactly.
NORMALIZATIONS = {
    "minus_one_one": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),  # mmjax's own models, SigLIP
    "siglip": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    # OpenAI CLIP's (its preprocessing, and transformers' CLIPImageProcessor defaults)
    "clip": ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),  # torchvision's
}


def check_normalization(name: str) -> str:
    if name not in NORMALIZATIONS:
        raise ValueError(f"data.normalization={name!r} is unknown; valid names: {', '.join(NORMALIZATIONS)}")
    return name


def normalize(image_uint8: np.ndarray, normalization: str = "minus_one_one") -> np.ndarray:
    """uint8 [0, 255] -> float32: ``(x / 255 - mean) / std`` of ``NORMALIZATIONS[normalization]``
    ("minus_one_one": ``x / 127.5 - 1``, in [-1, 1])."""
    x = np.asarray(image_uint8, np.float32)
    if normalization == "minus_one_one":
        return x / 127.5 - 1.0
    mean, std = (np.asarray(v, np.float32) for v in NORMALIZATIONS[check_normalization(normalization)])
    return (x / np.float32(255) - mean) / std


def denormalize(image: np.ndarray, normalization: str = "minus_one_one") -> np.ndarray:
    """The inverse of ``normalize``, rounded to uint8 [0, 255] (for display)."""
    if normalization == "minus_one_one":
        x = (np.asarray(image) + 1.0) * 127.5
    else:
        mean, std = (np.asarray(v, np.float32) for v in NORMALIZATIONS[check_normalization(normalization)])
        x = (np.asarray(image) * std + mean) * 255
    return np.clip(np.round(x), 0, 255).astype(np.uint8)


def shortest_side_size(width: int, height: int, short: int) -> tuple[int, int]:
    """``(width, height)`` scaled so that the shorter side is ``short`` (the longer one truncated, as
    transformers' CLIP processor does)."""
    return (short, int(short * height / width)) if width <= height else (int(short * width / height), short)


def center_box(width: int, height: int, crop_w: int, crop_h: int) -> tuple[int, int, int, int]:
    """The ``(left, top, right, bottom)`` box of the centre ``crop_w`` x ``crop_h``."""
    left, top = (width - crop_w) // 2, (height - crop_h) // 2
    return left, top, left + crop_w, top + crop_h


def resize_center_crop(image: np.ndarray, size: int) -> np.ndarray:
    """uint8 ``[H, W, 3]`` -> ``[size, size, 3]``: shortest side to ``size`` (bicubic), centre crop. An
    image already ``size`` x ``size`` is returned as it is."""
    h, w = image.shape[:2]
    if (h, w) == (size, size):
        return image
    pil = Image.fromarray(image)
    pil = pil.resize(shortest_side_size(w, h, size), Image.Resampling.BICUBIC)
    return np.asarray(pil.crop(center_box(*pil.size, size, size)))


def resize(image: np.ndarray, size: int) -> np.ndarray:
    """uint8 ``[H, W, 3]`` -> ``[size, size, 3]``, squashed (bicubic, the aspect not kept): SigLIP's
    processors' view. An image already ``size`` x ``size`` is returned as it is."""
    if image.shape[:2] == (size, size):
        return image
    return np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.BICUBIC))


EVAL_VIEWS = {"center": resize_center_crop, "resize": resize}


def eval_view(image: np.ndarray, size: int, view: str = "center") -> np.ndarray:
    """The evaluation view ``data.eval_view`` of an image: "center" (``resize_center_crop``, CLIP's) or
    "resize" (``resize``, SigLIP's)."""
    if view not in EVAL_VIEWS:
        raise ValueError(f"data.eval_view={view!r} is unknown; valid views: {', '.join(EVAL_VIEWS)}")
    return EVAL_VIEWS[view](image, size)


def random_resized_crop(
    image: np.ndarray,
    size: int,
    rng: np.random.Generator,
    scale: tuple[float, float] = (0.9, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> np.ndarray:
    """uint8 ``[H, W, 3]`` -> ``[size, size, 3]``: a box covering a fraction in ``scale`` of the image's area
    with an aspect ratio (log-uniform) in ``ratio``, resized to ``size`` (bicubic). Ten tries at a box that
    fits, then the largest centred box of the nearest allowed aspect (torchvision's fallback)."""
    h, w = image.shape[:2]
    area, log_ratio = h * w, (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        cw, ch = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
        if 0 < cw <= w and 0 < ch <= h:
            left, top = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
            box = (left, top, left + cw, top + ch)
            break
    else:
        aspect = min(max(w / h, ratio[0]), ratio[1])
        cw, ch = (w, int(round(w / aspect))) if w / h < aspect else (int(round(h * aspect)), h)
        box = center_box(w, h, min(cw, w), min(ch, h))
    crop = Image.fromarray(image).crop(box)
    return np.asarray(crop.resize((size, size), Image.Resampling.BICUBIC))
