"""The encoder-free training schemes svi and map against closed forms on linear-Gaussian
models, their per-row gradient scale, every likelihood, an end-to-end ``tfgen run`` with an
exact resume, and config validation.

Linear-Gaussian model: z ~ N(0, I_d), y | z ~ N(W z + b, s^2 I_D).  Given theta = (W, b) the
posterior has precision P = I + W^T W / s^2 and mean P^-1 W^T (y - b) / s^2 (Bishop 2006,
eq. (2.116)), which is also its mode; the best diagonal q has that mean and variances
1 / P_ii (Bishop 2006, eq. (10.12)-(10.13)).
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from scipy import stats

from conftest import build_in_memory, learned, run_cli
from tfgen.assemble import from_dict
from tfgen.errors import ConfigError
from tfgen.distribute import SALT_REPARAMETERIZE, single_replica_batch, step_seed

D, d, SIGMA, M = 5, 2, 1.0, 300


def make_scheme(scheme: str, images: np.ndarray, inference: dict | None = None,
                likelihood: dict | None = None, decoder: dict | None = None, batch_size: int = 4,
                learning_rate: float = 1e-3, pixel_range=(0.0, 1.0), data: dict | None = None):
    return build_in_memory({
        "experiment": {"seed": 0},
        "data": {"val_split": "", **(data or {})},
        "model": {"prior": {"dim": d}, "decoder": decoder or {"name": "mlp", "hidden": []},
                  "likelihood": likelihood or {"name": "normal", "sigma": SIGMA}},
        "inference": {"scheme": scheme, **(inference or {})},
        "train": {"batch_size": batch_size, "compile": "graph", "learning_rate": learning_rate},
        "evaluate": [],
    }, images, pixel_range)


def linear_theta(scheme) -> tuple[np.ndarray, np.ndarray]:
    """(W [D, d], b [D]) of the linear decoder y = W z + b (an ``mlp`` with no hidden layer)."""
    head = scheme.model.decoder.head
    return head.kernel.numpy().T.astype(np.float64), head.bias.numpy().astype(np.float64)


def ppca_data(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    W_true = rng.normal(size=(D, d)) * np.array([3.0, 2.0])
    b_true = rng.normal(size=D)
    return rng.normal(size=(M, d)) @ W_true.T + b_true + SIGMA * rng.normal(size=(M, D))


def train(scheme, Y: np.ndarray, steps: int, batch: int, learning_rate: float, decay=()):
    """Random batches; theta's learning rate divided by f from step k on, for (k, f) in decay
    (Adam with a constant step jitters around the optimum)."""
    images = tf.constant(Y.reshape(len(Y), 1, D, 1), tf.float32)
    order = np.random.default_rng(1)
    for k in range(steps):
        for at, factor in decay:
            if k == at:
                scheme.optimizer.learning_rate.assign(learning_rate / factor)
        idx = order.choice(len(Y), batch, replace=False)
        scheme.standalone_step(tf.gather(images, idx), tf.constant(idx, tf.int64))


def posterior(W, b, Y, prior_weight=1.0):
    """Mean (= mode) and precision of p(z | y) (prior_weight lambda scales log p(z))."""
    precision = prior_weight * np.eye(d) + W.T @ W / SIGMA**2
    return np.linalg.solve(precision, W.T @ (Y - b).T / SIGMA**2).T, precision


# --------------------------------------------------------------------------- closed forms

def test_svi_theta_reaches_the_ppca_maximum_likelihood():
    """Tipping & Bishop (1999): the ML solution is b = sample mean, W = U_d (L_d - s^2 I)^(1/2) R.
    With R = I the columns of W are orthogonal, so W^T W and the posterior covariance
    (I + W^T W / s^2)^-1 are diagonal: there a diagonal q is the exact posterior and the
    ELBO equals the log-likelihood.  Since ELBO <= log p_theta everywhere, the ELBO's maximum
    over (theta, q) is the ML log-likelihood and any theta whose ELBO is within eps of it
    is within eps of the ML: svi with a diagonal q must reach the ML marginal likelihood
    (the tolerance is PGA's, tests/test_pga.py), not a rank-1 fit, and its q's must be the
    diagonal optimum for its theta."""
    Y = ppca_data()
    S = np.cov(Y.T, bias=True)
    eigenvalues, U = np.linalg.eigh(S)
    top, U = eigenvalues[::-1][:d], U[:, ::-1][:, :d]
    W_ml, b_ml = U * np.sqrt(top - SIGMA**2), Y.mean(axis=0)

    def mean_log_marginal(W, b):
        return stats.multivariate_normal(b, W @ W.T + SIGMA**2 * np.eye(D)).logpdf(Y).mean()

    learning_rate = 0.02
    scheme = make_scheme("svi", Y.reshape(M, 1, D, 1), {
        "mc_samples": 8, "latent_optimizer": {"learning_rate": 0.05}},
        batch_size=100, learning_rate=learning_rate)
    best = mean_log_marginal(W_ml, b_ml)
    assert mean_log_marginal(*linear_theta(scheme)) < best - 5.0  # the start is far off
    train(scheme, Y, 2500, 100, learning_rate, decay=[(1700, 10)])

    W, b = linear_theta(scheme)
    gap = mean_log_marginal(W, b) - best
    W_rank1 = W_ml.copy()
    W_rank1[:, 1] = 0.0
    assert mean_log_marginal(W_rank1, b_ml) - best < -1.0  # the tolerance below can tell
    assert -0.01 < gap <= 1e-9, gap  # nats per data point
    learned = np.linalg.eigvalsh(W @ W.T + SIGMA**2 * np.eye(D))[::-1][:d]
    np.testing.assert_allclose(learned, top, rtol=0.06)
    np.testing.assert_allclose(b, b_ml, atol=0.1)
    # each q(z | psi_m): the diagonal optimum for the learned theta, up to Adam's jitter
    mean, precision = posterior(W, b, Y)
    psi = scheme.latents.values.numpy()
    assert np.abs(psi[:, :d] - mean).mean() < 0.05 * np.abs(mean).mean()
    np.testing.assert_allclose(np.exp(psi[:, d:]).mean(axis=0), 1 / np.diag(precision), rtol=0.05)


def test_map_latents_are_the_posterior_modes_of_the_learned_theta():
    """prior_weight 1: once theta stops moving (its learning rate divided by 1000 for the
    last steps), every z_m is the posterior mode of its image under the learned theta."""
    Y = ppca_data(1)
    learning_rate = 0.02
    scheme = make_scheme("map", Y.reshape(M, 1, D, 1), {"latent_optimizer": {"learning_rate": 0.05}},
                         batch_size=100, learning_rate=learning_rate)
    train(scheme, Y, 2000, 100, learning_rate, decay=[(1400, 10), (1700, 1000)])
    W, b = linear_theta(scheme)
    mode, _ = posterior(W, b, Y)
    z = scheme.latent_cloud().numpy()
    np.testing.assert_allclose(z, mode, atol=0.02)
    assert np.abs(mode).mean() > 0.2  # far from the trivial answer z = 0


def test_map_without_prior_is_least_squares_and_pca():
    """prior_weight 0 (Kuntz et al. 2023, eq. (4) for every image): each z_m is the least-squares
    solution for its image under the learned theta, and the fit W z_m + b is the rank-d PCA
    of the data (Eckart & Young 1936): mean squared error = the sum of the trailing
    eigenvalues of the sample covariance, which a rank-1 fit exceeds by the second one."""
    Y = ppca_data(2)
    learning_rate = 0.02
    scheme = make_scheme("map", Y.reshape(M, 1, D, 1), {
        "prior_weight": 0.0, "latent_optimizer": {"learning_rate": 0.05}},
        batch_size=100, learning_rate=learning_rate)
    train(scheme, Y, 2000, 100, learning_rate, decay=[(1400, 10), (1700, 1000)])
    W, b = linear_theta(scheme)
    z = scheme.latent_cloud().numpy().astype(np.float64)
    least_squares = np.linalg.lstsq(W, (Y - b).T, rcond=None)[0].T
    np.testing.assert_allclose(z, least_squares, atol=2e-3)
    eigenvalues = np.linalg.eigvalsh(np.cov(Y.T, bias=True))[::-1]
    error = ((Y - z @ W.T - b) ** 2).sum(axis=1).mean()
    assert error == pytest.approx(eigenvalues[d:].sum(), rel=2e-3)
    assert eigenvalues[1] > 0.5  # a rank-1 fit is measurably worse


def test_map_validation_fits_decoders_that_are_flat_at_the_origin():
    """A decoder whose ReLUs are all off near z = 0 (as map's conv decoder learns: its latents
    sit on the prior's shell) has zero gradient there: the validation fit starts from
    z ~ N(0, I) and finds the latents (|z| = 1.5) that generated the images."""
    from tfgen.data import Split

    rng = np.random.default_rng(9)
    scheme = make_scheme("map", np.zeros((16, 1, D, 1), np.float32),
                         {"validation_images": 16, "validation_fit_steps": 60},
                         decoder={"name": "mlp", "hidden": [16]},
                         likelihood={"name": "normal", "sigma": 0.3})
    hidden = scheme.model.decoder.body[0]
    hidden.kernel.assign(rng.normal(size=(d, 16)).astype(np.float32))
    hidden.bias.assign(np.full(16, -0.5, np.float32))  # every unit off for |z| < 0.5 / |w|
    angle = rng.uniform(0, 2 * np.pi, 16)
    z_true = 1.5 * np.stack([np.cos(angle), np.sin(angle)], -1).astype(np.float32)
    images = scheme.model.decode(tf.constant(z_true)).numpy()[..., :1]  # the decoder's means
    z0 = tf.zeros([16, d])
    with tf.GradientTape() as tape:
        tape.watch(z0)
        at_origin = scheme.model.log_likelihood(z0, tf.constant(images))
    assert not np.any(tape.gradient(at_origin, z0).numpy())
    fitted = scheme.validation_fitter().fit(images, seed=3)
    assert np.median(np.linalg.norm(fitted.mean, axis=-1)) > 1.0
    metrics = scheme.validate(Split(images, np.zeros(16, np.int64)), seed=3)
    origin_loss = -(scheme.model.log_prior(z0) + at_origin).numpy().mean()
    assert metrics["loss"] < origin_loss - 10.0
    assert metrics["loss"] == pytest.approx(-(metrics["log_prior"] + metrics["log_likelihood"]))


# --------------------------------------------------------------------------- the row step

def replayed_noise(generator, shape) -> np.ndarray:
    """The normals [S, b, d] the scheme's next step draws: per image, from the next step seed
    of a copy of its generator (tfgen.distribute.ReplicaBatch)."""
    replay = tf.random.Generator.from_state(generator.state.numpy(), generator.algorithm)
    samples, b, d = shape
    batch = single_replica_batch(step_seed(replay), tf.zeros([b], tf.int64))
    noise = batch.normal([samples, d], SALT_REPARAMETERIZE).numpy().astype(np.float64)
    return noise.transpose(1, 0, 2)


@pytest.mark.parametrize("scheme_name", ["svi", "map"])
def test_a_row_steps_down_its_own_objective_whatever_the_batch_size(scheme_name):
    """With plain SGD on the rows, one step moves row m by -lr grad f_m, the gradient of its
    own image's objective, computed here by hand: not by the batch mean's (1/b) share.
    svi, z = mu + s e: d(-ELBO)/d mu = mu - mean_e W^T r / s^2, d(-ELBO)/d log s^2 =
    0.5 (s^2 - 1) - mean_e 0.5 s e W^T r / s^2 (r = y - W z - b); map: lambda z - W^T r / s^2."""
    rng = np.random.default_rng(5)
    images = rng.normal(size=(6, 1, D, 1)).astype(np.float32)
    lr, lam, samples = 0.01, 0.7, 3
    inference = {"latent_optimizer": {"name": "sgd", "learning_rate": lr}}
    inference.update({"mc_samples": samples, "init_log_variance": -1.0} if scheme_name == "svi"
                     else {"prior_weight": lam})
    for batch in ([4, 1, 3], [2]):
        scheme = make_scheme(scheme_name, images, inference, batch_size=len(batch))
        W, b = linear_theta(scheme)
        rows = scheme.latents.values.numpy().astype(np.float64)
        before = rows.copy()
        y = images.reshape(6, D).astype(np.float64)[batch]
        if scheme_name == "svi":
            noise = replayed_noise(scheme.generator, [samples, len(batch), d])
            mu, log_var = rows[batch, :d], rows[batch, d:]
            s = np.exp(0.5 * log_var)
            z = mu + s * noise                                     # [S, b, d]
            score = (y - z @ W.T - b) @ W / SIGMA**2                # d log p(y | z) / dz
            grad = np.concatenate([mu - score.mean(0),
                                   0.5 * (s**2 - 1) - (0.5 * s * noise * score).mean(0)], -1)
        else:
            z = rows[batch]
            grad = lam * z - (y - z @ W.T - b) @ W / SIGMA**2
        scheme.standalone_step(tf.constant(images[batch]), tf.constant(batch, tf.int64))
        after = scheme.latents.values.numpy()
        np.testing.assert_allclose(after[batch], before[batch] - lr * grad, rtol=1e-4, atol=1e-6)
        untouched = [i for i in range(6) if i not in batch]
        np.testing.assert_array_equal(after[untouched], before[untouched])


# --------------------------------------------------------------------------- every likelihood

LIKELIHOODS = [
    ({"name": "normal", "scale": "fixed"}, {}),
    ({"name": "normal", "scale": "learned"}, {}),
    ({"name": "normal", "scale": "per_pixel"}, {}),
    ({"name": "beta"}, {}),
    ({"name": "categorical", "bins": 4}, {"bins": 4}),
    ({"name": "bernoulli"}, {"binarize": "dynamic"}),
]


@pytest.mark.parametrize("scheme_name", ["svi", "map"])
@pytest.mark.parametrize("likelihood,data", LIKELIHOODS,
                         ids=lambda p: "-".join(str(v) for v in p.values()) if p else "")
def test_every_likelihood_trains(scheme_name, likelihood, data):
    rng = np.random.default_rng(6)
    images = rng.uniform(size=(8, 6, 6, 1)).astype(np.float32)
    if data.get("bins"):
        images = np.round(images * 3) / 3
    scheme = make_scheme(scheme_name, images, likelihood=likelihood, data=data,
                         decoder={"name": "mlp", "hidden": [8]}, batch_size=4)
    before = scheme.latents.values.numpy().copy()
    theta_before = [v.numpy().copy() for v in scheme.model.theta]
    for k in range(3):
        idx = np.arange(4) + 4 * (k % 2)
        out = scheme.standalone_step(tf.constant(images[idx]), tf.constant(idx, tf.int64))
        assert math.isfinite(float(out["loss"]))
    assert np.abs(scheme.latents.values.numpy() - before).min(axis=-1).max() > 0  # every row moved
    assert all(np.abs(a.numpy() - b).max() > 0 for a, b in zip(scheme.model.theta, theta_before))


# --------------------------------------------------------------------------- tfgen run

EVALUATE = """
[[evaluate]]
task = "elbo"
max_images = 6

[[evaluate]]
task = "log_likelihood"
samples = 4
max_images = 6

[[evaluate]]
task = "reconstructions"
num_images = 4

[[evaluate]]
task = "samples"
sampler = "particle_gaussian"
num_images = 4

[[evaluate]]
task = "curves"
"""


def run_config(idx_folder: Path, out: Path, epochs: int, scheme: str, evaluate: bool) -> str:
    extra = ('mc_samples = 2\ninit_log_variance = -2.0' if scheme == "svi" else "prior_weight = 0.5")
    return f"""{"" if evaluate else "evaluate = []"}
[experiment]
name = "tiny_{scheme}"
seed = 4
output_dir = "{out}"

[data]
source = "idx"
path = "{idx_folder}"
train_split = "train[:48]"
val_split = "train[128:144]"
test_split = "test[:8]"
binarize = "dynamic"

[model.prior]
dim = 3

[model.decoder]
name = "mlp"
hidden = [16]

[model.likelihood]
name = "bernoulli"

[inference]
scheme = "{scheme}"
{extra}
validation_images = 8
validation_fit_steps = 6
summary_images = 2

[inference.latent_optimizer]
learning_rate = 0.05

[inference.posterior_fit]
steps = 10
patience = 3

[train]
epochs = {epochs}
batch_size = 16
compile = "graph"

[train.early_stopping]
patience = 3

[logging]
every_steps = 1
images_every_steps = 3
num_images = 4
{EVALUATE if evaluate else ""}"""


@pytest.mark.parametrize("scheme", ["svi", "map"])
def test_tfgen_run_resumes_exactly(tmp_path, idx_folder, scheme):
    """A run stopped after epoch 1 and resumed ends where the uninterrupted run does: the
    latent table, its optimizer state, theta and theta's optimizer slots, the history with
    its validation metrics.  (Only the uninterrupted run evaluates: the tasks cost time.)"""
    straight, pieces = tmp_path / "straight", tmp_path / "pieces"
    for out, epochs in [(straight, 2), (pieces, 1)]:
        config = tmp_path / f"{out.name}.toml"
        config.write_text(run_config(idx_folder, out, epochs, scheme, evaluate=out == straight))
        result = run_cli("run", str(config), "--quiet")
        assert result.returncode == 0, result.stderr
    run_dir = next((pieces / f"tiny_{scheme}").iterdir())
    assert run_cli("run", "--resume", str(run_dir), "--quiet", "--set",
                   "train.epochs=2").returncode == 0
    straight_dir = next((straight / f"tiny_{scheme}").iterdir())

    checkpoints = [tf.train.latest_checkpoint(str(r / "checkpoints")) for r in (straight_dir, run_dir)]
    variables = dict(tf.train.list_variables(checkpoints[0]))
    table = [k for k in variables if k.startswith("latents/")]
    width = 2 * 3 if scheme == "svi" else 3
    assert variables["latents/values/.ATTRIBUTES/VARIABLE_VALUE"] == [48, width]
    assert len(table) == 4, table  # rows, Adam's m and v, per-row step counts
    slots = [k for k in variables if k.startswith("optimizer/")]
    assert len(slots) > 4, slots
    compared = table + slots + [k for k in variables if k.startswith(("model/", "generator/"))]
    for key in compared:
        a, b = (tf.train.load_variable(c, key) for c in checkpoints)
        np.testing.assert_array_equal(a, b, err_msg=key)
    steps = tf.train.load_variable(checkpoints[0], "latents/optimizer_state/2/.ATTRIBUTES/VARIABLE_VALUE")
    assert set(steps.tolist()) == {2}  # every row stepped once per epoch
    metrics = json.loads((straight_dir / "metrics.json").read_text())
    resumed = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "completed"
    history = metrics["history"]
    names = {"svi": ["elbo", "reconstruction", "kl", "loss"],
             "map": ["loss", "log_likelihood", "log_prior"]}[scheme]
    assert all(f"val_{name}" in history[-1] for name in names)
    assert learned(history) == learned(resumed["history"])
    evaluation = metrics["evaluation"]
    assert math.isfinite(evaluation["test_elbo"]) and math.isfinite(evaluation["test_log_likelihood"])
    assert evaluation["test_elbo"] <= evaluation["test_log_likelihood"] + 5.0  # a bound, up to noise
    for name in ["reconstructions_test.png", "samples_particle_gaussian.png", "loss_curves.png"]:
        assert (straight_dir / "figures" / name).is_file(), name

    # the latents' Adam moments cannot be carried into SGD: refused, nothing changed
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    changed = run_cli("run", "--resume", str(run_dir), "--quiet", "--set", "train.epochs=3",
                      "--set", 'inference.latent_optimizer.name="sgd"')
    assert changed.returncode == 2, changed.stderr
    assert "does not fit the config" in changed.stderr and "Traceback" not in changed.stderr
    assert {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()} == before


# --------------------------------------------------------------------------- config

BASE = {"data": {"binarize": "dynamic"}}


@pytest.mark.parametrize("scheme,key,value,path", [
    ("svi", "mc_samples", 0, "mc_samples"),
    ("svi", "init_log_variance", 50.0, "init_log_variance"),
    ("svi", "init_scale", -1.0, "init_scale"),
    ("svi", "validation_images", -1, "validation_images"),
    ("svi", "validation_fit_steps", 0, "validation_fit_steps"),
    ("svi", "summary_images", 100, "summary_images"),
    ("svi", "latent_optimizer", {"name": "rmsprop"}, "latent_optimizer.name"),
    ("svi", "latent_optimizer", {"learning_rate": 0.0}, "latent_optimizer.learning_rate"),
    ("svi", "latent_optimizer", {"momentum": 1.0}, "latent_optimizer.momentum"),
    ("svi", "posterior_fit", {"method": "map"}, "posterior_fit.method"),
    ("svi", "posterior_fit", {"init": "encoder"}, "posterior_fit.init"),
    ("svi", "posterior_fit", {"steps": 0}, "posterior_fit.steps"),
    ("map", "prior_weight", -1.0, "prior_weight"),
    ("map", "init_scale", 1000.0, "init_scale"),
    ("map", "latent_optimizer", {"name": "adamw"}, "latent_optimizer.name"),
    ("map", "posterior_fit", {"method": "mle"}, "posterior_fit.method"),
])
def test_bad_values_name_the_key_and_the_allowed_values(scheme, key, value, path):
    with pytest.raises(ConfigError) as err:
        from_dict({**BASE, "inference": {"scheme": scheme, key: value}})
    assert err.value.key == f"inference.{path}", err.value
    assert err.value.allowed


@pytest.mark.parametrize("scheme", ["svi", "map"])
def test_defaults_and_what_the_schemes_can_do(scheme):
    """The scheme's posterior_fit defaults (not FitConfig's), the latent optimizer's own
    learning rate, early stopping on the validation metric, default evaluations that need a
    posterior and a cloud; the encoder-only options are refused, naming the schemes that have
    one."""
    cfg = from_dict({**BASE, "inference": {"scheme": scheme, "posterior_fit": {"steps": 30}},
                     "train": {"early_stopping": {"patience": 3}}})
    params = cfg.inference.params
    assert (params.posterior_fit.steps, params.posterior_fit.patience) == (30, 0)  # one key set
    assert params.posterior_fit.init == "zeros" and params.posterior_fit.optimizer.learning_rate == 0.2
    assert params.latent_optimizer.learning_rate == 0.5 and params.validation_fit_steps == 40
    tasks = [(c.name, getattr(c.params, "sampler", None)) for c in cfg.evaluate]
    assert ("elbo", None) in tasks and ("samples", "particle_gaussian") in tasks
    for task in ["log_likelihood", "reconstructions", "curves"]:
        assert from_dict({**BASE, "inference": {"scheme": scheme},
                          "evaluate": [{"task": task}]}).evaluate[0].name == task
    with pytest.raises(ConfigError) as err:
        from_dict({**BASE, "inference": {"scheme": scheme, "posterior_fit": {"init": "encoder"}}})
    assert "'vae'" in err.value.allowed
