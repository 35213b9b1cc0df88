"""The ELBO and the importance-sampled log-likelihood against a linear-Gaussian model (PPCA),
whose marginal likelihood and posterior are known in closed form (Tipping & Bishop 1999):

    z ~ N(0, I_d),  y | z ~ N(W z + b, s^2 I_D)  =>  y ~ N(b, W W^T + s^2 I_D),
    z | y ~ N(M^-1 W^T (y - b), s^2 M^-1),  M = W^T W + s^2 I_d.
"""
from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from scipy import stats

from tfgen.inference.elbo import elbo_terms, gaussian_posterior, importance_log_likelihood
from tfgen.models.likelihoods import NormalConfig, NormalLikelihood
from tfgen.models.model import GenerativeModel
from tfgen.models.networks import MLP
from tfgen.models.priors import StandardNormalConfig, StandardNormalPrior

D, d, SIGMA = 6, 2, 0.4


def ppca_model(seed=0):
    rng = np.random.default_rng(seed)
    # orthogonal columns: the exact posterior covariance s^2 M^-1 is diagonal, so a
    # mean-field Gaussian q can equal it and the ELBO is tight.
    q, _ = np.linalg.qr(rng.normal(size=(D, d)))
    W = (q * np.array([2.0, 0.7])).astype(np.float32)
    b = rng.normal(size=D).astype(np.float32)
    decoder = MLP((1, D, 1), hidden=[])
    model = GenerativeModel(StandardNormalPrior(StandardNormalConfig(dim=d)), decoder,
                            NormalLikelihood(NormalConfig(scale="fixed", sigma=SIGMA), (1, D, 1), (0.0, 1.0)), d)
    decoder.head.kernel.assign(W.T)
    decoder.head.bias.assign(b)
    return model, W, b


def exact_posterior(W, b, y):
    M = W.T @ W + SIGMA**2 * np.eye(d)
    mean = (np.linalg.solve(M, W.T @ (y - b).T)).T
    var = np.diag(SIGMA**2 * np.linalg.inv(M))
    return mean.astype(np.float32), np.broadcast_to(var, mean.shape).astype(np.float32)


def marginal(W, b, y):
    return stats.multivariate_normal(b, W @ W.T + SIGMA**2 * np.eye(D)).logpdf(y)


def test_linear_decoder_is_ppca():
    model, W, b = ppca_model()
    z = np.random.default_rng(1).normal(size=(3, d)).astype(np.float32)
    np.testing.assert_allclose(model.decode(tf.constant(z)).numpy().reshape(3, D), z @ W.T + b, rtol=1e-5)


def test_at_exact_posterior_log_weight_equals_log_marginal_for_any_noise():
    """log p(y, z) - log q(z) = log p(y) for every z when q is the posterior: one sample suffices."""
    model, W, b = ppca_model()
    rng = np.random.default_rng(2)
    y = (rng.normal(size=(5, D)) * 1.5 + b).astype(np.float32)
    mean, var = exact_posterior(W, b, y)
    q = gaussian_posterior(tf.constant(mean), tf.constant(np.log(var)))
    images = tf.constant(y.reshape(5, 1, D, 1))
    expected = marginal(W, b, y)
    for seed in range(3):
        noise = tf.constant(np.random.default_rng(seed).normal(size=(1, 5, d)).astype(np.float32))
        iw = importance_log_likelihood(model, q, images, 1, noise=noise)
        np.testing.assert_allclose(iw.numpy(), expected, rtol=1e-4)


def test_elbo_at_exact_posterior_is_tight():
    """ELBO = log p(y) - KL(q || p(z|y)) = log p(y) at the posterior (MC reconstruction, exact KL)."""
    model, W, b = ppca_model()
    rng = np.random.default_rng(5)
    y = (rng.normal(size=(4, D)) + b).astype(np.float32)
    mean, var = exact_posterior(W, b, y)
    q = gaussian_posterior(tf.constant(mean), tf.constant(np.log(var)))
    noise = tf.constant(rng.normal(size=(20000, 4, d)).astype(np.float32))
    terms = elbo_terms(model, q, tf.constant(y.reshape(4, 1, D, 1)), 20000, noise=noise)
    np.testing.assert_allclose(terms.elbo.numpy(), marginal(W, b, y), atol=0.03)


def test_elbo_of_any_gaussian_q_matches_its_closed_form_and_bounds_log_marginal():
    model, W, b = ppca_model()
    rng = np.random.default_rng(3)
    y = (rng.normal(size=(4, D)) + b).astype(np.float32)
    m = rng.normal(size=(4, d)).astype(np.float32)
    s2 = rng.uniform(0.05, 0.8, size=(4, d)).astype(np.float32)
    q = gaussian_posterior(tf.constant(m), tf.constant(np.log(s2)))
    S = 20000
    noise = tf.constant(rng.normal(size=(S, 4, d)).astype(np.float32))
    terms = elbo_terms(model, q, tf.constant(y.reshape(4, 1, D, 1)), S, noise=noise)
    # E_q log N(y | Wz + b, s^2 I) = -D/2 log(2 pi s^2) - (|y - Wm - b|^2 + tr(W diag(s2) W^T)) / (2 s^2)
    resid = y - m @ W.T - b
    trace = (W**2 @ s2.T).sum(0)
    recon = -0.5 * D * np.log(2 * np.pi * SIGMA**2) - ((resid**2).sum(1) + trace) / (2 * SIGMA**2)
    kl = 0.5 * (s2 + m**2 - 1.0 - np.log(s2)).sum(1)
    np.testing.assert_allclose(terms.kl.numpy(), kl, rtol=1e-5)
    # the same Monte Carlo average computed independently with NumPy: exact agreement
    z = m + np.sqrt(s2) * noise.numpy()
    per_sample = stats.norm.logpdf(y, z @ W.T + b, SIGMA).sum(-1)
    np.testing.assert_allclose(terms.reconstruction.numpy(), per_sample.mean(0), rtol=1e-5)
    # and the Monte Carlo average agrees with the closed form within 4 standard errors
    stderr = per_sample.std(0) / np.sqrt(S)
    assert np.all(np.abs(terms.reconstruction.numpy() - recon) < 4 * stderr + 1e-3)
    assert np.all(terms.elbo.numpy() < marginal(W, b, y))


def test_importance_sampling_tightens_towards_log_marginal():
    model, W, b = ppca_model()
    rng = np.random.default_rng(4)
    y = (rng.normal(size=(3, D)) + b).astype(np.float32)
    mean, var = exact_posterior(W, b, y)
    q = gaussian_posterior(tf.constant(mean + 0.3), tf.constant(np.log(var * 2.0)))  # a worse proposal
    images = tf.constant(y.reshape(3, 1, D, 1))
    def gap(k, repeats):
        # `repeats` independent K-sample estimates at once: tile the batch
        tiled_q = gaussian_posterior(tf.constant(np.tile(mean + 0.3, (repeats, 1))),
                                     tf.constant(np.tile(np.log(var * 2.0), (repeats, 1))))
        noise = tf.constant(rng.normal(size=(k, 3 * repeats, d)).astype(np.float32))
        values = importance_log_likelihood(model, tiled_q, tf.tile(images, [repeats, 1, 1, 1]), k,
                                           noise=noise).numpy().reshape(repeats, 3)
        return marginal(W, b, y) - values.mean(0)

    elbo_gap = gap(1, 4000)       # E[K=1 estimate] is the ELBO: gap = KL(q || p(z|y)) > 0
    iwae_gap = gap(2000, 1)
    assert np.all(elbo_gap > 0.1)
    assert np.all(np.abs(iwae_gap) < elbo_gap / 4)


def test_the_chunked_importance_estimate_equals_the_unchunked_one():
    """K = 250 samples decoded 100 at a time (the last chunk part-used) give the log-mean-exp
    of the same 250 weights computed at once: memory is bounded, the estimate unchanged."""
    from scipy.special import logsumexp

    from conftest import blob_images, build_in_memory

    images = (blob_images(8)[0] / 255.0 > 0.5).astype(np.float32)
    scheme = build_in_memory({
        "data": {"val_split": "", "binarize": "static"},
        "model": {"prior": {"dim": 2}, "decoder": {"name": "mlp", "hidden": [16]}},
        "inference": {"scheme": "vae", "encoder": {"name": "mlp", "hidden": [16]}},
        "train": {"compile": "graph"}, "evaluate": []}, images)
    q = scheme.posterior(images)
    seed = tf.constant([3, 4], tf.int64)
    chunked = scheme._loglik_fn(tf.constant(images), q.loc, q.scale.diag, seed, 250).numpy()
    weights = []
    for i in range(3):
        chunk_seed = tf.random.experimental.stateless_fold_in(seed, tf.constant(i, tf.int64))
        noise = tf.random.stateless_normal([100, *q.loc.shape], chunk_seed)
        weights.append(importance_log_likelihood(scheme.model, q, images, 100, noise=noise,
                                                 per_sample=True).numpy())
    expected = logsumexp(np.concatenate(weights)[:250], axis=0) - np.log(250)
    np.testing.assert_allclose(chunked, expected, rtol=1e-6, atol=1e-4)
