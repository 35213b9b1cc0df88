"""Learned priors (tfgen.models.priors): the mixture's density against SciPy, the RealNVP flow's
inverse and log-determinant against brute force, the Monte Carlo KL, and every prior under
every scheme it supports (refused, naming both sides, where it cannot)."""
from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from scipy import stats
from scipy.special import logsumexp

from conftest import build_in_memory
from tfgen.assemble import from_dict
from tfgen.schema import Component
from tfgen.errors import ConfigError
from tfgen.models.priors import (GaussianMixtureConfig, GaussianMixturePrior, RealNVPConfig,
                                 RealNVPPrior)


def test_the_mixture_prior_log_prob_is_scipys():
    prior = GaussianMixturePrior(GaussianMixtureConfig(dim=3, components=4, init_spread=2.0))
    rng = np.random.default_rng(0)
    prior.logits.assign(rng.normal(size=4).astype(np.float32))
    prior.raw_scales.assign(rng.normal(size=(4, 3)).astype(np.float32))
    z = rng.normal(size=(50, 3)) * 2
    weights = np.exp(prior.logits.numpy()) / np.exp(prior.logits.numpy()).sum()
    scales = 1e-3 + np.log1p(np.exp(prior.raw_scales.numpy().astype(np.float64)))
    expected = logsumexp([np.log(weights[k]) + stats.multivariate_normal(
        prior.means.numpy()[k], np.diag(scales[k] ** 2)).logpdf(z) for k in range(4)], axis=0)
    got = prior.distribution(tf.float64).log_prob(z).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    assert len(prior.trainable_variables) == 3


def randomized_flow(dim=5, layers=3) -> RealNVPPrior:
    prior = RealNVPPrior(RealNVPConfig(dim=dim, coupling_layers=layers, hidden=[16]))
    rng = np.random.default_rng(1)
    for net in prior.networks:  # away from the identity the flow starts as
        head = net.network.head
        head.kernel.assign(0.5 * rng.normal(size=head.kernel.shape).astype(np.float32))
        head.bias.assign(0.3 * rng.normal(size=head.bias.shape).astype(np.float32))
    return prior


def test_the_flow_inverts_and_its_log_det_is_the_brute_force_jacobians():
    prior = randomized_flow()
    u = tf.constant(np.random.default_rng(2).normal(size=(20, 5)), tf.float32)
    z = prior.bijector.forward(u)
    np.testing.assert_allclose(prior.bijector.inverse(z).numpy(), u.numpy(), atol=1e-5)
    fresh = tf.identity(u)  # bijectors cache forward(u): a new tensor is traced anew
    with tf.GradientTape() as tape:
        tape.watch(fresh)
        out = prior.bijector.forward(fresh)
    jacobian = tape.batch_jacobian(out, fresh).numpy().astype(np.float64)  # [20, 5, 5]
    brute = np.linalg.slogdet(jacobian)[1]
    np.testing.assert_allclose(prior.bijector.forward_log_det_jacobian(u, event_ndims=1).numpy(),
                               brute, rtol=1e-4, atol=1e-4)
    # log p(z) = log N(f^-1(z)) - log |det df/du|
    base = stats.multivariate_normal(np.zeros(5), np.eye(5)).logpdf(u.numpy())
    np.testing.assert_allclose(prior.distribution().log_prob(z).numpy(), base - brute,
                               rtol=1e-4, atol=1e-4)
    assert len(prior.trainable_variables) == 3 * 2 * 2  # 3 couplings x (hidden, out) x (W, b)


def test_every_dimension_is_transformed_by_the_alternating_masks():
    prior = randomized_flow(dim=4, layers=2)
    u = tf.constant(np.random.default_rng(3).normal(size=(8, 4)), tf.float32)
    moved = np.abs(prior.bijector.forward(u).numpy() - u.numpy()).min(axis=0)
    assert (moved > 0).all()


def test_the_monte_carlo_kl_matches_the_closed_form_for_a_flow_at_the_identity():
    """A fresh RealNVP prior is the identity flow on N(0, I): its MC KL estimate averages to
    the closed-form KL of the standard normal."""
    images = np.random.default_rng(0).random((4, 4, 4, 1)).astype(np.float32)
    schemes = {name: make(name, "vae", images) for name in ("standard_normal", "realnvp")}
    q = schemes["standard_normal"].posterior(tf.constant(images))
    z = q.sample(20000, seed=(1, 2))
    kl = {name: s.model.kl_to_prior(q, z).numpy() for name, s in schemes.items()}
    assert not schemes["standard_normal"].model.prior.trainable_variables
    np.testing.assert_allclose(kl["realnvp"], kl["standard_normal"], rtol=0.03, atol=0.02)


def make(prior: str, scheme: str, images, extra: dict | None = None):
    inference = {"scheme": scheme}
    if scheme == "vae":
        inference["encoder"] = {"name": "mlp", "hidden": [8]}
    if scheme == "pga":
        inference.update({"particles": 2, "step_size": 1e-2})
    prior_cfg = {"name": prior, "dim": 2}
    if prior == "vamp":
        prior_cfg["pseudo_inputs"] = 5
    return build_in_memory({
        "data": {"val_split": "", "binarize": "static"},
        "model": {"prior": prior_cfg, "decoder": {"name": "mlp", "hidden": [8]},
                  "likelihood": {"name": "bernoulli"}},
        "inference": inference, "train": {"batch_size": 4, "compile": "graph"},
        "evaluate": [], **(extra or {})}, images)


@pytest.mark.parametrize("prior,scheme", [
    ("gaussian_mixture", "vae"), ("gaussian_mixture", "svi"), ("gaussian_mixture", "map"),
    ("gaussian_mixture", "pga"), ("realnvp", "vae"), ("realnvp", "svi"), ("realnvp", "map"),
    ("realnvp", "pga"), ("vamp", "vae")])
def test_each_prior_trains_under_each_scheme(prior, scheme):
    images = (np.random.default_rng(4).random((8, 4, 4, 1)) < 0.5).astype(np.float32)
    s = make(prior, scheme, images)
    prior_vars = list(s.model.prior.trainable_variables)
    assert prior_vars and all(any(v is t for t in s.model.theta) for v in prior_vars)
    if prior == "realnvp":  # the flow starts as the identity, whose last layers have zero
        # gradient only at exactly zero input to them; move it off so every variable learns
        for net in s.model.prior.networks:
            net.network.head.kernel.assign(tf.fill(net.network.head.kernel.shape, 0.1))
    before = [v.numpy().copy() for v in prior_vars]
    for _ in range(3):
        idx = np.array([0, 3, 5, 6])
        out = s.standalone_step(tf.constant(images[idx]), tf.constant(idx, tf.int64))
        assert np.isfinite(float(out["loss"]))
    assert any(np.abs(v.numpy() - b).max() > 0 for v, b in zip(prior_vars, before))
    z = s.model.prior.distribution().sample(6, seed=(3, 4))
    assert z.shape == (6, 2) and np.isfinite(z.numpy()).all()


@pytest.mark.parametrize("scheme", ["pga", "svi", "map"])
def test_the_vampprior_is_refused_without_an_encoder(scheme):
    with pytest.raises(ConfigError, match="model.prior.name.*VampPrior.*vae"):
        from_dict({"data": {"binarize": "static"},
                   "model": {"prior": {"name": "vamp", "dim": 2}},
                   "inference": {"scheme": scheme}, "evaluate": []})
