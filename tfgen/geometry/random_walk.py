"""Random walks in the latent space: Euclidean steps against steps that follow the metric.

The random-walk experiment of Grisi & Darcet (2020, after Arvanitidis et al. 2018, Sec. 5):
Gaussian random walks

    Euclidean:    z_{t+1} = z_t + s eps_t,                          eps_t ~ N(0, I_d)
    Riemannian:   z_{t+1} = z_t + s sqrt(m) L(z_t)^-T eps_t,        L L^T = M(z_t)

so a Riemannian step has covariance s^2 m M(z_t)^-1: steps along directions in which the
decoded image changes fast are short, and the decoded images change at a more even pace.
m puts both walks on one scale: it is the typical det(M)^(1/d) at the data (the task passes
the median over the data's latents), so at a typical data point both walks take steps of
about the same Euclidean size s.  A relative jitter (1e-6 of trace(M)/d) keeps the
Cholesky factor finite where M is nearly singular (where M is not finite at all, a step is
Euclidean, M = m I, instead of an error).  Far from the data a fixed-sigma decoder
hardly changes, M -> 0 and the walk takes long strides: the seed's "does not force to stay
around 0").  All walks move at once in one compiled ``tf.while_loop``; the noise of step t
comes from the stateless seed (seed, t), the same for both walks.
"""
from __future__ import annotations

import functools

import tensorflow as tf

from tfgen.geometry.metric import Embedding, metric_at
from tfgen.runtime import compile_step


def walk(embed: Embedding, riemannian: bool, start: tf.Tensor, steps: tf.Tensor,
         step_size: tf.Tensor, metric_scale: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """Walks from ``start`` [B, d]; the path [B, steps + 1, d].  A pure function of tensors."""
    d = start.shape[-1]
    eye = tf.eye(d, dtype=start.dtype)

    def body(t, z, path):
        eps = tf.random.stateless_normal(tf.shape(z), tf.stack([seed, tf.cast(t, tf.int64)]),
                                         dtype=z.dtype)
        if riemannian:
            metric = metric_at(embed, z, "forward")
            jitter = 1e-6 * tf.linalg.trace(metric)[:, None, None] / d * eye
            # a walk whose metric is not finite takes a Euclidean step (M = m I) rather than
            # failing the Cholesky factorisation
            finite = tf.reduce_all(tf.math.is_finite(metric), axis=[1, 2])[:, None, None]
            chol = tf.linalg.cholesky(tf.where(finite, metric + jitter, metric_scale * eye))
            # L^-T eps has covariance (L L^T)^-1 = M^-1
            eps = tf.linalg.triangular_solve(chol, eps[..., None], lower=True, adjoint=True)[..., 0]
            eps = tf.sqrt(metric_scale) * eps
        z = z + step_size * eps
        return t + 1, z, path.write(t + 1, z)

    path = tf.TensorArray(start.dtype, size=steps + 1).write(0, start)
    _, _, path = tf.while_loop(lambda t, *_: t < steps, body, (tf.constant(0), start, path))
    return tf.transpose(path.stack(), [1, 0, 2])


def random_walks(embed: Embedding, start, steps: int, step_size: float, metric_scale: float,
                 seed: int, compile_mode: str = "auto") -> dict[str, tf.Tensor]:
    """Both walks from the same starts with the same noise: {"euclidean": path, "riemannian": path}."""
    start = tf.convert_to_tensor(start, tf.float32)
    args = (start, tf.constant(int(steps)), tf.constant(step_size, tf.float32),
            tf.constant(metric_scale, tf.float32), tf.constant(seed, tf.int64))
    return {name: compile_step(functools.partial(walk, embed, name == "riemannian"), compile_mode)(*args)
            for name in ("euclidean", "riemannian")}
