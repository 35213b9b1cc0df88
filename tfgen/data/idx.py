"""IDX files (MNIST's format): one file, and a folder of ``<split>-images/labels-idx*`` files."""
from __future__ import annotations

import gzip
import math
import struct
import zlib
from pathlib import Path

import numpy as np

from tfgen.data.checks import REDOWNLOAD, checked_images, checked_labels, unreadable
from tfgen.errors import DataFileError

_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
               0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}
_IDX_SPLITS = {"train": "train", "t10k": "test", "test": "test"}


def read_idx(path: Path) -> np.ndarray:
    """Read one IDX file (optionally gzipped): magic 0x0000 <dtype> <ndim>, big-endian dims."""
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as fh:
            data = fh.read()
    except EOFError:
        raise DataFileError(path, "the file is cut short (its compressed data ends early)",
                            REDOWNLOAD) from None
    except (gzip.BadGzipFile, zlib.error) as err:  # BadGzipFile is an OSError: caught first
        raise DataFileError(path, f"not a valid gzip file ({err})", REDOWNLOAD) from None
    except OSError as err:
        raise unreadable(path, err) from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise DataFileError(path, "not an IDX file (no IDX magic number at its start)", REDOWNLOAD)
    ndim, dtype = data[3], np.dtype(_IDX_DTYPES[data[2]])
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataFileError(path, f"the file is cut short inside its header ({len(data)} bytes)",
                            REDOWNLOAD)
    dims = struct.unpack(f">{ndim}I", data[4:header])
    count = math.prod(dims)
    if len(data) - header != count * dtype.itemsize:
        raise DataFileError(path, f"IDX header says shape {dims} ({count * dtype.itemsize} bytes), "
                            f"the file holds {len(data) - header} bytes", REDOWNLOAD)
    return np.frombuffer(data, dtype=dtype, offset=header, count=count).reshape(dims)


def idx_header_shape(path: Path) -> tuple[int, ...] | None:
    """The shape an IDX file's header states (its first 4 + 4 ndim bytes, decompressed
    alone), or None where the header cannot be read (reading the file reports why)."""
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as fh:
            magic = fh.read(4)
            if len(magic) < 4 or magic[:2] != b"\0\0" or magic[2] not in _IDX_DTYPES:
                return None
            dims = fh.read(4 * magic[3])
    except (OSError, EOFError, zlib.error):
        return None
    if len(dims) < 4 * magic[3]:
        return None
    return struct.unpack(f">{magic[3]}I", dims)


def images_file(folder: Path) -> Path | None:
    """The folder's first ``*-images-idx*`` file (by name), or None."""
    return next((p for p in sorted(folder.iterdir()) if "-images-idx" in p.name), None)


def has_idx(folder: Path) -> bool:
    return any("idx" in p.name for p in folder.iterdir())


def read_idx_folder(folder: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{train,t10k}-images-idx3-ubyte[.gz]`` (+ labels) -> {"train": ..., "test": ...}."""
    splits = {}
    for path in sorted(folder.iterdir()):
        name = path.name
        if "-images-idx" not in name:
            continue
        prefix = name.split("-images-idx")[0]
        split = _IDX_SPLITS.get(prefix, prefix)
        images = checked_images(read_idx(path), path, None, REDOWNLOAD)
        label_files = sorted(p for p in folder.iterdir() if p.name.startswith(prefix + "-labels-idx"))
        labels = (checked_labels(read_idx(label_files[0]), len(images), label_files[0], None,
                                 REDOWNLOAD)
                  if label_files else np.full(len(images), -1, np.int64))
        splits[split] = (images, labels)
    if not splits:
        raise DataFileError(folder, "no '*-images-idx*' files found",
                            "point data.path at a folder of IDX files (train-images-idx3-ubyte.gz, ...)")
    return splits
