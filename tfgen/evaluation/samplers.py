"""Latent samplers for generating images: where the z fed to the decoder come from.

``prior``: z ~ p(z).

``particle_gaussian`` (seed 000, "Image synthesis"): z ~ N(mu, Sigma) fitted to a scheme's
final particle cloud (X^{n,m})_{n <= N, m <= M},

    mu = 1/(NM) sum_{n,m} X^{n,m},   Sigma = 1/(NM - 1) sum_{n,m} (X^{n,m} - mu)(X^{n,m} - mu)^T,

because the decoder is trained where the particles are, which need not be where the prior
puts its mass.  It needs a scheme with per-datapoint latents (the
:class:`~tfgen.inference.capabilities.PerDatapointLatents` interface, whose ``latent_cloud()``
returns them as [M * N, d]).
"""
from __future__ import annotations

import typing
from typing import Literal

import numpy as np
import tensorflow as tf

from tfgen.inference.capabilities import LatentSampler, PerDatapointLatents, require

Sampler = Literal["prior", "particle_gaussian"]
SAMPLERS = typing.get_args(Sampler)
#: the capability each sampler needs from the scheme
NEEDS = {"prior": LatentSampler, "particle_gaussian": PerDatapointLatents}


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


def sample_latents(sampler: str, scheme, num: int, seed: int) -> tf.Tensor:
    """``num`` latents [num, d] from the named sampler, reproducibly from ``seed``."""
    if sampler == "prior":
        dist = scheme.model.prior.distribution()
        return dist.sample(num, seed=tf.constant([seed, 0], tf.int32))
    if sampler == "particle_gaussian":
        return sample_particle_gaussian(scheme.latent_cloud(), num, seed)
    raise ValueError(f"unknown sampler {sampler!r}")  # config validation rules this out
