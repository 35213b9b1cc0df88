"""Training steps run on the device, several per host round trip, with their metrics summed there.

The trainer used to call ``float()`` on every output of every step: a device-to-host
synchronisation per output and per step, which on an accelerator stalls the pipeline after
every small step.  Here one call of :class:`StepExecutor` runs ``n`` steps (up to
``train.steps_per_execution``, as Keras's ``steps_per_execution``) in one compiled loop that
pulls its batches from a ``tf.data`` iterator, advances the progress counters (step, images and
batches of the epoch, images seen) and returns tensors only:

* the sums over the n steps of every metric the scheme's step reports, each weighted by its
  batch's size (float64, so an epoch's mean is the same whatever n is), and the images counted;
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

from tfgen.runtime import resolve_compile


class Execution(NamedTuple):
    sums: dict          # metric -> sum over the steps of value x batch size (float64)
    images: tf.Tensor   # images trained on (int64)
    last: dict          # the last step's metrics
    finite: tf.Tensor   # every loss finite (bool)
    bad_step: tf.Tensor  # the first step whose loss was not finite (-1: none)
    bad_loss: tf.Tensor  # its loss


class StepExecutor:
    """``run(iterator, n)``: n training steps of ``train_step(images, indices) -> metrics`` on
    batches from ``iterator``, counting them in ``counters`` (tf.Variables, int64: ``step`` +1
    per step; ``batches`` +1; ``images`` and ``images_seen`` + the batch's size)."""

    def __init__(self, train_step, counters: dict[str, tf.Variable], compile_mode: str):
        self.train_step = train_step
        self.counters = counters
        mode = resolve_compile(compile_mode)
        # the loop itself is a graph; XLA stays inside the scheme's step (an iterator cannot
        # be compiled by XLA)
        self.run = self._execute if mode == "eager" else tf.function(self._execute)

    def _one(self, iterator):
        images, indices = next(iterator)
        out = self.train_step(images, indices)
        batch = tf.shape(images, out_type=tf.int64)[0]
        # a step counts once its outputs exist: a step that fails (e.g. check_numerics) is
        # not counted, as in a host loop
        with tf.control_dependencies(tf.nest.flatten(out)):
            step = self.counters["step"].assign_add(1)
            self.counters["batches"].assign_add(1)
            for name in ("images", "images_seen"):
                self.counters[name].assign_add(batch)
        return out, batch, step

    def _execute(self, iterator, n) -> Execution:
        # the first step fixes the metrics' names; the loop runs the other n - 1
        out, batch, step = self._one(iterator)
        weight = tf.cast(batch, tf.float64)
        sums = {k: tf.cast(v, tf.float64) * weight for k, v in out.items()}
        loss = out["loss"]
        finite = tf.math.is_finite(loss)
        bad_step = tf.where(finite, tf.constant(-1, tf.int64), step)
        bad_loss = loss
        images = batch
        last = out
        for _ in tf.range(tf.cast(n, tf.int32) - 1):
            out, batch, step = self._one(iterator)
            weight = tf.cast(batch, tf.float64)
            sums = {k: sums[k] + tf.cast(out[k], tf.float64) * weight for k in sums}
            images = images + batch
            ok = tf.math.is_finite(out["loss"])
            first_bad = tf.logical_and(finite, tf.logical_not(ok))
            bad_step = tf.where(first_bad, step, bad_step)
            bad_loss = tf.where(first_bad, out["loss"], bad_loss)
            finite = tf.logical_and(finite, ok)
            last = out
        return Execution(sums, images, last, finite, bad_step, bad_loss)
