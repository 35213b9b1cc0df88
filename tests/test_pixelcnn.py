"""PixelCNN (tfgen.models.pixelcnn): causal masks applied at construction (tfd.PixelCNN's are
Keras constraints, applied only after an optimizer step), a distribution that sums to one
over every image, the likelihood under vae and pga, the model without latents, refusals."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp

from conftest import build_in_memory
from tfgen.assemble import from_dict
from tfgen.distribute import single_replica_batch
from tfgen.errors import ConfigError
from tfgen.models.pixelcnn import PixelCNNConfig, build_pixelcnn

SMALL = PixelCNNConfig(levels=256, num_resnet=1, num_hierarchies=1, num_filters=8,
                       num_logistic_mix=2)


def dependencies(dist, side: int, conditional=None) -> np.ndarray:
    """[i, j] = whether the network's output for pixel i changes with input pixel j."""
    x = np.random.default_rng(0).normal(size=(1, side, side, 1)).astype(np.float32)
    call = dist.network
    if conditional is not None:
        call = lambda images, training: dist.network([images, conditional], training=training)
    flat = lambda out: np.concatenate([np.reshape(t.numpy(), (side * side, -1))
                                       for t in tf.nest.flatten(out)], -1)
    base = flat(call(tf.constant(x), training=False))
    dep = np.zeros((side * side, side * side), bool)
    for j in range(side * side):
        moved = x.copy()
        moved.reshape(-1)[j] += 1.0
        dep[:, j] = np.abs(flat(call(tf.constant(moved), training=False)) - base).sum(-1) > 1e-7
    return dep


def test_no_pixel_depends_on_itself_or_a_later_one():
    dist = build_pixelcnn(SMALL, (6, 6, 1))
    dep = dependencies(dist, 6)
    assert not np.triu(dep).any()                   # j >= i: none
    assert dep[35, :35].sum() > 10                  # and the last pixel sees the earlier ones
    # the reason for build_pixelcnn's projection: tfd.PixelCNN as TFP builds it is not causal
    raw = tfp.distributions.PixelCNN((6, 6, 1), num_resnet=1, num_hierarchies=1, num_filters=8,
                                     num_logistic_mix=2, use_data_init=False)
    raw.log_prob(tf.zeros([1, 6, 6, 1]))
    assert np.triu(dependencies(raw, 6)).any()


def test_the_probabilities_of_all_binary_images_sum_to_one():
    dist = build_pixelcnn(PixelCNNConfig(levels=2, num_resnet=1, num_hierarchies=1,
                                         num_filters=8, num_logistic_mix=2), (2, 2, 1))
    rng = np.random.default_rng(1)
    for v in dist.network.trainable_variables:  # any weights, masks kept
        v.assign(v + 0.3 * rng.normal(size=v.shape).astype(np.float32))
    from tfgen.models.pixelcnn import apply_masks
    apply_masks(dist)
    images = np.array(list(itertools.product([0.0, 1.0], repeat=4)), np.float32).reshape(16, 2, 2, 1)
    total = np.exp(dist.log_prob(images).numpy().astype(np.float64)).sum()
    assert total == pytest.approx(1.0, abs=1e-4)


def scheme_with_pixelcnn(scheme: str):
    images = (np.random.default_rng(2).random((8, 4, 4, 1)) < 0.4).astype(np.float32)
    inference = {"scheme": scheme}
    if scheme == "vae":
        inference["encoder"] = {"name": "mlp", "hidden": [8]}
    if scheme == "pga":
        inference.update({"particles": 2, "step_size": 1e-2})
    return images, build_in_memory({
        "data": {"val_split": "", "binarize": "static"},
        "model": {"prior": {"dim": 2}, "decoder": {"name": "mlp", "hidden": [8]},
                  "likelihood": {"name": "pixelcnn", "levels": 2, "num_resnet": 1,
                                 "num_hierarchies": 1, "num_filters": 8,
                                 "num_logistic_mix": 2, "conditional_channels": 1}},
        "inference": inference, "train": {"batch_size": 4, "learning_rate": 1e-2},
        "evaluate": []}, images)


@pytest.mark.parametrize("scheme", ["vae", "pga"])
def test_the_pixelcnn_likelihood_trains_under_vae_and_pga(scheme):
    images, s = scheme_with_pixelcnn(scheme)
    pixelcnn_vars = s.model.likelihood.pixelcnn.trainable_variables
    assert pixelcnn_vars and all(any(v is t for t in s.model.theta) for v in pixelcnn_vars)
    losses = []
    for k in range(15):
        idx = np.arange(4) + 4 * (k % 2)
        losses.append(float(s.standalone_step(tf.constant(images[idx]), tf.constant(idx, tf.int64))["loss"]))
    assert np.isfinite(losses).all() and min(losses[-4:]) < losses[0]
    conditional = s.model.decode(tf.zeros([1, 2]))
    assert not np.triu(dependencies(s.model.likelihood.pixelcnn, 4, conditional)).any()
    drawn = s.model.likelihood.sample(s.model.decode(tf.zeros([3, 2])), seed=tf.constant([1, 2]))
    assert drawn.shape == (3, 4, 4, 1) and set(np.unique(drawn.numpy())) <= {0.0, 1.0}


def test_the_model_without_latents_trains_and_samples_in_one_loop():
    images = (np.random.default_rng(3).random((16, 4, 4, 1)) < 0.3).astype(np.float32)
    s = build_in_memory({
        "data": {"val_split": "", "binarize": "static"},
        "inference": {"scheme": "autoregressive", "levels": 2, "num_resnet": 1,
                      "num_hierarchies": 1, "num_filters": 8, "num_logistic_mix": 2},
        "train": {"batch_size": 8, "learning_rate": 1e-2}, "evaluate": []}, images)
    before = float(tf.reduce_mean(s.exact_log_likelihood(images)))
    for k in range(30):
        idx = np.arange(8) + 8 * (k % 2)
        s.standalone_step(tf.constant(images[idx]), tf.constant(idx, tf.int64))
    assert float(tf.reduce_mean(s.exact_log_likelihood(images))) > before + 0.5
    samples = s.sample_images(5, 0).numpy()
    assert samples.shape == (5, 4, 4, 1) and set(np.unique(samples)) <= {0.0, 1.0}
    assert s._sampler.experimental_get_tracing_count() == 1


def test_tasks_that_need_per_pixel_factors_are_refused_with_the_pixelcnn_likelihood():
    with pytest.raises(ConfigError, match="evaluate.0..task: task 'inpainting' needs a likelihood "
                                          "that factorizes"):
        from_dict({"data": {"binarize": "static"},
                   "model": {"likelihood": {"name": "pixelcnn", "levels": 2}},
                   "inference": {"scheme": "pga"}, "evaluate": [{"task": "inpainting"}]})


def test_the_model_without_latents_trains_on_dynamically_binarized_batches():
    """Grey pixels of 0.3 become Bernoulli(0.3) bits in every training batch (not a threshold,
    which would make them all 0)."""
    images = np.full((8, 4, 4, 1), 0.3, np.float32)
    s = build_in_memory({
        "data": {"val_split": "", "binarize": "dynamic"},
        "inference": {"scheme": "autoregressive", "levels": 2, "num_resnet": 1,
                      "num_hierarchies": 1, "num_filters": 8, "num_logistic_mix": 2},
        "train": {"batch_size": 8}, "evaluate": []}, images)
    seen = []
    log_prob = s.training_log_prob

    def recording(batch_images, batch):
        seen.append(batch_images)
        return log_prob(batch_images, batch)

    s.training_log_prob = recording
    s.step_on_replica(tf.constant(images), tf.range(8, dtype=tf.int64),
                   single_replica_batch(tf.constant([1, 2], tf.int64), tf.range(8)))
    bits = seen[0].numpy()
    assert set(np.unique(bits)) == {0.0, 1.0} and 0.15 < bits.mean() < 0.45
