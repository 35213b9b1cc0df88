"""Linear latent-variable models by EM (tfgen.models.gmm, tfgen.models.linear_em) against known
truths and dense formulas: a Gaussian mixture recovers the mixture that drew its data
(isotropic and diagonal), its EM trace never decreases, its log density matches a by-hand
scipy mixture and its TFP distribution; PPCA by EM reaches the closed-form (eigen) solution,
its Woodbury log density and posterior match the dense D x D Gaussian formulas."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import tensorflow as tf
from scipy import special, stats

from tfgen.models.gmm import GMMParams, fit_gmm, gmm_distribution, gmm_log_prob, gmm_responsibilities
from tfgen.models.linear_em import (
    fit_ppca_closed_form,
    fit_ppca_em,
    ppca_distribution,
    ppca_log_prob,
    ppca_posterior,
)
from tfgen.models.ppca import PPCAParams

# ------------------------------------------------------------------ Gaussian mixture


def sample_gmm(weights, means, variances, n, seed):
    """Data from a known mixture (isotropic variances [k] or diagonal [k, D])."""
    rng = np.random.default_rng(seed)
    weights, means, variances = map(np.asarray, (weights, means, variances))
    labels = rng.choice(len(weights), size=n, p=weights)
    scale = np.sqrt(variances if variances.ndim == 2 else variances[:, None])
    return means[labels] + scale[labels] * rng.normal(size=(n, means.shape[1]))


def dense_gmm_log_prob(params: GMMParams, x: np.ndarray) -> np.ndarray:
    """The mixture density by hand: scipy's full-covariance normal per component, logsumexp."""
    d = params.means.shape[1]
    per_component = []
    for w, m, v in zip(params.weights, params.means, params.variances):
        cov = np.diag(np.broadcast_to(v, (d,)))
        per_component.append(np.log(w) + stats.multivariate_normal(m, cov).logpdf(x))
    return special.logsumexp(np.stack(per_component, axis=1), axis=1)


def match_components(true_means, fitted_means):
    """The label permutation that maps true components onto fitted ones (k! tries, k small)."""
    k = len(true_means)
    return min(itertools.permutations(range(k)),
               key=lambda p: np.sum((np.asarray(fitted_means)[list(p)] - true_means) ** 2))


TRUE_ISO = dict(weights=[0.5, 0.3, 0.2],
                means=[[0.0, 0.0], [6.0, 0.0], [0.0, 6.0]],
                variances=[1.0, 0.5, 2.0])
TRUE_DIAG = dict(weights=[0.25, 0.45, 0.3],
                 means=[[0.0, 0.0, 0.0, 0.0, 0.0],
                        [5.0, -5.0, 0.0, 2.0, 0.0],
                        [-4.0, 4.0, 5.0, 0.0, -3.0]],
                 variances=[[1.0, 0.5, 2.0, 1.0, 0.3],
                            [0.4, 1.5, 1.0, 0.8, 1.2],
                            [2.0, 1.0, 0.6, 0.3, 1.0]])


@pytest.mark.parametrize("covariance, truth", [("isotropic", TRUE_ISO), ("diagonal", TRUE_DIAG)])
def test_gmm_recovers_the_generating_mixture(covariance, truth):
    x = sample_gmm(**truth, n=4000, seed=1)
    fit = fit_gmm(x, 3, covariance=covariance, iterations=300, tol=1e-9, seed=0, restarts=2)
    assert fit.converged
    assert fit.covariance == covariance
    perm = list(match_components(np.asarray(truth["means"]), fit.means))
    np.testing.assert_allclose(fit.weights[perm], truth["weights"], atol=0.03)
    np.testing.assert_allclose(fit.means[perm], truth["means"], atol=0.15)
    np.testing.assert_allclose(fit.variances[perm], truth["variances"], rtol=0.15)
    assert np.isclose(fit.weights.sum(), 1.0)
    # The trace is the training data's mean log-likelihood; its last entry belongs to the fit.
    assert np.isclose(fit.log_likelihood, gmm_log_prob(fit, x).mean(), rtol=0, atol=1e-10)
    # The maximum-likelihood fit scores at least as well as the truth on its own data.
    truth_params = GMMParams(np.asarray(truth["weights"]), np.asarray(truth["means"], float),
                             np.asarray(truth["variances"], float), [])
    assert fit.log_likelihood >= gmm_log_prob(truth_params, x).mean() - 1e-9


@pytest.mark.parametrize("covariance", ["isotropic", "diagonal"])
def test_gmm_log_likelihood_trace_is_monotone(covariance):
    # Overlapping components and more of them than in the data: a slow, many-step EM run.
    x = sample_gmm(**TRUE_DIAG, n=1500, seed=2) * 0.4
    for seed in range(3):
        fit = fit_gmm(x, 5, covariance=covariance, iterations=150, tol=0.0, seed=seed)
        trace = np.asarray(fit.log_likelihood_trace)
        assert len(trace) > 20
        assert np.all(np.diff(trace) >= -1e-10), np.diff(trace).min()
        assert trace[-1] > trace[0]


def test_gmm_log_prob_matches_scipy_mixture_and_tfp():
    rng = np.random.default_rng(3)
    for variances in (rng.uniform(0.2, 3.0, size=3), rng.uniform(0.2, 3.0, size=(3, 4))):
        params = GMMParams(weights=np.array([0.2, 0.5, 0.3]), means=rng.normal(size=(3, 4)) * 3,
                           variances=variances, log_likelihood_trace=[])
        x = rng.normal(size=(50, 4)) * 4 + 10.0  # far from the origin too: the expansion is centred
        expected = dense_gmm_log_prob(params, x)
        np.testing.assert_allclose(gmm_log_prob(params, x), expected, rtol=1e-10, atol=1e-10)
        lp64 = gmm_distribution(params, tf.float64).log_prob(x).numpy()
        np.testing.assert_allclose(lp64, expected, rtol=1e-10, atol=1e-10)
        lp32 = gmm_distribution(params).log_prob(x.astype(np.float32)).numpy()
        assert lp32.dtype == np.float32
        np.testing.assert_allclose(lp32, expected, rtol=1e-4, atol=1e-3)
        resp = gmm_responsibilities(params, x)
        np.testing.assert_allclose(resp.sum(axis=1), 1.0, atol=1e-12)


def test_gmm_distribution_samples_have_the_mixture_moments():
    params = fit_gmm(sample_gmm(**TRUE_DIAG, n=1500, seed=4), 3, covariance="diagonal", seed=0)
    samples = gmm_distribution(params, tf.float64).sample(40000, seed=7).numpy()
    assert samples.shape == (40000, 5)
    mean = params.weights @ params.means
    second = params.weights @ (params.variances + params.means ** 2)
    np.testing.assert_allclose(samples.mean(axis=0), mean, atol=0.06)
    np.testing.assert_allclose(samples.var(axis=0), second - mean ** 2, rtol=0.04)


def test_gmm_variance_floor_keeps_a_collapsed_component_finite():
    # Half the points sit exactly on one spot: the ML variance of a component there is 0.
    rng = np.random.default_rng(5)
    x = np.concatenate([np.zeros((60, 3)), rng.normal(size=(60, 3)) + 5.0])
    for covariance in ("isotropic", "diagonal"):
        fit = fit_gmm(x, 2, covariance=covariance, iterations=100, seed=0, variance_floor=1e-4)
        assert np.all(np.isfinite(fit.log_likelihood_trace))
        assert np.all(fit.variances >= 1e-4)
        assert np.isclose(np.min(fit.variances), 1e-4)
        assert np.all(np.isfinite(gmm_log_prob(fit, x)))
        assert np.all(np.diff(fit.log_likelihood_trace) >= -1e-10)


def test_gmm_restarts_and_seed_are_deterministic():
    x = sample_gmm(**TRUE_DIAG, n=800, seed=6) * 0.5
    one = fit_gmm(x, 4, covariance="isotropic", seed=3)
    again = fit_gmm(x, 4, covariance="isotropic", seed=3)
    np.testing.assert_array_equal(one.means, again.means)
    best = fit_gmm(x, 4, covariance="isotropic", seed=3, restarts=4)
    assert best.log_likelihood >= one.log_likelihood
    with pytest.raises(ValueError):
        fit_gmm(x, 4, covariance="spherical")
    with pytest.raises(ValueError):
        fit_gmm(x[:3], 4)


# ------------------------------------------------------------------ probabilistic PCA


def sample_ppca(d, q, n, sigma2, seed, scales=None):
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(d, q)) * (scales if scales is not None else 1.0)
    mu = rng.normal(size=d) * 2
    x = rng.normal(size=(n, q)) @ w.T + mu + np.sqrt(sigma2) * rng.normal(size=(n, d))
    return x, PPCAParams(W=w, mu=mu, sigma2=sigma2, log_likelihood_trace=[])


def dense_covariance(params: PPCAParams) -> np.ndarray:
    return params.W @ params.W.T + params.sigma2 * np.eye(params.W.shape[0])


@pytest.fixture(scope="module")
def ppca_data():
    return sample_ppca(d=10, q=2, n=5000, sigma2=0.5, seed=0, scales=np.array([3.0, 1.5]))


def test_ppca_em_converges_to_the_closed_form(ppca_data):
    x, truth = ppca_data
    closed = fit_ppca_closed_form(x, 2)
    em = fit_ppca_em(x, 2, iterations=5000, tol=1e-13, seed=1)
    assert em.converged
    np.testing.assert_allclose(em.mu, x.mean(axis=0))
    assert em.sigma2 == pytest.approx(closed.sigma2, rel=1e-3)
    # W is identified only up to a rotation W R; W W^T is not.
    wwt = closed.W @ closed.W.T
    np.testing.assert_allclose(em.W @ em.W.T, wwt, atol=1e-3 * np.abs(wwt).max())
    assert em.log_likelihood == pytest.approx(closed.log_likelihood, abs=1e-4)
    # The closed form is the global maximum.
    assert closed.log_likelihood >= em.log_likelihood - 1e-9
    assert closed.log_likelihood >= np.mean(ppca_log_prob(truth, x))
    # Both report the mean log-likelihood that ppca_log_prob gives on the training data.
    assert em.log_likelihood == pytest.approx(np.mean(ppca_log_prob(em, x)), abs=1e-10)
    # And the fit is close to the generating model (the rotation-invariant part).
    true_cov = dense_covariance(truth)
    np.testing.assert_allclose(dense_covariance(closed), true_cov,
                               atol=0.02 * np.abs(true_cov).max())
    assert closed.sigma2 == pytest.approx(0.5, rel=0.05)


def test_ppca_em_trace_is_monotone(ppca_data):
    x, _ = ppca_data
    for seed in range(3):
        em = fit_ppca_em(x, 3, iterations=300, tol=0.0, seed=seed)
        assert np.all(np.diff(em.log_likelihood_trace) >= -1e-10)


def test_ppca_with_fewer_points_than_dimensions():
    # n < D: EM works from the data (S never formed), the closed form from the thin SVD.
    x, _ = sample_ppca(d=40, q=2, n=25, sigma2=0.1, seed=2, scales=np.array([0.6, 0.4]))
    closed = fit_ppca_closed_form(x, 2)
    em = fit_ppca_em(x, 2, iterations=5000, tol=1e-13, seed=0)
    eig = np.sort(np.linalg.eigvalsh(np.cov(x.T, bias=True)))[::-1]
    assert closed.sigma2 == pytest.approx(eig[2:].mean(), rel=1e-8)
    assert em.sigma2 == pytest.approx(closed.sigma2, rel=1e-3)
    assert em.log_likelihood == pytest.approx(closed.log_likelihood, abs=1e-4)
    assert np.all(np.diff(em.log_likelihood_trace) >= -1e-10)


def test_ppca_log_prob_matches_the_dense_normal():
    rng = np.random.default_rng(3)
    params = PPCAParams(W=rng.normal(size=(7, 3)), mu=rng.normal(size=7), sigma2=0.3,
                        log_likelihood_trace=[])
    x = rng.normal(size=(40, 7)) * 2
    expected = stats.multivariate_normal(params.mu, dense_covariance(params)).logpdf(x)
    np.testing.assert_allclose(ppca_log_prob(params, x), expected, rtol=1e-10)
    lp64 = ppca_distribution(params, tf.float64).log_prob(x).numpy()
    np.testing.assert_allclose(lp64, expected, rtol=1e-10)
    lp32 = ppca_distribution(params).log_prob(x.astype(np.float32)).numpy()
    np.testing.assert_allclose(lp32, expected, rtol=1e-4)


def test_ppca_posterior_matches_dense_gaussian_conditioning():
    rng = np.random.default_rng(4)
    params = PPCAParams(W=rng.normal(size=(6, 2)), mu=rng.normal(size=6), sigma2=0.7,
                        log_likelihood_trace=[])
    x = rng.normal(size=(20, 6))
    # Joint (z, x): Cov(z) = I, Cov(z, x) = W^T, Cov(x) = C, so
    # E[z|x] = W^T C^{-1} (x - mu) and Cov[z|x] = I - W^T C^{-1} W.
    c = dense_covariance(params)
    gain = np.linalg.solve(c, params.W).T
    mean, cov = ppca_posterior(params, x)
    np.testing.assert_allclose(mean, (x - params.mu) @ gain.T, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(cov, np.eye(2) - gain @ params.W, rtol=1e-10, atol=1e-12)


def test_ppca_distribution_samples_have_the_model_covariance():
    rng = np.random.default_rng(5)
    params = PPCAParams(W=rng.normal(size=(5, 2)), mu=rng.normal(size=5), sigma2=0.2,
                        log_likelihood_trace=[])
    samples = ppca_distribution(params, tf.float64).sample(40000, seed=3).numpy()
    np.testing.assert_allclose(samples.mean(axis=0), params.mu, atol=0.05)
    np.testing.assert_allclose(np.cov(samples.T), dense_covariance(params), atol=0.08)


@pytest.mark.parametrize("n", [400, 1200])
def test_ppca_scales_to_mnist_dimension(n):
    """D = 784 (n < D: from the data; n > D: S formed once), MNIST-like eigenvalues
    (about 10 down to 1 against sigma2 = 0.05): EM converges to the closed form (its speed is
    a benchmark's business, not a test's: no time bound here)."""
    x, _ = sample_ppca(d=784, q=5, n=n, sigma2=0.05, seed=6,
                       scales=np.array([3.0, 2.5, 2.0, 1.5, 1.0]) / 28)
    closed = fit_ppca_closed_form(x, 5)
    em = fit_ppca_em(x, 5, iterations=5000, tol=1e-11, seed=0)
    assert em.converged
    assert np.all(np.diff(em.log_likelihood_trace) >= -1e-9)
    assert em.sigma2 == pytest.approx(closed.sigma2, rel=1e-3)
    assert em.log_likelihood == pytest.approx(closed.log_likelihood, abs=1e-4)
    assert closed.log_likelihood >= em.log_likelihood - 1e-9
    lp = ppca_log_prob(em, x[:10])
    assert lp.shape == (10,) and np.all(np.isfinite(lp))
