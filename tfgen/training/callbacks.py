"""What happens around the training loop's steps, as callbacks in the Keras sense.

The loop (:mod:`tfgen.training.loop`) calls every callback, in the order it was given them,
at ``on_train_begin``, ``on_epoch_begin``, ``on_steps_end`` (after each call of the step
executor: one or more steps), ``on_epoch_end`` (the epoch's record made, the state's epoch
counted) and ``on_train_end``.  :func:`tfgen.training.loop.fit` gives them in this order,
which is the order of their effects (messages, files, the stop of a run):

* :class:`SignalAtStep` -- the stop-signal test hook (``TFGEN_TEST_SIGNAL=<n>``);
* :class:`StopOnNaN` -- a loss that is not finite ends training;
* :class:`Summaries` -- TensorBoard's scalars, images and hyper-parameters;
* :class:`ProgressLine` -- the progress bar and the epoch's line on stderr;
* :class:`EarlyStopping` -- the best epoch, patience, the message when it stops training;
* :class:`TimeBudget` -- ``train.time_budget_s``: training ends when its wall time is spent;
* :class:`Checkpointing` -- the best weights as they improve, the state every
  ``train.checkpoint_every_epochs`` epochs and when training ends;
* :class:`StopOnSignal` -- a stop signal's request honoured at the next safe point;
* :class:`RestoreBestWeights` -- the best weights back in the model, for evaluation.
"""
from __future__ import annotations

import math
import time

import tensorflow as tf

from tfgen.config import Config
from tfgen.errors import Interrupted, TrainingDiverged
from tfgen.execution import Execution
from tfgen.inference.capabilities import AmortizedPosterior
from tfgen.signals import InterruptFlag, signal_name
from tfgen.training.progress import Progress
from tfgen.training.state import TrainingState


class Epoch:
    """The epoch in progress, as the loop runs it: its place in its batches, its metrics'
    running sums and its speed."""

    def __init__(self, index: int, done: int, left: int, batch_size: int, sums: dict,
                 count: int):
        """Epoch ``index`` (from 0), ``done`` batches of it trained and ``left`` images to go
        in batches of ``batch_size``; its metrics sum to ``sums`` over ``count`` images."""
        self.index = index
        self.batches_done = done
        self.batches_total = done + math.ceil(left / batch_size)
        self.images_left = left
        self.sums, self.count = sums, count  # metric -> sum of value x images; images
        self.started, self.images = time.monotonic(), 0  # this session's part of the epoch
        self.window_started, self.window_images = self.started, 0
        self.logged_rate = 0.0  # images per second of the last logged window (0: none yet)
        self.rate = 0.0  # over the epoch's steps, once they are done

    def trained(self, batches: int, images: int, sums: dict) -> None:
        """An executor call trained ``batches`` batches, ``images`` images in all, whose
        metrics sum to ``sums``."""
        self.batches_done += batches
        self.images_left -= images
        self.images += images
        self.window_images += images
        for k, v in sums.items():
            self.sums[k] = self.sums.get(k, 0.0) + v
        self.count += images

    def window_rate(self) -> float:
        """Images per second since the last logged rate (or the epoch's start)."""
        return self.window_images / max(time.monotonic() - self.window_started, 1e-9)

    def logged(self, rate: float) -> None:
        """``rate`` was logged: the next window starts now."""
        self.logged_rate = rate
        self.window_started, self.window_images = time.monotonic(), 0

    def steps_done(self) -> None:
        """The epoch's steps are done: its rate, without its validation."""
        self.rate = self.images / max(time.monotonic() - self.started, 1e-9)


class Steps:
    """One call of the step executor: the steps ``first`` (excluded) to ``last``."""

    __slots__ = ("first", "last", "execution", "finite")

    def __init__(self, first: int, last: int, execution: Execution, finite: bool):
        self.first, self.last, self.execution, self.finite = first, last, execution, finite


class Callback:
    """Does nothing at every point of the loop; ``loop`` is the :class:`TrainingLoop` that
    calls it (set by the loop, as Keras sets a callback's model)."""

    loop = None

    def on_train_begin(self) -> None: ...

    def on_epoch_begin(self, epoch: Epoch) -> None: ...

    def on_steps_end(self, epoch: Epoch, steps: Steps) -> None: ...

    def on_epoch_end(self, epoch: Epoch, record: dict) -> None: ...

    def on_train_end(self) -> None: ...


def crossed(every: int, before: int, after: int) -> bool:
    """Whether a multiple of ``every`` is in steps (before, after]."""
    return after // every > before // every


# --------------------------------------------------------------------------- stopping

class SignalAtStep(Callback):
    """The test hook of :mod:`tfgen.signals`: ``TFGEN_TEST_SIGNAL=<n>`` sends the process its
    signal once step n is done, before anything else looks at the steps, as a user's Ctrl-C
    or a scheduler's SIGTERM at that moment would."""

    def __init__(self, hook):
        self.hook = hook

    def on_steps_end(self, epoch, steps):
        self.hook.after_steps(steps.first, steps.last)


class StopOnNaN(Callback):
    """A loss that is not finite ends training with TrainingDiverged, naming the first step
    whose loss it was; history.json holds the epochs before, the last good checkpoint stays."""

    def __init__(self, state: TrainingState):
        self.state = state

    def on_steps_end(self, epoch, steps):
        if steps.finite:
            return
        self.state.write_history()
        last = self.state.store.latest
        kept = (f"the last good checkpoint is {last}" if last else
                "no checkpoint had been written yet")
        raise TrainingDiverged(
            f"training diverged: the loss became {float(steps.execution.bad_loss)} at step "
            f"{int(steps.execution.bad_step)} (epoch {epoch.index + 1}); {kept}; lower "
            f"train.learning_rate or check the likelihood's parameters")


class StopOnSignal(Callback):
    """A stop signal's request (:class:`tfgen.signals.InterruptFlag`) honoured at the loop's
    safe points -- after an executor call, after an epoch's bookkeeping (validation and
    checkpoints included), after the last save -- with a checkpoint, then Interrupted.  Mid
    epoch the checkpoint keeps the epoch's running sums, so the resumed epoch's means are an
    uninterrupted one's."""

    def __init__(self, state: TrainingState, interrupt: InterruptFlag):
        self.state, self.interrupt = state, interrupt

    def on_steps_end(self, epoch, steps):
        if self.interrupt.requested and epoch.images_left > 0:
            self.state.keep_partial_sums(epoch.sums, epoch.count)
            self._stop()

    def on_epoch_end(self, epoch, record):
        if self.interrupt.requested:
            self._stop()

    def on_train_end(self):
        if self.interrupt.requested:  # a signal during the last save: stop before evaluating
            self._stop()

    def _stop(self):
        interrupt, state = self.interrupt, self.state
        path = state.save(interrupt.saving)
        interrupt.phase = "stopping"  # the checkpoint is written: a further signal is moot
        raise Interrupted(f"interrupted by {signal_name(interrupt.first)} at {state.position()}; "
                          f"checkpoint {path}; continue with: tfgen run --resume {state.run_dir}",
                          interrupt.first)


class EarlyStopping(Callback):
    """Watches ``monitor`` in each epoch's record: an improvement by more than
    ``train.early_stopping.min_delta`` makes the epoch the best one (``improved``, whose
    weights :class:`Checkpointing` keeps), else it counts a bad epoch; ``patience`` bad epochs
    in a row (0: never) stop training.  Its counters are in the state, so a resumed run goes
    on counting."""

    def __init__(self, state: TrainingState, monitor: str, progress: Progress):
        self.state, self.monitor, self.progress = state, monitor, progress
        self.settings = state.cfg.train.early_stopping
        self.improved = False  # the last epoch was the best so far
        self.stopped = False

    def _due(self) -> bool:
        patience = self.settings.patience
        return bool(patience) and int(self.state.bad_epochs.numpy()) >= patience

    def _stop_if_due(self) -> None:
        if self._due():
            self.stopped = self.loop.stop_training = True

    def on_train_begin(self):
        self._stop_if_due()

    def on_epoch_end(self, epoch, record):
        self.improved = self._update(record.get(self.monitor), epoch.index)
        self._stop_if_due()

    def _update(self, value, epoch: int) -> bool:
        state = self.state
        if value is None:
            return False
        if value < float(state.best_metric.numpy()) - self.settings.min_delta:
            state.best_metric.assign(value)
            state.best_epoch.assign(epoch)
            state.bad_epochs.assign(0)
            return True
        state.bad_epochs.assign_add(1)
        return False

    def on_train_end(self):
        if self.stopped:
            self.progress.message(
                f"early stopping: no improvement of {self.monitor} for "
                f"{self.settings.patience} epochs (best epoch "
                f"{int(self.state.best_epoch.numpy()) + 1})")

    def summary(self) -> dict:
        """The training summary's part (metrics.json's ``train``)."""
        best_epoch, best = int(self.state.best_epoch.numpy()), float(self.state.best_metric.numpy())
        return {"stopped_early": self.stopped,
                "best_epoch": best_epoch + 1 if best_epoch >= 0 else None,
                "monitor": self.monitor,
                "best_" + self.monitor: best if math.isfinite(best) else None}


class TimeBudget(Callback):
    """``train.time_budget_s``: once training has taken that many wall seconds (over every
    session of the run: :meth:`TrainingState.train_seconds`), training ends after the executor
    call in progress -- mid-epoch with the epoch's running sums kept, as a stop signal keeps
    them -- and the run is checkpointed and evaluated as after early stopping.  A resumed run
    trains for the remainder, and not at all once the budget is spent.  So that methods with
    equal budgets compare fairly, compilation, validation and checkpoints count too."""

    def __init__(self, state: TrainingState, progress: Progress):
        self.state, self.progress = state, progress
        self.budget = state.cfg.train.time_budget_s
        self.stopped = False

    def _spent(self) -> bool:
        return bool(self.budget) and self.state.train_seconds() >= self.budget

    def on_train_begin(self):
        # spent by the sessions before this one (a session that starts trains at least once)
        if self.budget and self.state.seconds_before >= self.budget:
            self.stopped = self.loop.stop_training = True

    def on_steps_end(self, epoch, steps):
        if self._spent():
            if epoch.images_left > 0:
                self.state.keep_partial_sums(epoch.sums, epoch.count)
            self.stopped = self.loop.stop_training = True

    def on_epoch_end(self, epoch, record):
        if self._spent():
            self.stopped = self.loop.stop_training = True

    def on_train_end(self):
        if self.stopped:
            self.progress.message(
                f"time budget: training stopped at {self.state.position()} after "
                f"{self.state.train_seconds():.0f} s (train.time_budget_s = {self.budget:g})")

    def summary(self) -> dict:
        """The training summary's part (metrics.json's ``train``)."""
        return {"stopped_by_time_budget": self.stopped,
                "train_seconds": self.state.train_seconds()}


def monitored(scheme, data) -> str:
    """The metric early stopping watches: the scheme's ``monitor``, on the validation split
    if the scheme validates and there is one (``val_<monitor>``), else ``train_<monitor>``."""
    validating = data.val is not None and bool(scheme.validation_metrics)
    return f"{'val' if validating else 'train'}_{scheme.monitor}"


class Checkpointing(Callback):
    """The best weights when ``early_stopping`` saw an improvement (numbered by the epoch),
    the training state every ``train.checkpoint_every_epochs`` epochs, after the last epoch
    and when training ends (numbered by the step); no stop signal breaks a save."""

    def __init__(self, state: TrainingState, early_stopping: EarlyStopping,
                 interrupt: InterruptFlag):
        self.state, self.early_stopping, self.interrupt = state, early_stopping, interrupt
        self.every, self.epochs = state.cfg.train.checkpoint_every_epochs, state.cfg.train.epochs

    def on_epoch_end(self, epoch, record):
        done = epoch.index + 1
        if self.early_stopping.improved:
            with self.interrupt.saving():
                self.state.best_store.save(done)
        if done % self.every == 0 or done == self.epochs:
            self.state.save(self.interrupt.saving)

    def on_train_end(self):
        self.state.save(self.interrupt.saving)


class RestoreBestWeights(Callback):
    """``train.early_stopping.restore_best`` (with a patience): the run is evaluated with the
    best weights, put back once the last checkpoint holds the last ones."""

    def __init__(self, state: TrainingState):
        self.state = state

    def on_train_end(self):
        self.state.restore_best()


# --------------------------------------------------------------------------- what is shown

class Summaries(Callback):
    """TensorBoard: the run's flattened config as hyper-parameters when it starts; the
    training metrics (means over the last executor call's batches), the learning rate and
    the images per second every ``logging.every_steps`` steps; reconstruction and sample
    grids (and the scheme's own summaries) every ``logging.images_every_steps``; each epoch's
    record as ``epoch_<split>/<metric>``."""

    def __init__(self, state: TrainingState, data):
        self.state, self.data, self.scheme = state, data, state.scheme
        self.cfg: Config = state.cfg

    def on_train_begin(self):
        if self.state.steps_done() == 0:
            self._log_hparams()

    def on_steps_end(self, epoch, steps):
        logging = self.cfg.logging
        if crossed(logging.every_steps, steps.first, steps.last):
            rate = epoch.window_rate()
            ran = steps.execution
            weight = float(ran.images)
            for k, v in ran.sums.items():
                tf.summary.scalar(f"train/{k}", float(v) / weight, step=steps.last)
            tf.summary.scalar("train/learning_rate", self.scheme.learning_rate(), step=steps.last)
            tf.summary.scalar("train/images_per_second", rate, step=steps.last)
            epoch.logged(rate)
        if crossed(logging.images_every_steps, steps.first, steps.last):
            self._log_images(steps.last)

    def on_epoch_end(self, epoch, record):
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
        # named with its parent folder: the trials of a sweep (tfgen.sweep) started in the same
        # second would otherwise be one session group in the study's HParams view
        run_dir = self.state.run_dir
        hp.hparams(flat, trial_id=f"{run_dir.parent.name}/{run_dir.name}")


class ProgressLine(Callback):
    """The progress bar while an epoch runs (its rate: that of the last logged window, until
    there is one that of the window so far), its last state and the epoch's record when it
    ends."""

    def __init__(self, progress: Progress, epochs: int):
        self.progress, self.epochs = progress, epochs

    def on_steps_end(self, epoch, steps):
        self.progress.update(epoch.index, self.epochs, epoch.batches_done, epoch.batches_total,
                             lambda: float(steps.execution.last["loss"]),
                             epoch.logged_rate or epoch.window_rate(),
                             steps.last)

    def on_epoch_end(self, epoch, record):
        self.progress.update(epoch.index, self.epochs, epoch.batches_done, epoch.batches_total,
                             record.get("train_loss", float("nan")), epoch.rate, record["step"],
                             final=True)
        self.progress.message("  " + "  ".join(f"{k} {v:.4g}" for k, v in record.items()
                                               if k not in ("epoch", "step")))
