"""One writer per run directory: `tfgen run`, `run --resume`, `eval` and `complete` hold the run's
lock (<run>/.lock, flock) from start to exit; a second writer is refused in one line naming the
holder, changing nothing; readers take nothing; a killed holder's lock is taken over."""
from __future__ import annotations

import hashlib
import json
import os
import platform
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, STEPS, run_cli, tiny_config

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="flock")

WRITERS = {  # a second writer of a run, as a user would start it
    "resume": lambda run: ("run", "--resume", str(run), "--quiet", "--set", "train.epochs=3"),
    "eval": lambda run: ("eval", str(run), "--task", "elbo"),
    "complete": lambda run: ("complete", str(run), "--num-images", "2", "--steps", "2"),
}
# a process holding a run's lock as tfgen does: flock, then who it is; "locked" once it holds it
HOLDER = """
import fcntl, json, os, platform, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
fcntl.flock(fd, fcntl.LOCK_EX)
os.ftruncate(fd, 0)
os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": platform.node(),
                          "command": "tfgen run --resume " + sys.argv[2],
                          "since": "2026-01-01T10:00:00"}).encode(), 0)
print("locked", flush=True)
time.sleep(600)
"""


def digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            if p.is_file() else "dir" for p in sorted(root.rglob("*"))}


@pytest.fixture
def held(run_dir):
    """``run_dir``'s lock held by another process (the process)."""
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(run_dir / ".lock"), str(run_dir)],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    yield proc
    proc.kill()
    proc.wait()


def refused_by(result, pid: int) -> str:
    assert result.returncode == 2, (result.returncode, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert f"is in use by PID {pid} on host {platform.node()} (" in lines[0], lines[0]
    return lines[0]


def test_a_finished_run_keeps_an_empty_lock_file(finished):
    assert (finished / ".lock").read_bytes() == b""


@pytest.mark.parametrize("writer", list(WRITERS))
def test_a_second_writer_is_refused_and_changes_nothing(run_dir, held, writer):
    before = digest(run_dir)
    line = refused_by(run_cli(*WRITERS[writer](run_dir)), held.pid)
    assert line == (f"error: {run_dir}: is in use by PID {held.pid} on host {platform.node()} "
                    f"(tfgen run --resume {run_dir}, since 2026-01-01T10:00:00); wait for it to "
                    f"end (or stop it) and try again; reading the run (TensorBoard, "
                    f"metrics.json) needs no lock")
    assert digest(run_dir) == before


def test_a_run_in_use_can_be_read(run_dir, held):
    result = run_cli("validate", str(run_dir / "config.toml"))
    assert result.returncode == 0, result.stderr
    assert json.loads((run_dir / "metrics.json").read_text())["status"] == "completed"


def test_a_stale_lock_is_taken_over(run_dir, held):
    """The holder killed (SIGKILL: it releases nothing itself): the kernel has released its
    flock, the file still names it; the next writer takes it over without a word."""
    held.kill()
    held.wait()
    assert json.loads((run_dir / ".lock").read_text())["pid"] == held.pid
    result = run_cli(*WRITERS["resume"](run_dir))
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert (run_dir / ".lock").read_bytes() == b""


def test_a_lock_left_by_another_host_is_taken_over_with_a_warning(run_dir):
    (run_dir / ".lock").write_text(json.dumps({"pid": 4321, "host": "node-17",
                                               "command": f"tfgen run --resume {run_dir}"}))
    result = run_cli(*WRITERS["eval"](run_dir))
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == (
        f"warning: {run_dir / '.lock'}: was not released by PID 4321 on host node-17 (tfgen run "
        f"--resume {run_dir}); taken over (on a file system whose locks do not reach across "
        f"hosts, make sure that process has ended)")


def test_a_run_directory_made_by_an_older_tfgen_gets_its_lock_file(run_dir):
    (run_dir / ".lock").unlink()
    assert run_cli(*WRITERS["eval"](run_dir)).returncode == 0
    assert (run_dir / ".lock").read_bytes() == b""


def test_two_real_tfgen_processes(tmp_path, idx_folder):
    """A real `tfgen run` holds its new run's lock while it trains: a resume, eval and complete
    of that run are refused with its PID; once it is killed, a resume takes the lock over."""
    out = tmp_path / "runs"
    config = tmp_path / "tiny.toml"
    config.write_text(tiny_config(idx_folder, out, epochs=500))
    proc = subprocess.Popen([sys.executable, "-m", "tfgen", "run", str(config), *STEPS,
                             "--set", 'data.val_split=""'], cwd=REPO, text=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        seen = []
        for line in proc.stderr:  # epoch 2 done: its checkpoint is written
            seen.append(line)
            if "epoch 2/500" in line:
                break
        else:
            raise AssertionError("".join(seen))
        [run_dir] = (out / "tiny").iterdir()
        holder = json.loads((run_dir / ".lock").read_text())
        assert holder["pid"] == proc.pid and holder["command"] == f"tfgen run {config}"
        for writer in WRITERS.values():
            line = refused_by(run_cli(*writer(run_dir)), proc.pid)
            assert f"(tfgen run {config}, since " in line
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)
    result = run_cli("run", "--resume", str(run_dir), "--quiet", "--set", "train.epochs=2")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert json.loads((run_dir / "metrics.json").read_text())["status"] == "completed"
