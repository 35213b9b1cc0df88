"""The paper's fix for the decoder variance: a positive RBF network for the precision.

Arvanitidis, Hansen & Hauberg (2018, Sec. 4): a
neural network extrapolates sigma(z) arbitrarily away from the data, so the geometry there
is arbitrary too.  Model the precision instead,

    beta(z) = 1 / sigma^2(z) = W v(z) + zeta,    v_k(z) = exp(-lambda_k |z - c_k|^2),

with positive weights W [D, K] and a small zeta > 0: far from every centre v -> 0 and the
variance grows to 1 / zeta, so shortest paths avoid the regions without data.  The centres
c_k are k-means centres of the training latents, the bandwidths come from the clusters'
spreads, lambda_k = 1/2 (a mean_{z in C_k} |z - c_k|)^-2, a the paper's curvature
hyper-parameter (``bandwidth_scale``).  Here sigma^2(z) = 1 / beta(z) + sigma_min^2 with the
Normal likelihood's own ``min_sigma`` floor, as its per-pixel sigma has; zeta = 1 / max_sigma^2.

Training "after the mean decoder": the decoder and the encoder stay as trained; the
training latents z (samples of q(z | y), or a PGA scheme's particles, which are posterior
samples) and their squared residuals r = (y - mu(z))^2 are computed once, and W maximises
the Gaussian log-likelihood of the residuals,

    sum_{n, i} -1/2 log sigma_i^2(z_n) - r_{n,i} / (2 sigma_i^2(z_n)),

by full-batch Adam on log W (positive W, and steps that change W by a
factor, whatever its scale: precisions span 1 .. 1/min_sigma^2) in one compiled ``tf.while_loop`` (without the floor
this is concave in W: log of a linear function minus a linear function).  It runs at
evaluation time (:mod:`tfgen.geometry.tasks`, task ``rbf_precision``) and is stored in the
run directory, so it applies to any finished run with a Normal likelihood.

:func:`precision_model` wraps a trained :class:`~tfgen.models.model.GenerativeModel` into
one with the RBF variance: same prior and mean, sigma from the RBF.  Every estimator (the
IWAE log-likelihood, the metric) then works on it unchanged.
"""
from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

from tfgen.models.kmeans import kmeans
from tfgen.models.likelihood_capabilities import Factorized, HasMeanStddev
from tfgen.models.likelihoods import Likelihood
from tfgen.models.model import GenerativeModel
from tfgen.runtime import compile_step
from tfgen.schema import setting

tfd = tfp.distributions


@dataclasses.dataclass
class RBFPrecisionConfig:
    """How the RBF precision is fitted (the ``rbf_precision`` task's keys)."""

    centres: int = setting(64, at_least=1, at_most=4096, help="K: RBF centres, k-means of the "
                                                              "training latents")
    bandwidth_scale: float = setting(1.0, above=0.0, at_most=100.0,
                                     help="a: lambda_k = 1/2 (a * mean distance to centre k)^-2; "
                                          "larger a, wider kernels (the paper's curvature knob)")
    max_sigma: float = setting(1.0, above=0.0, help="sigma far from the data: zeta = 1 / "
                                                    "max_sigma^2")
    fit_images: int = setting(5000, at_least=1, help="training images whose latents fit W")
    fit_samples: int = setting(2, at_least=1, at_most=100, help="latent samples z ~ q(z | y) per "
                                                                "image (a PGA cloud gives its "
                                                                "particles)")
    steps: int = setting(500, at_least=1, at_most=100000, help="full-batch Adam steps on W")
    learning_rate: float = setting(0.05, above=0.0, at_most=10.0)


class RBFPrecision(tf.Module):
    """beta(z) = exp(log_weights) v(z) + zeta and sigma(z) = sqrt(1 / beta + sigma_min^2)."""

    def __init__(self, centres, bandwidths, log_weights, zeta: float, min_sigma: float):
        super().__init__(name="rbf_precision")
        self.centres = tf.constant(centres, tf.float32)          # [K, d]
        self.bandwidths = tf.constant(bandwidths, tf.float32)    # [K]
        self.log_weights = tf.constant(log_weights, tf.float32)  # [D, K]
        self.zeta, self.min_sigma = float(zeta), float(min_sigma)

    def features(self, z: tf.Tensor) -> tf.Tensor:
        return rbf_features(z, self.centres, self.bandwidths)

    def stddev(self, z: tf.Tensor) -> tf.Tensor:
        """sigma(z) per pixel, [n, D]."""
        return stddev_from_features(self.features(z), self.log_weights, self.zeta, self.min_sigma)

    def save(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, centres=self.centres.numpy(), bandwidths=self.bandwidths.numpy(),
                 log_weights=self.log_weights.numpy(), zeta=self.zeta, min_sigma=self.min_sigma)
        return path

    @classmethod
    def load(cls, path: Path) -> "RBFPrecision":
        with np.load(path) as f:
            return cls(f["centres"], f["bandwidths"], f["log_weights"], float(f["zeta"]),
                       float(f["min_sigma"]))


def rbf_features(z, centres, bandwidths):
    """v_k(z) = exp(-lambda_k |z - c_k|^2), [n, K]."""
    squared = (tf.reduce_sum(tf.square(z), -1, keepdims=True)
               - 2.0 * tf.matmul(z, centres, transpose_b=True)
               + tf.reduce_sum(tf.square(centres), -1)[None, :])
    return tf.exp(-bandwidths[None, :] * tf.maximum(squared, 0.0))


def stddev_from_features(features, log_weights, zeta, min_sigma):
    precision = tf.matmul(features, tf.exp(log_weights), transpose_b=True) + zeta
    return tf.sqrt(1.0 / precision + min_sigma ** 2)


def bandwidths_from_clusters(latents: np.ndarray, assignments: np.ndarray, centres: np.ndarray,
                             scale: float) -> np.ndarray:
    """lambda_k = 1/2 (a mean_{z in C_k} |z - c_k|)^-2; a cluster of one point (spread 0)
    takes the median spread of the others."""
    spreads = np.array([np.linalg.norm(latents[assignments == k] - centres[k], axis=-1).mean()
                        if np.any(assignments == k) else 0.0 for k in range(len(centres))])
    positive = spreads[spreads > 0]
    fallback = np.median(positive) if len(positive) else 1.0
    spreads = np.where(spreads > 0, spreads, fallback)
    return 0.5 / np.square(scale * spreads)


def _fit_weights(features, residuals, log_w0, zeta, min_sigma, steps, learning_rate):
    """Full-batch Adam on log W for the residuals' Gaussian log-likelihood."""
    beta1, beta2, eps = 0.9, 0.999, 1e-8
    count = tf.cast(tf.shape(features)[0], features.dtype)

    def loss_fn(log_w):
        sigma = stddev_from_features(features, log_w, zeta, min_sigma)
        # mean over latents of the negative log-likelihood summed over pixels (constant dropped)
        return tf.reduce_sum(tf.math.log(sigma) + 0.5 * residuals / tf.square(sigma)) / count

    def body(t, log_w, m, v):
        with tf.GradientTape(watch_accessed_variables=False) as tape:
            tape.watch(log_w)
            loss = loss_fn(log_w)
        g = tape.gradient(loss, log_w)
        m = beta1 * m + (1.0 - beta1) * g
        v = beta2 * v + (1.0 - beta2) * tf.square(g)
        step = tf.cast(t + 1, log_w.dtype)
        log_w = log_w - learning_rate * (m / (1.0 - beta1 ** step)) / (tf.sqrt(v / (1.0 - beta2 ** step)) + eps)
        return t + 1, log_w, m, v

    zeros = tf.zeros_like(log_w0)
    _, log_w, _, _ = tf.while_loop(lambda t, *_: t < steps, body, (tf.constant(0), log_w0, zeros, zeros))
    return log_w, loss_fn(log_w0), loss_fn(log_w)


def fit_rbf_precision(latents, residuals, config: RBFPrecisionConfig, min_sigma: float,
                      seed: int = 0, compile_mode: str = "auto") -> tuple[RBFPrecision, dict]:
    """Fit the RBF precision to latents [n, d] and their squared residuals [n, D]."""
    latents = np.asarray(latents, np.float32)
    residuals = np.asarray(residuals, np.float32)
    k = min(config.centres, len(latents))
    assignments, centres, _ = kmeans(latents, k, seed=seed, restarts=1)
    bandwidths = bandwidths_from_clusters(latents, assignments, centres, config.bandwidth_scale)
    zeta = 1.0 / config.max_sigma ** 2
    features = rbf_features(tf.constant(latents), tf.constant(centres, tf.float32),
                            tf.constant(bandwidths, tf.float32))
    # start with every pixel's precision at its inverse mean residual, shared by the kernels
    # (at a typical training latent the features sum to their mean sum)
    target = 1.0 / (residuals.mean(0) + min_sigma ** 2 + 1e-6)                    # [D]
    coverage = max(float(tf.reduce_mean(tf.reduce_sum(features, -1))), 1e-6)
    log_w0 = np.log(np.maximum(target / coverage, 1e-6))[:, None] * np.ones((1, k))
    fit = compile_step(_fit_weights, compile_mode)
    log_w, loss_before, loss_after = fit(
        features, tf.constant(residuals), tf.constant(log_w0, tf.float32),
        tf.constant(zeta, tf.float32), tf.constant(min_sigma, tf.float32),
        tf.constant(int(config.steps)), tf.constant(config.learning_rate, tf.float32))
    rbf = RBFPrecision(centres, bandwidths, log_w.numpy(), zeta, min_sigma)
    return rbf, {"nll_start": float(loss_before), "nll_end": float(loss_after), "centres": k}


# --------------------------------------------------------------------------- the wrapped model

class PrecisionDecoder(tf.Module):
    """z -> the likelihood parameters [n, H, W, 2C]: the trained decoder's mean, sigma(z) of
    the RBF (in the (mean, sigma) channel layout of :class:`StddevNormal`)."""

    def __init__(self, decoder, likelihood, rbf: RBFPrecision):
        super().__init__(name="precision_decoder")
        self.decoder, self.likelihood, self.rbf = decoder, likelihood, rbf

    def __call__(self, z, training=False):
        out = self.decoder(z, training=training)
        # the mean's raw channels: a per-pixel-sigma decoder also emits sigma's, dropped here
        raw_loc = self.likelihood._split(out)[0] if self.likelihood.params_per_channel == 2 else out
        sigma = tf.reshape(self.rbf.stddev(z), tf.shape(raw_loc))
        return tf.reshape(tf.stack([raw_loc, sigma], axis=-1),
                          tf.concat([tf.shape(raw_loc)[:-1], [2 * raw_loc.shape[-1]]], 0))


class StddevNormal(Likelihood, Factorized, HasMeanStddev):
    """N(mean, sigma^2) per pixel, with the raw mean (through the base Normal's activation) and
    sigma itself in the decoder output: the likelihood of :class:`PrecisionDecoder`."""

    params_per_channel = 2

    def __init__(self, base):
        super().__init__(base.config, base.image_shape, (base.low, base.high))
        self.base = base

    def _pixel_distribution(self, decoder_output):
        raw_loc, sigma = self._split(decoder_output)
        return tfd.Normal(self.base._loc(raw_loc), sigma)

    def mean_stddev(self, decoder_output):
        dist = self._pixel_distribution(decoder_output)
        return dist.loc, dist.scale


def precision_model(model: GenerativeModel, rbf: RBFPrecision) -> GenerativeModel:
    """The trained model with sigma(z) from the RBF precision (same prior, same mean)."""
    return GenerativeModel(model.prior, PrecisionDecoder(model.decoder, model.likelihood, rbf),
                           StddevNormal(model.likelihood), model.latent_dim)


def squared_residuals(model: GenerativeModel, latents, images, batch: int = 500,
                      compile_mode: str = "auto") -> np.ndarray:
    """(y - mu(z))^2 per pixel, [n, D], for latents [n, d] of images [n, H, W, C]."""
    residual = compile_step(functools.partial(_squared_residual, model), compile_mode)
    out = [residual(tf.constant(latents[lo:lo + batch], tf.float32),
                    tf.constant(images[lo:lo + batch], tf.float32)).numpy()
           for lo in range(0, len(latents), batch)]
    return np.concatenate(out)


def _squared_residual(model, z, images):
    mean, _ = model.likelihood.mean_stddev(model.decode(z))
    return tf.reshape(tf.square(images - mean), [tf.shape(z)[0], -1])
