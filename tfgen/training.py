"""The training loop shared by every scheme: batches, logging, validation, early stopping,
checkpoints, NaN detection, Ctrl-C, resume.

Python control flow lives here; the per-batch work is the scheme's compiled
``train_step``.  Everything needed to continue a run exactly -- weights,
optimizer slots, scheme state (e.g. particles), the RNG state, the step and
the early-stopping counters -- is in one ``tf.train.Checkpoint``.
"""
from __future__ import annotations

import json
import math
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np
import tensorflow as tf
import tf_keras as keras

from tfgen.config import Config
from tfgen.data import DataBundle, train_dataset
from tfgen.errors import ConfigError, TfgenError, TrainingDiverged
from tfgen.inference.capabilities import AmortizedPosterior


class Interrupted(TfgenError):
    """Ctrl-C during training; a checkpoint has been written."""

    exit_code = 130


class InterruptFlag:
    """Turns the first Ctrl-C into a request honoured at the next safe point (after a step or
    an epoch's bookkeeping), so a checkpoint is never taken half-way; a second Ctrl-C stops at once."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def _handler(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handler)
        return self

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
        return False


class Progress:
    """A one-line progress bar on stderr (an epoch summary line when stderr is not a terminal)."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.tty = sys.stderr.isatty()
        self._last = 0.0

    def update(self, epoch: int, epochs: int, done: int, total: int, loss: float, rate: float,
               step: int, final: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if not final and (not self.tty or now - self._last < 0.2):
            return
        self._last = now
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


class Trainer:
    def __init__(self, cfg: Config, data: DataBundle, scheme, run_dir: Path, progress: Progress,
                 generator: tf.random.Generator):
        self.cfg, self.data, self.scheme, self.run_dir = cfg, data, scheme, run_dir
        self.model = scheme.model
        self.progress = progress
        self.step = tf.Variable(0, dtype=tf.int64, name="step", trainable=False)
        self.best_metric = tf.Variable(math.inf, dtype=tf.float64, trainable=False)
        self.best_epoch = tf.Variable(-1, dtype=tf.int64, trainable=False)
        self.bad_epochs = tf.Variable(0, dtype=tf.int64, trainable=False)
        items = scheme.checkpoint_items()
        self.checkpoint = tf.train.Checkpoint(
            model=self.model, generator=generator, step=self.step, best_metric=self.best_metric,
            best_epoch=self.best_epoch, bad_epochs=self.bad_epochs, **items)
        weights = {k: v for k, v in items.items() if not isinstance(v, keras.optimizers.Optimizer)}
        self.best_checkpoint = tf.train.Checkpoint(model=self.model, **weights)
        ckpt_dir = run_dir / "checkpoints"
        self.manager = tf.train.CheckpointManager(self.checkpoint, str(ckpt_dir),
                                                  max_to_keep=cfg.train.keep_checkpoints)
        self.best_manager = tf.train.CheckpointManager(self.best_checkpoint, str(ckpt_dir / "best"),
                                                       max_to_keep=1)
        self.history: list[dict] = []
        self.history_path = run_dir / "history.json"
        self.partial_path = ckpt_dir / "partial_epoch.json"
        n = len(data.train)
        self.steps_per_epoch = math.ceil(n / cfg.train.batch_size)
        if cfg.train.steps_per_epoch:
            self.steps_per_epoch = min(self.steps_per_epoch, cfg.train.steps_per_epoch)
        self._dataset_cache: dict = {}
        self.stopped_early = False
        # the scheme names what early stopping watches; on the validation split if it validates
        validating = data.val is not None and bool(scheme.validation_metrics)
        self.monitor = f"{'val' if validating else 'train'}_{scheme.monitor}"

    # ------------------------------------------------------------------ state
    def restore(self) -> bool:
        latest = self.manager.latest_checkpoint
        if latest is None:
            return False
        try:
            self.checkpoint.restore(latest).assert_existing_objects_matched()
        except (ValueError, AssertionError, tf.errors.OpError) as err:
            first = str(err).strip().splitlines()[-1][:300]
            raise ConfigError(str(self.run_dir), None,
                              f"its checkpoint {latest} does not fit the config (was a model, "
                              f"encoder or optimizer key changed with --set on resume?): {first}") from None
        self.scheme.after_restore()
        if self.history_path.exists():
            done = int(self.step.numpy()) // self.steps_per_epoch
            self.history = [h for h in json.loads(self.history_path.read_text()) if h["epoch"] <= done]
        return True

    def save(self, partial: dict | None = None) -> str:
        path = self.manager.save(checkpoint_number=int(self.step.numpy()))
        if partial is not None:
            self.partial_path.write_text(json.dumps({"step": int(self.step.numpy()), **partial}))
        elif self.partial_path.exists():
            self.partial_path.unlink()
        self.history_path.write_text(json.dumps(self.history, indent=1))
        return path

    # ------------------------------------------------------------------ loop
    def fit(self) -> dict:
        cfg = self.cfg
        epochs = cfg.train.epochs
        start_step = int(self.step.numpy())
        start_epoch = start_step // self.steps_per_epoch
        wall_start = time.monotonic()
        images_seen = 0
        train_time = 0.0
        if start_step == 0:
            self._log_hparams()
        with InterruptFlag() as interrupt:
            for epoch in range(start_epoch, epochs):
                if self.stopped_early or self._early_stop_due():
                    self.stopped_early = True
                    break
                skip = int(self.step.numpy()) - epoch * self.steps_per_epoch
                sums, count = self._load_partial(skip)
                ds = train_dataset(self.data.train, cfg.train.batch_size, cfg.experiment.seed, epoch,
                                   cfg.data, skip_batches=skip, cached=self._dataset_cache)
                ds = ds.take(self.steps_per_epoch - skip)
                window_start, window_images = time.monotonic(), 0
                rate = 0.0
                done = skip
                for images, indices in ds:
                    t0 = time.monotonic()
                    out = self.scheme.train_step(images, indices)
                    values = {k: float(v) for k, v in out.items()}
                    train_time += time.monotonic() - t0
                    step = int(self.step.assign_add(1).numpy())
                    done += 1
                    batch = int(images.shape[0])
                    images_seen += batch
                    window_images += batch
                    if not math.isfinite(values["loss"]):
                        self._diverged(values["loss"], step, epoch)
                    for k, v in values.items():
                        sums[k] = sums.get(k, 0.0) + v * batch
                    count += batch
                    if step % cfg.logging.every_steps == 0:
                        elapsed = time.monotonic() - window_start
                        rate = window_images / max(elapsed, 1e-9)
                        self._log_step(values, step, rate)
                        window_start, window_images = time.monotonic(), 0
                    if step % cfg.logging.images_every_steps == 0:
                        self._log_images(step)
                    self.progress.update(epoch, epochs, done, self.steps_per_epoch, values["loss"],
                                         rate or window_images / max(time.monotonic() - window_start, 1e-9),
                                         step)
                    if interrupt.requested and done < self.steps_per_epoch:
                        self._interrupted(epoch, partial={"sums": sums, "count": count})
                record = {"epoch": epoch + 1, "step": int(self.step.numpy())}
                record.update({f"train_{k}": v / max(count, 1) for k, v in sums.items()})
                record.update(self.validate(epoch))
                self.history.append(record)
                self._log_epoch(record)
                improved = self._update_early_stopping(record, epoch)
                self.progress.update(epoch, epochs, done, self.steps_per_epoch,
                                     record.get("train_loss", float("nan")), rate, record["step"], final=True)
                self.progress.message("  " + "  ".join(f"{k} {v:.4g}" for k, v in record.items()
                                                       if k not in ("epoch", "step")))
                if improved:
                    self.best_manager.save(checkpoint_number=epoch + 1)
                if (epoch + 1) % cfg.train.checkpoint_every_epochs == 0 or epoch + 1 == epochs:
                    self.save()
                if interrupt.requested:
                    self._interrupted(epoch)
            else:
                if self._early_stop_due():
                    self.stopped_early = True
        if self.stopped_early:
            self.progress.message(
                f"early stopping: no improvement of {self.monitor} for "
                f"{cfg.train.early_stopping.patience} epochs (best epoch {int(self.best_epoch.numpy()) + 1})")
        self.save()
        if cfg.train.early_stopping.patience and cfg.train.early_stopping.restore_best:
            self.restore_best()
        wall = time.monotonic() - wall_start
        return {"epochs_completed": len(self.history), "steps": int(self.step.numpy()),
                "stopped_early": self.stopped_early,
                "best_epoch": int(self.best_epoch.numpy()) + 1 if self.best_epoch.numpy() >= 0 else None,
                "monitor": self.monitor,
                "best_" + self.monitor: float(self.best_metric.numpy()) if math.isfinite(self.best_metric.numpy()) else None,
                "wall_seconds_this_session": wall,
                "images_per_second": images_seen / train_time if train_time else None}

    def _interrupted(self, epoch: int, partial: dict | None = None):
        path = self.save(partial=partial)
        raise Interrupted(
            f"interrupted at step {int(self.step.numpy())} (epoch {epoch + 1}); checkpoint "
            f"{path}; continue with: tfgen run --resume {self.run_dir}")

    def restore_best(self) -> None:
        best = self.best_manager.latest_checkpoint
        if best is not None:
            self.best_checkpoint.restore(best).assert_existing_objects_matched()

    def validate(self, epoch: int) -> dict:
        if self.data.val is None or not self.scheme.validation_metrics:
            return {}
        values = self.scheme.validate(self.data.val, self.cfg.experiment.seed + 1 + epoch)
        return {f"val_{name}": values[name] for name in self.scheme.validation_metrics}

    # ------------------------------------------------------------------ helpers
    def _load_partial(self, skip: int) -> tuple[dict, int]:
        if skip and self.partial_path.exists():
            partial = json.loads(self.partial_path.read_text())
            if partial.get("step") == int(self.step.numpy()):
                return dict(partial["sums"]), int(partial["count"])
        return {}, 0

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
        self.history_path.write_text(json.dumps(self.history, indent=1))
        last = self.manager.latest_checkpoint
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
        from tfgen.evaluation.tasks import SamplesConfig, reconstruction_grid, sample_grid

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
