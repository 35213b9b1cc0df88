"""The generative model p_theta(z, y) = p(z) p_theta(y | z), assembled from config."""
from __future__ import annotations

import contextlib

import tensorflow as tf
import tensorflow_probability as tfp

from tfgen.config import Config
from tfgen.errors import ConfigError
from tfgen.models.likelihoods import Likelihood, build_likelihood
from tfgen.models.networks import build_network
from tfgen.models.priors import build_prior


class GenerativeModel(tf.Module):
    """Prior, decoder network and likelihood; ``log_joint`` is the quantity every scheme uses."""

    def __init__(self, prior, decoder, likelihood: Likelihood, latent_dim: int):
        super().__init__(name="generative_model")
        self.prior, self.decoder, self.likelihood = prior, decoder, likelihood
        self.latent_dim = latent_dim
        self.decoder(tf.zeros([1, latent_dim]))  # build the variables now, under the caller's scope

    @property
    def theta(self) -> list[tf.Variable]:
        """theta: the decoder's, the likelihood's and the prior's trainable variables."""
        return (list(self.decoder.trainable_variables) + list(self.likelihood.trainable_variables)
                + list(self.prior.trainable_variables))

    def decode(self, z: tf.Tensor, training: bool = False) -> tf.Tensor:
        """Decoder output for latents of shape [..., d] (leading dims are flattened and restored).

        Under ``runtime.mixed_precision`` the decoder computes in float16/bfloat16; its output
        is cast back to z's dtype here, so the likelihood and every log density stay float32."""
        lead = tf.shape(z)[:-1]
        out = self.decoder(tf.reshape(z, [-1, self.latent_dim]), training=training)
        out = tf.cast(out, z.dtype)
        return tf.reshape(out, tf.concat([lead, tf.shape(out)[1:]], axis=0))

    def log_likelihood(self, z: tf.Tensor, images: tf.Tensor, training: bool = False) -> tf.Tensor:
        """log p_theta(y | z); z: [..., B, d], images: [B, H, W, C] -> [..., B]."""
        return self.likelihood.log_prob(self.decode(z, training), images)

    def log_likelihood_observed(self, z: tf.Tensor, images: tf.Tensor, observed: tf.Tensor) -> tf.Tensor:
        """log p_theta(y_O | z) over the observed pixels only (``observed`` [B, H, W]) -> [..., B]."""
        return self.likelihood.log_prob_observed(self.decode(z), images, observed)

    def log_prior(self, z: tf.Tensor) -> tf.Tensor:
        return self.prior.distribution(z.dtype).log_prob(z)

    def kl_to_prior(self, q, z: tf.Tensor) -> tf.Tensor:
        """KL(q || p) per image [B] for a Gaussian q: in closed form when the prior has one
        (the standard normal; Kingma & Welling 2014, appendix B), else the Monte Carlo estimate
        mean_s [log q(z_s) - log p(z_s)] at the ELBO's own samples z [S, B, d]."""
        if self.prior.analytic_kl:
            return tfp.distributions.kl_divergence(q, self.prior.distribution(q.loc.dtype))
        return tf.reduce_mean(q.log_prob(z) - self.log_prior(z), axis=0)

    def log_joint(self, z: tf.Tensor, images: tf.Tensor, training: bool = False) -> tf.Tensor:
        """log p_theta(z, y) = log p(z) + log p_theta(y | z)  (Kuntz et al. 2023, eq. (1))."""
        return self.log_prior(z) + self.log_likelihood(z, images, training)


def build_model(cfg: Config, image_shape, pixel_range) -> GenerativeModel:
    prior = with_file(cfg, lambda: build_prior(cfg.model.prior))  # its coupling networks
    likelihood = build_likelihood(cfg.model.likelihood, image_shape, pixel_range)
    out_shape = (*image_shape[:2], likelihood.output_channels())
    with decoder_precision(cfg.runtime.mixed_precision):
        decoder = with_file(cfg, lambda: build_network(cfg.model.decoder, out_shape, "model.decoder"))
        # the decoder is built here (on z): a `layers` network checks its shapes then
        return with_file(cfg, lambda: GenerativeModel(prior, decoder, likelihood, prior.dim))


@contextlib.contextmanager
def decoder_precision(policy: str):
    """Build the decoder's layers under the Keras mixed-precision policy ``policy``: float32
    variables, float16/bfloat16 computation (Micikevicius et al. 2018).  Only the decoder:
    the encoder, the likelihood, the priors, the latents and the optimizer state stay float32."""
    import tf_keras as keras

    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(policy)
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)


def with_file(cfg: Config, build):
    """Build-time config errors (e.g. a shape mismatch) get the config file's name."""
    try:
        return build()
    except ConfigError as err:
        if err.file is None:
            raise err.in_file(cfg.source_file) from None
        raise
