"""Particle gradient ascent (Kuntz et al. 2023): convergence to the PPCA maximum-likelihood
solution, the Langevin update against a hand-computed one, Kuntz et al.'s (2023) decoder's
parameter counts, "all" vs "batch" particle updates, an end-to-end ``tfgen run`` with resume, the
particle-Gaussian sampler, inpainting masks and the hidden-pixel MSE, config validation."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

import ppca_helpers as ppca
from conftest import build_in_memory, run_cli, tiny_residual_run
from ppca_helpers import linear_theta, ppca_sample, tipping_bishop_ml
from tfgen.assemble import from_dict
from tfgen.errors import ConfigError
from tfgen.evaluation import completion as inpainting
from tfgen.inference import samplers
from tfgen.distribute import SALT_LANGEVIN, single_replica_batch, step_seed
from tfgen.models.model import build_model


def make_pga(images: np.ndarray, latent_dim: int, inference: dict, decoder=None, likelihood=None,
             batch_size: int = 4, seed: int = 0, pixel_range=(0.0, 1.0), compile_mode="graph"):
    """A PGA scheme on in-memory images, built by the runner's own build function."""
    return build_in_memory({
        "experiment": {"seed": seed},
        "data": {"val_split": ""},
        "model": {"prior": {"dim": latent_dim},
                  "decoder": decoder or {"name": "mlp", "hidden": []},
                  "likelihood": likelihood or {"name": "normal", "sigma": 0.5}},
        "inference": {"scheme": "pga", **inference},
        "train": {"batch_size": batch_size, "compile": compile_mode},
        "evaluate": [],
    }, images, pixel_range)


def normal_langevin_expected(scheme, images, h, noise):
    """X + h grad_x log p(x, y) + sqrt(2h) W for z ~ N(0, I), y | z ~ N(W z + b, s^2 I),
    with grad_x log p = -x + W^T (y - W x - b) / s^2, computed in NumPy."""
    W, b = linear_theta(scheme)
    sigma = scheme.model.likelihood.config.sigma
    X = scheme.particle_cloud.numpy().astype(np.float64)            # [M, N, d]
    y = images.reshape(len(images), -1).astype(np.float64)          # [M, D]
    residual = y[:, None, :] - X @ W.T - b                          # [M, N, D]
    grad = -X + residual @ W / sigma**2
    return X + h * grad + math.sqrt(2 * h) * noise


def copy_generator(generator: tf.random.Generator) -> tf.random.Generator:
    return tf.random.Generator.from_state(generator.state.numpy(), generator.algorithm)


def next_step_seed(scheme) -> tf.Tensor:
    """The seed the scheme's next step draws, from a copy of the run's generator."""
    return step_seed(copy_generator(scheme.generator))


def replayed_noise(scheme) -> np.ndarray:
    """The Langevin noise [M, N, d] the next "all" particle update draws (per row chunk)."""
    return scheme.particle_noise(next_step_seed(scheme))


# --------------------------------------------------------------------------- (a) PPCA

def test_pga_theta_reaches_the_ppca_maximum_likelihood():
    """Tipping & Bishop (1999): for y = W z + b + e, z ~ N(0, I_d), e ~ N(0, s^2 I), known s,
    the ML solution is b = sample mean, W = U_d (L_d - s^2 I)^(1/2) R (top-d eigenpairs of
    the sample covariance).  log N(y | b, W W^T + s^2 I) is invariant to R: PGA must reach
    the ML marginal likelihood (and the eigenvalues of W W^T + s^2 I), not a rank-1 fit."""
    D, d, sigma, M = 5, 2, 1.0, 300
    Y = ppca_sample(D, d, sigma, M, scales=[3.0, 2.0])
    W_ml, b_ml, top = tipping_bishop_ml(Y, d, sigma)

    def mean_log_marginal(W, b):
        return ppca.mean_log_marginal(Y, W, b, sigma)

    h, learning_rate, batch = 0.005, 0.02, 50
    scheme = make_pga(Y.reshape(M, 1, D, 1), d, {"particles": 10, "step_size": h,
                                                 "theta_scale": learning_rate / (h * M),
                                                 "chunk_size": 64},
                      likelihood={"name": "normal", "sigma": sigma}, batch_size=batch)
    assert scheme.learning_rate() == pytest.approx(learning_rate)
    best = mean_log_marginal(W_ml, b_ml)
    assert mean_log_marginal(*linear_theta(scheme)) < best - 5.0  # the start is far off

    images = tf.constant(Y.reshape(M, 1, D, 1), tf.float32)
    order = np.random.default_rng(1)
    for k in range(1000):
        if k == 600:  # RMSprop with a constant step jitters around the optimum: shrink it
            scheme.theta_optimizer.learning_rate.assign(learning_rate / 5)
        idx = order.choice(M, batch, replace=False)
        scheme.standalone_step(tf.gather(images, idx), tf.constant(idx, tf.int64))

    W, b = linear_theta(scheme)
    gap = mean_log_marginal(W, b) - best
    W_rank1 = W_ml.copy()
    W_rank1[:, 1] = 0.0
    assert mean_log_marginal(W_rank1, b_ml) - best < -1.0  # the tolerance below can tell
    assert -0.01 < gap <= 1e-9, gap  # nats per data point
    learned = np.linalg.eigvalsh(W @ W.T + sigma**2 * np.eye(D))[::-1][:d]
    # ULA's O(h) bias shrinks the particles' posterior slightly: a few percent
    np.testing.assert_allclose(learned, top, rtol=0.06)
    np.testing.assert_allclose(b, b_ml, atol=0.1)


# --------------------------------------------------------------------------- (b) Langevin step

@pytest.mark.parametrize("chunk_size", [3, 100])
def test_particle_update_is_the_hand_computed_langevin_step(chunk_size):
    """Eq. (3) on a linear-Gaussian model, with the scheme's own noise replayed: 7 images in
    chunks of 3 (the last chunk padded) or in one chunk must give the same answer."""
    M, D, d, h = 7, 4, 3, 0.01
    images = np.random.default_rng(3).normal(size=(M, 1, D, 1)).astype(np.float32)
    scheme = make_pga(images, d, {"particles": 5, "step_size": h, "chunk_size": chunk_size})
    scheme.model.decoder.head.bias.assign(np.linspace(-1, 1, D).astype(np.float32))
    seed = next_step_seed(scheme)
    noise = scheme.particle_noise(seed).astype(np.float64)
    expected = normal_langevin_expected(scheme, images, h, noise)
    tf.function(scheme.update_all_particles)(seed)
    np.testing.assert_allclose(scheme.particle_cloud.numpy(), expected, rtol=1e-4, atol=1e-5)


def test_train_step_moves_particles_with_theta_k_then_updates_theta():
    """Within one step the particles use theta_k (before the RMSprop update), and theta moves."""
    M, D, d, h = 6, 4, 2, 0.02
    images = np.random.default_rng(4).normal(size=(M, 1, D, 1)).astype(np.float32)
    scheme = make_pga(images, d, {"particles": 3, "step_size": h, "chunk_size": 4}, batch_size=3)
    W0, b0 = linear_theta(scheme)
    expected = normal_langevin_expected(scheme, images, h, replayed_noise(scheme))
    idx = np.array([4, 0, 2])
    out = scheme.standalone_step(tf.constant(images[idx]), tf.constant(idx, tf.int64))
    np.testing.assert_allclose(scheme.particle_cloud.numpy(), expected, rtol=1e-4, atol=1e-5)
    W1, b1 = linear_theta(scheme)
    assert np.abs(W1 - W0).max() > 0 and np.abs(b1 - b0).max() > 0
    assert set(out) >= {"loss", "log_joint", "log_prior", "log_likelihood", "cloud_mean_norm",
                        "cloud_std", "particle_spread"}
    assert float(out["loss"]) == pytest.approx(-float(out["log_joint"]))


def test_particle_gradients_are_per_particle_with_batch_norm_in_inference_mode():
    """The decoder of Kuntz et al. (2023) has batch norm: the particle update runs it in inference
    mode, so a particle's gradient does not depend on which other particles share its chunk (in
    training mode, the batch statistics would couple them)."""
    M = 6
    images = np.random.default_rng(8).uniform(-1, 1, size=(M, 8, 8, 1)).astype(np.float32)
    scheme = make_pga(images, 3, {"particles": 2, "chunk_size": 4},
                      decoder={"name": "residual_decoder", "channels": 4, "residual_layers": 1},
                      batch_size=3, pixel_range=(-1.0, 1.0))
    scheme.standalone_step(tf.constant(images[:3]), tf.constant([0, 1, 2], tf.int64))  # moves BN stats
    X = tf.convert_to_tensor(scheme.particle_cloud)
    together = scheme.log_joint_gradient(X, tf.constant(images)).numpy()
    alone = scheme.log_joint_gradient(X[2:3], tf.constant(images[2:3])).numpy()
    np.testing.assert_allclose(together[2:3], alone, rtol=1e-4, atol=1e-5)

    def training_mode_gradient(x, y):
        z = tf.transpose(x, [1, 0, 2])
        with tf.GradientTape() as tape:
            tape.watch(z)
            total = tf.reduce_sum(scheme.model.log_joint(z, y, training=True))
        return tf.transpose(tape.gradient(total, z), [1, 0, 2]).numpy()

    coupled = training_mode_gradient(X, tf.constant(images))[2:3]
    assert np.abs(coupled - training_mode_gradient(X[2:3], tf.constant(images[2:3]))).max() > 1e-3


# --------------------------------------------------------------------------- (c) the decoder

@pytest.mark.parametrize("latent_dim,channels,likelihood,expected", [
    (10, 1, {"name": "normal", "sigma": 0.3}, 300_161),       # Kuntz et al. (2023), MNIST
    (64, 3, {"name": "normal", "sigma": 0.3}, 357_507),       # Kuntz et al. (2023), CelebA
    (10, 1, {"name": "normal", "scale": "per_pixel"}, 300_161 + 64 * 16 + 1),  # head from k = 2
])
def test_residual_decoder_parameter_counts(latent_dim, channels, likelihood, expected):
    cfg = from_dict({"data": {"pixel_range": "[-1,1]", "val_split": ""},
                     "model": {"prior": {"dim": latent_dim},
                               "decoder": {"name": "residual_decoder"},
                               "likelihood": likelihood},
                     "inference": {"scheme": "pga"}, "evaluate": []})
    model = build_model(cfg, (32, 32, channels), (-1.0, 1.0))
    count = sum(int(np.prod(v.shape)) for v in model.decoder.trainable_variables)
    assert count == expected
    out = model.decode(tf.zeros([2, latent_dim]))
    assert out.shape == (2, 32, 32, model.likelihood.output_channels())
    assert float(tf.reduce_max(tf.abs(out))) < 1.0  # tanh head


def test_residual_decoder_config_round_trip_and_identity_head():
    from tfgen.models.networks import ResidualDecoder

    dec = ResidualDecoder((28, 28, 2), channels=8, projection_channels=2, residual_layers=1,
                          final_activation="identity")
    z = tf.random.normal([3, 5])
    y = dec(z)
    clone = ResidualDecoder.from_config(dec.get_config())
    clone(z)
    clone.set_weights(dec.get_weights())
    np.testing.assert_allclose(clone(z).numpy(), y.numpy(), rtol=1e-5, atol=1e-6)
    assert y.shape == (3, 28, 28, 2) and float(tf.reduce_max(tf.abs(y))) > 0


# --------------------------------------------------------------------------- (d) all vs batch

@pytest.mark.parametrize("mode", ["all", "batch"])
def test_all_moves_every_particle_batch_only_the_batch(mode):
    M, D, d = 10, 4, 2
    images = np.random.default_rng(5).normal(size=(M, 1, D, 1)).astype(np.float32)
    scheme = make_pga(images, d, {"particles": 3, "particle_update": mode, "chunk_size": 4},
                      batch_size=3)
    before = scheme.particle_cloud.numpy()
    idx = np.array([7, 1, 3])
    scheme.standalone_step(tf.constant(images[idx]), tf.constant(idx, tf.int64))
    moved = np.any(scheme.particle_cloud.numpy() != before, axis=(1, 2))
    if mode == "all":
        assert moved.all()
    else:
        assert moved[idx].all() and not moved[np.setdiff1d(np.arange(M), idx)].any()


@pytest.mark.parametrize("mode", ["all", "batch"])
def test_xla_step_equals_the_graph_step(mode):
    """The fused step compiles with jit_compile (chunk loop, gathers, scatter) and computes the
    same update as graph mode, with Kuntz et al.'s (2023) decoder's batch norm and custom conv
    gradient. XLA draws different normals from the same generator state than TF's kernels, so each
    mode's noise is replayed in that mode and taken out before comparing."""
    images = np.random.default_rng(9).uniform(-1, 1, size=(5, 8, 8, 1)).astype(np.float32)
    idx = np.array([0, 3, 4])
    h = 1e-3
    results = []
    for compile_mode in ["graph", "xla"]:
        scheme = make_pga(images, 3, {"particles": 2, "chunk_size": 2, "particle_update": mode,
                                      "step_size": h},
                          decoder={"name": "residual_decoder", "channels": 4, "residual_layers": 1},
                          batch_size=3, pixel_range=(-1.0, 1.0), compile_mode=compile_mode)
        seed = next_step_seed(scheme)
        rows = idx if mode == "batch" else np.arange(len(images))
        if mode == "batch":  # per image of the batch (sorted by the trainer; here as given)
            draw = lambda: single_replica_batch(seed, tf.constant(idx)).normal(
                [2, 3], SALT_LANGEVIN)
        else:  # per chunk of rows
            draw = lambda: tf.concat([scheme.chunk_noise(seed, j) for j in range(3)], 0)[:5]
        noise = tf.function(draw, jit_compile=compile_mode == "xla")().numpy()
        before = scheme.particle_cloud.numpy()
        out = scheme.standalone_step(tf.constant(images[idx]), tf.constant(idx, tf.int64))
        after = scheme.particle_cloud.numpy()
        drift = after.copy()
        drift[rows] -= math.sqrt(2 * h) * noise
        results.append((drift, before, float(out["loss"]), [v.numpy() for v in scheme.model.theta]))
    (drift_g, before_g, loss_g, theta_g), (drift_x, before_x, loss_x, theta_x) = results
    np.testing.assert_array_equal(before_g, before_x)  # the same initial cloud
    np.testing.assert_allclose(drift_x, drift_g, rtol=1e-4, atol=1e-5)
    assert np.abs(drift_g - before_g).max() > 1e-4  # the drift did move the particles
    assert loss_x == pytest.approx(loss_g, rel=1e-5)
    # RMSprop's first step is +-lr * 1.05 wherever the gradient is only float noise (conv
    # biases in front of batch norm have zero gradient): allow that much, lr = h M lambda
    lr = h * len(images) * 1e-3
    for a, b in zip(theta_x, theta_g):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=2.2 * lr)


# --------------------------------------------------------------------------- sampler

def test_particle_gaussian_fits_the_cloud_and_samples_from_it():
    rng = np.random.default_rng(6)
    A = np.array([[1.0, 0.0, 0.0], [0.8, 0.5, 0.0], [0.0, -0.3, 0.2]])
    cloud = rng.normal(size=(4000, 3)) @ A.T + np.array([2.0, -1.0, 0.5])
    mean, cov = samplers.particle_gaussian(cloud)
    np.testing.assert_allclose(mean, cloud.mean(0))
    np.testing.assert_allclose(cov, np.cov(cloud.T, ddof=1))  # 1 / (NM - 1), Kuntz et al. (2023)
    z = samplers.sample_particle_gaussian(cloud, 20000, seed=1).numpy()
    np.testing.assert_allclose(z.mean(0), mean, atol=0.03)
    np.testing.assert_allclose(np.cov(z.T), cov, atol=0.03)
    again = samplers.sample_particle_gaussian(cloud, 5, seed=1).numpy()
    np.testing.assert_array_equal(again, z[:5])  # reproducible from the seed


def test_config_rejects_particle_gaussian_without_a_cloud_and_posterior_tasks_for_pga():
    base = {"data": {"binarize": "static"}, "inference": {"scheme": "gan"}}  # no cloud, no encoder
    with pytest.raises(ConfigError) as err:
        from_dict({**base, "evaluate": [{"task": "samples", "sampler": "particle_gaussian"}]})
    assert err.value.key == "evaluate[0].sampler" and "'prior'" in err.value.allowed
    vae = {"data": {"binarize": "static"}}  # the Gaussian is fitted to the encoder's means
    assert from_dict({**vae, "evaluate": [{"task": "samples", "sampler": "particle_gaussian"}]})
    with pytest.raises(ConfigError) as err:
        from_dict({**base, "evaluate": [{"task": "inpainting",
                                         "fit": {"sampler": "particle_gaussian"}}]})
    assert err.value.key == "evaluate[0].fit.sampler"
    pga = {"data": {"val_split": ""}, "model": {"likelihood": {"name": "normal"}},
           "inference": {"scheme": "pga"}}
    for task in ["elbo", "reconstructions", "log_likelihood"]:  # through a q fitted at test time
        assert from_dict({**pga, "evaluate": [{"task": task}]}).evaluate[0].name == task
    with pytest.raises(ConfigError) as err:
        from_dict({**pga, "inference": {"scheme": "pga", "posterior_fit": {"method": "map"}}})
    assert err.value.key == "inference.posterior_fit.method" and err.value.allowed == "'svi'"
    with pytest.raises(ConfigError) as err:
        from_dict({**pga, "inference": {"scheme": "pga", "posterior_fit": {"init": "encoder"}}})
    assert err.value.key == "inference.posterior_fit.init" and "'vae'" in err.value.allowed
    defaults = [c.name for c in from_dict(pga).evaluate]  # scheme-dependent defaults
    assert "elbo" not in defaults and "inpainting" in defaults and "samples" in defaults
    assert [c.name for c in from_dict(vae).evaluate] == ["elbo", "reconstructions", "samples", "curves"]


@pytest.mark.parametrize("key,value", [
    ("particles", 0), ("step_size", 0.0), ("theta_scale", -1.0), ("particle_update", "some"),
    ("chunk_size", 0), ("rmsprop_rho", 1.0), ("rmsprop_epsilon", 0.0), ("summary_images", 100),
])
def test_bad_pga_values_name_the_key(key, value):
    with pytest.raises(ConfigError) as err:
        from_dict({"data": {"val_split": ""}, "model": {"likelihood": {"name": "normal"}},
                   "inference": {"scheme": "pga", key: value}})
    assert err.value.key == f"inference.{key}" and err.value.allowed


def test_bad_inpainting_and_decoder_values_name_the_key():
    pga = {"data": {"val_split": "", "test_split": ""}, "model": {"likelihood": {"name": "normal"}},
           "inference": {"scheme": "pga"}}
    cases = [({"evaluate": [{"task": "inpainting", "mask": "middle"}]}, "evaluate[0].mask"),
             ({"evaluate": [{"task": "inpainting", "fraction": 1.5}]}, "evaluate[0].fraction"),
             ({"evaluate": [{"task": "inpainting", "split": "test"}]}, "evaluate[0].split"),
             ({"model": {"likelihood": {"name": "normal"},
                         "decoder": {"name": "residual_decoder", "kernels": [5]}}},
              "model.decoder.kernels"),
             ({"model": {"likelihood": {"name": "normal"},
                         "decoder": {"name": "residual_decoder", "kernels": [4, 3]}}},
              "model.decoder.kernels"),
             ({"model": {"likelihood": {"name": "normal"},
                         "decoder": {"name": "residual_decoder", "final_activation": "relu"}}},
              "model.decoder.final_activation")]
    for extra, key in cases:
        with pytest.raises(ConfigError) as err:
            from_dict({**pga, **extra})
        assert err.value.key == key, (extra, err.value)


# --------------------------------------------------------------------------- (f) inpainting

def test_masks_have_the_seed_geometry_and_fractions():
    center = inpainting.hidden_mask("center", 2, 32, 32)
    rows, cols = np.nonzero(center[0])
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (10, 21, 10, 21)  # Kuntz et al. 2023
    assert center.sum() == 2 * 12 * 12 and center.shape == (2, 32, 32)
    left = inpainting.hidden_mask("left_half", 1, 28, 28)[0]
    assert left[:, :14].all() and not left[:, 14:].any()
    assert inpainting.hidden_mask("right_half", 1, 28, 28)[0][:, 14:].all()
    top = inpainting.hidden_mask("top_half", 1, 28, 30)[0]
    assert top[:14].all() and not top[14:].any()
    assert inpainting.hidden_mask("bottom_half", 1, 28, 30)[0][14:].all()
    random = inpainting.hidden_mask("random", 5, 32, 32, fraction=0.3, seed=2)
    assert (random.reshape(5, -1).sum(1) == round(0.3 * 1024)).all()
    assert not (random[0] == random[1]).all()  # every image its own pixels
    np.testing.assert_array_equal(random, inpainting.hidden_mask("random", 5, 32, 32, 0.3, seed=2))


def test_inpainting_recovers_hidden_pixels_of_a_linear_model():
    """Images generated noise-free by a linear decoder from known latents: fitting the
    observed half (Kuntz et al. 2023, eq. (4): mle with Adam) recovers the hidden half (hidden-pixel
    MSE ~ 0), whereas a single Adam step from the prior does not."""
    from tfgen.inference.fitting import FitConfig
    from tfgen.inference.latents import LatentOptimizerConfig

    M, H, W, d = 6, 4, 4, 3
    images = np.zeros((M, H, W, 1), np.float32)
    scheme = make_pga(images, d, {"particles": 1})
    model = scheme.model
    rng = np.random.default_rng(7)
    model.decoder.head.kernel.assign(rng.normal(size=(d, H * W)).astype(np.float32))
    model.decoder.head.bias.assign(rng.normal(size=H * W).astype(np.float32))
    z_true = rng.normal(size=(M, d)).astype(np.float32)
    truth = model.likelihood.mean(model.decode(z_true)).numpy()
    hidden = inpainting.hidden_mask("left_half", M, H, W)
    fits = [FitConfig(method="mle", steps=steps, patience=0, init="sampler",
                      optimizer=LatentOptimizerConfig("adam", learning_rate=0.05))
            for steps in (1500, 1)]
    recovered, one_step = (inpainting.complete(scheme, truth, hidden, fit, "mean", seed=0,
                                               compile_mode="graph").completion for fit in fits)
    assert inpainting.masked_mse(recovered, truth, hidden) < 1e-4
    assert inpainting.masked_mse(one_step, truth, hidden) > 0.1
    manual = ((recovered - truth) ** 2)[hidden[..., None]].mean()
    assert inpainting.masked_mse(recovered, truth, hidden) == pytest.approx(manual, rel=1e-6)
    grid = inpainting.completion_grid(truth, hidden, recovered, None, 3, (0.0, 1.0))
    assert grid.shape == (2 * 3 * (H + 2) + 2, 3 * (W + 2) + 2, 1)  # 2 blocks of 3 rows


def test_inpainting_task_runs_for_a_vae(tmp_path):
    """No encoder is involved: the task works for any scheme (here the VAE), with metrics
    and a figure."""
    from tfgen.evaluation.tasks import EvalContext

    images = np.random.default_rng(10).uniform(size=(4, 6, 6, 1)).astype(np.float32)
    scheme = build_in_memory({"data": {"val_split": ""}, "model": {
        "prior": {"dim": 2}, "decoder": {"name": "mlp", "hidden": [8]},
        "likelihood": {"name": "normal"}}, "inference": {"scheme": "vae", "encoder": {
            "name": "mlp", "hidden": [8]}}, "train": {"compile": "graph"},
        "evaluate": [{"task": "inpainting", "split": "train", "mask": "random", "fraction": 0.25,
                      "fit": {"steps": 3}, "num_images": 3}]}, images)
    cfg, data = scheme.cfg, scheme.data
    ctx = EvalContext(cfg, scheme, data, tmp_path, [], 0)
    metrics = inpainting.inpainting_task(cfg.evaluate[0].params, ctx)
    mse = {"inpainting_random_train_hidden_mse", "inpainting_random_train_observed_mse"}
    assert mse <= set(metrics)
    assert all(np.isfinite(metrics[k]) and metrics[k] > 0 for k in mse)
    assert (tmp_path / "figures" / "inpainting_random_train.png").is_file()


# --------------------------------------------------------------------------- (e) tfgen run

def pga_config(idx_folder: Path, out: Path, epochs: int, compile_mode: str = "graph") -> str:
    return tiny_residual_run("tiny_pga", idx_folder, out) + f"""
[inference]
scheme = "pga"
particles = 2
step_size = 1e-3
theta_scale = 1e-2
chunk_size = 20

[train]
epochs = {epochs}
batch_size = 16
compile = "{compile_mode}"
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
task = "curves"
"""


@pytest.mark.parametrize("compile_mode", ["graph", "xla"])  # the PGA experiments use XLA
def test_tfgen_run_checkpoints_the_cloud_and_resumes_exactly(tmp_path, idx_folder, compile_mode):
    straight, pieces = tmp_path / "straight", tmp_path / "pieces"
    for out, epochs in [(straight, 2), (pieces, 1)]:
        config = tmp_path / f"{out.name}.toml"
        config.write_text(pga_config(idx_folder, out, epochs, compile_mode))
        result = run_cli("run", str(config), "--quiet")
        assert result.returncode == 0, result.stderr
    run_dir = next((pieces / "tiny_pga").iterdir())
    assert run_cli("run", "--resume", str(run_dir), "--quiet", "--set",
                   "train.epochs=2").returncode == 0
    straight_dir = next((straight / "tiny_pga").iterdir())

    latest = tf.train.latest_checkpoint(str(straight_dir / "checkpoints"))
    variables = dict(tf.train.list_variables(latest))
    cloud_keys = [k for k in variables if k.startswith("latents/values/")]
    assert len(cloud_keys) == 1 and variables[cloud_keys[0]] == [48, 2, 3]
    # one RMSprop velocity per theta variable: linear 2 + BN 2 + projection conv 1 + BN 2
    # + one residual layer 2 x (conv 2 + BN 2) + head 2 = 17
    slots = [k for k in variables if k.startswith("theta_optimizer/_variables/")]
    assert len(slots) == 17, slots
    assert not any("train_images" in k for k in variables)

    # resumed after epoch 1 == uninterrupted: the cloud, theta and the RMSprop slots
    checkpoints = [tf.train.latest_checkpoint(str(d / "checkpoints")) for d in (straight_dir, run_dir)]
    for key in cloud_keys + slots + [k for k in variables if k.startswith("model/decoder")]:
        a, b = (tf.train.load_variable(c, key) for c in checkpoints)
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=key)

    metrics = json.loads((straight_dir / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["train"]["steps"] == 4
    assert math.isfinite(metrics["evaluation"]["inpainting_center_test_hidden_mse"])
    for name in ["samples_particle_gaussian.png", "inpainting_center_test.png", "loss_curves.png"]:
        assert (straight_dir / "figures" / name).is_file(), name
    from tensorboard.backend.event_processing import event_accumulator

    acc = event_accumulator.EventAccumulator(str(straight_dir / "tensorboard"),
                                             size_guidance={event_accumulator.TENSORS: 0})
    acc.Reload()
    tags = set(acc.Tags()["tensors"])
    for tag in ["train/loss", "train/log_joint", "train/cloud_mean_norm", "cloud/std_per_dimension",
                "images/particles_decoded", "images/samples_particle_gaussian",
                "eval/inpainting_center_test_hidden_mse"]:
        assert tag in tags, (tag, sorted(tags))


def test_step_traces_once_across_steps(tmp_path):
    """One compiled step: equal-size batches reuse the trace (no retracing per step)."""
    M, D, d = 12, 4, 2
    images = np.random.default_rng(11).normal(size=(M, 1, D, 1)).astype(np.float32)
    scheme = make_pga(images, d, {"particles": 2, "chunk_size": 5}, batch_size=4)
    for start in (0, 4, 8, 0):
        idx = np.arange(start, start + 4)
        scheme.standalone_step(tf.constant(images[idx]), tf.constant(idx, tf.int64))
    assert scheme.standalone_step.experimental_get_tracing_count() == 1


def test_pga_celeba_experiment_runs_on_a_flat_rgb_image_folder(tmp_path):
    """experiments/pga_celeba.toml as shipped (TFDS name, offline fallback to data.path), on a
    flat folder of non-square RGB images (like img_align_celeba/), shrunk with --set."""
    folder = tmp_path / "img_align_celeba"
    folder.mkdir()
    rng = np.random.default_rng(12)
    for i in range(24):
        image = rng.integers(0, 256, size=(22, 18, 3), dtype=np.uint8)
        tf.io.write_file(str(folder / f"{i:06d}.jpg"), tf.io.encode_jpeg(image))
    experiment = Path(__file__).resolve().parent.parent / "experiments" / "pga_celeba.toml"
    result = run_cli("run", str(experiment), "--quiet",
                     "--set", f'experiment.output_dir="{tmp_path / "runs"}"',
                     "--set", f'data.path="{folder}"', "--set", "data.subsample=16",
                     "--set", "model.decoder.channels=4", "--set", "inference.particles=2",
                     "--set", "train.epochs=1", "--set", "train.batch_size=8",
                     "--set", "train.compile=graph", "--set", "logging.images_every_steps=1")
    assert result.returncode == 0, result.stderr
    run_dir = next((tmp_path / "runs" / "pga_celeba").iterdir())
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["train"]["steps"] == 2
    assert math.isfinite(metrics["evaluation"]["inpainting_center_train_hidden_mse"])
    for name in ["samples_particle_gaussian.png", "samples_prior.png", "inpainting_center_train.png"]:
        assert (run_dir / "figures" / name).is_file(), name
