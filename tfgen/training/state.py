"""A run's training state: what a checkpoint holds and how it is saved and restored.

Everything needed to continue a run exactly -- weights, optimizer slots, scheme state (e.g.
particles), the RNG state, the step, the early-stopping counters, the progress in epochs and
images and the history -- is in one ``tf.train.Checkpoint`` (written and read by
:mod:`tfgen.checkpoints`); the best weights (early stopping's) in a second one.

Progress is counted in epochs and images, never inferred from the step: an epoch's size in
images is fixed when it starts and saved, so a run resumed with another ``train.batch_size``
finishes the epoch it was in from the same image (in batches of the new size) and counts the
following epochs with the new size.
"""
from __future__ import annotations

import contextlib
import json
import math
import time
from pathlib import Path
from typing import Callable, ContextManager

import tensorflow as tf
import tf_keras as keras

from tfgen.checkpoints import CheckpointMismatch, CheckpointStore, NoIntactCheckpoint, Restored
from tfgen.config import Config
from tfgen.errors import CheckpointError, ConfigError
from tfgen.rundir import atomic_write
from tfgen.training.progress import Progress


class TrainingState:
    """The counters, the history and the checkpoints of a run in ``run_dir`` whose model and
    scheme state are ``scheme``'s.  The checkpoint's keys are its format: old checkpoints
    restore only while they stay as they are."""

    def __init__(self, cfg: Config, scheme, generator: tf.random.Generator, run_dir: Path):
        self.cfg, self.scheme, self.generator, self.run_dir = cfg, scheme, generator, run_dir
        counter = lambda name, value=0: tf.Variable(value, dtype=tf.int64, name=name,
                                                    trainable=False)
        self.step = counter("step")  # optimizer steps (TensorBoard's x axis, checkpoint numbers)
        self.best_metric = tf.Variable(math.inf, dtype=tf.float64, trainable=False)
        self.best_epoch = counter("best_epoch", -1)
        self.bad_epochs = counter("bad_epochs")
        # progress, in epochs and images: the batch size may change on resume
        self.epoch = counter("epoch")  # epochs completed
        self.epoch_images = counter("epoch_images")  # size of the epoch in progress (0: none)
        self.images_in_epoch = counter("images_in_epoch")  # of it, trained on
        self.batches_in_epoch = counter("batches_in_epoch")
        self.images_seen = counter("images_seen")
        self.batch_size = counter("batch_size", cfg.train.batch_size)  # of the saved progress
        # the epoch in progress's running sums and the history, as JSON: a checkpoint that
        # resumes also restores the history up to it
        self.partial = tf.Variable("", dtype=tf.string, trainable=False)
        self.history_json = tf.Variable("[]", dtype=tf.string, trainable=False)
        items = scheme.checkpoint_items()
        self.checkpoint = tf.train.Checkpoint(
            model=scheme.model, generator=generator, step=self.step,
            best_metric=self.best_metric, best_epoch=self.best_epoch,
            bad_epochs=self.bad_epochs, epoch=self.epoch, epoch_images=self.epoch_images,
            images_in_epoch=self.images_in_epoch, batches_in_epoch=self.batches_in_epoch,
            images_seen=self.images_seen, batch_size=self.batch_size,
            partial_epoch=self.partial, history=self.history_json, **items)
        weights = {k: v for k, v in items.items() if not isinstance(v, keras.optimizers.Optimizer)}
        self.best_checkpoint = tf.train.Checkpoint(model=scheme.model, **weights)
        ckpt_dir = run_dir / "checkpoints"
        self.store = CheckpointStore(self.checkpoint, ckpt_dir, cfg.train.keep_checkpoints,
                                     root=run_dir)
        self.best_store = CheckpointStore(self.best_checkpoint, ckpt_dir / "best", 1,
                                          root=run_dir)
        self.history: list[dict] = []
        self.history_path = run_dir / "history.json"
        # training wall time: the sessions before this one's (from the restored progress) and
        # when this one's training started (train.time_budget_s counts both)
        self.seconds_before = 0.0
        self.session_started: float | None = None
        self._unsaved = True  # the state changed since the last checkpoint

    # ------------------------------------------------------------------ restore
    def restore(self) -> Restored | None:
        """Restore the newest intact checkpoint (None if the run has none); writes nothing.

        A damaged checkpoint is passed over (``Restored.problems`` names its files); one that
        does not fit the objects built from today's config is a ConfigError."""
        try:
            restored = self.store.restore()
        except NoIntactCheckpoint as err:
            raise CheckpointError(f"{self.run_dir}: no checkpoint can be read, so the run cannot "
                                  f"be resumed: {err}") from None
        except CheckpointMismatch as err:
            names = [name for name, _ in tf.train.list_variables(err.path)]
            if not any(name.startswith("epoch/") for name in names):
                raise CheckpointError(
                    f"{self.run_dir}: its checkpoint {err.path} was written by an older tfgen, "
                    f"which did not save its progress in epochs and images; start a new run "
                    f"with: tfgen run {self.run_dir / 'config.toml'}") from None
            raise ConfigError(str(self.run_dir), None,
                              f"its checkpoint {err.path} does not fit the config (was a model, "
                              f"encoder or optimizer key changed with --set on resume?): "
                              f"{err.detail}") from None
        if restored is None:
            return None
        self.scheme.after_restore()
        self.history = json.loads(self.history_json.numpy().decode())
        self.seconds_before = self._saved_seconds()
        self._unsaved = False
        return restored

    def restore_best(self) -> None:
        """The best weights (early stopping's), if they can be read; else the weights stay."""
        try:
            self.best_store.restore()
        except NoIntactCheckpoint as err:
            Progress.warn(f"the best weights cannot be read ({err}); evaluating the last ones")
        except CheckpointMismatch as err:
            raise CheckpointError(f"the best checkpoint {err.path} does not fit the model: "
                                  f"{err.detail}") from None

    # ------------------------------------------------------------------ reading
    def steps_done(self) -> int:
        return int(self.step.numpy())

    def epochs_done(self) -> int:
        return int(self.epoch.numpy())

    def position(self) -> str:
        """Where training stands, for messages: "step 8, epoch 3 at image 64 of 128"."""
        epoch, done, size = (int(v.numpy()) for v in (self.epoch, self.images_in_epoch,
                                                       self.epoch_images))
        where = f"epoch {epoch + 1} at image {done} of {size}" if size else f"after epoch {epoch}"
        text = f"step {self.steps_done()}, {where}"
        saved = int(self.batch_size.numpy())
        if size and saved != self.cfg.train.batch_size:
            text += (f"; the rest of epoch {epoch + 1} runs in batches of train.batch_size "
                     f"{self.cfg.train.batch_size} (it was {saved})")
        return text

    def train_seconds(self) -> float:
        """Wall seconds of training so far, every session's (compilation, validation and
        checkpoints included: what a time budget is spent on)."""
        running = (time.monotonic() - self.session_started
                   if self.session_started is not None else 0.0)
        return self.seconds_before + running

    def _saved_seconds(self) -> float:
        """The training seconds the restored progress holds: the epoch in progress's, else
        the last epoch record's (runs from before the count have none: 0)."""
        text = self.partial.numpy().decode()
        if text and "seconds" in json.loads(text):
            return float(json.loads(text)["seconds"])
        return float(self.history[-1].get("train_seconds", 0.0)) if self.history else 0.0

    def step_counters(self) -> dict[str, tf.Variable]:
        """The counters a :class:`tfgen.execution.StepExecutor` advances on the device."""
        return {"step": self.step, "batches": self.batches_in_epoch,
                "images": self.images_in_epoch, "images_seen": self.images_seen}

    def partial_sums(self) -> tuple[dict, int]:
        """The running sums of the epoch in progress and the images they are over (from the
        checkpoint when resumed mid-epoch)."""
        text = self.partial.numpy().decode()
        if not text:
            return {}, 0
        partial = json.loads(text)
        return dict(partial["sums"]), int(partial["count"])

    # ------------------------------------------------------------------ changing
    def changed(self) -> None:
        """Training moved on since the last checkpoint."""
        self._unsaved = True

    def start_epoch(self, images: int) -> None:
        """Fix the size of the epoch about to start, in images (kept if the batch size changes)."""
        self.epoch_images.assign(images)
        for counter in (self.images_in_epoch, self.batches_in_epoch):
            counter.assign(0)
        self.partial.assign("")

    def keep_partial_sums(self, sums: dict, count: int) -> None:
        """The epoch in progress's running sums, for a checkpoint taken mid-epoch."""
        self.partial.assign(json.dumps({"sums": {k: float(v) for k, v in sums.items()},
                                        "count": count, "seconds": self.train_seconds()}))

    def end_epoch(self, record: dict) -> None:
        """The epoch in progress is done; ``record`` is its line of the history."""
        self.history.append(record)
        self.epoch.assign_add(1)
        for counter in (self.epoch_images, self.images_in_epoch, self.batches_in_epoch):
            counter.assign(0)
        self.partial.assign("")
        self._unsaved = True

    # ------------------------------------------------------------------ writing
    @property
    def saved(self) -> bool:
        """Whether the newest checkpoint holds the training state as it is now."""
        return not self._unsaved and self.store.latest is not None

    def save(self, guard: Callable[[], ContextManager] = contextlib.nullcontext) -> str:
        """Checkpoint the training state (see tfgen.checkpoints: a kill cannot break it) and
        write history.json, inside ``guard()`` (a run's: no stop signal breaks the save,
        :meth:`tfgen.signals.InterruptFlag.saving`); with nothing new since the last
        checkpoint, that one's path."""
        if self.saved:
            return self.store.latest
        self.history_json.assign(json.dumps(self.history))
        self.batch_size.assign(self.cfg.train.batch_size)
        with guard():
            path = self.store.save(self.steps_done())
            self.write_history()
            self._unsaved = False
        return path

    def write_history(self) -> None:
        """history.json: the epochs' records, as the history in memory is now."""
        atomic_write(self.history_path, json.dumps(self.history, indent=1))
