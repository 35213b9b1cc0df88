"""TFDS data sets by name: the builder, and the splits of its prepared copy.

tensorflow_datasets is imported only when a TFDS name or split syntax is used (it is slow to
import).  Where TFDS has no prepared copy, :mod:`tfgen.data.loader` falls back to local files.
"""
from __future__ import annotations

import re

import numpy as np
import tensorflow as tf

from tfgen.config import DataConfig
from tfgen.data.checks import checked_images, checked_labels, first_line, tf_message
from tfgen.errors import ConfigError, DataFileError


def builder(cfg: DataConfig, file: str):
    """TFDS's builder of ``data.name`` (under ``data.data_dir``); a ConfigError if TFDS has none."""
    import tensorflow_datasets as tfds

    try:
        return tfds.builder(cfg.name, data_dir=cfg.data_dir)
    except (ValueError, TypeError, AssertionError, KeyError) as err:
        # DatasetNotFoundError is a ValueError; a name TFDS cannot parse ('a/b/c/d', '../x', '')
        # is a ValueError too, an unknown version an AssertionError, an unknown kwarg a TypeError
        problem = ("unknown TFDS data set" if isinstance(err, tfds.core.registered.DatasetNotFoundError)
                   else "TFDS cannot use this name")
        # TFDS repeats the name and its kwargs before the reason: keep the reason
        reason = re.sub(r'^Failed to construct dataset .*?": |\s*Here are .*$', "", first_line(err))
        raise ConfigError(file, "data.name", f"{problem} ({reason})",
                          cfg.name, "a name from `tfds.list_builders()`, optionally "
                          "'name/config' or 'name:version' (e.g. 'mnist', 'mnist:3.0.1'), or "
                          "data.source = 'idx'/'npz'/'image_folder'") from None


def read_prepared(builder, cfg: DataConfig, file: str) -> tuple[dict, str]:
    """Every split of the builder's prepared copy (``builder.is_prepared()``), checked."""
    import tensorflow_datasets as tfds

    splits = {}
    try:
        for name in builder.info.splits:
            data = tfds.as_numpy(builder.as_dataset(split=name, batch_size=-1))
            image_key = "image" if "image" in data else next(
                k for k, v in data.items() if getattr(v, "ndim", 0) >= 3)
            where = f"{cfg.name}/{name}"
            images = checked_images(np.asarray(data[image_key]), builder.data_dir, where,
                                    "prepare the data set again")
            labels = (checked_labels(data["label"], len(images), builder.data_dir, where,
                                     "prepare the data set again")
                      if "label" in data else np.full(len(images), -1, np.int64))
            splits[name] = (images, labels)
    except tf.errors.OpError as err:  # a damaged record file of the prepared copy
        raise DataFileError(builder.data_dir, f"the prepared TFDS copy cannot be read "
                            f"({tf_message(err)})",
                            "prepare it again, or remove it to use local files").within(
                                file, "data.data_dir") from None
    except DataFileError as err:
        raise err.within(file, "data.data_dir") from None
    return splits, f"TFDS {cfg.name} from {builder.data_dir}"


def prepared_shape(builder) -> tuple | None:
    """[N, H, W, C] of the images of a prepared copy, from its info (N as 0: the info's
    feature shape is per image), or None where the info gives no fixed image shape."""
    features = builder.info.features
    image = features["image"] if "image" in features else None
    shape = getattr(image, "shape", None)
    if not shape or len(shape) != 3 or any(d is None for d in shape):
        return None
    return (0, *shape)
