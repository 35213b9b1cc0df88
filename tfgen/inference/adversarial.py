"""Adversarial schemes: the lecture's first way to learn a generative model, avoiding the
integral (Mairal & Alameda-Pineda 2019-2020, GANs).

The generator is the config's own model: z ~ p(z) (``[model.prior]``), decoded by
``[model.decoder]``, and the image is the likelihood's mean E[y | z] (``[model.likelihood]``:
e.g. a Normal with ``mean_activation = "tanh"`` for [-1, 1] pixels, or a Bernoulli's
probabilities).  The discriminator is ``[model.discriminator]``, any vector-output network of
the registry, with one output.  The losses are :mod:`tfgen.inference.adversarial_losses`.

* ``scheme = "gan"`` (Goodfellow et al. 2014) with ``loss``:
  ``minimax`` (the original saturating G loss), ``non_saturating`` (DCGAN, Radford et al.
  2016), ``hinge`` (Lim & Ye 2017; Miyato et al. 2018) or ``wgan_gp`` (the Wasserstein critic
  with the gradient penalty lambda E[(||grad D(x_hat)|| - 1)^2] on random interpolates,
  Gulrajani et al. 2017, Algorithm 1).
* ``scheme = "bigan"`` (Donahue, Kraehenbuehl & Darrell 2017): an encoder E(x) (``[inference.
  encoder]``) and a joint discriminator D(x, z) (the image network of ``[model.discriminator]``
  for x, a small MLP for z, an MLP on both); D separates (x, E(x)) from (G(z), z), while G and
  E are trained together to fool it.  E gives latent inference: reconstructions G(E(x)), the
  latent scatter and inpainting through the encoder.  Its q(z | x) is N(E(x), s^2 I) with the
  fixed ``posterior_scale`` s, a valid proposal for the ELBO and importance-sampled
  log-likelihood bounds under the generator's likelihood.

One training step is one compiled function: a discriminator (critic) update on the batch, and
every ``n_critic``-th step also a generator update (Gulrajani et al.: 5 critic iterations per
generator iteration), with fresh batches for each critic step.  The step counter, both
optimizers' slots and the run's generator are checkpointed, so a resumed run continues
exactly.  Both losses are logged (``discriminator_loss``, ``generator_loss``; ``loss`` is
the discriminator's).  Noise (z, the interpolation epsilon) comes from the step's seed per
image (:class:`tfgen.distribute.ReplicaBatch`).

CycleGAN is not here: it needs two unpaired image domains, and no such data set is at hand.
"""
from __future__ import annotations

import dataclasses
from typing import Literal

import tensorflow as tf
import tf_keras as keras

from tfgen.distribute import ReplicaBatch, transform_noise
from tfgen.errors import ConfigError
from tfgen.inference.adversarial_losses import LOSSES, gradient_penalty
from tfgen.inference.base import PosteriorEstimates, Scheme
from tfgen.inference.capabilities import AmortizedPosterior, DecoderLikelihood, LatentSampler
from tfgen.inference.elbo import gaussian_posterior_from_scale
from tfgen.models.model import with_file
from tfgen.models.networks import build_network
from tfgen.registry import SCHEMES
from tfgen.schema import Component, setting

SALT_Z_DISCRIMINATOR = 11
SALT_Z_GENERATOR = 12
SALT_EPSILON = 13


@dataclasses.dataclass
class GANConfig:
    loss: Literal["minimax", "non_saturating", "hinge", "wgan_gp"] = setting(
        "non_saturating", help="minimax (Goodfellow et al.), non_saturating (DCGAN), hinge, "
                               "wgan_gp (Wasserstein critic + gradient penalty)")
    n_critic: int = setting(1, at_least=1, at_most=100, help="discriminator steps per generator "
                                                             "step (WGAN-GP: 5)")
    gradient_penalty: float = setting(10.0, at_least=0.0, help="lambda of the gradient penalty "
                                                               "(wgan_gp; Gulrajani et al.: 10)")
    discriminator_learning_rate: float = setting(2e-4, above=0.0, help="the generator's is "
                                                                       "train.learning_rate")
    beta1: float = setting(0.5, at_least=0.0, at_most=0.9999, help="Adam's beta_1 for both players "
                                                                   "(DCGAN 0.5; WGAN-GP 0.0)")
    beta2: float = setting(0.999, at_least=0.0, at_most=0.999999, help="Adam's beta_2 (WGAN-GP "
                                                                       "0.9)")

    def check(self, cfg):
        if self.n_critic > 1 and cfg.runtime.strategy != "default":
            raise ConfigError(cfg.source_file, "inference.n_critic", "more than one critic step "
                              "per generator step runs on one replica only (the generator's "
                              "optimizer step would sit inside control flow, where "
                              "tf.distribute cannot all-reduce)", self.n_critic,
                              "1, or runtime.strategy = 'default'")
        if cfg.train.optimizer != "adam":
            raise ConfigError(cfg.source_file, "train.optimizer", "the adversarial schemes use "
                              "Adam for both players (beta1, beta2 in [inference])",
                              cfg.train.optimizer, "'adam'")


@dataclasses.dataclass
class BiGANConfig(GANConfig):
    #: keys that size checkpointed state: a resume may not change them (config.fixed_on_resume)
    fixed_on_resume = ("joint_hidden", "image_features")  # D's (the encoder: a network)

    encoder: Component = setting(factory=lambda: Component("conv_encoder"), registry="networks",
                                 help="E(x) -> z, deterministic (Donahue et al. 2017)")
    joint_hidden: int = setting(256, at_least=1, at_most=65536, help="width of D's z branch and "
                                                                     "joint layers")
    image_features: int = setting(256, at_least=1, at_most=65536, help="features of x that D's "
                                                                       "image network emits")
    posterior_scale: float = setting(0.1, above=0.0, at_most=10.0, help="s of q(z | x) = N(E(x), "
                                                                        "s^2 I) for the ELBO/IWAE "
                                                                        "tasks")


class Adversarial(Scheme, DecoderLikelihood, LatentSampler):
    """What the GAN and the BiGAN share: the players' optimizers, the n_critic schedule."""

    validation_metrics = ()
    monitor = "loss"
    default_evaluations = ({"task": "samples", "sampler": "prior"}, "curves")

    def __init__(self, params, model, data, cfg, generator, strategy):
        super().__init__(params, model, data, cfg, generator, strategy)
        self.loss_fn = LOSSES[params.loss]
        self.steps = tf.Variable(0, dtype=tf.int64, trainable=False, name="adversarial_steps")
        self.last_generator_loss = tf.Variable(0.0, trainable=False, name="last_generator_loss",
                                               aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
        adam = lambda lr: keras.optimizers.Adam(lr, beta_1=params.beta1, beta_2=params.beta2)
        self.generator_optimizer = adam(cfg.train.learning_rate)
        self.discriminator_optimizer = adam(params.discriminator_learning_rate)

    def build_optimizers(self):
        self.generator_optimizer.build(self.generator_variables())
        self.discriminator_optimizer.build(self.discriminator_variables())

    def checkpoint_items(self):
        return {"discriminator": self.discriminator_module(), "adversarial_steps": self.steps,
                "generator_optimizer": self.generator_optimizer,
                "discriminator_optimizer": self.discriminator_optimizer,
                "last_generator_loss": self.last_generator_loss, **self.extra_items()}

    def extra_items(self) -> dict:
        return {}

    def after_restore(self):
        self.generator_optimizer.learning_rate.assign(self.cfg.train.learning_rate)
        self.discriminator_optimizer.learning_rate.assign(self.params.discriminator_learning_rate)

    # ---- to implement
    def generator_variables(self) -> list:
        raise NotImplementedError

    def discriminator_variables(self) -> list:
        raise NotImplementedError

    def discriminator_module(self):
        raise NotImplementedError

    def real_and_fake(self, images, z, training: bool):
        """(real, fake): the discriminator's inputs (tensors, or (x, z) pairs)."""
        raise NotImplementedError

    def discriminate(self, inputs, training: bool) -> tf.Tensor:
        raise NotImplementedError

    # ---- the pieces
    def generate(self, z: tf.Tensor, training: bool = False) -> tf.Tensor:
        """G(z) = E[y | z] under the likelihood: the generator's image."""
        return self.model.likelihood.mean(self.model.decode(z, training=training))

    def generator_loss(self, real_logits, fake_logits) -> tf.Tensor:
        """What the generator side minimises (the GAN's: the loss's generator term)."""
        return self.loss_fn(real_logits, fake_logits).generator

    def _losses(self, images, z, batch: ReplicaBatch, training: bool):
        real, fake = self.real_and_fake(images, z, training)
        real_logits, fake_logits = self.discriminate(real, training), self.discriminate(fake, training)
        g_loss = self.generator_loss(real_logits, fake_logits)
        d_loss = self.loss_fn(real_logits, fake_logits).discriminator
        if self.params.loss == "wgan_gp" and self.params.gradient_penalty > 0:
            epsilon = batch.uniform([], SALT_EPSILON)
            penalty = gradient_penalty(lambda x: self.discriminate(x, training),
                                       real, fake, epsilon)
            d_loss = d_loss + self.params.gradient_penalty * penalty
        return g_loss, d_loss

    def step_on_replica(self, images, indices, batch):
        images = self.data.transform_batch(images, transform_noise(batch, images))
        d = self.model.latent_dim
        # the replica's share of the global batch mean (tfgen.distribute)
        share = tf.cast(batch.size, tf.float32) / tf.cast(batch.global_size, tf.float32)
        z = batch.normal([d], SALT_Z_DISCRIMINATOR)
        d_vars = self.discriminator_variables()
        with tf.GradientTape() as tape:
            _, d_loss = self._losses(images, z, batch, training=True)
            scaled = d_loss * share
        self.discriminator_optimizer.apply_gradients(zip(tape.gradient(scaled, d_vars), d_vars))
        step = self.steps.assign_add(1)

        def generator_update():
            g_vars = self.generator_variables()
            z_g = batch.normal([d], SALT_Z_GENERATOR)
            with tf.GradientTape() as g_tape:
                g_loss, _ = self._losses(images, z_g, batch, training=True)
                g_scaled = g_loss * share
            grads = g_tape.gradient(g_scaled, g_vars, unconnected_gradients="zero")
            self.generator_optimizer.apply_gradients(zip(grads, g_vars))
            return g_loss

        if self.params.n_critic == 1:
            g_loss = generator_update()
        else:  # one replica only (GANConfig.check): an optimizer step inside tf.cond would
            # need its all-reduce inside control flow, which tf.distribute does not support
            g_loss = tf.cond(step % self.params.n_critic == 0, generator_update,
                             lambda: tf.identity(self.last_generator_loss))
            self.last_generator_loss.assign(g_loss)
        return {"loss": d_loss, "discriminator_loss": d_loss, "generator_loss": g_loss}

    def learning_rate(self) -> float:
        return float(self.cfg.train.learning_rate)


@SCHEMES.register("gan", config=GANConfig)
class GAN(Adversarial):
    """A generator z -> E[y | z] and a discriminator D(y), trained adversarially."""

    def __init__(self, params: GANConfig, model, data, cfg, generator, strategy):
        super().__init__(params, model, data, cfg, generator, strategy)
        self.discriminator = with_file(cfg, lambda: build_network(
            cfg.model.discriminator, (1,), "model.discriminator"))
        with_file(cfg, lambda: self.discriminator(tf.zeros([1, *data.image_shape])))
        self.build_optimizers()

    def generator_variables(self):
        return self.model.theta

    def discriminator_variables(self):
        return self.discriminator.trainable_variables

    def discriminator_module(self):
        return self.discriminator

    def real_and_fake(self, images, z, training):
        return images, self.generate(z, training)

    def discriminate(self, inputs, training):
        return self.discriminator(inputs, training=training)[:, 0]


class JointDiscriminator(keras.layers.Layer):
    """D(x, z) of the BiGAN: image features from the registry network, a z branch, and a joint
    MLP on their concatenation (Donahue et al. 2017, their MNIST D: leaky ReLU layers)."""

    def __init__(self, image_network, hidden: int, **kwargs):
        super().__init__(**kwargs)
        self.image_network = image_network
        self.z_branch = keras.layers.Dense(hidden, activation=tf.nn.leaky_relu)
        self.joint = keras.layers.Dense(hidden, activation=tf.nn.leaky_relu)
        self.out = keras.layers.Dense(1)

    def call(self, inputs, training=False):
        x, z = inputs
        features = tf.nn.leaky_relu(self.image_network(x, training=training))
        h = tf.concat([features, self.z_branch(z)], axis=-1)
        return self.out(self.joint(h))[:, 0]


@SCHEMES.register("bigan", config=BiGANConfig)
class BiGAN(Adversarial, AmortizedPosterior, PosteriorEstimates):
    """A BiGAN: generator G, encoder E and a joint discriminator D(x, z)."""

    default_evaluations = ({"task": "samples", "sampler": "prior"}, "reconstructions",
                           "curves")

    def __init__(self, params: BiGANConfig, model, data, cfg, generator, strategy):
        super().__init__(params, model, data, cfg, generator, strategy)
        d = model.latent_dim
        self.encoder = with_file(cfg, lambda: build_network(params.encoder, (d,),
                                                            "inference.encoder"))
        with_file(cfg, lambda: self.encoder(tf.zeros([1, *data.image_shape])))
        image_net = with_file(cfg, lambda: build_network(
            cfg.model.discriminator, (params.image_features,), "model.discriminator"))
        self.discriminator = JointDiscriminator(image_net, params.joint_hidden)
        with_file(cfg, lambda: self.discriminator((tf.zeros([1, *data.image_shape]),
                                                   tf.zeros([1, d]))))
        self.build_optimizers()

    def generator_variables(self):
        return self.model.theta + self.encoder.trainable_variables

    def discriminator_variables(self):
        return self.discriminator.trainable_variables

    def discriminator_module(self):
        return self.discriminator

    def extra_items(self):
        return {"encoder": self.encoder}

    def real_and_fake(self, images, z, training):
        return (images, self.encoder(images, training=training)), (self.generate(z, training), z)

    def discriminate(self, inputs, training):
        return self.discriminator(inputs, training=training)

    def generator_loss(self, real_logits, fake_logits):
        """G and E fool D on both sides: D's loss with the pairs' roles swapped (for minimax,
        minus D's loss: the saturating game V itself), so E is trained through the real pairs
        (x, E(x)) and G through the fake ones (Donahue et al. 2017, section 3)."""
        if self.params.loss == "minimax":
            return -self.loss_fn(real_logits, fake_logits).discriminator
        return self.loss_fn(fake_logits, real_logits).discriminator

    def posterior(self, images, training=False):
        loc = self.encoder(images, training=training)
        return gaussian_posterior_from_scale(
            loc, tf.fill(tf.shape(loc), tf.constant(self.params.posterior_scale, loc.dtype)))
