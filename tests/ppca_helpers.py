"""Closed forms of the linear-Gaussian model (probabilistic PCA) that scheme tests check against.

z ~ N(0, I_d), y | z ~ N(W z + b, s^2 I_D): the model an ``mlp`` decoder with no hidden layer and
a Normal likelihood with a fixed sigma is.  Tipping & Bishop (1999): with s known, the maximum
likelihood b is the sample mean and W = U_d (L_d - s^2 I)^(1/2) R (top-d eigenpairs of the
sample covariance); the marginal is N(b, W W^T + s^2 I); the posterior of z given y is
N(P^-1 W^T (y - b) / s^2, P^-1) with precision P = W^T W / s^2 + I.
"""
from __future__ import annotations

import numpy as np
from scipy import stats


def ppca_sample(D: int, d: int, sigma: float, M: int, scales, seed: int = 0) -> np.ndarray:
    """M points [M, D] of a PPCA model with orthogonal W of column norms ``scales``."""
    rng = np.random.default_rng(seed)
    W = np.linalg.qr(rng.normal(size=(D, d)))[0] * np.asarray(scales, float)
    b = rng.normal(size=D)
    return rng.normal(size=(M, d)) @ W.T + b + sigma * rng.normal(size=(M, D))


def tipping_bishop_ml(Y: np.ndarray, d: int, sigma: float):
    """(W_ml [D, d], b_ml [D], the top-d eigenvalues of the sample covariance)."""
    eigenvalues, U = np.linalg.eigh(np.cov(Y.T, bias=True))
    top, U = eigenvalues[::-1][:d], U[:, ::-1][:, :d]
    return U * np.sqrt(top - sigma**2), Y.mean(axis=0), top


def mean_log_marginal(Y: np.ndarray, W: np.ndarray, b: np.ndarray, sigma: float) -> float:
    """1/M sum_m log N(y_m | b, W W^T + s^2 I), nats per point."""
    return float(stats.multivariate_normal(b, W @ W.T + sigma**2 * np.eye(len(b))).logpdf(Y).mean())


def linear_theta(scheme) -> tuple[np.ndarray, np.ndarray]:
    """(W [D, d], b [D]) of the linear decoder y = W z + b (an ``mlp`` with no hidden layer)."""
    head = scheme.model.decoder.head
    return head.kernel.numpy().T.astype(np.float64), head.bias.numpy().astype(np.float64)


def exact_posterior(W: np.ndarray, b: np.ndarray, sigma: float, Y: np.ndarray):
    """(means [M, d], precision P [d, d]) of p(z | y_m)."""
    precision = W.T @ W / sigma**2 + np.eye(W.shape[1])
    return np.linalg.solve(precision, W.T @ (Y - b).T / sigma**2).T, precision


def ula_stationary_covariance(precision: np.ndarray, h: float) -> np.ndarray:
    """The covariance the unadjusted Langevin chain x' = x + h grad log N(mu, P^-1) + sqrt(2h) w
    settles at: (P (I - h P / 2))^-1 (the fixed point of S = A S A^T + 2h I, A = I - h P)."""
    return np.linalg.inv(precision @ (np.eye(len(precision)) - 0.5 * h * precision))
