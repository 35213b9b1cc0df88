"""GAN losses: pure functions of the discriminator's outputs (tfgen's own; TF-GAN does not
import on TF 2.21).

Every loss takes the discriminator's outputs on a real batch and on a generated batch
(logits for the probabilistic losses, unbounded scores for hinge and Wasserstein; any shape
with the batch first, typically [B] or [B, 1]) and returns ``(generator, discriminator)``,
two float32 scalars averaged over the batch.  With D(x) = sigmoid(l) the logs are taken in
their stable softplus forms

    log D = -softplus(-l),    log(1 - D) = -softplus(l),

which stay finite for logits of any size.  All functions are plain TensorFlow ops, so they
can be called inside ``tf.function`` and differentiated.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import tensorflow as tf


class AdversarialLosses(NamedTuple):
    """The two players' losses, float32 scalars (a tuple: unpacks as ``g, d = loss(...)``)."""

    generator: tf.Tensor
    discriminator: tf.Tensor


def _mean(x: tf.Tensor) -> tf.Tensor:
    # float32 whatever the caller's dtype: under mixed precision the logits are float16,
    # and exp/softplus of them would overflow or lose the loss's small differences.
    return tf.reduce_mean(tf.cast(x, tf.float32))


def _logits(x) -> tf.Tensor:
    return tf.cast(x, tf.float32)


def _cross_entropy_discriminator_loss(real_logits: tf.Tensor, fake_logits: tf.Tensor) -> tf.Tensor:
    """-E[log D(x)] - E[log(1 - D(G(z)))] = E[softplus(-l_real)] + E[softplus(l_fake)]."""
    return _mean(tf.nn.softplus(-real_logits)) + _mean(tf.nn.softplus(fake_logits))


def minimax(real_logits: tf.Tensor, fake_logits: tf.Tensor) -> AdversarialLosses:
    """The original minimax game (Goodfellow et al. 2014, eq. (1)):

        L_D = -E[log D(x)] - E[log(1 - D(G(z)))],   L_G = E[log(1 - D(G(z)))] = -E[softplus(l_fake)].

    The saturating generator loss: its gradient vanishes when D confidently rejects G(z),
    which is why Goodfellow et al. suggest :func:`non_saturating` in practice.
    """
    real_logits, fake_logits = _logits(real_logits), _logits(fake_logits)
    return AdversarialLosses(generator=-_mean(tf.nn.softplus(fake_logits)),
                             discriminator=_cross_entropy_discriminator_loss(real_logits, fake_logits))


def non_saturating(real_logits: tf.Tensor, fake_logits: tf.Tensor) -> AdversarialLosses:
    """The non-saturating game (Goodfellow et al. 2014, section 3): L_D as in :func:`minimax`,

        L_G = -E[log D(G(z))] = E[softplus(-l_fake)].
    """
    real_logits, fake_logits = _logits(real_logits), _logits(fake_logits)
    return AdversarialLosses(generator=_mean(tf.nn.softplus(-fake_logits)),
                             discriminator=_cross_entropy_discriminator_loss(real_logits, fake_logits))


def hinge(real_scores: tf.Tensor, fake_scores: tf.Tensor) -> AdversarialLosses:
    """The hinge loss (Lim & Ye 2017; Miyato et al. 2018, section 4):

        L_D = E[relu(1 - D(x))] + E[relu(1 + D(G(z)))],   L_G = -E[D(G(z))].
    """
    real_scores, fake_scores = _logits(real_scores), _logits(fake_scores)
    return AdversarialLosses(generator=-_mean(fake_scores),
                             discriminator=_mean(tf.nn.relu(1.0 - real_scores))
                             + _mean(tf.nn.relu(1.0 + fake_scores)))


def wasserstein(real_scores: tf.Tensor, fake_scores: tf.Tensor) -> AdversarialLosses:
    """The Wasserstein GAN (Arjovsky et al. 2017, algorithm 1): the critic
    minimises E[D(G(z))] - E[D(x)], the generator -E[D(G(z))].  The Lipschitz constraint is
    not part of this loss: add :func:`gradient_penalty` to the critic's (WGAN-GP).
    """
    real_scores, fake_scores = _logits(real_scores), _logits(fake_scores)
    return AdversarialLosses(generator=-_mean(fake_scores),
                             discriminator=_mean(fake_scores) - _mean(real_scores))


def _interpolate(real: tf.Tensor, fake: tf.Tensor, epsilon: tf.Tensor) -> tf.Tensor:
    """eps * real + (1 - eps) * fake with eps [B] broadcast over real's non-batch axes."""
    real = tf.convert_to_tensor(real)
    fake = tf.cast(fake, real.dtype)
    eps = tf.cast(epsilon, real.dtype)
    eps = tf.reshape(eps, tf.concat([tf.shape(eps), tf.ones([tf.rank(real) - 1], tf.int32)], axis=0))
    return eps * real + (1.0 - eps) * fake


def gradient_penalty(critic_fn: Callable, real, fake, epsilon: tf.Tensor) -> tf.Tensor:
    """The WGAN-GP penalty (Gulrajani et al. 2017, eq. (3)):

        x_hat = eps * x + (1 - eps) * G(z),   penalty = E[(||grad_{x_hat} D(x_hat)||_2 - 1)^2],

    the norm over all non-batch axes, the mean over the batch; the caller multiplies it by
    lambda (10 in the paper) and adds it to the critic loss.

    ``real`` and ``fake`` are tensors [B, ...] or tuples of them with matching structure
    (BiGAN's joint discriminator D(x, z)): each member is interpolated with the same eps per
    example and the norm is taken over the concatenation of all members' flattened gradients,
    i.e. the gradient w.r.t. the joint input.  ``critic_fn`` is called with x_hat in that same
    structure (one tensor, or one tuple) and returns per-example scores, [B] or [B, 1].
    ``epsilon`` [B] ~ U[0, 1] is drawn by the caller (from a stateless seed) so this function
    is deterministic.

    Gradients are taken of the summed scores, which gives each example's own gradient as long
    as the critic treats examples independently (no batch norm: Gulrajani et al., section 4).
    """
    is_tuple = isinstance(real, (tuple, list))
    reals = tuple(real) if is_tuple else (real,)
    fakes = tuple(fake) if is_tuple else (fake,)
    if len(reals) != len(fakes):
        raise ValueError(f"real has {len(reals)} members but fake has {len(fakes)}")
    x_hat = tuple(_interpolate(r, f, epsilon) for r, f in zip(reals, fakes))
    with tf.GradientTape() as tape:
        tape.watch(x_hat)
        scores = critic_fn(x_hat if is_tuple else x_hat[0])
        total = tf.reduce_sum(scores)
    # ZERO, not None, for a member the critic ignores: it still counts in the joint norm.
    grads = tape.gradient(total, x_hat, unconnected_gradients=tf.UnconnectedGradients.ZERO)
    squared_norm = tf.add_n([
        tf.reduce_sum(tf.reshape(tf.cast(g, tf.float32), [tf.shape(g)[0], -1]) ** 2, axis=1)
        for g in grads])
    # The tiny constant keeps the derivative of sqrt finite where the gradient is exactly zero
    # (e.g. a dead ReLU critic), which would otherwise turn the critic's update into NaN.
    norm = tf.sqrt(squared_norm + 1e-12)
    return tf.reduce_mean((norm - 1.0) ** 2)


LOSSES: dict[str, Callable[[tf.Tensor, tf.Tensor], AdversarialLosses]] = {
    "minimax": minimax,
    "non_saturating": non_saturating,
    "hinge": hinge,
    "wgan_gp": wasserstein,  # the penalty is added separately: see gradient_penalty
}
