"""What every inference scheme shares: the interface, optimizers, the compiled-step wrapper.

A scheme owns the state that training adds to the model (an encoder, the
optimizers, a particle cloud ...) and one compiled ``train_step(images,
indices) -> dict of scalar tensors`` ("loss" always among them: the shared
output type the trainer logs, checks for NaN and checkpoints around).
"""
from __future__ import annotations

import tensorflow as tf
import tf_keras as keras

from tfgen.config import Config, TrainConfig
from tfgen.data import DataBundle
from tfgen.inference.elbo import ElboTerms, elbo_terms, importance_log_likelihood
from tfgen.registry import SCHEMES
from tfgen.runtime import compile_step

OPTIMIZERS = {
    "adam": keras.optimizers.Adam,
    "adamw": keras.optimizers.AdamW,
    "rmsprop": keras.optimizers.RMSprop,
    "sgd": keras.optimizers.SGD,
}


def make_optimizer(train: TrainConfig, learning_rate: float | None = None, **kwargs):
    return OPTIMIZERS[train.optimizer](learning_rate=learning_rate or train.learning_rate, **kwargs)


def configured_scheme_has(cfg: Config, capability: str) -> bool:
    """Whether the scheme ``cfg`` names sets a capability flag (e.g. ``has_posterior``)."""
    return getattr(SCHEMES.get(cfg.inference.name).factory, capability)


def schemes_with(capability: str) -> list[str]:
    """Names of the registered schemes that set a capability flag (for error messages)."""
    return [e.name for e in SCHEMES.entries() if getattr(e.factory, capability)]


class Scheme(tf.Module):
    """Base class of inference schemes.

    Capability flags, read at config time by the tasks and samplers that need them:
    ``has_posterior`` (an amortized q(z | y): ELBO, reconstructions, IWAE) and
    ``has_latent_cloud`` (per-datapoint latents, returned by ``latent_cloud()`` as [n, d]).
    """

    has_posterior = True
    has_latent_cloud = False

    def __init__(self, params, model, data: DataBundle, cfg: Config, generator: tf.random.Generator,
                 strategy: tf.distribute.Strategy):
        super().__init__(name=type(self).__name__)
        self.params, self.model, self.data, self.cfg = params, model, data, cfg
        self.generator, self.strategy = generator, strategy
        self.train_step = compile_step(self._train_step, cfg.train.compile)
        self._eval_terms = compile_step(self._eval_terms_fn, cfg.train.compile)
        self._eval_loglik = compile_step(self._eval_loglik_fn, cfg.train.compile)

    def latent_cloud(self) -> tf.Tensor:
        """Per-datapoint latents as [n, d] (schemes with ``has_latent_cloud``)."""
        raise NotImplementedError(f"{type(self).__name__} keeps no per-datapoint latents")

    # ---- to implement
    def _train_step(self, images: tf.Tensor, indices: tf.Tensor) -> dict[str, tf.Tensor]:
        raise NotImplementedError

    def checkpoint_items(self) -> dict:
        """Named trackables beyond the model that a checkpoint must hold."""
        return {}

    def posterior(self, images: tf.Tensor, training: bool = False):
        """q(z | y) as a ``tfd.MultivariateNormalDiag``, or None if the scheme has none."""
        return None

    def after_restore(self) -> None:
        """Re-apply hyper-parameters that a checkpoint also stores (optimizer learning rates),
        so that ``--set`` on resume takes effect."""

    def learning_rate(self) -> float:
        return float(self.cfg.train.learning_rate)

    # ---- shared evaluation, compiled once per scheme
    def _eval_terms_fn(self, images, seed, num_samples: int):
        q = self.posterior(images)
        noise = tf.random.stateless_normal(
            tf.concat([[num_samples], tf.shape(q.loc)], 0), seed, dtype=q.loc.dtype)
        return elbo_terms(self.model, q, images, num_samples, noise=noise)

    def _eval_loglik_fn(self, images, seed, num_samples: int):
        q = self.posterior(images)
        noise = tf.random.stateless_normal(
            tf.concat([[num_samples], tf.shape(q.loc)], 0), seed, dtype=q.loc.dtype)
        return importance_log_likelihood(self.model, q, images, num_samples, noise=noise)

    def elbo_terms(self, images, seed, num_samples: int = 1) -> ElboTerms:
        return self._eval_terms(images, tf.constant(seed, tf.int64), num_samples)

    def log_likelihood_estimate(self, images, seed, num_samples: int) -> tf.Tensor:
        return self._eval_loglik(images, tf.constant(seed, tf.int64), num_samples)

    def reconstruct(self, images) -> tf.Tensor:
        """E[y | z = posterior mean]: the reconstruction shown in figures."""
        return self.model.likelihood.mean(self.model.decode(self.posterior(images).loc))
