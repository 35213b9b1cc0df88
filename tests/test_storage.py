"""The file system failing under a run (a full disk, a quota, a read-only or failing disk, a run
directory deleted while the run is going): one line naming the path and the cause, never a
memory diagnosis; the newest intact checkpoint stays intact and the run resumes once the file
system is fixed.

Failures are injected at each write site (checkpoint, history.json, metrics.json, figures,
TensorBoard) as the OS or TensorFlow raises them; one test fills a real (tmpfs) file system,
where mounting one is allowed.
"""
from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import tensorflow as tf

from conftest import resume, run_cli

WORDS = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded",
         errno.EROFS: "read-only file system", errno.EIO: "input/output error"}
# TensorFlow's status for each (tsl's ErrnoToCode)
TF_ERRORS = {errno.ENOSPC: tf.errors.ResourceExhaustedError,
             errno.EDQUOT: tf.errors.ResourceExhaustedError,
             errno.EROFS: tf.errors.FailedPreconditionError, errno.EIO: tf.errors.UnknownError}


def tf_error(number: int, path: str, op: str) -> tf.errors.OpError:
    """The error TensorFlow raises when the OS refuses to write ``path`` (its message's form,
    as seen on a full tmpfs)."""
    return TF_ERRORS[number](None, None, f"{{{{function_node __wrapped__{op}_device_/job:"
                                         f"localhost/replica:0/task:0/device:CPU:0}}}} {path}; "
                                         f"{os.strerror(number)} [Op:{op}]")


def os_error(number: int, path=None) -> OSError:
    if path is None:  # as os.fsync raises it
        return OSError(number, os.strerror(number))
    return OSError(number, os.strerror(number), str(path))


def one_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    assert "Traceback" not in stderr
    return lines[0]


def assert_intact(run_dir: Path, newest: str) -> None:
    """The state file names ``newest``, every tensor of it reads back, and no failed save or
    write left anything behind."""
    ckpt = run_dir / "checkpoints"
    latest = tf.train.latest_checkpoint(str(ckpt))
    assert latest == str(ckpt / newest), latest
    reader = tf.train.load_checkpoint(latest)
    for key in reader.get_variable_to_shape_map():
        reader.get_tensor(key)
    assert not (ckpt / ".saving").exists()
    assert not list(run_dir.rglob("*.tmp"))
    named = tf.train.get_checkpoint_state(str(ckpt)).all_model_checkpoint_paths
    assert sorted(p.name for p in ckpt.glob("ckpt-*.index")) == \
        sorted(f"{os.path.basename(name)}.index" for name in named)


def resumes_to_the_end(run_dir: Path, epochs: int = 3) -> None:
    result = resume(run_dir, f"train.epochs={epochs}")
    assert result.returncode == 0, result.stderr
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "completed"
    assert [h["epoch"] for h in metrics["history"]] == list(range(1, epochs + 1))


# --------------------------------------------------------------------------- classification

def test_a_full_disk_is_not_told_as_memory():
    from tfgen.runner import describe_tf_error

    disk = describe_tf_error(tf_error(errno.ENOSPC, "/r/checkpoints/.saving/ckpt-4_temp/part",
                                      "SaveV2"))
    assert disk.startswith("the file system failed: no space left on device")
    assert "memory" not in disk and "batch_size" not in disk
    memory = describe_tf_error(tf.errors.ResourceExhaustedError(
        None, None, "Graph execution error:\n\nOOM when allocating tensor with shape[100000,64] "
                    "and type float on /job:localhost/replica:0/task:0/device:CPU:0 by "
                    "allocator cpu\n\t [[{{node conv2d}}]]"))
    assert memory.startswith("TensorFlow ran out of memory") and "shape[100000,64]" in memory
    other = describe_tf_error(tf.errors.ResourceExhaustedError(None, None, "queue is full"))
    assert "memory" not in other and other.startswith("TensorFlow failed")


@pytest.mark.parametrize("number", list(WORDS), ids=[errno.errorcode[n] for n in WORDS])
def test_one_classification_for_os_and_tensorflow_errors(number):
    from tfgen import storage

    assert storage.cause(os_error(number, "/x")) == WORDS[number]
    assert storage.cause(tf_error(number, "/x", "WriteFile")) == WORDS[number]
    found = storage.failure(tf_error(number, "/r/figures/a.png", "WriteFile"), run_dir="/")
    assert str(found) == f"/r/figures/a.png: cannot write: {WORDS[number]}"
    found = storage.failure(os_error(number, "/r/x.tmp"), "/r/x")
    assert str(found) == f"/r/x: cannot write: {WORDS[number]}"
    assert storage.cause(os_error(errno.ENOENT, "/x")) is None
    assert storage.cause(ValueError(os.strerror(number))) is None


# --------------------------------------------------------------------------- each write site

def _fail_fsync_of(monkeypatch, name: str, number: int) -> None:
    """os.fsync of the temporary file of ``name`` (atomic_write's) fails with ``number``."""
    fsync = os.fsync

    def failing(fd):
        if os.readlink(f"/proc/self/fd/{fd}").endswith(f"/{name}.tmp"):
            raise os_error(number)
        return fsync(fd)

    monkeypatch.setattr(os, "fsync", failing)


@pytest.mark.parametrize("number", list(WORDS), ids=[errno.errorcode[n] for n in WORDS])
def test_a_checkpoint_that_cannot_be_written(run_dir, monkeypatch, number):
    """TensorFlow's SaveV2 fails half-way through ckpt-6 (a partial file is written): the one
    line names the checkpoint and the cause, the partial files are gone, the state file still
    names the intact ckpt-4, and the run resumes once the disk is fixed."""
    write = tf.train.Checkpoint.write

    def failing(self, prefix, *args, **kwargs):
        if "ckpt-6" in prefix:
            part = f"{prefix}_temp/part-00000-of-00001.data-00000-of-00001.tempstate1"
            os.makedirs(os.path.dirname(part))
            Path(part).write_bytes(b"half a checkpoint")
            raise tf_error(number, part, "SaveV2")
        return write(self, prefix, *args, **kwargs)

    monkeypatch.setattr(tf.train.Checkpoint, "write", failing)
    result = resume(run_dir, "train.epochs=3")
    assert result.returncode == 4, result.stderr
    line = one_line(result.stderr)
    assert line.startswith(f"error: {run_dir}/checkpoints/ckpt-6: cannot write: {WORDS[number]}; the newest "
                           f"checkpoint is {run_dir}/checkpoints/ckpt-4; continue with: tfgen "
                           f"run --resume {run_dir} once "), line
    assert "memory" not in line
    assert_intact(run_dir, "ckpt-4")
    assert not list((run_dir / "checkpoints").glob("ckpt-6*"))
    monkeypatch.undo()
    resumes_to_the_end(run_dir)


@pytest.mark.parametrize("name,number", [("history.json", errno.EDQUOT),
                                         ("metrics.json", errno.ENOSPC),
                                         ("run.json", errno.EROFS)])
def test_a_json_file_that_cannot_be_written(run_dir, monkeypatch, name, number):
    """history.json (after ckpt-6 is saved), metrics.json (at the end) and run.json (at the
    start): the old file stays as it was, its temporary file is removed."""
    before = (run_dir / name).read_bytes()
    _fail_fsync_of(monkeypatch, name, number)
    result = resume(run_dir, "train.epochs=3")
    assert result.returncode == 4, result.stderr
    line = one_line(result.stderr)
    newest = "ckpt-4" if name == "run.json" else "ckpt-6"
    assert line.startswith(f"error: {run_dir / name}: cannot write: {WORDS[number]}; the newest "
                           f"checkpoint is {run_dir}/checkpoints/{newest}; continue with: tfgen "
                           f"run --resume {run_dir} once "), line
    assert (run_dir / name).read_bytes() == before
    assert_intact(run_dir, newest)
    monkeypatch.undo()
    resumes_to_the_end(run_dir)


def test_a_figure_that_cannot_be_written(run_dir, monkeypatch):
    """An I/O error while the reconstructions figure is written: its half-written file is
    removed, the one line names it."""
    write_file = tf.io.write_file

    def failing(filename, contents, name=None):
        if str(filename).endswith(".png"):
            Path(filename).write_bytes(b"\x89PNG half")
            raise tf_error(errno.EIO, filename, "WriteFile")
        return write_file(filename, contents, name)

    monkeypatch.setattr(tf.io, "write_file", failing)
    result = resume(run_dir)
    assert result.returncode == 4, result.stderr
    figure = run_dir / "figures" / "reconstructions_test.png"
    line = one_line(result.stderr)
    assert line.startswith(f"error: {figure}: cannot write: input/output error; "), line
    assert not figure.exists()
    assert json.loads((run_dir / "metrics.json").read_text())["status"].startswith(
        f"failed: {figure}: cannot write")
    assert_intact(run_dir, "ckpt-4")
    monkeypatch.undo()
    resumes_to_the_end(run_dir, epochs=2)
    assert figure.exists()


def test_a_curve_plot_that_cannot_be_written(run_dir, monkeypatch):
    from matplotlib.figure import Figure

    def failing(self, path, *args, **kwargs):
        raise os_error(errno.ENOSPC, path)

    monkeypatch.setattr(Figure, "savefig", failing)
    result = resume(run_dir)
    assert result.returncode == 4, result.stderr
    assert one_line(result.stderr).startswith(
        f"error: {run_dir / 'figures'}/elbo_curves.png: cannot write: no space left on device")


@pytest.mark.parametrize("where", ["creating", "flushing"])
def test_tensorboard_that_cannot_be_written(run_dir, monkeypatch, where):
    """TensorFlow's summary writer fails when it is created (its first event cannot be
    written) or when it is flushed at the end."""
    import tfgen.runner

    events = f"{run_dir}/tensorboard/events.out.tfevents.1.host.2.0.v2"
    create = tf.summary.create_file_writer

    class Failing:
        def __init__(self, writer):
            self.writer = writer

        def as_default(self):
            return self.writer.as_default()

        def flush(self):
            raise tf_error(errno.ENOSPC, events, "FlushSummaryWriter")

    def failing(logdir, *args, **kwargs):
        if where == "creating":
            raise tf_error(errno.ENOSPC, events, "CreateSummaryFileWriter")
        return Failing(create(logdir, *args, **kwargs))

    monkeypatch.setattr(tfgen.runner.tf.summary, "create_file_writer", failing)
    result = resume(run_dir, "train.epochs=3")
    assert result.returncode == 4, result.stderr
    newest = "ckpt-4" if where == "creating" else "ckpt-6"
    assert one_line(result.stderr).startswith(
        f"error: {events}: cannot write: no space left on device; the newest checkpoint is "
        f"{run_dir}/checkpoints/{newest}; "), result.stderr
    assert_intact(run_dir, newest)


def test_tfgen_eval_on_a_full_disk(run_dir, monkeypatch):
    _fail_fsync_of(monkeypatch, "metrics.json", errno.ENOSPC)
    before = (run_dir / "metrics.json").read_bytes()
    result = run_cli("eval", str(run_dir), "--task", "elbo")
    assert result.returncode == 4, result.stderr
    assert one_line(result.stderr) == (
        f"error: {run_dir / 'metrics.json'}: cannot write: no space left on device; the tasks "
        f"finished before it are in {run_dir / 'metrics.json'}; run tfgen eval again once the "
        f"disk has free space")
    assert (run_dir / "metrics.json").read_bytes() == before


# --------------------------------------------------------------------------- a deleted run

def test_a_run_directory_deleted_while_the_run_is_going(run_dir, monkeypatch):
    """Deleted after epoch 3's history record: the next write (a checkpoint) says so, and
    nothing makes the directory again."""
    from tfgen.training.callbacks import Summaries

    log_epoch = Summaries.on_epoch_end

    def deleting(self, epoch, record):
        log_epoch(self, epoch, record)
        if record["epoch"] == 3:
            shutil.rmtree(self.state.run_dir)

    monkeypatch.setattr(Summaries, "on_epoch_end", deleting)
    result = resume(run_dir, "train.epochs=4")
    assert result.returncode == 4, result.stderr
    assert one_line(result.stderr) == (f"error: {run_dir}: cannot write: the run directory was "
                                       f"deleted")
    assert not run_dir.exists()


# --------------------------------------------------------------------------- a real full disk

@pytest.fixture
def small_tmpfs(tmp_path):
    """A 4 MB tmpfs (skipped where mounting is not allowed)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)],
                          capture_output=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {made.stderr.decode(errors='replace').strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_real_full_disk_in_a_checkpoint_save(small_tmpfs, finished):
    """The finished run copied to a tmpfs filled up to 64 kB: config.toml and run.json are
    still written, the checkpoint of epoch 3 (about 0.6 MB) is not. The line says so, ckpt-4
    stays intact, and with the filler removed the run resumes to its end."""
    run_dir = small_tmpfs / "run"
    shutil.copytree(finished, run_dir)
    stat = os.statvfs(small_tmpfs)
    filler = small_tmpfs / "filler"
    filler.write_bytes(b"\0" * (stat.f_bavail * stat.f_frsize - 64 * 1024))
    result = resume(run_dir, "train.epochs=3", "train.early_stopping.min_delta=1e9")
    assert result.returncode == 4, result.stderr
    line = one_line(result.stderr)
    assert line.startswith(f"error: {run_dir}/checkpoints/"), line
    assert (f": cannot write: no space left on device; the newest checkpoint is "
            f"{run_dir}/checkpoints/ckpt-4; continue with: tfgen run --resume {run_dir} once the "
            f"disk has free space") in line
    assert_intact(run_dir, "ckpt-4")
    filler.unlink()
    resumes_to_the_end(run_dir)
