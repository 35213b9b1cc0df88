"""What every inference scheme shares: the base class, optimizers, the compiled-step wrapper.

A scheme owns the state that training adds to the model (an encoder, the optimizers, a
table of per-datapoint latents ...) and one ``step_on_replica(images, indices, batch) -> dict
of scalar tensors`` ("loss" always among them: the shared output type the training loop logs,
checks for NaN and checkpoints around): what training runs, compiled by
:class:`tfgen.execution.StepExecutor` and run on every replica of the strategy
(:mod:`tfgen.distribute`: the metrics are means over the replica's images; gradients are of
sums over them divided by the global batch size, so that the optimizers' all-reduce gives the
global mean; noise comes from ``batch``).  ``standalone_step(images, indices)`` is the same
step outside training, for tests and tools: the whole batch on one replica, its seed drawn
from the run's generator.  What else a scheme can do it declares by inheriting the
interfaces of :mod:`tfgen.inference.capabilities`; which metrics it reports on the
validation split, and which one early stopping watches, it names itself
(``validation_metrics``, ``monitor``); what its training holds in memory, too
(:meth:`Scheme.memory_terms`, summed by the estimate of :mod:`tfgen.resources`).
"""
from __future__ import annotations

import math

import tensorflow as tf
import tf_keras as keras

from tfgen.config import Config, TrainConfig
from tfgen.data import DataBundle, Split
from tfgen.distribute import (ReplicaBatch, ReplicaLayout, single_replica_batch, step_seed,
                              transform_noise)
from tfgen.errors import ConfigError
from tfgen.footprint import Activations, DataShape, MemoryTerms, Term
from tfgen.inference.capabilities import (DecoderLikelihood, ExactLogLikelihood, LatentSampler,
                                          LogLikelihood, Posterior)
from tfgen.inference import proposals
from tfgen.inference.elbo import ElboTerms, elbo_terms, gaussian_posterior_from_scale
from tfgen.inference.proposals import POSTERIOR, Proposal
from tfgen.runtime import compile_step

OPTIMIZERS = {
    "adam": keras.optimizers.Adam,
    "adamw": keras.optimizers.AdamW,
    "rmsprop": keras.optimizers.RMSprop,
    "sgd": keras.optimizers.SGD,
}


def make_optimizer(train: TrainConfig, learning_rate: float | None = None, **kwargs):
    return OPTIMIZERS[train.optimizer](learning_rate=learning_rate or train.learning_rate, **kwargs)


def with_loss_scaling(optimizer, cfg: Config):
    """Under ``mixed_float16`` theta's optimizer scales the loss dynamically (Keras's
    LossScaleOptimizer: float16 gradients would underflow otherwise; a step whose scaled
    gradients overflow is skipped and the scale halved).  bfloat16 has float32's range and
    needs none."""
    if cfg.runtime.mixed_precision != "mixed_float16":
        return optimizer
    return keras.mixed_precision.LossScaleOptimizer(optimizer)


def scaled_gradients(tape: tf.GradientTape, loss: tf.Tensor, variables, optimizer) -> list:
    """tape.gradient(loss, variables), through the optimizer's loss scale if it has one."""
    if isinstance(optimizer, keras.mixed_precision.LossScaleOptimizer):
        # d(scale loss)/dv, with the scale as the output gradient (the tape has closed)
        scale = tf.cast(optimizer.loss_scale, loss.dtype)
        grads = tape.gradient(loss, variables, output_gradients=scale)
        return optimizer.get_unscaled_gradients(grads)
    return tape.gradient(loss, variables)


class Scheme(tf.Module):
    """Base class of inference schemes.

    Class attributes a scheme sets:
    ``validation_metrics`` -- the names :meth:`validate` reports on the validation split
    (empty: the scheme does not validate, and early stopping watches the training metric);
    ``monitor`` -- the metric early stopping minimises (``val_<monitor>`` when the scheme
    validates and there is a validation split, else ``train_<monitor>``);
    ``default_evaluations`` -- the ``[[evaluate]]`` list used when the TOML has none.
    """

    validation_metrics: tuple[str, ...] = ()
    monitor: str = "loss"
    default_evaluations: tuple = ("elbo", "reconstructions", "samples", "curves")
    #: keeps a row of state per training image, sharded over the replicas
    shards_training_rows: bool = False

    def __init__(self, params, model, data: DataBundle, cfg: Config, generator: tf.random.Generator,
                 strategy: tf.distribute.Strategy):
        super().__init__(name=type(self).__name__)
        self.params, self.model, self.data, self.cfg = params, model, data, cfg
        self.generator, self.strategy = generator, strategy
        self.layout = ReplicaLayout(strategy, len(data.train) if self.shards_training_rows else None)
        # one step outside training (tests, tools): the whole batch on one replica, with the
        # next seed of the run's generator (the draw the training loop's step makes)
        self.standalone_step = compile_step(self._standalone_step, cfg.train.compile)

    @classmethod
    def check_config(cls, cfg: Config) -> None:
        """Load-time checks that involve the scheme's own declarations."""
        if cfg.data.val_split and cfg.train.early_stopping.patience and not cls.validation_metrics:
            raise ConfigError(cfg.source_file, "train.early_stopping.patience",
                              f"scheme {cfg.inference.name!r} reports no validation metric to "
                              f"stop on", cfg.train.early_stopping.patience,
                              "0 (or data.val_split = '' to stop on the training "
                              f"{cls.monitor})")

    @classmethod
    def memory_terms(cls, params, cfg: Config, shape: DataShape,
                     act: Activations) -> MemoryTerms:
        """What training holds beyond the data and the parameters (resident), and the peaks
        of its step, on data of ``shape`` with per-example activations ``act``
        (:mod:`tfgen.footprint`); the estimate adds the data, the parameters, validation,
        the image summaries and the evaluation tasks.  By default: ``train.batch_size``
        images through the encoder (if any) and :meth:`decoder_passes` decoder passes, with
        the backward pass.  A scheme that keeps state per image or decodes more at once
        (PGA's particle cloud and update) overrides it."""
        batch = min(cfg.train.batch_size, shape.train)
        passes, pass_keys = cls.decoder_passes(params)
        return MemoryTerms(peaks=(Term(
            "a training step's activations",
            batch * (act.encode(True) + passes * act.decode(True)),
            ("train.batch_size",) + (pass_keys if passes > 1 else ()) + act.prior_keys()),))

    @classmethod
    def decoder_passes(cls, params) -> tuple[int, tuple[str, ...]]:
        """Decoder passes per image in a training step, and the keys that set them."""
        return 1, ()

    # ---- to implement
    def step_on_replica(self, images: tf.Tensor, indices: tf.Tensor,
                        batch: ReplicaBatch) -> dict[str, tf.Tensor]:
        """One training step on this replica's part of the global batch (module docstring):
        what the training loop runs."""
        raise NotImplementedError

    def _standalone_step(self, images, indices):
        if self.layout.num_replicas != 1:
            raise RuntimeError("standalone_step runs one replica; on several use "
                               "tfgen.execution.StepExecutor")
        seed = step_seed(self.generator)
        return self.step_on_replica(images, indices, single_replica_batch(seed, indices))

    @staticmethod
    def gradient_scale(batch: ReplicaBatch, dtype=tf.float32) -> tf.Tensor:
        """1 / (global batch size): a replica differentiates its per-image sum times this."""
        return 1.0 / tf.cast(batch.global_size, dtype)

    def checkpoint_items(self) -> dict:
        """Named trackables beyond the model that a checkpoint must hold."""
        return {}

    def end_epoch(self) -> dict[str, float]:
        """Called after an epoch's steps, before validation (EM's M-step); what it returns is
        recorded with the epoch's training metrics (``train_<name>``)."""
        return {}

    def after_restore(self) -> None:
        """Re-apply hyper-parameters that a checkpoint also stores (optimizer learning rates),
        so that ``--set`` on resume takes effect."""

    def learning_rate(self) -> float:
        return float(self.cfg.train.learning_rate)

    def validate(self, split: Split, seed: int) -> dict[str, float]:
        """The ``validation_metrics`` on a split (called once per epoch)."""
        return {}

    def log_summaries(self, step: int) -> None:
        """Scheme-specific TensorBoard images and histograms (with the training loop's image
        summaries)."""


class MaximumLikelihood(Scheme, ExactLogLikelihood):
    """A scheme trained by exact maximum likelihood of its own density (flow, autoregressive):
    one optimizer (``train.optimizer``) on :meth:`density_variables`, the loss the negative
    log-likelihood per image of :meth:`training_log_prob` (nats), bits/dim beside it, of the
    discrete images (``discrete_log_likelihood``)."""

    discrete_log_likelihood = True

    def build_optimizer(self) -> None:
        self.pixels = int(math.prod(self.data.image_shape))
        self.optimizer = make_optimizer(self.cfg.train)
        self.optimizer.build(self.density_variables())

    # ---- to implement
    def density_variables(self) -> list:
        raise NotImplementedError

    def density_module(self):
        """The trackable that holds the density's variables (for checkpoints)."""
        raise NotImplementedError

    def training_log_prob(self, images, batch: ReplicaBatch) -> tf.Tensor:
        """log p per image of a training batch [b] (noise, e.g. dequantization, from batch)."""
        raise NotImplementedError

    # ---- shared
    def checkpoint_items(self):
        return {"density": self.density_module(), "optimizer": self.optimizer}

    def after_restore(self):
        self.optimizer.learning_rate.assign(self.cfg.train.learning_rate)

    def step_on_replica(self, images, indices, batch):
        # the data's per-batch transform (dynamic binarization) first, as every scheme does
        images = self.data.transform_batch(images, transform_noise(batch, images))
        variables = self.density_variables()
        with tf.GradientTape() as tape:
            log_prob = self.training_log_prob(images, batch)
            scaled = -tf.reduce_sum(log_prob) * self.gradient_scale(batch)
        self.optimizer.apply_gradients(zip(tape.gradient(scaled, variables), variables))
        nll = -tf.reduce_mean(log_prob)
        return {"loss": nll, "bits_per_dim": nll / (self.pixels * math.log(2.0))}


class PosteriorEstimates(Posterior, LogLikelihood, DecoderLikelihood, LatentSampler):
    """The estimators every scheme with a Gaussian q(z | y) shares, whatever gives the q:
    the ELBO terms and the importance-weighted log-likelihood (the 2AMU20 VAE assignment, task 1b;
    Burda et al. 2016), computed in compiled functions of the images and q's parameters.  The
    importance proposal is q itself or q widened (:mod:`tfgen.inference.proposals`): one piece for
    the encoder's q and for a q fitted at test time alike."""

    def _compiled(self, name, fn):
        cache = self.__dict__.setdefault("_compiled_estimators", {})
        if name not in cache:
            cache[name] = compile_step(fn, self.cfg.train.compile)
        return cache[name]

    def _terms_fn(self, images, loc, scale, seed, num_samples: int):
        noise = tf.random.stateless_normal(tf.concat([[num_samples], tf.shape(loc)], 0), seed,
                                           dtype=loc.dtype)
        return elbo_terms(self.model, gaussian_posterior_from_scale(loc, scale), images,
                          num_samples, noise=noise)

    #: importance samples decoded at once: memory stays O(chunk x batch) whatever K is
    IMPORTANCE_CHUNK = 100

    def _loglik_fn(self, images, loc, scale, seed, num_samples: int,
                   proposal: Proposal = POSTERIOR):
        """log 1/K sum_k p(y, z_k) / r(z_k) (Burda et al. 2016, eq. (8), with the proposal r
        of :mod:`tfgen.inference.proposals` in place of q) with the K samples drawn and
        decoded ``IMPORTANCE_CHUNK`` at a time; the chunks' log-sum-exps are combined exactly
        (log(e^a + e^b)), so the estimate equals the unchunked one."""
        chunk = min(num_samples, self.IMPORTANCE_CHUNK)
        num_chunks = -(-num_samples // chunk)

        def body(i, total):
            chunk_seed = tf.random.experimental.stateless_fold_in(seed, tf.cast(i, tf.int64))
            z, log_r = proposals.draw(proposal, loc, scale, chunk_seed, chunk)
            log_weights = self.model.log_joint(z, images) - log_r
            # the last chunk may hold more than the samples left: those get weight 0
            used = tf.range(chunk) < num_samples - i * chunk
            log_weights = tf.where(used[:, None], log_weights,
                                   tf.constant(-float("inf"), log_weights.dtype))
            return i + 1, tf.reduce_logsumexp(
                tf.stack([total, tf.reduce_logsumexp(log_weights, axis=0)]), axis=0)

        start = tf.fill(tf.shape(loc)[:1], tf.constant(-float("inf"), loc.dtype))
        _, total = tf.while_loop(lambda i, _: i < num_chunks, body, (tf.constant(0), start))
        return total - tf.math.log(tf.cast(num_samples, total.dtype))

    def elbo_terms(self, images, seed, num_samples: int = 1) -> ElboTerms:
        q = self.posterior_for(images, seed)
        return self._compiled("terms", self._terms_fn)(
            images, q.loc, q.scale.diag, tf.constant(seed, tf.int64), num_samples)

    def log_likelihood_estimate(self, images, seed, num_samples: int,
                                proposal: Proposal = POSTERIOR) -> tf.Tensor:
        """Per image [B]: the K-sample importance estimate of log p(y) under ``proposal``."""
        q = self.posterior_for(images, seed)
        return self._compiled("loglik", self._loglik_fn)(
            images, q.loc, q.scale.diag, tf.constant(seed, tf.int64), num_samples,
            Proposal(*proposal))

    def reconstruct(self, images, seed=(0, 0)) -> tf.Tensor:
        """E[y | z = posterior mean]: the reconstruction shown in figures."""
        return self.model.likelihood.mean(self.model.decode(self.posterior_for(images, seed).loc))
