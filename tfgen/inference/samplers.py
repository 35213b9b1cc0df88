"""Latent samplers for generating images: where the z fed to the decoder come from.

``prior``: z ~ p(z).

``particle_gaussian`` (Kuntz et al. 2023, "Image synthesis"): z ~ N(mu, Sigma) fitted to a scheme's
final particle cloud (X^{n,m})_{n <= N, m <= M},

    mu = 1/(NM) sum_{n,m} X^{n,m},   Sigma = 1/(NM - 1) sum_{n,m} (X^{n,m} - mu)(X^{n,m} - mu)^T,

because the decoder is trained where the particles are, which need not be where the prior
puts its mass.  It is fitted to the training images' latents, as ``gmm`` is (see
:func:`training_latents`): a scheme's cloud of training latents (the
:class:`~tfgen.inference.capabilities.LatentCloud` interface, whose ``latent_cloud()``
returns them as [M * N, d]: PGA's particles, abp's latents, short_run's fresh chains), else
the encoder's means E_q[z | y_m] (a VAE's aggregate posterior fitted by one Gaussian -- the
one-component case of Ghosh et al.'s (2020) ex-post density estimation -- so that seed 000's
comparison draws every method's samples the same way).

``gmm`` (Chadebec & Allassonniere 2022, "A geometric perspective on variational autoencoders",
who report that drawing a VAE's latents from a mixture fitted to the training latents
instead of the prior shrinks its MNIST FID several-fold): z ~ sum_k pi_k N(mu_k, Sigma_k), a
Gaussian mixture with K full-covariance components fitted by EM (Dempster, Laird & Rubin
1977; Bishop 2006, section 9.2.2; :mod:`tfgen.models.gmm`) in float64 to the training images'
latents: the latent cloud (``latent_cloud()``) of schemes that have one, else the encoder means
E_q[z | y_m] of the training images (:class:`~tfgen.inference.capabilities.AmortizedPosterior`).
Each EM start is seeded by k-means++ (Arthur & Vassilvitskii 2007) and a few Lloyd steps; the
start with the highest final log-likelihood of ``restarts`` is kept; every draw comes from a
fixed seed, so the same latents give the same mixture and the same samples.
"""
from __future__ import annotations

import dataclasses
import hashlib
import typing
from typing import Literal

import numpy as np
import tensorflow as tf

from tfgen.inference.capabilities import LatentCloud, LatentSampler, TrainingLatents, require
from tfgen.models.gmm import GMMParams, fit_gmm, sample_gmm
from tfgen.schema import setting


Sampler = Literal["prior", "particle_gaussian", "gmm"]
SAMPLERS = typing.get_args(Sampler)
#: the capability each sampler needs from the scheme
NEEDS = {"prior": LatentSampler, "particle_gaussian": TrainingLatents, "gmm": TrainingLatents}


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

    components: int = setting(10, at_least=1, at_most=1000, help="mixture components K")
    restarts: int = setting(3, at_least=1, at_most=100, help="EM runs from k-means++ starts; the "
                                                             "best is kept")
    max_iter: int = setting(200, at_least=1, at_most=100000, help="EM iterations per run at most")
    tol: float = setting(1e-6, at_least=0.0, help="stop when the mean log-likelihood per point "
                                                  "gains less")
    reg_covar: float = setting(1e-6, at_least=0.0, help="added to each covariance's diagonal")
    max_points: int = setting(20000, at_least=0, help="fit on this many latents drawn at random "
                                                      "(0 = all)")
    seed: int = setting(0, at_least=0, help="seeds the starts and the subsample")


def training_latents(scheme, batch_size: int = 500) -> np.ndarray:
    """The training images' latents [n, d]: the latent cloud (every particle, for PGA), or
    the encoder's means E_q[z | y_m] of the training images (as stored, before any dynamic
    binarization)."""
    if isinstance(scheme, LatentCloud):
        return np.asarray(scheme.latent_cloud(), np.float64)
    images = scheme.data.train.images
    return np.concatenate([scheme.posterior(tf.constant(images[i:i + batch_size])).mean().numpy()
                           for i in range(0, len(images), batch_size)]).astype(np.float64)


def fit_latent_gmm(points, config: GMMConfig | None = None) -> GMMParams:
    """The ``gmm`` sampler's mixture of ``points`` [n, d]: full covariances, at most as many
    components as the points it is fitted on."""
    config = config or GMMConfig()
    fitted_on = min(len(points), config.max_points or len(points))
    return fit_gmm(points, min(config.components, fitted_on), "full", config.max_iter,
                   config.tol, config.seed, config.restarts, config.reg_covar, config.max_points)


def scheme_gmm(scheme, config: GMMConfig | None = None) -> GMMParams:
    """The mixture fitted to the scheme's training latents; kept on the scheme for the same
    latents and settings, so repeated draws (a test-time fit's chunks) fit it once."""
    config = config or GMMConfig()
    points = training_latents(scheme)
    key = (dataclasses.astuple(config), hashlib.sha256(points.tobytes()).hexdigest())
    cache = scheme.__dict__.setdefault("_gmm_fits", {})
    if key not in cache:
        cache.clear()
        cache[key] = fit_latent_gmm(points, config)
    return cache[key]


def sample_latents(sampler: str, scheme, num: int, seed: int,
                   gmm: GMMConfig | None = None) -> tf.Tensor:
    """``num`` latents [num, d] from the named sampler, reproducibly from ``seed`` (``gmm``:
    the ``gmm`` sampler's settings, its defaults if None)."""
    if sampler == "prior":
        dist = scheme.model.prior.distribution()
        return dist.sample(num, seed=tf.constant([seed, 0], tf.int32))
    if sampler == "particle_gaussian":
        return sample_particle_gaussian(training_latents(scheme), num, seed)
    if sampler == "gmm":
        return tf.constant(sample_gmm(scheme_gmm(scheme, gmm), num, seed), tf.float32)
    raise ValueError(f"unknown sampler {sampler!r}")  # config validation rules this out
