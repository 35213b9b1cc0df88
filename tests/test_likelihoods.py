"""Each likelihood's log-density against an independent NumPy/SciPy computation."""
from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from scipy import special, stats

from tfgen.models.likelihoods import (BernoulliConfig, BernoulliLikelihood, BetaConfig, BetaLikelihood,
                                      CategoricalConfig, CategoricalLikelihood, NormalConfig,
                                      NormalLikelihood)

RNG = np.random.default_rng(0)
SHAPES = [(4, 5, 1), (3, 4, 3)]  # greyscale and RGB: checks the channel/parameter layout


def softplus(x):
    return np.logaddexp(0.0, x)


def params(batch, shape, k):
    """Decoder output [B, H, W, C*k] and the same numbers as [B, H, W, C, k]."""
    out = RNG.normal(size=(batch, *shape[:2], shape[2] * k)).astype(np.float32)
    return out, out.reshape(batch, *shape, k)


@pytest.mark.parametrize("shape", SHAPES)
def test_normal_fixed(shape):
    lik = NormalLikelihood(NormalConfig(scale="fixed", sigma=0.3), shape, (-1.0, 1.0))
    assert lik.output_channels() == shape[2]
    out, p = params(2, shape, 1)
    y = RNG.uniform(-1, 1, (2, *shape)).astype(np.float32)
    expected = stats.norm.logpdf(y, p[..., 0], 0.3).reshape(2, -1).sum(1)
    np.testing.assert_allclose(lik.log_prob(tf.constant(out), tf.constant(y)).numpy(), expected, rtol=1e-5)


@pytest.mark.parametrize("shape", SHAPES)
def test_normal_per_pixel_sigmoid_mean(shape):
    cfg = NormalConfig(scale="per_pixel", min_sigma=1e-3, mean_activation="sigmoid")
    lik = NormalLikelihood(cfg, shape, (0.0, 1.0))
    assert lik.output_channels() == 2 * shape[2]
    out, p = params(2, shape, 2)
    y = RNG.uniform(0, 1, (2, *shape)).astype(np.float32)
    loc = special.expit(p[..., 0])
    scale = 1e-3 + softplus(p[..., 1])
    expected = stats.norm.logpdf(y, loc, scale).reshape(2, -1).sum(1)
    np.testing.assert_allclose(lik.log_prob(tf.constant(out), tf.constant(y)).numpy(), expected, rtol=1e-5)


def test_normal_learned_sigma_is_trainable():
    shape = (4, 5, 1)
    lik = NormalLikelihood(NormalConfig(scale="learned", sigma=0.5), shape, (0.0, 1.0))
    assert len(lik.trainable_variables) == 1
    out, p = params(2, shape, 1)
    y = RNG.uniform(0, 1, (2, *shape)).astype(np.float32)
    expected = stats.norm.logpdf(y, p[..., 0], 0.5).reshape(2, -1).sum(1)
    np.testing.assert_allclose(lik.log_prob(tf.constant(out), tf.constant(y)).numpy(), expected, rtol=1e-5)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("pixel_range", [(0.0, 1.0), (-1.0, 1.0)])
def test_beta(shape, pixel_range):
    eps = 1e-3
    lik = BetaLikelihood(BetaConfig(epsilon=eps, min_concentration=1e-3), shape, pixel_range)
    assert lik.output_channels() == 2 * shape[2]
    out, p = params(3, shape, 2)
    unit = RNG.uniform(0, 1, (3, *shape)).astype(np.float32)
    unit[0, 0, 0, 0], unit[0, 0, 1, 0] = 0.0, 1.0  # the clipped end points
    low, high = pixel_range
    y = low + (high - low) * unit
    a, b = 1e-3 + softplus(p[..., 0]), 1e-3 + softplus(p[..., 1])
    expected = stats.beta.logpdf(np.clip(unit, eps, 1 - eps), a, b).reshape(3, -1).sum(1)
    np.testing.assert_allclose(lik.log_prob(tf.constant(out), tf.constant(y)).numpy(), expected, rtol=1e-4)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("k", [2, 4, 7])
def test_categorical(shape, k):
    lik = CategoricalLikelihood(CategoricalConfig(bins=k), shape, (0.0, 1.0))
    assert lik.output_channels() == k * shape[2]
    out, p = params(2, shape, k)
    index = RNG.integers(0, k, (2, *shape))
    y = (index / (k - 1)).astype(np.float32)  # the data layer's k-level quantization
    log_softmax = p - special.logsumexp(p, axis=-1, keepdims=True)
    expected = np.take_along_axis(log_softmax, index[..., None], -1)[..., 0].reshape(2, -1).sum(1)
    np.testing.assert_allclose(lik.log_prob(tf.constant(out), tf.constant(y)).numpy(), expected, rtol=1e-5)
    mean = lik.mean(tf.constant(out)).numpy()
    np.testing.assert_allclose(mean, (special.softmax(p, -1) * np.linspace(0, 1, k)).sum(-1), rtol=1e-5)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("pixel_range", [(0.0, 1.0), (-1.0, 1.0)])
def test_bernoulli(shape, pixel_range):
    lik = BernoulliLikelihood(BernoulliConfig(), shape, pixel_range)
    assert lik.output_channels() == shape[2]
    out, p = params(2, shape, 1)
    bits = RNG.integers(0, 2, (2, *shape))
    low, high = pixel_range
    y = (low + (high - low) * bits).astype(np.float32)
    logit = p[..., 0]
    expected = (bits * -np.logaddexp(0, -logit) + (1 - bits) * -np.logaddexp(0, logit)).reshape(2, -1).sum(1)
    np.testing.assert_allclose(lik.log_prob(tf.constant(out), tf.constant(y)).numpy(), expected, rtol=1e-5)


def test_latent_sample_dimension_broadcasts():
    """log_prob of decoder output with a leading sample axis [S, B, ...] against images [B, ...]."""
    shape = (4, 5, 1)
    lik = NormalLikelihood(NormalConfig(), shape, (0.0, 1.0))
    out = RNG.normal(size=(3, 2, 4, 5, 1)).astype(np.float32)
    y = RNG.uniform(0, 1, (2, *shape)).astype(np.float32)
    got = lik.log_prob(tf.constant(out), tf.constant(y)).numpy()
    assert got.shape == (3, 2)
    np.testing.assert_allclose(got[1, 0], stats.norm.logpdf(y[0], out[1, 0], 0.3).sum(), rtol=1e-5)
