"""scheme = "flow" (tfgen.inference.flow): RealNVP on pixels; its log-density is the change of
variables computed by brute force, it inverts, it trains by maximum likelihood, and it
reports the dequantization bound as the discrete image's log-likelihood."""
from __future__ import annotations

import math

import numpy as np
import tensorflow as tf
from scipy import stats

from conftest import build_in_memory

IMAGES = (np.random.default_rng(0).integers(0, 256, (16, 2, 2, 1)) / 255.0).astype(np.float32)


def flow_scheme(images=IMAGES):
    scheme = build_in_memory({
        "data": {"val_split": ""}, "model": {"likelihood": {"name": "normal"}},
        "inference": {"scheme": "flow", "coupling_layers": 3, "hidden": [16]},
        "train": {"batch_size": 8, "learning_rate": 1e-2}, "evaluate": []}, images)
    rng = np.random.default_rng(1)
    for net in scheme.networks:  # away from the identity the couplings start as
        head = net.network.head
        head.kernel.assign(0.3 * rng.normal(size=head.kernel.shape).astype(np.float32))
    return scheme


def test_the_log_density_is_the_brute_force_change_of_variables():
    scheme = flow_scheme()
    a = scheme.params.alpha
    x = tf.constant(np.random.default_rng(2).uniform(0.05, 0.95, (6, 4)), tf.float32)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = a + (1 - 2 * a) * x
        v = scheme.bijector.forward(tf.math.log(y) - tf.math.log1p(-y))
    jacobian = tape.batch_jacobian(v, x).numpy().astype(np.float64)          # [6, 4, 4]
    expected = (stats.multivariate_normal(np.zeros(4), np.eye(4)).logpdf(v.numpy())
                + np.linalg.slogdet(jacobian)[1])
    np.testing.assert_allclose(scheme.log_density(x).numpy(), expected, rtol=1e-4, atol=1e-4)
    s = tf.constant(np.random.default_rng(3).normal(size=(6, 4)), tf.float32)
    np.testing.assert_allclose(scheme.bijector.inverse(scheme.bijector.forward(s)).numpy(),
                               s.numpy(), atol=1e-5)


def test_the_flow_trains_and_reports_the_discrete_bound():
    scheme = flow_scheme()
    before = float(tf.reduce_mean(scheme.exact_log_likelihood(IMAGES)))
    for k in range(60):
        idx = np.arange(8) + 8 * (k % 2)
        scheme.standalone_step(tf.constant(IMAGES[idx]), tf.constant(idx, tf.int64))
    after = float(tf.reduce_mean(scheme.exact_log_likelihood(IMAGES)))
    assert after > before + 1.0
    # the bound of a discrete image: log p(x~) - D log 256 (a probability: below 0)
    assert after < 0
    uniform = tf.fill([16, 4], 0.5)
    density = scheme.log_density(scheme.dequantize(tf.constant(IMAGES), uniform))
    np.testing.assert_allclose(scheme.discrete_bound(tf.constant(IMAGES), uniform).numpy(),
                               density.numpy() - 4 * math.log(256), rtol=1e-6)
    samples = scheme.sample_images(5, 0).numpy()
    assert samples.shape == (5, 2, 2, 1) and samples.min() >= 0 and samples.max() <= 1
