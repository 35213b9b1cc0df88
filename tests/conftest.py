"""Shared fixtures: tiny data sets written in the formats a user would have, and a CLI runner."""
from __future__ import annotations

import gzip
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _forget_plugins_loaded_by_the_test():
    """run_cli runs the CLI in this process, so a --plugin or TFGEN_PLUGINS plugin a test loads
    would stay loaded, and every later run in the process would record it in its run.json.
    Each test unloads what it loaded; installed entry points, loaded once per process, stay."""
    from tfgen import plugins

    before = {p.name for p in plugins.loaded()}
    yield
    for plugin in plugins.loaded():
        if plugin.name not in before and plugin.source != "entry point":
            plugins.unload(plugin.name)


def write_idx(path: Path, array: np.ndarray) -> None:
    """IDX: magic 0 0 0x08 ndim, big-endian uint32 dims, raw uint8 data (gzip if *.gz)."""
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + array.astype(np.uint8).tobytes()
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wb") as fh:
        fh.write(data)


def blob_images(n: int, size: int = 28, channels: int = 1, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Procedurally drawn images: a bright disc whose position depends on the label."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 4, n)
    yy, xx = np.mgrid[:size, :size]
    images = np.zeros((n, size, size, channels), np.uint8)
    for i, label in enumerate(labels):
        cy = size * (0.3 + 0.4 * (label // 2)) + rng.normal(0, 1)
        cx = size * (0.3 + 0.4 * (label % 2)) + rng.normal(0, 1)
        disc = ((yy - cy) ** 2 + (xx - cx) ** 2) < (size * 0.18) ** 2
        for c in range(channels):
            images[i, ..., c] = disc * (255 if channels == 1 else 80 + 60 * ((label + c) % 3))
    return images, labels


@pytest.fixture(scope="session")
def idx_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("idx")
    for prefix, n, seed in [("train", 160, 0), ("t10k", 40, 1)]:
        images, labels = blob_images(n, seed=seed)
        write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", images[..., 0])
        write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", labels)
    return folder


def tiny_config(idx_folder: Path, out_dir: Path, extra: str = "", epochs: int = 2) -> str:
    return f"""
[experiment]
name = "tiny"
seed = 3
output_dir = "{out_dir}"

[data]
source = "idx"
path = "{idx_folder}"
train_split = "train[:128]"
val_split = "train[128:]"
test_split = "test"
binarize = "dynamic"

[model.prior]
dim = 2

[model.decoder]
name = "mlp"
hidden = [32]

[model.likelihood]
name = "bernoulli"

[inference]
scheme = "vae"

[inference.encoder]
name = "mlp"
hidden = [32]

[train]
epochs = {epochs}
batch_size = 32

[logging]
every_steps = 2
images_every_steps = 4
num_images = 8

[[evaluate]]
task = "elbo"

[[evaluate]]
task = "log_likelihood"
samples = 8
max_images = 16

[[evaluate]]
task = "reconstructions"
num_images = 8

[[evaluate]]
task = "samples"
num_images = 8

[[evaluate]]
task = "curves"
{extra}
"""


def learned(history: list[dict]) -> list[dict]:
    """A history without its wall times (``train_seconds``), which differ between two runs that
    learn exactly the same: what resume and reproducibility tests compare."""
    return [{k: v for k, v in record.items() if k != "train_seconds"} for record in history]


def build_in_memory(raw_config: dict, images: np.ndarray, pixel_range=(0.0, 1.0),
                    labels: np.ndarray | None = None):
    """A scheme on in-memory training images, built by the runner's own ``build``."""
    from tfgen.assemble import build, from_dict
    from tfgen.data import DataBundle

    cfg = from_dict(raw_config)
    data = DataBundle.in_memory(cfg.data, images, pixel_range, labels)
    _, scheme, _ = build(cfg, data)
    return scheme


def run_process(*args: str, cwd: Path | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """The real console script, in a fresh process."""
    return subprocess.run([sys.executable, "-m", "tfgen", *args], cwd=cwd or REPO,
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONPATH": str(REPO)})


class CliResult:
    def __init__(self, returncode: int, stdout: str, stderr: str):
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


def run_cli(*args: str) -> CliResult:
    """The real typer app, in this process (saves a TensorFlow import per call).

    Any exception other than the app's own exit is re-raised: the CLI must
    turn every user error into a message and an exit code.
    """
    from typer.testing import CliRunner

    from tfgen.cli import app

    result = CliRunner().invoke(app, list(args), catch_exceptions=True)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return CliResult(result.exit_code, result.stdout, result.stderr)


#: 2 steps of 32 images per epoch: a 2-epoch run has checkpoints ckpt-2 and ckpt-4
STEPS = ("--set", "train.steps_per_epoch=2")


@pytest.fixture(scope="module")
def finished(tmp_path_factory, idx_folder) -> Path:
    """A finished 2-epoch run of the tiny config (ckpt-2, ckpt-4), once per test module; tests
    work on copies of it (``run_dir``)."""
    out = tmp_path_factory.mktemp("finished")
    config = out / "tiny.toml"
    config.write_text(tiny_config(idx_folder, out, epochs=2))
    result = run_cli("run", str(config), "--quiet", *STEPS)
    assert result.returncode == 0, result.stderr
    [run] = (out / "tiny").iterdir()
    return run


@pytest.fixture
def run_dir(finished, tmp_path) -> Path:
    """A copy of ``finished``, this test's to change."""
    copy = tmp_path / "run"
    shutil.copytree(finished, copy)
    return copy


def resume(run_dir: Path, *sets: str) -> CliResult:
    """``tfgen run --resume RUN_DIR --quiet`` with ``--set`` each of ``sets``, in this process."""
    args = [arg for s in sets for arg in ("--set", s)]
    return run_cli("run", "--resume", str(run_dir), "--quiet", *args)


def tiny_residual_run(name: str, idx_folder: Path, out: Path) -> str:
    """The head of a tiny run's TOML on Kuntz et al.'s (2023) residual decoder (48 training
    images in [-1, 1], d = 3, a Normal likelihood): [experiment] to [model.likelihood]; the
    caller adds [inference] and the rest."""
    return f"""
[experiment]
name = "{name}"
seed = 5
output_dir = "{out}"

[data]
source = "idx"
path = "{idx_folder}"
train_split = "train[:48]"
val_split = ""
test_split = "test[:8]"
pixel_range = "[-1,1]"

[model.prior]
dim = 3

[model.decoder]
name = "residual_decoder"
channels = 4
projection_channels = 2
residual_layers = 1

[model.likelihood]
name = "normal"
sigma = 0.3
"""
