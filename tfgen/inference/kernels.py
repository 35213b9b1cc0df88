"""Update kernels on latents: Langevin moves and per-element optimizer steps.

Pure functions of tensors, shared by every scheme and test-time task that moves latents
(PGA's particle cloud, svi's and map's per-datapoint tables, test-time fitting, inpainting).
Random kernels take an explicit stateless seed (a shape-[2] integer tensor), as TFP's MCMC
kernels do, so the same seed gives the same move whatever else ran before.

Unadjusted Langevin algorithm (Kuntz et al. 2023, eq. (3); Roberts & Tweedie 1996): for a density
pi(x) and step size h,

    x' = x + h grad log pi(x) + sqrt(2 h) w,   w ~ N(0, I).

(Han et al. 2017 write the same move with s = sqrt(2h): x' = x + s^2/2 grad log pi(x) + s w.)
For a Gaussian pi = N(mu, P^-1) the chain stays Gaussian with mean mu at stationarity and
covariance (P (I - h P / 2))^-1 instead of P^-1: ULA's O(h) bias (tests/test_chains.py).

Adam (Kingma & Ba 2015, Algorithm 1), element-wise with step counts t that may differ per
row (a per-datapoint latent takes a step only when its image is in the batch):

    m' = b1 m + (1 - b1) g,   v' = b2 v + (1 - b2) g^2,
    x' = x - lr (m' / (1 - b1^t')) / (sqrt(v' / (1 - b2^t')) + eps),   t' = t + 1.

SGD with momentum mu (PyTorch's form): u' = mu u + g, x' = x - lr u'.

Hamiltonian Monte Carlo (Duane et al. 1987; Neal 2011, "MCMC using Hamiltonian dynamics",
Handbook of MCMC ch. 5) for pi(x) with an identity mass matrix: momentum p ~ N(0, I), L
leapfrog steps of size e (Neal 2011, eqs. (5.18)-(5.20))

    p <- p + e/2 grad log pi(x),  x <- x + e p,  p <- p + e/2 grad log pi(x),

then accept (x', p') with probability min(1, exp(log pi(x') - |p'|^2/2 - log pi(x) + |p|^2/2)),
else stay at x: pi is left invariant exactly, whatever e and L.  With L = 1 this is the
Metropolis-adjusted Langevin algorithm with h = e^2 / 2 (Neal 2011, sec. 5.5.2; Roberts &
Tweedie 1996).
"""
from __future__ import annotations

import math
from typing import Callable, NamedTuple

import tensorflow as tf


def standard_normal(shape, seed: tf.Tensor, dtype=tf.float32) -> tf.Tensor:
    """N(0, I) noise of ``shape`` from a stateless seed (shape [2], int32 or int64)."""
    return tf.random.stateless_normal(shape, seed=seed, dtype=dtype)


def langevin_step(x: tf.Tensor, grad_log_density: tf.Tensor, step_size: float | tf.Tensor,
                  seed: tf.Tensor | None = None, noise: tf.Tensor | None = None,
                  noise_scale: float = 1.0) -> tf.Tensor:
    """One unadjusted Langevin move: x + h grad log pi(x) + c sqrt(2h) w (Kuntz et al. 2023, eq.
    (3)), w ~ N(0, I) from ``seed``, or ``noise`` itself (noise indexed by image or row chunk:
    :mod:`tfgen.distribute`).  c = ``noise_scale`` is 1 for the Langevin kernel whose
    stationary law is pi (up to ULA's O(h) bias); other values are tempered moves (0: gradient
    ascent on log pi), as the short-run chains of :mod:`tfgen.inference.langevin_chains` allow.

    h may be a scalar tensor (a step-size schedule's h_k, :mod:`tfgen.inference.step_sizes`):
    h and c sqrt(2h) are then computed in float64 and rounded to x's dtype, as Python floats
    are, so a tensor h moves x exactly as the same h given as a float does."""
    if noise is None:
        noise = standard_normal(tf.shape(x), seed, x.dtype)
    if tf.is_tensor(step_size):
        h = tf.cast(step_size, tf.float64)
        drift_scale = tf.cast(h, x.dtype)
        noise_factor = tf.cast(noise_scale * tf.sqrt(2.0 * h), x.dtype)
    else:
        drift_scale, noise_factor = step_size, noise_scale * math.sqrt(2.0 * step_size)
    return x + drift_scale * grad_log_density + noise_factor * noise


def seeds_from(generator: tf.random.Generator, count: int | None = None) -> tf.Tensor:
    """Fresh stateless seeds drawn from a stateful generator: shape [2] (count None) or [count, 2].

    The generator's state is checkpointed, so the seeds, and the moves, resume exactly.
    """
    seeds = tf.transpose(generator.make_seeds(1 if count is None else count))
    return seeds[0] if count is None else seeds


class AdamState(NamedTuple):
    m: tf.Tensor  # first moment, shape of x
    v: tf.Tensor  # second moment, shape of x
    t: tf.Tensor  # steps taken, broadcastable to x (e.g. [rows, 1, ...] per row)


def adam_step(x, grad, state: AdamState, learning_rate, beta1=0.9, beta2=0.999, epsilon=1e-8):
    """One Adam step (Kingma & Ba 2015) of x down ``grad``; returns (x', state')."""
    t = state.t + 1
    m = beta1 * state.m + (1.0 - beta1) * grad
    v = beta2 * state.v + (1.0 - beta2) * tf.square(grad)
    tf_t = tf.cast(t, x.dtype)
    m_hat = m / (1.0 - tf.pow(tf.cast(beta1, x.dtype), tf_t))
    v_hat = v / (1.0 - tf.pow(tf.cast(beta2, x.dtype), tf_t))
    return x - learning_rate * m_hat / (tf.sqrt(v_hat) + epsilon), AdamState(m, v, t)


def sgd_step(x, grad, velocity, learning_rate, momentum=0.0):
    """One SGD step with (PyTorch-style) momentum; returns (x', velocity')."""
    velocity = momentum * velocity + grad
    return x - learning_rate * velocity, velocity


class HMCState(NamedTuple):
    """A batch of chains at x [..., d] with the target's log density [...] and gradient
    [..., d] there, and ``extras``: any nest of tensors (leading dims those of the log
    density) the target function also returns, carried so a caller never recomputes them."""

    x: tf.Tensor
    log_density: tf.Tensor
    grad: tf.Tensor
    extras: object = ()


def _keep_where(accept: tf.Tensor, new: tf.Tensor, old: tf.Tensor) -> tf.Tensor:
    """``new`` where ``accept`` (shape [...]) else ``old`` (shape [..., more])."""
    mask = tf.reshape(accept, tf.concat([tf.shape(accept),
                                         tf.ones([tf.rank(new) - tf.rank(accept)], tf.int32)], 0))
    return tf.where(mask, new, old)


def hmc_step(state: HMCState, target: Callable, step_size: tf.Tensor, num_leapfrog: int,
             seed: tf.Tensor) -> tuple[HMCState, tf.Tensor]:
    """One HMC transition with accept/reject (module docstring) of every chain of ``state``.

    ``target(x) -> HMCState`` evaluates log pi, its gradient and the extras at x; it is called
    ``num_leapfrog`` times.  ``step_size`` broadcasts against x (e.g. one per chain or per
    image).  Returns the new state (the proposal where accepted, else the old state) and the
    acceptance probabilities min(1, exp(log alpha)), shape [...].  A non-finite proposal is
    rejected."""
    momentum_seed, accept_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    momentum = standard_normal(tf.shape(state.x), momentum_seed, state.x.dtype)

    def leapfrog(i, current, p):
        p = p + 0.5 * step_size * current.grad
        x = current.x + step_size * p
        moved = target(x)
        return i + 1, moved, p + 0.5 * step_size * moved.grad

    _, proposed, end_momentum = tf.while_loop(
        lambda i, *_: i < num_leapfrog, leapfrog, (tf.constant(0), state, momentum))
    kinetic = lambda p: 0.5 * tf.reduce_sum(tf.square(p), axis=-1)
    log_alpha = (proposed.log_density - kinetic(end_momentum)
                 - state.log_density + kinetic(momentum))
    log_alpha = tf.where(tf.math.is_finite(log_alpha), log_alpha,
                         tf.constant(-float("inf"), log_alpha.dtype))
    log_uniform = tf.math.log(tf.random.stateless_uniform(tf.shape(log_alpha), accept_seed,
                                                          dtype=log_alpha.dtype))
    accept = log_uniform < log_alpha
    new_state = tf.nest.map_structure(lambda new, old: _keep_where(accept, new, old),
                                      proposed, state)
    return new_state, tf.exp(tf.minimum(log_alpha, 0.0))
