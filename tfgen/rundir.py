"""Run directories: ``<output_dir>/<name>/<timestamp>/``, never overwritten.

Each holds the resolved config (runnable as it is), the command line, the
seed, package versions and the git commit, next to checkpoints, TensorBoard
events, history, metrics and figures.
"""
from __future__ import annotations

import datetime as dt
import json
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from tfgen.config import Config, dumps_toml, to_dict

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
    """A new, empty directory; a clash gets a numeric suffix, nothing is overwritten."""
    parent = Path(cfg.experiment.output_dir) / cfg.experiment.name
    parent.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    for i in range(1000):
        path = parent / (stamp if i == 0 else f"{stamp}-{i}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise RuntimeError(f"cannot create a fresh run directory under {parent}")


def write_config(run_dir: Path, cfg: Config) -> None:
    header = (f"# Resolved config of this run (defaults filled, overrides applied).\n"
              f"# Source: {cfg.source_file}.  Run it again with: tfgen run {run_dir / CONFIG_NAME}\n")
    (run_dir / CONFIG_NAME).write_text(header + dumps_toml(to_dict(cfg)))


def write_run_info(run_dir: Path, cfg: Config, overrides: list[str], resumed: bool) -> None:
    path = run_dir / RUN_INFO
    info = json.loads(path.read_text()) if path.exists() else {}
    event = {"time": dt.datetime.now().isoformat(timespec="seconds"),
             "argv": sys.argv, "overrides": list(overrides), "resumed": resumed}
    if not info:
        info = {"created": event["time"], "source_config": cfg.source_file,
                "seed": cfg.experiment.seed, "versions": package_versions(), "git": git_commit(),
                "host": platform.node(), "sessions": []}
    else:
        info["versions_at_resume"] = package_versions()
    info["sessions"].append(event)
    path.write_text(json.dumps(info, indent=1))


def write_metrics(run_dir: Path, metrics: dict) -> None:
    tmp = run_dir / "metrics.json.tmp"
    tmp.write_text(json.dumps(metrics, indent=1, default=float))
    tmp.replace(run_dir / "metrics.json")
