"""Per-datapoint variational inference (svi): a diagonal Gaussian q(z | psi_m) for every
training image, trained with the decoder, without an encoder.

Task 4a of the 2AMU20 VAE assignment fits q(z | psi) = N(mu, diag(sigma^2)), psi = (mu, log
sigma^2), to one image by maximising its ELBO with the decoder fixed.  This scheme keeps such a psi_m for
every training image m (rows [M, 2d] of the shared per-datapoint table) and trains theta at
the same time, on the sum of the per-image ELBOs, a lower bound on log p_theta(y_1, ..., y_M):

    ELBO_m(theta, psi_m) = E_{q(z | psi_m)}[log p_theta(y_m | z)] - KL(q(z | psi_m) || p(z))

(Kingma & Welling 2014, eq. (3), with a free q per image instead of an amortized one;
Hoffman et al. 2013 for stochastic VI with local and global parameters).  The expectation
is a reparameterized average over ``mc_samples`` draws z = mu + sigma * eps, the KL is in
closed form (Kingma & Welling 2014, appendix B).  The noise eps comes from the step's seed,
drawn from the run's generator each step (:class:`tfgen.distribute.ReplicaBatch`), whose
state every checkpoint holds with the table, its optimizer state and theta's
optimizer, so a resumed run continues exactly.

Each step, for a batch B of b images (:mod:`tfgen.inference.per_datapoint`):

    theta  down  grad_theta  -1/b sum_{m in B} ELBO_m     (train.optimizer, train.learning_rate)
    psi_m  down  grad_{psi_m} -ELBO_m  = b grad_{psi_m} (-1/b sum_{m' in B} ELBO_m'),  m in B
                                                           (latent_optimizer)

so each psi_m follows its own ELBO's gradient, not the batch mean's 1/b share of it, and
its learning rate does not depend on the batch size (the local step of Hoffman et al. 2013,
Algorithm 1; the 2AMU20 VAE assignment's task 4a: SGD on one image's psi).

Initial psi_m: mu_m ~ N(0, init_scale^2 I) (default: the prior), log sigma^2_m =
``init_log_variance`` (default -4, sigma = 0.14: the decoder sees distinct codes per image
from the first step, instead of codes drowned in unit noise, which invites it to ignore z).

The means mu_m are the per-datapoint latents (``latent_cloud``) of the
``particle_gaussian`` sampler.  Validation (``val_elbo``, ``val_reconstruction``,
``val_kl``, ``val_loss`` = -ELBO) fits q to the first ``validation_images`` validation
images at test time (``posterior_fit`` with ``validation_fit_steps`` steps), as the ``elbo``
task does on the test split (with ``posterior_fit``'s steps).
"""
from __future__ import annotations

import dataclasses

import tensorflow as tf

from tfgen.distribute import SALT_REPARAMETERIZE
from tfgen.data import Split
from tfgen.inference.elbo import elbo_terms, gaussian_posterior
from tfgen.inference.per_datapoint import PerDatapointConfig, PerDatapointScheme
from tfgen.registry import SCHEMES
from tfgen.schema import setting


@dataclasses.dataclass
class SVIConfig(PerDatapointConfig):
    mc_samples: int = setting(1, at_least=1, at_most=1000, help="reparameterized samples per image "
                                                                "and step")
    init_log_variance: float = setting(-4.0, at_least=-20.0, at_most=5.0,
                                       help="initial log sigma^2 of every q(z | psi_m)")


@SCHEMES.register("svi", config=SVIConfig)
class SVI(PerDatapointScheme):
    """Per-datapoint variational inference: a Gaussian q(z | psi_m) per training image, no encoder."""

    validation_metrics = ("elbo", "reconstruction", "kl", "loss")
    monitor = "loss"  # -ELBO on the validation images
    table_name = "variational_params"

    @classmethod
    def decoder_passes(cls, params: SVIConfig):
        return params.mc_samples, ("inference.mc_samples",)

    def initial_rows(self, params: SVIConfig, model, seed):
        mean = self.initial_latents(params, model, seed)
        return tf.concat([mean, tf.fill(tf.shape(mean), params.init_log_variance)], axis=-1)

    def latent_cloud(self) -> tf.Tensor:
        """The means mu_m, [M, d]."""
        return self.latents.values[:, : self.model.latent_dim]

    def objective(self, rows, images, batch):
        """-ELBO_m per image for rows psi = (mu, log sigma^2) [b, 2d]."""
        mean, log_variance = tf.split(rows, 2, axis=-1)
        noise = tf.transpose(batch.normal([self.params.mc_samples, self.model.latent_dim],
                                          SALT_REPARAMETERIZE, mean.dtype), [1, 0, 2])
        terms = elbo_terms(self.model, gaussian_posterior(mean, log_variance), images,
                           self.params.mc_samples, noise=noise, training=True)
        reconstruction, kl = tf.reduce_mean(terms.reconstruction), tf.reduce_mean(terms.kl)
        return -terms.elbo, {"elbo": reconstruction - kl, "reconstruction": reconstruction,
                             "kl": kl}

    def validate(self, split: Split, seed: int) -> dict[str, float]:
        """The ELBO terms at q fitted to the validation images (one sample per image)."""
        images = self.validation_images(split)
        fitted = self.validation_fitter().fit(images, seed=seed)
        terms_at = self._compiled("terms", self._terms_fn)
        elbo, reconstruction, kl = self.in_chunks(
            lambda i, y, mean, scale: terms_at(y, mean, scale, tf.constant([seed, i], tf.int64), 1),
            images, fitted.mean, fitted.scale)
        return {"elbo": float(elbo.mean()), "reconstruction": float(reconstruction.mean()),
                "kl": float(kl.mean()), "loss": -float(elbo.mean())}
