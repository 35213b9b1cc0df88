"""The training loop shared by every scheme: epochs of executor calls, and callbacks.

Python control flow lives here; the per-batch work is the scheme's ``step_on_replica``,
compiled and run several steps per call by :class:`tfgen.execution.StepExecutor`.  What
happens around the steps -- summaries, progress, early stopping, the time budget,
checkpoints, NaN, stop signals -- is in :mod:`tfgen.training.callbacks`; what a run continues from, in
:class:`tfgen.training.state.TrainingState`.
"""
from __future__ import annotations

import math
import time

import tensorflow as tf

from tfgen.data import DataBundle, train_dataset
from tfgen.execution import StepExecutor
from tfgen.signals import InterruptFlag, hook_from_env
from tfgen.training.callbacks import (Callback, Checkpointing, EarlyStopping, Epoch,
                                      ProgressLine, RestoreBestWeights, SignalAtStep, Steps,
                                      StopOnNaN, StopOnSignal, Summaries, TimeBudget,
                                      monitored)
from tfgen.training.progress import Progress
from tfgen.training.state import TrainingState


class TrainingLoop:
    """Trains ``state``'s scheme on ``data`` up to ``train.epochs``, calling ``callbacks`` (in
    their order) around the steps; a callback ends training early by setting
    ``stop_training``, a run at once by raising."""

    def __init__(self, state: TrainingState, data: DataBundle, callbacks: list[Callback]):
        self.state, self.data, self.callbacks = state, data, callbacks
        self.cfg, self.scheme = state.cfg, state.scheme
        for callback in callbacks:
            callback.loop = self
        self.stop_training = False
        self.executor = StepExecutor(self.scheme.step_on_replica, self.scheme.strategy,
                                     state.generator, state.step_counters(),
                                     self.cfg.train.compile)
        self.images_trained = 0  # this session's, and the seconds the executor took for them
        self.train_seconds = 0.0
        self._dataset_cache: dict = {}
        self._host_step = 0  # the step counter, known without reading it from the device

    def run(self) -> None:
        state, epochs = self.state, self.cfg.train.epochs
        state.session_started = time.monotonic()
        self._call("on_train_begin")
        self._host_step = state.steps_done()
        while not self.stop_training and state.epochs_done() < epochs:
            epoch = self._begin_epoch()
            self._call("on_epoch_begin", epoch)
            batches = iter(self.scheme.layout.distribute(self._epoch_batches(epoch)))
            while epoch.images_left > 0 and not self.stop_training:
                steps = self._run_steps(batches, epoch)
                self._call("on_steps_end", epoch, steps)
            if epoch.images_left > 0:  # stopped mid-epoch (a time budget): its sums are kept
                break
            epoch.steps_done()
            record = self._record(epoch)
            state.end_epoch(record)
            self._call("on_epoch_end", epoch, record)
        self._call("on_train_end")

    def _call(self, event: str, *args) -> None:
        for callback in self.callbacks:
            getattr(callback, event)(*args)

    # ------------------------------------------------------------------ an epoch
    def _begin_epoch(self) -> Epoch:
        """The epoch in progress, started now if none is (a resumed run's goes on)."""
        state, train = self.state, self.cfg.train
        if int(state.epoch_images.numpy()) == 0:
            n, cap = len(self.data.train), train.steps_per_epoch
            state.start_epoch(min(n, cap * train.batch_size) if cap else n)
        sums, count = state.partial_sums()
        first = int(state.images_in_epoch.numpy())
        return Epoch(state.epochs_done(), int(state.batches_in_epoch.numpy()),
                     int(state.epoch_images.numpy()) - first, train.batch_size, sums, count)

    def _epoch_batches(self, epoch: Epoch) -> tf.data.Dataset:
        """The images of the epoch not yet trained on, in batches.

        The epoch's order is fixed by (seed, epoch); with whole batches of today's size this
        is exactly the batches an uninterrupted run sees.  After a resume with another batch
        size mid-epoch, the epoch continues from the same image in batches of the new size."""
        cfg, n = self.cfg, len(self.data.train)
        size, left = cfg.train.batch_size, epoch.images_left
        first = int(self.state.images_in_epoch.numpy())
        if first % size == 0 and (left % size == 0 or first + left == n):
            return train_dataset(self.data.train, size, cfg.experiment.seed, epoch.index,
                                 cfg.data, skip_batches=first // size,
                                 cached=self._dataset_cache).take(math.ceil(left / size))
        ds = train_dataset(self.data.train, size, cfg.experiment.seed, epoch.index, cfg.data,
                           cached=self._dataset_cache)
        return ds.unbatch().skip(first).take(left).batch(size)

    def _run_steps(self, batches, epoch: Epoch) -> Steps:
        """One executor call: as many steps as ``train.steps_per_execution`` and the epoch
        allow; its metrics join the epoch's running sums."""
        size = self.cfg.train.batch_size
        n = min(self.cfg.train.steps_per_execution, math.ceil(epoch.images_left / size))
        images = min(n * size, epoch.images_left)  # whole batches; the epoch's last may be smaller
        t0 = time.monotonic()
        ran = self.executor.run(batches, tf.constant(n, tf.int64))
        finite = bool(ran.finite)  # the one value read back on every call
        self.train_seconds += time.monotonic() - t0
        first, self._host_step = self._host_step, self._host_step + n
        self.state.changed()
        epoch.trained(n, images, ran.sums)
        self.images_trained += images
        return Steps(first, self._host_step, ran, finite)

    def _record(self, epoch: Epoch) -> dict:
        """The epoch's line of the history: its training means, what the scheme's own end of
        epoch reports (EM's M-step), then validation, which sees its result."""
        record = {"epoch": epoch.index + 1, "step": self.state.steps_done()}
        record.update({f"train_{k}": float(v) / max(epoch.count, 1)
                       for k, v in epoch.sums.items()})
        record.update({f"train_{k}": float(v) for k, v in self.scheme.end_epoch().items()})
        if self.data.val is not None and self.scheme.validation_metrics:
            values = self.scheme.validate(self.data.val, self.cfg.experiment.seed + 1 + epoch.index)
            record.update({f"val_{name}": values[name] for name in self.scheme.validation_metrics})
        record["train_seconds"] = self.state.train_seconds()  # cumulative, for curves over time
        return record


def fit(state: TrainingState, data: DataBundle, progress: Progress,
        interrupt: InterruptFlag | None = None) -> dict:
    """Train up to ``train.epochs`` with the run's callbacks (their order: see
    :mod:`tfgen.training.callbacks`) and return the training summary (metrics.json's
    ``train``).  ``interrupt`` is the run's stop-signal handling (one of its own if not
    given): a stop request ends training with a checkpoint and Interrupted."""
    if interrupt is None:
        with InterruptFlag() as own:
            return fit(state, data, progress, own)
    wall_start = time.monotonic()
    cfg = state.cfg
    early_stopping = EarlyStopping(state, monitored(state.scheme, data), progress)
    time_budget = TimeBudget(state, progress)
    callbacks = [SignalAtStep(hook_from_env()), StopOnNaN(state), Summaries(state, data),
                 ProgressLine(progress, cfg.train.epochs), early_stopping, time_budget,
                 Checkpointing(state, early_stopping, interrupt), StopOnSignal(state, interrupt)]
    if cfg.train.early_stopping.patience and cfg.train.early_stopping.restore_best:
        callbacks.append(RestoreBestWeights(state))
    loop = TrainingLoop(state, data, callbacks)
    loop.run()
    return {"epochs_completed": len(state.history), "steps": state.steps_done(),
            "images_seen": int(state.images_seen.numpy()),
            **early_stopping.summary(), **time_budget.summary(),
            "wall_seconds_this_session": time.monotonic() - wall_start,
            "images_per_second": (loop.images_trained / loop.train_seconds
                                  if loop.train_seconds else None)}
