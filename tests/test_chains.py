"""Kuntz et al.'s (2023) MCMC baselines, ``abp`` and ``short_run``: on a linear-Gaussian decoder
their chains sample the exact posterior (ULA's closed-form stationary law) and theta reaches the
Tipping-Bishop maximum likelihood; the importance-sampled log-likelihood matches the exact
marginal; an interrupted and resumed ``tfgen run`` equals an uninterrupted one; what each
scheme's capabilities allow and refuse at load time."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

import ppca_helpers as ppca
from conftest import build_in_memory, run_cli, tiny_residual_run
from ppca_helpers import linear_theta
from tfgen.assemble import from_dict
from tfgen.errors import ConfigError
from tfgen.inference import samplers

SCHEMES = ["abp", "short_run"]


def make_chains(scheme: str, images: np.ndarray, latent_dim: int, inference: dict,
                likelihood=None, batch_size: int = 4, optimizer="rmsprop", learning_rate=1e-3,
                seed: int = 0):
    """An abp or short_run scheme with a linear decoder on in-memory images [M, 1, D, 1]."""
    return build_in_memory({
        "experiment": {"seed": seed},
        "data": {"val_split": ""},
        "model": {"prior": {"dim": latent_dim}, "decoder": {"name": "mlp", "hidden": []},
                  "likelihood": likelihood or {"name": "normal", "sigma": 0.5}},
        "inference": {"scheme": scheme, **inference},
        "train": {"batch_size": batch_size, "compile": "graph", "optimizer": optimizer,
                  "learning_rate": learning_rate},
        "evaluate": [],
    }, images)


def set_linear_decoder(scheme, W: np.ndarray, b: np.ndarray) -> None:
    scheme.model.decoder.head.kernel.assign(W.T.astype(np.float32))
    scheme.model.decoder.head.bias.assign(b.astype(np.float32))


# --------------------------------------------------------------------------- the posterior

SIGMA, H = 0.5, 0.02
W_FIXED = np.array([[0.8, 0.1], [-0.4, 0.3], [0.3, -0.35], [0.2, 0.2]])  # P's eigenvalues ~5, ~2
B_FIXED = np.array([0.5, -1.0, 0.25, 0.0])
Y_FIXED = np.array([[1.5, -2.0, 1.0, 0.5], [-0.5, 0.0, -0.5, 1.0]])
COPIES = 1000  # chains per image


def chain_ends(scheme_name: str, noise_scale: float = 1.0) -> np.ndarray:
    """300 Langevin moves (h = 0.02) of 1000 chains for each of two images, [2, 1000, d],
    with theta fixed at (W_FIXED, B_FIXED): abp through its training step (6 steps of K = 50
    on the persistent table, theta's learning rate 1e-12), short_run through the chains it
    runs for the latent cloud (K = 300 from N(0, I))."""
    images = np.repeat(Y_FIXED, COPIES, axis=0).reshape(-1, 1, 4, 1).astype(np.float32)
    steps = 50 if scheme_name == "abp" else 300
    scheme = make_chains(scheme_name, images, 2, {"langevin_steps": steps, "step_size": H,
                                                  "noise_scale": noise_scale},
                         likelihood={"name": "normal", "sigma": SIGMA}, batch_size=len(images),
                         optimizer="sgd", learning_rate=1e-12)
    set_linear_decoder(scheme, W_FIXED, B_FIXED)
    if scheme_name == "short_run":
        ends = scheme.chain_latents(images, seed=3)
    else:
        every = tf.range(len(images), dtype=tf.int64)
        for _ in range(6):
            scheme.standalone_step(tf.constant(images), every)
        ends = scheme.latent_cloud().numpy()
        np.testing.assert_allclose(linear_theta(scheme)[0], W_FIXED, atol=1e-6)  # theta fixed
    return ends.reshape(len(Y_FIXED), COPIES, 2)


@pytest.mark.parametrize("scheme_name", SCHEMES)
def test_chains_sample_the_linear_gaussian_posterior(scheme_name):
    """p(z | y) = N(P^-1 W^T (y - b) / s^2, P^-1): each image's chain ends have the posterior
    mean, and their covariance is ULA's stationary (P (I - hP/2))^-1, 5 % from P^-1 at this h.
    Missing noise (variance 0), sqrt(h) noise (half the variance) or a drift without the prior
    (means and variances off by 25-100 %) would fail."""
    ends = chain_ends(scheme_name)
    means, precision = ppca.exact_posterior(W_FIXED, B_FIXED, SIGMA, Y_FIXED)
    ula = ppca.ula_stationary_covariance(precision, H)
    np.testing.assert_allclose(ends.mean(axis=1), means, atol=0.08)  # 4 standard errors
    pooled = np.cov((ends - ends.mean(axis=1, keepdims=True)).reshape(-1, 2).T)
    np.testing.assert_allclose(pooled, ula, rtol=0.12, atol=0.02)  # variance's se: 3 %
    np.testing.assert_allclose(pooled, np.linalg.inv(precision), rtol=0.15, atol=0.03)


def test_noise_scale_zero_climbs_to_the_posterior_mode():
    """c = 0: the chain is gradient ascent on log p(z | y), whose maximum is the Gaussian
    posterior's mean; every chain, whatever its start, ends there."""
    ends = chain_ends("short_run", noise_scale=0.0)
    means, _ = ppca.exact_posterior(W_FIXED, B_FIXED, SIGMA, Y_FIXED)
    np.testing.assert_allclose(ends, np.broadcast_to(means[:, None], ends.shape), atol=1e-3)


def test_short_run_chains_do_not_depend_on_the_chunking_and_the_cloud_is_kept():
    images = np.repeat(Y_FIXED, 5, axis=0).reshape(-1, 1, 4, 1).astype(np.float32)
    one = make_chains("short_run", images, 2, {"langevin_steps": 5, "step_size": H})
    chunked = make_chains("short_run", images, 2, {"langevin_steps": 5, "step_size": H,
                                                   "cloud_batch_size": 3})
    for scheme in (one, chunked):
        set_linear_decoder(scheme, W_FIXED, B_FIXED)
    np.testing.assert_allclose(one.chain_latents(images, 7), chunked.chain_latents(images, 7),
                               rtol=1e-5, atol=1e-6)
    cloud = one.latent_cloud()
    assert cloud.shape == (10, 2) and one.latent_cloud() is cloud  # kept for the same weights
    set_linear_decoder(one, 2 * W_FIXED, B_FIXED)
    assert np.abs(one.latent_cloud().numpy() - cloud.numpy()).max() > 1e-3  # redrawn


# --------------------------------------------------------------------------- theta

@pytest.mark.parametrize("scheme_name,steps", [("abp", 25), ("short_run", 100)])
def test_theta_reaches_the_ppca_maximum_likelihood(scheme_name, steps):
    """The Tipping-Bishop check of tests/test_pga.py: K Langevin moves per batch (abp: on one
    persistent chain per image, the reference's K = 25; short_run: from N(0, I), K = 100, since
    its chains must mix within one visit: with K = 25 at this h they stop short and the
    learned eigenvalues came out 27 % and 42 % too large, 0.04 nats below the maximum), then
    RMSprop on theta at the chain ends.  The mean log marginal likelihood must reach the
    maximum (within 0.01 nats per point; a rank-1 fit is > 1 nat below), and W W^T + s^2 I
    the top sample-covariance eigenvalues."""
    D, d, sigma, M, batch = 5, 2, 1.0, 300, 50
    Y = ppca.ppca_sample(D, d, sigma, M, scales=[3.0, 2.0])
    W_ml, b_ml, top = ppca.tipping_bishop_ml(Y, d, sigma)
    best = ppca.mean_log_marginal(Y, W_ml, b_ml, sigma)
    learning_rate = 0.02
    scheme = make_chains(scheme_name, Y.reshape(M, 1, D, 1), d,
                         {"langevin_steps": steps, "step_size": 0.01},
                         likelihood={"name": "normal", "sigma": sigma}, batch_size=batch,
                         learning_rate=learning_rate)
    assert ppca.mean_log_marginal(Y, *linear_theta(scheme), sigma) < best - 5.0  # far off

    images = tf.constant(Y.reshape(M, 1, D, 1), tf.float32)
    order = np.random.default_rng(1)
    for k in range(1500):
        if k == 900:  # RMSprop with a constant step jitters around the optimum: shrink it
            scheme.optimizer.learning_rate.assign(learning_rate / 10)
        idx = order.choice(M, batch, replace=False)
        scheme.standalone_step(tf.gather(images, idx), tf.constant(idx, tf.int64))

    W, b = linear_theta(scheme)
    gap = ppca.mean_log_marginal(Y, W, b, sigma) - best
    W_rank1 = W_ml.copy()
    W_rank1[:, 1] = 0.0
    assert ppca.mean_log_marginal(Y, W_rank1, b_ml, sigma) - best < -1.0
    assert -0.01 < gap <= 1e-9, gap
    learned = np.linalg.eigvalsh(W @ W.T + sigma**2 * np.eye(D))[::-1][:d]
    np.testing.assert_allclose(learned, top, rtol=0.06)  # measured: within 3.2 %
    np.testing.assert_allclose(b, b_ml, atol=0.1)


@pytest.mark.parametrize("scheme_name", SCHEMES)
def test_log_likelihood_estimate_matches_the_exact_marginal(scheme_name):
    """The importance-sampled log p(y) through q fitted at test time (FittedPosterior, svi run
    to convergence), against log N(y | b, W W^T + s^2 I)."""
    from scipy import stats

    images = Y_FIXED.reshape(2, 1, 4, 1).astype(np.float32)
    fit = {"steps": 1000, "patience": 0, "optimizer": {"learning_rate": 0.05}}
    scheme = make_chains(scheme_name, images, 2, {"posterior_fit": fit})
    set_linear_decoder(scheme, W_FIXED, B_FIXED)
    estimate = scheme.log_likelihood_estimate(tf.constant(images), (0, 1), 1000).numpy()
    exact = stats.multivariate_normal(B_FIXED, W_FIXED @ W_FIXED.T + SIGMA**2 * np.eye(4)
                                      ).logpdf(Y_FIXED)
    np.testing.assert_allclose(estimate, exact, atol=0.03)


# --------------------------------------------------------------------------- capabilities

BASE = {"data": {"val_split": "", "pixel_range": "[-1,1]"},
        "model": {"likelihood": {"name": "normal"}}}


@pytest.mark.parametrize("scheme_name", SCHEMES)
def test_both_schemes_take_the_cloud_samplers_and_test_time_tasks(scheme_name):
    tasks = [{"task": "samples", "sampler": "particle_gaussian"},
             {"task": "sample_quality", "sampler": "particle_gaussian"},
             {"task": "sample_quality", "sampler": "gmm"},
             {"task": "inpainting", "split": "train", "fit": {"sampler": "particle_gaussian"}},
             {"task": "complete", "split": "train"},
             {"task": "log_likelihood"}, {"task": "elbo"}, {"task": "reconstructions"}]
    cfg = from_dict({**BASE, "inference": {"scheme": scheme_name}, "evaluate": tasks})
    assert [t.name for t in cfg.evaluate] == [t["task"] for t in tasks]
    defaults = [t.name for t in from_dict({**BASE, "inference": {"scheme": scheme_name}}).evaluate]
    assert defaults == ["samples", "samples", "inpainting", "curves"]


def test_short_run_refuses_tasks_that_pair_kept_latents_with_images():
    """short_run keeps no per-datapoint latents: a task asking for them by name is refused at
    load time with the capability error; abp has them."""
    task = {"task": "latent_scatter", "source": "latents"}
    from_dict({**BASE, "inference": {"scheme": "abp"}, "evaluate": [task]})
    with pytest.raises(ConfigError) as err:
        from_dict({**BASE, "inference": {"scheme": "short_run"}, "evaluate": [task]})
    assert "per-datapoint latents" in str(err.value) and "'short_run'" in str(err.value)
    assert "'abp'" in err.value.allowed and "'short_run'" not in err.value.allowed
    auto = from_dict({**BASE, "inference": {"scheme": "short_run"},
                      "evaluate": [{"task": "latent_scatter"}]})  # auto: the fitted posterior
    assert auto.evaluate[0].name == "latent_scatter"


@pytest.mark.parametrize("scheme_name", SCHEMES)
def test_cloud_samplers_draw_from_the_chain_latents(scheme_name):
    images = np.repeat(Y_FIXED, 20, axis=0).reshape(-1, 1, 4, 1).astype(np.float32)
    scheme = make_chains(scheme_name, images, 2, {"langevin_steps": 3})
    cloud = scheme.latent_cloud().numpy()
    assert cloud.shape == (40, 2)
    for sampler in ("particle_gaussian", "gmm"):
        z = samplers.sample_latents(sampler, scheme, 6, seed=1).numpy()
        assert z.shape == (6, 2) and np.isfinite(z).all()
        np.testing.assert_array_equal(z, samplers.sample_latents(sampler, scheme, 6, 1).numpy())


@pytest.mark.parametrize("key,value", [("langevin_steps", 0), ("step_size", 0.0),
                                       ("noise_scale", -1.0), ("summary_images", 100),
                                       ("cloud_images", -1), ("cloud_batch_size", 0)])
def test_bad_chain_values_name_the_key(key, value):
    with pytest.raises(ConfigError) as err:
        from_dict({**BASE, "inference": {"scheme": "short_run", key: value}})
    assert err.value.key == f"inference.{key}" and err.value.allowed
    if key.startswith("cloud"):  # short_run's own keys
        with pytest.raises(ConfigError) as err:
            from_dict({**BASE, "inference": {"scheme": "abp", key: 1}})
        assert err.value.key == f"inference.{key}"


# --------------------------------------------------------------------------- tfgen run

def chain_config(scheme: str, idx_folder: Path, out: Path, epochs: int) -> str:
    return tiny_residual_run(f"tiny_{scheme}", idx_folder, out) + f"""
[inference]
scheme = "{scheme}"
langevin_steps = 3
step_size = 1e-3

[inference.posterior_fit]
steps = 5

[train]
epochs = {epochs}
batch_size = 16
optimizer = "rmsprop"
compile = "graph"
steps_per_epoch = 2

[logging]
every_steps = 1
images_every_steps = 2
num_images = 4

[[evaluate]]
task = "samples"
sampler = "particle_gaussian"
num_images = 4

[[evaluate]]
task = "inpainting"
mask = "center"
num_images = 4

[evaluate.fit]
steps = 5

[[evaluate]]
task = "log_likelihood"
samples = 4
max_images = 4
"""


@pytest.mark.parametrize("scheme_name", SCHEMES)
def test_tfgen_run_resumes_exactly(tmp_path, idx_folder, scheme_name):
    """Interrupted after epoch 1 and resumed == uninterrupted: the chain table (abp), theta,
    the optimizer's slots and the metrics; then ``tfgen complete`` on the run."""
    straight, pieces = tmp_path / "straight", tmp_path / "pieces"
    for out, epochs in [(straight, 2), (pieces, 1)]:
        config = tmp_path / f"{out.name}.toml"
        config.write_text(chain_config(scheme_name, idx_folder, out, epochs))
        result = run_cli("run", str(config), "--quiet")
        assert result.returncode == 0, result.stderr
    run_dir = next((pieces / f"tiny_{scheme_name}").iterdir())
    assert run_cli("run", "--resume", str(run_dir), "--quiet", "--set",
                   "train.epochs=2").returncode == 0
    straight_dir = next((straight / f"tiny_{scheme_name}").iterdir())

    checkpoints = [tf.train.latest_checkpoint(str(d / "checkpoints"))
                   for d in (straight_dir, run_dir)]
    variables = dict(tf.train.list_variables(checkpoints[0]))
    table = [k for k in variables if k.startswith("latents/values/")]
    assert len(table) == (1 if scheme_name == "abp" else 0)
    if table:
        assert variables[table[0]] == [48, 3]
    slots = [k for k in variables if k.startswith("optimizer/_variables/")]
    assert len(slots) == 17, slots  # one RMSprop velocity per theta variable (test_pga)
    for key in table + slots + [k for k in variables if k.startswith("model/decoder")]:
        a, b = (tf.train.load_variable(c, key) for c in checkpoints)
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=key)

    metrics, resumed = (json.loads((d / "metrics.json").read_text())
                        for d in (straight_dir, run_dir))
    assert metrics["status"] == "completed" and metrics["train"]["steps"] == 4
    for key in ("inpainting_center_test_hidden_mse", "test_log_likelihood"):
        found = [k for k in metrics["evaluation"] if k.startswith(key)]
        assert found and all(math.isfinite(metrics["evaluation"][k]) for k in found), key
        for k in found:
            assert resumed["evaluation"][k] == pytest.approx(metrics["evaluation"][k], rel=1e-4)
    for name in ["samples_particle_gaussian.png", "inpainting_center_test.png"]:
        assert (straight_dir / "figures" / name).is_file(), name

    done = run_cli("complete", str(straight_dir), "--num-images", "2", "--steps", "3")
    assert done.returncode == 0, done.stderr
    after = json.loads((straight_dir / "metrics.json").read_text())["evaluations_after_run"]
    assert any(k.startswith("complete") for k in after)
