"""``train.time_budget_s``: a stopping rule on training's wall time, summed over sessions.

A budget far below one step's time stops training after the first executor call, mid-epoch,
with a checkpoint that keeps the epoch's running sums; the run is then evaluated.  Resumed
with the budget spent, it trains no further; resumed without a budget it continues exactly as
an uninterrupted run (the same history, the wall times aside).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import REPO, learned, run_cli, tiny_config

#: 2 steps of 32 images per epoch, 2 epochs
STEPS = ("--set", "train.steps_per_epoch=2")


def metrics(run_dir):
    return json.loads((run_dir / "metrics.json").read_text())


def only_run(out):
    [run] = (out / "tiny").iterdir()
    return run


@pytest.fixture(scope="module")
def straight(tmp_path_factory, idx_folder):
    """The tiny config trained without a budget: what a budget-stopped run resumes to."""
    out = tmp_path_factory.mktemp("straight")
    config = out / "tiny.toml"
    config.write_text(tiny_config(idx_folder, out, epochs=2))
    assert run_cli("run", str(config), "--quiet", *STEPS).returncode == 0
    return metrics(only_run(out))


def test_a_spent_budget_stops_mid_epoch_checkpoints_evaluates_and_resumes_exactly(
        tmp_path, idx_folder, straight):
    out = tmp_path / "runs"
    config = tmp_path / "tiny.toml"
    config.write_text(tiny_config(idx_folder, out, epochs=2))
    result = run_cli("run", str(config), *STEPS, "--set", "train.time_budget_s=1e-6")
    assert result.returncode == 0, result.stderr
    assert "time budget: training stopped at step 1, epoch 1 at image 32 of 64" in result.stderr
    run_dir = only_run(out)
    got = metrics(run_dir)
    assert got["status"] == "completed"
    assert got["train"]["stopped_by_time_budget"] is True
    assert got["train"]["steps"] == 1 and got["train"]["epochs_completed"] == 0
    assert got["train"]["train_seconds"] > 0
    assert "test_elbo" in got["evaluation"]  # evaluated, as after early stopping
    assert (run_dir / "checkpoints" / "ckpt-1.index").exists()

    # the budget is spent: a resume trains nothing more (and evaluates again)
    again = run_cli("run", "--resume", str(run_dir), "--quiet")
    assert again.returncode == 0, again.stderr
    assert metrics(run_dir)["train"]["steps"] == 1
    assert metrics(run_dir)["train"]["stopped_by_time_budget"] is True

    # without a budget, it goes on from image 32 of epoch 1: an uninterrupted run's history
    resumed = run_cli("run", "--resume", str(run_dir), "--quiet", "--set", "train.time_budget_s=0")
    assert resumed.returncode == 0, resumed.stderr
    got = metrics(run_dir)
    assert got["train"]["steps"] == 4 and got["train"]["stopped_by_time_budget"] is False
    assert [h["epoch"] for h in got["history"]] == [1, 2]
    for a, b in zip(learned(got["history"]), learned(straight["history"])):
        assert a.keys() == b.keys()
        for key in a:
            assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-5), key
    assert got["evaluation"]["test_elbo"] == pytest.approx(straight["evaluation"]["test_elbo"],
                                                           rel=1e-5)


def test_history_records_cumulative_training_seconds_across_sessions(tmp_path, idx_folder):
    """Each epoch record carries the training wall time so far; a session stopped by a signal
    mid-epoch saves its seconds, and the resumed session counts on from them (so a budget
    honours the remainder)."""
    out = tmp_path / "runs"
    config = tmp_path / "tiny.toml"
    config.write_text(tiny_config(idx_folder, out, epochs=2))
    env = {**os.environ, "PYTHONPATH": str(REPO), "TFGEN_TEST_SIGNAL": "3:SIGTERM"}
    proc = subprocess.run([sys.executable, "-m", "tfgen", "run", str(config), "--quiet",
                           *STEPS], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 143, proc.stderr[-2000:]
    run_dir = only_run(out)
    [first] = metrics(run_dir)["history"]
    assert first["train_seconds"] > 0
    import tensorflow as tf
    reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(str(run_dir / "checkpoints")))
    partial = json.loads(reader.get_tensor("partial_epoch/.ATTRIBUTES/VARIABLE_VALUE").decode())
    saved = partial["seconds"]
    assert saved >= first["train_seconds"]
    # a budget below what the first session used: nothing more is trained
    result = run_cli("run", "--resume", str(run_dir), "--quiet",
                     "--set", f"train.time_budget_s={saved * 0.999}")
    assert result.returncode == 0, result.stderr
    assert metrics(run_dir)["train"]["steps"] == 3
    result = run_cli("run", "--resume", str(run_dir), "--quiet", "--set", "train.time_budget_s=0")
    assert result.returncode == 0, result.stderr
    history = metrics(run_dir)["history"]
    assert [h["epoch"] for h in history] == [1, 2]
    assert history[1]["train_seconds"] > saved  # counted on from the first session's seconds
