"""Image grids and plots, written as PNG files and TensorBoard images (one implementation)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import tensorflow as tf

from tfgen import storage


def to_uint8(images: np.ndarray, pixel_range: tuple[float, float]) -> np.ndarray:
    low, high = pixel_range
    unit = (np.asarray(images, np.float32) - low) / (high - low)
    return np.clip(np.round(unit * 255.0), 0, 255).astype(np.uint8)


def image_grid(images: np.ndarray, ncols: int, pixel_range=(0.0, 1.0), pad: int = 2) -> np.ndarray:
    """[N, H, W, C] -> one [rows*(H+pad)+pad, ncols*(W+pad)+pad, C] uint8 image (white padding)."""
    images = to_uint8(images, pixel_range)
    n, h, w, c = images.shape
    ncols = max(1, min(ncols, n))
    nrows = -(-n // ncols)
    grid = np.full((nrows * (h + pad) + pad, ncols * (w + pad) + pad, c), 255, np.uint8)
    for i in range(n):
        r, col = divmod(i, ncols)
        top, left = pad + r * (h + pad), pad + col * (w + pad)
        grid[top:top + h, left:left + w] = images[i]
    return grid


def stacked_grid(batches: list[np.ndarray], ncols: int, pixel_range=(0.0, 1.0)) -> np.ndarray:
    """Row blocks: for every ncols images, one row from each batch (e.g. original / reconstruction)."""
    n = min(len(b) for b in batches)
    rows = []
    for start in range(0, n, ncols):
        for b in batches:
            chunk = np.asarray(b[start:start + ncols])
            if len(chunk) < ncols:  # pad a short last block so rows line up
                fill = np.full((ncols - len(chunk), *chunk.shape[1:]), pixel_range[1], chunk.dtype)
                chunk = np.concatenate([chunk, fill])
            rows.append(chunk)
    return image_grid(np.concatenate(rows), ncols, pixel_range)


def write_png(path: Path, grid: np.ndarray, scale: int = 2) -> Path:
    """Write a uint8 image, upscaled by nearest neighbour so small digits stay visible."""
    if scale > 1:
        grid = np.repeat(np.repeat(grid, scale, axis=0), scale, axis=1)
    with storage.writing(path, in_place=True):
        path.parent.mkdir(exist_ok=True)  # one level (figures/): a deleted run is not made again
        tf.io.write_file(str(path), tf.io.encode_png(grid))
    return path


def summary_image(tag: str, grid: np.ndarray, step: int) -> None:
    tf.summary.image(tag, grid[None], step=step)


def plot_curves(history: list[dict], keys: list[tuple[str, str]], path: Path, title: str,
                ylabel: str) -> Path | None:
    """Line plot of per-epoch values, one line per (history key, label)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lines = [(label, [(h["epoch"], h[key]) for h in history if key in h]) for key, label in keys]
    lines = [(label, pts) for label, pts in lines if pts]
    if not lines:
        return None
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    for label, pts in lines:
        xs, ys = zip(*pts)
        ax.plot(xs, ys, marker="o", markersize=3, label=label)
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    try:
        with storage.writing(path, in_place=True):
            path.parent.mkdir(exist_ok=True)  # as in write_png
            fig.savefig(path)
    finally:
        plt.close(fig)
    return path


#: the embedding projector's largest sprite image (pixels per side)
MAX_SPRITE = 8192


def sprite(images: np.ndarray, pixel_range=(0.0, 1.0)) -> tuple[np.ndarray, tuple[int, int]]:
    """TensorBoard projector sprite: the images as RGB thumbnails, row-major in a square grid of
    ceil(sqrt(n)) per side without padding (image i at row i // side, column i % side), shrunk
    if needed so the sprite stays within MAX_SPRITE pixels.  Returns (uint8 [S_h, S_w, 3],
    (thumbnail height, width))."""
    images = np.asarray(images, np.float32)
    n, h, w, c = images.shape
    side = max(1, int(np.ceil(np.sqrt(n))))
    shrink = min(1.0, MAX_SPRITE / (side * max(h, w)))
    if shrink < 1.0:
        h, w = max(1, int(h * shrink)), max(1, int(w * shrink))
        images = tf.image.resize(images, [h, w], antialias=True).numpy()
    thumbs = to_uint8(images, pixel_range)
    if c == 1:
        thumbs = np.repeat(thumbs, 3, axis=-1)
    out = np.zeros((side * h, side * w, 3), np.uint8)
    for i in range(n):
        r, col = divmod(i, side)
        out[r * h:(r + 1) * h, col * w:(col + 1) * w] = thumbs[i, ..., :3]
    return out, (h, w)
