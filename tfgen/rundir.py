"""Run directories: ``<output_dir>/<name>/<timestamp>/``, never overwritten.

Each holds the resolved config (runnable as it is), the command line, the
seed, package versions and the git commit, next to checkpoints, TensorBoard
events, history, metrics and figures.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from tfgen import plugins, storage
from tfgen.config import Config, dumps_toml, to_dict
from tfgen.errors import ConfigError

PACKAGES = ("tfgen", "tensorflow", "tensorflow-probability", "tf-keras", "tensorflow-datasets",
            "tensorboard", "typer", "numpy")
CONFIG_NAME = "config.toml"
RUN_INFO = "run.json"


def package_versions() -> dict[str, str | None]:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def git_commit() -> dict[str, str | None]:
    """The commit (and dirtiness) of the tfgen source tree, if it is a git checkout."""
    source = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=source, capture_output=True,
                                text=True, timeout=10)
        status = subprocess.run(["git", "status", "--porcelain"], cwd=source, capture_output=True,
                                text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}
    if commit.returncode != 0:
        return {"commit": None, "dirty": None}
    return {"commit": commit.stdout.strip(), "dirty": bool(status.stdout.strip())}


def create_run_dir(cfg: Config) -> Path:
    """A new, empty directory; a clash gets a numeric suffix, nothing is overwritten.

    It is always ``<output_dir>/<name>/<timestamp>``: the name is checked at load time
    (one folder name), and the resolved path is checked here again before anything is
    created, which also catches a ``<name>`` folder that is a symbolic link to elsewhere.
    """
    output_dir = Path(cfg.experiment.output_dir)
    parent = output_dir / cfg.experiment.name
    root, resolved = output_dir.resolve(), parent.resolve()
    if resolved.parent != root:
        raise ConfigError(cfg.source_file, "experiment.name",
                          f"the run folder would be {resolved}, not a folder directly in "
                          f"experiment.output_dir ({root})", cfg.experiment.name,
                          "one folder name that is not a symbolic link out of experiment.output_dir")
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    try:
        parent.mkdir(parents=True, exist_ok=True)
        for i in range(1000):
            path = parent / (stamp if i == 0 else f"{stamp}-{i}")
            try:
                path.mkdir()
                return path
            except FileExistsError:
                continue
    except OSError as err:  # a file in the way, no permission, a read-only or full disk
        raise ConfigError(cfg.source_file, "experiment.output_dir",
                          f"cannot create a run directory in {parent} "
                          f"({err.strerror or err.__class__.__name__})",
                          cfg.experiment.output_dir, "a folder you can write to") from None
    raise RuntimeError(f"cannot create a fresh run directory under {parent}")


def write_config(run_dir: Path, cfg: Config) -> None:
    """The resolved config, flat: the files it extends merged in, defaults filled."""
    composed = (f" (composed from {', '.join(cfg.source_chain)})"
                if len(cfg.source_chain) > 1 else "")
    # a file name may hold a line break, which would end the comment inside the TOML
    source = "".join(ch if " " <= ch != "\x7f" else repr(ch)[1:-1]
                     for ch in f"{cfg.source_file}{composed}")
    header = (f"# Resolved config of this run (defaults filled, overrides applied).\n"
              f"# Source: {source}.  Run it again with: tfgen run {run_dir / CONFIG_NAME}\n")
    atomic_write(run_dir / CONFIG_NAME, header + dumps_toml(to_dict(cfg)))


def write_run_info(run_dir: Path, cfg: Config, overrides: list[str], resumed: bool,
                   devices: dict | None = None) -> None:
    """run.json: per session the command line, overrides, (``devices``) the strategy, its
    replicas and devices, and the plugins loaded (:func:`tfgen.plugins.records`); the
    versions, commit and host when the run was created."""
    path = run_dir / RUN_INFO
    event = {"time": dt.datetime.now().isoformat(timespec="seconds"),
             "argv": sys.argv, "overrides": list(overrides), "resumed": resumed,
             **({"devices": devices} if devices else {}), "plugins": plugins.records(cfg)}
    info = {}
    if path.exists():
        try:
            info = json.loads(path.read_text())
            info["sessions"].append(event)
            info["versions_at_resume"] = package_versions()
        except (OSError, ValueError, KeyError, AttributeError, TypeError):
            # a damaged run.json is no reason to refuse a resume that works: start it again
            info = {"note": f"{RUN_INFO} could not be read at the resume of {event['time']}; "
                            f"the earlier sessions are lost from it"}
    if "sessions" not in info:
        info.update({"created": event["time"], "source_config": cfg.source_file,
                     "config_chain": cfg.source_chain,
                     "seed": cfg.experiment.seed, "versions": package_versions(),
                     "git": git_commit(), "host": platform.node(), "sessions": [event]})
    atomic_write(path, json.dumps(info, indent=1))


def recorded_plugins(run_dir: Path) -> list:
    """The plugins the run's latest session recorded in run.json ([] if none, or if run.json
    cannot be read: then a missing plugin is an unknown name in the run's config)."""
    try:
        sessions = json.loads((run_dir / RUN_INFO).read_text())["sessions"]
        return next((s["plugins"] for s in reversed(sessions) if "plugins" in s), [])
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return []


def write_metrics(run_dir: Path, metrics: dict) -> None:
    atomic_write(run_dir / "metrics.json", json.dumps(metrics, indent=1, default=float))


def atomic_write(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` so that a kill leaves either the old or the new file.

    A failing file system (a full disk ...) is a StorageError naming ``path``; the old file
    stays, and the temporary file is removed (on a full disk, it holds the space wanted)."""
    tmp = path.with_name(path.name + ".tmp")
    with storage.writing(path):
        try:
            with open(tmp, "w") as fh:
                fh.write(text)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
            raise


def open_run_dir(path: str, command: str = "--resume") -> Path:
    """The run directory ``command`` (``--resume``, ``tfgen complete``) names, or a ConfigError
    that says what ``path`` is instead (missing, a file, the folder of an experiment's runs, or
    the output folder)."""
    run_dir = Path(path)
    if (run_dir / CONFIG_NAME).is_file():
        return run_dir
    hint = f"{command} takes a run directory, <output_dir>/<name>/<timestamp>"
    if not run_dir.exists():
        raise ConfigError(path, None, f"does not exist; {hint}")
    if not run_dir.is_dir():
        raise ConfigError(path, None, f"is a file, not a run directory; {hint}")
    runs = sorted(p.name for p in run_dir.iterdir() if (p / CONFIG_NAME).is_file())
    if runs:
        shown = ", ".join(runs[-5:][::-1]) + (f" (newest 5 of {len(runs)})" if len(runs) > 5 else "")
        use = "resume one with" if command == "--resume" else "e.g."
        raise ConfigError(path, None, f"is a folder of runs, not a run directory; runs inside: "
                                      f"{shown}; {use} {command} {run_dir / runs[-1]}")
    names = sorted(p.parent.parent.name for p in run_dir.glob(f"*/*/{CONFIG_NAME}"))
    if names:
        raise ConfigError(path, None, f"is an output folder, not a run directory; experiments "
                                      f"inside: {', '.join(dict.fromkeys(names))}; {hint}")
    raise ConfigError(path, None, f"is not a run directory (it has no {CONFIG_NAME}); {hint}")
