"""The discretized logistic mixture likelihood (PixelCNN++): a probability mass over the pixel
levels that matches the hand-written formula, and a VAE that trains with it."""
from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from scipy.special import expit, logsumexp

from conftest import build_in_memory
from tfgen.models.likelihoods import (DiscretizedLogisticMixtureConfig,
                                      DiscretizedLogisticMixtureLikelihood)

LEVELS, K = 16, 3


def likelihood():
    return DiscretizedLogisticMixtureLikelihood(
        DiscretizedLogisticMixtureConfig(components=K, levels=LEVELS), (2, 2, 1), (0.0, 1.0))


def test_the_mass_over_all_levels_is_one_and_matches_the_formula():
    lik = likelihood()
    out = np.random.default_rng(0).normal(size=(5, 2, 2, 3 * K)).astype(np.float32)
    values = np.arange(LEVELS, dtype=np.float32) / (LEVELS - 1)
    logp = np.stack([lik._pixel_distribution(tf.constant(out)).log_prob(
        lik.targets(tf.fill([5, 2, 2, 1], v))).numpy() for v in values])        # [L, 5, 2, 2, 1]
    np.testing.assert_allclose(np.exp(logp).sum(0), 1.0, rtol=1e-5)
    # PixelCNN++ eq. (2) by hand: level v gets F(v + 1/2) - F(v - 1/2), the edges the tails
    params = out.reshape(5, 2, 2, 1, 3, K)
    logits, loc, raw = params[..., 0, :], params[..., 1, :], params[..., 2, :]
    top = LEVELS - 1
    mu, s = top / 2 + top / 2 * loc, np.exp(np.maximum(raw, -7.0))
    for v in [0, 5, top]:
        upper = 1.0 if v == top else expit((v + 0.5 - mu) / s)
        lower = 0.0 if v == 0 else expit((v - 0.5 - mu) / s)
        log_mix = logsumexp(np.log(np.maximum(upper - lower, 1e-300))
                            + logits - logsumexp(logits, -1, keepdims=True), axis=-1)
        # float32 differences of nearly equal CDFs lose digits where the mass is tiny: the
        # masses agree absolutely, their logs where the mass is not negligible
        np.testing.assert_allclose(np.exp(logp[v]), np.exp(log_mix), atol=2e-6)
        big = log_mix > np.log(1e-3)
        np.testing.assert_allclose(logp[v][big], log_mix[big], rtol=1e-4, atol=1e-4)


def test_a_vae_trains_with_it_and_reports_discrete_bits_per_dim():
    from tfgen.evaluation.metrics import bits_per_dim

    images = (np.random.default_rng(1).integers(0, 256, (8, 4, 4, 1)) / 255.0).astype(np.float32)
    scheme = build_in_memory({
        "data": {"val_split": ""},
        "model": {"prior": {"dim": 2}, "decoder": {"name": "mlp", "hidden": [8]},
                  "likelihood": {"name": "discretized_logistic_mixture", "components": 2}},
        "inference": {"scheme": "vae", "encoder": {"name": "mlp", "hidden": [8]}},
        "train": {"batch_size": 4}, "evaluate": []}, images)
    losses = [float(scheme.standalone_step(tf.constant(images[:4]), tf.range(4, dtype=tf.int64))["loss"])
              for _ in range(20)]
    assert np.isfinite(losses).all() and losses[-1] < losses[0]
    out = bits_per_dim({"log_likelihood": -100.0, "log_likelihood_stderr": 1.0},
                       scheme.model.likelihood, (4, 4, 1), eight_bit=True)
    assert set(out) == {"bits_per_dim", "bits_per_dim_stderr"}
    assert out["bits_per_dim"] == pytest.approx(100.0 / (16 * np.log(2)))
