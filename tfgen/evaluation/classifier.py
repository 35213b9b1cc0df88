"""The feature classifier tfgen trains itself: the default feature extractor of FID, KID and
precision/recall (:mod:`tfgen.evaluation.quality`), the one that suits 28 x 28 digits.

Recipe (version ``RECIPE_VERSION``; written down in the README, so numbers are comparable):
a small conv net (``ARCHITECTURE``)

    conv 3x3, 32, ReLU -> max-pool 2 -> conv 3x3, 64, ReLU -> max-pool 2 -> flatten
    -> dense 128, ReLU  (the "penultimate" features, D = 128) -> dense n_classes (the "logits")

('same' padding, Glorot-uniform weights seeded from ``seed``), trained on the data set's
labelled training split (``train_split``, default "train[:50000]", as ``data.train_split``'s
default; in the run's pixel
range and transforms, whatever part of it the run itself trains on) with
softmax cross-entropy (each batch binarized afresh when ``data.binarize = "dynamic"``, as the
model's own training images are), Adam (``learning_rate``, cosine-decayed to 0 over the training;
Loshchilov & Hutter 2017), ``epochs`` passes in batches of
``batch_size`` in an order drawn from ``seed``; its accuracy is measured on the test split
(the validation split if there is none) and reported beside every FID.

Cache: ``<output_dir>/.cache/classifiers/<dataset>-<H>x<W>x<C>-<hash>/`` holds
``weights.npz`` and ``recipe.json``.  The hash is of the whole recipe: architecture, epochs,
batch size, learning rate, feature layer, seed, the data's source, name and split
specifications, transforms (resize, colour, binarization, bins, pixel range), image shape,
number of classes, and a SHA-256 digest of the training images and labels themselves.  A
folder is written under a temporary name and renamed into place, so it is complete or
absent; it is reused whenever the recipe is the same and trained again only when it changes.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Literal

import numpy as np
import tensorflow as tf
import tf_keras as keras

from tfgen.config import DataConfig
from tfgen.data import DataBundle, Split, load_data
from tfgen.errors import ConfigError, TfgenError
from tfgen.schema import setting

RECIPE_VERSION = 2  # 2: dynamically binarized data are binarized for training too
ARCHITECTURE = ("conv3x3-32-relu, maxpool2, conv3x3-64-relu, maxpool2, flatten, "
                "dense128-relu [penultimate], dense<classes> [logits]")
FeatureLayer = Literal["penultimate", "logits"]


@dataclasses.dataclass
class ClassifierConfig:
    """The recipe's settings (``[evaluate.classifier]``); any change trains a new classifier."""

    epochs: int = setting(3, at_least=1, at_most=100, help="passes over the labelled training "
                                                           "split")
    batch_size: int = setting(128, at_least=1, at_most=4096)
    learning_rate: float = setting(1e-3, above=0.0, at_most=1.0, help="Adam's initial learning "
                                                                      "rate")
    feature_layer: FeatureLayer = setting("penultimate", help="penultimate: the 128 ReLU units "
                                                              "before the output; logits: the "
                                                              "outputs")
    seed: int = setting(0, at_least=0, help="seeds the weights and the order of the training "
                                            "images")
    train_split: str = setting("train[:50000]", help="the data set's labelled images it trains on, "
                                             "whatever the run trains on (data.train_split, "
                                             "data.subsample): runs on one data set share it")
    test_split: str = setting("test", help="the images its accuracy is measured on")


def build_network(image_shape, classes: int, seed: int) -> keras.Model:
    """``ARCHITECTURE``, outputs (penultimate features, logits)."""
    def init(i):
        return keras.initializers.GlorotUniform(seed=seed * 10 + i)

    inputs = keras.Input(shape=tuple(image_shape))
    x = keras.layers.Conv2D(32, 3, padding="same", activation="relu", kernel_initializer=init(0))(inputs)
    x = keras.layers.MaxPooling2D(2)(x)
    x = keras.layers.Conv2D(64, 3, padding="same", activation="relu", kernel_initializer=init(1))(x)
    x = keras.layers.MaxPooling2D(2)(x)
    x = keras.layers.Flatten()(x)
    features = keras.layers.Dense(128, activation="relu", kernel_initializer=init(2))(x)
    logits = keras.layers.Dense(classes, kernel_initializer=init(3))(features)
    return keras.Model(inputs, [features, logits], name="feature_classifier")


def data_digest(split: Split) -> str:
    """SHA-256 of a split's images (float32, as stored) and labels."""
    digest = hashlib.sha256()
    digest.update(str(split.images.shape).encode())
    digest.update(np.ascontiguousarray(split.images, np.float32).tobytes())
    digest.update(np.ascontiguousarray(split.labels, np.int64).tobytes())
    return digest.hexdigest()


def dataset_name(data: DataBundle) -> str:
    """A folder-safe name of the data set: the TFDS name, or the local file or folder's name."""
    cfg = data.config
    name = cfg.name if cfg.source == "tfds" or not cfg.path else Path(cfg.path).stem or cfg.name
    return re.sub(r"[^A-Za-z0-9._-]", "_", name).strip("._") or "data"


def recipe(params: ClassifierConfig, data: DataBundle) -> dict:
    """Everything the trained classifier depends on (the cache key)."""
    cfg = data.config
    labels = data.train.labels
    return {
        "recipe_version": RECIPE_VERSION, "architecture": ARCHITECTURE,
        **dataclasses.asdict(params), "optimizer": "adam, cosine decay to 0",
        "loss": "softmax cross-entropy",
        "data": {"source": cfg.source, "name": cfg.name, "train_split": cfg.train_split,
                 "test_split": cfg.test_split, "val_split": cfg.val_split,
                 "subsample": cfg.subsample, "resize": cfg.resize, "color": cfg.color,
                 "binarize": cfg.binarize, "binarize_threshold": cfg.binarize_threshold,
                 "bins": cfg.bins, "pixel_range": list(data.pixel_range),
                 "image_shape": list(data.image_shape), "train_images": len(data.train),
                 "classes": int(labels.max()) + 1 if len(labels) else 0,
                 "digest": data_digest(data.train)},
    }


def recipe_hash(spec: dict) -> str:
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def cache_dir(root: Path, data: DataBundle, spec: dict) -> Path:
    h, w, c = data.image_shape
    return Path(root) / f"{dataset_name(data)}-{h}x{w}x{c}-{recipe_hash(spec)}"


@dataclasses.dataclass
class FeatureClassifier:
    """A trained classifier and what the reports need about it."""

    network: keras.Model
    feature_layer: str
    accuracy: float
    accuracy_split: str
    train_seconds: float
    path: Path
    trained: bool  # trained in this call (False: loaded from the cache)

    def __post_init__(self):
        index = 0 if self.feature_layer == "penultimate" else 1
        self._features = tf.function(lambda x: self.network(x, training=False)[index],
                                     reduce_retracing=True)

    def features(self, images, batch_size: int = 500) -> np.ndarray:
        """Features [n, D] (float64) of images [n, H, W, C] in the data's pixel range."""
        images = np.asarray(images, np.float32)
        out = [self._features(tf.constant(images[i:i + batch_size])).numpy()
               for i in range(0, len(images), batch_size)]
        return np.concatenate(out).astype(np.float64)

    def predict(self, images, batch_size: int = 500) -> np.ndarray:
        images = np.asarray(images, np.float32)
        return np.concatenate([np.argmax(self.network(tf.constant(images[i:i + batch_size]),
                                                      training=False)[1], axis=1)
                               for i in range(0, len(images), batch_size)])


def _accuracy_split(data: DataBundle) -> tuple[str, Split]:
    for name in ("test", "val"):
        split = getattr(data, name)
        if split is not None and len(split) and (split.labels >= 0).all():
            return name, split
    raise TfgenError("the feature classifier's accuracy needs a labelled test or validation "
                     "split (data.test_split or data.val_split)")


def train(params: ClassifierConfig, data: DataBundle, classes: int) -> tuple[keras.Model, float]:
    """The recipe's training; returns the network and the wall time in seconds."""
    start = time.monotonic()
    network = build_network(data.image_shape, classes, params.seed)
    images, labels = data.train.images, data.train.labels
    steps = params.epochs * -(-len(images) // params.batch_size)
    optimizer = keras.optimizers.Adam(learning_rate=keras.optimizers.schedules.CosineDecay(
        params.learning_rate, steps))
    optimizer.build(network.trainable_variables)
    h, w, c = data.image_shape

    @tf.function(input_signature=[tf.TensorSpec([None, h, w, c], tf.float32),
                                  tf.TensorSpec([None], tf.int64)])
    def step(images, labels):
        with tf.GradientTape() as tape:
            logits = network(images, training=True)[1]
            loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits))
        grads = tape.gradient(loss, network.trainable_variables)
        optimizer.apply_gradients(zip(grads, network.trainable_variables))
        return loss

    rng = np.random.default_rng(params.seed)
    # with data.binarize = "dynamic" the model trains on, is tested on and generates binary
    # images (the stored training images are the grey levels it draws them from): so does
    # the classifier, with a fresh draw per batch
    dynamic = data.config.binarize == "dynamic"
    low, high = data.pixel_range
    for _ in range(params.epochs):
        order = rng.permutation(len(images))
        for i in range(0, len(order), params.batch_size):
            batch = order[i:i + params.batch_size]
            x = images[batch]
            if dynamic:
                p = (x - low) / (high - low)
                x = np.where(rng.random(x.shape, dtype=np.float32) < p, high, low).astype(np.float32)
            step(tf.constant(x), tf.constant(labels[batch]))
    return network, time.monotonic() - start


def _write_atomically(final: Path, network: keras.Model, info: dict) -> None:
    """The cache folder under a temporary name, then renamed into place (complete or absent)."""
    final.parent.mkdir(parents=True, exist_ok=True)
    temp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        weights = network.get_weights()
        with open(temp / "weights.npz", "wb") as fh:
            np.savez(fh, *weights)
            fh.flush()
            os.fsync(fh.fileno())
        (temp / "recipe.json").write_text(json.dumps(info, indent=1))
        if final.exists():  # an unusable folder (a usable one would have been loaded)
            shutil.rmtree(final)
        try:
            os.rename(temp, final)
        except OSError:
            if not final.exists():
                raise
            shutil.rmtree(temp)  # another process cached the same recipe meanwhile
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise


def _load(path: Path, spec: dict, data: DataBundle, classes: int, seed: int):
    """(network, info) from a cache folder whose recipe is ``spec``, or None if unusable."""
    try:
        info = json.loads((path / "recipe.json").read_text())
        if info.get("recipe") != spec:
            return None
        with np.load(path / "weights.npz") as arrays:
            weights = [arrays[f"arr_{i}"] for i in range(len(arrays.files))]
        network = build_network(data.image_shape, classes, seed)
        network.set_weights(weights)
        return network, info
    except (OSError, ValueError, KeyError):
        return None


def classifier_data(params: ClassifierConfig, data: DataBundle, key: str) -> DataBundle:
    """The data set's own labelled splits (``params.train_split`` / ``test_split``) with the
    run's source and pixel transforms: not the run's selection, so runs that train on
    different subsets of one data set get the same classifier and comparable FIDs."""
    run = data.config
    if (run.train_split, run.test_split, run.subsample) == (params.train_split,
                                                             params.test_split, 0):
        return data  # the run trains on exactly these images: nothing to load again
    config = dataclasses.replace(run, train_split=params.train_split, val_split="",
                                 test_split=params.test_split, subsample=0)
    try:
        return _load_once(json.dumps(dataclasses.asdict(config), sort_keys=True), params.seed)
    except ConfigError as err:
        raise TfgenError(f"{key}.train_split / test_split ({params.train_split!r}, "
                         f"{params.test_split!r}) do not select the data set's labelled images: "
                         f"{err}") from None


@functools.lru_cache(maxsize=1)
def _load_once(config_json: str, seed: int) -> DataBundle:
    """load_data, kept for the next task of the same run (e.g. sample_quality with two
    samplers): the data set is read and converted once per process."""
    return load_data(DataConfig(**json.loads(config_json)), seed, "the feature classifier's data")


def load_or_train(params: ClassifierConfig, data: DataBundle, root: Path,
                  key: str = "evaluate.classifier") -> FeatureClassifier:
    """The classifier of this recipe: from the cache under ``root`` if it holds it, else
    trained now on the data set's labelled images (:func:`classifier_data`), its accuracy
    measured, and cached."""
    data = classifier_data(params, data, key)
    labels = data.train.labels
    if not len(labels) or (labels < 0).any():
        raise TfgenError("the feature classifier needs labels for every training image; this "
                         "data set has none (use features = 'inception', or a labelled data set)")
    split_name, split = _accuracy_split(data)
    spec = recipe(params, data)
    classes = spec["data"]["classes"]
    path = cache_dir(root, data, spec)
    loaded = _load(path, spec, data, classes, params.seed) if path.exists() else None
    if loaded is not None:
        network, info = loaded
        return FeatureClassifier(network, params.feature_layer, info["accuracy"],
                                 info["accuracy_split"], info["train_seconds"], path, False)
    network, seconds = train(params, data, classes)
    model = FeatureClassifier(network, params.feature_layer, 0.0, split_name, seconds, path, True)
    model.accuracy = float(np.mean(model.predict(split.images) == split.labels))
    _write_atomically(path, network, {"recipe": spec, "accuracy": model.accuracy,
                                      "accuracy_split": split_name, "train_seconds": seconds,
                                      "parameters": int(network.count_params())})
    return model
