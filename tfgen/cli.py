"""The ``tfgen`` command line: run, sweep, validate, eval, complete, export, compare, list."""
from __future__ import annotations

import contextlib
import faulthandler
import os
import sys
from typing import List, Optional

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # keep TF's C++ start-up chatter off the terminal

import typer

_TF_NOISE = ("cudart_stub", "absl::InitializeLog", "cuInit", "cuda_platform", "cuda_executor",
             "Unable to register cu", "computation placer", "TF-TRT", "oneDNN custom operations")


def _import_tensorflow_quietly() -> None:
    """Import TF with its C++ start-up messages (no GPU here, etc.) filtered out of stderr.

    TF 2.21 prints some of them before it reads TF_CPP_MIN_LOG_LEVEL; anything
    else it prints is passed through.
    """
    import tempfile

    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as capture:
        os.dup2(capture.fileno(), 2)
        try:
            import tensorflow  # noqa: F401
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            for line in capture.read().decode(errors="replace").splitlines():
                if not any(noise in line for noise in _TF_NOISE):
                    sys.stderr.write(line + "\n")
    import absl.logging

    absl.logging.set_verbosity(absl.logging.ERROR)

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="tfgen: declarative, TOML-driven training of deep latent-variable "
                       "generative models on TensorFlow.")

PLUGIN_HELP = ("Load components (networks, likelihoods, priors, schemes, evaluation tasks) from "
               "this Python file (.py) or importable module, after the built-in and installed "
               "ones; repeatable. TFGEN_PLUGINS (os.pathsep-separated) names more.")

SET_HELP = ("Override a config key with a TOML-typed value, e.g. --set train.epochs=3 "
            "--set model.prior.dim=2 --set 'data.train_split=\"train[:1000]\"'. Repeatable.")


def _load_plugins(specs: List[str]) -> None:
    """The plugins (installed, TFGEN_PLUGINS, ``--plugin``), before the command reads a config."""
    from tfgen.assemble import load_plugins

    load_plugins(specs)


def _fail(err) -> None:
    for line in getattr(err, "lines", lambda: [str(err)])():
        typer.echo(f"error: {line}", err=True)
    raise typer.Exit(getattr(err, "exit_code", 2))


#: set when a signal stopped the command where it was: :func:`main` then leaves at once
_LEAVE_AT_ONCE = False


@contextlib.contextmanager
def _one_line_errors(debug: bool = False):
    """Whatever goes wrong ends in one line per error on stderr and a non-zero exit code:
    2 bad input or a refused run (a run directory in use too), 3 a diverged loss, 4 a failing
    file system (tfgen.errors.StorageError), 128 + the signal's number for a stop signal (130
    Ctrl-C, 143 SIGTERM, 138 SIGUSR1), 1 a TensorFlow failure or a bug.  ``debug``
    (``--debug``) lets the exception through, with its traceback.  Stop signals stop at once
    (:func:`tfgen.signals.stopping_at_once`) unless the command handles them itself (a run
    does, by phase)."""
    from tfgen.signals import stopping_at_once

    global _LEAVE_AT_ONCE
    try:
        with stopping_at_once():
            yield
    except (typer.Exit, SystemExit):
        raise
    except BaseException as err:
        if debug:
            raise
        import logging

        # after the one line, nothing: TensorFlow's Python logger would otherwise warn at
        # exit about objects it could not finish (e.g. the values of a refused checkpoint)
        logging.getLogger("tensorflow").setLevel(logging.ERROR)
        code, lines = _describe_failure(err)
        for line in lines:
            typer.echo(f"error: {line}", err=True)
        _LEAVE_AT_ONCE = isinstance(err, KeyboardInterrupt) or getattr(err, "at_once", False)
        raise typer.Exit(code) from None


def _describe_failure(err: BaseException) -> tuple[int, list[str]]:
    """(exit code, lines) for any exception that reaches the command line."""
    from tfgen.errors import TfgenError

    if isinstance(err, TfgenError):
        return err.exit_code, err.lines()
    if isinstance(err, KeyboardInterrupt):  # before training started (the runner reports later ones)
        from tfgen.signals import exit_code, signal_name, signal_of

        signum = signal_of(err)
        return exit_code(signum), [f"interrupted ({signal_name(signum)}) before training started"]
    import tensorflow as tf

    if isinstance(err, tf.errors.OpError):
        from tfgen.runner import describe_tf_error

        text = f"{describe_tf_error(err)} before training started"
    elif isinstance(err, MemoryError):  # e.g. NumPy, reading or transforming the data
        text = ("ran out of memory before training started (MemoryError); lower data.subsample "
                "or data.resize, or use smaller splits")
    else:
        first = (str(err).strip().splitlines() or [""])[0][:300]
        text = f"unexpected {type(err).__name__}: {first} (a bug in tfgen?)"
    return 1, [f"{text}; run again with --debug for the traceback"]


@app.command()
def run(
    config: Optional[str] = typer.Argument(None, help="The experiment's TOML file."),
    set_: List[str] = typer.Option([], "--set", help=SET_HELP),
    resume: Optional[str] = typer.Option(None, "--resume",
                                         help="Continue the run in this run directory from its last "
                                              "checkpoint (its config.toml is used; --set may change it)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress output (for CI)."),
    eager: bool = typer.Option(False, "--eager", help="Run every step eagerly, op by op (debugging)."),
    debug: bool = typer.Option(False, "--debug", help="Show the Python traceback of any failure "
                                                      "(normally one line)."),
    memory_check: bool = typer.Option(True, "--memory-check/--no-memory-check",
                                      help="Refuse a configuration whose estimated memory need "
                                           "exceeds the available memory (on by default)."),
    worker_index: Optional[int] = typer.Option(
        None, "--worker-index", min=0,
        help="This machine's index in runtime.workers (runtime.strategy = \"multi_worker\"; "
             "sets TF_CONFIG). Worker 0 writes the run directory."),
    plugin: List[str] = typer.Option([], "--plugin", help=PLUGIN_HELP),
) -> None:
    """Train and evaluate the experiment in CONFIG; writes runs/<name>/<timestamp>/. Ctrl-C,
    SIGTERM or SIGUSR1 stop it after the current step with a checkpoint (exit 130, 143, 138;
    continue with --resume), a second one at once; in evaluation they stop it at once, and
    tfgen eval RUN_DIR finishes the evaluation."""
    if (config is None) == (resume is None):
        _fail("give either a CONFIG file or --resume RUN_DIR")
    with _one_line_errors(debug):
        from tfgen import runtime
        from tfgen.runner import run as run_experiment

        _load_plugins(plugin)
        if eager:
            runtime.force_eager(True)
        run_experiment(config, set_, resume, quiet, memory_check, worker_index)


@app.command()
def sweep(
    config: str = typer.Argument(..., help="The sweep's TOML file: an experiment with a sweep "
                                           "table (README \"Sweeps\")."),
    storage: Optional[str] = typer.Option(
        None, "--storage", help="Where the study lives: sqlite:///PATH (default: "
        "<output_dir>/<name>/study.db), journal:PATH (a file on a shared file system) or "
        "postgresql://USER:PASSWORD@HOST:PORT/DATABASE (many machines). Sweeps started "
        "against one storage share the study."),
    workers: int = typer.Option(1, "--workers", min=1, max=256,
                                help="Trial processes to run at once on this machine."),
    set_: List[str] = typer.Option([], "--set", help=SET_HELP + " Sweep keys too, e.g. --set "
                                   "sweep.trials=4."),
    plugin: List[str] = typer.Option([], "--plugin", help=PLUGIN_HELP + " Passed to every trial."),
    debug: bool = typer.Option(False, "--debug", help="Show the Python traceback of any failure."),
) -> None:
    """Run a study on Optuna: every (point, seed) of the sweep's space is a trial, an ordinary run
    directory in <output_dir>/<name>/<name>-tNNNN/, run as its own tfgen run process.  Failing
    trials are recorded with their error and the study goes on; started again (or several
    times, against one --storage), it continues the study: a trial whose sweep was stopped or
    killed resumes from its checkpoint.  Ends with the counts by state and the best trial."""
    with _one_line_errors(debug):
        from tfgen.sweep import load_sweep, run_sweep

        _load_plugins(plugin)
        run_sweep(load_sweep(config, set_, storage), workers, plugin, say=typer.echo)


@app.command()
def validate(
    files: List[str] = typer.Argument(..., help="TOML files to check."),
    set_: List[str] = typer.Option([], "--set", help=SET_HELP),
    plugin: List[str] = typer.Option([], "--plugin", help=PLUGIN_HELP),
    debug: bool = typer.Option(False, "--debug", help="Show the Python traceback of a plugin "
                                                      "that fails to load."),
) -> None:
    """Check experiment files without running them: every error of every file, one line each
    (exit 2 if any file is bad). The shapes of a layers network are checked too, where the
    image shape follows from the config or the data's headers; else a note says tfgen run
    checks them."""
    from tfgen.assemble import load_config, unchecked_at_load
    from tfgen.errors import TfgenError
    from tfgen.sweep import is_sweep, load_sweep

    with _one_line_errors(debug):
        _load_plugins(plugin)
    failed = False
    for file in files:
        try:
            if is_sweep(file):
                found = load_sweep(file, set_)
                cfg, what = found.cfg, (f"; sweep: {found.spec.method}, {found.spec.trials} "
                                        f"trials, {found.spec.direction} {found.spec.metric}")
            else:
                cfg, what = load_config(file, set_), ""
        except TfgenError as err:
            for line in err.lines():
                typer.echo(f"error: {line}", err=True)
            failed = True
            continue
        typer.echo(f"ok: {file} (scheme {cfg.inference.name}, likelihood "
                   f"{cfg.model.likelihood.name}, decoder {cfg.model.decoder.name}{what})")
        for note in unchecked_at_load(cfg):
            typer.echo(f"note: {file}: {note}")
    if failed:
        raise typer.Exit(2)


#: the ``complete`` task's keys that ``tfgen complete`` sets through its own options
COMPLETE_OPTIONS = {"mask": "--mask", "mask_file": "--mask-file", "fit.method": "--method",
                    "num_images": "--num-images", "split": "--split", "fill": "--fill",
                    "fit.steps": "--steps"}


@app.command()
def complete(
    run_dir: str = typer.Argument(..., help="A finished run's directory, "
                                            "<output_dir>/<name>/<timestamp>."),
    mask: Optional[str] = typer.Option(None, "--mask", help="The hidden pixels: center, "
                                       "left_half, right_half, top_half, bottom_half, random or "
                                       "file (default right_half: the left half observed, seed "
                                       "001 task 4b)."),
    mask_file: Optional[str] = typer.Option(None, "--mask-file", help="With --mask file: a .png "
                                            "(white = hidden) or a .npy array (1 = hidden) of "
                                            "the images' size."),
    method: Optional[str] = typer.Option(None, "--method", help="svi, map, mle, langevin or "
                                         "encoder (default svi)."),
    num_images: Optional[str] = typer.Option(None, "--num-images",
                                             help="The first N images of the split (default 10)."),
    split: Optional[str] = typer.Option(None, "--split", help="train, val or test (default test)."),
    fill: Optional[str] = typer.Option(None, "--fill", help="Hidden pixels from p(y_H | z): mean "
                                       "or sample (default sample)."),
    steps: Optional[str] = typer.Option(None, "--steps", help="At most this many fitting steps "
                                        "(default 500)."),
    set_: List[str] = typer.Option([], "--set", help="Any other key of the complete task (tfgen "
                                   "list evaluations), read as TOML, e.g. --set fit.patience=0 "
                                   "--set fit.optimizer.name=adam. Repeatable."),
    memory_check: bool = typer.Option(True, "--memory-check/--no-memory-check",
                                      help="Refuse tasks whose estimated memory need exceeds "
                                           "the available memory (on by default)."),
    debug: bool = typer.Option(False, "--debug", help="Show the Python traceback of any failure."),
    plugin: List[str] = typer.Option([], "--plugin", help=PLUGIN_HELP),
) -> None:
    """Complete partly hidden images with a finished run's decoder (any scheme): fit latents to
    the observed pixels, fill the hidden ones; writes a figure to the run's figures/ and merges
    the results, keyed with their settings, into its metrics.json."""
    with _one_line_errors(debug):
        from tfgen.config import apply_overrides
        from tfgen.errors import ConfigError
        from tfgen.runner import evaluate_run

        _load_plugins(plugin)
        task = {"task": "complete", **{key: value for key, value in
                                       [("mask", mask), ("mask_file", mask_file), ("split", split),
                                        ("fill", fill)] if value is not None}}
        if method is not None:
            task["fit"] = {"method": method}
        typed = [f"{key}={value}" for key, value in [("num_images", num_images),
                                                      ("fit.steps", steps)] if value is not None]
        try:
            apply_overrides(task, typed + list(set_))
            [(key, entry)] = evaluate_run(run_dir, [task], "tfgen complete",
                                          memory_check=memory_check)
        except ConfigError as err:  # the task's keys are this command's options
            raise ConfigError.combine([_as_option_error(e, "tfgen complete", COMPLETE_OPTIONS)
                                       for e in getattr(err, "errors", [err])]) from None
        typer.echo(_completion_summary(key, entry, run_dir))


def _as_option_error(err, command: str, options: dict, set_keys: list[str] | None = None):
    """An error in a key of the command's [[evaluate]] tables (``evaluate[i].<key>``), told as
    one in the option that set the key: ``options`` maps keys to options, the others are
    ``--set KEY``'s -- every key (``set_keys`` None: the command built the table), or those
    ``set_keys`` set (the others came from the run's own config.toml and name it)."""
    import re

    from tfgen.config import overridden_key
    from tfgen.errors import ConfigError

    match = re.fullmatch(r"evaluate\[\d+\]\.(.+)", err.key or "")
    if not match:
        return err
    key = match.group(1)
    if key in options:
        where = options[key]
    elif set_keys is None or overridden_key(key, set_keys):
        where = f"--set {overridden_key(key, set_keys) if set_keys else key}"
    else:
        return err
    return ConfigError(command, where, err.message, err.given, err.allowed)


def _completion_summary(key: str, entry: dict, run_dir: str) -> str:
    """One line: the settings, the measured errors and the fit, where the results went."""
    results = entry["results"]
    value = lambda suffix: next((v for k, v in results.items() if k.endswith(suffix)), None)
    parts = [f"{label} {value(suffix):.4g}" for suffix, label in
             [("_hidden_mse", "hidden-pixel MSE"), ("_observed_mse", "observed-pixel MSE"),
              ("_objective_mean", "objective (nats, mean)"), ("_steps_mean", "steps (mean)"),
              ("_fit_seconds", "fit seconds")] if value(suffix) is not None]
    figure = entry["figures"][0] if entry["figures"] else "none"
    metrics = os.path.join(run_dir, "metrics.json")
    return f"{key}: {', '.join(parts)}; figure {figure}; results in {metrics}"


@app.command("eval")
def eval_(
    run_dir: str = typer.Argument(..., help="A finished (or interrupted) run's directory, "
                                            "<output_dir>/<name>/<timestamp>."),
    task: List[str] = typer.Option([], "--task", help="An evaluation task to run (tfgen list "
                                   "evaluations); repeatable. Default: the run's own "
                                   "[[evaluate]] list."),
    set_: List[str] = typer.Option([], "--set", help="A key of the tasks, read as TOML, applied "
                                   "to every task run, e.g. --task log_likelihood --set "
                                   "samples=1000. Repeatable."),
    memory_check: bool = typer.Option(True, "--memory-check/--no-memory-check",
                                      help="Refuse tasks whose estimated memory need exceeds "
                                           "the available memory (on by default)."),
    debug: bool = typer.Option(False, "--debug", help="Show the Python traceback of any failure."),
    plugin: List[str] = typer.Option([], "--plugin", help=PLUGIN_HELP),
) -> None:
    """Run evaluation tasks on a finished run from its checkpoint, without retraining; merges
    each result, keyed with its settings, into the run's metrics.json (evaluations_after_run)
    and its TensorBoard at the run's last step.  On a run whose own evaluation a signal
    stopped, without --task and --set: runs the rest of that evaluation and completes the
    run."""
    with _one_line_errors(debug):
        from tfgen.config import override_keys
        from tfgen.errors import ConfigError
        from tfgen.runner import evaluate_run, finish_evaluation

        _load_plugins(plugin)
        tasks = [{"task": name} for name in task] or None
        finished = None if tasks or set_ else finish_evaluation(run_dir, memory_check)
        if finished is not None:
            for label, results in finished:
                typer.echo(f"{label}: {_numbers(results) or 'no scalar results'}")
            typer.echo(f"the run's evaluation is complete ({len(finished)} tasks run now): "
                       f"results in {os.path.join(run_dir, 'metrics.json')} (evaluation)")
            return
        try:
            done = evaluate_run(run_dir, tasks, "tfgen eval", set_, memory_check)
        except ConfigError as err:  # --task and --set set keys of the tasks: name the option
            options = {"task": "--task"} if tasks else {}
            raise ConfigError.combine([_as_option_error(e, "tfgen eval", options,
                                                        override_keys(set_))
                                       for e in getattr(err, "errors", [err])]) from None
        for key, entry in done:
            numbers = _numbers(entry["results"])
            typer.echo(f"{key}: {numbers or 'no scalar results'}"
                       + (f"; figures: {', '.join(entry['figures'])}" if entry["figures"] else ""))
        typer.echo(f"results merged into {os.path.join(run_dir, 'metrics.json')} "
                   f"(evaluations_after_run)")


def _numbers(results: dict) -> str:
    """A task's scalar results, "name value, ..."."""
    return ", ".join(f"{name} {value:.6g}" for name, value in results.items()
                     if isinstance(value, float))


@app.command()
def export(
    run_dir: str = typer.Argument(..., help="A finished (or interrupted) run's directory, "
                                            "<output_dir>/<name>/<timestamp>."),
    out: Optional[str] = typer.Option(None, "--out", help="The SavedModel's folder (default "
                                      "RUN_DIR/export/savedmodel); an earlier export there is "
                                      "replaced, any other existing folder refused."),
    memory_check: bool = typer.Option(True, "--memory-check/--no-memory-check",
                                      help="Refuse a run whose estimated memory need exceeds "
                                           "the available memory (on by default)."),
    plugin: List[str] = typer.Option([], "--plugin", help=PLUGIN_HELP),
    debug: bool = typer.Option(False, "--debug", help="Show the Python traceback of any failure."),
) -> None:
    """Write a finished run as a TensorFlow SavedModel that plain TensorFlow loads
    (tf.saved_model.load): signatures decode (z -> the likelihood's mean and parameters),
    sample (n, seed -> latents and images from the run's own prior) and, for schemes with an
    encoder, encode (images -> mean, stddev, log-variance of q(z | y)). Uses the weights
    tfgen eval uses; written atomically."""
    with _one_line_errors(debug):
        _load_plugins(plugin)
        from tfgen.export import export_run

        target, manifest = export_run(run_dir, out, memory_check)
        size = sum(p.stat().st_size for p in target.rglob("*") if p.is_file())
        typer.echo(f"exported {run_dir} (step {manifest['step']}, {manifest['weights']}) to "
                   f"{target}: signatures {', '.join(manifest['signatures'])}; "
                   f"{size / 2**20:.1f} MiB")


@app.command()
def compare(
    paths: List[str] = typer.Argument(..., metavar="RUN_DIR_OR_STUDY",
                                      help="Run directories, or folders of them (a study, an "
                                           "experiment's folder, an output folder): every run "
                                           "directory below."),
    metric: List[str] = typer.Option([], "--metric", help="One more column: a number in "
                                     "metrics.json by dotted path, e.g. evaluation.test_elbo "
                                     "or train.images_per_second. Repeatable."),
    key: List[str] = typer.Option([], "--key", help="Show only these config columns (a key, or "
                                  "a table such as inference: the keys below it), of those that "
                                  "differ; default all. Repeatable."),
    fmt: Optional[str] = typer.Option(None, "--format", help="markdown, csv or json: written "
                                      "to --out, or printed instead of the terminal's table."),
    out: Optional[str] = typer.Option(None, "--out", help="Write the table to this file "
                                      "(atomically); the format from --format or the suffix "
                                      ".md, .csv or .json."),
    figures_dir: Optional[str] = typer.Option(None, "--figures", help="A new folder for a figure "
                                              "per training metric over wall time (one line "
                                              "per row) and images.png, the rows' samples and "
                                              "completions side by side."),
    debug: bool = typer.Option(False, "--debug", help="Show the Python traceback of any failure."),
) -> None:
    """One table of runs: rows are runs, or the seeds of one config as mean ± std (n); columns
    are the config keys that differ and the metrics (test NLL, bits/dim, FID on one feature
    set, completion MSE, training and evaluation wall time, peak memory; blank where a run has
    none). Runs evaluated on different data, test splits or FID features are refused. Reads
    the runs, writes nothing into them."""
    with _one_line_errors(debug):
        from tfgen.compare import rich_table, run_compare

        comparison, text, written = run_compare(paths, metric, fmt, out, figures_dir, key)
        if text is not None and out is None:
            typer.echo(text, nl=False)
        else:
            from rich.console import Console

            console = Console()  # a pipe or a file: wide lines rather than folded cells
            (console if console.is_terminal else Console(width=400)).print(rich_table(comparison))
            for note in comparison.notes:
                typer.echo(note)
        if out is not None:
            typer.echo(f"table written to {out}")
        if written:
            typer.echo(f"figures written to {figures_dir}: {', '.join(p.name for p in written)}")


@app.command("list")
def list_(
    kind: Optional[str] = typer.Argument(None, help="likelihoods, networks, priors, schemes or evaluations."),
    keys: bool = typer.Option(True, "--keys/--no-keys", help="Show each entry's config keys."),
    plugin: List[str] = typer.Option([], "--plugin", help=PLUGIN_HELP),
    debug: bool = typer.Option(False, "--debug", help="Show the Python traceback of a plugin "
                                                      "that fails to load."),
) -> None:
    """Show what each registry offers, with each entry's config keys and defaults; a plugin's
    entries with their origin, (plugin DIST VERSION) or (plugin MODULE_OR_FILE)."""
    from tfgen.assemble import CATALOG
    from tfgen.config import describe_fields
    from tfgen.registry import BUILT_IN

    if kind is not None and kind not in CATALOG:
        typer.echo(f"error: unknown registry {kind!r}; allowed: {', '.join(CATALOG)}", err=True)
        raise typer.Exit(2)
    with _one_line_errors(debug):
        _load_plugins(plugin)
    for name, registry in CATALOG.items():
        if kind and name != kind:
            continue
        typer.echo(f"{name}:")
        for entry in registry.entries():
            origin = f"({entry.origin}) " if entry.origin != BUILT_IN else ""
            typer.echo(f"  {entry.name:<18} {origin}{entry.summary}")
            if keys:
                for key, default, help_text in describe_fields(entry.config_cls):
                    if key == "check":
                        continue
                    typer.echo(f"      {key} = {default}" + (f"   # {help_text}" if help_text else ""))
        typer.echo("")


def main() -> None:  # console-script entry point
    faulthandler.enable()  # a hard crash (SIGSEGV, SIGABRT ...) prints the Python stack
    if len(sys.argv) > 1 and sys.argv[1] not in ("--help", "-h"):
        _import_tensorflow_quietly()
    try:
        app()
    except SystemExit as done:
        if not _LEAVE_AT_ONCE:
            raise
        # A signal stopped the command where it was (tfgen.signals.raise_in_own_code):
        # TensorFlow's threads (tf.data's prefetching of the iterator it left, the
        # executors) may still be running, and the interpreter's teardown would free what
        # they use.  Nothing is left to do: its line is printed, its files are written
        # (checkpoints and metrics.json atomically, TensorBoard flushed).  So leave now.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(done.code if isinstance(done.code, int) else 1)


if __name__ == "__main__":
    sys.exit(main())
