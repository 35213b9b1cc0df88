"""Turns a validated config into a trained, evaluated run directory."""
from __future__ import annotations

import contextlib
import contextvars
import datetime as dt
import functools
import hashlib
import inspect
import json
import sys
import time
from pathlib import Path
from typing import NamedTuple

import tensorflow as tf

from tfgen import memory, plugins, resources, runlock, runtime, storage
from tfgen.assemble import build, from_dict, load_config, load_plugins, load_resumed
from tfgen.config import Config, apply_overrides, read_toml, to_dict
from tfgen.data import DataBundle, load_data
from tfgen.errors import (CheckpointError, ConfigError, Interrupted, RunFailed, StorageError,
                          TfgenError)
from tfgen.evaluation.tasks import EvalContext
from tfgen.registry import EVALUATIONS
from tfgen.rundir import (CONFIG_NAME, create_run_dir, open_run_dir, recorded_plugins,
                          write_config, write_metrics, write_run_info)
from tfgen.signals import InterruptFlag, hook_from_env, signal_name, signal_of
from tfgen.training import Progress, TrainingState, fit


_held: contextvars.ContextVar[contextlib.ExitStack] = contextvars.ContextVar("held")


def _holding_until_return(function):
    """``function`` may :func:`_hold` contexts (the run directory's lock, its failure handling)
    from the point where it knows its run directory: they are exited when it returns or
    raises, the last held first."""
    @functools.wraps(function)
    def holding(*args, **kwargs):
        with contextlib.ExitStack() as stack:
            token = _held.set(stack)
            try:
                return function(*args, **kwargs)
            finally:
                _held.reset(token)
    return holding


def _hold(context):
    """Enter ``context`` until the :func:`_holding_until_return` function running returns."""
    return _held.get().enter_context(context)


@_holding_until_return
def run(config_path: str | Config | None, overrides: list[str], resume: str | None, quiet: bool,
        memory_check: bool = True, worker_index: int | None = None) -> Path:
    """Train and evaluate; returns the run directory.  ``config_path`` is a TOML file or an
    already loaded :class:`Config` (``tfgen.run`` from Python; ``overrides`` then empty).

    The order is what keeps a run directory safe: everything that can be refused (the config,
    the data, the memory estimate, the checkpoint and whether it fits the config) is decided
    before anything is written, so a refused run leaves no directory and a refused resume
    leaves its directory byte for byte as it was.

    In a multi-worker cluster every worker trains (the collectives need them all), worker 0
    writes the run directory and evaluates; the others write their checkpoints (which every
    worker must save together) to a temporary directory that is removed at the end.

    The writer (worker 0) holds the run directory's lock (tfgen.runlock) from the moment it
    knows the directory -- on ``--resume`` before anything is read from it but its config --
    to its exit; a failing file system is one line (tfgen.storage).
    """
    if resume:
        run_dir = open_run_dir(resume)
        _refuse_missing_plugins(run_dir)
        # a change the checkpoint cannot take is refused as the change it is (naming --set)
        run_cfg, cfg = load_resumed(run_dir / CONFIG_NAME, overrides, str(run_dir))
    elif isinstance(config_path, Config):
        cfg, config_path = config_path, config_path.source_file
    else:
        cfg = load_config(config_path, overrides)
    # before TensorFlow touches a device: threads, logical devices, the cluster
    strategy = runtime.configure(cfg.runtime, cfg.source_file, worker_index)
    if not runtime.is_chief(strategy):
        if resume:
            raise ConfigError(cfg.source_file, "runtime.strategy", "a multi-worker run cannot "
                              "be resumed by several workers yet", cfg.runtime.strategy,
                              "resume it with runtime.strategy = 'default' or 'mirrored' and "
                              "runtime.workers = [] (checkpoints restore under any number of "
                              "replicas)")
        return _run_worker(cfg, strategy, memory_check)
    if resume and cfg.runtime.strategy == "multi_worker":
        raise ConfigError(cfg.source_file, "runtime.strategy", "a multi-worker run cannot be "
                          "resumed by several workers yet", cfg.runtime.strategy,
                          "resume it with --set runtime.strategy=default (or =mirrored) "
                          "--set 'runtime.workers=[]' (checkpoints restore under any number "
                          "of replicas)")
    if resume:  # before the checkpoint is read: a second writer is refused, changing nothing
        _hold(runlock.holding(run_dir, f"tfgen run --resume {run_dir}"))
    progress = Progress(cfg.logging.progress and not quiet)
    data, memory = load_checked(cfg, memory_check)
    if resume:
        _refuse_another_image_shape(run_cfg, cfg, data, run_dir, memory_check)
    data, scheme, generator = build(cfg, data, strategy)
    if resume:
        state = TrainingState(cfg, scheme, generator, run_dir)
        restored = state.restore()
        if restored is None:
            raise CheckpointError(f"{run_dir}: has no checkpoint to resume from (it was stopped "
                                  f"before its first checkpoint); start it again with: tfgen run "
                                  f"{run_dir / CONFIG_NAME}")
    else:
        run_dir = create_run_dir(cfg)
        _hold(runlock.holding(run_dir, f"tfgen run {config_path}"))
        state = TrainingState(cfg, scheme, generator, run_dir)
    next_step = lambda: _continue_with(run_dir, state, cfg)  # noqa: E731
    _hold(storage.failures_in(run_dir, next_step))
    # the resume is known to work: from here on the run directory changes
    write_config(run_dir, cfg)
    write_run_info(run_dir, cfg, overrides, bool(resume), runtime.describe(strategy))
    progress.message(f"run directory: {run_dir}\ndata: {data.description}; train {len(data.train)}"
                     f", val {len(data.val) if data.val else 0}, test {len(data.test) if data.test else 0}"
                     f", images {data.image_shape}; compile: {_compile_text(cfg, scheme)}"
                     + (f"; {cfg.runtime.strategy} strategy, {scheme.layout.num_replicas} replicas"
                        if cfg.runtime.strategy != "default" else "")
                     + (f"; memory: about {resources.format_bytes(memory.total)} estimated"
                        if memory else ""))
    if resume:
        if restored.problems:
            Progress.warn(f"{'; '.join(restored.problems)}; resumed from the newest intact "
                          f"checkpoint, {restored.path} ({state.position()})")
        else:
            progress.message(f"resumed from {restored.path} ({state.position()})")
    writer = tf.summary.create_file_writer(str(run_dir / "tensorboard"))
    metrics = {"status": "running", "run_dir": str(run_dir)}
    earlier_peak = None
    if resume:  # what `tfgen complete` added to a finished run stays
        try:
            before = read_run_metrics(run_dir / "metrics.json")
        except TfgenError:  # unreadable: the run writes a new one, as it always did
            before = {}
        kept, earlier_peak = before.get(AFTER_RUN), before.get(PEAK_RSS)
        if kept:
            metrics[AFTER_RUN] = kept
    with InterruptFlag() as interrupt:  # stop signals by phase: training, evaluation, stopping
        try:
            with writer.as_default(), storage.failures_in(run_dir, next_step):
                metrics["train"] = fit(state, data, progress, interrupt)
                scheme.layout.gather_rows()  # sharded rows, for evaluation (every worker)
                log_final(metrics["train"], state.steps_done())
                metrics["evaluation"], metrics["evaluation_seconds"] = {}, []
                interrupt.enter("evaluation")
                evaluate(cfg, scheme, data, run_dir, state.history, state.steps_done(),
                         metrics["evaluation"], metrics["evaluation_seconds"])
            interrupt.phase = "stopping"
            metrics["status"] = "completed"
        except Interrupted as err:
            metrics["status"] = f"interrupted: {err}"
            raise
        except TfgenError as err:
            interrupt.phase = "stopping"
            metrics["status"] = f"failed: {err}"
            raise
        except KeyboardInterrupt as stop:  # a second signal in training, or one in evaluation
            phase = interrupt.interrupted_in or interrupt.phase
            metrics["status"] = f"interrupted during {phase}"
            raise Interrupted(_stopped_at_once(phase, signal_of(stop), interrupt.first, state,
                                               metrics.get("evaluation_seconds", [])),
                              signal_of(stop), at_once=True) from None
        except tf.errors.OpError as err:
            phase, interrupt.phase = interrupt.phase, "stopping"
            if cfg.runtime.strategy == "multi_worker":
                metrics["status"] = f"failed: {describe_tf_error(err)}"
                raise RunFailed(f"{run_dir}: {describe_tf_error(err)} during {phase} (a "
                                f"multi-worker run fails when any worker does); the last "
                                f"checkpoint is {state.store.latest or 'none'}") from err
            at = (f" after step {state.steps_done()}" if phase == "training" else
                  failed_task(cfg, metrics.get("evaluation_seconds", [])))
            failure = RunFailed(f"{run_dir}: {describe_tf_error(err)} during {phase}{at}; the "
                                f"last checkpoint is {state.store.latest or 'none'}")
            metrics["status"] = f"failed: {failure}"
            raise failure from err
        except BaseException as err:
            interrupt.phase = "stopping"
            metrics["status"] = f"failed: {type(err).__name__}: {err}"
            raise
        finally:
            metrics["history"] = state.history
            metrics[PEAK_RSS] = _peak_rss(earlier_peak)
            _write_last(writer, run_dir, metrics)
    progress.message("evaluation: " + json.dumps(metrics["evaluation"], default=float))
    progress.message(f"done: {run_dir}")
    return run_dir


def _refuse_missing_plugins(run_dir: Path) -> None:
    """A run that uses a plugin's component is refused, naming the plugin, when the plugin is
    not loaded (before its config is parsed, where it would be an unknown name); one loaded
    in another version is a warning."""
    load_plugins()  # the installed ones (the command line's are loaded already)
    for warning in plugins.refuse_missing(recorded_plugins(run_dir), str(run_dir)):
        Progress.warn(warning)


def _continue_with(run_dir: Path, state: TrainingState, cfg: Config) -> str:
    """What to do after a failure of the file system: resume from the newest checkpoint."""
    last = state.store.latest
    if last:
        return f"the newest checkpoint is {last}; continue with: tfgen run --resume {run_dir}"
    config = run_dir / CONFIG_NAME
    return (f"no checkpoint was written yet; start again with: tfgen run "
            f"{config if config.is_file() else cfg.source_file}")


def _write_last(writer, run_dir: Path, metrics: dict) -> None:
    """TensorBoard's last events and metrics.json, as a run ends.  If it ends by an error, a
    failure of the file system here does not replace that error: it is the same failure (a
    full disk stays full) or, after another error, a warning."""
    ending_by = sys.exc_info()[1]
    try:
        with storage.failures_in(run_dir):
            try:
                writer.flush()
            finally:  # metrics.json is the run's record: tried even if TensorBoard fails
                write_metrics(run_dir, metrics)
    except StorageError as err:
        if ending_by is None:
            raise
        if not isinstance(ending_by, StorageError):
            Progress.warn(f"{err}; metrics.json does not record how the run ended")


def _refuse_another_image_shape(run_cfg: Config, cfg: Config, data: DataBundle, run_dir: Path,
                                memory_check: bool) -> None:
    """A resume whose ``--set`` points the data elsewhere (source, name, path) may not bring
    images of another shape: the run's networks were built for its own.  Its own data are
    loaded only then, to compare; if they cannot be (moved away, the reason for the new
    path), the checkpoint's own check decides."""
    keys = [f"data.{k}" for k in ("source", "name", "path", "data_dir")
            if getattr(run_cfg.data, k) != getattr(cfg.data, k)]
    if not keys:
        return
    try:
        before = load_data(run_cfg.data, run_cfg.experiment.seed, run_cfg.source_file,
                           memory_check).image_shape
    except TfgenError:
        return
    if before != data.image_shape:
        shape = lambda s: "x".join(str(n) for n in s)
        raise ConfigError(str(run_dir), f"--set {', '.join(keys)}", f"the image shape cannot "
                          f"change on resume (the run's images are {shape(before)}, --set gives "
                          f"{shape(data.image_shape)})", allowed=f"data of the run's shape, "
                          f"{shape(before)} (data.resize and data.color are fixed too)")


def _compile_text(cfg: Config, scheme) -> str:
    mode = runtime.step_compile_mode(cfg.train.compile, scheme.strategy)
    if mode != runtime.resolve_compile_mode(cfg.train.compile):
        return f"{mode} (xla is not used on {scheme.layout.num_replicas} replicas)"
    return mode


def _run_worker(cfg: Config, strategy, memory_check: bool) -> None:
    """A multi-worker cluster's worker > 0: the same training, nothing kept."""
    import shutil
    import tempfile

    data = load_data(cfg.data, cfg.experiment.seed, cfg.source_file, memory_check)
    data, scheme, generator = build(cfg, data, strategy)
    scratch = Path(tempfile.mkdtemp(prefix="tfgen-worker-"))
    try:
        state = TrainingState(cfg, scheme, generator, scratch)
        with tf.summary.create_file_writer(str(scratch / "tensorboard")).as_default():
            fit(state, data, Progress(False))
        scheme.layout.gather_rows()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return None


def _stopped_at_once(phase: str, signum: int, first: int | None, state: TrainingState,
                     seconds: list) -> str:
    """The line for a run that signal ``signum`` stopped where it was: in evaluation, or in
    training after the signal ``first``."""
    run_dir, last, cfg = state.run_dir, state.store.latest, state.cfg
    if phase == "evaluation":
        return (f"interrupted during evaluation by {signal_name(signum)}"
                f"{failed_task(cfg, seconds)}; {len(seconds)} of {len(cfg.evaluate)} tasks "
                f"finished, their results are in {run_dir / 'metrics.json'}; the trained state "
                f"is in {last}; finish the evaluation with: tfgen eval {run_dir}")
    by = (f"a second {signal_name(signum)}" if first in (None, signum) else
          f"{signal_name(signum)} after {signal_name(first)}")
    step = state.steps_done()
    text = (f"interrupted during training by {by} (stopped at once at step {step}, its "
            f"checkpoint written); the checkpoint is {last}; " if state.saved else
            f"interrupted during training by {by} (stopped at once at step {step}, without a "
            f"checkpoint); the last checkpoint is {last or 'none'}; ")
    return text + (f"continue with: tfgen run --resume {run_dir}" if last else
                   f"start again with: tfgen run {run_dir / CONFIG_NAME}")


def describe_tf_error(err: tf.errors.OpError) -> str:
    """One line: what ran out or failed, in TensorFlow's words (its message's telling line):
    memory, the file system (a full disk ..., see tfgen.storage) or something else."""
    # TensorFlow's message: "Graph execution error:", where it was defined (File ... lines),
    # the error itself, then "[[{{node ...}}]]"; an OOM names the tensor it could not allocate
    # ResourceExhaustedError is also TensorFlow's status for a full disk or a quota (ENOSPC,
    # EDQUOT): it means memory only when the message is about allocating
    lines = [line.strip() for line in (err.message or "").splitlines() if line.strip()]
    disk = storage.cause(err)
    memory = [line for line in lines
              if "OOM" in line or "llocat" in line or "out of memory" in line.lower()]
    telling = [line for line in lines if disk and disk in line.lower()] if disk else memory
    telling = telling or [line for line in lines if not line.startswith(
        ("Graph execution error", "Detected at node", "File ", "[[", "Stack trace", "Hint:"))]
    detail = (telling[0] if telling else lines[-1] if lines else "")[:300]
    kind = type(err).__name__
    if disk:
        return f"the file system failed: {disk} ({kind}: {detail})"
    if isinstance(err, tf.errors.ResourceExhaustedError) and memory:
        return (f"TensorFlow ran out of memory ({kind}: {detail}); lower train.batch_size, "
                f"inference.chunk_size or the evaluation batch sizes")
    return f"TensorFlow failed ({kind}: {detail})"


def evaluate(cfg: Config, scheme, data, run_dir: Path, history: list, step: int,
             results: dict | None = None, seconds: list | None = None,
             after_task=None) -> dict:
    """Run the config's ``[[evaluate]]`` tasks in order, but for those ``seconds`` already
    lists (the tasks a run finished before a signal stopped its evaluation).  ``results`` and
    ``seconds`` (one ``{"task", "seconds"}`` entry per task) are filled as each task finishes,
    and then ``after_task(label, its results)`` is called, so that a task that fails or is
    interrupted keeps what the tasks before it measured; that task is the first one not in
    ``seconds``."""
    ctx = EvalContext(cfg, scheme, data, run_dir, history, step)
    results = {} if results is None else results
    seconds = [] if seconds is None else seconds
    finished = {entry["task"] for entry in seconds}
    signal_hook = hook_from_env()
    for i, task in enumerate(cfg.evaluate):
        label = f"evaluate[{i}] {task.name}"
        if label in finished:
            continue
        signal_hook.at_task(i)
        found, took = run_task(task, ctx)
        results.update(found)
        seconds.append({"task": label, "seconds": took})
        if after_task is not None:
            after_task(label, found)
    return results


def run_task(component, ctx: EvalContext) -> tuple[dict, float]:
    """One ``[[evaluate]]`` task: its results (scalars also to TensorBoard as ``eval/<name>``
    at the context's step) and its wall seconds."""
    start = time.monotonic()
    results = EVALUATIONS.get(component.name).factory(component.params, ctx) or {}
    seconds = round(time.monotonic() - start, 3)
    for name, value in results.items():
        if isinstance(value, float):
            tf.summary.scalar(f"eval/{name}", value, step=ctx.step)
    return results, seconds


def log_final(train: dict, step: int) -> None:
    """The training summary's numbers (best validation metric, epochs, speed) as ``final/``
    scalars: with the ``eval/`` scalars of the evaluation tasks they are the metrics the
    HParams dashboard shows beside each run's flattened config (written when training
    starts), so runs can be compared there."""
    for key, value in train.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            tf.summary.scalar(f"final/{key}", float(value), step=step)


def failed_task(cfg: Config, seconds: list) -> str:
    """' (evaluate[i], task NAME)': the task an evaluation that failed was running."""
    i = len(seconds)
    return f" (evaluate[{i}], task {cfg.evaluate[i].name!r})" if i < len(cfg.evaluate) else ""


# --------------------------------------------------------------------------- a finished run

#: where metrics.json keeps the results of evaluations run on a finished run (tfgen complete)
AFTER_RUN = "evaluations_after_run"
#: metrics.json's peak resident memory of the processes that ran the run (bytes; every session)
PEAK_RSS = "peak_rss_bytes"


def _peak_rss(earlier) -> int | None:
    """The peak resident memory of this process, or of an earlier session if that was higher
    (a process that ran other work before, as a test does, counts that too)."""
    peaks = [p for p in (memory.peak_rss(), earlier) if isinstance(p, (int, float))]
    return int(max(peaks)) if peaks else None


class OpenedRun(NamedTuple):
    run_dir: Path
    cfg: Config
    data: DataBundle
    scheme: object
    step: int
    weights: str  # the checkpoint the weights came from
    history: list


def load_checked(cfg: Config,
                 memory_check: bool) -> tuple[DataBundle, resources.Estimate | None]:
    """The data, and (``memory_check``) the memory estimate, refused if it cannot fit: both
    before any variable exists."""
    data = load_data(cfg.data, cfg.experiment.seed, cfg.source_file, memory_check)
    return data, resources.check_memory(cfg, data) if memory_check else None


def open_run(run_dir: str, tasks: list[dict] | None = None, command: str = "tfgen eval",
             memory_check: bool = True, purpose: str = "evaluate") -> OpenedRun:
    """A finished run, ready to be evaluated again: its config (with ``tasks``, raw
    ``[[evaluate]]`` tables, in place of its own), data and scheme, with the weights its own
    evaluation used -- the best checkpoint if early stopping kept the best weights, else the
    newest intact one (restored as training restores them: only the training state's
    checkpoints are built, no training loop).  Writes nothing; ``purpose`` is what a run
    without a checkpoint is refused for ("evaluate", "export")."""
    path = open_run_dir(run_dir, command)
    _refuse_missing_plugins(path)  # the run's own config is parsed, its tasks too
    config_file = path / CONFIG_NAME
    cfg = load_config(config_file)  # the run's own config errors name its file
    if tasks is not None:
        raw = read_toml(config_file)
        raw["evaluate"] = tasks
        cfg = from_dict(raw, str(config_file))
    strategy = runtime.configure(cfg.runtime, cfg.source_file)
    data, _ = load_checked(cfg, memory_check)  # the tasks' batches too, as tfgen run does
    data, scheme, generator = build(cfg, data, strategy)
    state = TrainingState(cfg, scheme, generator, path)
    restored = state.restore()
    if restored is None:
        raise CheckpointError(f"{path}: has no checkpoint to {purpose} (the run was stopped "
                              f"before its first checkpoint)")
    weights = restored.path
    stopping = cfg.train.early_stopping
    if stopping.patience and stopping.restore_best and state.best_store.latest:
        state.restore_best()
        weights = state.best_store.latest
    return OpenedRun(path, cfg, data, scheme, state.steps_done(), weights, state.history)


def _keeps_finished_tasks(section: str, then: str = ""):
    """For tfgen eval and tfgen complete, whose stop signals stop at once
    (:func:`tfgen.signals.stopping_at_once`): the line saying that each task that finished
    is kept (metrics.json is written after each one) in ``section``, and ``then``, what to
    run next ({run_dir} is filled in)."""
    def decorate(function):
        signature = inspect.signature(function)

        @functools.wraps(function)
        def stoppable(*args, **kwargs):
            try:
                return function(*args, **kwargs)
            except KeyboardInterrupt as stop:
                signum = signal_of(stop)
                given = signature.bind(*args, **kwargs).arguments
                run_dir, command = given["run_dir"], given.get("command", "tfgen eval")
                raise Interrupted(
                    f"interrupted by {signal_name(signum)} during {command} (stopped at once); "
                    f"the results of the tasks it finished are in "
                    f"{Path(run_dir) / 'metrics.json'} ({section})"
                    + (f"; {then.format(run_dir=run_dir)}" if then else ""),
                    signum, at_once=True) from None
        return stoppable
    return decorate


#: the status of a run a signal stopped during its own evaluation (run() writes it as
#: "interrupted during {phase}"; tfgen eval finishes such a run)
EVALUATION_INTERRUPTED = "interrupted during evaluation"


@_keeps_finished_tasks("evaluation", then="finish the evaluation with: tfgen eval {run_dir}")
@_holding_until_return
def finish_evaluation(run_dir: str, memory_check: bool = True) -> list[tuple[str, dict]] | None:
    """The rest of a run's own evaluation, which a signal stopped (status
    ``EVALUATION_INTERRUPTED``); None, having done nothing, for any other run.

    The tasks of the run's ``[[evaluate]]`` list that ``evaluation_seconds`` does not name run
    as the run would have run them: from the weights its evaluation used (:func:`open_run`),
    at its last step, figures under the run's own names; their results join
    ``metrics["evaluation"]`` and ``metrics["evaluation_seconds"]``, metrics.json is written
    after each task, and after the last its status is "completed".  Returns [(label,
    results)] of the tasks run now."""
    path = open_run_dir(run_dir, "tfgen eval")
    metrics_file = path / "metrics.json"
    metrics = read_run_metrics(metrics_file)
    if metrics.get("status") != EVALUATION_INTERRUPTED:
        return None
    _hold(runlock.holding(path, f"tfgen eval {path}"))
    _hold(storage.failures_in(path, lambda: f"the tasks finished before it are in "
                                            f"{metrics_file}; run tfgen eval again"))
    opened = open_run(run_dir, None, "tfgen eval", memory_check)
    results = dict(metrics.get("evaluation") or {})
    seconds = list(metrics.get("evaluation_seconds") or [])
    done = []
    writer = tf.summary.create_file_writer(str(path / "tensorboard"))

    def keep(label: str | None = None, found: dict | None = None) -> None:
        if label is not None:
            done.append((label, found))
            writer.flush()
        now = read_run_metrics(metrics_file)  # as it is now: nothing in it is dropped
        now["evaluation"], now["evaluation_seconds"] = results, seconds
        if len(seconds) == len(opened.cfg.evaluate):
            now["status"] = "completed"
        write_metrics(path, now)

    with writer.as_default():
        evaluate(opened.cfg, opened.scheme, opened.data, path, opened.history, opened.step,
                 results, seconds, after_task=keep)
    if not done:  # every task had finished: only the status was left
        keep()
    return done


@_keeps_finished_tasks(AFTER_RUN)
@_holding_until_return
def evaluate_run(run_dir: str, tasks: list[dict] | None, command: str,
                 overrides: list[str] = (), memory_check: bool = True) -> list[tuple[str, dict]]:
    """Run evaluation tasks (raw ``[[evaluate]]`` tables; None = the run's own list) on a
    finished run from its checkpoint, without retraining, and merge each one's results into
    the run's metrics.json under ``evaluations_after_run``, keyed by the task and its
    settings (:func:`settings_key`) so that other settings do not overwrite them; scalars go
    to the run's TensorBoard at its last step, figures get a hash of the key in their name.
    ``overrides`` (``KEY=VALUE``) apply to every task.  Returns [(key, entry)].

    Everything that can be refused (the run directory, the tasks' keys, the data, the
    checkpoint, an unreadable metrics.json) is refused before the run directory changes;
    each task's entry is written as soon as it is done.  It holds the run directory's lock
    (a running ``tfgen run`` or another ``tfgen eval`` of the run is refused)."""
    path = open_run_dir(run_dir, command)
    _hold(runlock.holding(path, f"{command} {path}"))
    _hold(storage.failures_in(path, lambda: f"the tasks finished before it are in "
                                            f"{path / 'metrics.json'}; run {command} again"))
    if tasks is None:
        tasks = read_toml(path / CONFIG_NAME).get("evaluate", [])
        if not tasks:
            raise TfgenError(f"{path / CONFIG_NAME}: lists no [[evaluate]] tasks; name one with "
                             f"--task (tfgen list evaluations)")
    tasks = [apply_overrides(dict(task), list(overrides)) for task in tasks]
    opened = open_run(run_dir, tasks, command, memory_check)
    metrics_file = opened.run_dir / "metrics.json"
    read_run_metrics(metrics_file)
    done = []
    writer = tf.summary.create_file_writer(str(opened.run_dir / "tensorboard"))
    with writer.as_default():
        for component in opened.cfg.evaluate:
            key = settings_key(component)
            ctx = EvalContext(opened.cfg, opened.scheme, opened.data, opened.run_dir,
                              opened.history, opened.step,
                              figure_tag=hashlib.sha1(key.encode()).hexdigest()[:8])
            results, seconds = run_task(component, ctx)
            writer.flush()
            entry = {"task": component.name, "settings": to_dict(component, "task"),
                     "results": results, "step": opened.step, "weights": opened.weights,
                     "figures": [str(p) for p in ctx.figures], "seconds": seconds,
                     "time": dt.datetime.now().isoformat(timespec="seconds")}
            metrics = read_run_metrics(metrics_file)  # as it is now: nothing in it is dropped
            metrics.setdefault(AFTER_RUN, {})[key] = entry
            write_metrics(opened.run_dir, metrics)
            done.append((key, entry))
    return done


def read_run_metrics(path: Path) -> dict:
    """A run's metrics.json ({} if there is none); one that cannot be read is refused, not
    overwritten."""
    if not path.exists():
        return {}
    try:
        metrics = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise TfgenError(f"{path}: cannot be read as JSON ({err}); it is left as it is (move it "
                         f"away to start a new one)") from None
    if not isinstance(metrics, dict) or not isinstance(metrics.get(AFTER_RUN, {}), dict):
        raise TfgenError(f"{path}: is not a tfgen metrics file (not a JSON object with an "
                         f"'{AFTER_RUN}' object); it is left as it is")
    return metrics


def settings_key(component) -> str:
    """``<task> key=value ...``: the keys the task's config lists in ``key_settings`` and every
    key that differs from the task's defaults, in the config's order."""
    params = component.params
    values, defaults = _flatten(to_dict(params)), _flatten(to_dict(type(params)()))
    shown = getattr(params, "key_settings", ())
    return " ".join([component.name] + [f"{k}={v}" for k, v in values.items()
                                        if k in shown or v != defaults.get(k)])


def _flatten(table: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in table.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out
