"""End-to-end ``tfgen run`` on tiny data: the run directory, checkpoints, TensorBoard events,
the resolved config, overrides, resume equivalence and NaN handling (stop signals: see
test_faults.py)."""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from conftest import learned, run_cli, tiny_config


def only_run_dir(out: Path) -> Path:
    runs = [p for p in (out / "tiny").iterdir() if p.is_dir()]
    assert len(runs) == 1, runs
    return runs[0]


def event_tags(run_dir: Path) -> dict[str, list]:
    from tensorboard.backend.event_processing import event_accumulator

    acc = event_accumulator.EventAccumulator(str(run_dir / "tensorboard"),
                                             size_guidance={event_accumulator.TENSORS: 0})
    acc.Reload()
    return acc.Tags()


@pytest.fixture(scope="module")
def two_epoch_run(tmp_path_factory, idx_folder):
    out = tmp_path_factory.mktemp("runs")
    config = out / "tiny.toml"
    config.write_text(tiny_config(idx_folder, out, epochs=2))
    result = run_cli("run", str(config), "--quiet", "--set", "train.steps_per_epoch=2")
    assert result.returncode == 0, result.stderr
    return out, only_run_dir(out)


def test_run_directory_contents(two_epoch_run):
    _, run_dir = two_epoch_run
    for name in ["config.toml", "run.json", "metrics.json", "history.json",
                 "figures/reconstructions_test.png", "figures/samples_prior.png",
                 "figures/elbo_curves.png", "checkpoints/checkpoint", "checkpoints/best/checkpoint"]:
        assert (run_dir / name).is_file(), name
    info = json.loads((run_dir / "run.json").read_text())
    assert info["seed"] == 3
    assert info["versions"]["tensorflow"].startswith("2.")
    assert "commit" in info["git"] and info["sessions"][0]["overrides"] == ["train.steps_per_epoch=2"]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "completed"
    assert metrics["train"]["steps"] == 4 and metrics["train"]["epochs_completed"] == 2
    for key in ["test_elbo", "test_reconstruction", "test_kl", "test_log_likelihood"]:
        assert np.isfinite(metrics["evaluation"][key]), key
    # the importance-weighted estimate is a tighter bound than the ELBO (on average)
    assert metrics["evaluation"]["test_log_likelihood"] > metrics["evaluation"]["test_elbo"] - 1.0
    png = tf.io.decode_png(tf.io.read_file(str(run_dir / "figures/samples_prior.png")))
    assert png.shape[0] > 28 and png.shape[-1] == 1


def test_checkpoint_holds_the_training_state(two_epoch_run):
    _, run_dir = two_epoch_run
    latest = tf.train.latest_checkpoint(str(run_dir / "checkpoints"))
    assert latest.endswith("ckpt-4")
    names = [name for name, _ in tf.train.list_variables(latest)]
    for part in ["model/decoder", "encoder/", "optimizer/", "generator/", "step/"]:
        assert any(part in n for n in names), part


def test_tensorboard_events(two_epoch_run):
    _, run_dir = two_epoch_run
    tags = event_tags(run_dir)
    scalars = set(tags["tensors"]) | set(tags["scalars"])
    for tag in ["train/loss", "train/elbo", "train/reconstruction", "train/kl", "train/learning_rate",
                "train/images_per_second", "epoch_val/elbo", "eval/test_elbo"]:
        assert tag in scalars, (tag, sorted(scalars))
    assert any(t.startswith("images/reconstructions") for t in scalars)
    assert any(t.startswith("images/samples") for t in scalars)
    assert "_hparams_/session_start_info" in scalars
    for tag in ["final/best_val_loss", "final/epochs_completed", "final/images_per_second"]:
        assert tag in scalars, (tag, sorted(scalars))


def test_hparams_hold_the_flattened_config(two_epoch_run):
    """The HParams dashboard's session: every scalar key of the resolved config, flattened."""
    from tensorboard.plugins.hparams import metadata

    _, run_dir = two_epoch_run
    found = {}
    for path in sorted((run_dir / "tensorboard").glob("events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            for value in event.summary.value:
                if value.tag == metadata.SESSION_START_INFO_TAG:
                    data = metadata.parse_session_start_info_plugin_data(
                        value.metadata.plugin_data.content)
                    found = {k: v for k, v in data.hparams.items()}
    assert found, "no HParams session in the run's events"
    assert found["train.batch_size"].number_value == 32
    assert found["inference.scheme"].string_value == "vae"
    assert found["model.prior.dim"].number_value > 0


def test_resolved_config_runs_again_into_a_new_directory(two_epoch_run):
    out, run_dir = two_epoch_run
    resolved = run_dir / "config.toml"
    text = resolved.read_text()
    assert "steps_per_epoch = 2" in text  # the override is in the resolved config
    result = run_cli("run", str(resolved), "--quiet")
    assert result.returncode == 0, result.stderr
    runs = sorted(p for p in (out / "tiny").iterdir() if p.is_dir())
    assert len(runs) == 2  # never overwritten
    first = json.loads((runs[0] / "metrics.json").read_text())
    second = json.loads((runs[1] / "metrics.json").read_text())
    # same seed, same config: the same numbers
    assert learned(first["history"]) == learned(second["history"])
    assert first["evaluation"]["test_elbo"] == pytest.approx(second["evaluation"]["test_elbo"], rel=1e-6)


def test_resume_gives_the_same_metrics_as_an_uninterrupted_run(tmp_path, idx_folder):
    straight, pieces = tmp_path / "straight", tmp_path / "pieces"
    for out, epochs in [(straight, 3), (pieces, 1)]:
        config = tmp_path / f"{out.name}.toml"
        config.write_text(tiny_config(idx_folder, out, epochs=epochs))
        assert run_cli("run", str(config), "--quiet").returncode == 0
    run_dir = only_run_dir(pieces)
    result = run_cli("run", "--resume", str(run_dir), "--quiet", "--set", "train.epochs=3")
    assert result.returncode == 0, result.stderr
    a = json.loads((only_run_dir(straight) / "metrics.json").read_text())
    b = json.loads((run_dir / "metrics.json").read_text())
    assert len(a["history"]) == len(b["history"]) == 3
    for ha, hb in zip(learned(a["history"]), learned(b["history"])):
        for key in ha:
            assert ha[key] == pytest.approx(hb[key], rel=1e-5, abs=1e-5), key
    for key in ["test_elbo", "test_log_likelihood"]:
        assert a["evaluation"][key] == pytest.approx(b["evaluation"][key], rel=1e-5)
    assert len(json.loads((run_dir / "run.json").read_text())["sessions"]) == 2


def test_steps_per_execution_trains_the_same_steps(tmp_path, idx_folder):
    """3 steps per host round trip (an epoch of 4 steps: calls of 3 and 1): the same batches,
    noise and updates as one step per call, so the same history and test ELBO; the epoch
    means are summed in another order (float64)."""
    config = tmp_path / "tiny.toml"
    config.write_text(tiny_config(idx_folder, tmp_path / "runs", epochs=2))
    got = []
    for per_call in (1, 3):
        out = tmp_path / f"runs{per_call}"
        result = run_cli("run", str(config), "--quiet", "--set", f"experiment.output_dir={str(out)!r}",
                         "--set", f"train.steps_per_execution={per_call}")
        assert result.returncode == 0, result.stderr
        got.append(json.loads((only_run_dir(out) / "metrics.json").read_text()))
    one, three = got
    assert [h["step"] for h in one["history"]] == [h["step"] for h in three["history"]] == [4, 8]
    for a, b in zip(learned(one["history"]), learned(three["history"])):
        assert a.keys() == b.keys()
        for key in a:
            assert a[key] == pytest.approx(b[key], rel=1e-9, abs=1e-9), key
    assert one["evaluation"]["test_elbo"] == pytest.approx(three["evaluation"]["test_elbo"], rel=1e-9)


def test_nan_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(tmp_path, idx_folder):
    out = tmp_path / "runs"
    config = tmp_path / "nan.toml"
    text = tiny_config(idx_folder, out, epochs=3)
    text = text.replace('name = "bernoulli"', 'name = "normal"')
    config.write_text(text)
    # a healthy epoch, then a learning rate that blows the weights (and the squared error) up
    assert run_cli("run", str(config), "--quiet", "--set", "train.epochs=1").returncode == 0
    run_dir = only_run_dir(out)
    good = tf.train.latest_checkpoint(str(run_dir / "checkpoints"))
    result = run_cli("run", "--resume", str(run_dir), "--quiet", "--set", "train.epochs=3",
                     "--set", "train.learning_rate=1e30")
    assert result.returncode == 3, result.stderr
    assert "Traceback" not in result.stderr
    assert "at step" in result.stderr and "diverged" in result.stderr
    assert tf.train.latest_checkpoint(str(run_dir / "checkpoints")) == good
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"].startswith("failed: training diverged")
    # with 3 steps per call the divergence is found on the device at the same step
    step = re.search(r"at step (\d+)", result.stderr).group(1)
    again = tmp_path / "again"
    shutil.copytree(run_dir, again)
    result = run_cli("run", "--resume", str(again), "--quiet", "--set", "train.epochs=3",
                     "--set", "train.learning_rate=1e30", "--set", "train.steps_per_execution=3")
    assert result.returncode == 3, result.stderr
    assert f"at step {step} " in result.stderr, (step, result.stderr)


def test_resume_with_an_incompatible_change_is_a_clear_error(two_epoch_run):
    _, run_dir = two_epoch_run
    result = run_cli("run", "--resume", str(run_dir), "--quiet", "--set", "train.optimizer=\"sgd\"",
                     "--set", "train.epochs=3")
    assert result.returncode == 2
    assert "does not fit the config" in result.stderr


def test_early_stopping_stops_and_keeps_the_best_epoch(tmp_path, idx_folder):
    out = tmp_path / "runs"
    config = tmp_path / "es.toml"
    # with min_delta far above any change, only the first epoch counts as an improvement
    config.write_text(tiny_config(idx_folder, out, epochs=10,
                                  extra="").replace("[train]\n", "[train.early_stopping]\npatience = 2\n"
                                                    "min_delta = 1e6\n\n[train]\n", 1))
    result = run_cli("run", str(config), "--quiet")
    assert result.returncode == 0, result.stderr
    run_dir = only_run_dir(out)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    train = metrics["train"]
    assert train["stopped_early"] is True
    assert train["epochs_completed"] == 3 and train["best_epoch"] == 1
    assert tf.train.latest_checkpoint(str(run_dir / "checkpoints" / "best")).endswith("ckpt-1")
