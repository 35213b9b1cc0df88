"""The expected Riemannian metric of a stochastic decoder, pulled back to the latent space.

A decoder whose likelihood p(y | z) has per-pixel mean mu(z) and standard deviation sigma(z)
acts as the random map f(z) = mu(z) + sigma(z) * eps, eps ~ N(0, I_D).  Its expected metric
is (Arvanitidis, Hansen & Hauberg 2018, Theorem 1)

    M(z) = E_eps[J_f(z)^T J_f(z)] = J_mu(z)^T J_mu(z) + J_sigma(z)^T J_sigma(z),

which is the ordinary pull-back metric J_g^T J_g of the deterministic *embedding*
g(z) = [mu(z); sigma(z)] in R^(2D).  Everything in :mod:`tfgen.geometry` works with such an
embedding: a function z [n, d] -> g(z) [n, P].  Where sigma does not depend on z (a fixed
or learned Normal sigma) its Jacobian is zero, g = mu and P = D (half the work).

Jacobians.  J_g(z) is P x d.  Forward mode builds it column by column, d Jacobian-vector
products (``tf.autodiff.ForwardAccumulator``); reverse mode row by row, P vector-Jacobian
products (``GradientTape.batch_jacobian``).  Either costs a small multiple of one decoder
pass per product, so the rule (``mode = "auto"``) is: forward mode when d <= P, reverse
mode otherwise.  For images P is D or 2D (784 or 1568 for MNIST) while d is 2..64, so
forward mode is the one used in practice; reverse mode exists for decoders with few outputs
(and as an independent check in the tests).  tools/bench_geometry.py times both.

Batching.  The d tangents of a chunk of c latent points are stacked into one batch of
c * d decoder evaluations (the point tiled d times, tangent e_i on the i-th copy), so one
forward-mode pass gives every column of every point.  The decoder must treat batch rows
independently: it runs in inference mode (batch norm with its moving averages).  A
``tf.while_loop`` walks over chunks of at most ``max_evaluations`` decoder evaluations
(c * d in forward mode, c * P in reverse mode) one at a time, so memory is bounded whatever
the number of points, and the whole computation is one compiled function
(:func:`tfgen.runtime.compile_step`).
"""
from __future__ import annotations

import functools
from typing import Callable, Literal

import tensorflow as tf

from tfgen.runtime import compile_step

#: z [n, d] -> g(z) [n, P], rows independent
Embedding = Callable[[tf.Tensor], tf.Tensor]
Mode = Literal["auto", "forward", "reverse"]


def decoder_embedding(model) -> Embedding:
    """g(z) = [mu(z); sigma(z)] of a :class:`~tfgen.models.model.GenerativeModel`, pixels
    flattened, in the data's pixel range; sigma is left out when the likelihood's does not
    depend on z (its Jacobian is zero)."""
    likelihood = model.likelihood

    def embed(z):
        mean, stddev = likelihood.mean_stddev(model.decode(z, training=False))
        rows = tf.shape(z)[0]
        parts = [tf.reshape(mean, [rows, -1])]
        if likelihood.stddev_varies:
            parts.append(tf.reshape(stddev, [rows, -1]))
        return tf.concat(parts, axis=-1)

    return embed


def restricted(embed: Embedding, origin: tf.Tensor, basis: tf.Tensor) -> Embedding:
    """s -> g(origin + basis s): the embedding of an affine subspace (basis [d, k]); its metric
    is basis^T M basis, e.g. the 2 x 2 metric of a PCA plane through the latents."""
    origin = tf.convert_to_tensor(origin, tf.float32)
    basis = tf.convert_to_tensor(basis, tf.float32)
    return lambda s: embed(origin + tf.matmul(s, basis, transpose_b=True))


def choose_mode(latent_dim: int, output_dim: int) -> str:
    """d Jacobian-vector products against P vector-Jacobian products: the fewer wins."""
    return "forward" if latent_dim <= output_dim else "reverse"


def jacobian_columns(embed: Embedding, z: tf.Tensor) -> tf.Tensor:
    """Forward mode: J(z) e_i for every point and every latent axis i, shape [d, n, P]."""
    n, d = tf.shape(z)[0], z.shape[-1]
    tiled = tf.tile(z, [d, 1])                       # row i * n + j is z_j
    tangents = tf.repeat(tf.eye(d, dtype=z.dtype), n, axis=0)  # ... with tangent e_i
    with tf.autodiff.ForwardAccumulator(tiled, tangents) as accumulator:
        out = embed(tiled)
    columns = accumulator.jvp(out, unconnected_gradients=tf.UnconnectedGradients.ZERO)
    return tf.reshape(columns, [d, n, -1])


def jacobian_rows(embed: Embedding, z: tf.Tensor) -> tf.Tensor:
    """Reverse mode: J(z), shape [n, P, d]."""
    with tf.GradientTape(watch_accessed_variables=False) as tape:
        tape.watch(z)
        out = embed(z)
    return tape.batch_jacobian(out, z, unconnected_gradients=tf.UnconnectedGradients.ZERO)


def metric_at(embed: Embedding, z: tf.Tensor, mode: str = "forward") -> tf.Tensor:
    """M(z) = J(z)^T J(z), [n, d, d], for one batch of points (no chunking: for use inside
    other compiled functions on small batches)."""
    if mode == "forward":
        columns = jacobian_columns(embed, z)
        return tf.einsum("inp,jnp->nij", columns, columns)
    rows = jacobian_rows(embed, z)
    return tf.einsum("npi,npj->nij", rows, rows)


def metric_in_chunks(embed: Embedding, mode: str, max_chunk: int, z: tf.Tensor) -> tf.Tensor:
    """M(z) for any number of points, at most ``max_chunk`` points at a time in one while loop."""
    n, d = tf.shape(z)[0], z.shape[-1]
    chunk = tf.minimum(max_chunk, n)
    num_chunks = (n + chunk - 1) // chunk
    # pad with copies of a real point so that every chunk has the same shape
    pad = tf.repeat(z[-1:], num_chunks * chunk - n, axis=0)
    chunks = tf.reshape(tf.concat([z, pad], 0), [num_chunks, chunk, d])

    def body(i, out):
        return i + 1, out.write(i, metric_at(embed, chunks[i], mode))

    out = tf.TensorArray(z.dtype, size=num_chunks, element_shape=[None, d, d])
    # parallel_iterations=1: one chunk in memory at a time
    _, out = tf.while_loop(lambda i, _: i < num_chunks, body, (tf.constant(0), out),
                           parallel_iterations=1)
    return tf.reshape(out.stack(), [-1, d, d])[:n]


class ExpectedMetric:
    """M(z) of an embedding for batches of any size: one compiled function, chunks of at
    most ``max_evaluations`` decoder evaluations (Jacobian columns or rows) at a time."""

    def __init__(self, embed: Embedding, latent_dim: int, mode: Mode = "auto",
                 max_evaluations: int = 2048, compile_mode: str = "auto"):
        self.embed, self.latent_dim = embed, int(latent_dim)
        self.output_dim = int(embed(tf.zeros([1, latent_dim])).shape[-1])
        self.mode = choose_mode(self.latent_dim, self.output_dim) if mode == "auto" else mode
        per_point = self.latent_dim if self.mode == "forward" else self.output_dim
        self.chunk = max(1, int(max_evaluations) // per_point)
        self._compiled = compile_step(functools.partial(metric_in_chunks, embed, self.mode,
                                                        self.chunk), compile_mode)

    def __call__(self, z) -> tf.Tensor:
        z = tf.convert_to_tensor(z, tf.float32)
        if z.shape[0] == 0:
            return tf.zeros([0, self.latent_dim, self.latent_dim])
        return self._compiled(z)


def log_magnification(metric) -> tf.Tensor:
    """log sqrt(det M) (the measure element of Arvanitidis et al. 2018), in float64 (-inf where M is
    singular)."""
    return 0.5 * tf.linalg.slogdet(tf.cast(metric, tf.float64))[1]


def magnification(metric) -> tf.Tensor:
    """sqrt(det M(z)): how much the decoder magnifies a small latent area."""
    return tf.exp(log_magnification(metric))
