"""Linear latent-variable models fitted by EM: a Gaussian mixture and probabilistic PCA.

Both are the lecture's "linear" models, whose E-step is exact (the posterior over the
latent variable is available in closed form), so EM (Dempster, Laird & Rubin 1977)
increases the marginal log-likelihood at every iteration.  The fitting is float64 NumPy
(the updates are closed forms, nothing needs a gradient); the fitted models are also
offered as TFP distributions for sampling and ``log_prob`` next to the deep models.

Gaussian mixture (Bishop, *Pattern Recognition and Machine Learning*, 2006, §9.2)::

    p(x) = sum_k pi_k N(x | mu_k, Sigma_k),   Sigma_k = sigma_k^2 I  ("isotropic")
                                              Sigma_k = diag(v_k)    ("diagonal")

Probabilistic PCA (Tipping & Bishop, "Probabilistic principal component analysis",
J. R. Statist. Soc. B 61(3):611-622, 1999)::

    z ~ N(0, I_q),  x | z ~ N(W z + mu, sigma^2 I_D)   =>   x ~ N(mu, C),  C = W W^T + sigma^2 I_D

Throughout, ``n`` is the number of data points, ``D`` the data dimension, ``k`` the
number of mixture components and ``q`` the latent dimension; log-likelihoods are in nats
and the traces hold the *mean* log-likelihood per data point.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Literal

import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

tfd = tfp.distributions

_LOG_2PI = math.log(2.0 * math.pi)

Covariance = Literal["isotropic", "diagonal"]


# ----------------------------------------------------------------------------- helpers


def _as_data(x, name: str = "x") -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"{name} must have shape [n, D], got {x.shape}")
    if x.shape[0] < 1 or x.shape[1] < 1:
        raise ValueError(f"{name} is empty: shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{name} contains NaN or inf")
    return x


def _logsumexp(a: np.ndarray, axis: int) -> np.ndarray:
    """log sum exp along ``axis`` (kept), stable for rows that are all -inf."""
    m = np.max(a, axis=axis, keepdims=True)
    # A row of -inf (every component has zero weight there) would give -inf - -inf = nan.
    m = np.where(np.isfinite(m), m, 0.0)
    with np.errstate(divide="ignore"):
        return m + np.log(np.sum(np.exp(a - m), axis=axis, keepdims=True))


def _chol_logdet_inv(m: np.ndarray) -> tuple[float, np.ndarray]:
    """log|M| and M^{-1} for a small symmetric positive-definite M (q x q), via Cholesky."""
    chol = np.linalg.cholesky(m)
    logdet = 2.0 * float(np.sum(np.log(np.diag(chol))))
    chol_inv = np.linalg.solve(chol, np.eye(m.shape[0]))
    inv = chol_inv.T @ chol_inv
    # Symmetrise: the products above leave asymmetry at the 1e-16 level, which would
    # otherwise accumulate over many EM iterations.
    return logdet, 0.5 * (inv + inv.T)


# ------------------------------------------------------------------------ Gaussian mixture


@dataclasses.dataclass(frozen=True)
class GMMParams:
    """A fitted Gaussian mixture.

    ``weights`` [k] (pi_k, sum to one), ``means`` [k, D], ``variances`` [k] (isotropic,
    Sigma_k = variances[k] I) or [k, D] (diagonal, Sigma_k = diag(variances[k])).
    ``log_likelihood_trace[t]`` is the mean log-likelihood (1/n) sum_n log p(x_n) after
    t M-steps (entry 0 is the initialisation); its last entry belongs to these parameters.
    """

    weights: np.ndarray
    means: np.ndarray
    variances: np.ndarray
    log_likelihood_trace: list[float]
    converged: bool = False

    @property
    def covariance(self) -> Covariance:
        return "isotropic" if np.ndim(self.variances) == 1 else "diagonal"

    @property
    def log_likelihood(self) -> float:
        """Mean log-likelihood per data point of the training data under these parameters."""
        return self.log_likelihood_trace[-1]


def _component_log_densities(x: np.ndarray, x2: np.ndarray, means: np.ndarray,
                             variances: np.ndarray) -> np.ndarray:
    """log N(x_n | mu_k, Sigma_k), shape [n, k], for isotropic or diagonal Sigma_k.

    Isotropic: -1/2 [D log(2 pi s_k) + ||x_n - mu_k||^2 / s_k].
    Diagonal:  -1/2 [D log 2pi + sum_d log v_kd + sum_d (x_nd - mu_kd)^2 / v_kd].

    The squared distances are expanded (x^2 - 2 x mu + mu^2) so that they are matrix
    products: broadcasting x - mu would need an [n, k, D] array (4 GB for MNIST with k = 10).
    Callers pass data centred near the means to keep the cancellation in that expansion
    small.  ``x2`` is ``x * x``, passed in so a fit computes it once.
    """
    d = x.shape[1]
    if variances.ndim == 1:
        sq = (np.sum(x2, axis=1, keepdims=True) - 2.0 * x @ means.T
              + np.sum(means * means, axis=1)[None, :])
        sq = np.maximum(sq, 0.0)  # the expansion can dip below zero by rounding
        return -0.5 * (d * (_LOG_2PI + np.log(variances))[None, :] + sq / variances[None, :])
    precision = 1.0 / variances
    maha = (x2 @ precision.T - 2.0 * x @ (means * precision).T
            + np.sum(means * means * precision, axis=1)[None, :])
    maha = np.maximum(maha, 0.0)
    log_norm = d * _LOG_2PI + np.sum(np.log(variances), axis=1)
    return -0.5 * (log_norm[None, :] + maha)


def _e_step(x, x2, weights, means, variances) -> tuple[np.ndarray, float, np.ndarray]:
    """Log responsibilities log r_nk, the mean log-likelihood and per-point log p(x_n).

    r_nk = pi_k N(x_n | mu_k, Sigma_k) / sum_j pi_j N(x_n | mu_j, Sigma_j)  (PRML eq. 9.23),
    computed in log space with logsumexp: in high dimension the densities themselves
    underflow to zero for every component.
    """
    with np.errstate(divide="ignore"):  # a component emptied by EM has weight 0: log 0 = -inf
        log_weights = np.log(weights)
    joint = log_weights[None, :] + _component_log_densities(x, x2, means, variances)
    log_px = _logsumexp(joint, axis=1)
    return joint - log_px, float(np.mean(log_px)), log_px[:, 0]


def _m_step(x, x2, log_resp, old_means, old_variances, variance_floor):
    """Closed-form maximisers of the expected complete-data log-likelihood (PRML §9.2.2).

    N_k = sum_n r_nk,  pi_k = N_k / n,  mu_k = sum_n r_nk x_n / N_k,
    diagonal:  v_kd = sum_n r_nk (x_nd - mu_kd)^2 / N_k,
    isotropic: sigma_k^2 = sum_n r_nk ||x_n - mu_k||^2 / (D N_k),
    each variance clipped below at ``variance_floor``.  The expected complete-data
    log-likelihood is unimodal in each variance, so clipping gives the constrained maximum
    and EM stays monotone.
    """
    n, d = x.shape
    resp = np.exp(log_resp)
    nk = resp.sum(axis=0)
    weights = nk / n
    # A component that no point claims has no M-step solution (0/0); leaving it where it
    # was is still a (generalised) EM step: with weight ~0 it barely contributes.
    alive = nk > 1e-10
    safe_nk = np.where(alive, nk, 1.0)
    means = (resp.T @ x) / safe_nk[:, None]
    # sum_n r_nk (x_n - mu_k)^2 / N_k = E_r[x^2] - mu_k^2: two matrix products instead of
    # an [n, k, D] array; the data are centred, which keeps the cancellation small.
    second_moment = (resp.T @ x2) / safe_nk[:, None]
    if old_variances.ndim == 1:
        variances = (np.sum(second_moment, axis=1) - np.sum(means * means, axis=1)) / d
    else:
        variances = second_moment - means * means
    variances = np.maximum(variances, variance_floor)
    means = np.where(alive[:, None], means, old_means)
    alive_v = alive if variances.ndim == 1 else alive[:, None]
    variances = np.where(alive_v, variances, old_variances)
    return weights, means, variances


def _kmeans_plus_plus(x: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k-means++ seeding (Arthur & Vassilvitskii 2007): the first centre uniformly, each
    next one with probability proportional to the squared distance to the nearest centre."""
    n = x.shape[0]
    centres = np.empty((k, x.shape[1]))
    centres[0] = x[rng.integers(n)]
    d2 = np.sum((x - centres[0]) ** 2, axis=1)
    for j in range(1, k):
        total = d2.sum()
        # All points coincide with a centre already (duplicated data): any choice is as good.
        idx = rng.integers(n) if total <= 0.0 else rng.choice(n, p=d2 / total)
        centres[j] = x[idx]
        d2 = np.minimum(d2, np.sum((x - centres[j]) ** 2, axis=1))
    return centres


def kmeans_plus_plus(x: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k initial means [k, D] chosen from the rows of ``x`` by k-means++ (Arthur &
    Vassilvitskii 2007): the start of :func:`fit_gmm` and of ``scheme = "em"``'s mixture."""
    return _kmeans_plus_plus(np.asarray(x, np.float64), k, rng)


def _fit_gmm_once(x, x2, k, covariance, iterations, tol, rng, variance_floor):
    means = _kmeans_plus_plus(x, k, rng)
    weights = np.full(k, 1.0 / k)
    # Start every component with the data's own spread: broad enough that each point has
    # non-negligible responsibility under several components, so the first E-step is soft.
    data_var = np.maximum(x.var(axis=0), variance_floor)
    if covariance == "isotropic":
        variances = np.full(k, max(float(data_var.mean()), variance_floor))
    else:
        variances = np.tile(data_var, (k, 1))
    log_resp, ll, _ = _e_step(x, x2, weights, means, variances)
    trace = [ll]
    converged = False
    for _ in range(iterations):
        weights, means, variances = _m_step(x, x2, log_resp, means, variances, variance_floor)
        log_resp, ll_new, _ = _e_step(x, x2, weights, means, variances)
        trace.append(ll_new)
        if ll_new - ll < tol:
            converged = True
            break
        ll = ll_new
    return weights, means, variances, trace, converged


def fit_gmm(x, k: int, covariance: Covariance = "diagonal", iterations: int = 200,
            tol: float = 1e-6, seed: int = 0, restarts: int = 1,
            variance_floor: float = 1e-6) -> GMMParams:
    """Maximum-likelihood Gaussian mixture by EM (Dempster et al. 1977; Bishop PRML §9.2.2).

    E-step: responsibilities r_nk = pi_k N(x_n|mu_k,Sigma_k) / sum_j pi_j N(x_n|mu_j,Sigma_j),
    in log space (logsumexp).  M-step, with N_k = sum_n r_nk::

        pi_k = N_k / n,    mu_k = (1/N_k) sum_n r_nk x_n,
        isotropic: sigma_k^2 = sum_n r_nk ||x_n - mu_k||^2 / (D N_k),
        diagonal:  v_kd      = sum_n r_nk (x_nd - mu_kd)^2 / N_k,

    every variance clipped below at ``variance_floor`` so that a component collapsing onto
    one point (the likelihood's singularities, PRML §9.2.1) stays finite.

    Means start at k-means++ seeds drawn from ``seed``; weights uniform, variances the
    data's.  Iteration stops after ``iterations`` M-steps or when the mean log-likelihood
    improves by less than ``tol``.  With ``restarts`` > 1, EM is run from that many seeds
    (restart r uses ``np.random.default_rng([seed, r])``, so restart 0 is the single-run
    fit) and the fit with the highest final log-likelihood is returned.

    Args:
        x: data, [n, D].
        k: number of components (1 <= k <= n).
        covariance: "isotropic" (Sigma_k = sigma_k^2 I) or "diagonal".
    Returns:
        :class:`GMMParams`; its trace is non-decreasing up to rounding.
    """
    x = _as_data(x)
    n, _ = x.shape
    if covariance not in ("isotropic", "diagonal"):
        raise ValueError(f"covariance must be 'isotropic' or 'diagonal', got {covariance!r}")
    if not 1 <= k <= n:
        raise ValueError(f"k must be in [1, n = {n}], got {k}")
    if restarts < 1 or iterations < 0:
        raise ValueError("restarts must be >= 1 and iterations >= 0")
    if not variance_floor > 0:
        raise ValueError("variance_floor must be positive")
    # Fit in coordinates centred on the data mean: the squared distances and second
    # moments are computed by expansion, whose cancellation grows with ||x||.
    centre = x.mean(axis=0)
    xc = x - centre
    x2 = xc * xc
    best = None
    for r in range(restarts):
        fit = _fit_gmm_once(xc, x2, k, covariance, iterations, tol,
                            np.random.default_rng([seed, r]), variance_floor)
        if best is None or fit[3][-1] > best[3][-1]:
            best = fit
    weights, means, variances, trace, converged = best
    return GMMParams(weights=weights, means=means + centre, variances=variances,
                     log_likelihood_trace=[float(v) for v in trace], converged=converged)


def _gmm_centred(params: GMMParams, x) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    x = _as_data(x)
    means = np.asarray(params.means, np.float64)
    if x.shape[1] != means.shape[1]:
        raise ValueError(f"x has dimension {x.shape[1]}, the mixture {means.shape[1]}")
    # Centre on the mixture's mean for the same reason as in fit_gmm.
    centre = np.asarray(params.weights, np.float64) @ means
    xc = x - centre
    return xc, xc * xc, means - centre


def gmm_log_prob(params: GMMParams, x) -> np.ndarray:
    """log p(x_n) = logsumexp_k [log pi_k + log N(x_n | mu_k, Sigma_k)], shape [n] (exact)."""
    xc, x2, means = _gmm_centred(params, x)
    _, _, log_px = _e_step(xc, x2, np.asarray(params.weights, np.float64), means,
                           np.asarray(params.variances, np.float64))
    return log_px


def gmm_responsibilities(params: GMMParams, x) -> np.ndarray:
    """Posterior component probabilities p(k | x_n) = r_nk, shape [n, k] (PRML eq. 9.23)."""
    xc, x2, means = _gmm_centred(params, x)
    log_resp, _, _ = _e_step(xc, x2, np.asarray(params.weights, np.float64), means,
                             np.asarray(params.variances, np.float64))
    return np.exp(log_resp)


def gmm_distribution(params: GMMParams, dtype=tf.float32) -> tfd.MixtureSameFamily:
    """The fitted mixture as ``tfd.MixtureSameFamily`` over ``tfd.MultivariateNormalDiag``
    components (event shape [D]); its ``log_prob`` equals :func:`gmm_log_prob`."""
    weights = np.asarray(params.weights, np.float64)
    means = np.asarray(params.means, np.float64)
    variances = np.asarray(params.variances, np.float64)
    if variances.ndim == 1:
        variances = np.repeat(variances[:, None], means.shape[1], axis=1)
    with np.errstate(divide="ignore"):
        logits = np.log(weights)
    return tfd.MixtureSameFamily(
        mixture_distribution=tfd.Categorical(logits=tf.constant(logits, dtype)),
        components_distribution=tfd.MultivariateNormalDiag(
            loc=tf.constant(means, dtype), scale_diag=tf.constant(np.sqrt(variances), dtype)),
        name="GaussianMixture")


# ---------------------------------------------------------------------- probabilistic PCA


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


def _check_q(q: int, d: int) -> None:
    if not 1 <= q < d:
        raise ValueError(f"q must be in [1, D - 1 = {d - 1}], got {q}")


class _Scatter:
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
    def from_moments(cls, mean: np.ndarray, covariance: np.ndarray) -> "_Scatter":
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


def _ppca_mean_log_lik(trace_s: float, w: np.ndarray, sigma2: float, sw: np.ndarray, d: int,
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
    return -0.5 * (d * _LOG_2PI + (d - q) * math.log(sigma2) + m_logdet + tr_cinv_s)


def fit_ppca_em(x, q: int, iterations: int = 1000, tol: float = 1e-8, seed: int = 0,
                min_sigma2: float = 1e-6) -> PPCAParams:
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

    W starts with N(0, s/(D q)) entries (so tr W W^T ~ tr S = s) and sigma2 at s/D, drawn
    from ``seed``.  Iteration stops after ``iterations`` steps or when the mean
    log-likelihood improves by less than ``tol``.  EM converges to a rotation W R of the
    closed-form W (:func:`fit_ppca_closed_form`) — W W^T, sigma2 and the likelihood are what
    it pins down.  Near the optimum the error along the j-th principal direction shrinks by
    roughly a factor 1 - 2 sigma2 / lambda_j per iteration (the fraction of information the
    latent z would add), so EM is slow when the noise is small next to the signal; the
    closed form is then the better tool, EM the one that generalises (missing data,
    mixtures of PPCA).
    """
    x = _as_data(x)
    _check_q(q, x.shape[1])
    return _fit_ppca_em(_Scatter(x), q, iterations, tol, seed, min_sigma2)


def fit_ppca_em_moments(mean, covariance, q: int, iterations: int = 1000, tol: float = 1e-8,
                        seed: int = 0, min_sigma2: float = 1e-6, w0=None,
                        sigma2_0: float | None = None) -> PPCAParams:
    """:func:`fit_ppca_em` from the sample mean and covariance S (EM needs nothing else),
    optionally starting from (``w0``, ``sigma2_0``) instead of the random start."""
    scatter = _Scatter.from_moments(mean, covariance)
    _check_q(q, scatter.d)
    return _fit_ppca_em(scatter, q, iterations, tol, seed, min_sigma2, w0, sigma2_0)


def _fit_ppca_em(scatter: "_Scatter", q: int, iterations: int, tol: float, seed: int,
                 min_sigma2: float, w0=None, sigma2_0: float | None = None) -> PPCAParams:
    d = scatter.d
    if iterations < 0 or not min_sigma2 > 0:
        raise ValueError("iterations must be >= 0 and min_sigma2 positive")
    rng = np.random.default_rng(seed)
    scale = max(scatter.trace / d, min_sigma2)
    w = rng.normal(size=(d, q)) * math.sqrt(scale / q) if w0 is None else np.asarray(w0, np.float64)
    sigma2 = scale if sigma2_0 is None else max(float(sigma2_0), min_sigma2)
    eye = np.eye(q)

    sw = scatter.times(w)
    m_logdet, m_inv = _chol_logdet_inv(w.T @ w + sigma2 * eye)
    ll = _ppca_mean_log_lik(scatter.trace, w, sigma2, sw, d, m_logdet, m_inv)
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
        m_logdet, m_inv = _chol_logdet_inv(w.T @ w + sigma2 * eye)
        ll_new = _ppca_mean_log_lik(scatter.trace, w, sigma2, sw, d, m_logdet, m_inv)
        trace.append(ll_new)
        if ll_new - ll < tol:
            converged = True
            break
        ll = ll_new
    return PPCAParams(W=w, mu=scatter.mean, sigma2=float(sigma2),
                      log_likelihood_trace=[float(v) for v in trace], converged=converged)


def fit_ppca_closed_form(x, q: int, min_sigma2: float = 1e-6) -> PPCAParams:
    """Maximum-likelihood PPCA in closed form (Tipping & Bishop 1999, W_ML and sigma2_ML).

    With lambda_1 >= ... >= lambda_D the eigenvalues of the sample covariance S and U_q
    the eigenvectors of the q largest::

        mu = xbar,   sigma2 = (1/(D - q)) sum_{j > q} lambda_j,
        W = U_q (L_q - sigma2 I)^{1/2}   (the global maximum, taking R = I)

    The eigenvectors come from ``eigh(S)`` when n >= D, otherwise from the thin SVD of the
    centred data (S has at most n non-zero eigenvalues; the rest are zero).  Each column's
    sign is fixed (largest-magnitude entry positive) so the result is deterministic.
    sigma2 is clipped below at ``min_sigma2`` as in :func:`fit_ppca_em`.
    """
    x = _as_data(x)
    _check_q(q, x.shape[1])
    return _ppca_closed_form(_Scatter(x), q, min_sigma2)


def fit_ppca_closed_form_moments(mean, covariance, q: int, min_sigma2: float = 1e-6) -> PPCAParams:
    """:func:`fit_ppca_closed_form` from the sample mean and covariance S."""
    scatter = _Scatter.from_moments(mean, covariance)
    _check_q(q, scatter.d)
    return _ppca_closed_form(scatter, q, min_sigma2)


def _ppca_closed_form(scatter: "_Scatter", q: int, min_sigma2: float) -> PPCAParams:
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
    m_logdet, m_inv = _chol_logdet_inv(w.T @ w + sigma2 * np.eye(q))
    log_lik = _ppca_mean_log_lik(scatter.trace, w, sigma2, scatter.times(w), d, m_logdet, m_inv)
    return PPCAParams(W=w, mu=scatter.mean, sigma2=float(sigma2),
                      log_likelihood_trace=[float(log_lik)], converged=True)


def _ppca_parts(params: PPCAParams) -> tuple[np.ndarray, np.ndarray, float, float, np.ndarray]:
    w = np.asarray(params.W, np.float64)
    mu = np.asarray(params.mu, np.float64)
    sigma2 = float(params.sigma2)
    m_logdet, m_inv = _chol_logdet_inv(w.T @ w + sigma2 * np.eye(w.shape[1]))
    return w, mu, sigma2, m_logdet, m_inv


def ppca_log_prob(params: PPCAParams, x) -> np.ndarray:
    """Exact log N(x_n | mu, W W^T + sigma2 I_D), shape [n], in O(n D q).

    Woodbury: C^{-1} = (I - W M^{-1} W^T) / sigma2, so with e = x - mu and a = W^T e,
    e^T C^{-1} e = (||e||^2 - a^T M^{-1} a) / sigma2; matrix determinant lemma:
    log|C| = (D - q) log sigma2 + log|M|, M = W^T W + sigma2 I_q.  The D x D covariance is
    never formed.
    """
    x = _as_data(x)
    w, mu, sigma2, m_logdet, m_inv = _ppca_parts(params)
    d, q = w.shape
    if x.shape[1] != d:
        raise ValueError(f"x has dimension {x.shape[1]}, the model {d}")
    e = x - mu
    a = e @ w
    quad = (np.sum(e * e, axis=1) - np.sum((a @ m_inv) * a, axis=1)) / sigma2
    return -0.5 * (d * _LOG_2PI + (d - q) * math.log(sigma2) + m_logdet + quad)


def ppca_posterior(params: PPCAParams, x) -> tuple[np.ndarray, np.ndarray]:
    """p(z | x_n) = N(M^{-1} W^T (x_n - mu), sigma2 M^{-1})  (Tipping & Bishop eq. (6)).

    Returns the posterior means [n, q] and the covariance [q, q], which is the same for
    every x_n.
    """
    x = _as_data(x)
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
