"""Training steps run on the device, several per host round trip, with their metrics summed there.

The training loop used to call ``float()`` on every output of every step: a device-to-host
synchronisation per output and per step, which on an accelerator stalls the pipeline after
every small step.  Here one call of :class:`StepExecutor` runs ``n`` steps (up to
``train.steps_per_execution``, as Keras's ``steps_per_execution``) in one compiled loop that
pulls its batches from a ``tf.data`` iterator, advances the progress counters (step, images and
batches of the epoch, images seen) and returns tensors only:

* the sums over the n steps of every metric the scheme's step reports, each weighted by its
  batch's size (float64, so an epoch's mean is the same whatever n is; on several replicas
  each replica's mean weighted by its share of the batch), and the images counted;
* the last step's metrics;
* one flag, whether every step's loss was finite, and the step and value of the first that was
  not (so a divergence is reported at the step where it happened).

The host reads the flag once per call; everything else stays on the device until a logging
step, the end of an epoch or an interrupt asks for it.  With n = 1 the arithmetic is exactly
the per-step loop's: each metric (float32) times its batch size, summed in float64.
"""
from __future__ import annotations

from typing import NamedTuple

import tensorflow as tf

from tfgen.distribute import ReplicaBatch, step_seed
from tfgen.runtime import compile_step, resolve_compile_mode, step_compile_mode


class Execution(NamedTuple):
    sums: dict          # metric -> sum over the steps of value x batch size (float64)
    images: tf.Tensor   # images trained on (int64)
    last: dict          # the last step's metrics (global batch means)
    finite: tf.Tensor   # every loss finite (bool)
    bad_step: tf.Tensor  # the first step whose loss was not finite (-1: none)
    bad_loss: tf.Tensor  # its loss


class StepExecutor:
    """``run(iterator, n)``: n training steps of a scheme's ``step_on_replica`` on the batches of
    ``iterator`` (per-replica parts from :meth:`tfgen.distribute.ReplicaLayout.distribute`),
    run on every replica of ``strategy``, counting them in ``counters`` (tf.Variables, int64:
    ``step`` +1 per step; ``batches`` +1; ``images`` and ``images_seen`` + the global batch's
    size).  Each step draws its seed from ``generator`` in cross-replica context; the replicas'
    metrics (means over their images) are summed weighted by their image counts, so the sums
    are those of the global batch whatever the number of replicas."""

    def __init__(self, step_on_replica, strategy: tf.distribute.Strategy,
                 generator: tf.random.Generator, counters: dict[str, tf.Variable],
                 compile_mode: str):
        # XLA compiles the scheme's step, not the loop around it (an iterator cannot be
        # compiled by XLA, nor can the replicas' all-gather of their batch sizes).  On several
        # replicas the step holds all-reduces (the optimizers', the cloud statistics'), which
        # TensorFlow cannot run from a function nested in strategy.run: graph mode there
        # (runtime.step_compile_mode, which the run's log line reports)
        self.step_on_replica = (compile_step(step_on_replica, compile_mode)
                                if step_compile_mode(compile_mode, strategy) == "xla"
                                else step_on_replica)
        self.strategy = strategy
        self.generator = generator
        self.counters = counters
        mode = resolve_compile_mode(compile_mode)
        self._replica = self._weighted_step_on_replica
        self.run = self._execute if mode == "eager" else tf.function(self._execute)

    def _weighted_step_on_replica(self, images, indices, seed):
        batch = ReplicaBatch.current(seed, indices)
        out = self.step_on_replica(images, indices, batch)
        weight = tf.cast(batch.size, tf.float64)
        # a replica with no image of this batch reports 0 x (mean of nothing = NaN) = 0
        return ({k: tf.math.multiply_no_nan(tf.cast(v, tf.float64), weight) for k, v in out.items()},
                tf.cast(batch.size, tf.int64))

    def _one(self, iterator):
        images, indices = next(iterator)
        seed = step_seed(self.generator)
        weighted, size = self.strategy.run(self._replica, (images, indices, seed))
        reduce = lambda v: self.strategy.reduce(tf.distribute.ReduceOp.SUM, v, axis=None)
        sums = {k: reduce(v) for k, v in weighted.items()}
        batch = reduce(size)
        # a step counts once its outputs exist: a step that fails (e.g. check_numerics) is
        # not counted, as in a host loop
        with tf.control_dependencies(tf.nest.flatten(sums) + [batch]):
            step = self.counters["step"].assign_add(1)
            self.counters["batches"].assign_add(1)
            for name in ("images", "images_seen"):
                self.counters[name].assign_add(batch)
        loss = sums["loss"] / tf.cast(batch, tf.float64)
        return sums, batch, step, loss

    def _execute(self, iterator, n) -> Execution:
        # the first step fixes the metrics' names; the loop runs the other n - 1
        sums, batch, step, loss = self._one(iterator)
        finite = tf.math.is_finite(loss)
        bad_step = tf.where(finite, tf.constant(-1, tf.int64), step)
        bad_loss = loss
        images = batch
        last = (sums, batch)
        for _ in tf.range(tf.cast(n, tf.int32) - 1):
            out, batch, step, loss = self._one(iterator)
            sums = {k: sums[k] + out[k] for k in sums}
            images = images + batch
            ok = tf.math.is_finite(loss)
            first_bad = tf.logical_and(finite, tf.logical_not(ok))
            bad_step = tf.where(first_bad, step, bad_step)
            bad_loss = tf.where(first_bad, loss, bad_loss)
            finite = tf.logical_and(finite, ok)
            last = (out, batch)
        out, batch = last
        last = {k: v / tf.cast(batch, tf.float64) for k, v in out.items()}
        return Execution(sums, images, last, finite, bad_step, bad_loss)
