"""The data layer: every source format, the TFDS path and its offline fallback, the transforms."""
from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from conftest import blob_images, write_idx
from tfgen.config import DataConfig
from tfgen.data import load_data, read_idx, train_dataset
from tfgen.errors import ConfigError, DataError


def cfg(**kw) -> DataConfig:
    base = dict(source="idx", train_split="train[:100]", val_split="train[100:]", test_split="test")
    base.update(kw)
    return DataConfig(**base)


def test_idx_round_trip(tmp_path):
    images, labels = blob_images(7)
    write_idx(tmp_path / "a-idx3-ubyte", images[..., 0])
    write_idx(tmp_path / "b-idx1-ubyte.gz", labels)
    np.testing.assert_array_equal(read_idx(tmp_path / "a-idx3-ubyte"), images[..., 0])
    np.testing.assert_array_equal(read_idx(tmp_path / "b-idx1-ubyte.gz"), labels)
    (tmp_path / "junk").write_bytes(b"\x01\x02\x03\x04")
    with pytest.raises(DataError, match="not an IDX file"):
        read_idx(tmp_path / "junk")


def test_idx_folder_and_split_syntax(idx_folder):
    data = load_data(cfg(path=str(idx_folder)), seed=0)
    assert (len(data.train), len(data.val), len(data.test)) == (100, 60, 40)
    assert data.image_shape == (28, 28, 1) and data.pixel_range == (0.0, 1.0)
    assert data.train.images.dtype == np.float32
    assert 0.0 <= data.train.images.min() and data.train.images.max() == 1.0
    raw, _ = blob_images(160, seed=0)
    np.testing.assert_allclose(data.val.images[0, ..., 0], raw[100, ..., 0] / 255.0)
    combined = load_data(cfg(path=str(idx_folder), train_split="train[:10%]+test[-5:]"), seed=0)
    assert len(combined.train) == 16 + 5


def test_tfds_name_falls_back_to_local_idx(idx_folder, tmp_path, monkeypatch):
    c = cfg(source="tfds", name="mnist", path=str(idx_folder), data_dir=str(tmp_path / "tfds"))
    data = load_data(c, seed=0)
    assert "local IDX files" in data.description and len(data.train) == 100
    monkeypatch.setenv("TFGEN_DATA_DIR", str(idx_folder))
    data = load_data(cfg(source="tfds", name="mnist", data_dir=str(tmp_path / "tfds")), seed=0)
    assert str(idx_folder) in data.description
    monkeypatch.delenv("TFGEN_DATA_DIR")
    with pytest.raises(DataError, match="looked in"):
        load_data(cfg(source="tfds", name="mnist", data_dir=str(tmp_path / "tfds")), seed=0)


def test_prepared_tfds_data_set_is_read_through_tfds(tmp_path):
    """A data set TFDS has prepared (here a tiny RGB builder) is loaded through TFDS itself."""
    import tensorflow_datasets as tfds

    class TinyShapes(tfds.core.GeneratorBasedBuilder):
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(12, 10, 3)),
                "label": tfds.features.ClassLabel(num_classes=4)}))

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples(30, 0), "test": self._generate_examples(10, 1)}

        def _generate_examples(self, n, seed):
            images, labels = blob_images(n, size=12, channels=3, seed=seed)
            for i in range(n):
                yield i, {"image": images[i, :, 1:11], "label": int(labels[i])}

    TinyShapes(data_dir=str(tmp_path)).download_and_prepare()
    c = cfg(source="tfds", name="tiny_shapes", data_dir=str(tmp_path), train_split="train[:20]",
            val_split="train[20:]", test_split="test", resize=8, pixel_range="[-1,1]")
    data = load_data(c, seed=0)
    assert data.description.startswith("TFDS tiny_shapes")
    assert data.image_shape == (8, 8, 3)  # centre-cropped 12x10 -> 10x10, resized to 8x8
    assert data.train.images.min() >= -1.0 and data.train.images.max() <= 1.0
    assert data.train.images.min() < -0.9
    grey = load_data(cfg(**{**c.__dict__, "color": "grayscale"}), seed=0)
    assert grey.image_shape == (8, 8, 1)


def test_npz_source(tmp_path):
    images, labels = blob_images(30, size=16)
    np.savez(tmp_path / "d.npz", x_train=images[:20], y_train=labels[:20], x_test=images[20:] / 255.0)
    data = load_data(cfg(source="npz", path=str(tmp_path / "d.npz"), train_split="train",
                         val_split="", test_split="test"), seed=0)
    assert len(data.train) == 20 and data.val is None and len(data.test) == 10
    assert (data.test.labels == -1).all()
    np.testing.assert_allclose(data.test.images, images[20:] / 255.0, atol=1e-6)


def test_image_folder_rgb_with_classes_and_resize(tmp_path):
    images, labels = blob_images(12, size=20, channels=3)
    for split, sl in [("train", slice(0, 8)), ("test", slice(8, 12))]:
        for i in range(12)[sl]:
            folder = tmp_path / split / f"class_{labels[i]}"
            folder.mkdir(parents=True, exist_ok=True)
            tf.io.write_file(str(folder / f"{i}.png"), tf.io.encode_png(images[i]))
    data = load_data(cfg(source="image_folder", path=str(tmp_path), train_split="train",
                         val_split="", test_split="test", resize=32), seed=0)
    assert data.image_shape == (32, 32, 3) and len(data.train) == 8 and len(data.test) == 4
    assert set(data.train.labels) <= {0, 1, 2, 3}


def test_transforms(idx_folder):
    static = load_data(cfg(path=str(idx_folder), binarize="static"), seed=0)
    assert set(np.unique(static.train.images)) <= {0.0, 1.0}
    bins = load_data(cfg(path=str(idx_folder), bins=4), seed=0)
    assert set(np.round(np.unique(bins.train.images), 6)) <= {0.0, 0.333333, 0.666667, 1.0}
    sym = load_data(cfg(path=str(idx_folder), pixel_range="[-1,1]", resize=32), seed=0)
    assert sym.image_shape == (32, 32, 1) and sym.train.images.min() == -1.0


def test_subsample_is_seeded(idx_folder):
    a = load_data(cfg(path=str(idx_folder), subsample=20), seed=1)
    b = load_data(cfg(path=str(idx_folder), subsample=20), seed=1)
    c = load_data(cfg(path=str(idx_folder), subsample=20), seed=2)
    np.testing.assert_array_equal(a.train.images, b.train.images)
    assert not np.array_equal(a.train.images, c.train.images)
    with pytest.raises(ConfigError, match="data.subsample"):
        load_data(cfg(path=str(idx_folder), subsample=1000), seed=1)


def test_dynamic_binarization(idx_folder):
    data = load_data(cfg(path=str(idx_folder), binarize="dynamic"), seed=0)
    assert set(np.unique(data.test.images)) <= {0.0, 1.0}  # evaluation splits: binarized once
    x = tf.constant(np.full((64, 28, 28, 1), 0.3, np.float32))
    gen = tf.random.Generator.from_seed(0)
    draw = lambda: gen.uniform(x.shape)
    first, second = data.transform_batch(x, draw).numpy(), data.transform_batch(x, draw).numpy()
    assert set(np.unique(first)) <= {0.0, 1.0} and abs(first.mean() - 0.3) < 0.01
    assert not np.array_equal(first, second)  # a fresh draw every batch


def test_epoch_order_depends_only_on_seed_and_epoch(idx_folder):
    data = load_data(cfg(path=str(idx_folder)), seed=0)

    def order(seed, epoch, skip=0):
        ds = train_dataset(data.train, 16, seed, epoch, data.config, skip_batches=skip)
        return np.concatenate([idx.numpy() for _, idx in ds])

    assert sorted(order(0, 0)) == list(range(100))
    np.testing.assert_array_equal(order(0, 1), order(0, 1))
    assert not np.array_equal(order(0, 1), order(0, 2))
    np.testing.assert_array_equal(order(0, 1, skip=2), order(0, 1)[32:])
