"""The transforms applied once, when the data are loaded: colour, resize, [0,1] scaling,
static binarization (and the fixed binarization of evaluation splits under dynamic
binarization), k-level quantization, and the configured pixel range.

Dynamic binarization of training batches is applied per batch instead:
:meth:`tfgen.data.bundle.DataBundle.transform_batch`.
"""
from __future__ import annotations

import numpy as np
import tensorflow as tf

from tfgen.config import DataConfig


def pixel_range(cfg: DataConfig) -> tuple[float, float]:
    """(low, high) of the pixel values the models see: ``data.pixel_range``."""
    return (0.0, 1.0) if cfg.pixel_range == "[0,1]" else (-1.0, 1.0)


def source_shape(images: np.ndarray) -> tuple[int, int, int]:
    """(H, W, C) of raw images ([N, H, W] or [N, H, W, C])."""
    return (*images.shape[1:3], images.shape[3] if images.ndim == 4 else 1)


def converted_shape(images: np.ndarray, cfg: DataConfig) -> tuple[int, int, int]:
    """(H, W, C) that :func:`to_unit_range` gives raw images of this shape."""
    return converted_shape_of(images.shape, cfg)


def converted_shape_of(shape: tuple, cfg: DataConfig) -> tuple[int, int, int]:
    """(H, W, C) that :func:`to_unit_range` gives raw images of ``shape`` ([N, H, W] or
    [N, H, W, C])."""
    h, w, c = (*shape[1:3], shape[3] if len(shape) == 4 else 1)
    if cfg.color == "grayscale" and c == 3:
        c = 1
    elif cfg.color == "rgb" and c == 1:
        c = 3
    if cfg.resize:
        h = w = cfg.resize
    return h, w, c


def to_unit_range(images: np.ndarray, cfg: DataConfig, rng: np.random.Generator,
                  is_train: bool) -> np.ndarray:
    """uint8 [N,H,W,C] -> float32 in [0,1], with colour, resize, binarize and bins applied."""
    if images.ndim == 3:
        images = images[..., None]
    x = images.astype(np.float32) / 255.0 if images.dtype == np.uint8 else images.astype(np.float32)
    if cfg.color == "grayscale" and x.shape[-1] == 3:
        x = x @ np.array([0.299, 0.587, 0.114], np.float32)[:, None]
    elif cfg.color == "rgb" and x.shape[-1] == 1:
        x = np.repeat(x, 3, axis=-1)
    if cfg.resize and x.shape[1:3] != (cfg.resize, cfg.resize):
        h, w = x.shape[1:3]
        if h != w:  # centre crop to a square first, so faces and digits keep their aspect
            side = min(h, w)
            top, left = (h - side) // 2, (w - side) // 2
            x = x[:, top:top + side, left:left + side]
        out = []
        for start in range(0, len(x), 4096):
            out.append(tf.image.resize(x[start:start + 4096], (cfg.resize, cfg.resize),
                                       method="bilinear", antialias=True).numpy())
        x = np.clip(np.concatenate(out) if out else x[:, :cfg.resize, :cfg.resize], 0.0, 1.0)
    if cfg.binarize == "static":
        x = (x > cfg.binarize_threshold).astype(np.float32)
    elif cfg.binarize == "dynamic" and not is_train:
        x = (rng.random(x.shape, dtype=np.float32) < x).astype(np.float32)
    if cfg.bins:
        k = cfg.bins
        x = np.clip(np.floor(x * k), 0, k - 1) / (k - 1)
    return x.astype(np.float32)
