"""The training loop shared by every scheme: batches, logging, validation, early stopping,
checkpoints, NaN detection, stop signals (Ctrl-C, SIGTERM, SIGUSR1), resume.

Python control flow lives here; the per-batch work is the scheme's compiled
``train_step``.  Everything needed to continue a run exactly -- weights,
optimizer slots, scheme state (e.g. particles), the RNG state, the step, the
early-stopping counters, the progress in epochs and images and the history --
is in one ``tf.train.Checkpoint`` (written and read by :mod:`tfgen.checkpoints`).

Progress is counted in epochs and images, never inferred from the step: an
epoch's size in images is fixed when it starts and saved, so a run resumed
with another ``train.batch_size`` finishes the epoch it was in from the same
image (in batches of the new size) and counts the following epochs with the
new size.

A stop signal is honoured as :class:`tfgen.signals.InterruptFlag` says; its test hook
(``TFGEN_TEST_SIGNAL=<n>:<SIGNAME>``, a signal after step n) fires here.
"""
from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import tensorflow as tf
import tf_keras as keras

from tfgen.checkpoints import CheckpointMismatch, CheckpointStore, NoIntactCheckpoint, Restored
from tfgen.config import Config
from tfgen.data import DataBundle, train_dataset
from tfgen.errors import CheckpointError, ConfigError, Interrupted, TrainingDiverged
from tfgen.execution import StepExecutor
from tfgen.inference.capabilities import AmortizedPosterior
from tfgen.rundir import atomic_write
from tfgen.signals import InterruptFlag, hook_from_env, signal_name


class Progress:
    """A one-line progress bar on stderr (an epoch summary line when stderr is not a terminal)."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.tty = sys.stderr.isatty()
        self._last = 0.0

    def update(self, epoch: int, epochs: int, done: int, total: int, loss, rate: float,
               step: int, final: bool = False) -> None:
        """``loss``: a number, or a function giving it (called only if the line is drawn)."""
        if not self.enabled:
            return
        now = time.monotonic()
        if not final and (not self.tty or now - self._last < 0.2):
            return
        self._last = now
        if callable(loss):  # read from the device only when the line is drawn
            loss = loss()
        width = 24
        filled = int(width * done / max(total, 1))
        bar = "#" * filled + "." * (width - filled)
        line = (f"epoch {epoch + 1}/{epochs} [{bar}] {done}/{total} step {step} "
                f"loss {loss:.4g} {rate:,.0f} img/s")
        if self.tty:
            sys.stderr.write("\r" + line + ("\n" if final else ""))
        else:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()

    def message(self, text: str) -> None:
        if self.enabled:
            sys.stderr.write(text + "\n")
            sys.stderr.flush()

    @staticmethod
    def warn(text: str) -> None:
        """A line the user must see, even with --quiet (e.g. a damaged checkpoint passed over)."""
        sys.stderr.write(f"warning: {text}\n")
        sys.stderr.flush()


class Trainer:
    def __init__(self, cfg: Config, data: DataBundle, scheme, run_dir: Path, progress: Progress,
                 generator: tf.random.Generator):
        self.cfg, self.data, self.scheme, self.run_dir = cfg, data, scheme, run_dir
        self.model = scheme.model
        self.progress = progress
        counter = lambda name, value=0: tf.Variable(value, dtype=tf.int64, name=name, trainable=False)
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
            model=self.model, generator=generator, step=self.step, best_metric=self.best_metric,
            best_epoch=self.best_epoch, bad_epochs=self.bad_epochs, epoch=self.epoch,
            epoch_images=self.epoch_images, images_in_epoch=self.images_in_epoch,
            batches_in_epoch=self.batches_in_epoch, images_seen=self.images_seen,
            batch_size=self.batch_size, partial_epoch=self.partial, history=self.history_json,
            **items)
        weights = {k: v for k, v in items.items() if not isinstance(v, keras.optimizers.Optimizer)}
        self.best_checkpoint = tf.train.Checkpoint(model=self.model, **weights)
        ckpt_dir = run_dir / "checkpoints"
        self.store = CheckpointStore(self.checkpoint, ckpt_dir, cfg.train.keep_checkpoints,
                                     root=run_dir)
        self.best_store = CheckpointStore(self.best_checkpoint, ckpt_dir / "best", 1,
                                          root=run_dir)
        self.executor = StepExecutor(
            scheme.replica_step, scheme.strategy, generator, {"step": self.step, "batches": self.batches_in_epoch,
                                "images": self.images_in_epoch, "images_seen": self.images_seen},
            cfg.train.compile)
        self._unsaved = True  # training state changed since the last checkpoint
        self._interrupt = InterruptFlag()  # the run's signal handling, once fit() has it
        self.history: list[dict] = []
        self.history_path = run_dir / "history.json"
        self._dataset_cache: dict = {}
        self.stopped_early = False
        # the scheme names what early stopping watches; on the validation split if it validates
        validating = data.val is not None and bool(scheme.validation_metrics)
        self.monitor = f"{'val' if validating else 'train'}_{scheme.monitor}"

    # ------------------------------------------------------------------ state
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
        self._unsaved = False
        return restored

    def position(self) -> str:
        """Where training stands, for messages: "step 8, epoch 3 at image 64 of 128"."""
        epoch, done, size = (int(v.numpy()) for v in (self.epoch, self.images_in_epoch,
                                                       self.epoch_images))
        where = f"epoch {epoch + 1} at image {done} of {size}" if size else f"after epoch {epoch}"
        text = f"step {int(self.step.numpy())}, {where}"
        saved = int(self.batch_size.numpy())
        if size and saved != self.cfg.train.batch_size:
            text += (f"; the rest of epoch {epoch + 1} runs in batches of train.batch_size "
                     f"{self.cfg.train.batch_size} (it was {saved})")
        return text

    @property
    def saved(self) -> bool:
        """Whether the newest checkpoint holds the training state as it is now."""
        return not self._unsaved and self.store.latest is not None

    def save(self) -> str:
        """Checkpoint the training state (see tfgen.checkpoints: a kill cannot break it, nor
        can a stop signal during a run) and write history.json; with nothing new since the
        last checkpoint, that one's path."""
        if self.saved:
            return self.store.latest
        self.history_json.assign(json.dumps(self.history))
        self.batch_size.assign(self.cfg.train.batch_size)
        with self._interrupt.saving():
            path = self.store.save(int(self.step.numpy()))
            atomic_write(self.history_path, json.dumps(self.history, indent=1))
            self._unsaved = False
        return path

    # ------------------------------------------------------------------ loop
    def fit(self, interrupt: InterruptFlag | None = None) -> dict:
        """Train up to ``train.epochs``; ``interrupt`` is the run's stop-signal handling (one of
        its own if not given).  A stop request ends it with a checkpoint and Interrupted."""
        if interrupt is None:
            with InterruptFlag() as own:
                return self.fit(own)
        self._interrupt = interrupt
        cfg = self.cfg
        epochs, batch_size = cfg.train.epochs, cfg.train.batch_size
        wall_start = time.monotonic()
        images_seen = 0
        train_time = 0.0
        if int(self.step.numpy()) == 0:
            self._log_hparams()
        signal_hook = hook_from_env()
        self._host_step = int(self.step.numpy())  # the step counter, known without reading it
        while int(self.epoch.numpy()) < epochs:
            epoch = int(self.epoch.numpy())
            if self.stopped_early or self._early_stop_due():
                self.stopped_early = True
                break
            if int(self.epoch_images.numpy()) == 0:
                self._start_epoch()
            sums, count = self._partial_sums()
            first = int(self.images_in_epoch.numpy())
            left = int(self.epoch_images.numpy()) - first
            done = int(self.batches_in_epoch.numpy())
            total = done + math.ceil(left / batch_size)
            window_start, window_images = time.monotonic(), 0
            epoch_start, epoch_images = window_start, 0
            rate = 0.0
            per_call = cfg.train.steps_per_execution
            batches = iter(self.scheme.layout.distribute(self._epoch_batches(epoch, first, left)))
            while left > 0:
                n = min(per_call, math.ceil(left / batch_size))
                # the batches of this call: whole ones, the epoch's last may be smaller
                images = min(n * batch_size, left)
                t0 = time.monotonic()
                ran = self.executor.run(batches, tf.constant(n, tf.int64))
                finite = bool(ran.finite)  # the one value read back on every call
                train_time += time.monotonic() - t0
                step_before, step = self._host_step, self._host_step + n
                self._host_step = step
                signal_hook.after_steps(step_before, step)
                self._unsaved = True
                done += n
                left -= images
                images_seen += images
                window_images += images
                epoch_images += images
                if not finite:
                    self._diverged(float(ran.bad_loss), int(ran.bad_step), epoch)
                for k, v in ran.sums.items():
                    sums[k] = sums.get(k, 0.0) + v
                count += images
                if step // cfg.logging.every_steps > step_before // cfg.logging.every_steps:
                    elapsed = time.monotonic() - window_start
                    rate = window_images / max(elapsed, 1e-9)
                    weight = float(ran.images)
                    self._log_step({k: float(v) / weight for k, v in ran.sums.items()}, step, rate)
                    window_start, window_images = time.monotonic(), 0
                if step // cfg.logging.images_every_steps > step_before // cfg.logging.images_every_steps:
                    self._log_images(step)
                self.progress.update(epoch, epochs, done, total, lambda: float(ran.last["loss"]),
                                     rate or window_images / max(time.monotonic() - window_start, 1e-9),
                                     step)
                if interrupt.requested and left > 0:
                    self.partial.assign(json.dumps({"sums": {k: float(v) for k, v in sums.items()},
                                                    "count": count}))
                    self._interrupted(interrupt)
            epoch_rate = epoch_images / max(time.monotonic() - epoch_start, 1e-9)
            record = {"epoch": epoch + 1, "step": int(self.step.numpy())}
            record.update({f"train_{k}": float(v) / max(count, 1) for k, v in sums.items()})
            # the scheme's own end of epoch (EM's M-step), before validation sees the result
            record.update({f"train_{k}": float(v) for k, v in self.scheme.end_epoch().items()})
            record.update(self.validate(epoch))
            self.history.append(record)
            self._log_epoch(record)
            improved = self._update_early_stopping(record, epoch)
            self._end_epoch()
            self.progress.update(epoch, epochs, done, total,
                                 record.get("train_loss", float("nan")),
                                 epoch_rate, record["step"], final=True)
            self.progress.message("  " + "  ".join(f"{k} {v:.4g}" for k, v in record.items()
                                                   if k not in ("epoch", "step")))
            if improved:
                with interrupt.saving():
                    self.best_store.save(epoch + 1)
            if (epoch + 1) % cfg.train.checkpoint_every_epochs == 0 or epoch + 1 == epochs:
                self.save()
            if interrupt.requested:
                self._interrupted(interrupt)
        else:
            if self._early_stop_due():
                self.stopped_early = True
        if self.stopped_early:
            self.progress.message(
                f"early stopping: no improvement of {self.monitor} for "
                f"{cfg.train.early_stopping.patience} epochs (best epoch {int(self.best_epoch.numpy()) + 1})")
        self.save()
        if interrupt.requested:  # a signal during the last save: stop before evaluating
            self._interrupted(interrupt)
        if cfg.train.early_stopping.patience and cfg.train.early_stopping.restore_best:
            self.restore_best()
        wall = time.monotonic() - wall_start
        return {"epochs_completed": len(self.history), "steps": int(self.step.numpy()),
                "images_seen": int(self.images_seen.numpy()),
                "stopped_early": self.stopped_early,
                "best_epoch": int(self.best_epoch.numpy()) + 1 if self.best_epoch.numpy() >= 0 else None,
                "monitor": self.monitor,
                "best_" + self.monitor: float(self.best_metric.numpy()) if math.isfinite(self.best_metric.numpy()) else None,
                "wall_seconds_this_session": wall,
                "images_per_second": images_seen / train_time if train_time else None}

    def _start_epoch(self) -> None:
        """Fix the size of the epoch about to start, in images (kept if the batch size changes)."""
        n, cap = len(self.data.train), self.cfg.train.steps_per_epoch
        self.epoch_images.assign(min(n, cap * self.cfg.train.batch_size) if cap else n)
        for counter in (self.images_in_epoch, self.batches_in_epoch):
            counter.assign(0)
        self.partial.assign("")

    def _end_epoch(self) -> None:
        self.epoch.assign_add(1)
        for counter in (self.epoch_images, self.images_in_epoch, self.batches_in_epoch):
            counter.assign(0)
        self.partial.assign("")
        self._unsaved = True

    def _epoch_batches(self, epoch: int, first: int, left: int) -> tf.data.Dataset:
        """The ``left`` images of epoch ``epoch`` that follow its first ``first``, in batches.

        The epoch's order is fixed by (seed, epoch); with whole batches of today's size this
        is exactly the batches an uninterrupted run sees.  After a resume with another batch
        size mid-epoch, the epoch continues from the same image in batches of the new size."""
        cfg, n = self.cfg, len(self.data.train)
        size = cfg.train.batch_size
        if first % size == 0 and (left % size == 0 or first + left == n):
            return train_dataset(self.data.train, size, cfg.experiment.seed, epoch, cfg.data,
                                 skip_batches=first // size,
                                 cached=self._dataset_cache).take(math.ceil(left / size))
        ds = train_dataset(self.data.train, size, cfg.experiment.seed, epoch, cfg.data,
                           cached=self._dataset_cache)
        return ds.unbatch().skip(first).take(left).batch(size)

    def _partial_sums(self) -> tuple[dict, int]:
        """The running sums of the epoch in progress (from the checkpoint when resumed)."""
        text = self.partial.numpy().decode()
        if not text:
            return {}, 0
        partial = json.loads(text)
        return dict(partial["sums"]), int(partial["count"])

    def _interrupted(self, interrupt: InterruptFlag):
        path = self.save()
        interrupt.phase = "stopping"  # the checkpoint is written: a further signal is moot
        raise Interrupted(f"interrupted by {signal_name(interrupt.first)} at {self.position()}; "
                          f"checkpoint {path}; continue with: tfgen run --resume {self.run_dir}",
                          interrupt.first)

    def restore_best(self) -> None:
        try:
            self.best_store.restore()
        except NoIntactCheckpoint as err:
            Progress.warn(f"the best weights cannot be read ({err}); evaluating the last ones")
        except CheckpointMismatch as err:
            raise CheckpointError(f"the best checkpoint {err.path} does not fit the model: "
                                  f"{err.detail}") from None

    def validate(self, epoch: int) -> dict:
        if self.data.val is None or not self.scheme.validation_metrics:
            return {}
        values = self.scheme.validate(self.data.val, self.cfg.experiment.seed + 1 + epoch)
        return {f"val_{name}": values[name] for name in self.scheme.validation_metrics}

    # ------------------------------------------------------------------ helpers
    def _early_stop_due(self) -> bool:
        patience = self.cfg.train.early_stopping.patience
        return bool(patience) and int(self.bad_epochs.numpy()) >= patience

    def _update_early_stopping(self, record: dict, epoch: int) -> bool:
        value = record.get(self.monitor)
        if value is None:
            return False
        if value < float(self.best_metric.numpy()) - self.cfg.train.early_stopping.min_delta:
            self.best_metric.assign(value)
            self.best_epoch.assign(epoch)
            self.bad_epochs.assign(0)
            return True
        self.bad_epochs.assign_add(1)
        return False

    def _diverged(self, value: float, step: int, epoch: int):
        atomic_write(self.history_path, json.dumps(self.history, indent=1))
        last = self.store.latest
        kept = f"the last good checkpoint is {last}" if last else "no checkpoint had been written yet"
        raise TrainingDiverged(
            f"training diverged: the loss became {value} at step {step} (epoch {epoch + 1}); "
            f"{kept}; lower train.learning_rate or check the likelihood's parameters")

    def _log_step(self, values: dict, step: int, rate: float) -> None:
        for k, v in values.items():
            tf.summary.scalar(f"train/{k}", v, step=step)
        tf.summary.scalar("train/learning_rate", self.scheme.learning_rate(), step=step)
        tf.summary.scalar("train/images_per_second", rate, step=step)

    def _log_epoch(self, record: dict) -> None:
        step = record["step"]
        for k, v in record.items():
            if k in ("epoch", "step"):
                continue
            split, _, name = k.partition("_")
            tf.summary.scalar(f"epoch_{split}/{name}", v, step=step)

    def _log_images(self, step: int) -> None:
        from tfgen.inference.grids import SamplesConfig, reconstruction_grid, sample_grid

        n = self.cfg.logging.num_images
        if isinstance(self.scheme, AmortizedPosterior):  # a fitted q would cost a fit per image
            _, split = self.data.eval_split()
            grid = reconstruction_grid(self.scheme, split.images[:n], 8, self.data.pixel_range)
            tf.summary.image("images/reconstructions", grid[None], step=step)
        grid = sample_grid(self.scheme, SamplesConfig(num_images=n), self.cfg.experiment.seed,
                           self.data.pixel_range)
        tf.summary.image("images/samples", grid[None], step=step)
        self.scheme.log_summaries(step)  # scheme-specific images and histograms

    def _log_hparams(self) -> None:
        from tensorboard.plugins.hparams import api as hp

        from tfgen.config import to_dict

        flat = {}

        def walk(prefix, node):
            if isinstance(node, dict):
                for k, v in node.items():
                    walk(f"{prefix}.{k}" if prefix else k, v)
            elif isinstance(node, (bool, int, float, str)):
                flat[prefix] = node
            elif isinstance(node, list) and node and not isinstance(node[0], dict):
                flat[prefix] = str(node)

        raw = to_dict(self.cfg)
        raw.pop("evaluate", None)
        walk("", raw)
        hp.hparams(flat, trial_id=self.run_dir.name)
