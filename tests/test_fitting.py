"""Test-time fitting of latents against the closed forms of a linear-Gaussian decoder.

For z ~ N(0, I_d), y | z ~ N(W z + b, s^2 I_D) the posterior is Gaussian with precision
P = I + W^T W / s^2 and mean mu = P^-1 W^T (y - b) / s^2 (Bishop 2006, eq. (2.116)); the
best diagonal Gaussian q (minimising KL(q || p(z | y)), i.e. maximising the ELBO) has the
same mean and variances 1 / P_ii (Bishop 2006, eq. (10.12)-(10.13)); the MAP is mu and the
MLE (lambda = 0) is the least-squares solution (W^T W)^-1 W^T (y - b).
"""
from __future__ import annotations

import numpy as np
import pytest

from conftest import build_in_memory
from tfgen.inference.fitting import FitConfig, LatentFitter
from tfgen.inference.latents import LatentOptimizerConfig

D, d, SIGMA = 6, 2, 0.5


@pytest.fixture(scope="module")
def linear_scheme():
    rng = np.random.default_rng(0)
    images = rng.normal(size=(8, 1, D, 1)).astype(np.float32)
    scheme = build_in_memory({
        "data": {"val_split": ""},
        "model": {"prior": {"dim": d}, "decoder": {"name": "mlp", "hidden": []},
                  "likelihood": {"name": "normal", "sigma": SIGMA}},
        "inference": {"scheme": "pga", "particles": 1}, "train": {"compile": "graph"},
        "evaluate": []}, images)
    head = scheme.model.decoder.head
    W = rng.normal(size=(D, d)) * np.array([1.5, 0.7])
    b = rng.normal(size=D) * 0.3
    head.kernel.assign(W.T.astype(np.float32))
    head.bias.assign(b.astype(np.float32))
    return scheme, W, b, images


def exact_posterior(W, b, y):
    precision = np.eye(d) + W.T @ W / SIGMA**2
    mean = np.linalg.solve(precision, W.T @ (y - b).T / SIGMA**2).T
    return mean, precision


def fit(scheme, images, observed=None, **kwargs):
    optimizer = kwargs.pop("optimizer", {})
    config = FitConfig(optimizer=LatentOptimizerConfig(**optimizer), **kwargs)
    return LatentFitter(scheme, config, "graph").fit(images, observed, seed=4)


def test_svi_matches_the_posterior_mean_and_the_diagonal_optimum(linear_scheme):
    scheme, W, b, images = linear_scheme
    # many samples keep Adam's stochastic jitter below the tolerance
    result = fit(scheme, images, method="svi", steps=4000, patience=0, mc_samples=256,
                 optimizer={"learning_rate": 0.02})
    mean, precision = exact_posterior(W, b, images.reshape(len(images), D))
    np.testing.assert_allclose(result.mean, mean, atol=0.03)
    diagonal_optimum = 1 / np.diag(precision)
    np.testing.assert_allclose(result.scale**2, np.tile(diagonal_optimum, (len(images), 1)),
                               rtol=0.08)
    # the tolerance tells it from the exact posterior's marginal variances (22% larger here)
    assert np.all(np.diag(np.linalg.inv(precision)) > 1.15 * diagonal_optimum)


def test_map_finds_the_mode_and_mle_the_least_squares_solution(linear_scheme):
    scheme, W, b, images = linear_scheme
    y = images.reshape(len(images), D)
    mode = fit(scheme, images, method="map", steps=3000, patience=0,
               optimizer={"learning_rate": 0.02})
    np.testing.assert_allclose(mode.mean, exact_posterior(W, b, y)[0], atol=2e-3)
    mle = fit(scheme, images, method="mle", steps=3000, patience=0,
              optimizer={"learning_rate": 0.02})
    least_squares = np.linalg.lstsq(W, (y - b).T, rcond=None)[0].T
    np.testing.assert_allclose(mle.mean, least_squares, atol=2e-3)


@pytest.mark.parametrize("method", ["svi", "map", "langevin"])
def test_fitting_in_a_batch_equals_fitting_one_at_a_time(linear_scheme, method):
    """Noise and initial values are drawn per image id, and early stopping is per image."""
    scheme, _, _, images = linear_scheme
    config = FitConfig(method=method, steps=200, patience=10, min_delta=1e-3,
                       optimizer=LatentOptimizerConfig(learning_rate=0.05))
    fitter = LatentFitter(scheme, config, "graph")
    together = fitter.fit(images, seed=9)
    for i in [0, 3, 7]:
        alone = fitter.fit(images[i:i + 1], seed=9, ids=[i], num_ids=len(images))
        np.testing.assert_allclose(alone.mean, together.mean[i:i + 1], rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(alone.steps, together.steps[i:i + 1])
    if method != "langevin":
        assert len(set(together.steps.tolist())) > 1  # images stopped at their own steps


def test_hidden_pixels_do_not_change_the_fit(linear_scheme):
    scheme, _, _, images = linear_scheme
    observed = np.zeros(images.shape[:3], bool)
    observed[:, :, : D // 2] = True
    changed = images.copy()
    changed[:, :, D // 2:] = 100.0  # wild values where nothing is observed
    a = fit(scheme, images, observed, method="svi", steps=100, patience=0)
    b_ = fit(scheme, changed, observed, method="svi", steps=100, patience=0)
    np.testing.assert_array_equal(a.mean, b_.mean)
    np.testing.assert_array_equal(a.objective, b_.objective)
    c = fit(scheme, changed, None, method="svi", steps=100, patience=0)
    assert np.abs(c.mean - a.mean).max() > 0.1  # observed, those values would matter
