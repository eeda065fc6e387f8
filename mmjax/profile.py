"""Parameters and forward FLOPs of every named two-tower model, image and text tower separately.

    python -m mmjax.profile            # a table
    python -m mmjax.profile --json     # one JSON object per model

FLOPs are counted analytically as 2 x multiply-accumulates of the matrix products (the convention of
open_clip's profile table; layer norms, softmax and activations are not counted). Per sample:

  ViT (N tokens = patches [+1 cls], width D, MLP width M, depth L, patch p, embed dim E):
      patches * (3 p^2) * D  +  L * (4 N D^2 + 2 N^2 D + 2 N D M)  +  D E
      (a hybrid stem adds, per 3x3 conv stage at resolution R: R^2 * 9 * C_in * C_out, and the patch
      embedding then reads C_stem channels over a p / 2^stages patch)
  text (context T): L * (4 T D^2 + 2 T^2 D + 2 T D M)  +  D E

(4 N D^2: q, k, v, out projections; 2 N^2 D: q.k^T and attention x v; 2 N D M: the MLP.)
For ``clip-vit-b16`` this gives 35.13 + 5.96 = 41.09 GFLOPs, open_clip's figure.
"""

from __future__ import annotations

import json
import sys

import jax
import jax.numpy as jnp
import numpy as np

from mmjax import models

# Dense bf16 matmul peak per chip (datasheets), by a substring of ``device.device_kind``; more specific
# names first ("H100 PCIe" before "H100", "TPU v5 lite" before "TPU v5").
DATASHEET_BF16_PEAKS = (
    ("H100 PCIe", 756e12),
    ("H100", 989e12),  # SXM
    ("H200", 989e12),
    ("A100", 312e12),
    ("TPU v4", 275e12),
    ("TPU v5 lite", 197e12),
    ("TPU v5e", 197e12),
    ("TPU v5p", 459e12),
    ("TPU v5", 459e12),
    ("TPU v6 lite", 918e12),
    ("TPU v6e", 918e12),
)


def datasheet_peak(device_kind: str) -> float | None:
    """The datasheet bf16 FLOP/s of one ``device_kind`` chip, or None for an unknown one (e.g. a CPU)."""
    return next((peak for name, peak in DATASHEET_BF16_PEAKS if name.lower() in device_kind.lower()), None)


def time_interleaved(runners, rounds: int) -> tuple[list[list[float]], list]:
    """Time several variants side by side: one warm-up call of each runner, then ``rounds`` rounds of one
    call of each, round-robin, so a change in the machine's load during the run affects every variant
    alike. A runner must return only once its work is done (block on its result). Returns ``(seconds,
    last)``: ``seconds[i]`` the per-round times of runner ``i``, ``last[i]`` what its last call returned."""
    import time

    last = [run() for run in runners]
    seconds = [[] for _ in runners]
    for _ in range(rounds):
        for i, run in enumerate(runners):
            t0 = time.perf_counter()
            last[i] = run()
            seconds[i].append(time.perf_counter() - t0)
    return seconds, last


def _encoder_macs(tokens: int, width: int, mlp_dim: int, depth: int) -> int:
    return depth * (4 * tokens * width**2 + 2 * tokens**2 * width + 2 * tokens * width * mlp_dim)


def image_flops(cfg: dict) -> int:
    im, size = cfg["image"], cfg["image_size"]
    patches = (size // im["patch_size"]) ** 2
    tokens = patches + (1 if im.get("pool", "cls") == "cls" else 0)
    macs, channels, resolution = 0, 3, size
    for stage in im.get("stem_channels", ()):
        macs += resolution**2 * 9 * channels * stage
        channels, resolution = stage, resolution // 2
    patch = im["patch_size"] // 2 ** len(im.get("stem_channels", ()))
    macs += patches * channels * patch**2 * im["width"]
    if im.get("stem_colour") == "split":  # the colour path: a per-pixel layer at half resolution, projected
        hidden = im.get("colour_hidden", 16)
        macs += (size // 2) ** 2 * 3 * hidden + patches * hidden * im["width"]
    macs += _encoder_macs(tokens, im["width"], im["mlp_dim"], im["depth"])
    macs += im["width"] * cfg["embed_dim"]
    return 2 * macs


def text_flops(cfg: dict) -> int:
    tx = cfg["text"]
    macs = (
        _encoder_macs(tx["max_len"], tx["width"], tx["mlp_dim"], tx["depth"]) + tx["width"] * cfg["embed_dim"]
    )
    return 2 * macs


def param_counts(cfg: dict) -> dict[str, int]:
    import flax.linen as nn

    model = models.build(cfg)
    s, length = cfg["image_size"], cfg["text"]["max_len"]
    shapes = jax.eval_shape(
        model.init, jax.random.key(0), jnp.zeros((1, s, s, 3)), jnp.zeros((1, length), jnp.int32)
    )
    params = nn.unbox(shapes)["params"]
    count = lambda tree: int(sum(np.prod(x.shape) for x in jax.tree.leaves(tree)))  # noqa: E731
    return {
        "params": count(params),
        "image_params": count(params["image"]) + count(params["image_proj"]),
        "text_params": count(params["text"]) + count(params["text_proj"]),
    }


def profile(name: str) -> dict:
    cfg = models.model_config(name)
    row = {"model": name, "image_size": cfg["image_size"], "embed_dim": cfg["embed_dim"], **param_counts(cfg)}
    img, txt = image_flops(cfg), text_flops(cfg)
    row.update(
        gflops=round((img + txt) / 1e9, 3), image_gflops=round(img / 1e9, 3), text_gflops=round(txt / 1e9, 3)
    )
    return row


def main(argv: list[str]) -> int:
    as_json = "--json" in argv[1:]
    unknown = [a for a in argv[1:] if a != "--json"]
    if unknown:
        print(
            f"error: unexpected argument {unknown[0]!r}; usage: python -m mmjax.profile [--json]",
            file=sys.stderr,
        )
        return 2
    rows = [profile(name) for name in models.list_models("two_tower")]
    if as_json:
        for row in rows:
            print(json.dumps(row))
        return 0
    header = [
        "model",
        "image_size",
        "embed_dim",
        "params (M)",
        "image (M)",
        "text (M)",
        "GFLOPs",
        "image GFLOPs",
        "text GFLOPs",
    ]
    lines = [
        [
            r["model"],
            r["image_size"],
            r["embed_dim"],
            f"{r['params'] / 1e6:.2f}",
            f"{r['image_params'] / 1e6:.2f}",
            f"{r['text_params'] / 1e6:.2f}",
            f"{r['gflops']:.2f}",
            f"{r['image_gflops']:.2f}",
            f"{r['text_gflops']:.2f}",
        ]
        for r in rows
    ]
    widths = [max(len(str(x)) for x in col) for col in zip(header, *lines)]
    for line in [header, *lines]:
        print("  ".join(str(x).rjust(w) for x, w in zip(line, widths)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
