"""Image grids and plots, written as PNG files and TensorBoard images: the one place pictures are
made, for training summaries, schemes and evaluation alike.

Image grids are uint8 arrays; plots are matplotlib figures (the Agg backend, no display):
per-epoch curves, and the latent-space panels -- heat maps over a latent plane with labelled
latents and curves on top -- that are written as a PNG and as a TensorBoard image of the same
pixels.  It imports nothing of tfgen's, so every layer can draw."""
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


def pyplot():
    """matplotlib.pyplot on the Agg backend (imported on first use: most runs draw no plot)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_curves(history: list[dict], keys: list[tuple[str, str]], path: Path, title: str,
                ylabel: str) -> Path | None:
    """Line plot of per-epoch values, one line per (history key, label)."""
    lines = [(label, [(h["epoch"], h[key]) for h in history if key in h]) for key, label in keys]
    return plot_lines(lines, path, title, "epoch", ylabel)


def save_figure(fig, path: Path) -> Path:
    """Write a matplotlib figure as a PNG, and close it."""
    fig.tight_layout()
    try:
        with storage.writing(path, in_place=True):
            path.parent.mkdir(exist_ok=True)  # as in write_png
            fig.savefig(path)
    finally:
        pyplot().close(fig)
    return path


def plot_lines(lines: list[tuple[str, list[tuple[float, float]]]], path: Path, title: str,
               xlabel: str, ylabel: str) -> Path | None:
    """Line plot, one line per (label, [(x, y), ...]); lines without points are left out, and
    without any line nothing is written (None)."""
    lines = [(label, pts) for label, pts in lines if pts]
    if not lines:
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    for label, pts in lines:
        xs, ys = zip(*pts)
        ax.plot(xs, ys, marker="o", markersize=3, label=label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    return save_figure(fig, path)


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


# --------------------------------------------------------------------------- latent-space panels

def panels(count: int, size: float = 4.6):
    """A row of ``count`` square panels: (figure, list of axes)."""
    fig, axes = pyplot().subplots(1, count, figsize=(size * count + 0.8 * count, size), dpi=100,
                                  squeeze=False)
    return fig, list(axes[0])


def heat_map(fig, ax, values: np.ndarray, extent, title: str, colorbar_label: str,
             cmap: str = "viridis") -> None:
    """``values`` [rows (2nd axis), cols (1st axis)] over extent (x0, x1, y0, y1)."""
    finite = values[np.isfinite(values)]
    low, high = (np.percentile(finite, [1, 99.5]) if finite.size else (0.0, 1.0))
    image = ax.imshow(values, origin="lower", extent=extent, aspect="auto", cmap=cmap,
                      vmin=low, vmax=high, interpolation="nearest")
    bar = fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    bar.set_label(colorbar_label)
    ax.set_title(title, fontsize=10)
    ax.set_xlim(extent[0], extent[1])
    ax.set_ylim(extent[2], extent[3])


def scatter_labels(ax, points: np.ndarray, labels: np.ndarray, size: float = 3.0,
                   legend: bool = True) -> None:
    """Latents coloured by label (tab10; unknown labels -1 in grey)."""
    labels = np.asarray(labels)
    unknown = labels < 0
    if unknown.any():
        ax.scatter(points[unknown, 0], points[unknown, 1], s=size, c="0.6", linewidths=0)
    handles = []
    for value in np.unique(labels[~unknown]):
        mask = labels == value
        handles.append(ax.scatter(points[mask, 0], points[mask, 1], s=size, linewidths=0,
                                  color=_colour(int(value)), label=str(value)))
    if legend and 0 < len(handles) <= 20:
        ax.legend(handles=handles, fontsize=6, markerscale=3, loc="upper right", ncol=2,
                  framealpha=0.6)


def draw_paths(ax, paths: list[np.ndarray], style: str = "-", colour: str = "white",
               width: float = 1.2) -> None:
    """Polylines [n, 2] with their two ends marked."""
    for path in paths:
        ax.plot(path[:, 0], path[:, 1], style, color=colour, linewidth=width)
        ax.plot(path[[0, -1], 0], path[[0, -1], 1], "o", color=colour, markersize=3)


def _colour(index: int):
    return pyplot().get_cmap("tab10" if index < 10 else "tab20")(index % 20)


def write_figure(fig, path: Path, tag: str, step: int) -> Path:
    """Save as PNG and log the same pixels to TensorBoard (under the default writer)."""
    fig.tight_layout()
    fig.canvas.draw()
    pixels = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    pyplot().close(fig)
    write_png(path, pixels, scale=1)
    summary_image(tag, pixels, step)
    return path


def image_sheet(cells: list[list[Path | None]], column_titles: list[str], row_titles: list[str],
                path: Path, cell_inches: float = 2.6) -> Path:
    """PNG files side by side: ``cells[row][column]`` (None: an empty cell), a title over each
    column and one beside each row; each image keeps its own aspect ratio."""
    plt = pyplot()
    rows, cols = len(row_titles), len(column_titles)
    fig, axes = plt.subplots(rows, cols, figsize=(cell_inches * cols + 1.0, cell_inches * rows),
                             dpi=100, squeeze=False)
    for r in range(rows):
        for c in range(cols):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            if cells[r][c] is not None:
                image = plt.imread(str(cells[r][c]))
                ax.imshow(image, cmap="gray" if image.ndim == 2 else None, interpolation="nearest")
            else:
                ax.text(0.5, 0.5, "none", ha="center", va="center", color="0.5",
                        transform=ax.transAxes)
                for spine in ax.spines.values():
                    spine.set_visible(False)
            if r == 0:
                ax.set_title(column_titles[c], fontsize=8)
            if c == 0:
                ax.set_ylabel(row_titles[r], fontsize=8)
    return save_figure(fig, path)
