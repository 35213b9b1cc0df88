"""load_data: read the configured source, select the splits, transform them once.

``data.source`` picks the reader (:mod:`~tfgen.data.tfds`, :mod:`~tfgen.data.idx`,
:mod:`~tfgen.data.npz`, :mod:`~tfgen.data.image_folder`); each gives uint8 (or [0,1] float)
arrays per named split.  A TFDS name without a prepared copy falls back to local files of that
name (``data.path``, ``$TFGEN_DATA_DIR``, the known system folders), since TFDS cannot
download here.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from tfgen.config import DataConfig
from tfgen.data import tfds as tfds_source
from tfgen.data.bundle import DataBundle, Split
from tfgen.data.checks import unreadable
from tfgen.data.idx import has_idx, idx_header_shape, images_file, read_idx_folder
from tfgen.data.image_folder import has_images, read_image_folder
from tfgen.data.npz import npz_image_shape, read_npz
from tfgen.data.splits import select
from tfgen.data.transforms import (converted_shape, converted_shape_of, pixel_range, source_shape,
                                   to_unit_range)
from tfgen.errors import ConfigError, DataError, DataFileError
from tfgen.memory import check_data_memory

#: where a TFDS name is looked for as local IDX files when TFDS has no prepared copy
ENV_DATA_DIR = "TFGEN_DATA_DIR"
KNOWN_LOCAL_DIRS = {
    "fashion_mnist": ["/usr/share/datasets/fashion-mnist"],  # Debian's dataset-fashion-mnist
    "mnist": [],
}


def load_data(cfg: DataConfig, seed: int, file: str = "<config>",
              memory_check: bool = True) -> DataBundle:
    """The three splits, converted (:func:`~tfgen.data.transforms.to_unit_range`).  With
    ``memory_check`` a selection whose converted copies cannot fit in memory is refused before
    conversion (:func:`tfgen.memory.check_data_memory`)."""
    raw, description = _read_source(cfg, file)
    wanted = {"data.train_split": cfg.train_split, "data.val_split": cfg.val_split,
              "data.test_split": cfg.test_split}
    selected: dict[str, tuple[np.ndarray, np.ndarray] | None] = {}
    for key, spec in wanted.items():
        selected[key] = select(raw, spec, key, file) if spec else None
    train_images, train_labels = selected["data.train_split"]
    if cfg.subsample:
        if cfg.subsample > len(train_images):
            raise ConfigError(file, "data.subsample", "larger than the training split",
                              cfg.subsample, f"at most {len(train_images)}")
        keep = np.random.default_rng(seed).choice(len(train_images), cfg.subsample, replace=False)
        keep.sort()
        train_images, train_labels = train_images[keep], train_labels[keep]
    if memory_check:
        chosen = {"train": train_images, "val": (selected["data.val_split"] or (None,))[0],
                  "test": (selected["data.test_split"] or (None,))[0]}
        counts = {k: len(v) for k, v in chosen.items() if v is not None}
        check_data_memory(counts, source_shape(train_images), converted_shape(train_images, cfg),
                          file)
    low, high = pixel_range(cfg)
    rng = np.random.default_rng([seed, 7])  # fixed binarization of evaluation splits
    splits = {}
    for key, arrays in [("train", (train_images, train_labels)),
                        ("val", selected["data.val_split"]),
                        ("test", selected["data.test_split"])]:
        if arrays is None:
            splits[key] = None
            continue
        images = to_unit_range(arrays[0], cfg, rng, is_train=(key == "train"))
        images = low + (high - low) * images
        splits[key] = Split(images.astype(np.float32), arrays[1].astype(np.int64))
    if len(splits["train"]) == 0:
        raise ConfigError(file, "data.train_split", "selects no images", cfg.train_split)
    shape = tuple(int(d) for d in splits["train"].images.shape[1:])
    return DataBundle(splits["train"], splits["val"], splits["test"], shape, (low, high),
                      description, cfg)


def _read_source(cfg: DataConfig, file: str) -> tuple[dict, str]:
    if cfg.source == "tfds":
        return _read_tfds_name(cfg, file)
    if not cfg.path:
        raise ConfigError(file, "data.path", f"required when data.source = {cfg.source!r}",
                          allowed="a local folder or file")
    path = Path(cfg.path).expanduser()
    if not path.exists():
        raise DataError(f"{file}: data.path: {str(path)!r} does not exist")
    try:
        if cfg.source == "idx":
            return read_idx_folder(path), f"IDX files in {path}"
        if cfg.source == "npz":
            return read_npz(path), f"arrays in {path}"
        return read_image_folder(path, cfg.resize), f"images in {path}"
    except DataFileError as err:
        raise err.within(file, "data.path") from None
    except OSError as err:  # e.g. a folder that cannot be listed
        raise unreadable(path, err).within(file, "data.path") from None


def _read_tfds_name(cfg: DataConfig, file: str) -> tuple[dict, str]:
    """A prepared TFDS copy if there is one; else the local IDX/npz/image files of that name."""
    builder = tfds_source.builder(cfg, file)
    tried = [f"TFDS data_dir {builder.data_dir}"]
    if builder.is_prepared():
        return tfds_source.read_prepared(builder, cfg, file)
    # local copies are looked up by TFDS's own name of the set ('MNIST:3.*.*' -> 'mnist')
    for folder in _local_candidates(cfg, builder.name):
        tried.append(str(folder))
        try:
            if folder.is_dir() and has_idx(folder):
                return (read_idx_folder(folder),
                        f"TFDS name {cfg.name!r} read from local IDX files in {folder}")
            if folder.is_file() and folder.suffix == ".npz":
                return read_npz(folder), f"TFDS name {cfg.name!r} read from {folder}"
            if folder.is_dir() and has_images(folder):
                return (read_image_folder(folder, cfg.resize),
                        f"TFDS name {cfg.name!r} read from images in {folder}")
        except DataFileError as err:
            raise err.within(file, "data.name") from None
        except OSError as err:
            raise unreadable(folder, err).within(file, "data.name") from None
    raise DataError(
        f"{file}: data: data set {cfg.name!r} not found. TFDS cannot download here and has no "
        f"prepared copy; looked in: {'; '.join(tried)}. Provide it by setting data.path (or "
        f"${ENV_DATA_DIR}) to a folder of IDX files / an .npz / an image folder, or prepare it "
        f"with TFDS under data.data_dir.")


def _local_candidates(cfg: DataConfig, name: str) -> list[Path]:
    out = []
    if cfg.path:
        out.append(Path(cfg.path).expanduser())
    env = os.environ.get(ENV_DATA_DIR)
    if env:
        out += [Path(env) / name, Path(env) / name.replace("_", "-"), Path(env)]
    out += [Path(p) for p in KNOWN_LOCAL_DIRS.get(name, [])]
    return out


def peek_image_shape(cfg: DataConfig) -> tuple[int, int, int] | None:
    """The (H, W, C) the models will see, where it can be learned without loading the data:
    from ``data.resize`` and ``data.color``, or from the source's header (an IDX file's, an
    .npz array's, the TFDS info of a prepared copy; where TFDS has none, the header of the
    local file :func:`load_data` would fall back to).  None otherwise (an image folder, or
    a source that cannot be read: loading it reports why)."""
    if cfg.resize and cfg.color != "keep":
        return cfg.resize, cfg.resize, 1 if cfg.color == "grayscale" else 3
    try:
        shape = _peek_source_shape(cfg)
    except (ConfigError, DataError, OSError):
        return None
    return converted_shape_of(shape, cfg) if shape is not None and len(shape) in (3, 4) else None


def _peek_source_shape(cfg: DataConfig) -> tuple | None:
    """[N, H, W(, C)] of the source's images as its header states it."""
    if cfg.source == "tfds":
        builder = tfds_source.builder(cfg, "<config>")
        if builder.is_prepared():
            return tfds_source.prepared_shape(builder)
        candidates = _local_candidates(cfg, builder.name)
    elif cfg.source in ("idx", "npz") and cfg.path:
        candidates = [Path(cfg.path).expanduser()]
    else:
        return None
    for path in candidates:
        if path.is_dir() and has_idx(path):
            first = images_file(path)
            return idx_header_shape(first) if first is not None else None
        if path.is_file() and path.suffix == ".npz":
            return npz_image_shape(path)
        if path.is_dir() and has_images(path):
            return None
    return None
