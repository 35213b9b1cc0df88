"""What Kuntz et al.'s (2023) two MCMC baselines share: K Langevin steps on the batch's latents,
then one theta step at the chains' ends.

Alternating back-propagation (``abp``; Han, Lu, Zhu & Wu 2017, "Alternating Back-Propagation
for Generator Network", AAAI) and short-run MCMC (``short_run``; Nijkamp, Pang, Han, Zhou, Zhu
& Wu 2020, "Learning Multi-layer Latent Variable Model via Variational Optimization of Short
Run MCMC for Approximate Inference", ECCV) are the baselines PGA is compared with in Kuntz et al.'s
(2023) paper (Kuntz, Lim & Johansen 2023, section 3.3 and appendix E.4; reference code: ParEM's
``torch/parem/algorithms.py``, classes ``AlternatingBackprop`` and ``ShortRun``).  For a batch B
of images y^m, each with one latent chain z^m, a step is

    z^m_0   = the chain's start: its persistent latent (abp) or a fresh N(0, I) draw (short_run)
    z^m_k+1 = z^m_k + h grad_z log p_theta(z^m_k, y^m) + c sqrt(2h) w^m_k,   k = 0 .. K-1
    theta  <- an optimizer step down  -1/|B| sum_{m in B} grad_theta log p_theta(z^m_K, y^m)

with w ~ N(0, I), log p_theta(z, y) = log p(z) + log p_theta(y | z) the joint log density,
K = ``langevin_steps``, h = ``step_size``, c = ``noise_scale`` (1: Langevin).

The Langevin step.  This is the unadjusted Langevin kernel of eq. (3) of Kuntz et al. (2023), the
shared :func:`tfgen.inference.kernels.langevin_step`, in ParEM's parameterization (x + h grad +
sqrt(2h) w, ``particle_step_size`` h).  Han et al. write the same move as
z <- z + s^2/2 [ (y - f(z)) / sigma^2 df/dz - z ] + s U with Langevin step s and the
likelihood's sigma inside the gradient: it is this kernel with h = s^2 / 2 (the noise s U is
sqrt(2h) U).  So the Langevin noise is not a separate sigma: ``noise_scale`` c = 1 is the
kernel of both papers and of the reference, and other values temper the noise (0: K steps of
gradient ascent on log p(z | y)).  The sigma = 0.01 of the reference MNIST notebook
(``LIKELIHOOD_VAR = 0.01 ** 2``) is the likelihood's standard deviation,
``model.likelihood.sigma`` here; it enters the chains through grad log p_theta(y | z).

Defaults are the reference's (ParEM ``algorithms.py`` and ``notebooks/MNIST.ipynb``): K = 25
(``n_chain_length``), h = 1e-4 (``STEP_SIZE``), c = 1; theta's optimizer there is RMSprop with
learning rate h M lambda = 1e-3 and PyTorch's defaults (smoothing 0.99, epsilon 1e-8 added
to sqrt(v)).  Here theta has ``train.optimizer`` and ``train.learning_rate``; with
``optimizer = "rmsprop"`` these schemes use PyTorch's 0.99 and 1e-8 (Keras's own defaults are
0.9 and 1e-7 inside the square root).  The experiments set rmsprop and 1e-3.  The reference's
loss carries an extra 1/|B| factor (``- (1 / B) * log_p.mean()``), which RMSprop's scale
invariance makes immaterial; here the loss is the batch mean of -log p_theta(z_K, y).

Batch norm, as in PGA and the reference: the chains run the decoder in inference mode (each
chain's gradient is its own), theta's gradient in training mode.

Randomness: the chain noise (and short_run's start) of image m is row m of the global
batch's draw from the step's seed (:class:`tfgen.distribute.ReplicaBatch`), the seed from
the run's checkpointed generator: a resumed run continues exactly, on any number of replicas.

One compiled step: the K moves are a ``tf.while_loop`` (one trace for any K), then the theta
gradient and the optimizer step.  A step costs (K + 1) forward and backward passes of the
decoder on the batch, against PGA's M N particle moves ("all") or |B| N ("batch").
"""
from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow as tf

from tfgen.schema import setting
from tfgen.distribute import SALT_LANGEVIN, ReplicaBatch, transform_noise
from tfgen.inference import kernels
from tfgen.inference.base import Scheme, make_optimizer, scaled_gradients, with_loss_scaling
from tfgen.inference.fitting import (FitConfig, FittedPosterior, check_posterior_fit,
                                     posterior_fit_field)

#: PyTorch's RMSprop defaults, which the reference trains theta with (Keras adds epsilon
#: inside the square root: sqrt(v + eps^2) ~ sqrt(v) + eps)
REFERENCE_RMSPROP = {"rho": 0.99, "epsilon": 1e-8 ** 2}


@dataclasses.dataclass
class ChainConfig:
    """Keys of the Langevin-chain schemes (abp, short_run)."""

    langevin_steps: int = setting(25, at_least=1, at_most=100000,
                                  help="K: Langevin steps on the batch's latents before each "
                                       "theta step (reference: 25)")
    step_size: float = setting(1e-4, above=0.0, at_most=10.0,
                               help="h in z + h grad log p(z, y) + sqrt(2h) w (reference: 1e-4; "
                                    "Han et al.'s step s is sqrt(2h))")
    noise_scale: float = setting(1.0, at_least=0.0, at_most=10.0,
                                 help="c multiplying the Langevin noise sqrt(2h) w: 1 = Langevin "
                                      "(both papers), 0 = gradient ascent on log p(z | y)")
    summary_images: int = setting(4, at_least=0, at_most=64, help="training images whose chain "
                                                                  "ends are decoded into "
                                                                  "TensorBoard")
    posterior_fit: FitConfig = posterior_fit_field()

    def check(self, cfg):
        check_posterior_fit(self.posterior_fit, cfg, "inference.posterior_fit")


class LangevinChainScheme(Scheme, FittedPosterior):
    """K Langevin steps on each batch image's latent, then a theta step (module docstring).

    A scheme defines where a chain starts (:meth:`chain_start`) and what it keeps of the
    ends (:meth:`keep_chain_ends`)."""

    validation_metrics = ()  # no q(z | y): early stopping watches the training loss
    monitor = "loss"
    default_evaluations = (
        {"task": "samples", "sampler": "particle_gaussian"},
        {"task": "samples", "sampler": "prior"},
        {"task": "inpainting", "split": "train", "fit": {"sampler": "particle_gaussian"}},
        "curves",
    )

    def __init__(self, params: ChainConfig, model, data, cfg, generator, strategy):
        super().__init__(params, model, data, cfg, generator, strategy)
        self.num_images = len(data.train)
        extra = REFERENCE_RMSPROP if cfg.train.optimizer == "rmsprop" else {}
        self.optimizer = with_loss_scaling(make_optimizer(cfg.train, **extra), cfg)
        self.optimizer.build(model.theta)

    # ---- to implement
    def chain_start(self, indices: tf.Tensor, batch: ReplicaBatch,
                    first_noise: tf.Tensor) -> tf.Tensor:
        """z_0 [b, d] of the batch's chains; ``first_noise`` [b, d] is N(0, I) drawn for them."""
        raise NotImplementedError

    def keep_chain_ends(self, indices: tf.Tensor, batch: ReplicaBatch, ends: tf.Tensor) -> None:
        """What the scheme keeps of z_K (abp: the table's rows; short_run: nothing)."""
        del indices, batch, ends  # nothing (a statement: AutoGraph cannot convert an empty body)

    # ---- the chains
    def log_joint_gradient(self, z: tf.Tensor, images: tf.Tensor) -> tf.Tensor:
        """grad_z log p_theta(z, y) for latents [b, d] of images [b, ...], the decoder in
        inference mode: each chain's gradient is its own, so one sum gives them all."""
        with tf.GradientTape(watch_accessed_variables=False) as tape:
            tape.watch(z)
            total = tf.reduce_sum(self.model.log_joint(z, images, training=False))
        return tape.gradient(total, z)

    def run_chains(self, z: tf.Tensor, images: tf.Tensor, noise: tf.Tensor) -> tf.Tensor:
        """z_K from z_0 = ``z`` [b, d] under K Langevin steps with ``noise`` [b, K, d]."""
        p = self.params

        def body(k, z):
            moved = kernels.langevin_step(z, self.log_joint_gradient(z, images), p.step_size,
                                          noise=noise[:, k], noise_scale=p.noise_scale)
            return k + 1, moved

        _, z = tf.while_loop(lambda k, _: k < p.langevin_steps, body, (tf.constant(0), z),
                             parallel_iterations=1)
        return z

    # ---- state
    def checkpoint_items(self):
        return {"optimizer": self.optimizer}

    def after_restore(self):
        self.optimizer.learning_rate.assign(self.cfg.train.learning_rate)

    # ---- the step
    def step_on_replica(self, images, indices, batch):
        images = self.data.transform_batch(images, transform_noise(batch, images))
        d, k = self.model.latent_dim, self.params.langevin_steps
        # row m: [K + 1, d] normals, the first for short_run's start, then one per move
        noise = batch.normal([k + 1, d], SALT_LANGEVIN)
        start = self.chain_start(indices, batch, noise[:, 0])
        ends = self.run_chains(start, images, noise[:, 1:])  # with theta_k
        self.keep_chain_ends(indices, batch, ends)
        theta = self.model.theta
        with tf.GradientTape() as tape:
            log_joint = self.model.log_joint(ends, images, training=True)  # [b]
            scaled = -tf.reduce_sum(log_joint) * self.gradient_scale(batch)
        grads = scaled_gradients(tape, scaled, theta, self.optimizer)
        self.optimizer.apply_gradients(zip(grads, theta))  # theta_{k+1}
        log_prior = tf.reduce_mean(self.model.log_prior(ends))
        loss = -tf.reduce_mean(log_joint)
        return {"loss": loss, "log_joint": -loss, "log_prior": log_prior,
                "log_likelihood": -loss - log_prior,
                "chain_moved": tf.reduce_mean(tf.norm(ends - start, axis=-1)),
                "latent_norm": tf.reduce_mean(tf.norm(ends, axis=-1))}

    # ---- TensorBoard
    def summary_latents(self, count: int) -> np.ndarray:
        """Latents [count, d] of the first ``count`` training images (for TensorBoard)."""
        raise NotImplementedError

    def log_summaries(self, step: int) -> None:
        """A few training images above the decoding of their latents."""
        from tfgen import figures

        k = min(self.params.summary_images, self.num_images)
        if not k:
            return
        latents = self.summary_latents(k)
        tf.summary.histogram("latents/norm", np.linalg.norm(latents, axis=-1), step=step)
        decoded = self.model.likelihood.mean(self.model.decode(latents)).numpy()
        grid = figures.stacked_grid([self.data.train.images[:k], decoded], k,
                                    self.data.pixel_range)
        tf.summary.image("images/training_latents_decoded", grid[None], step=step)
