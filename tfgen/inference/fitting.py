"""Test-time inference: fit latents to images with the decoder fixed, whatever trained it.

For images y (optionally with only the pixels O observed) and a trained p(z) p_theta(y | z),
every image gets its own latent state, fitted by minimising its own objective:

* ``svi``  -- a diagonal Gaussian q(z | psi), psi = (mu, log sigma^2) (the 2AMU20 VAE assignment,
             task 4a/4b): minimise -ELBO_O(psi) = -(E_q[log p_theta(y_O | z)] - KL(q(z | psi) ||
             p(z))), the expectation by ``mc_samples`` reparameterized samples, the KL in closed
             form.
* ``map``  -- a point z: minimise -(lambda log p(z) + log p_theta(y_O | z)), lambda =
             ``prior_weight`` (1: the posterior mode).
* ``mle``  -- the same with lambda = 0: eq. (4) of Kuntz et al. (2023), the latents that maximise
             the likelihood of a corrupted image.
* ``langevin`` -- a chain z' = z + h grad log p(z, y_O) + sqrt(2h) w from the initial latents
             (Kuntz et al. 2023, eq. (3) with theta fixed) for all ``steps``; the last state is the
             result.
* ``encoder`` -- q_phi(z | y) of an amortized posterior, with hidden pixels set to the low end of
             the pixel range (no optimisation).

log p(y_O | z) sums only the observed pixels' terms under the model's own likelihood
(:meth:`tfgen.models.likelihood_capabilities.Factorized.log_prob_observed`), so hidden pixels
cannot change the objective.  All images of a chunk are fitted at once in one compiled
``tf.while_loop``.  Each image has its own early-stopping state (the 2AMU20 VAE assignment, task 4a:
patience on its own objective): it stops updating once its objective has not improved by
``min_delta`` for ``patience`` steps, and the loop ends when every image has stopped or
after ``steps`` steps; the best parameters seen are returned.  The noise of image k at
step t is row k of normals drawn from the seed (seed, t) for all images of the call, so an
image's fit does not depend on which other images share its chunk: fitting images together
or one at a time gives the same result.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Literal, NamedTuple

import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

from tfgen.inference import kernels
from tfgen.inference.base import PosteriorEstimates
from tfgen.inference.capabilities import AmortizedPosterior, DecoderLikelihood, require
from tfgen.inference.elbo import gaussian_posterior_from_scale
from tfgen.inference.latents import LatentOptimizerConfig, RowOptimizer
from tfgen.inference.samplers import Sampler, check_sampler, sample_latents
from tfgen.runtime import compile_step
from tfgen.schema import setting

tfd = tfp.distributions

Method = Literal["svi", "map", "mle", "langevin", "encoder"]
METHODS = ("svi", "map", "mle", "langevin", "encoder")


@dataclasses.dataclass
class FitConfig:
    """How latents are fitted to images at test time (the ``[....fit]`` tables)."""

    method: Method = setting("svi", help="svi: a Gaussian q per image (the 2AMU20 VAE assignment, "
                                         "task 4); map / mle: a point latent (mle = Kuntz et al. "
                                         "(2023), eq. (4)); langevin: a chain; encoder: q(z | y) "
                                         "of the scheme's encoder")
    steps: int = setting(500, at_least=1, at_most=1_000_000, help="at most this many steps (the "
                                                                  "2AMU20 VAE assignment: 500 "
                                                                  "epochs; Kuntz et al. (2023): "
                                                                  "1000)")
    patience: int = setting(50, at_least=0, help="an image stops after this many steps without "
                                                 "improving its objective (0 = never; the 2AMU20 "
                                                 "VAE assignment: 50)")
    min_delta: float = setting(0.0, at_least=0.0, help="improvement that resets an image's "
                                                       "patience")
    optimizer: LatentOptimizerConfig = setting(factory=LatentOptimizerConfig,
                                               help="the latents' optimizer")
    init: Literal["random", "zeros", "sampler", "encoder"] = setting(
        "random", help="random: mu, log sigma^2 (or z) ~ N(0, 1) (the 2AMU20 VAE assignment); "
                       "zeros; sampler: latents from `sampler` (Kuntz et al. 2023); encoder: the "
                       "encoder's q")
    sampler: Sampler = setting("prior", help="where init = 'sampler' draws the initial latents")
    mc_samples: int = setting(1, at_least=1, at_most=1000, help="svi: reparameterized samples per "
                                                                "step")
    prior_weight: float = setting(1.0, at_least=0.0, help="map: lambda in lambda log p(z) + log "
                                                          "p(y|z)")
    step_size: float = setting(1e-3, above=0.0, at_most=1.0, help="langevin: h")
    batch_size: int = setting(256, at_least=1, at_most=100_000, help="images fitted at once")

    def check(self, cfg, key: str) -> None:
        """Load-time: the scheme has what the method and the initialisation need."""
        require(cfg, DecoderLikelihood, f"{key}.method", "test-time fitting", self.method)
        if self.method == "encoder" or self.init == "encoder":
            which = "method" if self.method == "encoder" else "init"
            require(cfg, AmortizedPosterior, f"{key}.{which}", f"{which} 'encoder'", "encoder",
                    alternative="'svi', 'map', 'mle' or 'langevin'" if which == "method"
                    else "'random', 'zeros' or 'sampler'")
        if self.init == "sampler":
            check_sampler(cfg, self.sampler, f"{key}.sampler")

    @property
    def prior_lambda(self) -> float:
        return 0.0 if self.method == "mle" else self.prior_weight


class FitResult(NamedTuple):
    """Per image: the fitted mean (the point latent for map / mle / langevin), the scale of q
    (svi and encoder; None otherwise), the final objective and the steps taken."""

    mean: np.ndarray
    scale: np.ndarray | None
    objective: np.ndarray
    steps: np.ndarray
    seconds: float

    @property
    def images_per_second(self) -> float:
        return len(self.mean) / max(self.seconds, 1e-9)


class LatentFitter:
    """Fits latents to batches of images with one compiled loop per chunk size."""

    def __init__(self, scheme, config: FitConfig, compile_mode: str = "auto"):
        self.scheme, self.model, self.config = scheme, scheme.model, config
        self.optimizer = RowOptimizer(config.optimizer)
        self._loop = compile_step(self._fit_loop, compile_mode)

    # ------------------------------------------------------------------ objectives
    def _svi_objective(self, params, images, observed, noise):
        """-ELBO_O per image for params [n, 2d] = (mu, log sigma^2); noise [S, n, d]."""
        mean, log_variance = tf.split(params, 2, axis=-1)
        q = tfd.MultivariateNormalDiag(mean, tf.exp(0.5 * log_variance))
        z = mean + tf.exp(0.5 * log_variance) * noise
        expected = tf.reduce_mean(self.model.log_likelihood_observed(z, images, observed), axis=0)
        return -(expected - self.model.kl_to_prior(q, z))

    def _point_objective(self, z, images, observed, prior_lambda):
        """-(lambda log p(z) + log p(y_O | z)) per image."""
        log_lik = self.model.log_likelihood_observed(z, images, observed)
        if prior_lambda == 0.0:
            return -log_lik
        return -(prior_lambda * self.model.log_prior(z) + log_lik)

    def _objective_and_gradient(self, params, images, observed, noise):
        with tf.GradientTape(watch_accessed_variables=False) as tape:
            tape.watch(params)
            if self.config.method == "svi":
                objective = self._svi_objective(params, images, observed, noise)
            else:
                lam = 1.0 if self.config.method == "langevin" else self.config.prior_lambda
                objective = self._point_objective(params, images, observed, lam)
            total = tf.reduce_sum(objective)  # images are independent: per-image gradients
        return objective, tape.gradient(total, params)

    # ------------------------------------------------------------------ the loop
    def _fit_loop(self, images, observed, initial, ids, seed, num_ids):
        c = self.config
        d = self.model.latent_dim
        n = tf.shape(initial)[0]
        width = initial.shape[-1]
        # a chain runs all its steps; an optimisation stops per image on its patience
        patience = c.patience if c.patience and c.method != "langevin" else c.steps + 1
        state0 = self.optimizer.initial_state(initial)

        def noise_at(t):
            """Row ids of N(0, I) drawn for all num_ids images from the seed (seed, t)."""
            step_seed = tf.stack([seed, tf.cast(t, tf.int64)])
            if c.method == "svi":
                table = kernels.standard_normal(tf.stack([c.mc_samples, num_ids, d]), step_seed,
                                                initial.dtype)
                return tf.gather(table, ids, axis=1)
            table = kernels.standard_normal(tf.stack([num_ids, width]), step_seed, initial.dtype)
            return tf.gather(table, ids)

        def body(t, params, state, best, best_params, bad, steps):
            active = bad < patience
            objective, grad = self._objective_and_gradient(params, images, observed,
                                                           noise_at(t) if c.method == "svi" else None)
            # a stopped image is frozen: its state no longer changes (nor can it restart)
            improved = tf.logical_and(active, objective < best - c.min_delta)
            best_params = tf.where(improved[:, None], params, best_params)
            best = tf.where(improved, objective, best)
            bad = tf.where(improved, tf.zeros_like(bad), bad + tf.cast(active, bad.dtype))
            if c.method == "langevin":
                # gradient of the log density is -grad of the objective (prior_weight 1)
                new_params = kernels.langevin_step(params, -grad, c.step_size, noise=noise_at(t))
                new_state = state
            else:
                new_params, new_state = self.optimizer.masked_step(params, grad, state, active)
            steps = steps + tf.cast(active, steps.dtype)
            return t + 1, new_params, new_state, best, best_params, bad, steps

        def cond(t, params, state, best, best_params, bad, steps):
            return tf.logical_and(t < c.steps, tf.reduce_any(bad < patience))

        inf = tf.fill([n], tf.constant(np.inf, initial.dtype))
        loop_vars = (tf.constant(0), initial, state0, inf, initial, tf.zeros([n], tf.int32),
                     tf.zeros([n], tf.int32))
        _, params, _, best, best_params, _, steps = tf.while_loop(cond, body, loop_vars)
        final, _ = self._objective_and_gradient(
            params, images, observed, noise_at(c.steps) if c.method == "svi" else None)
        if c.method == "langevin" or not c.patience:
            return params, final, steps  # a chain's last state; without patience, the last step
        # the last step's parameters count too (they were never evaluated inside the loop)
        last_better = final < best
        return (tf.where(last_better[:, None], params, best_params),
                tf.where(last_better, final, best), steps)

    # ------------------------------------------------------------------ entry point
    def initial_params(self, images, observed, seed: int, ids, num_ids: int) -> np.ndarray:
        """The starting state of each image, drawn for all num_ids ids and gathered by ``ids``
        (so it does not depend on the chunking)."""
        c, d = self.config, self.model.latent_dim
        svi = c.method == "svi"
        if c.init == "encoder" or c.method == "encoder":
            q = self.scheme.posterior(tf.constant(fill_hidden(images, observed, self.scheme)))
            mean, log_var = q.loc.numpy(), 2.0 * np.log(q.scale.diag.numpy())
            keep_variance = svi or c.method == "encoder"  # the encoder's q is the result
            return np.concatenate([mean, log_var], -1) if keep_variance else mean
        if c.init == "zeros":
            return np.zeros((len(images), 2 * d if svi else d), np.float32)
        if c.init == "random":
            table = kernels.standard_normal([num_ids, 2 * d if svi else d],
                                            tf.constant([seed, -1], tf.int64)).numpy()
            return table[ids]
        z = sample_latents(c.sampler, self.scheme, num_ids, seed).numpy()[ids]
        return np.concatenate([z, np.zeros_like(z)], -1) if svi else z

    def fit(self, images, observed=None, seed: int = 0, ids=None, num_ids: int | None = None) -> FitResult:
        """Fit every image (``observed`` [n, H, W] bool, None = all pixels) in chunks of
        ``batch_size``; ``ids`` / ``num_ids`` place the images in a larger set (for the noise)."""
        images = np.asarray(images, np.float32)
        n, d = len(images), self.model.latent_dim
        observed = np.ones(images.shape[:3], bool) if observed is None else np.asarray(observed, bool)
        ids = np.arange(n) if ids is None else np.asarray(ids)
        num_ids = int(num_ids or (ids.max() + 1 if n else 0))
        start = time.monotonic()
        initial = self.initial_params(images, observed, seed, ids, num_ids).astype(np.float32)
        if self.config.method == "encoder":
            mean, log_var = initial[:, :d], initial[:, d:]
            return FitResult(mean, np.exp(0.5 * log_var), np.zeros(n, np.float32),
                             np.zeros(n, np.int32), time.monotonic() - start)
        chunk = min(self.config.batch_size, max(n, 1))
        outs = []
        for lo in range(0, n, chunk):
            rows = np.arange(lo, min(lo + chunk, n))
            padded = np.concatenate([rows, np.full(chunk - len(rows), rows[-1])])  # one shape
            out = self._loop(tf.constant(images[padded]), tf.constant(observed[padded]),
                             tf.constant(initial[padded]), tf.constant(ids[padded], tf.int64),
                             tf.constant(seed, tf.int64), tf.constant(num_ids, tf.int32))
            outs.append([o.numpy()[: len(rows)] for o in out])
        params, objective, steps = (np.concatenate(parts) for parts in zip(*outs))
        mean, scale = params, None
        if self.config.method == "svi":
            mean, scale = params[:, :d], np.exp(0.5 * params[:, d:])
        return FitResult(mean, scale, objective, steps, time.monotonic() - start)


def fill_hidden(images, observed, scheme) -> np.ndarray:
    """What an encoder sees of a partly observed image: hidden pixels at the range's low end."""
    low = scheme.data.pixel_range[0]
    return np.where(np.asarray(observed, bool)[..., None], images, np.float32(low)).astype(np.float32)


class FittedPosterior(PosteriorEstimates):
    """q(z | y) for schemes without an encoder: a diagonal Gaussian fitted to each image at
    test time by ``svi`` (the 2AMU20 VAE assignment, task 4a), with the settings of the scheme's
    ``posterior_fit`` table.  It gives them the ELBO, the importance-sampled log-likelihood
    (the fitted q as proposal: still a bound in expectation) and reconstructions."""

    def posterior_fitter(self) -> LatentFitter:
        cache = self.__dict__.setdefault("_posterior_fitter", [])
        if not cache:
            cache.append(LatentFitter(self, self.params.posterior_fit, self.cfg.train.compile))
        return cache[0]

    def posterior_for(self, images, seed):
        seed = np.asarray(seed, np.int64).reshape(-1)
        fitted = self.posterior_fitter().fit(np.asarray(images), seed=int(seed[0] * 1_000_003 + seed[-1]))
        return gaussian_posterior_from_scale(tf.constant(fitted.mean), tf.constant(fitted.scale))


def posterior_fit_field(steps: int = 200, patience: int = 20):
    """The ``posterior_fit`` key of an encoder-free scheme's config: svi fitting settings."""
    return setting(factory=lambda: FitConfig(method="svi", steps=steps, patience=patience),
                   help="how q(z | y) is fitted to new images at test time (method 'svi')")


def check_posterior_fit(config: FitConfig, cfg, key: str) -> None:
    from tfgen.errors import ConfigError

    if config.method != "svi":
        raise ConfigError(cfg.source_file, f"{key}.method", "a posterior fit needs a Gaussian q",
                          config.method, "'svi'")
    config.check(cfg, key)
