"""PGA's step-size schedule (``inference.step_size_schedule``, Welling & Teh 2011): h_k against
the formula and its floor, one compiled step with h_k against a hand-computed Langevin move and
against a constant-step scheme at h = h_k, the constant default's arithmetic, an exact resume in
the middle of the schedule, and one-line errors with key paths."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from conftest import learned, run_cli
from test_pga import make_pga, normal_langevin_expected, replayed_noise
from tfgen.assemble import from_dict
from tfgen.errors import ConfigError
from tfgen.inference.step_sizes import StepSizeSchedule

H0, TAU, GAMMA = 0.02, 5, 0.5


def polynomial(**keys) -> dict:
    return {"kind": "polynomial", "initial": H0, "decay_steps": TAU, "power": GAMMA, **keys}


# --------------------------------------------------------------------------- (a) h_k

def test_polynomial_step_size_follows_the_formula_above_its_floor():
    schedule = StepSizeSchedule(**polynomial())
    for k in (0, TAU, 3 * TAU):  # h_0, h_0 2^-gamma, h_0 4^-gamma
        expected = H0 * (1 + k / TAU) ** -GAMMA
        assert float(schedule.step_size(1e-4, k)) == pytest.approx(expected, rel=1e-12)
    assert float(schedule.step_size(1e-4, 3 * TAU)) == pytest.approx(H0 / 2, rel=1e-12)
    # the floor h: reached at (1 + k / tau)^gamma = h_0 / h, i.e. k = 15 tau for h = h_0 / 4
    floor = H0 / 4
    ks = tf.constant([0, 3 * TAU, 15 * TAU, 16 * TAU, 10**6], tf.int64)
    values = schedule.step_size(floor, ks).numpy()
    np.testing.assert_allclose(values[:3], [H0, H0 / 2, floor], rtol=1e-12)
    assert values[3] == values[4] == floor
    assert float(StepSizeSchedule().step_size(3e-4, 10**6)) == 3e-4  # constant: h


# --------------------------------------------------------------------------- (b) one step

@pytest.mark.parametrize("mode", ["all", "batch"])
def test_a_scheduled_step_is_the_langevin_move_and_rmsprop_step_at_h_k(mode):
    """At step k = tau, the scheduled scheme moves the particles with h_k (hand-computed) and
    equals, bit for bit, a constant-step scheme with step_size = h_k: cloud and theta."""
    M, D, d, k = 6, 4, 2, TAU
    images = np.random.default_rng(7).normal(size=(M, 1, D, 1)).astype(np.float32)
    h_k = H0 * (1 + k / TAU) ** -GAMMA
    common = {"particles": 3, "chunk_size": 4, "particle_update": mode, "theta_scale": 0.01}
    scheduled = make_pga(images, d, {**common, "step_size": 1e-4,
                                     "step_size_schedule": polynomial()}, batch_size=3)
    assert float(scheduled.step_size_at(k)) == pytest.approx(h_k, rel=1e-12)
    constant = make_pga(images, d, {**common, "step_size": float(scheduled.step_size_at(k))},
                        batch_size=3)
    for scheme in (scheduled, constant):
        scheme.theta_optimizer.iterations.assign(k)
    idx = np.array([4, 0, 2])
    if mode == "all":
        expected = normal_langevin_expected(scheduled, images, h_k, replayed_noise(scheduled))
    for scheme in (scheduled, constant):
        scheme.standalone_step(tf.constant(images[idx]), tf.constant(idx, tf.int64))
    if mode == "all":
        np.testing.assert_allclose(scheduled.particle_cloud.numpy(), expected, rtol=1e-4,
                                   atol=1e-5)
    np.testing.assert_array_equal(scheduled.particle_cloud.numpy(), constant.particle_cloud.numpy())
    for a, b in zip(scheduled.model.theta, constant.model.theta):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.name)
    # theta's rate h_k M lambda, reported as the latest step's
    assert scheduled.learning_rate() == pytest.approx(h_k * M * 0.01, rel=1e-12)
    assert scheduled.theta_optimizer.learning_rate.numpy() == np.float32(h_k * M * 0.01)
    assert int(scheduled.theta_optimizer.iterations.numpy()) == k + 1


# --------------------------------------------------------------------------- (c) the default

def test_the_default_is_constant_and_a_schedule_at_its_floor_trains_as_it():
    """The default table is kind 'constant' (the float h, as before the schedule existed); a
    polynomial schedule starting at its floor (h_k = h for every k) goes through the tensor
    path and must give the same numbers, step after step."""
    M, D, d, h = 8, 4, 2, 0.01
    images = np.random.default_rng(9).normal(size=(M, 1, D, 1)).astype(np.float32)
    common = {"particles": 2, "chunk_size": 3, "step_size": h, "theta_scale": 0.01}
    default = make_pga(images, d, common)
    assert default.params.step_size_schedule == StepSizeSchedule()
    assert not default.scheduled and default.step_size_now() == h
    floored = make_pga(images, d, {**common, "step_size_schedule": polynomial(initial=h)})
    assert floored.scheduled
    for start in (0, 4):
        idx = np.arange(start, start + 4)
        for scheme in (default, floored):
            scheme.standalone_step(tf.constant(images[idx]), tf.constant(idx, tf.int64))
    np.testing.assert_array_equal(default.particle_cloud.numpy(), floored.particle_cloud.numpy())
    for a, b in zip(default.model.theta, floored.model.theta):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.name)
    assert default.learning_rate() == floored.learning_rate() == pytest.approx(h * M * 0.01)


# --------------------------------------------------------------------------- (d) resume

def scheduled_config(idx_folder: Path, out: Path, epochs: int, initial: float = 1e-2) -> str:
    """A tiny PGA run (48 images, an MLP decoder, h = 1e-3, 2 steps an epoch, nothing
    evaluated) with h_k = 1e-2 / (1 + k / 2): every one of its 4 steps is above the floor."""
    return f"""
evaluate = []

[experiment]
name = "tiny_pga"
seed = 5
output_dir = "{out}"

[data]
source = "idx"
path = "{idx_folder}"
train_split = "train[:48]"
val_split = ""
test_split = ""
binarize = "static"

[model.prior]
dim = 2

[model.decoder]
name = "mlp"
hidden = [16]

[inference]
scheme = "pga"
particles = 2
step_size = 1e-3
theta_scale = 1e-2
chunk_size = 20

[inference.step_size_schedule]
kind = "polynomial"
initial = {initial}
decay_steps = 2
power = 1.0

[train]
epochs = {epochs}
batch_size = 16
steps_per_epoch = 2

[logging]
every_steps = 1
images_every_steps = 1000
"""


def test_resume_in_the_middle_of_the_schedule_equals_the_uninterrupted_run(tmp_path, idx_folder):
    straight, pieces = tmp_path / "straight", tmp_path / "pieces"
    for out, epochs in [(straight, 2), (pieces, 1)]:
        config = tmp_path / f"{out.name}.toml"
        config.write_text(scheduled_config(idx_folder, out, epochs))
        result = run_cli("run", str(config), "--quiet")
        assert result.returncode == 0, result.stderr
    run_dir = next((pieces / "tiny_pga").iterdir())
    assert run_cli("run", "--resume", str(run_dir), "--quiet", "--set",
                   "train.epochs=2").returncode == 0
    straight_dir = next((straight / "tiny_pga").iterdir())

    a, b = (tf.train.latest_checkpoint(str(d / "checkpoints")) for d in (straight_dir, run_dir))
    names = [n for n, _ in tf.train.list_variables(a)]
    assert names == [n for n, _ in tf.train.list_variables(b)]
    for name in names:
        if name.startswith(("latents/", "model/", "theta_optimizer/", "step/")):
            np.testing.assert_array_equal(tf.train.load_variable(a, name),
                                          tf.train.load_variable(b, name), err_msg=name)
    assert (learned(json.loads((straight_dir / "history.json").read_text()))
            == learned(json.loads((run_dir / "history.json").read_text())))
    # the schedule's k, theta's RMSprop step counter, is the run's step
    value = lambda name: tf.train.load_variable(a, f"{name}/.ATTRIBUTES/VARIABLE_VALUE")
    assert value("theta_optimizer/_iterations") == value("step") == 4
    # train/learning_rate: h_3 M lambda = 1e-2 / 2.5 * 48 * 1e-2 after the 4th step
    from tensorboard.backend.event_processing import event_accumulator

    acc = event_accumulator.EventAccumulator(str(straight_dir / "tensorboard"),
                                             size_guidance={event_accumulator.TENSORS: 0})
    acc.Reload()
    rates = {e.step: float(tf.make_ndarray(e.tensor_proto))
             for e in acc.Tensors("train/learning_rate")}
    assert rates[1] == pytest.approx(1e-2 * 48 * 1e-2, rel=1e-6)
    assert rates[4] == pytest.approx(1e-2 / 2.5 * 48 * 1e-2, rel=1e-6)


# --------------------------------------------------------------------------- (e) bad values

@pytest.mark.parametrize("keys,key,words", [
    ({"initial": 1e-4}, "initial", ["inference.step_size", "below its floor"]),
    ({"power": 0.0}, "power", ["out of range"]),
    ({"power": 1.5}, "power", ["out of range"]),
    ({"decay_steps": 0}, "decay_steps", ["out of range"]),
    ({"kind": "cosine"}, "kind", ["polynomial"]),
])
def test_bad_schedules_are_one_line_errors_naming_the_key(keys, key, words):
    with pytest.raises(ConfigError) as err:
        from_dict({"data": {"val_split": ""}, "model": {"likelihood": {"name": "normal"}},
                   "inference": {"scheme": "pga", "step_size": 1e-3,
                                 "step_size_schedule": polynomial(**keys)}})
    assert err.value.key == f"inference.step_size_schedule.{key}"
    line = str(err.value)
    assert "\n" not in line and all(word in line for word in words), line


def test_the_cli_refuses_an_initial_step_below_the_floor(tmp_path, idx_folder):
    config = tmp_path / "bad.toml"
    config.write_text(scheduled_config(idx_folder, tmp_path / "runs", 1, initial=1e-4))
    result = run_cli("run", str(config), "--quiet")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: {config}: inference.step_size_schedule.initial: the schedule's initial step "
        f"size is below its floor inference.step_size = 0.001; given 0.0001; allowed: a value "
        f">= inference.step_size (0.001)"]
    assert not (tmp_path / "runs").exists()
