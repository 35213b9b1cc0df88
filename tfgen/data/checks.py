"""What every reader checks before anything trains on what it read.

A damaged or wrong file is a DataFileError naming the file (and array) and the fix, never a
traceback, and pixels are finite and in range, so a NaN in a file cannot turn up later as a
"diverged" loss.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import tensorflow as tf

from tfgen.errors import DataFileError

REDOWNLOAD = "re-download or replace the file"


def unreadable(path: Path, err: OSError) -> DataFileError:
    fix = "make it readable" if isinstance(err, PermissionError) else REDOWNLOAD
    return DataFileError(path, f"cannot be read ({err.strerror or err})", fix)


def first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


def tf_message(err: tf.errors.OpError) -> str:
    """The readable part of a TF op error: no '{{function_node ...}}', no '[Op:...]'."""
    text = re.sub(r"\{\{.*?\}\}|\[Op:.*", "", err.message or "").strip()
    return (text.splitlines() or [type(err).__name__])[0]


def checked_images(images: np.ndarray, path: object, array: str | None, fix: str) -> np.ndarray:
    """Images as the transforms take them: [N, H, W, C] with C = 1 or 3, uint8, or float32
    in [0, 1].  Integer pixels in 0..255 become uint8; anything else is refused here."""
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or images.shape[-1] not in (1, 3) or 0 in images.shape[1:]:
        raise DataFileError(path, f"images have shape {images.shape}", "store them as [N, H, W] "
                            "or [N, H, W, C] with C = 1 (grey) or 3 (RGB), or " + fix, array)
    if images.dtype == np.uint8 or images.size == 0:
        return images
    if images.dtype != np.bool_ and np.issubdtype(images.dtype, np.integer):
        low, high = images.min(), images.max()
        if low < 0 or high > 255:
            raise DataFileError(path, f"integer pixels must lie in 0..255, found {low}..{high}",
                                fix, array)
        return images.astype(np.uint8)
    if not np.issubdtype(images.dtype, np.floating):
        raise DataFileError(path, f"pixels of type {images.dtype} are not supported",
                            "store uint8 (0..255) or float (0..1) pixels, or " + fix, array)
    # min and max propagate NaN, so a bad file costs no extra pass and no mask the size of the data
    low, high = images.min(), images.max()
    if not (np.isfinite(low) and np.isfinite(high)):
        bad = ~np.isfinite(images)
        first = int(np.argmax(bad.reshape(len(images), -1).any(axis=1)))
        raise DataFileError(path, f"{int(bad.sum())} pixel values are NaN or infinite (the "
                            f"first in image {first})", "replace them (e.g. numpy.nan_to_num) "
                            "or " + fix, array)
    if low < 0 or high > 1:
        raise DataFileError(path, f"float pixels must lie in [0, 1], found [{low:g}, {high:g}]",
                            "rescale them (or store uint8 0..255), or " + fix, array)
    return images.astype(np.float32)


def checked_labels(labels: np.ndarray, count: int, path: object, array: str | None,
                   fix: str) -> np.ndarray:
    """One integer label per image, as int64."""
    labels = np.asarray(labels)
    if labels.shape != (count,):
        raise DataFileError(path, f"labels have shape {labels.shape} for {count} images",
                            "one integer label per image, or " + fix, array)
    if labels.dtype != np.bool_ and np.issubdtype(labels.dtype, np.integer):
        return labels.astype(np.int64)
    if (np.issubdtype(labels.dtype, np.floating) and np.isfinite(labels).all()
            and (labels == np.round(labels)).all()):
        return labels.astype(np.int64)
    raise DataFileError(path, f"labels must be integers (type {labels.dtype})",
                        "store integer labels, or " + fix, array)
