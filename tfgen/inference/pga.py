"""Particle gradient ascent (PGA): maximum marginal likelihood with a cloud of Langevin particles.

Kuntz, Lim & Johansen (2023), "Particle algorithms for maximum likelihood training of latent
variable models", AISTATS: its neural latent variable model example (the ParEM code).  The model is
p_theta(x, y) = prod_m p(x^m) p_theta(y^m | x^m); PGA keeps N particles per training image,
a cloud X = (X^{n,m}) of shape [M, N, d] held in the shared per-datapoint table
(:class:`tfgen.inference.latents.LatentTable`) and initialised from the prior, and at every step k

    (2)  theta_{k+1} = theta_k + h M / (N M_B) lambda Lambda_k
                                 sum_n sum_{m in B_k} grad_theta log p_theta_k(X_k^{n,m}, y^m)
    (3)  X_{k+1}^{n,m} = X_k^{n,m} + h grad_x log p_theta_k(X_k^{n,m}, y^m) + sqrt(2h) W_k^{n,m}

for all m in [M], n in [N], with W ~ N(0, I), a random batch B_k of M_B = ``train.batch_size``
images and Lambda_k the diagonal RMSprop preconditioner.  As in the published reference
(ParEM ``parem/pga.py``), (2) is RMSprop with learning rate h M lambda and smoothing constant
rho = 0.1 on the mean negative log joint -1/(N M_B) sum_n sum_{m in B} log p_theta(X^{n,m}, y^m);
``train.optimizer`` and ``train.learning_rate`` are not used by this scheme.

Step-size schedule.  Kuntz et al. (2023) keep h fixed.  ``step_size_schedule`` may instead
decay it (:mod:`tfgen.inference.step_sizes`): with kind ``polynomial``, step k uses

    h_k = max(h, h_0 (1 + k / tau)^(-gamma))

in both (3) and (2) (theta's RMSprop learning rate h_k M lambda), the SGLD schedule of
Welling & Teh (2011), eps_t = a (b + t)^(-gamma), floored at h = ``step_size``: large early
steps move the cloud from the prior quickly, later ones approach the constant-step sampler.
k is the step counter of theta's RMSprop (one per step, skipped loss-scaled steps included:
the run's step), which every checkpoint holds, so a resumed run continues the schedule
exactly.  The default, ``constant``, is h_k = h.  (Welling, M. & Teh, Y. W. (2011). Bayesian
learning via stochastic gradient Langevin dynamics. ICML.)

K, the number of steps, is ``train.epochs`` x steps per epoch, where an epoch is
ceil(M / M_B) steps (or ``train.steps_per_epoch`` if that is smaller): Kuntz et al.'s (2023)
K = 2765 for MNIST is 35 epochs of 79 batches (M = 10,000, M_B = 128).

One step is one compiled function (``runtime.compile_step``): the theta gradient, the
chunked particle update of the whole cloud (a ``tf.while_loop`` over fixed-size chunks of
``chunk_size`` images, so memory stays bounded and nothing retraces), then the RMSprop
step.  The training images live in the scheme as a variable and are gathered by index;
the cloud never leaves the device.  The Langevin move is the shared kernel
(:func:`tfgen.inference.kernels.langevin_step`) with a stateless seed drawn from the run's
stateful generator, which every checkpoint holds together with the cloud and the RMSprop
slots, so a resumed run continues exactly (with the same ``train.compile``: XLA may turn
the same seed into different normals than TensorFlow's kernels do).

Batch norm.  The theta gradient runs the decoder in training mode (batch statistics over
the M_B N particles of the batch, moving averages updated), as the reference does.  The
particle update runs it in inference mode (the moving averages), also as the reference
does (``model.eval()``), for two reasons: (3) needs grad_x log p_theta(x^{n,m}, y^m) of
each particle on its own, and batch statistics would couple every particle of a chunk to
every other one (the gradient would depend on the chunking); and inference-mode batch
norm is an affine map per channel, so no statistics are recomputed over the M N particles.

``particle_update = "batch"`` moves only the particles of the batch's images, with the
same kernel (3).  Its particle update costs O(M_B N) decoder evaluations per step instead
of O(M N) -- an epoch of "batch" particle updates costs about one "all" particle update; the
theta gradient costs the same in both modes -- but every particle then takes one
Langevin step per epoch instead of ceil(M / M_B): the cloud lags theta (as in persistent
contrastive divergence with few updates) and theta's gradient is taken at staler, less
well mixed particles.  Use it for large M or quick experiments; "all" is Kuntz et al.'s (2023)
algorithm.
"""
from __future__ import annotations

import dataclasses
from typing import Literal

import numpy as np
import tensorflow as tf
import tf_keras as keras

from tfgen import figures
from tfgen.distribute import (SALT_LANGEVIN, SALT_TRANSFORM_ROWS, ReplicaBatch, ShardedRows,
                              fold_seed, transform_noise)
from tfgen.footprint import MemoryTerms, Term, latent_dim
from tfgen.inference import kernels
from tfgen.inference.base import Scheme, scaled_gradients, with_loss_scaling
from tfgen.inference.capabilities import PerDatapointLatents
from tfgen.inference.fitting import (FitConfig, FittedPosterior, check_posterior_fit,
                                     posterior_fit_field)
from tfgen.inference.grids import SamplesConfig, sample_grid
from tfgen.inference.latents import LatentTable
from tfgen.inference.step_sizes import StepSizeSchedule
from tfgen.memory import FLOAT
from tfgen.registry import SCHEMES
from tfgen.schema import setting


@dataclasses.dataclass
class PGAConfig:
    #: keys that size checkpointed state: a resume may not change them (config.fixed_on_resume)
    fixed_on_resume = ("particles",)

    particles: int = setting(10, at_least=1, at_most=100000, help="N: particles per training image")
    step_size: float = setting(1e-4, above=0.0, at_most=1.0, help="h: Langevin step size of eq. "
                                                                  "(3); also scales theta's step "
                                                                  "(2)")
    theta_scale: float = setting(1e-3, above=0.0, at_most=1e6, help="lambda: theta's RMSprop "
                                                                    "learning rate is h * M * "
                                                                    "lambda")
    particle_update: Literal["all", "batch"] = setting(
        "all", help="all: every particle moves every step (Kuntz et al. 2023); batch: only the "
                    "batch's particles (a particle update about ceil(M/M_B) times cheaper; slower "
                    "mixing)")
    chunk_size: int = setting(64, at_least=1, at_most=1000000,
                              help="images whose particles are decoded together in the particle "
                                   "update (chunk_size * N decoder evaluations in memory at once)")
    step_size_schedule: StepSizeSchedule = setting(
        factory=StepSizeSchedule,
        help="h_k of step k in (3) and in theta's rate h_k * M * lambda: constant (h_k = h) or "
             "polynomial, h_k = max(h, initial * (1 + k / decay_steps)^-power) (Welling & Teh "
             "2011, SGLD's eps_t = a (b + t)^-gamma, floored at h = step_size)")
    rmsprop_rho: float = setting(0.1, at_least=0.0, at_most=0.999, help="RMSprop smoothing "
                                                                        "constant (Kuntz et al. "
                                                                        "2023: 0.1)")
    rmsprop_epsilon: float = setting(1e-8, above=0.0, at_most=1.0,
                                     help="added to sqrt(v) in theta's RMSprop denominator")
    summary_images: int = setting(4, at_least=0, at_most=64, help="training images whose particles "
                                                                  "are decoded into TensorBoard")
    posterior_fit: FitConfig = posterior_fit_field()

    def check(self, cfg):
        check_posterior_fit(self.posterior_fit, cfg, "inference.posterior_fit")
        self.step_size_schedule.check(self.step_size, cfg, "inference.step_size_schedule",
                                      "inference.step_size")


@SCHEMES.register("pga", config=PGAConfig)
class PGA(Scheme, PerDatapointLatents, FittedPosterior):
    """Particle gradient ascent: Langevin particle cloud + RMSprop on theta (Kuntz et al. 2023, eqs. (2), (3))."""

    validation_metrics = ()  # no q(z | y): early stopping watches the training loss
    monitor = "loss"
    default_evaluations = (
        {"task": "samples", "sampler": "particle_gaussian"},
        {"task": "samples", "sampler": "prior"},
        {"task": "inpainting", "split": "train", "fit": {"sampler": "particle_gaussian"}},
        "curves",
    )

    shards_training_rows = True

    def __init__(self, params: PGAConfig, model, data, cfg, generator, strategy):
        super().__init__(params, model, data, cfg, generator, strategy)
        self.num_images = len(data.train)
        self.num_particles = params.particles
        # X_0 ~ p(x), shape [M, N, d]
        initial = model.prior.distribution().sample(
            [self.num_images, params.particles], seed=_stateless_seed(generator))
        self.latents = LatentTable(initial, self.layout, name="particle_cloud")
        # each replica holds the training images of its own rows (for the chunk loop)
        self.train_images = ShardedRows(self.layout, data.train.images, name="train_images")
        # the particle update decodes chunks of `chunk` rows, numbered globally (row m is in
        # chunk m // chunk), so that the noise of row m is the same on any number of replicas
        self.chunk = min(params.chunk_size, self.num_images)
        self.theta_optimizer = with_loss_scaling(keras.optimizers.RMSprop(
            learning_rate=self.learning_rate_value(params), rho=params.rmsprop_rho,
            # Keras adds epsilon inside the square root: sqrt(v + eps^2) ~ sqrt(v) + eps (PyTorch)
            epsilon=params.rmsprop_epsilon ** 2), cfg)
        self.theta_optimizer.build(model.theta)

    @classmethod
    def memory_terms(cls, params: PGAConfig, cfg, shape, act) -> MemoryTerms:
        """The particle cloud [M, N, d] and the training images on the device, held for the
        run; the theta gradient's batch of N particles per image, and the particle update: the
        activations of one chunk (or of the batch, ``particle_update = 'batch'``) of N
        particles per image, with three more clouds of the moved rows (drift, noise, moved
        cloud)."""
        batch = min(cfg.train.batch_size, shape.train)
        n, cloud_row = params.particles, params.particles * latent_dim(cfg) * FLOAT
        every = params.particle_update == "all"
        moved = shape.train if every else batch
        chunk = min(params.chunk_size, shape.train) if every else batch
        return MemoryTerms(
            resident=(Term("the particle cloud", shape.train * cloud_row,
                           ("inference.particles", "data.subsample")),
                      Term("the training images on the device", shape.train * shape.image_bytes,
                           ("data.subsample",))),
            peaks=(Term("the theta gradient's activations", batch * n * act.decode(backward=True),
                        ("train.batch_size", "inference.particles")),
                   Term("the particle update (activations of one chunk, drift, noise, moved "
                        "cloud)", chunk * n * act.decode(backward=True) + 3 * moved * cloud_row,
                        ("inference.chunk_size", "inference.particles", "data.subsample"))))

    # ------------------------------------------------------------------ hyper-parameters
    def learning_rate_value(self, params: PGAConfig | None = None) -> float:
        """h M lambda: theta's RMSprop learning rate at the constant step size h."""
        params = params or self.params
        return params.step_size * self.num_images * params.theta_scale

    @property
    def scheduled(self) -> bool:
        """Whether the step size changes with the step (``step_size_schedule``)."""
        return self.params.step_size_schedule.kind != "constant"

    def step_size_at(self, step) -> tf.Tensor:
        """h_k (float64) at step ``step`` (an integer or an integer tensor)."""
        return self.params.step_size_schedule.step_size(self.params.step_size, step)

    def step_size_now(self) -> float | tf.Tensor:
        """h of the step being taken: the float h, or h_k at theta's RMSprop step counter k
        (the steps taken so far) as a tensor read inside the compiled step."""
        if not self.scheduled:
            return self.params.step_size
        return self.step_size_at(self.theta_optimizer.iterations)

    def learning_rate(self) -> float:
        """theta's RMSprop learning rate h_k M lambda of the latest step (k = steps taken - 1;
        before the first step, k = 0's)."""
        if not self.scheduled:
            return self.learning_rate_value()
        k = max(int(self.theta_optimizer.iterations.numpy()) - 1, 0)
        return float(self.step_size_at(k) * self.num_images * self.params.theta_scale)

    def after_restore(self):
        self.theta_optimizer.learning_rate.assign(self.learning_rate())

    def checkpoint_items(self):
        return {"latents": self.latents, "theta_optimizer": self.theta_optimizer}

    @property
    def particle_cloud(self) -> ShardedRows:
        """X, [M, N, d]: the rows of the per-datapoint table (``.numpy()``, or any tf op)."""
        return self.latents.values

    def latent_cloud(self) -> tf.Tensor:
        """The cloud as [M * N, d] (for the ``particle_gaussian`` sampler)."""
        return tf.reshape(self.particle_cloud.full(), [-1, self.model.latent_dim])

    # ------------------------------------------------------------------ the three pieces
    def log_joint_gradient(self, particles: tf.Tensor, images: tf.Tensor) -> tf.Tensor:
        """grad_x log p_theta(x^{n,m}, y^m) for particles [c, N, d] of images [c, H, W, C].

        The decoder runs in inference mode, so every particle's gradient is its own (see the
        module docstring); summing the log joints and differentiating gives them all at once.
        """
        z = tf.transpose(particles, [1, 0, 2])  # [N, c, d]: log_joint's [..., B, d] layout
        with tf.GradientTape(watch_accessed_variables=False) as tape:
            tape.watch(z)
            total = tf.reduce_sum(self.model.log_joint(z, images, training=False))
        return tf.transpose(tape.gradient(total, z), [1, 0, 2])

    def theta_gradient(self, images: tf.Tensor, batch_particles: tf.Tensor, batch: ReplicaBatch):
        """Gradient of the mean negative log joint over the global batch's particles, eq. (2)
        (this replica's share: its sum over N M_B of them); metrics are this replica's means."""
        z = tf.transpose(batch_particles, [1, 0, 2])  # [N, b, d]
        theta = self.model.theta
        with tf.GradientTape() as tape:
            log_joint = self.model.log_joint(z, images, training=True)  # [N, b]
            scaled = -tf.reduce_sum(log_joint) * self.gradient_scale(batch) / self.num_particles
        grads = scaled_gradients(tape, scaled, theta, self.theta_optimizer)
        loss = -tf.reduce_mean(log_joint)
        log_prior = tf.reduce_mean(self.model.log_prior(z))
        return {"loss": loss, "log_joint": -loss, "log_prior": log_prior,
                "log_likelihood": -loss - log_prior}, grads

    def chunk_noise(self, seed: tf.Tensor, chunk) -> tf.Tensor:
        """W of eq. (3) for the ``chunk`` rows of chunk number ``chunk`` (rows chunk * c ..),
        [c, N, d], from the step's seed folded with the chunk's global number."""
        shape = [self.chunk, self.num_particles, self.model.latent_dim]
        return kernels.standard_normal(shape, fold_seed(seed, SALT_LANGEVIN, chunk))

    def particle_noise(self, seed) -> np.ndarray:
        """W of eq. (3) for all M rows, [M, N, d], as the "all" update draws it (for tests)."""
        chunks = -(-self.num_images // self.chunk)
        return np.concatenate([self.chunk_noise(tf.constant(seed, tf.int64), j).numpy()
                               for j in range(chunks)])[: self.num_images]

    def update_all_particles(self, seed: tf.Tensor, replica: int = 0) -> None:
        """Eq. (3) for all of this replica's particles (rows [lo, hi)), in a while loop over
        the chunks that overlap them; chunk j's rows, noise and (dynamic binarization) images
        depend only on j and the step's seed."""
        lo, hi = self.layout.shard(replica)
        c, h = self.chunk, self.step_size_now()
        first, last = lo // c, (hi - 1) // c
        cloud = tf.convert_to_tensor(self.particle_cloud.local(replica))  # [rows, N, d]
        images = tf.convert_to_tensor(self.train_images.local(replica))
        shape = [c, self.num_particles, self.model.latent_dim]
        moved = tf.TensorArray(cloud.dtype, size=last - first + 1, element_shape=shape)

        def body(k, moved):
            j = first + k
            # rows of chunk j outside this shard (or past M) repeat its edge rows: computed,
            # then dropped below
            rows = tf.clip_by_value(tf.cast(j * c, tf.int64) + tf.range(c, dtype=tf.int64) - lo,
                                    0, hi - lo - 1)
            x = tf.gather(cloud, rows)
            y = tf.gather(images, rows)
            y = self.data.transform_batch(y, lambda: tf.random.stateless_uniform(
                tf.shape(y), fold_seed(seed, SALT_TRANSFORM_ROWS, j), dtype=y.dtype))
            drift = self.log_joint_gradient(x, y)
            return k + 1, moved.write(k, kernels.langevin_step(x, drift, h,
                                                               noise=self.chunk_noise(seed, j)))

        _, moved = tf.while_loop(lambda k, _: k < last - first + 1, body,
                                 (tf.constant(0), moved), parallel_iterations=1)
        stacked = tf.reshape(moved.stack(), [(last - first + 1) * c, *shape[1:]])
        start = lo - first * c
        self.particle_cloud.assign_shard(replica, stacked[start:start + hi - lo])

    def update_batch_particles(self, images: tf.Tensor, indices: tf.Tensor,
                               batch_particles: tf.Tensor, batch: ReplicaBatch) -> None:
        """Eq. (3) for the batch's particles only (``particle_update = "batch"``)."""
        drift = self.log_joint_gradient(batch_particles, images)
        noise = batch.normal(batch_particles.shape[1:], SALT_LANGEVIN, batch_particles.dtype)
        self.latents.scatter(batch.replica, indices, kernels.langevin_step(
            batch_particles, drift, self.step_size_now(), noise=noise))

    def apply_theta_gradient(self, grads) -> None:
        """Eq. (2): RMSprop at learning rate h_k M lambda (set here when h_k changes with k)."""
        if self.scheduled:
            rate = self.step_size_now() * self.num_images * self.params.theta_scale
            self.theta_optimizer.learning_rate.assign(
                tf.cast(rate, self.theta_optimizer.learning_rate.dtype))
        self.theta_optimizer.apply_gradients(zip(grads, self.model.theta))

    # ------------------------------------------------------------------ the step
    def step_on_replica(self, images, indices, batch):
        images = self.data.transform_batch(images, transform_noise(batch, images))
        batch_particles = self.latents.gather(batch.replica, indices)  # X_k for B_k
        out, grads = self.theta_gradient(images, batch_particles, batch)  # at theta_k
        if self.params.particle_update == "all":
            self.update_all_particles(batch.seed, batch.replica)  # with theta_k
        else:
            self.update_batch_particles(images, indices, batch_particles, batch)
        self.apply_theta_gradient(grads)  # theta_{k+1}
        lo, hi = self.layout.shard(batch.replica)
        out.update(cloud_statistics(self.particle_cloud.local(batch.replica)[: hi - lo],
                                    self.num_images))
        return out

    # ------------------------------------------------------------------ TensorBoard
    def log_summaries(self, step: int) -> None:
        """Cloud histograms, decoded particles of a few fixed images, Gaussian-fit samples.

        (The cloud's scalar statistics come with every step's outputs, as ``train/cloud_*``.)"""
        cloud = self.particle_cloud.numpy()
        flat = cloud.reshape(-1, cloud.shape[-1])
        tf.summary.histogram("cloud/std_per_dimension", flat.std(axis=0), step=step)
        tf.summary.histogram("cloud/mean_per_dimension", flat.mean(axis=0), step=step)
        tf.summary.histogram("cloud/particle_norm", np.linalg.norm(flat, axis=-1), step=step)
        k = min(self.params.summary_images, self.num_images)
        if k:
            shown = min(self.num_particles, 8)
            decoded = self.model.likelihood.mean(self.model.decode(cloud[:k, :shown])).numpy()
            originals = self.data.train.images[:k, None]
            rows = np.concatenate([originals, decoded], axis=1).reshape(-1, *decoded.shape[2:])
            grid = figures.image_grid(rows, 1 + shown, self.data.pixel_range)
            tf.summary.image("images/particles_decoded", grid[None], step=step)
        grid = sample_grid(self, SamplesConfig(num_images=self.cfg.logging.num_images,
                                               sampler="particle_gaussian"),
                           self.cfg.experiment.seed, self.data.pixel_range)
        tf.summary.image("images/samples_particle_gaussian", grid[None], step=step)


def cloud_statistics(cloud, total_rows: int) -> dict:
    """Mean particle norm, spread per dimension over the whole cloud (mean of the d standard
    deviations), and the spread of each image's N particles around their own mean.

    ``cloud`` is this replica's rows [m, N, d] of ``total_rows``; the sums are all-reduced, so
    every replica reports the statistics of the whole cloud."""
    cloud = tf.convert_to_tensor(cloud)
    n, d = cloud.shape[1], cloud.shape[-1]
    flat = tf.reshape(cloud, [-1, d])
    within = tf.math.reduce_std(cloud, axis=1) if n > 1 else tf.zeros_like(cloud[:, 0])
    sums = [tf.reduce_sum(flat, 0), tf.reduce_sum(tf.square(flat), 0),
            tf.reduce_sum(tf.norm(flat, axis=-1)), tf.reduce_sum(tf.reduce_mean(within, -1))]
    ctx = tf.distribute.get_replica_context()
    if ctx is not None and ctx.num_replicas_in_sync > 1:
        sums = ctx.all_reduce(tf.distribute.ReduceOp.SUM, sums)
    first, second, norms, spread = sums
    count = float(total_rows * n)
    mean = first / count
    std = tf.sqrt(tf.maximum(second / count - tf.square(mean), 0.0))
    return {"cloud_mean_norm": norms / count, "cloud_std": tf.reduce_mean(std),
            "particle_spread": spread / total_rows}


def _stateless_seed(generator: tf.random.Generator) -> tf.Tensor:
    return tf.cast(generator.uniform_full_int([2], tf.int64) % (2**31 - 1), tf.int32)
