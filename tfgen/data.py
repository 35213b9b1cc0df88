"""Data: TFDS names (with a local-file fallback offline), IDX folders, .npz files, image folders.

Every source is read into uint8 arrays per named split ("train", "test", ...),
the TFDS split syntax of ``[data]`` (``train[:50000]``, ``train[50000:]``,
``test``) selects from them, and the transforms are applied once:
colour, resize, [0,1] scaling, static binarization or k-level quantization,
the [-1,1] range.  Dynamic binarization is the one per-batch transform: the
compiled train steps call :meth:`DataBundle.transform_batch`.
"""
from __future__ import annotations

import dataclasses
import gzip
import math
import os
import re
import struct
import types
import zipfile
import zlib
from pathlib import Path

import numpy as np
import tensorflow as tf

from tfgen.config import DataConfig
from tfgen.errors import ConfigError, DataError, DataFileError

#: where a TFDS name is looked for as local IDX files when TFDS has no prepared copy
ENV_DATA_DIR = "TFGEN_DATA_DIR"
KNOWN_LOCAL_DIRS = {
    "fashion_mnist": ["/usr/share/datasets/fashion-mnist"],  # Debian's dataset-fashion-mnist
    "mnist": [],
}
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif"}


@dataclasses.dataclass
class Split:
    images: np.ndarray  # float32 [N, H, W, C], in the configured pixel range
    labels: np.ndarray  # int64 [N], -1 where unknown

    def __len__(self) -> int:
        return int(self.images.shape[0])


@dataclasses.dataclass
class DataBundle:
    train: Split
    val: Split | None
    test: Split | None
    image_shape: tuple[int, int, int]
    pixel_range: tuple[float, float]
    description: str
    config: DataConfig

    @classmethod
    def in_memory(cls, config: DataConfig, images: np.ndarray, pixel_range=(0.0, 1.0),
                  labels: np.ndarray | None = None, description: str = "in memory") -> "DataBundle":
        """A training split of ready-made float images [N, H, W, C] in ``pixel_range`` (for tests
        and benchmarks, which then build through ``runner.build(cfg, data)``)."""
        labels = np.full(len(images), -1, np.int64) if labels is None else np.asarray(labels, np.int64)
        split = Split(np.asarray(images, np.float32), labels)
        return cls(split, None, None, tuple(int(s) for s in images.shape[1:]), tuple(pixel_range),
                   description, config)

    def transform_batch(self, images: tf.Tensor, uniform) -> tf.Tensor:
        """The per-batch transform of training batches (dynamic binarization), inside
        tf.function; ``uniform()`` gives U(0, 1) noise shaped like ``images`` (drawn only when
        the transform needs it: :func:`tfgen.distribute.transform_noise`)."""
        if self.config.binarize != "dynamic":
            return images
        low, high = self.pixel_range
        unit = (images - low) / (high - low)
        bits = tf.cast(uniform() < unit, images.dtype)
        return low + (high - low) * bits

    def eval_split(self) -> tuple[str, Split]:
        """The split that model selection and early stopping look at."""
        if self.val is not None:
            return "val", self.val
        if self.test is not None:
            return "test", self.test
        return "train", self.train


# --------------------------------------------------------------------------- tf.data

def train_dataset(split: Split, batch_size: int, seed: int, epoch: int, cfg: DataConfig,
                  skip_batches: int = 0, cached: dict | None = None) -> tf.data.Dataset:
    """(images, indices) batches of one epoch, in an order fixed by (seed, epoch).

    The order depends only on the seed and the epoch number, so a run resumed
    at step k sees exactly the batches an uninterrupted run would have.
    """
    if cached is not None and "base" in cached:
        base = cached["base"]
    else:
        base = tf.data.Dataset.from_tensor_slices(
            (split.images, np.arange(len(split), dtype=np.int64)))
        if cfg.cache:
            base = base.cache()
        if cached is not None:
            cached["base"] = base
    buffer = cfg.shuffle_buffer or len(split)
    ds = base.shuffle(buffer, seed=seed * 1_000_003 + epoch, reshuffle_each_iteration=False)
    ds = ds.batch(batch_size)
    if skip_batches:
        ds = ds.skip(skip_batches)
    if cfg.prefetch:
        ds = ds.prefetch(tf.data.AUTOTUNE)
    return ds


def eval_dataset(split: Split, batch_size: int) -> tf.data.Dataset:
    ds = tf.data.Dataset.from_tensor_slices(
        (split.images, np.arange(len(split), dtype=np.int64)))
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)


# --------------------------------------------------------------------------- loading

def load_data(cfg: DataConfig, seed: int, file: str = "<config>",
              memory_check: bool = True) -> DataBundle:
    """The three splits, converted (:func:`_transform`).  With ``memory_check`` a selection
    whose converted copies cannot fit in memory is refused before conversion
    (:func:`tfgen.resources.check_data_memory`)."""
    raw, description = _read_source(cfg, file)
    wanted = {"data.train_split": cfg.train_split, "data.val_split": cfg.val_split,
              "data.test_split": cfg.test_split}
    selected: dict[str, tuple[np.ndarray, np.ndarray] | None] = {}
    for key, spec in wanted.items():
        selected[key] = _select(raw, spec, key, file) if spec else None
    train_images, train_labels = selected["data.train_split"]
    if cfg.subsample:
        if cfg.subsample > len(train_images):
            raise ConfigError(file, "data.subsample", "larger than the training split",
                              cfg.subsample, f"at most {len(train_images)}")
        keep = np.random.default_rng(seed).choice(len(train_images), cfg.subsample, replace=False)
        keep.sort()
        train_images, train_labels = train_images[keep], train_labels[keep]
    if memory_check:
        from tfgen.resources import check_data_memory  # resources imports the config layer only

        chosen = {"train": train_images, "val": (selected["data.val_split"] or (None,))[0],
                  "test": (selected["data.test_split"] or (None,))[0]}
        counts = {k: len(v) for k, v in chosen.items() if v is not None}
        check_data_memory(counts, _source_shape(train_images), _converted_shape(train_images, cfg),
                          file)
    low, high = (0.0, 1.0) if cfg.pixel_range == "[0,1]" else (-1.0, 1.0)
    rng = np.random.default_rng([seed, 7])  # fixed binarization of evaluation splits
    splits = {}
    for key, arrays in [("train", (train_images, train_labels)),
                        ("val", selected["data.val_split"]),
                        ("test", selected["data.test_split"])]:
        if arrays is None:
            splits[key] = None
            continue
        images = _transform(arrays[0], cfg, rng, is_train=(key == "train"))
        images = low + (high - low) * images
        splits[key] = Split(images.astype(np.float32), arrays[1].astype(np.int64))
    if len(splits["train"]) == 0:
        raise ConfigError(file, "data.train_split", "selects no images", cfg.train_split)
    shape = tuple(int(d) for d in splits["train"].images.shape[1:])
    return DataBundle(splits["train"], splits["val"], splits["test"], shape, (low, high),
                      description, cfg)


def _source_shape(images: np.ndarray) -> tuple[int, int, int]:
    """(H, W, C) of raw images ([N, H, W] or [N, H, W, C])."""
    return (*images.shape[1:3], images.shape[3] if images.ndim == 4 else 1)


def _converted_shape(images: np.ndarray, cfg: DataConfig) -> tuple[int, int, int]:
    """(H, W, C) that :func:`_transform` gives raw images of this shape."""
    h, w, c = _source_shape(images)
    if cfg.color == "grayscale" and c == 3:
        c = 1
    elif cfg.color == "rgb" and c == 1:
        c = 3
    if cfg.resize:
        h = w = cfg.resize
    return h, w, c


def _transform(images: np.ndarray, cfg: DataConfig, rng: np.random.Generator,
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


def _select(raw: dict[str, tuple[np.ndarray, np.ndarray]], spec: str, key: str,
            file: str) -> tuple[np.ndarray, np.ndarray]:
    """Apply TFDS split syntax (``train[:50000]+test[10%:]``) to local arrays."""
    import tensorflow_datasets as tfds

    try:
        instruction = tfds.core.ReadInstruction.from_spec(spec)
        infos = {name: types.SimpleNamespace(num_examples=len(arr[0])) for name, arr in raw.items()}
        pieces = instruction.to_absolute(infos)
    except (ValueError, KeyError, AssertionError) as err:
        message = str(err).splitlines()[0]
        raise ConfigError(file, key, f"not a usable split ({message})", spec,
                          f"TFDS split syntax over the splits {sorted(raw)}, e.g. 'train[:50000]'") from None
    images = [raw[p.splitname][0][p.from_:p.to] for p in pieces]
    labels = [raw[p.splitname][1][p.from_:p.to] for p in pieces]
    return np.concatenate(images), np.concatenate(labels)


def _read_source(cfg: DataConfig, file: str) -> tuple[dict, str]:
    if cfg.source == "tfds":
        return _read_tfds(cfg, file)
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
        raise _unreadable(path, err).within(file, "data.path") from None


def _read_tfds(cfg: DataConfig, file: str) -> tuple[dict, str]:
    """A prepared TFDS copy if there is one; else the local IDX/npz/image files of that name."""
    import tensorflow_datasets as tfds

    try:
        builder = tfds.builder(cfg.name, data_dir=cfg.data_dir)
    except (ValueError, TypeError, AssertionError, KeyError) as err:
        # DatasetNotFoundError is a ValueError; a name TFDS cannot parse ('a/b/c/d', '../x', '')
        # is a ValueError too, an unknown version an AssertionError, an unknown kwarg a TypeError
        problem = ("unknown TFDS data set" if isinstance(err, tfds.core.registered.DatasetNotFoundError)
                   else "TFDS cannot use this name")
        # TFDS repeats the name and its kwargs before the reason: keep the reason
        reason = re.sub(r'^Failed to construct dataset .*?": |\s*Here are .*$', "", _first_line(err))
        raise ConfigError(file, "data.name", f"{problem} ({reason})",
                          cfg.name, "a name from `tfds.list_builders()`, optionally "
                          "'name/config' or 'name:version' (e.g. 'mnist', 'mnist:3.0.1'), or "
                          "data.source = 'idx'/'npz'/'image_folder'") from None
    tried = [f"TFDS data_dir {builder.data_dir}"]
    if builder.is_prepared():
        splits = {}
        try:
            for name in builder.info.splits:
                data = tfds.as_numpy(builder.as_dataset(split=name, batch_size=-1))
                image_key = "image" if "image" in data else next(
                    k for k, v in data.items() if getattr(v, "ndim", 0) >= 3)
                where = f"{cfg.name}/{name}"
                images = _checked_images(np.asarray(data[image_key]), builder.data_dir, where,
                                         "prepare the data set again")
                labels = (_checked_labels(data["label"], len(images), builder.data_dir, where,
                                          "prepare the data set again")
                          if "label" in data else np.full(len(images), -1, np.int64))
                splits[name] = (images, labels)
        except tf.errors.OpError as err:  # a damaged record file of the prepared copy
            raise DataFileError(builder.data_dir, f"the prepared TFDS copy cannot be read "
                                f"({_tf_message(err)})",
                                "prepare it again, or remove it to use local files").within(
                                    file, "data.data_dir") from None
        except DataFileError as err:
            raise err.within(file, "data.data_dir") from None
        return splits, f"TFDS {cfg.name} from {builder.data_dir}"
    # local copies are looked up by TFDS's own name of the set ('MNIST:3.*.*' -> 'mnist')
    for folder in _local_candidates(cfg, builder.name):
        tried.append(str(folder))
        try:
            if folder.is_dir() and _has_idx(folder):
                return read_idx_folder(folder), f"TFDS name {cfg.name!r} read from local IDX files in {folder}"
            if folder.is_file() and folder.suffix == ".npz":
                return read_npz(folder), f"TFDS name {cfg.name!r} read from {folder}"
            if folder.is_dir() and _has_images(folder):
                return read_image_folder(folder, cfg.resize), f"TFDS name {cfg.name!r} read from images in {folder}"
        except DataFileError as err:
            raise err.within(file, "data.name") from None
        except OSError as err:
            raise _unreadable(folder, err).within(file, "data.name") from None
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


# --------------------------------------------------------------------------- formats
#
# Every reader checks what it read before anything trains on it: a damaged or wrong file
# is a DataFileError naming the file (and array) and the fix, never a traceback, and pixels
# are finite and in range, so a NaN in a file cannot turn up later as a "diverged" loss.

_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
               0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}
_IDX_SPLITS = {"train": "train", "t10k": "test", "test": "test"}
_REDOWNLOAD = "re-download or replace the file"
_RESAVE = "write the arrays again (numpy.savez) or replace the file"


def _unreadable(path: Path, err: OSError) -> DataFileError:
    fix = "make it readable" if isinstance(err, PermissionError) else _REDOWNLOAD
    return DataFileError(path, f"cannot be read ({err.strerror or err})", fix)


def read_idx(path: Path) -> np.ndarray:
    """Read one IDX file (optionally gzipped): magic 0x0000 <dtype> <ndim>, big-endian dims."""
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as fh:
            data = fh.read()
    except EOFError:
        raise DataFileError(path, "the file is cut short (its compressed data ends early)",
                            _REDOWNLOAD) from None
    except (gzip.BadGzipFile, zlib.error) as err:  # BadGzipFile is an OSError: caught first
        raise DataFileError(path, f"not a valid gzip file ({err})", _REDOWNLOAD) from None
    except OSError as err:
        raise _unreadable(path, err) from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise DataFileError(path, "not an IDX file (no IDX magic number at its start)", _REDOWNLOAD)
    ndim, dtype = data[3], np.dtype(_IDX_DTYPES[data[2]])
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataFileError(path, f"the file is cut short inside its header ({len(data)} bytes)",
                            _REDOWNLOAD)
    dims = struct.unpack(f">{ndim}I", data[4:header])
    count = math.prod(dims)
    if len(data) - header != count * dtype.itemsize:
        raise DataFileError(path, f"IDX header says shape {dims} ({count * dtype.itemsize} bytes), "
                            f"the file holds {len(data) - header} bytes", _REDOWNLOAD)
    return np.frombuffer(data, dtype=dtype, offset=header, count=count).reshape(dims)


def _has_idx(folder: Path) -> bool:
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
        images = _checked_images(read_idx(path), path, None, _REDOWNLOAD)
        label_files = sorted(p for p in folder.iterdir() if p.name.startswith(prefix + "-labels-idx"))
        labels = (_checked_labels(read_idx(label_files[0]), len(images), label_files[0], None,
                                  _REDOWNLOAD)
                  if label_files else np.full(len(images), -1, np.int64))
        splits[split] = (images, labels)
    if not splits:
        raise DataFileError(folder, "no '*-images-idx*' files found",
                            "point data.path at a folder of IDX files (train-images-idx3-ubyte.gz, ...)")
    return splits


def read_npz(path: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Arrays ``<split>_images``/``<split>_labels`` or Keras-style ``x_<split>``/``y_<split>``."""
    # a damaged archive fails when opened or only when one array is read: both are caught
    damaged = (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error)
    try:
        with open(path, "rb") as fh:
            head = fh.read(6)
    except OSError as err:
        raise _unreadable(path, err) from None
    # np.load guesses the format from these bytes, and takes anything else for a pickle
    if head.startswith(b"\x93NUMPY"):
        raise DataFileError(path, "holds one bare array (.npy), not named arrays",
                            "save it with numpy.savez(path, x_train=..., y_train=...)")
    if not head.startswith(b"PK"):
        raise DataFileError(path, "not an .npz file (no zip archive header)", _RESAVE)
    try:
        arrays = np.load(path, allow_pickle=False)
    except damaged as err:
        raise DataFileError(path, f"cannot be read as .npz ({_first_line(err)})", _RESAVE) from None
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
                images = _checked_images(arrays[key], path, key, _RESAVE)
                labels = (_checked_labels(arrays[labels_key], len(images), path, labels_key, _RESAVE)
                          if labels_key in arrays.files else np.full(len(images), -1, np.int64))
            except damaged as err:
                raise DataFileError(path, f"cannot be read ({_first_line(err)})", _RESAVE) from None
            splits[split] = (images, labels)
        if not splits:
            raise DataFileError(path, f"no arrays named '<split>_images' or 'x_<split>' "
                                f"(found {arrays.files})",
                                "name them e.g. x_train, y_train, x_test, y_test")
    return splits


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


def _tf_message(err: tf.errors.OpError) -> str:
    """The readable part of a TF op error: no '{{function_node ...}}', no '[Op:...]'."""
    text = re.sub(r"\{\{.*?\}\}|\[Op:.*", "", err.message or "").strip()
    return (text.splitlines() or [type(err).__name__])[0]


def _checked_images(images: np.ndarray, path: object, array: str | None, fix: str) -> np.ndarray:
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


def _checked_labels(labels: np.ndarray, count: int, path: object, array: str | None,
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


def _has_images(folder: Path) -> bool:
    return any(p.suffix.lower() in IMAGE_SUFFIXES for p in folder.rglob("*"))


def read_image_folder(folder: Path, resize: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``folder/<split>/[<class>/]*.png`` -> splits; a folder without split folders is "train".

    Class subfolders (sorted by name) give the labels.  Alpha channels are dropped, and a
    split mixing grey and colour images is read as RGB (grey repeated), so only sizes can
    differ; they may only with ``data.resize`` (images are then resized on read).
    ``data.color`` converts the result as it does for every source.
    """
    subdirs = [d for d in sorted(folder.iterdir()) if d.is_dir()]
    split_dirs = {d.name: d for d in subdirs if d.name in {"train", "val", "validation", "test"}}
    if not split_dirs:
        split_dirs = {"train": folder}
    splits = {}
    for split, root in split_dirs.items():
        classes = [d for d in sorted(root.iterdir()) if d.is_dir()]
        files = ([(p, i) for i, d in enumerate(classes) for p in sorted(d.rglob("*"))
                  if p.suffix.lower() in IMAGE_SUFFIXES]
                 or [(p, -1) for p in sorted(root.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES])
        if not files:
            raise DataFileError(root, f"no image files ({', '.join(sorted(IMAGE_SUFFIXES))})",
                                "put images in <split>/[<class>/] folders")
        images = []
        for path, _ in files:
            try:
                img = tf.io.decode_image(tf.io.read_file(str(path)), expand_animations=False).numpy()
            except tf.errors.OpError as err:  # unreadable, truncated or not an image
                raise DataFileError(path, f"cannot be decoded as an image ({_tf_message(err)})",
                                    "replace or remove the file") from None
            img = img[..., :3] if img.shape[-1] == 4 else img[..., :1] if img.shape[-1] == 2 else img
            if resize and img.shape[:2] != (resize, resize):
                h, w = img.shape[:2]
                side = min(h, w)
                img = img[(h - side) // 2:(h - side) // 2 + side, (w - side) // 2:(w - side) // 2 + side]
                img = tf.cast(tf.clip_by_value(tf.round(tf.image.resize(
                    img, (resize, resize), antialias=True)), 0, 255), tf.uint8).numpy()
            images.append(img)
        if any(im.shape[-1] == 3 for im in images):
            images = [np.repeat(im, 3, axis=-1) if im.shape[-1] == 1 else im for im in images]
        sizes = [im.shape[:2] for im in images]
        if len(set(sizes)) > 1:
            other = next(i for i, s in enumerate(sizes) if s != sizes[0])
            raise DataFileError(root, f"images differ in size ({files[0][0].name} is "
                                f"{sizes[0][0]}x{sizes[0][1]}, {files[other][0].name} is "
                                f"{sizes[other][0]}x{sizes[other][1]})",
                                "set data.resize to read them all at one size")
        splits[split] = (np.stack(images), np.array([label for _, label in files], np.int64))
    return splits
