"""scheme = "em" (tfgen.inference.em): PPCA and a Gaussian mixture fitted by EM inside the
trainer, against closed forms and known models; exact resume mid-epoch; load-time refusals."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from scipy import stats
from scipy.special import logsumexp

from conftest import REPO, build_in_memory, learned, run_cli
from tfgen.assemble import from_dict
from tfgen.errors import ConfigError
from tfgen.models import linear_em
from tfgen.signals import TEST_HOOK

D_SIDE, D, Q = 4, 16, 2


def ppca_data(n=3000, seed=0):
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(D, Q)) * np.array([2.0, 1.0])
    mu = rng.normal(size=D)
    y = rng.normal(size=(n, Q)) @ w.T + mu + 0.3 * rng.normal(size=(n, D))
    return y.reshape(n, D_SIDE, D_SIDE, 1).astype(np.float32)


def em_scheme(images, model: str, batch: int = 500, **params):
    inference = {"scheme": "em", "model": model, **params}
    return build_in_memory({
        "data": {"val_split": ""},
        "model": {"prior": {"dim": Q}, "decoder": {"name": "mlp", "hidden": []},
                  "likelihood": {"name": "normal", "scale": "learned"}},
        "inference": inference, "train": {"batch_size": batch}, "evaluate": []},
        images, pixel_range=(float(images.min()), float(images.max())))


def one_epoch(scheme, images, batch):
    """Every batch once (the trainer's epoch), then the scheme's end of epoch (the M-step)."""
    for lo in range(0, len(images), batch):
        idx = np.arange(lo, min(lo + batch, len(images)))
        scheme.standalone_step(tf.constant(images[idx]), tf.constant(idx, tf.int64))
    return scheme.end_epoch()


def test_ppca_by_em_reaches_the_closed_form_and_its_densities_are_exact():
    images = ppca_data()
    scheme = em_scheme(images, "ppca", iterations=3000, tolerance=0.0)
    fit = one_epoch(scheme, images, 500)
    x = images.reshape(len(images), D).astype(np.float64)
    closed = linear_em.fit_ppca_closed_form(x, Q)
    assert fit["em_log_likelihood"] == pytest.approx(closed.log_likelihood, abs=1e-5)
    assert fit["closed_form_log_likelihood"] == pytest.approx(closed.log_likelihood, abs=1e-6)
    w, mu, sigma2 = (np.asarray(v, np.float64) for v in scheme.parameters())
    assert sigma2 == pytest.approx(closed.sigma2, rel=1e-3)
    np.testing.assert_allclose(w @ w.T, closed.W @ closed.W.T, atol=2e-3)
    # the columns are the principal axes: M = W^T W + sigma^2 I is diagonal
    gram = w.T @ w
    assert abs(gram[0, 1]) < 1e-3 * gram.max()
    # the TF log density and posterior are the dense Gaussian formulas
    cov = w @ w.T + sigma2 * np.eye(D)
    dense = stats.multivariate_normal(mu, cov).logpdf(x[:20])
    np.testing.assert_allclose(scheme.exact_log_likelihood(images[:20]).numpy(), dense,
                               rtol=1e-4, atol=1e-3)
    m = w.T @ w + sigma2 * np.eye(Q)
    q = scheme.posterior(tf.constant(images[:5]))
    np.testing.assert_allclose(q.mean().numpy(), (x[:5] - mu) @ w @ np.linalg.inv(m),
                               rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(q.stddev().numpy()[0], np.sqrt(sigma2 * np.diag(np.linalg.inv(m))),
                               rtol=1e-3)
    # with the exact posterior as proposal, importance sampling returns log p(y) itself
    estimate = scheme.log_likelihood_estimate(tf.constant(images[:5]), (0, 1), 10).numpy()
    np.testing.assert_allclose(estimate, dense[:5], rtol=1e-4, atol=2e-3)


def gmm_data(n=3000, seed=1):
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(3, D)) * 3
    scales = np.array([0.5, 1.0, 0.7])
    labels = rng.choice(3, n, p=[0.5, 0.3, 0.2])
    y = means[labels] + scales[labels, None] * rng.normal(size=(n, D))
    return y.reshape(n, D_SIDE, D_SIDE, 1).astype(np.float32), means, scales


def test_gmm_by_em_recovers_a_known_mixture_and_its_density_is_scipys():
    images, means, scales = gmm_data()
    scheme = em_scheme(images, "gmm", components=3, covariance="isotropic")
    traces = []
    for _ in range(15):
        one_epoch(scheme, images, 600)
        traces.append(float(tf.reduce_mean(scheme.exact_log_likelihood(images))))
    assert all(b >= a - 1e-4 for a, b in zip(traces, traces[1:]))  # EM's monotone ascent
    order = [int(np.argmin(((scheme.means.numpy() - m) ** 2).sum(-1))) for m in means]
    assert sorted(order) == [0, 1, 2]
    np.testing.assert_allclose(scheme.means.numpy()[order], means, atol=0.15)
    np.testing.assert_allclose(np.sqrt(scheme.variances.numpy()[order]), scales, rtol=0.06)
    np.testing.assert_allclose(np.exp(scheme.log_weights.numpy()[order]), [0.5, 0.3, 0.2],
                               atol=0.03)
    x = images.reshape(len(images), D).astype(np.float64)[:10]
    weights = np.exp(scheme.log_weights.numpy())
    sd = np.sqrt(scheme.variances.numpy())
    expected = logsumexp([np.log(weights[k]) + stats.multivariate_normal(
        scheme.means.numpy()[k], sd[k] ** 2 * np.eye(D)).logpdf(x) for k in range(3)], axis=0)
    np.testing.assert_allclose(scheme.exact_log_likelihood(images[:10]).numpy(), expected,
                               rtol=1e-4, atol=1e-3)
    draws = scheme.sample_images(2000, 0).numpy().reshape(2000, D)
    assert np.abs(draws.mean(0) - x.mean(0) * 0 - images.reshape(-1, D).mean(0)).max() < 0.4


def em_toml(tmp: Path, model: str, epochs: int) -> Path:
    images, _, _ = gmm_data(400, seed=2)
    data = tmp / "gmm.npz"
    if not data.exists():
        np.savez(data, x_train=np.clip(images / 10 + 0.5, 0, 1),
                 x_test=np.clip(images[:50] / 10 + 0.5, 0, 1))
    path = tmp / f"{model}.toml"
    path.write_text(f"""
[experiment]
name = "{model}"
output_dir = "{tmp / 'runs'}"
[data]
source = "npz"
path = "{data}"
train_split = "train"
val_split = ""
[model.prior]
dim = 2
[model.decoder]
name = "mlp"
hidden = []
[model.likelihood]
name = "normal"
scale = "learned"
[inference]
scheme = "em"
model = "{model}"
components = 3
[train]
epochs = {epochs}
batch_size = 64
[logging]
progress = false
""")
    return path


@pytest.mark.parametrize("model", ["gmm", "ppca"])
def test_an_em_run_interrupted_mid_epoch_resumes_exactly(model, tmp_path):
    """The running sums of an epoch are checkpointed: Ctrl-C after step 10 (epoch 2, batch 4
    of 7), resumed, ends where an uninterrupted run does."""
    config = em_toml(tmp_path, model, epochs=3)
    whole = run_cli("run", str(config), "--quiet")
    assert whole.returncode == 0, whole.stderr
    env = {**os.environ, "PYTHONPATH": str(REPO), TEST_HOOK: "10"}
    proc = subprocess.run([sys.executable, "-m", "tfgen", "run", str(config), "--quiet"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 130, proc.stderr[-2000:]
    first, second = sorted((tmp_path / "runs" / model).iterdir())
    resumed = run_cli("run", "--resume", str(second), "--quiet")
    assert resumed.returncode == 0, resumed.stderr
    a, b = (json.loads((d / "metrics.json").read_text()) for d in (first, second))
    assert len(a["history"]) == len(b["history"]) == 3
    for ea, eb in zip(learned(a["history"]), learned(b["history"])):
        for key in ea:
            assert eb[key] == pytest.approx(ea[key], rel=1e-6, abs=1e-6), key
    assert b["evaluation"] == pytest.approx(a["evaluation"], rel=1e-6)
    assert "test_log_likelihood_exact" in a["evaluation"]


def base(**changes) -> dict:
    raw = {"data": {"binarize": "none"},
           "model": {"prior": {"dim": 2}, "decoder": {"name": "mlp", "hidden": []},
                     "likelihood": {"name": "normal", "scale": "learned"}},
           "inference": {"scheme": "em", "model": "ppca"}, "evaluate": []}
    for key, value in changes.items():
        section, name = key.split("__")
        raw[section] = {**raw[section], name: value}
    return raw


@pytest.mark.parametrize("changes,match", [
    ({"model__decoder": {"name": "conv_decoder"}}, "model.decoder: PPCA's decoder is linear"),
    ({"model__likelihood": {"name": "normal"}}, "model.likelihood: PPCA's noise is one learned"),
    ({"data__binarize": "static", "model__likelihood": {"name": "bernoulli"}},
     "data.binarize: EM's linear-Gaussian"),
])
def test_ppca_settings_it_cannot_fit_are_refused(changes, match):
    with pytest.raises(ConfigError, match=match):
        from_dict(base(**changes))


def test_tasks_a_gmm_cannot_do_are_refused_naming_both_sides():
    raw = base(inference__model="gmm")
    raw["evaluate"] = [{"task": "reconstructions"}]
    with pytest.raises(ConfigError, match="reconstructions.*posterior.*em"):
        from_dict(raw)
    raw["evaluate"] = [{"task": "log_likelihood", "estimator": "exact"}, {"task": "samples"}]
    assert len(from_dict(raw).evaluate) == 2
    ppca = base()
    ppca["evaluate"] = [{"task": "log_likelihood", "estimator": "exact"}]
    vae = {**ppca, "inference": {"scheme": "vae"}}
    with pytest.raises(ConfigError, match="exact log-likelihood.*em \\(inference.model = 'ppca'\\)"):
        from_dict(vae)
