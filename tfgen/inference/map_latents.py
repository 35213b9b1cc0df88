"""MAP / MLE latents (scheme ``map``): a point latent z_m per training image, trained with the
decoder, without an encoder.

Every training image m has a point z_m (rows [M, d] of the shared per-datapoint table), and
theta and the batch's z_m minimise together

    f_m(theta, z_m) = -(lambda log p(z_m) + log p_theta(y_m | z_m)),   lambda = prior_weight,

lambda = 1: the joint maximum a posteriori of latents and theta; lambda = 0: the latents
that maximise the likelihood, eq. (4) of Kuntz et al. (2023) (there for a corrupted image with theta
fixed; here for every training image while theta learns, as GLO does with a squared error,
Bojanowski et al. 2018).  Each step, for a batch B of b images
(:mod:`tfgen.inference.per_datapoint`): theta down grad_theta 1/b sum_{m in B} f_m
(``train.optimizer``), each z_m, m in B, down its own grad_{z_m} f_m (``latent_optimizer``).

Neither is maximum likelihood for theta: a point estimate ignores the posterior's volume.
On a linear-Gaussian model (tested), lambda = 0 is PCA (the rank-d least-squares fit,
Eckart & Young 1936) and each z_m the least-squares solution for its image; lambda = 1 makes
each z_m the posterior mode for the current theta, and the joint objective keeps improving as
the decoder's scale grows and the z's shrink (min over z of f_m is 1/2 r^T (W W^T + s^2 I)^-1 r
for the residual r = y_m - b: no log-determinant holds W back), which the prior weight only
slows.

Validation (``val_loss``, ``val_log_likelihood``, ``val_log_prior``; the training step
reports the same three at the table's latents): the first ``validation_images`` validation
images get their z* fitted at test time with theta fixed, by the ``map`` method of
:mod:`tfgen.inference.fitting` with this scheme's ``prior_weight``, ``validation_fit_steps``
steps from z ~ N(0, I) (see :meth:`MAP.validation_fit`) and the optimizer and batch size of
the ``posterior_fit`` table; the metrics are f(z*) (nats per image), log p_theta(y | z*) and
log p(z*).
"""
from __future__ import annotations

import dataclasses

import tensorflow as tf

from tfgen.data import Split
from tfgen.inference.per_datapoint import PerDatapointConfig, PerDatapointScheme
from tfgen.registry import SCHEMES
from tfgen.schema import setting


@dataclasses.dataclass
class MAPConfig(PerDatapointConfig):
    prior_weight: float = setting(1.0, at_least=0.0, at_most=1e6,
                                  help="lambda in lambda log p(z) + log p(y | z): 1 = MAP, 0 = "
                                       "maximum likelihood of the latents (Kuntz et al. 2023, eq. "
                                       "(4))")


@SCHEMES.register("map", config=MAPConfig)
class MAP(PerDatapointScheme):
    """Point latents per training image: maximum a posteriori (or likelihood), no encoder."""

    validation_metrics = ("loss", "log_likelihood", "log_prior")
    monitor = "loss"  # -(lambda log p(z*) + log p(y | z*)) on the validation images
    table_name = "point_latents"

    def initial_rows(self, params: MAPConfig, model, seed):
        return self.initial_latents(params, model, seed)

    def latent_cloud(self) -> tf.Tensor:
        """The points z_m, [M, d]."""
        return tf.convert_to_tensor(self.latents.values)

    def objective(self, rows, images, batch):
        """f_m = -(lambda log p(z_m) + log p_theta(y_m | z_m)) per image for rows z [b, d]."""
        log_likelihood = self.model.log_likelihood(rows, images, training=True)
        log_prior = self.model.log_prior(rows)
        per_image = -(self.params.prior_weight * log_prior + log_likelihood)
        return per_image, {"log_likelihood": tf.reduce_mean(log_likelihood),
                           "log_prior": tf.reduce_mean(log_prior)}

    # ------------------------------------------------------------------ validation
    def validation_fit(self) -> dict:
        """z* of new images: method map with this scheme's prior_weight, from z ~ N(0, I).

        Not from z = 0: a decoder trained on point latents, which sit on the prior's shell
        (|z| ~ sqrt(d)), can be flat around the origin (every ReLU of its first layer off);
        measured on map_mnist after 14 epochs, the gradient of log p(y | z) is exactly 0 for
        |z| <= 1e-3, and a fit from z = 0 never moves."""
        return {"method": "map", "prior_weight": self.params.prior_weight, "init": "random"}

    def _terms_at(self, z, images):
        """(log p_theta(y | z), log p(z)) per image, decoder in inference mode."""
        return self.model.log_likelihood(z, images), self.model.log_prior(z)

    def validate(self, split: Split, seed: int) -> dict[str, float]:
        images = self.validation_images(split)
        fitted = self.validation_fitter().fit(images, seed=seed)
        terms_at = self._compiled("map_terms", self._terms_at)
        log_likelihood, log_prior = self.in_chunks(lambda i, z, y: terms_at(z, y), fitted.mean, images)
        loss = -(self.params.prior_weight * log_prior + log_likelihood)
        return {"loss": float(loss.mean()), "log_likelihood": float(log_likelihood.mean()),
                "log_prior": float(log_prior.mean())}
