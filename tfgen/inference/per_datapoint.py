"""What the encoder-free schemes with one row of latent state per training image share (svi, map).

Every training image m has its own row r_m in a
:class:`~tfgen.inference.latents.LatentTable` (svi: psi_m = (mu_m, log sigma^2_m); map: a
point z_m), with an optimizer of its own (``latent_optimizer``: Adam or SGD per row, its
moments and per-row step counts beside the rows); theta has ``train.optimizer`` and
``train.learning_rate``.  There is no encoder.  A scheme defines a per-image objective
f_m(theta, r_m) to minimise (svi: -ELBO_m; map: -(lambda log p(z_m) + log p_theta(y_m | z_m))),
and each step, for a batch B of b images, updates theta and the batch's rows together from
one gradient tape, in one compiled function:

    theta <- optimizer step down  grad_theta L,   L = 1/b sum_{m in B} f_m(theta, r_m)
    r_m   <- row optimizer step down  grad_{r_m} f_m = b grad_{r_m} L,   for m in B.

On R replicas (:mod:`tfgen.distribute`) the table is sharded by rows, each replica gets the
batch's images whose rows it holds, and L is the global batch's mean (each replica's sum
divided by the global b; the optimizer sums the replicas' gradients).

Gradient scale.  theta's loss is the batch mean, the usual minibatch estimate of
1/M sum_m f_m.  A row r_m enters only its own term of that mean, so grad_{r_m} L is
(1/b) grad f_m: stepping down it would make the rows' effective learning rate shrink as
the batch grows.  Each row instead follows the gradient of its own objective, b grad_{r_m} L,
as the local step of stochastic variational inference does (Hoffman, Blei, Wang & Paisley
2013, Algorithm 1: local parameters are fitted to their own data point, the global ones
follow the rescaled minibatch gradient) and as task 4a of the 2AMU20 VAE assignment fits psi to
one image with SGD at lr 1e-3.  So ``latent_optimizer.learning_rate`` means the same at any batch size
and the same as in test-time fitting (:mod:`tfgen.inference.fitting`, which sums the
per-image objectives).  (Adam is nearly invariant to a constant gradient scale anyway; for
SGD the factor matters.)  With batch norm in the decoder, training mode couples the images
of a batch through the batch statistics, so grad f_m also carries 1/b-sized terms from
the other images, as it does for the VAE's encoder.

A row is stepped only when its image is in the batch: once per epoch, and Adam's first
steps move every coordinate by about the learning rate.  Rows therefore need a much larger
learning rate than theta's: the default 0.5 (measured on 50k binarized MNIST images,
conv_decoder, d = 16: after 9 epochs svi's training -ELBO was 150 nats with 0.5 and 204 with
0.1; map's objective after 8 epochs 139 against 202).

Initial rows: latents drawn from N(0, init_scale^2 I) (init_scale = 1: from the prior, as
PGA's particles are; GLO, Bojanowski et al. 2018, also starts from random codes), from a
stateless seed drawn from the run's generator (:func:`tfgen.inference.kernels.seeds_from`),
so they are reproducible from ``experiment.seed``; a resumed run restores them from the
checkpoint.

At test time the scheme has a posterior q(z | y) for any image through
:class:`~tfgen.inference.fitting.FittedPosterior` (the ``posterior_fit`` table, method svi):
the ``elbo``, ``log_likelihood`` and ``reconstructions`` tasks work, and the rows' latents
(svi's means, map's points) feed the ``particle_gaussian`` sampler.  Validation fits the
first ``validation_images`` validation images each epoch with the settings of
``posterior_fit`` but only ``validation_fit_steps`` steps (about 6 s per epoch for 200
images and the conv decoder on 2 busy cores), a cheap, consistent signal for early stopping;
the evaluation tasks get ``posterior_fit``'s own steps (:func:`default_posterior_fit`).
"""
from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow as tf

from tfgen import figures
from tfgen.distribute import ReplicaBatch, transform_noise
from tfgen.footprint import MemoryTerms, Term, latent_dim
from tfgen.inference import kernels
from tfgen.inference.base import Scheme, make_optimizer, scaled_gradients, with_loss_scaling
from tfgen.inference.capabilities import PerDatapointLatents
from tfgen.inference.fitting import FitConfig, FittedPosterior, LatentFitter, check_posterior_fit
from tfgen.inference.latents import LatentOptimizerConfig, LatentTable
from tfgen.memory import FLOAT
from tfgen.schema import setting


def default_posterior_fit() -> FitConfig:
    """Test-time svi settings: start at the prior (mu = 0, log sigma^2 = 0: KL = 0), 100 steps
    of Adam with learning rate 0.2, no per-image early stopping.

    Measured on 200 binarized MNIST test images (conv_decoder, d = 16, 14 epochs; ELBO in nats
    per image; seconds on 2 busy cores): decoder trained by svi, 40 steps -122.3 (6 s), 100
    steps -120.8 (11 s), converged (500 steps of 0.03) -119.3 (82 s); trained by map, -121.3,
    -107.8 and -105.5: its latents lie further from the prior's centre and need the steps.
    Validation fits only ``validation_fit_steps`` (40) steps.  Patience on the one-sample
    ELBO estimate stops images at a lucky draw: with 60 steps of 0.1 (svi decoder, 9 epochs)
    the ELBO was -126.6 without patience and -149 with patience 10."""
    return FitConfig(method="svi", steps=100, patience=0, init="zeros",
                     optimizer=LatentOptimizerConfig(learning_rate=0.2))


@dataclasses.dataclass
class PerDatapointConfig:
    """Keys shared by the schemes with a table of per-datapoint latents."""

    latent_optimizer: LatentOptimizerConfig = setting(
        factory=lambda: LatentOptimizerConfig(learning_rate=0.5),
        help="the per-datapoint latents' optimizer (theta's is train.optimizer); a row steps "
             "once per epoch, down the gradient of its own image's objective")
    init_scale: float = setting(1.0, at_least=0.0, at_most=100.0,
                                help="initial latents (svi: means) ~ N(0, init_scale^2 I)")
    validation_images: int = setting(200, at_least=0, at_most=1_000_000,
                                     help="validation images fitted each epoch (0 = the whole "
                                          "split)")
    validation_fit_steps: int = setting(40, at_least=1, at_most=1_000_000,
                                        help="steps of the validation images' fit (posterior_fit's "
                                             "other settings; its steps are for the evaluation "
                                             "tasks)")
    summary_images: int = setting(8, at_least=0, at_most=64, help="training images whose latents "
                                                                  "are decoded into TensorBoard")
    posterior_fit: FitConfig = setting(factory=default_posterior_fit,
                                       help="how q(z | y) is fitted to new images (elbo, "
                                            "log_likelihood, reconstructions; validation with "
                                            "validation_fit_steps): method 'svi'")

    def check(self, cfg):
        check_posterior_fit(self.posterior_fit, cfg, "inference.posterior_fit")


class PerDatapointScheme(Scheme, PerDatapointLatents, FittedPosterior):
    """theta and a table of per-image rows, trained together on per-image objectives."""

    monitor = "loss"
    table_name = "latents"
    default_evaluations = (  # a fitted q costs an optimisation per image: 1000 test images
        {"task": "elbo", "max_images": 1000},
        "reconstructions",
        {"task": "samples", "sampler": "prior"},
        {"task": "samples", "sampler": "particle_gaussian"},
        "curves",
    )

    shards_training_rows = True

    def __init__(self, params: PerDatapointConfig, model, data, cfg, generator, strategy):
        super().__init__(params, model, data, cfg, generator, strategy)
        self.num_images = len(data.train)
        seed = kernels.seeds_from(generator)
        self.latents = LatentTable(self.initial_rows(params, model, seed), self.layout,
                                   params.latent_optimizer, name=self.table_name)
        self.optimizer = with_loss_scaling(make_optimizer(cfg.train), cfg)
        self.optimizer.build(model.theta)

    @classmethod
    def memory_terms(cls, params, cfg, shape, act) -> MemoryTerms:
        """The base's training step, and the table: svi's (mu, log sigma^2), map's z per
        training image, counted as 2 d floats, with two optimizer moments each."""
        base = super().memory_terms(params, cfg, shape, act)
        table = Term("the per-datapoint latents with two optimizer moments",
                     3 * 2 * latent_dim(cfg) * FLOAT * shape.train, ("data.subsample",))
        return MemoryTerms(base.resident + (table,), base.peaks)

    # ---- to implement
    def initial_rows(self, params, model, seed: tf.Tensor) -> tf.Tensor:
        """The table's rows [M, width] at the start of training, from a stateless seed."""
        raise NotImplementedError

    def initial_latents(self, params, model, seed: tf.Tensor) -> tf.Tensor:
        """Latents [M, d] ~ N(0, init_scale^2 I) from a stateless seed."""
        return params.init_scale * kernels.standard_normal([self.num_images, model.latent_dim], seed)

    def objective(self, rows: tf.Tensor, images: tf.Tensor,
                  batch: ReplicaBatch) -> tuple[tf.Tensor, dict]:
        """(f_m per image [b] to minimise, batch-mean metrics) in training mode; noise from
        ``batch``."""
        raise NotImplementedError

    def validation_fit(self) -> dict:
        """What the validation fit changes in ``posterior_fit`` beyond its steps (map: the method)."""
        return {}

    # ---- validation
    def validation_fitter(self) -> LatentFitter:
        """Fits the validation images: posterior_fit with validation_fit_steps steps."""
        cache = self.__dict__.setdefault("_validation_fitter", [])
        if not cache:
            config = dataclasses.replace(self.params.posterior_fit,
                                         steps=self.params.validation_fit_steps,
                                         **self.validation_fit())
            cache.append(LatentFitter(self, config, self.cfg.train.compile))
        return cache[0]

    def validation_images(self, split) -> np.ndarray:
        return split.images[: self.params.validation_images or len(split)]

    def in_chunks(self, fn, *arrays) -> list[np.ndarray]:
        """fn(chunk index, *chunks) over chunks of posterior_fit.batch_size rows, concatenated
        per output (bounded memory for any number of validation images)."""
        size = self.params.posterior_fit.batch_size
        outs = [fn(i, *(tf.constant(a[lo:lo + size]) for a in arrays))
                for i, lo in enumerate(range(0, len(arrays[0]), size))]
        return [np.concatenate([np.asarray(o[k], np.float64) for o in outs])
                for k in range(len(outs[0]))]

    # ---- state
    def checkpoint_items(self):
        return {"latents": self.latents, "optimizer": self.optimizer}

    def after_restore(self):
        self.optimizer.learning_rate.assign(self.cfg.train.learning_rate)

    # ---- the step
    def step_on_replica(self, images, indices, batch):
        images = self.data.transform_batch(images, transform_noise(batch, images))
        rows = self.latents.gather(batch.replica, indices)
        theta = self.model.theta
        with tf.GradientTape() as tape:
            tape.watch(rows)
            per_image, metrics = self.objective(rows, images, batch)
            scaled_loss = tf.reduce_sum(per_image) * self.gradient_scale(batch, per_image.dtype)
        *theta_grads, rows_grad = scaled_gradients(tape, scaled_loss, theta + [rows],
                                                   self.optimizer)
        # each row down the gradient of its own image's objective (module docstring)
        global_batch = tf.cast(batch.global_size, rows.dtype)
        self.latents.apply_gradients(batch.replica, indices, global_batch * rows_grad, rows)
        self.optimizer.apply_gradients(zip(theta_grads, theta))
        return {"loss": tf.reduce_mean(per_image), **metrics}

    # ---- TensorBoard
    def log_summaries(self, step: int) -> None:
        """Histograms of the latents, and a few training images above their decoded latents."""
        latents = self.latent_cloud().numpy()
        tf.summary.histogram("latents/norm", np.linalg.norm(latents, axis=-1), step=step)
        tf.summary.histogram("latents/mean_per_dimension", latents.mean(axis=0), step=step)
        tf.summary.histogram("latents/std_per_dimension", latents.std(axis=0), step=step)
        k = min(self.params.summary_images, self.num_images)
        if k:
            decoded = self.model.likelihood.mean(self.model.decode(latents[:k])).numpy()
            grid = figures.stacked_grid([self.data.train.images[:k], decoded], k,
                                        self.data.pixel_range)
            tf.summary.image("images/training_latents_decoded", grid[None], step=step)
