"""Importance-sampling proposals r(z) built from a diagonal Gaussian q(z | y) = N(mu, diag s^2),
optionally widened.

Whatever gives q (an encoder, or a Gaussian fitted per image at test time), the importance
estimate of the marginal likelihood

    log p(y) ~ log 1/K sum_k p(y, z_k) / r(z_k),   z_k ~ r,

is a stochastic lower bound, E[.] <= log p(y) (Jensen's inequality on an unbiased estimate of
p(y); Burda et al. 2016, Theorem 1, for r = q), for every r whose support covers the
posterior's.  Its variance, however, is finite only if p(z | y)^2 / r(z) is integrable (Owen
2013, "Monte Carlo theory, methods and examples", sec. 9.1), which a proposal with lighter
tails than the posterior breaks; a q fitted by maximising the ELBO minimises KL(q || p(z | y))
and under-covers the posterior (Bishop 2006, sec. 10.1.2).  Hence the widened proposals
(Geweke 1989, "Bayesian inference in econometric models using Monte Carlo integration", who
recommends multivariate Student-t importance functions):

* ``posterior``: r = q.
* ``scaled``: r = N(mu, diag (c s)^2), c = ``proposal_scale``.
* ``student_t``: r = the multivariate Student-t with nu = ``proposal_df`` degrees of freedom,
  location mu and scale matrix diag(s^2) (Kotz & Nadarajah 2004, eq. (1.1)):

      log r(z) = log G((nu + d) / 2) - log G(nu / 2) - d/2 log(nu pi) - sum_i log s_i
                 - (nu + d) / 2 log(1 + |(z - mu) / s|^2 / nu),

  drawn as z = mu + s eps sqrt(nu / g), eps ~ N(0, I_d), g ~ chi^2_nu = 2 Gamma(nu / 2, 1)
  (its scale-mixture-of-normals form).  Its tails decay polynomially; for nu > 2 its
  covariance is nu / (nu - 2) diag(s^2).

Every draw comes from an explicit stateless seed; the ``posterior`` draws are exactly those the
estimators drew before widening existed (z = mu + s eps, eps from ``stateless_normal``).
"""
from __future__ import annotations

import math
from typing import NamedTuple

import tensorflow as tf

KINDS = ("posterior", "student_t", "scaled")


class Proposal(NamedTuple):
    """Which proposal, and its widening (a NamedTuple: compiled functions take it as a static
    argument, one trace per distinct value)."""

    kind: str = "posterior"
    df: float = 5.0      # student_t: nu
    scale: float = 1.5   # scaled: c

    @property
    def suffix(self) -> str:
        """The metric-name suffix of estimates under this proposal ('' for q itself)."""
        return "" if self.kind == "posterior" else f"_{self.kind}"


POSTERIOR = Proposal()


def draw(proposal: Proposal, loc: tf.Tensor, scale: tf.Tensor, seed: tf.Tensor,
         num_samples: int) -> tuple[tf.Tensor, tf.Tensor]:
    """``num_samples`` draws z [S, B, d] of the proposal around q = N(loc, diag scale^2)
    ([B, d] each) from a stateless seed, and their log densities log r(z) [S, B]."""
    shape = tf.concat([[num_samples], tf.shape(loc)], 0)
    if proposal.kind == "student_t":
        normal_seed, gamma_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
        eps = tf.random.stateless_normal(shape, normal_seed, dtype=loc.dtype)
        half_chi2 = tf.random.stateless_gamma(shape[:2], gamma_seed,
                                              alpha=tf.constant(proposal.df / 2.0, loc.dtype),
                                              dtype=loc.dtype)
        z = loc + scale * eps * tf.sqrt(proposal.df / (2.0 * half_chi2))[..., None]
    else:
        noise = tf.random.stateless_normal(shape, seed, dtype=loc.dtype)
        z = loc + _gaussian_scale(proposal, scale) * noise
    return z, log_prob(proposal, z, loc, scale)


def log_prob(proposal: Proposal, z: tf.Tensor, loc: tf.Tensor, scale: tf.Tensor) -> tf.Tensor:
    """log r(z) at z [..., B, d] for the proposal around N(loc, diag scale^2) ([B, d])."""
    if proposal.kind == "student_t":
        return student_t_log_prob(z, loc, scale, proposal.df)
    return gaussian_log_prob(z, loc, _gaussian_scale(proposal, scale))


def _gaussian_scale(proposal: Proposal, scale: tf.Tensor) -> tf.Tensor:
    if proposal.kind == "posterior":
        return scale
    if proposal.kind == "scaled":
        return proposal.scale * scale
    raise ValueError(f"unknown proposal {proposal.kind!r}; allowed: {', '.join(KINDS)}")


def gaussian_log_prob(z: tf.Tensor, loc: tf.Tensor, scale: tf.Tensor) -> tf.Tensor:
    """log N(z; loc, diag scale^2), summed over the last axis.  In closed form rather than
    through ``tfd.MultivariateNormalDiag``, whose bijector cache would return the draws' noise
    without its gradient when z is a tensor it has seen before (AIS differentiates it)."""
    d = tf.cast(tf.shape(z)[-1], z.dtype)
    return (-0.5 * tf.reduce_sum(tf.square((z - loc) / scale), axis=-1)
            - tf.reduce_sum(tf.math.log(scale), axis=-1) - 0.5 * d * math.log(2.0 * math.pi))


def student_t_log_prob(z: tf.Tensor, loc: tf.Tensor, scale: tf.Tensor, df: float) -> tf.Tensor:
    """log of the multivariate Student-t density (module docstring) at z [..., B, d]."""
    d = tf.cast(tf.shape(z)[-1], z.dtype)
    nu = tf.constant(df, z.dtype)
    mahalanobis = tf.reduce_sum(tf.square((z - loc) / scale), axis=-1)
    return (tf.math.lgamma((nu + d) / 2.0) - tf.math.lgamma(nu / 2.0)
            - 0.5 * d * tf.math.log(nu * math.pi) - tf.reduce_sum(tf.math.log(scale), axis=-1)
            - 0.5 * (nu + d) * tf.math.log1p(mahalanobis / nu))
