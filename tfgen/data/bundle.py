"""The loaded data (:class:`Split`, :class:`DataBundle`) and the tf.data pipelines over it.

Dynamic binarization is the one per-batch transform: the compiled train steps call
:meth:`DataBundle.transform_batch`; every other transform is applied once, when the data are
loaded (:mod:`tfgen.data.transforms`).
"""
from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow as tf

from tfgen.config import DataConfig


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
        and benchmarks, which then build through ``assemble.build(cfg, data)``)."""
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
