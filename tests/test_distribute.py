"""Data parallelism on the real tf.distribute engine, on this CPU (tfgen.distribute):

* MirroredStrategy over two logical CPU devices and a two-process MultiWorkerMirroredStrategy
  on 127.0.0.1 follow the single-device run's loss curve and end at its weights, particle
  cloud and latent table (VAE, PGA, svi);
* a checkpoint written on two replicas resumes on one, and continues exactly;
* the input split: each replica gets the images whose rows it holds;
* the sharded table's checkpoint is one tensor under a plain variable's key.

The multi-replica runs need a fresh process (logical devices and the cluster are fixed when
TensorFlow starts): they run the real console script.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from conftest import REPO, learned, run_cli, run_process, tiny_config
from tfgen.runtime import loopback_workers

MIRRORED = ["--set", "runtime.strategy=mirrored", "--set", "runtime.cpu_devices=2"]

SCHEMES = {
    "vae": "",
    # step sizes large enough that the cloud and theta move visibly in 8 steps
    "pga": 'particles = 3\nchunk_size = 24\nstep_size = 0.01\ntheta_scale = 0.001\n',
    "svi": 'validation_images = 8\nvalidation_fit_steps = 3\n',
    "gan": 'loss = "non_saturating"\n',
    # the chains' noise per image, abp's table sharded by rows (as pga's cloud)
    "abp": 'langevin_steps = 3\nstep_size = 0.01\n',
    "short_run": 'langevin_steps = 3\nstep_size = 0.01\n',
}


def write_config(idx_folder: Path, tmp: Path, scheme: str, epochs: int = 2) -> Path:
    text = tiny_config(idx_folder, tmp / "runs", epochs=epochs).split("[[evaluate]]")[0]
    if scheme != "vae":
        text = text.replace('[inference.encoder]\nname = "mlp"\nhidden = [32]\n', "")
    if scheme == "gan":  # an MLP critic (no batch norm: replicas would normalise apart)
        text = text.replace("[model.likelihood]", '[model.discriminator]\nname = "mlp"\n'
                            'hidden = [32]\n\n[model.likelihood]')
    text = text.replace('scheme = "vae"', f'scheme = "{scheme}"\n{SCHEMES[scheme]}')
    # 128 images in batches of 32 (and a last batch of 16 with 48: uneven replica parts)
    text = text.replace("batch_size = 32", "batch_size = 48")
    path = tmp / f"{scheme}.toml"
    path.write_text(text + '\n[[evaluate]]\ntask = "curves"\n')
    return path


def run_dir_of(output: str) -> Path:
    return Path(next(line.split(": ", 1)[1] for line in output.splitlines()
                     if line.startswith("done: ")))


def history(run_dir: Path) -> list[dict]:
    return learned(json.loads((run_dir / "history.json").read_text()))


def checkpoint_values(run_dir: Path) -> dict[str, np.ndarray]:
    path = tf.train.latest_checkpoint(str(run_dir / "checkpoints"))
    reader = tf.train.load_checkpoint(path)
    return {name: reader.get_tensor(name) for name, _ in tf.train.list_variables(path)
            if name != "_CHECKPOINTABLE_OBJECT_GRAPH" and "save_counter" not in name}


def assert_same_run(a: Path, b: Path) -> None:
    """The same loss curve (every metric of every epoch) and the same final state."""
    ha, hb = history(a), history(b)
    assert len(ha) == len(hb)
    for ea, eb in zip(ha, hb):
        assert ea.keys() == eb.keys()
        for key in ea:
            np.testing.assert_allclose(eb[key], ea[key], rtol=2e-5, atol=2e-5, err_msg=key)
    va, vb = checkpoint_values(a), checkpoint_values(b)
    assert va.keys() == vb.keys()
    for key in va:
        if isinstance(va[key], bytes):  # the history and partial sums, as JSON: compared above
            continue
        if va[key].dtype.kind in "fc":
            np.testing.assert_allclose(vb[key], va[key], rtol=1e-4, atol=2e-5, err_msg=key)
        else:
            np.testing.assert_array_equal(vb[key], va[key], err_msg=key)


@pytest.fixture(scope="module")
def single_device_runs(idx_folder, tmp_path_factory):
    """The reference: each scheme on the default strategy, in this process."""
    tmp = tmp_path_factory.mktemp("single")
    runs = {}
    for scheme in SCHEMES:
        result = run_cli("run", str(write_config(idx_folder, tmp, scheme)), "--quiet")
        assert result.returncode == 0, result.stderr
        runs[scheme] = sorted((tmp / "runs" / "tiny").iterdir())[-1]
    return runs


@pytest.mark.parametrize("scheme", list(SCHEMES))
def test_two_mirrored_cpu_devices_follow_the_single_device_run(scheme, idx_folder, tmp_path,
                                                                single_device_runs):
    result = run_process("run", str(write_config(idx_folder, tmp_path, scheme)), *MIRRORED,
                         timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "mirrored strategy, 2 replicas" in result.stdout + result.stderr
    run_dir = run_dir_of(result.stdout + result.stderr)
    info = json.loads((run_dir / "run.json").read_text())
    assert info["sessions"][0]["devices"]["replicas"] == 2
    assert_same_run(single_device_runs[scheme], run_dir)


def test_a_two_replica_checkpoint_resumes_on_one_device(idx_folder, tmp_path, single_device_runs):
    """Epoch 1 on two replicas, epoch 2 resumed on the default strategy: the run ends where the
    single-device run of two epochs does (the sharded cloud restores as one table)."""
    config = write_config(idx_folder, tmp_path, "pga", epochs=1)
    result = run_process("run", str(config), *MIRRORED, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = run_dir_of(result.stdout + result.stderr)
    resumed = run_cli("run", "--resume", str(run_dir), "--quiet", "--set", "train.epochs=2",
                      "--set", "runtime.strategy=default", "--set", "runtime.cpu_devices=1")
    assert resumed.returncode == 0, resumed.stderr
    assert_same_run(single_device_runs["pga"], run_dir)


@pytest.mark.parametrize("scheme", ["vae", "pga"])
def test_two_workers_on_loopback_follow_the_single_device_run(scheme, idx_folder, tmp_path,
                                                              single_device_runs):
    """MultiWorkerMirroredStrategy, two processes started here (TF_CONFIG from runtime.workers
    and --worker-index), each with a bounded time; worker 0 writes the run directory."""
    config = write_config(idx_folder, tmp_path, scheme)
    workers = json.dumps(loopback_workers(2))
    args = [sys.executable, "-m", "tfgen", "run", str(config), "--set",
            "runtime.strategy=multi_worker", "--set", f"runtime.workers={workers}"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("TF_CONFIG", None)
    procs = [subprocess.Popen(args + ["--worker-index", str(i)], cwd=REPO, env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for i in (1, 0)]
    try:
        outputs = [p.communicate(timeout=300) for p in procs]
    finally:
        for p in procs:
            p.kill()
    for p, (out, err) in zip(procs, outputs):
        assert p.returncode == 0, err[-3000:]
    chief_out = "".join(outputs[1])
    run_dir = run_dir_of(chief_out)
    assert len(list((tmp_path / "runs" / "tiny").iterdir())) == 1  # worker 1 wrote nothing here
    info = json.loads((run_dir / "run.json").read_text())
    assert info["sessions"][0]["devices"]["replicas"] == 2
    assert_same_run(single_device_runs[scheme], run_dir)


def test_a_worker_that_never_arrives_is_named_after_the_connect_timeout(idx_folder, tmp_path):
    """Worker 0 of a 2-worker cluster, started alone: after runtime.connect_timeout_s it names
    worker 1 and its address in one line and exits non-zero, without a run directory.  (The
    process's own timeout only bounds a failure; without the deadline it would wait forever.)"""
    config = write_config(idx_folder, tmp_path, "vae", epochs=1)
    workers = loopback_workers(2)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("TF_CONFIG", None)
    result = subprocess.run(
        [sys.executable, "-m", "tfgen", "run", str(config), "--worker-index", "0",
         "--set", "runtime.strategy=multi_worker", "--set", f"runtime.workers={json.dumps(workers)}",
         "--set", "runtime.connect_timeout_s=3"],
        cwd=REPO, env=env, text=True, capture_output=True, timeout=240)
    assert result.returncode == 1, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert errors == [
        f"error: {config}: runtime.connect_timeout_s: worker 1 ({workers[1]}) did not join the "
        f"cluster within 3 s (nothing answers at its address); start it (tfgen run ... "
        f"--worker-index 1), or raise runtime.connect_timeout_s (3)"], result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "runs").exists()


def test_the_input_split_gives_each_replica_the_images_of_its_rows():
    from tfgen.distribute import ReplicaLayout

    strategy = tf.distribute.get_strategy()
    layout = ReplicaLayout(strategy, rows=10)
    layout.num_replicas, layout.bounds = 3, [0, 3, 6, 10]  # a 3-replica layout, as data
    images = tf.reshape(tf.range(7, dtype=tf.float32), [7, 1, 1, 1])
    indices = tf.constant([9, 0, 4, 5, 8, 1, 7], tf.int64)
    batches = tf.data.Dataset.from_tensors((tf.gather(images, [0, 1, 2, 3, 4, 5, 6]), indices))
    parts = [idx.numpy().tolist() for _, idx in layout.replica_dataset(batches)]
    assert parts == [[0, 1], [4, 5], [7, 8, 9]]
    # worker 1 of 3 (one replica each) gets the middle part only
    assert [idx.numpy().tolist() for _, idx in layout.replica_dataset(batches, 1, 3)] == [[4, 5]]
    # images travel with their indices
    firsts = [img.numpy().ravel().tolist() for img, _ in layout.replica_dataset(batches)]
    assert firsts == [[1.0, 5.0], [2.0, 3.0], [6.0, 4.0, 0.0]]
    unsharded = ReplicaLayout(strategy)
    unsharded.num_replicas = 3
    sizes = [len(idx) for _, idx in unsharded.replica_dataset(batches)]
    assert sizes == [3, 2, 2]


def test_a_sharded_table_checkpoints_under_a_plain_variables_key(tmp_path):
    from tfgen.distribute import ReplicaLayout
    from tfgen.inference.latents import LatentTable

    layout = ReplicaLayout(tf.distribute.get_strategy(), rows=5)
    table = LatentTable(tf.reshape(tf.range(10.0), [5, 2]), layout, name="cloud")
    path = tf.train.Checkpoint(latents=table).write(str(tmp_path / "ckpt"))
    names = dict(tf.train.list_variables(path))
    assert names["latents/values/.ATTRIBUTES/VARIABLE_VALUE"] == [5, 2]

    class Plain(tf.Module):
        def __init__(self):
            self.values = tf.Variable(tf.zeros([5, 2]))

    plain = Plain()
    tf.train.Checkpoint(latents=plain).read(path).assert_consumed()
    np.testing.assert_array_equal(plain.values.numpy(), np.arange(10.0).reshape(5, 2))


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_runs_the_decoder_only_in_low_precision(policy):
    """The decoder computes in float16/bfloat16 with float32 variables; its output, the
    likelihood, the encoder, the particle cloud and the optimizer state stay float32; float16
    scales the loss (LossScaleOptimizer)."""
    from tf_keras import mixed_precision

    from conftest import build_in_memory

    images = (np.random.default_rng(0).random((8, 4, 4, 1)) < 0.4).astype(np.float32)
    for scheme_name in ("vae", "pga"):
        inference = {"scheme": scheme_name}
        if scheme_name == "vae":
            inference["encoder"] = {"name": "mlp", "hidden": [8]}
        scheme = build_in_memory({
            "data": {"val_split": "", "binarize": "static"},
            "model": {"prior": {"dim": 2}, "decoder": {"name": "mlp", "hidden": [8]}},
            "inference": inference, "train": {"batch_size": 4},
            "runtime": {"mixed_precision": policy}, "evaluate": []}, images)
        layers = [m for m in scheme.model.decoder.submodules if hasattr(m, "compute_dtype")]
        assert layers and {m.compute_dtype for m in layers} == {policy.split("_")[1]}
        assert all(v.dtype == tf.float32 for v in scheme.model.theta)
        assert scheme.model.decode(tf.zeros([2, 2])).dtype == tf.float32
        optimizer = scheme.optimizer if scheme_name == "vae" else scheme.theta_optimizer
        assert isinstance(optimizer, mixed_precision.LossScaleOptimizer) == (policy == "mixed_float16")
        if scheme_name == "vae":
            assert {m.compute_dtype for m in scheme.encoder.submodules
                    if hasattr(m, "compute_dtype")} == {"float32"}
        else:
            assert scheme.particle_cloud.dtype == tf.float32
        before = [v.numpy().copy() for v in scheme.model.theta]
        for _ in range(3):
            out = scheme.standalone_step(tf.constant(images[:4]), tf.range(4, dtype=tf.int64))
            assert np.isfinite(float(out["loss"]))
        assert any(np.abs(v.numpy() - b).max() > 0 for v, b in zip(scheme.model.theta, before))
    assert mixed_precision.global_policy().name == "float32"  # only the decoder opted in
