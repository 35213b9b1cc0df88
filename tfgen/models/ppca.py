"""Probabilistic PCA fitted by EM or in closed form from the data's mean and covariance: what
``scheme = "em"`` with ``model = "ppca"`` runs after each pass over the data (its statistics
accumulated batch by batch); the fits on data themselves, with the exact densities and
posteriors the tests compare against, are :mod:`tfgen.models.linear_em`.

Tipping & Bishop, "Probabilistic principal component analysis", J. R. Statist. Soc. B
61(3):611-622, 1999::

    z ~ N(0, I_q),  x | z ~ N(W z + mu, sigma^2 I_D)   =>   x ~ N(mu, C),  C = W W^T + sigma^2 I_D

``n`` is the number of data points, ``D`` the data dimension and ``q`` the latent dimension;
log-likelihoods are in nats and the traces hold the *mean* log-likelihood per data point.
The fitting is float64 NumPy: the updates are closed forms, nothing needs a gradient.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np

LOG_2PI = math.log(2.0 * math.pi)


def chol_logdet_inv(m: np.ndarray) -> tuple[float, np.ndarray]:
    """log|M| and M^{-1} for a small symmetric positive-definite M (q x q), via Cholesky."""
    chol = np.linalg.cholesky(m)
    logdet = 2.0 * float(np.sum(np.log(np.diag(chol))))
    chol_inv = np.linalg.solve(chol, np.eye(m.shape[0]))
    inv = chol_inv.T @ chol_inv
    # Symmetrise: the products above leave asymmetry at the 1e-16 level, which would
    # otherwise accumulate over many EM iterations.
    return logdet, 0.5 * (inv + inv.T)


@dataclasses.dataclass(frozen=True)
class PPCAParams:
    """A fitted PPCA model x = W z + mu + eps, z ~ N(0, I_q), eps ~ N(0, sigma2 I_D).

    ``W`` [D, q], ``mu`` [D], ``sigma2`` scalar.  ``log_likelihood_trace[t]`` is the mean
    log-likelihood of the training data after t EM iterations (entry 0 is the
    initialisation; the closed form has the single maximised value); the last entry
    belongs to these parameters.
    """

    W: np.ndarray
    mu: np.ndarray
    sigma2: float
    log_likelihood_trace: list[float]
    converged: bool = False

    @property
    def log_likelihood(self) -> float:
        """Mean log-likelihood per data point of the training data under these parameters."""
        return self.log_likelihood_trace[-1]


def check_q(q: int, d: int) -> None:
    if not 1 <= q < d:
        raise ValueError(f"q must be in [1, D - 1 = {d - 1}], got {q}")


class Scatter:
    """Products with the sample covariance S = (1/n) sum_n (x_n - xbar)(x_n - xbar)^T.

    When n >= D, S (D x D) is formed once and S W costs O(D^2 q) per call; when n < D,
    S is never formed and S W = Xc^T (Xc W) / n costs O(n D q) from the centred data.
    Either way nothing larger than D x D (or the data) is allocated.
    """

    def __init__(self, x: np.ndarray | None):
        if x is None:
            return
        self.mean = x.mean(axis=0)
        self.xc = x - self.mean
        self.n, self.d = x.shape
        self.trace = float(np.sum(self.xc * self.xc)) / self.n
        self.s = (self.xc.T @ self.xc) / self.n if self.n >= self.d else None

    @classmethod
    def from_moments(cls, mean: np.ndarray, covariance: np.ndarray) -> "Scatter":
        """From xbar and S themselves (accumulated batch by batch, e.g. by ``scheme = "em"``)."""
        scatter = cls(None)
        scatter.mean = np.asarray(mean, np.float64)
        scatter.s = np.asarray(covariance, np.float64)
        scatter.xc, scatter.n, scatter.d = None, None, scatter.s.shape[0]
        scatter.trace = float(np.trace(scatter.s))
        return scatter

    def times(self, w: np.ndarray) -> np.ndarray:
        if self.s is not None:
            return self.s @ w
        return self.xc.T @ (self.xc @ w) / self.n


def mean_log_likelihood(trace_s: float, w: np.ndarray, sigma2: float, sw: np.ndarray, d: int,
                        m_logdet: float, m_inv: np.ndarray) -> float:
    """(1/n) log-likelihood at mu = xbar (Tipping & Bishop eq. (4)):

        -1/2 [D log 2pi + log|C| + tr(C^{-1} S)],   C = W W^T + sigma^2 I,

    with log|C| = (D - q) log sigma^2 + log|M| (matrix determinant lemma) and
    C^{-1} = (I - W M^{-1} W^T) / sigma^2 (Woodbury), so
    tr(C^{-1} S) = [tr S - tr(M^{-1} W^T S W)] / sigma^2.
    """
    q = w.shape[1]
    wtsw = w.T @ sw
    tr_cinv_s = (trace_s - float(np.sum(m_inv * wtsw))) / sigma2
    return -0.5 * (d * LOG_2PI + (d - q) * math.log(sigma2) + m_logdet + tr_cinv_s)


def fit_ppca_em_moments(mean, covariance, q: int, iterations: int = 1000, tol: float = 1e-8,
                        seed: int = 0, min_sigma2: float = 1e-6, w0=None,
                        sigma2_0: float | None = None) -> PPCAParams:
    """:func:`fit_ppca_em_scatter` from the sample mean and covariance S (EM needs nothing
    else), optionally starting from (``w0``, ``sigma2_0``) instead of the random start."""
    scatter = Scatter.from_moments(mean, covariance)
    check_q(q, scatter.d)
    return fit_ppca_em_scatter(scatter, q, iterations, tol, seed, min_sigma2, w0, sigma2_0)


def fit_ppca_em_scatter(scatter: Scatter, q: int, iterations: int, tol: float, seed: int,
                        min_sigma2: float, w0=None,
                        sigma2_0: float | None = None) -> PPCAParams:
    """Maximum-likelihood PPCA by EM (Tipping & Bishop 1999, §3.2, eqs. (27)-(28)).

    mu is the sample mean (its ML estimate, which does not depend on W or sigma^2).  With
    S the sample covariance and M = W^T W + sigma^2 I_q, the E- and M-steps combine into::

        W_new      = S W (sigma^2 I_q + M^{-1} W^T S W)^{-1}
        sigma2_new = tr(S - S W M^{-1} W_new^T) / D

    Only S W ([D, q]) is needed, and only traces of S, so an iteration costs O(D^2 q) with
    S formed once (n >= D), or O(n D q) straight from the data (n < D); nothing bigger
    than D x D is allocated.  sigma2 is clipped below at ``min_sigma2`` (data of rank <= q
    would drive it to zero), which is the constrained maximum of the unimodal M-step
    objective in sigma2, so the iterations stay monotone.

    Unless given (``w0``, ``sigma2_0``), W starts with N(0, s/(D q)) entries (so
    tr W W^T ~ tr S = s) and sigma2 at s/D, drawn from ``seed``.  Iteration stops after
    ``iterations`` steps or when the mean log-likelihood improves by less than ``tol``.  EM
    converges to a rotation W R of the closed-form W (:func:`fit_ppca_closed_form_scatter`)
    — W W^T, sigma2 and the likelihood are what it pins down.  Near the optimum the error
    along the j-th principal direction shrinks by roughly a factor 1 - 2 sigma2 / lambda_j
    per iteration (the fraction of information the latent z would add), so EM is slow when
    the noise is small next to the signal; the closed form is then the better tool, EM the
    one that generalises (missing data, mixtures of PPCA).
    """
    d = scatter.d
    if iterations < 0 or not min_sigma2 > 0:
        raise ValueError("iterations must be >= 0 and min_sigma2 positive")
    rng = np.random.default_rng(seed)
    scale = max(scatter.trace / d, min_sigma2)
    w = rng.normal(size=(d, q)) * math.sqrt(scale / q) if w0 is None else np.asarray(w0, np.float64)
    sigma2 = scale if sigma2_0 is None else max(float(sigma2_0), min_sigma2)
    eye = np.eye(q)

    sw = scatter.times(w)
    m_logdet, m_inv = chol_logdet_inv(w.T @ w + sigma2 * eye)
    ll = mean_log_likelihood(scatter.trace, w, sigma2, sw, d, m_logdet, m_inv)
    trace = [ll]
    converged = False
    for _ in range(iterations):
        # A (q x q) system: W_new^T = (sigma^2 I + M^{-1} W^T S W)^{-T} (S W)^T.
        inner = sigma2 * eye + m_inv @ (w.T @ sw)
        w_new = np.linalg.solve(inner.T, sw.T).T
        # tr(S W M^{-1} W_new^T) = sum_ij (S W M^{-1})_ij (W_new)_ij.
        sigma2 = max((scatter.trace - float(np.sum((sw @ m_inv) * w_new))) / d, min_sigma2)
        w = w_new
        sw = scatter.times(w)
        m_logdet, m_inv = chol_logdet_inv(w.T @ w + sigma2 * eye)
        ll_new = mean_log_likelihood(scatter.trace, w, sigma2, sw, d, m_logdet, m_inv)
        trace.append(ll_new)
        if ll_new - ll < tol:
            converged = True
            break
        ll = ll_new
    return PPCAParams(W=w, mu=scatter.mean, sigma2=float(sigma2),
                      log_likelihood_trace=[float(v) for v in trace], converged=converged)


def fit_ppca_closed_form_moments(mean, covariance, q: int, min_sigma2: float = 1e-6) -> PPCAParams:
    """:func:`fit_ppca_closed_form_scatter` from the sample mean and covariance S."""
    scatter = Scatter.from_moments(mean, covariance)
    check_q(q, scatter.d)
    return fit_ppca_closed_form_scatter(scatter, q, min_sigma2)


def fit_ppca_closed_form_scatter(scatter: Scatter, q: int, min_sigma2: float) -> PPCAParams:
    """Maximum-likelihood PPCA in closed form (Tipping & Bishop 1999, W_ML and sigma2_ML).

    With lambda_1 >= ... >= lambda_D the eigenvalues of the sample covariance S and U_q
    the eigenvectors of the q largest::

        mu = xbar,   sigma2 = (1/(D - q)) sum_{j > q} lambda_j,
        W = U_q (L_q - sigma2 I)^{1/2}   (the global maximum, taking R = I)

    The eigenvectors come from ``eigh(S)`` when n >= D, otherwise from the thin SVD of the
    centred data (S has at most n non-zero eigenvalues; the rest are zero).  Each column's
    sign is fixed (largest-magnitude entry positive) so the result is deterministic.
    sigma2 is clipped below at ``min_sigma2`` as in :func:`fit_ppca_em_scatter`.
    """
    d, n = scatter.d, scatter.n
    if scatter.s is not None:
        evals, evecs = np.linalg.eigh(scatter.s)
        order = np.argsort(evals)[::-1][:q]
        lam, u = evals[order], evecs[:, order]
    else:
        _, sv, vt = np.linalg.svd(scatter.xc, full_matrices=False)
        lam = np.zeros(q)
        r = min(q, sv.size)
        lam[:r] = sv[:r] ** 2 / n
        u = np.zeros((d, q))
        u[:, :r] = vt[:r].T
    lam = np.maximum(lam, 0.0)  # eigh can return -1e-17 for a zero eigenvalue
    # The discarded eigenvalues sum to tr S minus the kept ones (zeros included when n < D).
    sigma2 = max((scatter.trace - float(lam.sum())) / (d - q), min_sigma2)
    signs = np.sign(u[np.argmax(np.abs(u), axis=0), np.arange(q)])
    u = u * np.where(signs == 0, 1.0, signs)
    w = u * np.sqrt(np.maximum(lam - sigma2, 0.0))[None, :]
    m_logdet, m_inv = chol_logdet_inv(w.T @ w + sigma2 * np.eye(q))
    log_lik = mean_log_likelihood(scatter.trace, w, sigma2, scatter.times(w), d, m_logdet, m_inv)
    return PPCAParams(W=w, mu=scatter.mean, sigma2=float(sigma2),
                      log_likelihood_trace=[float(log_lik)], converged=True)


