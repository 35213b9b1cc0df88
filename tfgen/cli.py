"""The ``tfgen`` command line: run, validate, list."""
from __future__ import annotations

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

SET_HELP = ("Override a config key with a TOML-typed value, e.g. --set train.epochs=3 "
            "--set model.prior.dim=2 --set 'data.train_split=\"train[:1000]\"'. Repeatable.")


def _fail(err) -> None:
    typer.echo(f"error: {err}", err=True)
    raise typer.Exit(getattr(err, "exit_code", 2))


@app.command()
def run(
    config: Optional[str] = typer.Argument(None, help="The experiment's TOML file."),
    set_: List[str] = typer.Option([], "--set", help=SET_HELP),
    resume: Optional[str] = typer.Option(None, "--resume",
                                         help="Continue the run in this run directory from its last "
                                              "checkpoint (its config.toml is used; --set may change it)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress output (for CI)."),
    eager: bool = typer.Option(False, "--eager", help="Run every step eagerly, op by op (debugging)."),
) -> None:
    """Train and evaluate the experiment in CONFIG; writes runs/<name>/<timestamp>/."""
    from tfgen.errors import TfgenError

    if (config is None) == (resume is None):
        _fail("give either a CONFIG file or --resume RUN_DIR")
    try:
        from tfgen import runtime
        from tfgen.runner import run as run_experiment

        if eager:
            runtime.force_eager(True)
        run_experiment(config, set_, resume, quiet)
    except TfgenError as err:
        _fail(err)


@app.command()
def validate(
    files: List[str] = typer.Argument(..., help="TOML files to check."),
    set_: List[str] = typer.Option([], "--set", help=SET_HELP),
) -> None:
    """Check experiment files without running them (exit 2 on the first bad one)."""
    from tfgen.config import load_config
    from tfgen.errors import TfgenError

    failed = False
    for file in files:
        try:
            cfg = load_config(file, set_)
        except TfgenError as err:
            typer.echo(f"error: {err}", err=True)
            failed = True
            continue
        typer.echo(f"ok: {file} (scheme {cfg.inference.name}, likelihood "
                   f"{cfg.model.likelihood.name}, decoder {cfg.model.decoder.name})")
    if failed:
        raise typer.Exit(2)


@app.command("list")
def list_(
    kind: Optional[str] = typer.Argument(None, help="likelihoods, networks, priors, schemes or evaluations."),
    keys: bool = typer.Option(True, "--keys/--no-keys", help="Show each entry's config keys."),
) -> None:
    """Show what each registry offers, with each entry's config keys and defaults."""
    from tfgen.config import describe_fields
    from tfgen.registry import ALL, load_components

    load_components()
    if kind is not None and kind not in ALL:
        typer.echo(f"error: unknown registry {kind!r}; allowed: {', '.join(ALL)}", err=True)
        raise typer.Exit(2)
    for name, registry in ALL.items():
        if kind and name != kind:
            continue
        typer.echo(f"{name}:")
        for entry in registry.entries():
            typer.echo(f"  {entry.name:<18} {entry.summary}")
            if keys:
                for key, default, help_text in describe_fields(entry.config_cls):
                    if key == "check":
                        continue
                    typer.echo(f"      {key} = {default}" + (f"   # {help_text}" if help_text else ""))
        typer.echo("")


def main() -> None:  # console-script entry point
    if len(sys.argv) > 1 and sys.argv[1] not in ("--help", "-h"):
        _import_tensorflow_quietly()
    app()


if __name__ == "__main__":
    sys.exit(main())
