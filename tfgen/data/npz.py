""".npz files of named arrays: ``<split>_images``/``<split>_labels`` or ``x_<split>``/``y_<split>``."""
from __future__ import annotations

import zipfile
import zlib
from pathlib import Path

import numpy as np

from tfgen.data.checks import checked_images, checked_labels, first_line, unreadable
from tfgen.errors import DataFileError

_RESAVE = "write the arrays again (numpy.savez) or replace the file"


def read_npz(path: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Arrays ``<split>_images``/``<split>_labels`` or Keras-style ``x_<split>``/``y_<split>``."""
    # a damaged archive fails when opened or only when one array is read: both are caught
    damaged = (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error)
    try:
        with open(path, "rb") as fh:
            head = fh.read(6)
    except OSError as err:
        raise unreadable(path, err) from None
    # np.load guesses the format from these bytes, and takes anything else for a pickle
    if head.startswith(b"\x93NUMPY"):
        raise DataFileError(path, "holds one bare array (.npy), not named arrays",
                            "save it with numpy.savez(path, x_train=..., y_train=...)")
    if not head.startswith(b"PK"):
        raise DataFileError(path, "not an .npz file (no zip archive header)", _RESAVE)
    try:
        arrays = np.load(path, allow_pickle=False)
    except damaged as err:
        raise DataFileError(path, f"cannot be read as .npz ({first_line(err)})", _RESAVE) from None
    with arrays:
        splits = {}
        for key in arrays.files:
            if key.endswith("_images"):
                split = key[: -len("_images")]
                labels_key = f"{split}_labels"
            elif key.startswith("x_"):
                split = key[2:]
                labels_key = f"y_{split}"
            else:
                continue
            try:
                images = checked_images(arrays[key], path, key, _RESAVE)
                labels = (checked_labels(arrays[labels_key], len(images), path, labels_key, _RESAVE)
                          if labels_key in arrays.files else np.full(len(images), -1, np.int64))
            except damaged as err:
                raise DataFileError(path, f"cannot be read ({first_line(err)})", _RESAVE) from None
            splits[split] = (images, labels)
        if not splits:
            raise DataFileError(path, f"no arrays named '<split>_images' or 'x_<split>' "
                                f"(found {arrays.files})",
                                "name them e.g. x_train, y_train, x_test, y_test")
    return splits


def npz_image_shape(path: Path) -> tuple[int, ...] | None:
    """The shape of the first images array (``<split>_images`` or ``x_<split>``, by name) of an
    .npz file from its .npy header, without reading the array; None where it cannot be read
    (reading the file reports why)."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = sorted(n[:-4] for n in archive.namelist() if n.endswith(".npy"))
            key = next((n for n in names if n.endswith("_images") or n.startswith("x_")), None)
            if key is None:
                return None
            with archive.open(f"{key}.npy") as fh:
                version = np.lib.format.read_magic(fh)
                read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                               else np.lib.format.read_array_header_2_0)
                shape, _, _ = read_header(fh)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error):
        return None
    return tuple(shape)
