"""What a likelihood can do, as small interfaces that evaluation tasks and metrics ask for.

A likelihood class (:mod:`tfgen.models.likelihoods`, or a plugin's) inherits the interfaces
it implements; nothing defaults to yes.  A task that needs one names it with
:func:`require` in its ``check``, which runs at config load time (the mechanism schemes use
too: :mod:`tfgen.capability`), so a likelihood that cannot do it is refused before anything
is built, naming the task, the likelihood and the likelihoods that would do.

* :class:`Discrete` -- ``log_prob`` is a probability mass of the discrete image (bits, bins,
  pixel levels), not a density: its log-likelihood is bits per dimension directly.
* :class:`Factorized` -- p(y | z) is a product over pixels, so hidden pixels marginalise out:
  ``log_prob_observed`` (image completion, test-time fits on part of an image).
* :class:`HasMeanStddev` -- per-pixel E[y_i | z] and sd(y_i | z), differentiable in the
  decoder output (the expected metric of the latent geometry tasks).
"""
from __future__ import annotations

import tensorflow as tf

from tfgen import capability
from tfgen.capability import Capability
from tfgen.registry import LIKELIHOODS


class Discrete(Capability):
    """A probability mass of the discrete image: log p(y) in nats, bits/dim directly
    (:mod:`tfgen.evaluation.metrics`)."""

    description = "a likelihood of discrete images (a probability mass, not a density)"


class Factorized(Capability):
    """p(y | z) = prod_i p(y_i | z): ``_pixel_distribution`` is the per-pixel factor, so the
    marginal of the observed pixels is a sum over them."""

    description = "a likelihood that factorizes over pixels (per-pixel marginals)"

    def log_prob_observed(self, decoder_output: tf.Tensor, images: tf.Tensor,
                          observed: tf.Tensor) -> tf.Tensor:
        """log p(y_O | z) = sum over observed pixels i in O of log p(y_i | z): the pixels are
        conditionally independent given z, so marginalising the hidden ones drops their terms
        (the 2AMU20 VAE assignment, task 4b).  ``observed`` [B, H, W] (1 = observed) applies to all
        channels."""
        per_pixel = self._pixel_distribution(decoder_output).log_prob(self.targets(images))
        weights = tf.cast(observed, per_pixel.dtype)[..., None]
        return tf.reduce_sum(per_pixel * weights, axis=[-3, -2, -1])


class HasMeanStddev(Capability):
    """Per-pixel mean and standard deviation of p(y_i | z)."""

    description = "a likelihood with a per-pixel mean and standard deviation"

    #: whether sd(y_i | z) can change with z; False (a fixed or learned sigma) makes the second
    #: term of the expected metric (Arvanitidis, Hansen & Hauberg 2018, Theorem 1) zero, and it is
    #: skipped
    stddev_varies = True

    def mean_stddev(self, decoder_output: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """Per-pixel E[y_i | z] and sd(y_i | z), [..., H, W, C] each, in the data's pixel range
        and differentiable in the decoder output: the mu and sigma of the expected metric
        M = J_mu^T J_mu + J_sigma^T J_sigma (Arvanitidis, Hansen & Hauberg 2018, Theorem 1)."""
        raise NotImplementedError


def likelihoods_with(capability_: type[Capability]) -> list[str]:
    """Registered likelihoods that implement a capability (for error messages)."""
    return capability.registered_with(LIKELIHOODS, capability_)


def has(cfg, capability_: type[Capability]) -> bool:
    return capability.has(LIKELIHOODS, cfg.model.likelihood, capability_)


def require(cfg, capability_: type[Capability], key: str, needed_by: str, given=...,
            alternative: str = "") -> None:
    """Refuse, at load time, a config whose ``needed_by`` needs what its likelihood lacks."""
    capability.require(LIKELIHOODS, cfg.model.likelihood, capability_, file=cfg.source_file,
                       key=key, needed_by=needed_by, called="likelihood",
                       chosen_by="model.likelihood.name", given=given, alternative=alternative)
