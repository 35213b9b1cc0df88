"""The variational autoencoder: an amortized Gaussian encoder q_phi(z | y) trained with the ELBO.

Loss per batch (Kingma & Welling 2014; beta weight: Higgins et al. 2017):

    L(theta, phi) = - 1/B sum_b ( E_q[log p_theta(y_b | z)] - beta KL(q_phi(z | y_b) || p(z)) )

with S reparameterized samples per image (``mc_samples``).
"""
from __future__ import annotations

import dataclasses

import tensorflow as tf

from tfgen.config import Component, field
from tfgen.data import Split
from tfgen.evaluation.metrics import mean_elbo
from tfgen.inference.base import PosteriorEstimates, Scheme, make_optimizer
from tfgen.inference.capabilities import AmortizedPosterior
from tfgen.inference.elbo import elbo_terms, gaussian_posterior, split_gaussian_params
from tfgen.models.model import with_file
from tfgen.models.networks import build_network
from tfgen.registry import SCHEMES


@dataclasses.dataclass
class VAEConfig:
    encoder: Component = field(factory=lambda: Component("conv_encoder"), registry="networks",
                               help="network emitting (mu, log sigma^2) of q(z | y)")
    mc_samples: int = field(1, min=1, max=1000, help="reparameterized samples per image")
    beta: float = field(1.0, min=0.0, help="weight of the KL term (1 = the ELBO)")


@SCHEMES.register("vae", config=VAEConfig)
class VAE(Scheme, AmortizedPosterior, PosteriorEstimates):
    """Amortized variational inference with a Gaussian encoder (seed 001, task 1)."""

    validation_metrics = ("elbo", "reconstruction", "kl", "loss")
    monitor = "loss"  # -ELBO (seed 001 task 1c: early stopping on the negative ELBO)

    def __init__(self, params: VAEConfig, model, data, cfg, generator, strategy):
        d = model.latent_dim
        self.encoder = with_file(cfg, lambda: build_network(params.encoder, (2 * d,), "inference.encoder"))
        self.encoder(tf.zeros([1, *data.image_shape]))
        self.optimizer = make_optimizer(cfg.train)
        self.optimizer.build(model.theta + self.encoder.trainable_variables)
        super().__init__(params, model, data, cfg, generator, strategy)

    def checkpoint_items(self):
        return {"encoder": self.encoder, "optimizer": self.optimizer}

    def after_restore(self):
        self.optimizer.learning_rate.assign(self.cfg.train.learning_rate)

    def validate(self, split: Split, seed: int) -> dict[str, float]:
        terms = mean_elbo(self, split, 500, seed)
        return {**terms, "loss": -terms["elbo"]}

    def posterior(self, images, training=False):
        return gaussian_posterior(*split_gaussian_params(self.encoder(images, training=training)))

    def _train_step(self, images, indices):
        return self.strategy.run(self._replica_step, (images,))

    def _replica_step(self, images):
        images = self.data.transform_batch(images, self.generator)
        variables = self.model.theta + self.encoder.trainable_variables
        with tf.GradientTape() as tape:
            q = self.posterior(images, training=True)
            terms = elbo_terms(self.model, q, images, self.params.mc_samples, self.generator,
                               training=True)
            reconstruction = tf.reduce_mean(terms.reconstruction)
            kl = tf.reduce_mean(terms.kl)
            loss = -(reconstruction - self.params.beta * kl)
        grads = tape.gradient(loss, variables)
        self.optimizer.apply_gradients(zip(grads, variables))
        return {"loss": loss, "elbo": reconstruction - kl, "reconstruction": reconstruction, "kl": kl}
