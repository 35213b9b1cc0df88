"""Latent samplers for generating images: where the z fed to the decoder come from.

``prior``: z ~ p(z).

``particle_gaussian`` (seed 000, "Image synthesis"): z ~ N(mu, Sigma) fitted to a scheme's
final particle cloud (X^{n,m})_{n <= N, m <= M},

    mu = 1/(NM) sum_{n,m} X^{n,m},   Sigma = 1/(NM - 1) sum_{n,m} (X^{n,m} - mu)(X^{n,m} - mu)^T,

because the decoder is trained where the particles are, which need not be where the prior
puts its mass.  It needs a scheme with a cloud of training latents (the
:class:`~tfgen.inference.capabilities.LatentCloud` interface, whose ``latent_cloud()``
returns them as [M * N, d]: PGA's particles, or short_run's fresh chains).

``gmm`` (Chadebec & Allassonniere 2022, "A geometric perspective on variational autoencoders",
who report that drawing a VAE's latents from a mixture fitted to the training latents
instead of the prior shrinks its MNIST FID several-fold): z ~ sum_k pi_k N(mu_k, Sigma_k), a
Gaussian mixture with K full-covariance components fitted by EM (Dempster, Laird & Rubin
1977; Bishop 2006, section 9.2.2) in float64 to the training images' latents: the
latent cloud (``latent_cloud()``) of schemes that have one, else the encoder means
E_q[z | y_m] of the training images (:class:`~tfgen.inference.capabilities.AmortizedPosterior`).
Each EM start is seeded by k-means++ (Arthur & Vassilvitskii 2007) and a few Lloyd steps; the
start with the highest final log-likelihood of ``restarts`` is kept; every draw comes from a
fixed seed, so the same latents give the same mixture and the same samples.
"""
from __future__ import annotations

import dataclasses
import hashlib
import typing
from typing import Literal, NamedTuple

import numpy as np
import tensorflow as tf

from tfgen.config import field
from tfgen.inference.capabilities import LatentCloud, LatentSampler, TrainingLatents, require


Sampler = Literal["prior", "particle_gaussian", "gmm"]
SAMPLERS = typing.get_args(Sampler)
#: the capability each sampler needs from the scheme
NEEDS = {"prior": LatentSampler, "particle_gaussian": LatentCloud, "gmm": TrainingLatents}


def check_sampler(cfg, sampler: str, key: str) -> None:
    """Config-time check: the scheme has what the sampler draws from."""
    require(cfg, NEEDS[sampler], key, f"sampler {sampler!r}", given=sampler,
            alternative="sampler = 'prior'" if sampler != "prior" else "")


def particle_gaussian(cloud) -> tuple[np.ndarray, np.ndarray]:
    """(mu, Sigma) of an [n, d] cloud: the empirical mean and the 1/(n-1) covariance (float64)."""
    x = np.asarray(cloud, np.float64)
    mean = x.mean(axis=0)
    centred = x - mean
    covariance = centred.T @ centred / max(len(x) - 1, 1)
    return mean, covariance


def sample_particle_gaussian(cloud, num: int, seed: int) -> tf.Tensor:
    """z = mu + L eps, L L^T = Sigma (a tiny diagonal jitter keeps a degenerate Sigma usable)."""
    mean, covariance = particle_gaussian(cloud)
    d = len(mean)
    jitter = 1e-9 * max(float(np.trace(covariance)) / d, 1e-12)
    chol = np.linalg.cholesky(covariance + jitter * np.eye(d))
    eps = tf.random.stateless_normal([num, d], seed=tf.constant([seed, 0], tf.int32),
                                     dtype=tf.float64)
    z = mean + tf.linalg.matmul(eps, chol, transpose_b=True)
    return tf.cast(z, tf.float32)


# --------------------------------------------------------------------------- GMM

@dataclasses.dataclass
class GMMConfig:
    """The ``gmm`` sampler's settings (a task's ``[evaluate.gmm]`` table)."""

    components: int = field(10, min=1, max=1000, help="mixture components K")
    restarts: int = field(3, min=1, max=100, help="EM runs from k-means++ starts; the best is kept")
    max_iter: int = field(200, min=1, max=100000, help="EM iterations per run at most")
    tol: float = field(1e-6, min=0.0, help="stop when the mean log-likelihood per point gains less")
    reg_covar: float = field(1e-6, min=0.0, help="added to each covariance's diagonal")
    max_points: int = field(20000, min=0, help="fit on this many latents drawn at random "
                                               "(0 = all)")
    seed: int = field(0, min=0, help="seeds the starts and the subsample")


class GaussianMixture(NamedTuple):
    weights: np.ndarray      # [K]
    means: np.ndarray        # [K, d]
    covariances: np.ndarray  # [K, d, d]
    log_likelihood: float    # mean log p(x) per point at the fit
    iterations: int


def _log_gaussians(x: np.ndarray, means: np.ndarray, covariances: np.ndarray) -> np.ndarray:
    """log N(x_n | mu_k, Sigma_k) as [n, K], through Cholesky factors."""
    n, d = x.shape
    out = np.empty((n, len(means)))
    for k, (mean, cov) in enumerate(zip(means, covariances)):
        chol = np.linalg.cholesky(cov)
        y = np.linalg.solve(chol, (x - mean).T)  # L y = (x - mu): y.y = the Mahalanobis term
        out[:, k] = -0.5 * (d * np.log(2 * np.pi) + (y * y).sum(axis=0)) \
            - np.log(np.diag(chol)).sum()
    return out


def _kmeans_pp(x: np.ndarray, k: int, rng: np.random.Generator, lloyd_steps: int = 10):
    """Hard assignments [n] from k-means++ seeding (Arthur & Vassilvitskii 2007) and Lloyd steps."""
    centres = [x[rng.integers(len(x))]]
    d2 = ((x - centres[0]) ** 2).sum(axis=1)
    for _ in range(1, k):
        total = d2.sum()
        index = rng.choice(len(x), p=d2 / total) if total > 0 else rng.integers(len(x))
        centres.append(x[index])
        d2 = np.minimum(d2, ((x - x[index]) ** 2).sum(axis=1))
    centres = np.array(centres)
    for _ in range(lloyd_steps):
        dist = ((x * x).sum(1)[:, None] - 2 * x @ centres.T + (centres * centres).sum(1)[None])
        assign = dist.argmin(axis=1)
        for j in range(k):
            if (assign == j).any():
                centres[j] = x[assign == j].mean(axis=0)
    dist = ((x * x).sum(1)[:, None] - 2 * x @ centres.T + (centres * centres).sum(1)[None])
    return dist.argmin(axis=1)


def _m_step(x, resp, reg_covar):
    """Weights, means and covariances maximising the expected complete log-likelihood
    (Bishop 2006, eqs. (9.24)-(9.26)), with ``reg_covar`` on the diagonals."""
    counts = resp.sum(axis=0) + 10 * np.finfo(np.float64).eps
    means = resp.T @ x / counts[:, None]
    d = x.shape[1]
    covariances = np.empty((len(counts), d, d))
    for k in range(len(counts)):
        centred = x - means[k]
        covariances[k] = (resp[:, k, None] * centred).T @ centred / counts[k] + reg_covar * np.eye(d)
    return counts / len(x), means, covariances


def fit_gmm(points, config: GMMConfig | None = None) -> GaussianMixture:
    """EM for a full-covariance Gaussian mixture (float64), the best of ``config.restarts``
    runs, each from k-means++ hard assignments; stops at ``tol`` or ``max_iter``."""
    config = config or GMMConfig()
    x = np.asarray(points, np.float64)
    rng = np.random.default_rng(config.seed)
    if config.max_points and len(x) > config.max_points:
        x = x[rng.choice(len(x), config.max_points, replace=False)]
    k = min(config.components, len(x))
    best = None
    for _ in range(config.restarts):
        assign = _kmeans_pp(x, k, rng)
        resp = np.zeros((len(x), k))
        resp[np.arange(len(x)), assign] = 1.0
        weights, means, covariances = _m_step(x, resp, config.reg_covar)
        previous = -np.inf
        for iteration in range(1, config.max_iter + 1):
            log_joint = _log_gaussians(x, means, covariances) + np.log(weights)
            log_norm = np.logaddexp.reduce(log_joint, axis=1)
            resp = np.exp(log_joint - log_norm[:, None])
            current = float(log_norm.mean())
            weights, means, covariances = _m_step(x, resp, config.reg_covar)
            if abs(current - previous) < config.tol:
                break
            previous = current
        log_joint = _log_gaussians(x, means, covariances) + np.log(weights)
        fitted = GaussianMixture(weights, means, covariances,
                                 float(np.logaddexp.reduce(log_joint, axis=1).mean()), iteration)
        if best is None or fitted.log_likelihood > best.log_likelihood:
            best = fitted
    return best


def sample_gmm(mixture: GaussianMixture, num: int, seed: int) -> np.ndarray:
    """``num`` draws [num, d] (float64): a component k ~ pi, then mu_k + L_k eps."""
    rng = np.random.default_rng([seed, 7])
    components = rng.choice(len(mixture.weights), size=num, p=mixture.weights / mixture.weights.sum())
    eps = rng.standard_normal((num, mixture.means.shape[1]))
    chols = np.linalg.cholesky(mixture.covariances)
    return mixture.means[components] + np.einsum("nij,nj->ni", chols[components], eps)


def training_latents(scheme, batch_size: int = 500) -> np.ndarray:
    """The training images' latents [n, d]: the latent cloud (every particle, for PGA), or
    the encoder's means E_q[z | y_m] of the training images (as stored, before any dynamic
    binarization)."""
    if isinstance(scheme, LatentCloud):
        return np.asarray(scheme.latent_cloud(), np.float64)
    images = scheme.data.train.images
    return np.concatenate([scheme.posterior(tf.constant(images[i:i + batch_size])).mean().numpy()
                           for i in range(0, len(images), batch_size)]).astype(np.float64)


def scheme_gmm(scheme, config: GMMConfig | None = None) -> GaussianMixture:
    """The mixture fitted to the scheme's training latents; kept on the scheme for the same
    latents and settings, so repeated draws (a test-time fit's chunks) fit it once."""
    config = config or GMMConfig()
    points = training_latents(scheme)
    key = (dataclasses.astuple(config), hashlib.sha256(points.tobytes()).hexdigest())
    cache = scheme.__dict__.setdefault("_gmm_fits", {})
    if key not in cache:
        cache.clear()
        cache[key] = fit_gmm(points, config)
    return cache[key]


def sample_latents(sampler: str, scheme, num: int, seed: int,
                   gmm: GMMConfig | None = None) -> tf.Tensor:
    """``num`` latents [num, d] from the named sampler, reproducibly from ``seed`` (``gmm``:
    the ``gmm`` sampler's settings, its defaults if None)."""
    if sampler == "prior":
        dist = scheme.model.prior.distribution()
        return dist.sample(num, seed=tf.constant([seed, 0], tf.int32))
    if sampler == "particle_gaussian":
        return sample_particle_gaussian(scheme.latent_cloud(), num, seed)
    if sampler == "gmm":
        return tf.constant(sample_gmm(scheme_gmm(scheme, gmm), num, seed), tf.float32)
    raise ValueError(f"unknown sampler {sampler!r}")  # config validation rules this out
