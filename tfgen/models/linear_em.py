"""Reference fits of the linear latent-variable models on data, with their exact densities,
posteriors and TFP distributions: what the tests check ``scheme = "em"`` and the fits it runs
(:mod:`tfgen.models.ppca`, :mod:`tfgen.models.gmm`) against.

Probabilistic PCA (Tipping & Bishop, "Probabilistic principal component analysis",
J. R. Statist. Soc. B 61(3):611-622, 1999)::

    z ~ N(0, I_q),  x | z ~ N(W z + mu, sigma^2 I_D)   =>   x ~ N(mu, C),  C = W W^T + sigma^2 I_D

fitted by EM or in closed form straight from the data [n, D] (when n < D the D x D sample
covariance is never formed).  The Gaussian mixture's fit, densities and distribution are
:mod:`tfgen.models.gmm`'s (the one EM the sampler and the scheme use too).
"""
from __future__ import annotations

import math

import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

from tfgen.models.gmm import as_data
from tfgen.models.ppca import (LOG_2PI, PPCAParams, Scatter, check_q, chol_logdet_inv,
                               fit_ppca_closed_form_scatter, fit_ppca_em_scatter)

tfd = tfp.distributions


def fit_ppca_em(x, q: int, iterations: int = 1000, tol: float = 1e-8, seed: int = 0,
                min_sigma2: float = 1e-6) -> PPCAParams:
    """Maximum-likelihood PPCA by EM on data [n, D]
    (:func:`tfgen.models.ppca.fit_ppca_em_scatter`, whose docstring has the algorithm)."""
    x = as_data(x)
    check_q(q, x.shape[1])
    return fit_ppca_em_scatter(Scatter(x), q, iterations, tol, seed, min_sigma2)


def fit_ppca_closed_form(x, q: int, min_sigma2: float = 1e-6) -> PPCAParams:
    """Maximum-likelihood PPCA in closed form from data [n, D]
    (:func:`tfgen.models.ppca.fit_ppca_closed_form_scatter`)."""
    x = as_data(x)
    check_q(q, x.shape[1])
    return fit_ppca_closed_form_scatter(Scatter(x), q, min_sigma2)


def _ppca_parts(params: PPCAParams) -> tuple[np.ndarray, np.ndarray, float, float, np.ndarray]:
    w = np.asarray(params.W, np.float64)
    mu = np.asarray(params.mu, np.float64)
    sigma2 = float(params.sigma2)
    m_logdet, m_inv = chol_logdet_inv(w.T @ w + sigma2 * np.eye(w.shape[1]))
    return w, mu, sigma2, m_logdet, m_inv


def ppca_log_prob(params: PPCAParams, x) -> np.ndarray:
    """Exact log N(x_n | mu, W W^T + sigma2 I_D), shape [n], in O(n D q).

    Woodbury: C^{-1} = (I - W M^{-1} W^T) / sigma2, so with e = x - mu and a = W^T e,
    e^T C^{-1} e = (||e||^2 - a^T M^{-1} a) / sigma2; matrix determinant lemma:
    log|C| = (D - q) log sigma2 + log|M|, M = W^T W + sigma2 I_q.  The D x D covariance is
    never formed.
    """
    x = as_data(x)
    w, mu, sigma2, m_logdet, m_inv = _ppca_parts(params)
    d, q = w.shape
    if x.shape[1] != d:
        raise ValueError(f"x has dimension {x.shape[1]}, the model {d}")
    e = x - mu
    a = e @ w
    quad = (np.sum(e * e, axis=1) - np.sum((a @ m_inv) * a, axis=1)) / sigma2
    return -0.5 * (d * LOG_2PI + (d - q) * math.log(sigma2) + m_logdet + quad)


def ppca_posterior(params: PPCAParams, x) -> tuple[np.ndarray, np.ndarray]:
    """p(z | x_n) = N(M^{-1} W^T (x_n - mu), sigma2 M^{-1})  (Tipping & Bishop eq. (6)).

    Returns the posterior means [n, q] and the covariance [q, q], which is the same for
    every x_n.
    """
    x = as_data(x)
    w, mu, sigma2, _, m_inv = _ppca_parts(params)
    if x.shape[1] != w.shape[0]:
        raise ValueError(f"x has dimension {x.shape[1]}, the model {w.shape[0]}")
    return ((x - mu) @ w) @ m_inv, sigma2 * m_inv


def ppca_distribution(params: PPCAParams,
                      dtype=tf.float32) -> tfd.MultivariateNormalDiagPlusLowRankCovariance:
    """The fitted marginal N(mu, W W^T + sigma2 I_D) as a TFP distribution (event shape [D]).

    ``tfd.MultivariateNormalDiagPlusLowRankCovariance`` keeps the covariance as a low-rank
    update, so sampling and ``log_prob`` never form the D x D matrix either.
    """
    w = np.asarray(params.W, np.float64)
    d = w.shape[0]
    return tfd.MultivariateNormalDiagPlusLowRankCovariance(
        loc=tf.constant(np.asarray(params.mu, np.float64), dtype),
        cov_diag_factor=tf.constant(np.full(d, float(params.sigma2)), dtype),
        cov_perturb_factor=tf.constant(w, dtype),
        name="PPCA")
