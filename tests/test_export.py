"""``tfgen export``: a SavedModel that plain TensorFlow loads (no tfgen in the process) and that
gives the run's own outputs; refusals in one line, nothing written."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import STEPS, run_cli, tiny_config

#: run in a fresh interpreter without tfgen on its path: loads the SavedModel and calls it
PLAIN_TENSORFLOW = """
import sys
import numpy as np
import tensorflow as tf

folder, inputs, outputs = sys.argv[1:]
model = tf.saved_model.load(folder)
given = np.load(inputs)
decoded = model.signatures["decode"](z=tf.constant(given["z"]))
sampled = model.signatures["sample"](n=tf.constant(5), seed=tf.constant(7))
again = model.signatures["sample"](n=tf.constant(5), seed=tf.constant(7))
encoded = model.signatures["encode"](images=tf.constant(given["images"]))
assert "tfgen" not in sys.modules, "tfgen was imported"
np.savez(outputs, signatures=np.array(sorted(model.signatures)),
         **{f"decode_{k}": v.numpy() for k, v in decoded.items()},
         **{f"sample_{k}": v.numpy() for k, v in sampled.items()},
         **{f"again_{k}": v.numpy() for k, v in again.items()},
         **{f"encode_{k}": v.numpy() for k, v in encoded.items()})
"""


@pytest.fixture(scope="module")
def mixture_run(tmp_path_factory, idx_folder) -> Path:
    """A tiny VAE whose prior is a learned Gaussian mixture (not N(0, I)): the exported
    ``sample`` must draw from it."""
    out = tmp_path_factory.mktemp("export")
    config = out / "tiny.toml"
    config.write_text(tiny_config(idx_folder, out / "runs", epochs=1).replace(
        "[model.prior]\ndim = 2", "[model.prior]\nname = \"gaussian_mixture\"\ndim = 2\n"
                                  "components = 3"))
    result = run_cli("run", str(config), "--quiet", *STEPS)
    assert result.returncode == 0, result.stderr
    [run] = (out / "runs" / "tiny").iterdir()
    return run


def test_plain_tensorflow_gets_the_runs_own_outputs(mixture_run, tmp_path):
    result = run_cli("export", str(mixture_run))
    assert result.returncode == 0, result.stderr
    folder = mixture_run / "export" / "savedmodel"
    assert result.stdout.startswith(f"exported {mixture_run} (step 2, ")
    assert f"to {folder}: signatures decode, sample, encode; " in result.stdout
    manifest = json.loads((folder / "tfgen_export.json").read_text())
    assert manifest["prior"] == "gaussian_mixture" and manifest["step"] == 2
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".")]  # no leftovers

    import tfgen

    run = tfgen.open_run(mixture_run)
    z = np.random.default_rng(0).normal(size=(6, 2)).astype(np.float32)
    images = run.data.test.images[:4]
    np.savez(tmp_path / "in.npz", z=z, images=images)
    script = tmp_path / "load.py"
    script.write_text(PLAIN_TENSORFLOW)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    loaded = subprocess.run([sys.executable, str(script), str(folder), str(tmp_path / "in.npz"),
                             str(tmp_path / "out.npz")], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=300)
    assert loaded.returncode == 0, loaded.stderr
    out = np.load(tmp_path / "out.npz")
    assert sorted(out["signatures"]) == ["decode", "encode", "sample"]

    p = run.decode(z)  # Bernoulli on [0, 1] pixels: its mean is E[y | z]
    np.testing.assert_allclose(out["decode_logits"], p.distribution.logits.numpy(), rtol=1e-5,
                               atol=1e-5)
    np.testing.assert_allclose(out["decode_mean"], p.mean().numpy(), rtol=1e-5, atol=1e-6)
    q = run.encode(images)
    np.testing.assert_allclose(out["encode_mean"], q.mean().numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out["encode_stddev"], q.stddev().numpy(), rtol=1e-5)
    np.testing.assert_allclose(out["encode_log_variance"], 2 * np.log(q.stddev().numpy()),
                               rtol=1e-4, atol=1e-6)
    # the run's own prior, the run's own seeds: the images Run.sample (the samples task) gives
    np.testing.assert_allclose(out["sample_mean"], run.sample(5, seed=7), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(out["sample_sample"], run.sample(5, seed=7, show="sample"))
    for key in ("z", "mean", "sample"):
        np.testing.assert_array_equal(out[f"sample_{key}"], out[f"again_{key}"])
    # not N(0, I) under the same seed: the mixture's own draws
    import tensorflow as tf
    import tensorflow_probability as tfp

    standard = tfp.distributions.MultivariateNormalDiag(tf.zeros(2), tf.ones(2))
    assert out["sample_z"].shape == (5, 2)
    assert not np.allclose(out["sample_z"], standard.sample(5, seed=tf.constant([7, 0])),
                           atol=1e-2)


def test_an_earlier_export_is_replaced_any_other_folder_refused(mixture_run, tmp_path):
    out = tmp_path / "model"
    assert run_cli("export", str(mixture_run), "--out", str(out)).returncode == 0
    (out / "stale").write_text("from the first export")
    again = run_cli("export", str(mixture_run), "--out", str(out))
    assert again.returncode == 0, again.stderr
    assert not (out / "stale").exists() and (out / "saved_model.pb").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # nothing left beside it

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    refused = run_cli("export", str(mixture_run), "--out", str(mine))
    assert refused.returncode == 2
    assert refused.stderr == (f"error: tfgen export: --out: exists and is not a tfgen export "
                              f"(it would be replaced); given '{mine}'; allowed: a new folder, "
                              f"or an earlier tfgen export to replace\n")
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]


def test_a_run_without_checkpoint_is_refused(run_dir):
    shutil.rmtree(run_dir / "checkpoints")
    before = sorted(p.relative_to(run_dir) for p in run_dir.rglob("*"))
    result = run_cli("export", str(run_dir))
    assert result.returncode == 2
    assert result.stderr == (f"error: {run_dir}: has no checkpoint to export (the run was "
                             f"stopped before its first checkpoint)\n")
    assert sorted(p.relative_to(run_dir) for p in run_dir.rglob("*")) == before


def test_a_scheme_without_decoder_and_prior_is_refused(tmp_path, idx_folder):
    """A flow run: refused from its config, before its data or checkpoint is read."""
    run = tmp_path / "flow_run"
    run.mkdir()
    (run / "config.toml").write_text(f"""
[data]
source = "idx"
path = "{idx_folder}"

[model.likelihood]
name = "normal"

[inference]
scheme = "flow"
""")
    result = run_cli("export", str(run))
    assert result.returncode == 2
    assert result.stderr.startswith(
        f"error: {run / 'config.toml'}: inference.scheme: tfgen export needs a decoder with a "
        f"likelihood p(y | z), which scheme 'flow' does not have; given 'flow'; allowed: "
        f"inference.scheme = ")
    assert result.stderr.count("\n") == 1
    assert sorted(p.name for p in run.iterdir()) == ["config.toml"]


def test_a_missing_run_directory_is_one_line(tmp_path):
    result = run_cli("export", str(tmp_path / "nowhere"))
    assert result.returncode == 2
    assert result.stderr == (f"error: {tmp_path / 'nowhere'}: does not exist; tfgen export "
                             f"takes a run directory, <output_dir>/<name>/<timestamp>\n")


#: a plugin likelihood whose p(y | z) is not a product of per-pixel factors (no ``Factorized``)
JOINT_LIKELIHOOD = '''
from tfgen.models.likelihood_capabilities import Discrete
from tfgen.models.likelihoods import BernoulliLikelihood, Likelihood
from tfgen.registry import LIKELIHOODS


@LIKELIHOODS.register("joint_bernoulli")
class JointBernoulli(Likelihood, Discrete):
    """A Bernoulli that does not declare per-pixel factors (test plugin)."""

    _pixel_distribution = BernoulliLikelihood._pixel_distribution
'''


@pytest.fixture(scope="module")
def joint_plugin(tmp_path_factory) -> Path:
    """The plugin file (conftest unloads it after each test that loads it)."""
    plugin = tmp_path_factory.mktemp("plugin") / "joint_likelihood.py"
    plugin.write_text(JOINT_LIKELIHOOD)
    return plugin


@pytest.mark.parametrize("likelihood", ["pixelcnn", "joint_bernoulli"])
def test_a_likelihood_without_per_pixel_factors_is_refused_as_a_capability(
        likelihood, joint_plugin, tmp_path, idx_folder):
    """The built-in pixelcnn and a plugin's likelihood lacking the Factorized capability are
    refused by one rule, from the config, before data or checkpoint are read."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.toml").write_text(tiny_config(idx_folder, tmp_path).replace(
        'name = "bernoulli"', f'name = "{likelihood}"\nlevels = 2' if likelihood == "pixelcnn"
        else f'name = "{likelihood}"'))
    result = run_cli("export", str(run), "--plugin", str(joint_plugin))
    assert result.returncode == 2
    assert result.stderr.startswith(
        f"error: {run / 'config.toml'}: model.likelihood.name: tfgen export needs a likelihood "
        f"that factorizes over pixels (per-pixel marginals), which likelihood {likelihood!r} does "
        f"not have; given {likelihood!r}; allowed: model.likelihood.name = 'bernoulli' or ")
    assert result.stderr.count("\n") == 1
    assert sorted(p.name for p in run.iterdir()) == ["config.toml"]
