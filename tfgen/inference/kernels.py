"""Update kernels on latents: Langevin moves and per-element optimizer steps.

Pure functions of tensors, shared by every scheme and test-time task that moves latents
(PGA's particle cloud, svi's and map's per-datapoint tables, test-time fitting, inpainting).
Random kernels take an explicit stateless seed (a shape-[2] integer tensor), as TFP's MCMC
kernels do, so the same seed gives the same move whatever else ran before.

Unadjusted Langevin algorithm (seed 000, eq. (3); Roberts & Tweedie 1996): for a density
pi(x) and step size h,

    x' = x + h grad log pi(x) + sqrt(2 h) w,   w ~ N(0, I).

Adam (Kingma & Ba 2015, Algorithm 1), element-wise with step counts t that may differ per
row (a per-datapoint latent takes a step only when its image is in the batch):

    m' = b1 m + (1 - b1) g,   v' = b2 v + (1 - b2) g^2,
    x' = x - lr (m' / (1 - b1^t')) / (sqrt(v' / (1 - b2^t')) + eps),   t' = t + 1.

SGD with momentum mu (PyTorch's form): u' = mu u + g, x' = x - lr u'.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import tensorflow as tf


def standard_normal(shape, seed: tf.Tensor, dtype=tf.float32) -> tf.Tensor:
    """N(0, I) noise of ``shape`` from a stateless seed (shape [2], int32 or int64)."""
    return tf.random.stateless_normal(shape, seed=seed, dtype=dtype)


def langevin_step(x: tf.Tensor, grad_log_density: tf.Tensor, step_size: float,
                  seed: tf.Tensor) -> tf.Tensor:
    """One unadjusted Langevin move: x + h grad log pi(x) + sqrt(2h) w (seed 000, eq. (3))."""
    noise = standard_normal(tf.shape(x), seed, x.dtype)
    return x + step_size * grad_log_density + math.sqrt(2.0 * step_size) * noise


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
