"""Gaussian mixtures fitted by EM in float64: the one implementation, behind the ``gmm``
latent sampler (:mod:`tfgen.inference.samplers`), ``scheme = "em"``'s mixture on pixels
(its M-step, :func:`m_step_from_sums`; its E-step runs batch by batch in TensorFlow) and the
tests' reference fits.

    p(x) = sum_k pi_k N(x | mu_k, Sigma_k),   Sigma_k = sigma_k^2 I   ("isotropic", variances [k])
                                              Sigma_k = diag(v_k)     ("diagonal", [k, D])
                                              Sigma_k full            ("full", [k, D, D])

EM (Dempster, Laird & Rubin 1977; Bishop 2006, *Pattern Recognition and Machine Learning*,
section 9.2.2).  E-step: responsibilities r_nk = pi_k N(x_n | mu_k, Sigma_k) / sum_j pi_j
N(x_n | mu_j, Sigma_j) (PRML eq. 9.23), in log space: in high dimension the densities
themselves underflow to zero for every component.  M-step, with N_k = sum_n r_nk (PRML eqs.
9.24-9.27)::

    pi_k = N_k / n,    mu_k = (1/N_k) sum_n r_nk x_n,
    isotropic: sigma_k^2 = sum_n r_nk ||x_n - mu_k||^2 / (D N_k),
    diagonal:  v_kd      = sum_n r_nk (x_nd - mu_kd)^2 / N_k,
    full:      Sigma_k   = sum_n r_nk (x_n - mu_k)(x_n - mu_k)^T / N_k.

``variance_floor`` keeps a component that collapses onto one point (the likelihood's
singularities, PRML section 9.2.1) finite: every isotropic or diagonal variance is clipped
below at it (the expected complete-data log-likelihood is unimodal in each variance, so the
clipped value is the constrained maximum and EM stays monotone), and it is added to a full
covariance's diagonal (a floor under its eigenvalues that keeps its Cholesky factor defined,
where a clipped eigenvalue would need an eigendecomposition per step).  A component that no
point claims (N_k ~ 0) has no M-step solution (0/0); it keeps its parameters, still a
(generalised) EM step: with weight ~0 it barely contributes.

Each EM run starts from k-means++ seeds (Arthur & Vassilvitskii 2007) and a few of Lloyd's
steps (:mod:`tfgen.models.kmeans`): the M-step of those hard assignments gives the first
parameters.  Runs stop after ``iterations`` rounds or when the mean log-likelihood per point
changes by less than ``tol``; of ``restarts`` runs (all drawing from one generator seeded by
``seed``, so ``restarts = 1`` is the first run of any larger number) the one with the highest
final log-likelihood is kept.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Literal

import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

from tfgen.models.kmeans import kmeans_plus_plus, lloyd

tfd = tfp.distributions

LOG_2PI = math.log(2.0 * math.pi)
Covariance = Literal["isotropic", "diagonal", "full"]
COVARIANCES = ("isotropic", "diagonal", "full")
#: Lloyd's steps after the k-means++ seeding of each EM run
LLOYD_STEPS = 10
#: responsibility mass below which a component counts as unclaimed (keeps its parameters)
ALIVE = 1e-8


def as_data(x, name: str = "x") -> np.ndarray:
    """``x`` as float64 [n, D], refused if empty or not finite."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"{name} must have shape [n, D], got {x.shape}")
    if x.shape[0] < 1 or x.shape[1] < 1:
        raise ValueError(f"{name} is empty: shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{name} contains NaN or inf")
    return x


@dataclasses.dataclass(frozen=True)
class GMMParams:
    """A fitted Gaussian mixture.

    ``weights`` [k] (pi_k, sum to one), ``means`` [k, D], ``variances`` [k] (isotropic),
    [k, D] (diagonal) or [k, D, D] (full covariance matrices).  ``log_likelihood_trace[t]``
    is the mean log-likelihood (1/n) sum_n log p(x_n) after t M-steps (entry 0: the first
    parameters, from the hard k-means assignments); its last entry belongs to these
    parameters.
    """

    weights: np.ndarray
    means: np.ndarray
    variances: np.ndarray
    log_likelihood_trace: list[float]
    converged: bool = False

    @property
    def covariance(self) -> Covariance:
        return COVARIANCES[np.ndim(self.variances) - 1]

    @property
    def covariances(self) -> np.ndarray:
        """Every component's covariance matrix [k, D, D]."""
        variances = np.asarray(self.variances, np.float64)
        if variances.ndim == 3:
            return variances
        d = np.shape(self.means)[1]
        diagonal = np.broadcast_to(variances[:, None] if variances.ndim == 1 else variances,
                                   (len(variances), d))
        return diagonal[:, :, None] * np.eye(d)

    @property
    def log_likelihood(self) -> float:
        """Mean log-likelihood per data point of the training data under these parameters."""
        return self.log_likelihood_trace[-1]


def component_log_densities(x: np.ndarray, x2: np.ndarray, means: np.ndarray,
                            variances: np.ndarray) -> np.ndarray:
    """log N(x_n | mu_k, Sigma_k), shape [n, k].

    Isotropic: -1/2 [D log(2 pi s_k) + ||x_n - mu_k||^2 / s_k].
    Diagonal:  -1/2 [D log 2pi + sum_d log v_kd + sum_d (x_nd - mu_kd)^2 / v_kd].
    There the squared distances are expanded (x^2 - 2 x mu + mu^2) so that they are matrix
    products: broadcasting x - mu would need an [n, k, D] array (4 GB for MNIST with k = 10);
    callers pass data centred near the means to keep the cancellation in that expansion
    small.  ``x2`` is ``x * x``, passed in so a fit computes it once.
    Full: -1/2 [D log 2pi + |y|^2] - sum log diag(L_k), L_k y = x_n - mu_k, L_k L_k^T = Sigma_k.
    """
    d = x.shape[1]
    if variances.ndim == 3:
        out = np.empty((len(x), len(means)))
        for k, (mean, cov) in enumerate(zip(means, variances)):
            chol = np.linalg.cholesky(cov)
            y = np.linalg.solve(chol, (x - mean).T)  # y.y = the Mahalanobis term
            out[:, k] = -0.5 * (d * LOG_2PI + (y * y).sum(axis=0)) - np.log(np.diag(chol)).sum()
        return out
    if variances.ndim == 1:
        sq = (np.sum(x2, axis=1, keepdims=True) - 2.0 * x @ means.T
              + np.sum(means * means, axis=1)[None, :])
        sq = np.maximum(sq, 0.0)  # the expansion can dip below zero by rounding
        return -0.5 * (d * (LOG_2PI + np.log(variances))[None, :] + sq / variances[None, :])
    precision = 1.0 / variances
    maha = (x2 @ precision.T - 2.0 * x @ (means * precision).T
            + np.sum(means * means * precision, axis=1)[None, :])
    maha = np.maximum(maha, 0.0)
    log_norm = d * LOG_2PI + np.sum(np.log(variances), axis=1)
    return -0.5 * (log_norm[None, :] + maha)


def e_step(x, x2, weights, means, variances) -> tuple[np.ndarray, np.ndarray]:
    """(responsibilities r_nk [n, k], log p(x_n) [n])."""
    with np.errstate(divide="ignore"):  # an unclaimed component of weight 0: log 0 = -inf
        log_joint = component_log_densities(x, x2, means, variances) + np.log(weights)
    log_px = np.logaddexp.reduce(log_joint, axis=1)
    return np.exp(log_joint - log_px[:, None]), log_px


def m_step_from_sums(n: float, counts, sum_x, sum_x2, old_means, old_variances,
                     variance_floor: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(weights, means, variances) of an isotropic or diagonal mixture (the shape of
    ``old_variances`` says which) from the sufficient statistics N_k = sum_n r_nk [k],
    sum_n r_nk x_n and sum_n r_nk x_n^2 [k, D] over n points: what the batch fit computes
    and what ``scheme = "em"`` accumulates batch by batch.  The variances are
    E_r[x^2] - mu_k^2: two matrix products instead of an [n, k, D] array."""
    alive = counts > ALIVE
    safe = np.where(alive, counts, 1.0)[:, None]
    means = np.where(alive[:, None], sum_x / safe, old_means)
    second = sum_x2 / safe - means ** 2
    if np.ndim(old_variances) == 1:
        variances = np.where(alive, second.mean(-1), old_variances)
    else:
        variances = np.where(alive[:, None], second, old_variances)
    return counts / n, means, np.maximum(variances, variance_floor)


def m_step(x, x2, resp, old_means, old_variances, variance_floor: float):
    """(weights, means, variances) maximising the expected complete-data log-likelihood
    under the responsibilities ``resp`` [n, k] (module docstring)."""
    counts = resp.sum(axis=0)
    if np.ndim(old_variances) < 3:
        return m_step_from_sums(len(x), counts, resp.T @ x, resp.T @ x2, old_means,
                                old_variances, variance_floor)
    alive = counts > ALIVE
    safe = np.where(alive, counts, 1.0)
    means = np.where(alive[:, None], resp.T @ x / safe[:, None], old_means)
    d = x.shape[1]
    covariances = np.array(old_variances, np.float64)
    for k in np.flatnonzero(alive):
        centred = x - means[k]
        covariances[k] = ((resp[:, k, None] * centred).T @ centred / safe[k]
                          + variance_floor * np.eye(d))
    return counts / len(x), means, covariances


def _fit_once(x, x2, k, covariance, iterations, tol, rng, variance_floor):
    """One EM run from k-means++ seeds and Lloyd's steps (module docstring)."""
    assign, centres = lloyd(x, kmeans_plus_plus(x, k, rng), LLOYD_STEPS, until_still=False)
    resp = np.zeros((len(x), k))
    resp[np.arange(len(x)), assign] = 1.0
    # what an empty cluster keeps: its centre and the data's own spread
    if covariance == "full":
        spread = np.tile(np.cov(x, rowvar=False, bias=True).reshape(x.shape[1], -1)
                         + variance_floor * np.eye(x.shape[1]), (k, 1, 1))
    else:
        data_var = np.maximum(x.var(axis=0), variance_floor)
        spread = (np.full(k, float(data_var.mean())) if covariance == "isotropic"
                  else np.tile(data_var, (k, 1)))
    weights, means, variances = m_step(x, x2, resp, centres, spread, variance_floor)
    trace, converged = [], False
    for _ in range(iterations):
        resp, log_px = e_step(x, x2, weights, means, variances)
        trace.append(float(log_px.mean()))
        weights, means, variances = m_step(x, x2, resp, means, variances, variance_floor)
        if len(trace) > 1 and abs(trace[-1] - trace[-2]) < tol:
            converged = True
            break
    trace.append(float(e_step(x, x2, weights, means, variances)[1].mean()))
    return weights, means, variances, trace, converged


def fit_gmm(x, k: int, covariance: Covariance = "diagonal", iterations: int = 200,
            tol: float = 1e-6, seed: int = 0, restarts: int = 1, variance_floor: float = 1e-6,
            max_points: int = 0) -> GMMParams:
    """Maximum-likelihood Gaussian mixture by EM, the best of ``restarts`` runs (module
    docstring); ``max_points`` > 0 fits on that many points drawn at random (from the same
    generator, before the runs).

    Args:
        x: data, [n, D].
        k: number of components (1 <= k <= n, after ``max_points``).
        covariance: "isotropic", "diagonal" or "full".
    Returns:
        :class:`GMMParams`; its trace is non-decreasing up to rounding (isotropic and
        diagonal; a full covariance's added floor makes its M-step an approximate one).
    """
    x = as_data(x)
    if covariance not in COVARIANCES:
        raise ValueError(f"covariance must be one of {COVARIANCES}, got {covariance!r}")
    if restarts < 1 or iterations < 0:
        raise ValueError("restarts must be >= 1 and iterations >= 0")
    if variance_floor < 0 or (covariance != "full" and variance_floor == 0):
        raise ValueError("variance_floor must be positive (non-negative for 'full')")
    rng = np.random.default_rng(seed)
    if max_points and len(x) > max_points:
        x = x[rng.choice(len(x), max_points, replace=False)]
    if not 1 <= k <= len(x):
        raise ValueError(f"k must be in [1, n = {len(x)}], got {k}")
    # isotropic and diagonal: fit in coordinates centred on the data mean, as the expanded
    # squared distances need; a full covariance's densities subtract each mean first
    centre = np.zeros(x.shape[1]) if covariance == "full" else x.mean(axis=0)
    xc = x - centre
    x2 = xc * xc
    best = None
    for _ in range(restarts):
        fit = _fit_once(xc, x2, k, covariance, iterations, tol, rng, variance_floor)
        if best is None or fit[3][-1] > best[3][-1]:
            best = fit
    weights, means, variances, trace, converged = best
    return GMMParams(weights=weights, means=means + centre, variances=variances,
                     log_likelihood_trace=trace, converged=converged)


def _centred(params: GMMParams, x) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x, x * x, means, variances) centred on the mixture's mean, as in :func:`fit_gmm`."""
    x = as_data(x)
    means = np.asarray(params.means, np.float64)
    if x.shape[1] != means.shape[1]:
        raise ValueError(f"x has dimension {x.shape[1]}, the mixture {means.shape[1]}")
    variances = np.asarray(params.variances, np.float64)
    centre = (np.zeros(means.shape[1]) if variances.ndim == 3
              else np.asarray(params.weights, np.float64) @ means)
    xc = x - centre
    return xc, xc * xc, means - centre, variances


def gmm_log_prob(params: GMMParams, x) -> np.ndarray:
    """log p(x_n) = logsumexp_k [log pi_k + log N(x_n | mu_k, Sigma_k)], shape [n] (exact)."""
    xc, x2, means, variances = _centred(params, x)
    return e_step(xc, x2, np.asarray(params.weights, np.float64), means, variances)[1]


def gmm_responsibilities(params: GMMParams, x) -> np.ndarray:
    """Posterior component probabilities p(k | x_n) = r_nk, shape [n, k] (PRML eq. 9.23)."""
    xc, x2, means, variances = _centred(params, x)
    return e_step(xc, x2, np.asarray(params.weights, np.float64), means, variances)[0]


def sample_gmm(params: GMMParams, num: int, seed: int) -> np.ndarray:
    """``num`` draws [num, D] (float64): a component k ~ pi, then mu_k + L_k eps."""
    rng = np.random.default_rng([seed, 7])
    weights = np.asarray(params.weights)
    components = rng.choice(len(weights), size=num, p=weights / weights.sum())
    eps = rng.standard_normal((num, params.means.shape[1]))
    chols = np.linalg.cholesky(params.covariances)
    return params.means[components] + np.einsum("nij,nj->ni", chols[components], eps)


def gmm_distribution(params: GMMParams, dtype=tf.float32) -> tfd.MixtureSameFamily:
    """The mixture as ``tfd.MixtureSameFamily`` over multivariate normal components (event
    shape [D]); its ``log_prob`` equals :func:`gmm_log_prob`."""
    with np.errstate(divide="ignore"):
        logits = np.log(np.asarray(params.weights, np.float64))
    means = tf.constant(np.asarray(params.means, np.float64), dtype)
    variances = np.asarray(params.variances, np.float64)
    if variances.ndim == 3:
        components = tfd.MultivariateNormalTriL(
            loc=means, scale_tril=tf.constant(np.linalg.cholesky(variances), dtype))
    else:
        if variances.ndim == 1:
            variances = np.repeat(variances[:, None], means.shape[1], axis=1)
        components = tfd.MultivariateNormalDiag(loc=means,
                                                scale_diag=tf.constant(np.sqrt(variances), dtype))
    return tfd.MixtureSameFamily(mixture_distribution=tfd.Categorical(
        logits=tf.constant(logits, dtype)), components_distribution=components,
        name="GaussianMixture")
