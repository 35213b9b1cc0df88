"""Log-likelihood estimators against a linear-Gaussian model (PPCA) whose marginal is known
(Tipping & Bishop 1999):

    z ~ N(0, I_d),  y | z ~ N(W z + b, s^2 I_D)  =>  y ~ N(b, W W^T + s^2 I_D),
    z | y ~ N(M^-1 W^T (y - b), s^2 M^-1),  M = W^T W + s^2 I_d.

The scheme is a VAE whose linear encoder is set to a deliberately poor q: the exact posterior's
mean shifted by 0.3 and its variances times 0.7 (narrower than the posterior: the case that
widened proposals are for).  Repeated estimates are independent rows of one batch (the images
tiled), so their mean and standard error estimate the estimator's expectation.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import tensorflow as tf
from scipy import stats

from conftest import blob_images, build_in_memory
from tfgen.assemble import from_dict
from tfgen.errors import ConfigError
from tfgen.evaluation.ais import AISSettings, ais_log_likelihood, sigmoid_schedule
from tfgen.evaluation.tasks import EvalContext, LogLikelihoodConfig, log_likelihood_task
from tfgen.inference import proposals
from tfgen.inference.proposals import Proposal

D, d, SIGMA = 6, 2, 0.4
REPEATS = 20
KINDS = ["posterior", "scaled", "student_t"]


def ppca_scheme(images):
    """A VAE with a linear decoder (set to W, b below) and a linear encoder."""
    return build_in_memory({
        "data": {"val_split": ""},
        "model": {"prior": {"dim": d}, "decoder": {"name": "mlp", "hidden": []},
                  "likelihood": {"name": "normal", "sigma": SIGMA}},
        "inference": {"scheme": "vae", "encoder": {"name": "mlp", "hidden": []}},
        "train": {"compile": "graph"}, "evaluate": []}, images)


@pytest.fixture(scope="module")
def ppca():
    rng = np.random.default_rng(0)
    basis, _ = np.linalg.qr(rng.normal(size=(D, d)))
    W = (basis * np.array([2.0, 0.7])).astype(np.float32)  # orthogonal columns: diagonal posterior
    b = rng.normal(size=D).astype(np.float32)
    y = (rng.normal(size=(3, D)) * 1.5 + b).astype(np.float32)
    images = y.reshape(3, 1, D, 1)
    scheme = ppca_scheme(images)
    scheme.model.decoder.head.kernel.assign(W.T)
    scheme.model.decoder.head.bias.assign(b)
    precision = W.T @ W + SIGMA**2 * np.eye(d)
    gain = np.linalg.solve(precision, W.T)  # posterior mean = gain (y - b)
    variance = np.diag(SIGMA**2 * np.linalg.inv(precision))
    scheme.encoder.head.kernel.assign(
        np.concatenate([gain.T, np.zeros((D, d))], 1).astype(np.float32))
    scheme.encoder.head.bias.assign(
        np.concatenate([-gain @ b + 0.3, np.log(0.7 * variance)]).astype(np.float32))
    exact = stats.multivariate_normal(b, W @ W.T + SIGMA**2 * np.eye(D)).logpdf(y)
    return scheme, images, exact


def repeated(estimate, images, repeats=REPEATS):
    """Mean and standard error over ``repeats`` independent estimates, per image."""
    values = np.asarray(estimate(np.tile(images, (repeats, 1, 1, 1)))).reshape(repeats, -1)
    return values.mean(0), values.std(0, ddof=1) / np.sqrt(repeats)


# --------------------------------------------------------------------------- proposals

def test_widened_proposal_densities_and_draws_match_scipy():
    rng = np.random.default_rng(1)
    loc = rng.normal(size=(2, 3)).astype(np.float32)
    scale = rng.uniform(0.3, 2.0, size=(2, 3)).astype(np.float32)
    seed = tf.constant([5, 6], tf.int64)
    for proposal, reference in [
            (Proposal("posterior"),
             lambda i: stats.multivariate_normal(loc[i], np.diag(scale[i] ** 2))),
            (Proposal("scaled", scale=1.7),
             lambda i: stats.multivariate_normal(loc[i], np.diag((1.7 * scale[i]) ** 2))),
            (Proposal("student_t", df=3.0),
             lambda i: stats.multivariate_t(loc[i], np.diag(scale[i] ** 2), df=3.0))]:
        z, log_r = proposals.draw(proposal, tf.constant(loc), tf.constant(scale), seed, 20000)
        z, log_r = z.numpy(), log_r.numpy()
        for i in range(2):
            np.testing.assert_allclose(log_r[:200, i], reference(i).logpdf(z[:200, i]), rtol=1e-4,
                                       atol=1e-4)
            # the draws follow the density: each standardised coordinate's marginal (KS test)
            standard = (z[:, i, 0] - loc[i, 0]) / scale[i, 0]
            marginal = (stats.t(3.0) if proposal.kind == "student_t"
                        else stats.norm(0, 1.7 if proposal.kind == "scaled" else 1.0))
            assert stats.kstest(standard, marginal.cdf).pvalue > 1e-3, proposal


@pytest.mark.parametrize("kind", KINDS)
def test_importance_estimate_bounds_grows_with_k_and_converges(ppca, kind):
    scheme, images, exact = ppca
    proposal = Proposal(kind)
    means, errors = {}, {}
    for k in [1, 10, 100, 1000, 5000]:
        means[k], errors[k] = repeated(
            lambda x: scheme.log_likelihood_estimate(tf.constant(x), [1, 2], k, proposal), images)
        # a stochastic lower bound: E[estimate] <= log p(y) (Burda et al. 2016, Theorem 1)
        assert np.all(means[k] <= exact + 3 * errors[k] + 1e-3), (kind, k, means[k] - exact)
    # grows with K (in expectation) ...
    assert np.all(means[1] + 0.3 < means[100]), (means[1] - exact, means[100] - exact)
    assert np.all(means[10] < means[5000] + 3 * np.hypot(errors[10], errors[5000]))
    # ... to log p(y)
    assert np.all(np.abs(means[5000] - exact) < np.maximum(0.08, 4 * errors[5000])), \
        means[5000] - exact
    # and it is at least the ELBO (E[K = 1] = ELBO for q itself; a widened r helps at K >= 10)
    elbo = scheme.elbo_terms(tf.constant(images), [0, 1], 20000).elbo.numpy()
    assert np.all(elbo < exact)
    assert np.all(elbo < means[10])
    if kind == "posterior":
        assert np.all(np.abs(means[1] - elbo) < 4 * errors[1] + 0.02)


def test_widening_helps_an_under_dispersed_q(ppca):
    """With q narrower than the posterior, the widened proposals' K = 1000 estimates are closer
    to log p(y) and less noisy than q's own (Owen 2013, sec. 9.1: the tails decide)."""
    scheme, images, exact = ppca
    results = {kind: repeated(lambda x: scheme.log_likelihood_estimate(
        tf.constant(x), [7, 8], 1000, Proposal(kind)), images) for kind in KINDS}
    for kind in ["scaled", "student_t"]:
        assert np.all(results[kind][1] < results["posterior"][1]), (kind, results)


def test_k_5000_is_decoded_in_bounded_chunks():
    """The compiled K = 5000 estimate never holds a tensor larger than one chunk of
    IMPORTANCE_CHUNK samples x the batch x the pixels (unchunked: 50 times more)."""
    images = (blob_images(8)[0] / 255.0 > 0.5).astype(np.float32)
    scheme = build_in_memory({
        "data": {"val_split": "", "binarize": "static"},
        "model": {"prior": {"dim": 2}, "decoder": {"name": "mlp", "hidden": [16]},
                  "likelihood": {"name": "bernoulli"}},
        "inference": {"scheme": "vae", "encoder": {"name": "mlp", "hidden": [16]}},
        "train": {"compile": "graph"}, "evaluate": []}, images)
    q = scheme.posterior(images)
    fn = scheme._compiled("loglik", scheme._loglik_fn)
    for kind in KINDS:
        graph = fn.get_concrete_function(tf.constant(images), q.loc, q.scale.diag,
                                         tf.constant([1, 2], tf.int64), 5000, Proposal(kind)).graph
        largest, undefined = _largest_tensor(graph)
        assert undefined == 0  # every float tensor's size is known, so the bound is checked
        assert largest <= scheme.IMPORTANCE_CHUNK * len(images) * images[0].size, largest
        values = scheme.log_likelihood_estimate(tf.constant(images), [1, 2], 5000, Proposal(kind))
        assert np.all(np.isfinite(values.numpy()))


def _largest_tensor(graph) -> tuple[int, int]:
    """Elements of the largest tensor in a graph and its loops' and branches' bodies, and how
    many float tensors have unknown sizes."""
    largest = undefined = 0
    for op in graph.get_operations():
        for tensor in op.outputs:
            if tensor.shape.rank is not None and tensor.shape.is_fully_defined():
                largest = max(largest, tensor.shape.num_elements())
            elif tensor.dtype.is_floating:
                undefined += 1
        for attr in ("body", "then_branch", "else_branch"):  # a loop's cond: one boolean
            try:
                function = graph._get_function(op.get_attr(attr).name)
            except (ValueError, AttributeError):
                continue
            if function is not None:
                inner = _largest_tensor(function.graph)
                largest, undefined = max(largest, inner[0]), undefined + inner[1]
    return largest, undefined


# --------------------------------------------------------------------------- AIS

@pytest.mark.parametrize("leapfrog, step", [(1, 0.8), (5, 0.4), (3, 0.9)])
def test_hmc_leaves_its_target_invariant(leapfrog, step):
    """Chains started at exact draws of N(m, diag s^2) keep its mean and variances after 100
    transitions.  Without the accept/reject step the leapfrog's stationary variance of the
    narrow coordinate would be s^2 / (1 - e^2 / 4 s^2): 2.8, 1.2 and 5.3 times too large here."""
    from tfgen.inference import kernels

    m, s = tf.constant([1.0, -2.0]), tf.constant([0.5, 2.0])

    def target(x):
        return kernels.HMCState(x, -0.5 * tf.reduce_sum(tf.square((x - m) / s), -1),
                                -(x - m) / s**2)

    @tf.function
    def run(x):
        state, rates = target(x), tf.zeros([])
        for t in tf.range(100):
            state, accept = kernels.hmc_step(state, target, step, leapfrog,
                                             tf.stack([tf.constant(9, tf.int64),
                                                       tf.cast(t, tf.int64)]))
            rates += tf.reduce_mean(accept) / 100
        return state.x, rates

    x0 = m + s * tf.random.stateless_normal([4000, 2], [1, 2])
    x, rate = run(x0)
    x = x.numpy()
    assert np.all(np.abs(x.mean(0) - m.numpy()) < 4 * s.numpy() / np.sqrt(4000)), x.mean(0)
    np.testing.assert_allclose(x.var(0), s.numpy() ** 2, rtol=0.12)
    assert 0.05 < float(rate) < 0.99, float(rate)
    assert np.mean(np.any(x != x0.numpy(), axis=1)) > 0.3  # the chains moved


def test_sigmoid_schedule():
    betas = sigmoid_schedule(500)
    assert len(betas) == 501 and betas[0] == 0.0 and betas[-1] == 1.0
    assert np.all(np.diff(betas) > 0)
    assert np.diff(betas)[0] < np.diff(betas)[250]  # slow at the ends (Grosse et al. 2015)


@pytest.mark.parametrize("start", ["prior", "proposal"])
def test_ais_matches_the_exact_marginal_and_is_a_lower_bound(ppca, start):
    scheme, images, exact = ppca
    settings = AISSettings(steps=500, chains=16, leapfrog=10, step_size=0.05, start=start)
    rates = []

    def estimate(x):
        values, acceptance = ais_log_likelihood(scheme, x, [3, 4], settings, Proposal("scaled"))
        rates.append(acceptance)
        return values

    mean, error = repeated(estimate, images, 10)
    assert np.all(np.abs(mean - exact) < 0.1), mean - exact
    assert np.all(mean <= exact + 3 * error + 1e-3), (mean - exact, error)
    assert 0.3 < np.mean(rates) < 0.99  # the transitions move and are adapted


def test_ais_with_few_steps_is_looser_than_with_many(ppca):
    """More intermediate distributions: closer to log p(y) (Neal 2001).  T = 1 has no
    transition: importance sampling from p(z) with one sample per chain."""
    scheme, images, exact = ppca
    gaps = []
    for steps in [1, 500]:
        mean, _ = repeated(lambda x: ais_log_likelihood(
            scheme, x, [5, 6], AISSettings(steps, 16, 10, 0.05, "prior"))[0], images, 10)
        gaps.append(exact - mean)
    assert np.all(np.abs(gaps[1]) < 0.1) and np.all(gaps[0] > np.abs(gaps[1]) + 0.1), gaps


# --------------------------------------------------------------------------- the task

def _context(scheme):
    return EvalContext(scheme.cfg, scheme, scheme.data, None, [], 0)


def test_task_reports_nats_with_standard_error_and_bits_per_dimension(ppca):
    scheme, images, exact = ppca
    out = log_likelihood_task(LogLikelihoodConfig(split="train", samples=500, batch_size=2,
                                                  proposal="student_t"), _context(scheme))
    values = np.concatenate([
        scheme.log_likelihood_estimate(tf.constant(images[:2]), [scheme.cfg.experiment.seed, 0],
                                       500, Proposal("student_t")).numpy(),
        scheme.log_likelihood_estimate(tf.constant(images[2:]), [scheme.cfg.experiment.seed, 1],
                                       500, Proposal("student_t")).numpy()])
    assert out["train_log_likelihood_student_t"] == pytest.approx(values.mean(), rel=1e-6)
    assert out["train_log_likelihood_student_t_stderr"] == pytest.approx(
        values.std(ddof=1) / math.sqrt(3), rel=1e-6)  # the standard error of the mean
    assert out["train_images_student_t"] == 3
    # a Normal density on unquantized pixels: bits/dim of the density, nothing 8-bit
    per_nat = 1 / (D * math.log(2))
    assert out["train_bits_per_dim_density_student_t"] == pytest.approx(
        -values.mean() * per_nat, rel=1e-6)
    assert out["train_bits_per_dim_density_student_t_stderr"] == pytest.approx(
        out["train_log_likelihood_student_t_stderr"] * per_nat, rel=1e-6)
    assert not any("8bit" in key for key in out)

    ais = log_likelihood_task(LogLikelihoodConfig(split="train", estimator="ais", ais_steps=50,
                                                  ais_chains=4, ais_leapfrog=2),
                              _context(scheme))
    assert set(ais) == {"train_log_likelihood_ais", "train_log_likelihood_ais_stderr",
                        "train_images_ais", "train_ais_acceptance",
                        "train_bits_per_dim_density_ais", "train_bits_per_dim_density_ais_stderr"}
    assert ais["train_bits_per_dim_density_ais"] == pytest.approx(
        -ais["train_log_likelihood_ais"] * per_nat, rel=1e-6)


def test_bits_per_dim_of_discrete_and_8bit_data():
    rng = np.random.default_rng(2)
    levels = rng.integers(0, 256, size=(4, 4, 4, 1))
    # 8-bit pixels under a Normal density on [0, 1]: the change of variables adds log2(255)
    scheme = build_in_memory({
        "data": {"val_split": ""}, "model": {"prior": {"dim": 2},
                                             "decoder": {"name": "mlp", "hidden": [8]},
                                             "likelihood": {"name": "normal", "sigma": 0.2}},
        "inference": {"scheme": "vae", "encoder": {"name": "mlp", "hidden": [8]}},
        "train": {"compile": "graph"}, "evaluate": []}, (levels / 255.0).astype(np.float32))
    out = log_likelihood_task(LogLikelihoodConfig(split="train", samples=10), _context(scheme))
    assert out["train_bits_per_dim_8bit"] == pytest.approx(
        out["train_bits_per_dim_density"] + math.log2(255.0), rel=1e-6)
    assert out["train_bits_per_dim_density"] == pytest.approx(
        -out["train_log_likelihood"] / (16 * math.log(2)), rel=1e-6)
    # the same images off the 8-bit grid: no 8-bit figure
    scheme.data.train.images[0, 0, 0, 0] += 0.5 / 255
    out = log_likelihood_task(LogLikelihoodConfig(split="train", samples=10), _context(scheme))
    assert "train_bits_per_dim_8bit" not in out
    # binarized data under a Bernoulli: the probability of the image, bits/dim directly
    binary = (levels > 127).astype(np.float32)
    scheme = build_in_memory({
        "data": {"val_split": "", "binarize": "static"},
        "model": {"prior": {"dim": 2}, "decoder": {"name": "mlp", "hidden": [8]},
                  "likelihood": {"name": "bernoulli"}},
        "inference": {"scheme": "vae", "encoder": {"name": "mlp", "hidden": [8]}},
        "train": {"compile": "graph"}, "evaluate": []}, binary)
    out = log_likelihood_task(LogLikelihoodConfig(split="train", samples=10), _context(scheme))
    assert set(out) == {"train_log_likelihood", "train_log_likelihood_stderr", "train_images",
                        "train_bits_per_dim", "train_bits_per_dim_stderr"}
    assert out["train_bits_per_dim"] == pytest.approx(
        -out["train_log_likelihood"] / (16 * math.log(2)), rel=1e-6)
    assert out["train_bits_per_dim"] > 0


@pytest.mark.parametrize("key, value, allowed", [
    ("proposal", "cauchy", "'posterior', 'student_t', 'scaled'"),
    ("estimator", "bdmc", "'is', 'ais'"),
    ("ais_start", "posterior", "'prior', 'proposal'"),
    ("proposal_df", 0.0, "> 0"),
    ("proposal_df", -2.0, "> 0"),
    ("proposal_scale", 0.0, "> 0"),
    ("ais_steps", 0, ">= 1"),
    ("ais_chains", 0, ">= 1"),
])
def test_bad_keys_are_refused_naming_the_key_and_the_allowed_values(key, value, allowed):
    raw = {"data": {"val_split": ""}, "model": {"prior": {"dim": 2}},
           "inference": {"scheme": "vae"},
           "evaluate": [{"task": "log_likelihood", key: value}]}
    with pytest.raises(ConfigError) as err:
        from_dict(raw)
    message = str(err.value)
    assert f"evaluate[0].{key}" in message or f"evaluate.0.{key}" in message, message
    assert allowed in message, message


def test_memory_estimate_counts_one_chunk_and_the_ais_chains():
    from tfgen.resources import Activations, DataShape, task_peak
    from tfgen.schema import Component

    act, shape = Activations(decoder=1000, decoder_output=784, encoder=500), \
        DataShape(1000, 0, 1000, (28, 28, 1))
    task = lambda **keys: Component("log_likelihood", LogLikelihoodConfig(**keys))
    small, large = task_peak(0, task(samples=100), shape, act), task_peak(0, task(samples=5000),
                                                                           shape, act)
    assert small.bytes == large.bytes  # K beyond one chunk costs time, not memory
    ais = task_peak(0, task(estimator="ais", ais_chains=16), shape, act)
    assert ais.bytes == 50 * (act.encode(True) + 16 * act.decode(True))
    assert "evaluate.0.ais_chains" in ais.keys
