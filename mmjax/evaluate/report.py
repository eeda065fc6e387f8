"""``report.md`` for a run: final metrics, a loss curve, and the image-text similarity matrix of a few
evaluation examples (with their zero-shot predictions)."""

from __future__ import annotations

import os
import textwrap

import numpy as np


def figure(**kwargs):
    """A matplotlib ``Figure`` drawn off-screen and saved with ``fig.savefig``. It is not pyplot's: no global
    backend switch and nothing to close, so writing a report leaves a notebook's inline plots alone."""
    from matplotlib.figure import Figure

    return Figure(**kwargs)


def loss_curve(path: str, history: list[dict]) -> None:
    fig = figure(figsize=(6, 3.5))
    ax = fig.subplots()
    steps = [r["step"] for r in history if "loss" in r]
    ax.plot(steps, [r["loss"] for r in history if "loss" in r])
    ax.set(xlabel="step", ylabel="training loss", title="Training loss")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def similarity_matrix(
    path: str, images: np.ndarray, captions: list[str], similarity: np.ndarray, predictions: list[str]
) -> None:
    """Rows: captions; columns: images (with the zero-shot prediction under each)."""
    n = len(images)
    fig = figure(figsize=(2 + 1.2 * n, 1.6 + 0.9 * n))
    grid = fig.add_gridspec(2, n + 1, height_ratios=[1.3, n], width_ratios=[4.5] + [1] * n, hspace=0.05)
    for j in range(n):
        ax = fig.add_subplot(grid[0, j + 1])
        ax.imshow(np.clip((images[j] + 1) / 2, 0, 1))
        ax.set_axis_off()
        ax.set_title(textwrap.fill(predictions[j], 12), fontsize=7)
    ax = fig.add_subplot(grid[1, 1:])
    ax.imshow(similarity, cmap="viridis")
    for i in range(n):
        for j in range(n):
            ax.text(j, i, f"{similarity[i, j]:.2f}", ha="center", va="center", fontsize=7, color="w")
    ax.set_xticks([])
    ax.set_yticks(range(n), [textwrap.shorten(c, 60) for c in captions], fontsize=7)
    fig.suptitle("Cosine similarity: captions (rows) x images (columns); titles: zero-shot class", fontsize=9)
    fig.savefig(path, dpi=110, bbox_inches="tight")


def vlm_grid(path: str, images: np.ndarray, panels: list[list[str]], title: str) -> None:
    """A grid (up to 4 columns) of images in [-1, 1], each with its lines of text (questions and answers,
    a generated caption, ...) wrapped at 40 characters underneath."""
    if len(images) != len(panels) or not len(images):
        raise ValueError(f"need one panel of text per image; got {len(images)} images, {len(panels)} panels")
    n, cols = len(images), min(4, len(images))
    rows = -(-n // cols)
    texts = ["\n".join(textwrap.fill(line, 40) for line in lines) for lines in panels]
    side = 2.5  # inches per image; 40 characters of 6.5 pt monospace are about 2.2 inches wide
    text_h = 0.12 * max(t.count("\n") + 1 for t in texts) + 0.1
    height = rows * (side + text_h) + 0.4
    fig = figure(figsize=(side * cols + 0.2, height))
    # Image and text rows alternate, so long text never runs into the next row's images.
    grid = fig.add_gridspec(
        2 * rows,
        cols,
        height_ratios=[side, text_h] * rows,
        left=0.02,
        right=0.98,
        bottom=0.01,
        top=1 - 0.4 / height,
        wspace=0.08,
        hspace=0.03,
    )
    for i in range(n):
        row, col = divmod(i, cols)
        ax = fig.add_subplot(grid[2 * row, col])
        ax.imshow(np.clip((np.asarray(images[i], np.float32) + 1) / 2, 0, 1))
        ax.set_anchor("S")
        ax.set_axis_off()
        ax = fig.add_subplot(grid[2 * row + 1, col])
        ax.set_axis_off()
        ax.text(
            0.0, 1.0, texts[i], transform=ax.transAxes, ha="left", va="top", fontsize=6.5, family="monospace"
        )
    fig.suptitle(title, fontsize=10)
    fig.savefig(path, dpi=110, bbox_inches="tight")


def metrics_table(results: dict) -> str:
    """A markdown table of a results dict (floats to 4 decimals)."""
    rows = "\n".join(
        f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in results.items()
    )
    return f"| metric | value |\n|---|---|\n{rows}"


def write(
    workdir: str, results: dict, history: list[dict], *, images, captions, similarity, predictions
) -> str:
    loss_curve(os.path.join(workdir, "loss.png"), history)
    similarity_matrix(os.path.join(workdir, "similarity.png"), images, captions, similarity, predictions)
    text = f"""# mmjax run report

{metrics_table(results)}

## Training loss
![loss curve](loss.png)

## Image-text similarity ({len(images)} evaluation examples)
![similarity matrix](similarity.png)
"""
    path = os.path.join(workdir, "report.md")
    with open(path, "w") as f:
        f.write(text)
    return path
