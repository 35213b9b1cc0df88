"""Linear latent-variable models fitted by expectation-maximisation: the lecture's first models
(Mairal & Alameda-Pineda 2019-2020), the baselines every deep model's log-likelihood is read
against.

``scheme = "em"`` with ``model``:

* ``"ppca"`` -- probabilistic PCA (Tipping & Bishop 1999): z ~ N(0, I_d), y | z ~ N(W z + mu,
  sigma^2 I).  It is tfgen's own generative model with a linear decoder (``model.decoder``
  ``mlp`` with ``hidden = []``: y_mean = W z + b) and a Normal likelihood with one learned
  sigma (``scale = "learned"``), so every task that needs a decoder, a prior, a posterior or
  a log-likelihood works on it: samples, reconstructions, the latent scatter, completion...
  Each epoch accumulates the data's mean and covariance S batch by batch (float64, a
  checkpointed running sum, so an interrupted epoch resumes exactly); at its end
  ``iterations`` EM steps on S (:func:`tfgen.models.ppca.fit_ppca_em_moments`, from the
  current W and sigma^2) give the new W, mu, sigma^2, written into the decoder and the
  likelihood.  The closed-form maximum (eigenvectors of S) is computed beside it as a check,
  and both log-likelihoods are reported (``em_log_likelihood``,
  ``closed_form_log_likelihood``).  W is rotated to its principal axes after each M-step (W R
  has the same marginal), which makes M = W^T W + sigma^2 I diagonal, so the exact posterior
  q(z | y) = N(M^{-1} W^T (y - mu), sigma^2 M^{-1}) (Tipping & Bishop eq. (6)) is a diagonal
  Gaussian: the scheme's amortized posterior, in closed form.
* ``"gmm"`` -- a Gaussian mixture on pixels, sum_k pi_k N(y | m_k, diag s_k^2) (isotropic or
  diagonal), one EM iteration per epoch (Dempster et al. 1977; Bishop 2006, section 9.2):
  the E-step's responsibilities and the sufficient statistics sum_n r_nk, sum_n r_nk y_n and
  sum_n r_nk y_n^2 are accumulated over the epoch's batches, the M-step runs at its end.  Its
  exact log-likelihood and samples are what the evaluation reads; it has no decoder.

The training metric ``loss`` is the exact negative log-likelihood of the batch under the
current parameters (nats per image), so the curves show EM's monotone ascent.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Literal

import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

from tfgen.errors import ConfigError
from tfgen.inference.base import PosteriorEstimates, Scheme
from tfgen.inference.capabilities import AmortizedPosterior, ExactLogLikelihood, ImageSampler
from tfgen.models import ppca
from tfgen.models.gmm import ALIVE, m_step_from_sums
from tfgen.models.kmeans import kmeans_plus_plus
from tfgen.registry import SCHEMES
from tfgen.schema import setting

tfd = tfp.distributions
LOG_2PI = math.log(2.0 * math.pi)


def _described(name: str, params, key: str) -> str:
    """A component as given, for a message: "conv_decoder", "mlp (hidden = [32])"."""
    value = getattr(params, key, None)
    return name if value is None else f"{name} ({key} = {value!r})"


@dataclasses.dataclass
class EMConfig:
    #: keys that size checkpointed state: a resume may not change them (config.fixed_on_resume)
    fixed_on_resume = ("model", "components", "covariance")

    model: Literal["ppca", "gmm"] = setting("ppca", help="ppca: probabilistic PCA (linear decoder, "
                                                         "learned sigma); gmm: Gaussian mixture "
                                                         "on pixels")
    iterations: int = setting(1000, at_least=1, at_most=1_000_000,
                              help="ppca: EM iterations on the accumulated covariance after each "
                                   "pass over the data")
    tolerance: float = setting(1e-9, at_least=0.0, help="ppca: stop the iterations when the mean "
                                                         "log-likelihood improves by less")
    components: int = setting(10, at_least=1, at_most=10000, help="gmm: K components")
    covariance: Literal["isotropic", "diagonal"] = setting("diagonal", help="gmm: s_k^2 I or "
                                                                             "diag(s_k^2)")
    variance_floor: float = setting(1e-3, above=0.0, help="gmm: floor of every variance (pixels "
                                                          "that never vary would give density inf)")
    init_images: int = setting(5000, at_least=1, help="gmm: training images k-means++ picks the "
                                                      "initial means from")

    def check(self, cfg):
        file = cfg.source_file
        if cfg.data.binarize != "none":
            raise ConfigError(file, "data.binarize", "EM's linear-Gaussian and mixture models "
                              "are densities on continuous pixels", cfg.data.binarize, "'none'")
        if self.model != "ppca":
            return
        decoder, likelihood = cfg.model.decoder, cfg.model.likelihood
        if decoder.name != "mlp" or list(decoder.params.hidden):
            raise ConfigError(file, "model.decoder", "PPCA's decoder is linear: an mlp with no "
                              "hidden layer", _described(decoder.name, decoder.params, "hidden"),
                              "name = 'mlp', hidden = []")
        if likelihood.name != "normal" or likelihood.params.scale != "learned":
            raise ConfigError(file, "model.likelihood", "PPCA's noise is one learned sigma",
                              _described(likelihood.name, likelihood.params, "scale"),
                              "name = 'normal', scale = 'learned'")
        if likelihood.params.mean_activation != "identity":
            raise ConfigError(file, "model.likelihood.mean_activation", "PPCA's mean is linear",
                              likelihood.params.mean_activation, "'identity'")
        if cfg.model.prior.name != "standard_normal":
            raise ConfigError(file, "model.prior.name", "PPCA's latent is N(0, I)",
                              cfg.model.prior.name, "'standard_normal'")
        # d < D is checked when the data (and so D) is known: PPCAByEM.__init__


class _Accumulator:
    """Float64 running sums over an epoch's batches, all-reduced over replicas, checkpointed."""

    def __init__(self, shapes: dict[str, list[int]]):
        self.sums = {name: tf.Variable(tf.zeros(shape, tf.float64), trainable=False, name=name,
                                       aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
                     for name, shape in shapes.items()}

    def add(self, values: dict[str, tf.Tensor]) -> None:
        ctx = tf.distribute.get_replica_context()
        names = sorted(values)
        totals = [values[n] for n in names]
        if ctx is not None and ctx.num_replicas_in_sync > 1:
            totals = ctx.all_reduce(tf.distribute.ReduceOp.SUM, totals)
        for name, total in zip(names, totals):
            self.sums[name].assign_add(total)

    def read(self) -> dict[str, np.ndarray]:
        return {name: v.numpy() for name, v in self.sums.items()}

    def reset(self) -> None:
        for v in self.sums.values():
            v.assign(tf.zeros_like(v))


@SCHEMES.register("em", config=EMConfig)
class EM(Scheme):
    """Expectation-maximisation for PPCA or a Gaussian mixture (the ``model`` key)."""

    default_evaluations = ()

    @classmethod
    def variant_class(cls, params: EMConfig) -> type:
        """The class that implements ``params.model`` (its capabilities differ)."""
        return {"ppca": PPCAByEM, "gmm": GMMByEM}[params.model]

    @classmethod
    def variants(cls):
        return [("inference.model", "ppca", PPCAByEM), ("inference.model", "gmm", GMMByEM)]


class PPCAByEM(EM, AmortizedPosterior, ExactLogLikelihood, PosteriorEstimates):
    """PPCA by EM on the data's covariance; the exact posterior is the amortized q (module
    docstring)."""

    default_evaluations = (
        {"task": "log_likelihood", "estimator": "exact", "max_images": 0},
        "reconstructions", "samples", "curves",
    )

    def __init__(self, params: EMConfig, model, data, cfg, generator, strategy):
        super().__init__(params, model, data, cfg, generator, strategy)
        self.pixels = int(np.prod(data.image_shape))
        d = model.latent_dim
        if d >= self.pixels:
            raise ConfigError(cfg.source_file, "model.prior.dim", "PPCA needs d < D, the "
                              "number of pixels", d, f"at most {self.pixels - 1}")
        self.stats = _Accumulator({"count": [], "sum": [self.pixels],
                                   "sum_outer": [self.pixels, self.pixels]})
        self.last_fit: dict = {}

    # ---- parameters, read from and written to the model
    def parameters(self) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        """(W [D, d], mu [D], sigma^2) of the model's decoder and likelihood."""
        head = self.model.decoder.head
        lik = self.model.likelihood
        sigma = lik.config.min_sigma + tf.nn.softplus(lik.raw_sigma)
        return tf.transpose(head.kernel), head.bias, tf.square(sigma)

    def set_parameters(self, w: np.ndarray, mu: np.ndarray, sigma2: float) -> None:
        head = self.model.decoder.head
        lik = self.model.likelihood
        head.kernel.assign(w.T.astype(np.float32))
        head.bias.assign(mu.astype(np.float32))
        excess = max(math.sqrt(sigma2) - lik.config.min_sigma, 1e-12)
        lik.raw_sigma.assign(np.float32(excess + math.log(-math.expm1(-excess))))  # softplus^-1

    # ---- the exact marginal and posterior (Tipping & Bishop eqs. (4), (6), with Woodbury)
    def exact_log_likelihood(self, images: tf.Tensor) -> tf.Tensor:
        """log N(y | mu, W W^T + sigma^2 I) per image [B], in O(B D d)."""
        w, mu, sigma2 = self.parameters()
        y = tf.reshape(tf.cast(images, tf.float32), [-1, self.pixels]) - mu
        d = tf.shape(w)[1]
        m = tf.matmul(w, w, transpose_a=True) + sigma2 * tf.eye(d)
        chol = tf.linalg.cholesky(m)
        wty = tf.matmul(y, w)                                           # [B, d]
        solved = tf.linalg.cholesky_solve(chol, tf.transpose(wty))      # M^-1 W^T y, [d, B]
        quad = (tf.reduce_sum(y * y, -1) - tf.reduce_sum(wty * tf.transpose(solved), -1)) / sigma2
        logdet = (self.pixels - tf.cast(d, tf.float32)) * tf.math.log(sigma2) \
            + 2.0 * tf.reduce_sum(tf.math.log(tf.linalg.diag_part(chol)))
        return -0.5 * (self.pixels * LOG_2PI + logdet + quad)

    def posterior(self, images, training=False):
        """q(z | y) = N(M^-1 W^T (y - mu), sigma^2 M^-1) (exact; diagonal once W's columns are
        orthogonal, as after every M-step; before the first, its diagonal)."""
        w, mu, sigma2 = self.parameters()
        y = tf.reshape(tf.cast(images, tf.float32), [-1, self.pixels]) - mu
        m = tf.matmul(w, w, transpose_a=True) + sigma2 * tf.eye(tf.shape(w)[1])
        m_inv = tf.linalg.inv(m)
        mean = tf.matmul(tf.matmul(y, w), m_inv)
        scale = tf.sqrt(sigma2 * tf.linalg.diag_part(m_inv))
        return tfd.MultivariateNormalDiag(mean, tf.broadcast_to(scale, tf.shape(mean)))

    # ---- training: accumulate, then EM on S
    def step_on_replica(self, images, indices, batch):
        y = tf.reshape(tf.cast(images, tf.float64), [-1, self.pixels])
        self.stats.add({"count": tf.cast(tf.shape(y)[0], tf.float64),
                        "sum": tf.reduce_sum(y, 0),
                        "sum_outer": tf.matmul(y, y, transpose_a=True)})
        nll = -tf.reduce_mean(self.exact_log_likelihood(images))
        return {"loss": nll, "log_likelihood": -nll}

    def end_epoch(self) -> dict[str, float]:
        sums = self.stats.read()
        n = float(sums["count"])
        mean = sums["sum"] / n
        covariance = sums["sum_outer"] / n - np.outer(mean, mean)
        w, _, sigma2 = (np.asarray(v, np.float64) for v in self.parameters())
        fit = ppca.fit_ppca_em_moments(mean, covariance, self.model.latent_dim,
                                       self.params.iterations, self.params.tolerance,
                                       w0=w, sigma2_0=float(sigma2))
        closed = ppca.fit_ppca_closed_form_moments(mean, covariance, self.model.latent_dim)
        # principal axes: W = U S V^T -> U S (the same W W^T; M becomes diagonal)
        u, s, _ = np.linalg.svd(fit.W, full_matrices=False)
        self.set_parameters(u * s, fit.mu, fit.sigma2)
        self.stats.reset()
        self.last_fit = {"em_log_likelihood": fit.log_likelihood,
                         "closed_form_log_likelihood": closed.log_likelihood,
                         "em_iterations": float(len(fit.log_likelihood_trace) - 1),
                         "sigma2": fit.sigma2, "closed_form_sigma2": closed.sigma2}
        return self.last_fit

    def checkpoint_items(self):
        return {"em_statistics": self.stats.sums}


class GMMByEM(EM, ExactLogLikelihood, ImageSampler):
    """A Gaussian mixture on pixels, one EM iteration per epoch (module docstring)."""

    default_evaluations = (
        {"task": "log_likelihood", "estimator": "exact", "max_images": 0},
        "samples", "curves",
    )

    def __init__(self, params: EMConfig, model, data, cfg, generator, strategy):
        super().__init__(params, model, data, cfg, generator, strategy)
        k = params.components
        self.pixels = int(np.prod(data.image_shape))
        self.image_shape = data.image_shape
        x = data.train.images[: params.init_images].reshape(-1, self.pixels).astype(np.float64)
        if len(x) < k:
            raise ConfigError(cfg.source_file, "inference.components", "more components than "
                              "training images", k, f"at most {len(x)}")
        means = kmeans_plus_plus(x, k, np.random.default_rng(cfg.experiment.seed))
        variance = max(float(x.var(axis=0).mean()), params.variance_floor)
        self.log_weights = tf.Variable(tf.fill([k], -math.log(k)), name="log_weights")
        self.means = tf.Variable(means.astype(np.float32), name="means")
        shape = [k] if params.covariance == "isotropic" else [k, self.pixels]
        self.variances = tf.Variable(tf.fill(shape, np.float32(variance)), name="variances")
        self.stats = _Accumulator({"count": [], "resp": [k], "resp_y": [k, self.pixels],
                                   "resp_y2": [k, self.pixels]})

    def _component_log_prob(self, y: tf.Tensor) -> tf.Tensor:
        """log pi_k + log N(y | m_k, diag s_k^2), [B, K]."""
        variances = self.variances if self.params.covariance == "diagonal" \
            else self.variances[:, None] * tf.ones([1, self.pixels])
        inv = 1.0 / variances                                                  # [K, D]
        quad = (tf.matmul(y * y, inv, transpose_b=True) - 2.0 * tf.matmul(y, self.means * inv,
                                                                          transpose_b=True)
                + tf.reduce_sum(self.means ** 2 * inv, -1))                    # [B, K]
        log_norm = -0.5 * (self.pixels * LOG_2PI + tf.reduce_sum(tf.math.log(variances), -1))
        return self.log_weights + log_norm - 0.5 * quad

    def exact_log_likelihood(self, images):
        y = tf.reshape(tf.cast(images, tf.float32), [-1, self.pixels])
        return tf.reduce_logsumexp(self._component_log_prob(y), -1)

    def distribution(self) -> tfd.Distribution:
        scale = tf.sqrt(self.variances if self.params.covariance == "diagonal"
                        else self.variances[:, None] * tf.ones([1, self.pixels]))
        return tfd.MixtureSameFamily(tfd.Categorical(logits=self.log_weights),
                                     tfd.MultivariateNormalDiag(self.means, scale))

    def sample_images(self, num: int, seed: int, mean: bool = False) -> tf.Tensor:
        """y ~ p(y), or (``mean``) the mean m_k of each draw's component k ~ pi."""
        if mean:
            k = tfd.Categorical(logits=self.log_weights).sample(
                num, seed=tf.constant([seed, 0], tf.int32))
            flat = tf.gather(self.means, k)
        else:
            flat = self.distribution().sample(num, seed=tf.constant([seed, 0], tf.int32))
        return tf.reshape(flat, [num, *self.image_shape])

    def step_on_replica(self, images, indices, batch):
        y = tf.reshape(tf.cast(images, tf.float32), [-1, self.pixels])
        joint = self._component_log_prob(y)                                  # [B, K]
        log_lik = tf.reduce_logsumexp(joint, -1)
        resp = tf.cast(tf.exp(joint - log_lik[:, None]), tf.float64)          # E-step
        y64 = tf.cast(y, tf.float64)
        self.stats.add({"count": tf.cast(tf.shape(y)[0], tf.float64),
                        "resp": tf.reduce_sum(resp, 0),
                        "resp_y": tf.matmul(resp, y64, transpose_a=True),
                        "resp_y2": tf.matmul(resp, y64 * y64, transpose_a=True)})
        nll = -tf.reduce_mean(log_lik)
        return {"loss": nll, "log_likelihood": -nll}

    def end_epoch(self) -> dict[str, float]:
        """M-step (:func:`tfgen.models.gmm.m_step_from_sums`: Bishop 2006, eqs. (9.24)-(9.26),
        diagonal or isotropic) from the epoch's sums; a component that no image claims keeps
        its parameters."""
        s = self.stats.read()
        weights, means, variances = m_step_from_sums(
            float(s["count"]), s["resp"], s["resp_y"], s["resp_y2"], self.means.numpy(),
            self.variances.numpy(), self.params.variance_floor)
        # an unclaimed component's weight 0 as a finite log weight (float32 logits)
        weights = np.maximum(weights, 1e-300)
        self.log_weights.assign(np.log(weights / weights.sum()).astype(np.float32))
        self.means.assign(means.astype(np.float32))
        self.variances.assign(variances.astype(np.float32))
        self.stats.reset()
        return {"components_alive": float((s["resp"] > ALIVE).sum())}

    def checkpoint_items(self):
        return {"em_statistics": self.stats.sums, "gmm": tf.train.Checkpoint(
            log_weights=self.log_weights, means=self.means, variances=self.variances)}

    def learning_rate(self) -> float:
        return 0.0
