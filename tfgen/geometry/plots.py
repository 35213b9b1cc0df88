"""Figures of the latent geometry: heat maps over a latent plane with latents and curves on top.

Every figure is written as a PNG and as a TensorBoard image (the same pixels)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from tfgen.evaluation import figures


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def panels(count: int, size: float = 4.6):
    """A row of ``count`` square panels: (figure, list of axes)."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, count, figsize=(size * count + 0.8 * count, size), dpi=100,
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


def curves(ax, paths: list[np.ndarray], style: str = "-", colour: str = "white",
           width: float = 1.2) -> None:
    for path in paths:
        ax.plot(path[:, 0], path[:, 1], style, color=colour, linewidth=width)
        ax.plot(path[[0, -1], 0], path[[0, -1], 1], "o", color=colour, markersize=3)


def _colour(index: int):
    plt = _pyplot()
    return plt.get_cmap("tab10" if index < 10 else "tab20")(index % 20)


def write(fig, path: Path, tag: str, step: int) -> Path:
    """Save as PNG and log the same pixels to TensorBoard (under the default writer)."""
    plt = _pyplot()
    fig.tight_layout()
    fig.canvas.draw()
    pixels = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    plt.close(fig)
    figures.write_png(path, pixels, scale=1)
    figures.summary_image(tag, pixels, step)
    return path
