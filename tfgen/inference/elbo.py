"""ELBO terms shared by every scheme that has a Gaussian q(z) (amortized or per-datapoint).

For q(z) = N(mu, diag(sigma^2)) and the model p(z) p_theta(y | z):

    ELBO(y) = E_q[log p_theta(y | z)] - KL(q(z) || p(z)) <= log p_theta(y)

(the 2AMU20 VAE assignment, task 1b; Kingma & Welling 2014, eq. (3)).  The expectation is a
reparameterized Monte Carlo average z = mu + sigma * eps, eps ~ N(0, I); the
KL is in closed form (Kingma & Welling 2014, appendix B) for the standard normal prior and
the Monte Carlo estimate at the same samples for the others (``GenerativeModel.kl_to_prior``).  The importance
weighted bound with K samples (Burda et al. 2016, eq. (8))

    log p(y) >= E[ log 1/K sum_k p_theta(y, z_k) / q(z_k) ],  z_k ~ q,

tightens to log p_theta(y) as K grows and is our log-likelihood estimate.
"""
from __future__ import annotations

from typing import NamedTuple

import tensorflow as tf
import tensorflow_probability as tfp

tfd = tfp.distributions


class ElboTerms(NamedTuple):
    """Per-example terms, each of shape [B]."""

    elbo: tf.Tensor
    reconstruction: tf.Tensor  # E_q[log p(y | z)]
    kl: tf.Tensor              # KL(q || p)


def gaussian_posterior(mean: tf.Tensor, log_variance: tf.Tensor) -> tfd.MultivariateNormalDiag:
    """q(z) = N(mean, diag(exp(log_variance))) (the 2AMU20 VAE assignment, task 1a)."""
    return tfd.MultivariateNormalDiag(loc=mean, scale_diag=tf.exp(0.5 * log_variance))


def gaussian_posterior_from_scale(mean: tf.Tensor, scale: tf.Tensor) -> tfd.MultivariateNormalDiag:
    """q(z) = N(mean, diag(scale^2))."""
    return tfd.MultivariateNormalDiag(loc=mean, scale_diag=scale)


def split_gaussian_params(encoder_output: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """An encoder's 2d outputs -> (mu, log sigma^2)."""
    mean, log_variance = tf.split(encoder_output, 2, axis=-1)
    return mean, log_variance


def reparameterized_samples(q: tfd.MultivariateNormalDiag, num_samples: int,
                            noise: tf.Tensor | None = None, generator: tf.random.Generator | None = None):
    """z = mu + sigma * eps, shape [S, B, d].  ``noise`` (eps) may be passed for exact tests."""
    mean, scale = q.loc, q.scale.diag
    if noise is None:
        shape = tf.concat([[num_samples], tf.shape(mean)], axis=0)
        noise = generator.normal(shape, dtype=mean.dtype)
    return mean + scale * noise


def elbo_terms(model, q: tfd.MultivariateNormalDiag, images: tf.Tensor, num_samples: int = 1,
               generator: tf.random.Generator | None = None, noise: tf.Tensor | None = None,
               training: bool = False) -> ElboTerms:
    """Reparameterized ELBO with the KL in closed form."""
    z = reparameterized_samples(q, num_samples, noise, generator)
    reconstruction = tf.reduce_mean(model.log_likelihood(z, images, training), axis=0)
    kl = model.kl_to_prior(q, z)
    return ElboTerms(reconstruction - kl, reconstruction, kl)


def importance_log_likelihood(model, q: tfd.MultivariateNormalDiag, images: tf.Tensor,
                              num_samples: int, generator: tf.random.Generator | None = None,
                              noise: tf.Tensor | None = None, per_sample: bool = False) -> tf.Tensor:
    """IWAE estimate of log p_theta(y), shape [B] (Burda et al. 2016, eq. (8)); with
    ``per_sample``, the log importance weights log p(y, z_k) - log q(z_k) themselves, [K, B]."""
    z = reparameterized_samples(q, num_samples, noise, generator)
    log_weights = model.log_joint(z, images) - q.log_prob(z)
    if per_sample:
        return log_weights
    return tf.reduce_logsumexp(log_weights, axis=0) - tf.math.log(tf.cast(num_samples, log_weights.dtype))
