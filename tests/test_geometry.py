"""Latent geometry (Arvanitidis, Hansen & Hauberg 2018; Grisi & Darcet 2020) against closed forms:
the metric of linear and spherical decoders, per-point Jacobians, straight and great-circle
geodesics, the random walk's step covariance, geodesic clustering across a cliff, the RBF precision
fit; and the tasks end to end."""
from __future__ import annotations

import json

import numpy as np
import pytest
import tensorflow as tf
from scipy import stats

from conftest import blob_images, build_in_memory, run_cli
from tfgen.geometry import clustering, curves
from tfgen.geometry.geodesics import GeodesicSolver, initial_velocity, shoot
from tfgen.geometry.metric import ExpectedMetric, decoder_embedding, log_magnification
from tfgen.geometry.precision import RBFPrecisionConfig, fit_rbf_precision, precision_model
from tfgen.geometry.random_walk import random_walks
from tfgen.models.kmeans import kmeans
from tfgen.models.likelihoods import NormalConfig, NormalLikelihood
from tfgen.models.model import GenerativeModel
from tfgen.models.priors import StandardNormalConfig, StandardNormalPrior

D, d = 6, 3
RNG = np.random.default_rng(0)


@pytest.fixture(scope="module")
def linear():
    """y = W z + b with a fixed-sigma Normal: M = W^T W everywhere."""
    images = RNG.normal(size=(8, 1, D, 1)).astype(np.float32)
    scheme = build_in_memory({
        "data": {"val_split": ""},
        "model": {"prior": {"dim": d}, "decoder": {"name": "mlp", "hidden": []},
                  "likelihood": {"name": "normal", "sigma": 0.5}},
        "inference": {"scheme": "vae", "encoder": {"name": "mlp", "hidden": [4]}},
        "train": {"compile": "graph"}, "evaluate": []}, images)
    W = RNG.normal(size=(D, d)) * np.array([2.0, 1.0, 0.3])
    head = scheme.model.decoder.head
    head.kernel.assign(W.T.astype(np.float32))
    head.bias.assign(RNG.normal(size=D).astype(np.float32))
    return scheme.model, W


def test_linear_decoder_metric_is_w_transpose_w_everywhere(linear):
    model, W = linear
    z = RNG.normal(scale=3.0, size=(500, d)).astype(np.float32)
    for mode in ["auto", "reverse"]:
        metric = ExpectedMetric(decoder_embedding(model), d, mode, max_evaluations=64, compile_mode="graph")
        assert metric.mode == ("forward" if mode == "auto" else "reverse")  # d = 3 <= P = 6
        np.testing.assert_allclose(metric(z).numpy(), np.broadcast_to(W.T @ W, (500, d, d)),
                                   rtol=1e-4, atol=1e-5)


def reference_metric(model, likelihood_name, z):
    """Per point: J_mu^T J_mu + J_sigma^T J_sigma (Theorem 1) from GradientTape.jacobian of
    the TFP distribution's own mean and stddev (the Categorical's level moments by hand)."""
    lik = model.likelihood
    low, width = lik.low, lik.high - lik.low
    out = []
    for point in z:
        point = tf.constant(point[None])
        with tf.GradientTape(persistent=True) as tape:
            tape.watch(point)
            params = model.decoder(point, training=False)
            if likelihood_name == "categorical":
                probs = tf.nn.softmax(lik._logits(params))
                levels = tf.linspace(low, lik.high, lik.bins)
                mean = tf.reduce_sum(probs * levels, -1)
                std = tf.sqrt(tf.reduce_sum(probs * levels ** 2, -1) - mean ** 2)
            else:
                dist = lik._pixel_distribution(params)
                scale = width if likelihood_name in ("bernoulli", "beta") else 1.0
                mean = tf.cast(dist.mean(), tf.float32) * scale
                std = tf.cast(dist.stddev(), tf.float32) * scale
                std = std * tf.ones_like(mean)
            mean, std = tf.reshape(mean, [-1]), tf.reshape(std, [-1])
        total = np.zeros((d, d))
        for value in (mean, std):
            jac = tape.jacobian(value, point, unconnected_gradients="zero").numpy()[:, 0, :]
            total += jac.T @ jac
        out.append(total)
    return np.stack(out)


@pytest.mark.parametrize("likelihood,decoder", [
    ({"name": "normal", "scale": "per_pixel"}, {"name": "mlp", "hidden": [16], "activation": "tanh"}),
    ({"name": "normal", "scale": "fixed"}, {"name": "mlp", "hidden": [16], "activation": "tanh"}),
    ({"name": "bernoulli"}, {"name": "conv_decoder", "channels": [8, 4, 4]}),
    ({"name": "beta"}, {"name": "mlp", "hidden": [16], "activation": "softplus"}),
    ({"name": "categorical", "bins": 4}, {"name": "mlp", "hidden": [16], "activation": "tanh"}),
])
def test_batched_metric_equals_a_per_point_jacobian(likelihood, decoder):
    size = 28 if decoder["name"] == "conv_decoder" else 5
    images = RNG.uniform(size=(4, size, size, 1)).astype(np.float32)
    data = {"val_split": "", "binarize": "static" if likelihood["name"] == "bernoulli" else "none"}
    scheme = build_in_memory({
        "data": data, "model": {"prior": {"dim": d}, "decoder": decoder, "likelihood": likelihood},
        "inference": {"scheme": "vae", "encoder": {"name": "mlp", "hidden": [4]}},
        "train": {"compile": "graph"}, "evaluate": []}, images)
    model = scheme.model
    # two full chunks of 3 points and a padded one (the conv decoder: one full, one padded)
    z = RNG.normal(size=(7 if size == 5 else 4, d)).astype(np.float32)
    expected = reference_metric(model, likelihood["name"], z)
    embed = decoder_embedding(model)
    # 3 points per chunk; reverse mode on the small decoders
    modes = [("forward", 3 * d)] + ([("reverse", 10 ** 6)] if size == 5 else [])
    for mode, budget in modes:
        got = ExpectedMetric(embed, d, mode, budget, "graph")(z).numpy()
        np.testing.assert_allclose(got, expected, rtol=2e-4, atol=1e-6 * np.abs(expected).max())
    if likelihood.get("scale") == "per_pixel":   # the sigma term is really there
        sigma_free = reference_metric(model, "normal", z) - expected
        assert np.allclose(sigma_free, 0.0)


# --------------------------------------------------------------------------- geodesics

def test_constant_metric_geodesic_is_the_straight_line_with_mahalanobis_length(linear):
    model, W = linear
    embed = decoder_embedding(model)
    a = RNG.normal(scale=2.0, size=(16, d)).astype(np.float32)
    b = RNG.normal(scale=2.0, size=(16, d)).astype(np.float32)
    nodes, energy, _ = GeodesicSolver(embed, 10, compile_mode="graph")(a, b)
    nodes = nodes.numpy()
    line = np.linspace(0.0, 1.0, 11)[None, :, None] * (b - a)[:, None] + a[:, None]
    scale = np.linalg.norm(b - a, axis=-1)[:, None, None]
    assert np.abs(nodes - line).max() / scale.min() < 1e-3
    delta = b - a
    mahalanobis = np.sqrt(np.einsum("ni,ij,nj->n", delta, W.T @ W, delta))
    np.testing.assert_allclose(curves.riemannian_length(embed, tf.constant(nodes)).numpy(),
                               mahalanobis, rtol=1e-4)
    np.testing.assert_allclose(energy.numpy(), mahalanobis ** 2, rtol=1e-3)  # constant speed


class LatitudeLongitude(tf.Module):
    """A decoder onto the unit sphere: z = (latitude, longitude) -> a 1 x 3 'image'."""

    def __call__(self, z, training=False):
        lat, lon = z[:, 0], z[:, 1]
        xyz = tf.stack([tf.cos(lat) * tf.cos(lon), tf.cos(lat) * tf.sin(lon), tf.sin(lat)], -1)
        return tf.reshape(xyz, [-1, 1, 3, 1])


@pytest.fixture(scope="module")
def sphere():
    prior = StandardNormalPrior(StandardNormalConfig(dim=2))
    likelihood = NormalLikelihood(NormalConfig(scale="fixed", sigma=0.1), (1, 3, 1), (-1.0, 1.0))
    return decoder_embedding(GenerativeModel(prior, LatitudeLongitude(), likelihood, 2))


def test_sphere_metric_is_diag_1_cos2_latitude(sphere):
    z = np.stack([RNG.uniform(-1.2, 1.2, 200), RNG.uniform(-3, 3, 200)], -1).astype(np.float32)
    metric = ExpectedMetric(sphere, 2, compile_mode="graph")(z).numpy()
    expected = np.zeros((200, 2, 2))
    expected[:, 0, 0], expected[:, 1, 1] = 1.0, np.cos(z[:, 0]) ** 2
    np.testing.assert_allclose(metric, expected, atol=2e-6)
    np.testing.assert_allclose(np.exp(log_magnification(metric)), np.cos(z[:, 0]), rtol=1e-5)


@pytest.mark.parametrize("optimizer", ["lbfgs", "adam"])
def test_sphere_geodesics_are_great_circles(sphere, optimizer):
    # pairs at high latitudes and far apart in longitude: the straight latent line (along a
    # parallel) is much longer than the great circle, which bends towards the pole (and stays
    # below 75 degrees of latitude, away from the chart's singular poles)
    n = 24
    lat = RNG.uniform(0.4, 0.9, (n, 2)) * RNG.choice([-1, 1], (n, 1))
    lon = np.stack([RNG.uniform(-1.2, -0.4, n), RNG.uniform(0.4, 1.2, n)], -1)
    a = np.stack([lat[:, 0], lon[:, 0]], -1).astype(np.float32)
    b = np.stack([lat[:, 1], lon[:, 1]], -1).astype(np.float32)
    ga, gb = sphere(tf.constant(a)).numpy(), sphere(tf.constant(b)).numpy()
    great_circle = np.arccos(np.clip((ga * gb).sum(-1), -1.0, 1.0))
    nodes, _, _ = GeodesicSolver(sphere, 20, compile_mode="graph", optimizer=optimizer)(a, b)
    geodesic = curves.riemannian_length(sphere, nodes, 8).numpy()
    straight = curves.riemannian_length(sphere, curves.straight_lines(tf.constant(a), tf.constant(b), 20), 8).numpy()
    np.testing.assert_allclose(geodesic, great_circle, rtol=2e-3)
    assert (straight / great_circle).max() > 1.05      # the test can tell a line from a geodesic
    if optimizer == "adam":
        return
    # the geodesic ODE, shot from the energy solution, lands on b along a curve of the same length
    shot = shoot(sphere, a[:4], b[:4], initial_velocity(nodes.numpy()[:4]), 40, 3, "graph")
    assert shot["miss"][:, -1].max() < 1e-4
    ode_length = curves.riemannian_length(sphere, tf.constant(shot["path"]), 2).numpy()
    np.testing.assert_allclose(ode_length, great_circle[:4], rtol=2e-3)


# --------------------------------------------------------------------------- walks, clusters

def test_riemannian_walk_steps_have_covariance_scaled_inverse_metric(linear):
    model, W = linear
    embed = decoder_embedding(model)
    start = np.zeros((400, d), np.float32)
    paths = random_walks(embed, start, 10, 0.1, 2.0, seed=5, compile_mode="graph")
    steps = {k: np.diff(v.numpy(), axis=1).reshape(-1, d) for k, v in paths.items()}
    expected = 0.1 ** 2 * 2.0 * np.linalg.inv(W.T @ W)
    got = np.cov(steps["riemannian"].T)
    assert np.abs(got - expected).max() < 0.1 * np.abs(expected).max()
    np.testing.assert_allclose(np.cov(steps["euclidean"].T), 0.01 * np.eye(d), atol=1.5e-3)


def cliff(z):
    """A plane with a cliff of height 10 along z1 = 0: crossing it costs ~10."""
    return tf.concat([z, 10.0 * tf.sigmoid(20.0 * z[:, :1])], axis=-1)


def test_geodesic_kmedoids_separates_what_a_cliff_separates():
    # two long thin strips either side of the cliff: Euclidean k-means cuts them across
    n = 100
    left = np.stack([RNG.uniform(-0.35, -0.15, n), RNG.uniform(-3, 3, n)], -1)
    right = np.stack([RNG.uniform(0.15, 0.35, n), RNG.uniform(-3, 3, n)], -1)
    points = np.concatenate([left, right]).astype(np.float32)
    labels = np.repeat([0, 1], n)
    dist, _ = clustering.graph_geodesic_distances(cliff, points, 8, 4, "graph")
    assert np.all(np.isfinite(dist)) and dist[0, n:].min() > 9.0
    geodesic = clustering.kmedoids(dist, 2, seed=0, restarts=5)[0]
    euclidean = kmeans(points, 2, seed=0, restarts=5)[0]
    assert clustering.purity(geodesic, labels) == 1.0
    assert clustering.purity(euclidean, labels) < 0.75
    assert clustering.purity([0, 0, 1, 1, 1], [3, 3, 3, 4, 4]) == pytest.approx(0.8)


# --------------------------------------------------------------------------- RBF precision

def test_rbf_precision_fits_the_residual_variance_and_grows_away_from_the_data(linear):
    model, _ = linear
    # two clusters of latents; pixel i has residual sd s_i near the data
    centres = np.array([[-2.0, 0.0, 0.0], [2.0, 0.0, 0.0]])
    latents = (centres[RNG.integers(2, size=4000)] + 0.3 * RNG.normal(size=(4000, d))).astype(np.float32)
    sd = np.linspace(0.05, 0.4, D)
    residuals = (RNG.normal(size=(4000, D)) * sd) ** 2
    config = RBFPrecisionConfig(centres=8, max_sigma=2.0, steps=600, learning_rate=0.05)
    rbf, info = fit_rbf_precision(latents, residuals, config, min_sigma=1e-3, compile_mode="graph")
    assert info["nll_end"] < info["nll_start"]
    at_data = np.median(rbf.stddev(tf.constant(latents)).numpy(), axis=0)
    np.testing.assert_allclose(at_data, sd, rtol=0.1)
    far = rbf.stddev(tf.constant([[0.0, 8.0, 0.0], [12.0, 0.0, 0.0]], tf.float32)).numpy()
    assert far.min() > 0.95 * 2.0
    # the wrapped model's likelihood is N(mu(z), sigma(z)^2) with the trained mean
    variant = precision_model(model, rbf)
    z = tf.constant(latents[:5])
    y = RNG.normal(size=(5, 1, D, 1)).astype(np.float32)
    mean = model.likelihood.mean(model.decode(z)).numpy()
    expected = stats.norm.logpdf(y, mean, rbf.stddev(z).numpy().reshape(5, 1, D, 1)).reshape(5, -1).sum(1)
    np.testing.assert_allclose(variant.log_likelihood(z, tf.constant(y)).numpy(), expected, rtol=1e-5)


# --------------------------------------------------------------------------- the tasks

def test_pga_particles_are_the_data_latents_of_the_tasks(tmp_path):
    """A scheme without an encoder: latents = 'auto' on the training split takes the cloud,
    every particle labelled with its own image's label."""
    from tfgen.evaluation.tasks import EvalContext
    from tfgen.geometry.tasks.common import data_latents
    from tfgen.geometry.tasks.geodesic_kmeans import GeodesicKMeansConfig, geodesic_kmeans_task
    from tfgen.geometry.tasks.metric_map import MetricMapConfig, metric_map_task

    images, labels = blob_images(24, size=12)
    scheme = build_in_memory({
        "data": {"val_split": ""},
        "model": {"prior": {"dim": 2}, "decoder": {"name": "mlp", "hidden": [8]},
                  "likelihood": {"name": "normal", "sigma": 0.3}},
        "inference": {"scheme": "pga", "particles": 3}, "train": {"compile": "graph"},
        "evaluate": []}, images / 255.0, labels=labels)
    ctx = EvalContext(scheme.cfg, scheme, scheme.data, tmp_path, [], 0)
    data = data_latents(ctx, "train", "auto", 40)
    cloud = scheme.latent_cloud().numpy()
    rows = [int(np.flatnonzero((cloud == point).all(1))[0]) for point in data.points]
    np.testing.assert_array_equal(data.labels, labels[np.array(rows) // 3])
    np.testing.assert_array_equal(data.images, (images / 255.0).astype(np.float32)[np.array(rows) // 3])
    out = metric_map_task(MetricMapConfig(split="train", resolution=6), ctx)
    out.update(geodesic_kmeans_task(GeodesicKMeansConfig(
        split="train", num_points=30, restarts=2), ctx))
    assert np.isfinite(out["metric_map_log10_magnification_grid_median"])
    assert 0.0 < out["geodesic_kmeans_purity_geodesic_kmedoids"] <= 1.0
    assert (tmp_path / "figures" / "metric_map.png").is_file()



def geometry_config(idx_folder, out, likelihood: str) -> str:
    return f"""
[experiment]
name = "geo"
seed = 1
output_dir = "{out}"

[data]
source = "idx"
path = "{idx_folder}"
train_split = "train[:128]"
val_split = ""
test_split = "test"

[model.prior]
dim = 2

[model.decoder]
name = "mlp"
hidden = [32]

[model.likelihood]
{likelihood}

[inference]
scheme = "vae"

[inference.encoder]
name = "mlp"
hidden = [32]

[train]
epochs = 1
batch_size = 32

[[evaluate]]
task = "rbf_precision"
centres = 8
fit_images = 64
steps = 20
samples = 4
max_images = 8
resolution = 10

[[evaluate]]
task = "metric_map"
resolution = 12
variance = "both"

[[evaluate]]
task = "geodesics"
pairs = 6
steps = 20
segments = 6
show = 2
shooting = 2
ode_steps = 10
resolution = 10

[[evaluate]]
task = "random_walk"
walks = 2
steps = 6
show_every = 3
scale_points = 20
resolution = 10

[[evaluate]]
task = "geodesic_kmeans"
num_points = 30
restarts = 2
"""


def test_geometry_tasks_run_end_to_end(tmp_path, idx_folder):
    normal = 'name = "normal"\nscale = "per_pixel"\nmean_activation = "sigmoid"\nmin_sigma = 0.01'
    config = tmp_path / "geo.toml"
    config.write_text(geometry_config(idx_folder, tmp_path, normal))
    result = run_cli("run", str(config), "--quiet")
    assert result.returncode == 0, result.stderr
    run_dir = next((tmp_path / "geo").iterdir())
    evaluation = json.loads((run_dir / "metrics.json").read_text())["evaluation"]
    for key in ["metric_map_log10_magnification_grid_median",
                "metric_map_rbf_precision_log10_magnification_grid_median",
                "geodesics_length_ratio_median",
                "random_walk_riemannian_riemannian_step_mean",
                "geodesic_kmeans_purity_geodesic_kmedoids",
                "rbf_precision_test_log_likelihood_rbf_precision",
                "rbf_precision_test_log_likelihood_standard"]:
        assert np.isfinite(evaluation[key]), key
    # started at constant speed, the energy minimisation can only shorten a curve
    assert evaluation["geodesics_length_ratio_max"] <= 1.0 + 1e-3
    # the shooting check reports how many ODE solutions reached the end point
    assert 0.0 <= evaluation["geodesics_shooting_converged_fraction"] <= 1.0
    assert evaluation["geodesics_shooting_miss_median"] <= evaluation["geodesics_shooting_miss_max"]
    for name in ["metric_map_both", "geodesics", "geodesics_images", "random_walk_paths",
                 "random_walk_euclidean", "random_walk_riemannian", "geodesic_kmeans",
                 "rbf_precision_sigma"]:
        assert (run_dir / "figures" / f"{name}.png").is_file(), name
    assert (run_dir / "geometry" / "rbf_precision.npz").is_file()


def test_geometry_config_errors(tmp_path, idx_folder):
    config = tmp_path / "bad.toml"
    config.write_text(geometry_config(idx_folder, tmp_path, 'name = "bernoulli"').replace(
        'val_split = ""', 'val_split = ""\nbinarize = "static"')
        + '\n[[evaluate]]\ntask = "random_walk"\nlatents = "cloud"\nsplit = "train"\n')
    result = run_cli("validate", str(config))
    assert result.returncode == 2
    text = result.stdout + result.stderr
    assert "RBF precision replaces a Normal likelihood's sigma" in text
    assert "per-datapoint latents" in text and "latents = 'posterior'" in text
    assert not (tmp_path / "geo").exists()
