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
import os
import struct
import types
from pathlib import Path

import numpy as np
import tensorflow as tf

from tfgen.config import DataConfig
from tfgen.errors import ConfigError, DataError

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

    def transform_batch(self, images: tf.Tensor, generator: tf.random.Generator) -> tf.Tensor:
        """The per-batch transform of training batches (dynamic binarization), inside tf.function."""
        if self.config.binarize != "dynamic":
            return images
        low, high = self.pixel_range
        unit = (images - low) / (high - low)
        bits = tf.cast(generator.uniform(tf.shape(unit)) < unit, images.dtype)
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

def load_data(cfg: DataConfig, seed: int, file: str = "<config>") -> DataBundle:
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
    if cfg.source == "idx":
        return read_idx_folder(path), f"IDX files in {path}"
    if cfg.source == "npz":
        return read_npz(path), f"arrays in {path}"
    return read_image_folder(path, cfg.resize), f"images in {path}"


def _read_tfds(cfg: DataConfig, file: str) -> tuple[dict, str]:
    """A prepared TFDS copy if there is one; else the local IDX/npz/image files of that name."""
    import tensorflow_datasets as tfds

    try:
        builder = tfds.builder(cfg.name, data_dir=cfg.data_dir)
    except tfds.core.registered.DatasetNotFoundError as err:
        first = str(err).splitlines()[0]
        raise ConfigError(file, "data.name", f"unknown TFDS data set ({first})", cfg.name,
                          "a name from `tfds.list_builders()`, or data.source = 'idx'/'npz'/"
                          "'image_folder'") from None
    tried = [f"TFDS data_dir {builder.data_dir}"]
    if builder.is_prepared():
        splits = {}
        for name in builder.info.splits:
            data = tfds.as_numpy(builder.as_dataset(split=name, batch_size=-1))
            image_key = "image" if "image" in data else next(
                k for k, v in data.items() if getattr(v, "ndim", 0) >= 3)
            labels = data.get("label", np.full(len(data[image_key]), -1))
            splits[name] = (np.asarray(data[image_key]), np.asarray(labels))
        return splits, f"TFDS {cfg.name} from {builder.data_dir}"
    for folder in _local_candidates(cfg):
        tried.append(str(folder))
        if folder.is_dir() and _has_idx(folder):
            return read_idx_folder(folder), f"TFDS name {cfg.name!r} read from local IDX files in {folder}"
        if folder.is_file() and folder.suffix == ".npz":
            return read_npz(folder), f"TFDS name {cfg.name!r} read from {folder}"
        if folder.is_dir() and _has_images(folder):
            return read_image_folder(folder, cfg.resize), f"TFDS name {cfg.name!r} read from images in {folder}"
    raise DataError(
        f"{file}: data: data set {cfg.name!r} not found. TFDS cannot download here and has no "
        f"prepared copy; looked in: {'; '.join(tried)}. Provide it by setting data.path (or "
        f"${ENV_DATA_DIR}) to a folder of IDX files / an .npz / an image folder, or prepare it "
        f"with TFDS under data.data_dir.")


def _local_candidates(cfg: DataConfig) -> list[Path]:
    out = []
    if cfg.path:
        out.append(Path(cfg.path).expanduser())
    env = os.environ.get(ENV_DATA_DIR)
    if env:
        out += [Path(env) / cfg.name, Path(env) / cfg.name.replace("_", "-"), Path(env)]
    out += [Path(p) for p in KNOWN_LOCAL_DIRS.get(cfg.name, [])]
    return out


# --------------------------------------------------------------------------- formats

_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
               0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}
_IDX_SPLITS = {"train": "train", "t10k": "test", "test": "test"}


def read_idx(path: Path) -> np.ndarray:
    """Read one IDX file (optionally gzipped): magic 0x0000 <dtype> <ndim>, big-endian dims."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        data = fh.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise DataError(f"{path}: not an IDX file")
    ndim = data[3]
    dims = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])
    array = np.frombuffer(data, dtype=_IDX_DTYPES[data[2]], offset=4 + 4 * ndim)
    if array.size != int(np.prod(dims)):
        raise DataError(f"{path}: IDX header says {dims}, file holds {array.size} values")
    return array.reshape(dims)


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
        images = read_idx(path)
        label_files = [p for p in folder.iterdir() if p.name.startswith(prefix + "-labels-idx")]
        labels = read_idx(label_files[0]).astype(np.int64) if label_files else np.full(len(images), -1)
        splits[split] = (images, labels)
    if not splits:
        raise DataError(f"{folder}: no '*-images-idx*' files found")
    return splits


def read_npz(path: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Arrays ``<split>_images``/``<split>_labels`` or Keras-style ``x_<split>``/``y_<split>``."""
    try:
        arrays = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise DataError(f"{path}: cannot read as .npz ({err})") from None
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
        images = arrays[key]
        labels = arrays[labels_key] if labels_key in arrays.files else np.full(len(images), -1)
        splits[split] = (_as_uint8(images, path), labels.astype(np.int64))
    if not splits:
        raise DataError(f"{path}: no arrays named '<split>_images' or 'x_<split>' "
                        f"(found {arrays.files})")
    return splits


def _as_uint8(images: np.ndarray, path: Path) -> np.ndarray:
    if images.dtype == np.uint8:
        return images
    if images.min() < 0 or images.max() > 1:
        raise DataError(f"{path}: float images must lie in [0, 1] (found "
                        f"[{images.min()}, {images.max()}])")
    return images.astype(np.float32)


def _has_images(folder: Path) -> bool:
    return any(p.suffix.lower() in IMAGE_SUFFIXES for p in folder.rglob("*"))


def read_image_folder(folder: Path, resize: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``folder/<split>/[<class>/]*.png`` -> splits; a folder without split folders is "train".

    Class subfolders (sorted by name) give the labels.  Images of different
    sizes are allowed only with ``data.resize`` (they are resized on read).
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
            raise DataError(f"{root}: no image files ({', '.join(sorted(IMAGE_SUFFIXES))})")
        images = []
        for path, _ in files:
            try:
                img = tf.io.decode_image(tf.io.read_file(str(path)), expand_animations=False).numpy()
            except tf.errors.InvalidArgumentError:
                raise DataError(f"{path}: cannot decode image") from None
            if resize and img.shape[:2] != (resize, resize):
                h, w = img.shape[:2]
                side = min(h, w)
                img = img[(h - side) // 2:(h - side) // 2 + side, (w - side) // 2:(w - side) // 2 + side]
                img = tf.cast(tf.clip_by_value(tf.round(tf.image.resize(
                    img, (resize, resize), antialias=True)), 0, 255), tf.uint8).numpy()
            images.append(img)
        shapes = {im.shape for im in images}
        if len(shapes) > 1:
            raise DataError(f"{root}: images differ in size ({sorted(shapes)[:3]}...); set data.resize")
        splits[split] = (np.stack(images), np.array([label for _, label in files], np.int64))
    return splits
