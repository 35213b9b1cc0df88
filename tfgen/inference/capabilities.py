"""What a scheme can do, as small interfaces that tasks and samplers ask for.

A scheme class inherits the interfaces it implements; nothing defaults to yes.  An
evaluation task, a sampler or a test-time method that needs one names it with
:func:`require`, which runs at config load time, so a config asking for something the
scheme cannot do is refused before anything is built, naming both sides (the task and the
scheme) and the schemes that would do (the mechanism, shared with likelihoods:
:mod:`tfgen.capability`).

* :class:`DecoderLikelihood` -- a decoder and a likelihood p_theta(y | z): log densities of
  images, decoded means, test-time fitting of latents.
* :class:`LatentSampler` -- latents can be drawn for new images: z ~ p(z), decoded.
* :class:`AmortizedPosterior` -- an encoder q_phi(z | y) for any image, in one pass.
* :class:`Posterior` -- some Gaussian q(z | y) for any image: the encoder's, or one fitted at
  test time (svi).  Gives the ELBO, the importance-sampled log-likelihood, reconstructions.
* :class:`LatentCloud` -- latents of the training images as a cloud of points: a per-datapoint
  table's rows, or (``short_run``, which keeps none) the ends of fresh chains run on them.
* :class:`PerDatapointLatents` -- a table of latents per training image
  (:class:`tfgen.inference.latents.LatentTable`), e.g. PGA's particle cloud: a latent cloud
  that persists, row m being image m's.
* :class:`LogLikelihood` -- an exact or estimated log p(y) for any image.
* :class:`ExactLogLikelihood` -- log p(y) in closed form.
* :class:`ImageSampler` -- images drawn from the model itself, with no latent to decode.
* :class:`TrainingLatents` -- latents of the training images: a latent cloud or an
  encoder's means (a scheme has it when it has either; :class:`AnyOf`).
"""
from __future__ import annotations

import tensorflow as tf

from tfgen import capability
from tfgen.capability import AnyOf, Capability
from tfgen.registry import SCHEMES


class DecoderLikelihood(Capability):
    """p_theta(y | z) through ``self.model`` (a :class:`tfgen.models.model.GenerativeModel`)."""

    description = "a decoder with a likelihood p(y | z)"
    model: object


class LatentSampler(Capability):
    """Latents from the prior p(z) (and any sampler the scheme's state supports)."""

    description = "a prior to sample latents from"


class Posterior(Capability):
    """A Gaussian q(z | y) for any batch of images."""

    description = "a posterior q(z | y) (an encoder, or one fitted at test time)"

    def posterior_for(self, images: tf.Tensor, seed: int):
        """q(z | y) as a ``tfd.MultivariateNormalDiag`` over the batch (not differentiated)."""
        raise NotImplementedError


class AmortizedPosterior(Posterior):
    """An encoder: q_phi(z | y) in one network pass."""

    description = "an amortized posterior q(z | y) (an encoder)"

    def posterior(self, images: tf.Tensor, training: bool = False):
        raise NotImplementedError

    def posterior_for(self, images, seed):
        return self.posterior(images)


class LatentCloud(Capability):
    """Latents of the training images as points (what the ``particle_gaussian`` and ``gmm``
    samplers fit), whether the scheme keeps them or draws them when asked."""

    description = "a cloud of training-image latents"

    def latent_cloud(self) -> tf.Tensor:
        """The latents of the training images as points [n, d] (e.g. every particle)."""
        raise NotImplementedError


class PerDatapointLatents(LatentCloud):
    """A :class:`~tfgen.inference.latents.LatentTable` of per-training-image latents: the
    cloud persists, and row m belongs to training image m (tasks that pair latents with
    their images ask for this)."""

    description = "per-datapoint latents"


class LogLikelihood(Capability):
    """An exact or estimated log p(y)."""

    description = "a log-likelihood estimate"

    def log_likelihood_estimate(self, images, seed, num_samples: int) -> tf.Tensor:
        raise NotImplementedError


class ExactLogLikelihood(Capability):
    """log p(y) in closed form (linear-Gaussian models, mixtures, flows, autoregressive models)."""

    description = "an exact log-likelihood"

    def exact_log_likelihood(self, images: tf.Tensor) -> tf.Tensor:
        """log p(y) per image [B], in nats."""
        raise NotImplementedError


class ImageSampler(Capability):
    """Images drawn from the model itself (no latent to decode: mixtures, autoregressive
    models ...)."""

    description = "samples of images from the model itself"

    def sample_images(self, num: int, seed: int, mean: bool = False) -> tf.Tensor:
        """``num`` images [num, H, W, C]; ``mean``: the mean of each draw's component."""
        raise NotImplementedError


class TrainingLatents(Capability, metaclass=AnyOf):
    """Latents of the training images: per-datapoint latents, or the encoder's means."""

    description = "latents of the training images (a latent cloud, or an encoder)"
    members = (LatentCloud, AmortizedPosterior)


def schemes_with(capability_: type[Capability]) -> list[str]:
    """Registered schemes that implement a capability (for error messages; a scheme with
    variants names the variants that do, e.g. "em (model = 'gmm')")."""
    return capability.registered_with(SCHEMES, capability_)


def has(cfg, capability_: type[Capability]) -> bool:
    return capability.has(SCHEMES, cfg.inference, capability_)


def require(cfg, capability_: type[Capability], key: str, needed_by: str, given=...,
            alternative: str = "") -> None:
    """Refuse, at load time, a config whose ``needed_by`` needs what the scheme lacks."""
    capability.require(SCHEMES, cfg.inference, capability_, file=cfg.source_file, key=key,
                       needed_by=needed_by, called="scheme", chosen_by="inference.scheme",
                       given=given, alternative=alternative)
