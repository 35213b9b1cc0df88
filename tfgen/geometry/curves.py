"""Discrete latent curves and their Riemannian energy and length under an embedding g.

A curve is a batch of polylines, ``points`` [B, T + 1, d]: T straight latent segments
through nodes z_0 .. z_T.  Under the expected metric M = J_g^T J_g (see
:mod:`tfgen.geometry.metric`) the length of a curve is the length of its image g(gamma) in
R^P, so it is measured by decoding: with dt = 1/T,

    E(gamma) = int_0^1 |d/dt g(gamma(t))|^2 dt  ~  T sum_t |g(z_{t+1}) - g(z_t)|^2,
    L(gamma) = int_0^1 |d/dt g(gamma(t))| dt    ~    sum_t |g(z_{t+1}) - g(z_t)|

(Arvanitidis et al. 2018, Sec. 2; Shao, Kumar & Fletcher 2018 use the same finite
differences).  No Jacobian is needed, only decoder passes.  The chord sum approaches the
length of the polyline from below as the segments shrink (error O(1/T^2) for a smooth
g), so :func:`riemannian_length` first cuts every segment into ``subdivisions`` pieces:
a geodesic and a straight line are then measured the same way.  L^2 <= E, with equality
for a curve of constant speed (Cauchy-Schwarz), which is why minimising E with the end
points fixed gives a shortest curve traversed at constant speed.
"""
from __future__ import annotations

import tensorflow as tf

from tfgen.geometry.metric import Embedding


def straight_lines(start: tf.Tensor, end: tf.Tensor, segments: int) -> tf.Tensor:
    """Nodes of the straight latent lines start -> end, [B, segments + 1, d]."""
    t = tf.linspace(tf.constant(0.0, start.dtype), 1.0, segments + 1)[None, :, None]
    return start[:, None, :] + t * (end - start)[:, None, :]


def constant_speed_lines(embed: Embedding, start: tf.Tensor, end: tf.Tensor, segments: int,
                         pieces: int = 8) -> tf.Tensor:
    """The straight latent lines start -> end with their ``segments + 1`` nodes placed at equal
    Riemannian arc length (measured on ``segments * pieces`` pieces), [B, segments + 1, d].

    A discrete curve at constant speed has E = L^2, the least energy for its length, so an
    energy minimisation started here can only shorten it."""
    fine_count = segments * pieces
    fine = straight_lines(start, end, fine_count)
    chords = chord_lengths(embed_points(embed, fine))                           # [B, Tk]
    arc = tf.concat([tf.zeros_like(chords[:, :1]), tf.cumsum(chords, axis=1)], axis=1)
    targets = arc[:, -1:] * tf.linspace(tf.constant(0.0, arc.dtype), 1.0, segments + 1)[None]
    index = tf.clip_by_value(tf.searchsorted(arc, targets, side="right") - 1, 0, fine_count - 1)
    low = tf.gather(arc, index, batch_dims=1)
    high = tf.gather(arc, index + 1, batch_dims=1)
    fraction = tf.math.divide_no_nan(targets - low, high - low)
    t = (tf.cast(index, arc.dtype) + fraction) / fine_count                    # [B, T + 1]
    return start[:, None, :] + t[..., None] * (end - start)[:, None, :]


def subdivide(points: tf.Tensor, pieces: int) -> tf.Tensor:
    """Cut every segment of the polylines into ``pieces`` equal latent pieces."""
    if pieces <= 1:
        return points
    t = tf.linspace(tf.constant(0.0, points.dtype), 1.0, pieces + 1)[:-1]   # [k]
    a, b = points[:, :-1, None, :], points[:, 1:, None, :]                    # [B, T, 1, d]
    inner = a + t[None, None, :, None] * (b - a)                               # [B, T, k, d]
    batch, d = tf.shape(points)[0], points.shape[-1]
    flat = tf.reshape(inner, [batch, -1, d])
    return tf.concat([flat, points[:, -1:, :]], axis=1)


def embed_points(embed: Embedding, points: tf.Tensor) -> tf.Tensor:
    """g at every node, [B, N, P]."""
    batch, nodes, d = tf.shape(points)[0], tf.shape(points)[1], points.shape[-1]
    out = embed(tf.reshape(points, [-1, d]))
    return tf.reshape(out, [batch, nodes, -1])


def chord_lengths(embedded: tf.Tensor) -> tf.Tensor:
    """|g(z_{t+1}) - g(z_t)| per segment, [B, T]."""
    return tf.norm(embedded[:, 1:] - embedded[:, :-1], axis=-1)


def energy_of_embedded(embedded: tf.Tensor) -> tf.Tensor:
    """T sum_t |g(z_{t+1}) - g(z_t)|^2, [B]."""
    segments = tf.cast(tf.shape(embedded)[1] - 1, embedded.dtype)
    return segments * tf.reduce_sum(tf.square(embedded[:, 1:] - embedded[:, :-1]), axis=[1, 2])


def riemannian_length(embed: Embedding, points: tf.Tensor, subdivisions: int = 4) -> tf.Tensor:
    """Length of the polylines under M, [B]: chord sum after cutting every segment into
    ``subdivisions`` pieces."""
    return tf.reduce_sum(chord_lengths(embed_points(embed, subdivide(points, subdivisions))), -1)


def euclidean_length(points: tf.Tensor) -> tf.Tensor:
    return tf.reduce_sum(tf.norm(points[:, 1:] - points[:, :-1], axis=-1), axis=-1)
