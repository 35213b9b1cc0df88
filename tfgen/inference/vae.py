"""The variational autoencoder: an amortized Gaussian encoder q_phi(z | y) trained with the ELBO.

Loss per batch (Kingma & Welling 2014; beta weight: Higgins et al. 2017):

    L(theta, phi) = - 1/B sum_b ( E_q[log p_theta(y_b | z)] - beta KL(q_phi(z | y_b) || p(z)) )

with S reparameterized samples per image (``mc_samples``).
"""
from __future__ import annotations

import dataclasses

import tensorflow as tf

from tfgen.data import Split
from tfgen.distribute import SALT_REPARAMETERIZE, transform_noise
from tfgen.inference.base import (PosteriorEstimates, Scheme, make_optimizer, scaled_gradients,
                                  with_loss_scaling)
from tfgen.inference.capabilities import AmortizedPosterior
from tfgen.inference.elbo import elbo_terms, gaussian_posterior, split_gaussian_params
from tfgen.inference.estimators import mean_elbo
from tfgen.models.model import with_file
from tfgen.models.networks import build_network
from tfgen.registry import SCHEMES
from tfgen.schema import Component, setting


@dataclasses.dataclass
class VAEConfig:
    encoder: Component = setting(factory=lambda: Component("conv_encoder"), registry="networks",
                                 help="network emitting (mu, log sigma^2) of q(z | y)")
    mc_samples: int = setting(1, at_least=1, at_most=1000, help="reparameterized samples per image")
    beta: float = setting(1.0, at_least=0.0, help="weight of the KL term (1 = the ELBO)")


@SCHEMES.register("vae", config=VAEConfig)
class VAE(Scheme, AmortizedPosterior, PosteriorEstimates):
    """Amortized variational inference with a Gaussian encoder (the 2AMU20 VAE assignment, task 1)."""

    validation_metrics = ("elbo", "reconstruction", "kl", "loss")
    # -ELBO: the 2AMU20 VAE assignment's task 1c stops early on the negative ELBO
    monitor = "loss"

    @classmethod
    def decoder_passes(cls, params: VAEConfig):
        return params.mc_samples, ("inference.mc_samples",)

    def __init__(self, params: VAEConfig, model, data, cfg, generator, strategy):
        super().__init__(params, model, data, cfg, generator, strategy)
        d = model.latent_dim
        self.encoder = with_file(cfg, lambda: build_network(params.encoder, (2 * d,), "inference.encoder"))
        with_file(cfg, lambda: self.encoder(tf.zeros([1, *data.image_shape])))  # builds it
        if model.prior.needs_encoder:  # the VampPrior: a mixture of q at pseudo-inputs
            model.prior.attach_encoder(self.encoder, data.image_shape, data.pixel_range,
                                       split_gaussian_params)
        self.optimizer = with_loss_scaling(make_optimizer(cfg.train), cfg)
        self.optimizer.build(model.theta + self.encoder.trainable_variables)

    def checkpoint_items(self):
        return {"encoder": self.encoder, "optimizer": self.optimizer}

    def after_restore(self):
        self.optimizer.learning_rate.assign(self.cfg.train.learning_rate)

    def validate(self, split: Split, seed: int) -> dict[str, float]:
        terms = mean_elbo(self, split, 500, seed)
        return {**terms, "loss": -terms["elbo"]}

    def posterior(self, images, training=False):
        return gaussian_posterior(*split_gaussian_params(self.encoder(images, training=training)))

    def step_on_replica(self, images, indices, batch):
        images = self.data.transform_batch(images, transform_noise(batch, images))
        variables = self.model.theta + self.encoder.trainable_variables
        # [S, b, d] reparameterization noise: this replica's images' share of the batch's
        noise = tf.transpose(batch.normal([self.params.mc_samples, self.model.latent_dim],
                                          SALT_REPARAMETERIZE), [1, 0, 2])
        with tf.GradientTape() as tape:
            q = self.posterior(images, training=True)
            terms = elbo_terms(self.model, q, images, self.params.mc_samples, noise=noise,
                               training=True)
            per_image = -(terms.reconstruction - self.params.beta * terms.kl)
            scaled_loss = tf.reduce_sum(per_image) * self.gradient_scale(batch)
        grads = scaled_gradients(tape, scaled_loss, variables, self.optimizer)
        self.optimizer.apply_gradients(zip(grads, variables))
        reconstruction = tf.reduce_mean(terms.reconstruction)
        kl = tf.reduce_mean(terms.kl)
        return {"loss": -(reconstruction - self.params.beta * kl), "elbo": reconstruction - kl,
                "reconstruction": reconstruction, "kl": kl}
