"""``tfgen sweep FILE.toml``: a study of one experiment over a space of config values, on Optuna.

Every trial is one (point, seed) and runs as an ordinary ``tfgen run`` in its own process (a
failure or TensorFlow's memory stays in it), writing an ordinary run directory.  The study
folder, ``<experiment.output_dir>/<experiment.name>/``, holds::

    study.db                  the default storage (SQLite); --storage chooses another
    study.json                the sweep spec, the storage (password hidden), the study name
    <name>-t0003/             one folder per trial, named by the study and the trial number:
        trial.json            trial number, point, its params ({key: value}), seed, state,
                              metric value or error, the run directory
        trial.toml            the trial's experiment, resolved (what tfgen run was given)
        trial.log             the trial process's output
        <timestamp>/          the trial's run directory (config.toml, metrics.json, ...)
    hparams/                  TensorBoard's HParams view of the study (its keys and metric)

Cooperation: several ``tfgen sweep`` commands against one storage share the study (created by
the first, loaded by the others).  A grid's trials (every point x seed) are put in the study's
queue when it is created; random and tpe sample a point and queue its other seeds at once, so
no point lacks a seed.  Optuna hands out each queued trial once.

Resuming: while its trial runs, a sweep holds the lock of the trial's folder (tfgen.runlock)
and shares it with the trial's process, so the lock is free only when both have ended.  A
trial still RUNNING in the storage whose folder's lock is free was left by a killed sweep: the
next ``tfgen sweep`` takes it over under the same trial number and continues its run
directory from its checkpoint (``tfgen run --resume``).
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import datetime as dt
import difflib
import json
import os
import platform
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from tfgen import runlock
from tfgen.assemble import from_dict
from tfgen.checkpoints import STATE_FILE
from tfgen.compose import compose, key_paths
from tfgen.config import Config, apply_overrides, blame_overrides, dumps_toml, to_dict
from tfgen.errors import ConfigError, Interrupted, TfgenError
from tfgen.rundir import CONFIG_NAME, atomic_write
from tfgen.runner import read_run_metrics
from tfgen.signals import signal_name, signal_of
from tfgen.signals import STOP_SIGNALS
from tfgen.sweep_spec import (SWEEP, SweepSpec, apply_point, metric_value, parse_sweep, set_value,
                              shown_url, storage_url)

STUDY_INFO = "study.json"
TRIAL_INFO, TRIAL_CONFIG, TRIAL_LOG = "trial.json", "trial.toml", "trial.log"
HPARAMS_DIR = "hparams"
#: the study's record of its spec in the storage (user attributes of the study)
SPEC_ATTR, QUEUED_ATTR = "tfgen_sweep", "tfgen_queued"


class SweepError(TfgenError):
    """The study cannot be opened or used (Optuna missing, the storage unreachable, a study of
    that name made by another spec)."""


@dataclasses.dataclass
class Sweep:
    """A checked sweep file: its spec, the experiment (``raw``, parsed as ``cfg``), the study
    (name, folder, storage)."""

    file: str
    spec: SweepSpec
    raw: dict
    cfg: Config
    name: str
    study_dir: Path
    storage_kind: str
    storage_url: str


def load_sweep(path: str, overrides: list[str] | tuple[str, ...] = (),
               storage: str | None = None) -> Sweep:
    """The sweep in ``path`` with ``overrides`` (``--set``; sweep keys too) applied, every error
    of the spec, the experiment and the space at once -- before anything is written."""
    composed = compose(path)
    raw = apply_overrides(composed.raw, list(overrides))
    if SWEEP not in raw:
        raise ConfigError(str(path), SWEEP, "no [sweep] table: this is an experiment, not a "
                          "sweep", allowed="a [sweep] table with method, metric, direction and "
                          "[sweep.space] (README \"Sweeps\"); or run it with tfgen run")
    sweep_raw = raw.pop(SWEEP)
    errors: list[ConfigError] = []
    cfg = spec = None
    try:
        cfg = from_dict(copy.deepcopy(raw), str(path))
    except ConfigError as err:
        errors.append(err)
    try:
        spec = parse_sweep(sweep_raw, str(path), cfg.experiment.seed if cfg else 0)
    except ConfigError as err:
        errors.append(err)
    if cfg is not None and spec is not None:
        errors += _check_space(raw, cfg, spec, str(path))
    if errors:
        err = composed.attribute(ConfigError.combine(errors))
        raise blame_overrides(err, overrides, str(path)) from None
    study_dir = Path(cfg.experiment.output_dir) / cfg.experiment.name
    kind, url = storage_url(storage, study_dir, str(path))
    return Sweep(str(path), spec, raw, cfg, cfg.experiment.name, study_dir, kind, url)


def is_sweep(path: str) -> bool:
    """Whether the config file ``path`` (composed) has a [sweep] table."""
    return SWEEP in compose(path).raw


def _check_space(raw: dict, cfg: Config, spec: SweepSpec, file: str) -> list[ConfigError]:
    """Each space key must be a key of the resolved experiment, and each of its choices (each
    bound of a range) must make a valid experiment."""
    resolved = to_dict(cfg)
    known = key_paths(resolved)
    errors = []
    for dimension in spec.space:
        where = f"{SWEEP}.space.{dimension.key}"
        if dimension.key not in known:
            close = difflib.get_close_matches(dimension.key, known, n=1, cutoff=0.6)
            errors.append(ConfigError(file, where, "not a key of the experiment's config" +
                                      (f" (did you mean {close[0]!r}?)" if close else ""),
                                      dimension.key, "a key path of the experiment's resolved "
                                      "config (a run's config.toml lists them all, defaults "
                                      "included), e.g. train.learning_rate"))
            continue
        if dimension.choices is not None:
            tries = [(f".choices[{i}]", c) for i, c in enumerate(dimension.choices)]
        else:
            tries = [(".low", dimension.value(dimension.low)),
                     (".high", dimension.value(dimension.high))]
        for sub, value in tries:
            point = copy.deepcopy(raw)
            set_value(point, dimension.key, value)
            try:
                from_dict(point, file)
            except ConfigError as err:
                for e in getattr(err, "errors", [err]):
                    errors.append(ConfigError(file, where + sub, f"makes an invalid experiment: "
                                              f"{e.key}: {e.message}", e.given, e.allowed))
    return errors


# --------------------------------------------------------------------------- the study

def _optuna():
    try:
        import optuna
    except ImportError:
        raise SweepError("tfgen sweep needs Optuna, which is not installed; install it with "
                         "pip install 'tfgen[sweep]' (or run tools/setup.sh)") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def open_storage(sweep: Sweep):
    """The Optuna storage of ``sweep`` (the study folder is created for the default one)."""
    optuna = _optuna()
    shown = shown_url(sweep.storage_url)
    try:
        if sweep.storage_kind == "journal":
            from optuna.storages.journal import JournalFileBackend, JournalStorage

            path = Path(sweep.storage_url)
            path.parent.mkdir(parents=True, exist_ok=True)
            return JournalStorage(JournalFileBackend(str(path)))
        if sweep.storage_kind == "postgresql":
            try:
                import psycopg2  # noqa: F401
            except ImportError:
                raise SweepError("--storage postgresql:// needs psycopg2, which is not "
                                 "installed; install it with pip install 'tfgen[sweep]'") from None
            # SQLAlchemy 2.1 reads a bare postgresql:// as psycopg 3's; the extra brings psycopg2
            url = re.sub(r"^postgresql://", "postgresql+psycopg2://", sweep.storage_url)
            return _creating_tables(lambda: optuna.storages.RDBStorage(url))
        # SQLite: a writer waits for another (processes of one study) instead of failing
        return _creating_tables(lambda: optuna.storages.RDBStorage(
            sweep.storage_url, engine_kwargs={"connect_args": {"timeout": 120}}))
    except SweepError:
        raise
    except Exception as err:  # SQLAlchemy's and the journal's errors: an unreachable storage
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:300]
        raise SweepError(f"--storage {shown}: cannot open the storage ({first})") from None


def _creating_tables(open_rdb, attempts: int = 5):
    """``open_rdb()``, tried again a few times: sweeps started at once against a new database
    race to create Optuna's tables, and all but one fail (PostgreSQL: a duplicate key of
    pg_type); the tables exist once the winner is done."""
    for attempt in range(attempts):
        try:
            return open_rdb()
        except Exception:
            if attempt == attempts - 1:
                raise
            time.sleep(1.0 + random.random() * 2)


def open_study(sweep: Sweep, storage):
    """The study named ``sweep.name`` in ``storage``: created (its grid queued) or, if another
    sweep made it, loaded -- refused if that sweep's spec was another."""
    optuna = _optuna()
    spec = sweep.spec
    sampler = (optuna.samplers.TPESampler() if spec.method == "tpe"
               else optuna.samplers.RandomSampler())
    try:
        study = optuna.create_study(storage=storage, study_name=sweep.name, sampler=sampler,
                                    direction=spec.direction)
        created = True
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(storage=storage, study_name=sweep.name, sampler=sampler)
        created = False
    if created:
        study.set_user_attr(SPEC_ATTR, spec.identity())
        if spec.method == "grid":
            queued = 0
            for point, params in enumerate(spec.grid_points()):
                for seed in spec.seeds:
                    if queued < spec.trials:
                        study.enqueue_trial(params, user_attrs={"point": point, "seed": seed})
                        queued += 1
        study.set_user_attr(QUEUED_ATTR, True)
        return study
    attrs = _wait_for(lambda: study.user_attrs if QUEUED_ATTR in study.user_attrs else None)
    if attrs is None:
        raise SweepError(f"study {sweep.name!r} in {shown_url(sweep.storage_url)}: was created "
                         f"but never set up (its first sweep died at once?); delete the study "
                         f"(optuna delete-study) or use another experiment.name")
    if attrs.get(SPEC_ATTR) != json.loads(json.dumps(spec.identity())):
        raise SweepError(f"study {sweep.name!r} in {shown_url(sweep.storage_url)}: was made by "
                         f"a sweep with another method, metric, direction, seeds or space "
                         f"({json.dumps(attrs.get(SPEC_ATTR))}); give this sweep another "
                         f"experiment.name, or use the same [sweep] table")
    if spec.method == "grid" and spec.trials > len(study.get_trials(deepcopy=False)):
        # a grid whose trials grew since: queue the points not queued yet, in order
        have = len(study.get_trials(deepcopy=False))
        order = [(p, params, s) for p, params in enumerate(spec.grid_points()) for s in spec.seeds]
        for point, params, seed in order[have:spec.trials]:
            study.enqueue_trial(params, user_attrs={"point": point, "seed": seed})
    return study


def _wait_for(read, seconds: float = 60.0):
    """``read()`` once it is not None, polled for up to ``seconds`` (a study its creator is
    still setting up)."""
    deadline = time.monotonic() + seconds
    while True:
        value = read()
        if value is not None or time.monotonic() > deadline:
            return value
        time.sleep(0.5)


# --------------------------------------------------------------------------- trials

@dataclasses.dataclass
class Claim:
    """A trial this sweep runs: its number and id, point, params (Optuna's), seed, folder;
    ``resumed``: taken over from a sweep that was killed; ``lock``: the folder's lock."""

    number: int
    trial_id: int
    point: int
    params: dict
    seed: int
    folder: Path
    resumed: bool
    lock: contextlib.ExitStack
    lock_fd: int

    def values(self, spec: SweepSpec) -> dict:
        """{key: config value} of the point."""
        return {d.key: d.value(self.params[d.key]) for d in spec.space}


class Study:
    """The shared study as this process's workers use it: one at a time (a lock), so the
    storage sees one caller per process."""

    def __init__(self, sweep: Sweep, study, optuna):
        self.sweep, self.study, self.optuna = sweep, study, optuna
        self.lock = threading.Lock()

    def claim(self) -> Claim | None:
        """The next trial for this process to run: one a killed sweep left, else the next
        queued one, else (random/tpe, within the budget) a new point; None when none is left."""
        with self.lock:
            return self._orphan() or self._next()

    def _trial_folder(self, number: int) -> Path:
        return self.sweep.study_dir / f"{self.sweep.name}-t{number:04d}"

    def _orphan(self) -> Claim | None:
        TrialState = self.optuna.trial.TrialState
        for trial in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            folder = self._trial_folder(trial.number)
            if not (folder / TRIAL_INFO).is_file():  # not begun here (or another machine's)
                continue
            lock = contextlib.ExitStack()
            try:
                lock_fd = lock.enter_context(runlock.holding(
                    folder, f"tfgen sweep {self.sweep.file} (trial {trial.number})"))
            except runlock.RunInUse:
                lock.close()
                continue
            state = self.study._storage.get_trial(trial._trial_id).state
            if state != TrialState.RUNNING:  # its sweep finished it just now
                lock.close()
                continue
            attrs = trial.user_attrs
            return Claim(trial.number, trial._trial_id, attrs.get("point", trial.number),
                         dict(trial.params), attrs["seed"], folder, True, lock, lock_fd)
        return None

    def _next(self) -> Claim | None:
        spec = self.spec
        trials = self.study.get_trials(deepcopy=False)
        trial_id = self.study._pop_waiting_trial_id()  # Optuna's own atomic pop (Study.ask)
        if trial_id is not None:
            trial = self.optuna.Trial(self.study, trial_id)
        elif spec.method != "grid" and len(trials) < spec.trials:
            trial = self.study.ask()
        else:
            return None
        params = {d.key: self._suggest(trial, d) for d in spec.space}
        if "seed" not in trial.user_attrs:  # a new point: its first seed, the others queued
            trial.set_user_attr("point", trial.number)
            trial.set_user_attr("seed", spec.seeds[0])
            for seed in spec.seeds[1:]:
                self.study.enqueue_trial(params, user_attrs={"point": trial.number,
                                                             "seed": seed})
        folder = self._trial_folder(trial.number)
        trial.set_user_attr("trial_dir", folder.name)
        trial.set_user_attr("host", platform.node())
        folder.mkdir(parents=True, exist_ok=True)
        lock = contextlib.ExitStack()
        lock_fd = lock.enter_context(runlock.holding(
            folder, f"tfgen sweep {self.sweep.file} (trial {trial.number})"))
        attrs = trial.user_attrs
        return Claim(trial.number, trial_id if trial_id is not None else trial._trial_id,
                     attrs["point"], params, attrs["seed"], folder, False, lock, lock_fd)

    @property
    def spec(self) -> SweepSpec:
        return self.sweep.spec

    @staticmethod
    def _suggest(trial, d):
        if d.choices is not None:
            return trial.suggest_categorical(d.key, d.labels)
        if d.integer:
            return trial.suggest_int(d.key, int(d.low), int(d.high), log=d.log)
        return trial.suggest_float(d.key, float(d.low), float(d.high), log=d.log)

    def finish(self, claim: Claim, value: float | None, error: str | None) -> None:
        """Tell the storage how the trial ended: COMPLETE with its metric, or FAIL with its
        one-line error (a user attribute ``error``)."""
        with self.lock:
            if error is not None:
                self.optuna.Trial(self.study, claim.trial_id).set_user_attr("error", error)
                self.study.tell(claim.number, state=self.optuna.trial.TrialState.FAIL)
            else:
                self.study.tell(claim.number, value)


@dataclasses.dataclass
class Outcome:
    number: int
    state: str
    value: float | None
    error: str | None
    run_dir: str | None
    seconds: float


class Runner:
    """Runs claimed trials as ``tfgen run`` processes; :meth:`stop` ends them at their
    checkpoints (they stay RUNNING, for the next sweep to resume)."""

    def __init__(self, sweep: Sweep, study: Study, plugins: list[str], say):
        self.sweep, self.study, self.plugins, self.say = sweep, study, plugins, say
        self.stopping = threading.Event()
        self.processes: dict[int, subprocess.Popen] = {}
        self.outcomes: list[Outcome] = []
        self.left_running: list[int] = []
        self.guard = threading.Lock()

    def work(self) -> None:
        """One worker: claim and run trials until none is left or the sweep stops."""
        while not self.stopping.is_set():
            claim = self.study.claim()
            if claim is None:
                return
            with claim.lock:
                outcome = self.run_trial(claim)
            if outcome is None:  # stopped at a checkpoint: RUNNING, to be resumed
                if self.stopping.wait(1.0):
                    with self.guard:
                        self.left_running.append(claim.number)
                    return
                continue  # its process alone was stopped: resumed by the next claim
            with self.guard:
                self.outcomes.append(outcome)
            self.say(_outcome_line(outcome, claim, self.sweep.spec))

    def run_trial(self, claim: Claim) -> Outcome | None:
        """Run (or continue) ``claim``'s trial and report it to the study; None if the sweep
        was stopped meanwhile (the trial stays RUNNING)."""
        start = time.monotonic()
        spec = self.sweep.spec
        info = {"study": self.sweep.name, "trial": claim.number, "point": claim.point,
                "params": claim.values(spec), "optuna_params": claim.params, "seed": claim.seed,
                "state": "RUNNING", "host": platform.node()}
        if claim.resumed:
            info = {**_read_json(claim.folder / TRIAL_INFO), **info,
                    "resumed": _read_json(claim.folder / TRIAL_INFO).get("resumed", 0) + 1}
        atomic_write(claim.folder / TRIAL_INFO, json.dumps(info, indent=1))
        run_dir, command, error = self._command(claim)
        returncode = None
        if error is None and command is not None:
            returncode = self._process(claim, command)
            if returncode is None:
                return None
        if run_dir is None:
            runs = _run_dirs(claim.folder)
            run_dir = runs[-1] if runs else None
        value = None
        if error is None:
            error, value = _result(returncode, run_dir, claim.folder, spec.metric)
        self.study.finish(claim, value, error)
        state = "FAIL" if error else "COMPLETE"
        info.update(state=state, value=value, error=error,
                    run_dir=str(run_dir) if run_dir else None)
        atomic_write(claim.folder / TRIAL_INFO, json.dumps(info, indent=1))
        if run_dir and value is not None:
            _log_metric(Path(run_dir), spec.metric, value)
        return Outcome(claim.number, state, value, error, info["run_dir"],
                       time.monotonic() - start)

    def _command(self, claim: Claim) -> tuple[Path | None, list[str] | None, str | None]:
        """(the run directory if it exists, the tfgen command to run or None if the run has
        finished, the trial's one-line error if its experiment is invalid)."""
        runs = _run_dirs(claim.folder)
        tail = ["--quiet", *[a for p in self.plugins for a in ("--plugin", p)]]
        if claim.resumed and runs:
            run = runs[-1]
            status = _read_json(run / "metrics.json").get("status", "")
            if status == "completed":  # finished; its sweep was killed before it told the study
                return run, None, None
            if (run / "checkpoints" / STATE_FILE).is_file():
                return run, ["run", "--resume", str(run), *tail], None
            for stale in runs:  # stopped before its first checkpoint: nothing to continue
                shutil.rmtree(stale)
        raw = apply_point(self.sweep.raw, self.sweep.spec, claim.params)
        set_value(raw, "experiment.seed", claim.seed)
        set_value(raw, "experiment.name", claim.folder.name)
        set_value(raw, "experiment.output_dir", str(self.sweep.study_dir))
        try:
            cfg = from_dict(raw, str(claim.folder / TRIAL_CONFIG))
        except ConfigError as err:
            return None, None, "invalid point: " + "; ".join(err.lines())
        atomic_write(claim.folder / TRIAL_CONFIG,
                     f"# Trial {claim.number} of sweep {self.sweep.file} (seed {claim.seed})\n"
                     + dumps_toml(to_dict(cfg)))
        return None, ["run", str(claim.folder / TRIAL_CONFIG), *tail], None

    def _process(self, claim: Claim, args: list[str]) -> int | None:
        """Run ``tfgen ARGS`` for the trial; its return code, or None if the sweep stopped.

        The process shares the folder's lock (it inherits the locked descriptor), so the lock
        is free only once both it and this sweep have ended; it gets SIGTERM if this sweep
        dies."""
        with open(claim.folder / TRIAL_LOG, "ab") as log:
            log.write(f"\n# {dt.datetime.now().isoformat(timespec='seconds')}: tfgen "
                      f"{' '.join(args)}\n".encode())
            log.flush()
            process = subprocess.Popen([sys.executable, "-m", "tfgen", *args], stdout=log,
                                       stderr=subprocess.STDOUT, pass_fds=(claim.lock_fd,),
                                       start_new_session=True,  # signals come from the sweep
                                       preexec_fn=_end_with_parent)
        with self.guard:
            self.processes[claim.number] = process
        try:
            returncode = process.wait()
        finally:
            with self.guard:
                self.processes.pop(claim.number, None)
        if returncode in STOPPED or (self.stopping.is_set() and returncode != 0):
            return None
        return returncode

    def stop(self, signum: int) -> None:
        """Stop the running trials at their checkpoints (SIGTERM to each, as a scheduler's)."""
        self.stopping.set()
        with self.guard:
            processes = list(self.processes.values())
        for process in processes:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM if signum != signal.SIGINT else signal.SIGINT)


#: the exit codes of a run a stop signal ended at its checkpoint (tfgen.signals)
STOPPED = tuple(128 + int(s) for s in STOP_SIGNALS)


def _end_with_parent() -> None:
    """In the trial's process (Linux): SIGTERM when the sweep that started it dies, so a
    killed sweep's trials stop at a checkpoint instead of running on unseen."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _run_dirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if (p / CONFIG_NAME).is_file()) if folder.is_dir() else []


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _result(returncode: int | None, run_dir: Path | None, folder: Path,
            metric: str) -> tuple[str | None, float | None]:
    """(the trial's one-line error or None, its metric value)."""
    if returncode not in (0, None):
        lines = [line[len("error: "):] for line in _tail(folder / TRIAL_LOG)
                 if line.startswith("error: ")]
        if returncode < 0:
            reason = f"its process was killed by {signal.Signals(-returncode).name}"
        else:
            reason = "; ".join(lines) or f"tfgen run exited with code {returncode}"
        return f"{reason} (exit {returncode}; log {folder / TRIAL_LOG})", None
    if run_dir is None:
        return f"tfgen run wrote no run directory (log {folder / TRIAL_LOG})", None
    try:
        return None, metric_value(read_run_metrics(Path(run_dir) / "metrics.json"), metric)
    except (ValueError, TfgenError) as err:
        return str(err), None


def _tail(path: Path, lines: int = 40) -> list[str]:
    """The last lines of the trial's log, from its last session (after its last '# ' header)."""
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return []
    start = max((i for i, line in enumerate(text) if line.startswith("# ")), default=0)
    return text[start:][-lines:]


def _log_metric(run_dir: Path, metric: str, value: float) -> None:
    """The trial's metric as a scalar of the run's TensorBoard (``tensorboard/sweep``), where
    the study's HParams view finds it."""
    import tensorflow as tf

    writer = tf.summary.create_file_writer(str(run_dir / "tensorboard" / "sweep"))
    with writer.as_default():
        tf.summary.scalar(metric, value, step=0)
    writer.close()


def write_hparams_config(sweep: Sweep) -> None:
    """The study's HParams experiment (once): the sweep's keys and the seed as columns, its
    metric as the metric (each run logs its hparams; tfgen.training.callbacks)."""
    folder = sweep.study_dir / HPARAMS_DIR
    if folder.exists():
        return
    import tensorflow as tf
    from tensorboard.plugins.hparams import api as hp

    names = []
    for d in sweep.spec.space:
        if d.choices is not None and any(isinstance(c, dict) for c in d.choices):
            for choice in d.choices:
                if isinstance(choice, dict):
                    names += [f"{d.key}.{k}" for k in key_paths(choice)
                              if not isinstance(_get(choice, k), dict)]
        else:
            names.append(d.key)
    names = list(dict.fromkeys(names + ["experiment.seed"]))
    writer = tf.summary.create_file_writer(str(folder))
    with writer.as_default():
        hp.hparams_config(hparams=[hp.HParam(n) for n in names],
                          metrics=[hp.Metric(sweep.spec.metric, group="sweep",
                                             display_name=sweep.spec.metric)])
    writer.close()


def _get(table: dict, key: str) -> Any:
    for part in key.split("."):
        table = table[part]
    return table


def _outcome_line(outcome: Outcome, claim: Claim, spec: SweepSpec) -> str:
    point = ", ".join(f"{k}={_short(v)}" for k, v in claim.params.items())
    head = f"trial {outcome.number} ({point}; seed {claim.seed}{'; resumed' if claim.resumed else ''})"
    if outcome.error:
        return f"{head}: FAIL: {outcome.error}"
    return (f"{head}: {spec.metric} = {outcome.value:.6g} in {outcome.seconds:.0f} s, "
            f"{outcome.run_dir}")


def _short(value: Any) -> str:
    text = str(value)
    return text if len(text) <= 60 else text[:57] + "..."


# --------------------------------------------------------------------------- the command

def run_sweep(sweep: Sweep, workers: int = 1, plugins: list[str] | tuple[str, ...] = (),
              say=print) -> dict:
    """Run the study's trials with ``workers`` trial processes until none is left; returns
    the summary (counts by state, the best trial).  A stop signal stops the running trials
    at their checkpoints and raises :class:`Interrupted` (the next sweep resumes them)."""
    optuna = _optuna()
    sweep.study_dir.mkdir(parents=True, exist_ok=True)
    storage = open_storage(sweep)
    try:
        study = open_study(sweep, storage)
    except SweepError:
        raise
    except Exception as err:  # the storage failing under us (a dropped connection ...)
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:300]
        raise SweepError(f"--storage {shown_url(sweep.storage_url)}: {first}") from None
    atomic_write(sweep.study_dir / STUDY_INFO, json.dumps(
        {"study": sweep.name, "source": sweep.file, "storage": shown_url(sweep.storage_url),
         "sweep": sweep.spec.record(), "trial_folders": f"{sweep.name}-tNNNN"}, indent=1))
    write_hparams_config(sweep)
    say(f"study {sweep.name} ({sweep.spec.method}, {sweep.spec.trials} trials, "
        f"{len(sweep.spec.seeds)} seed(s) per point) in {shown_url(sweep.storage_url)}; "
        f"trials in {sweep.study_dir}; {workers} worker(s)")
    runner = Runner(sweep, Study(sweep, study, optuna), list(plugins), say)
    threads = [threading.Thread(target=runner.work, name=f"sweep-worker-{i}", daemon=True)
               for i in range(workers)]
    for thread in threads:
        thread.start()
    try:
        while any(t.is_alive() for t in threads):
            for thread in threads:
                thread.join(0.2)
    except KeyboardInterrupt as stop:  # Ctrl-C, SIGTERM, SIGUSR1 (tfgen.signals)
        signum = signal_of(stop)
        runner.stop(signum)
        for thread in threads:
            thread.join()
        left = sorted(runner.left_running)
        raise Interrupted(f"sweep {sweep.name} stopped ({signal_name(signum)})"
                          + (f"; trial{'s' if len(left) > 1 else ''} "
                             f"{', '.join(map(str, left))} stopped at a checkpoint" if left else "")
                          + f"; run the same tfgen sweep command again to continue", signum) from None
    return summarize(study, sweep, say)


def summarize(study, sweep: Sweep, say=print) -> dict:
    """Counts of the study's trials by state, its best trial and (seeds > 1) best point."""
    trials = study.get_trials(deepcopy=False)
    counts: dict[str, int] = {}
    for trial in trials:
        counts[trial.state.name] = counts.get(trial.state.name, 0) + 1
    done = [t for t in trials if t.state.name == "COMPLETE"]
    summary: dict = {"counts": counts, "best": None}
    say(f"study {sweep.name}: " + ", ".join(f"{n} {s.lower()}" for s, n in sorted(counts.items())))
    if done:
        sign = 1 if sweep.spec.direction == "minimize" else -1
        best = min(done, key=lambda t: sign * t.value)
        folder = sweep.study_dir / f"{sweep.name}-t{best.number:04d}"
        summary["best"] = {"trial": best.number, "value": best.value, "params": best.params,
                           "seed": best.user_attrs.get("seed"), "folder": str(folder)}
        say(f"best trial {best.number}: {sweep.spec.metric} = {best.value:.6g} ("
            + ", ".join(f"{k}={_short(v)}" for k, v in best.params.items())
            + f"; seed {best.user_attrs.get('seed')}) in {folder}")
        if len(sweep.spec.seeds) > 1:
            points: dict = {}
            for t in done:
                points.setdefault(t.user_attrs.get("point"), []).append(t)
            full = {p: ts for p, ts in points.items() if len(ts) == len(sweep.spec.seeds)}
            if full:
                point, ts = min(full.items(),
                                key=lambda kv: sign * sum(t.value for t in kv[1]) / len(kv[1]))
                mean = sum(t.value for t in ts) / len(ts)
                summary["best_point"] = {"point": point, "mean": mean, "params": ts[0].params,
                                         "trials": sorted(t.number for t in ts)}
                say(f"best point (mean over {len(ts)} seeds): {sweep.spec.metric} = "
                    f"{mean:.6g} (" + ", ".join(f"{k}={_short(v)}" for k, v in ts[0].params.items())
                    + f"; trials {', '.join(str(t.number) for t in sorted(ts, key=lambda t: t.number))})")
    return summary


