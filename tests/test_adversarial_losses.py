"""The GAN losses and the WGAN-GP gradient penalty against hand computations in NumPy."""
from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from tfgen.inference.adversarial_losses import (LOSSES, gradient_penalty, hinge, minimax,
                                                non_saturating, wasserstein)

REAL = np.array([2.0, -0.5, 0.3, 1.7], np.float32)
FAKE = np.array([-1.2, 0.4, -3.0, 0.9], np.float32)


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-np.asarray(x, np.float64)))


def hand_d_loss(real, fake):
    """-E[log D(x)] - E[log(1 - D(G(z)))], straight from the probabilities."""
    return -np.mean(np.log(sigmoid(real))) - np.mean(np.log(1.0 - sigmoid(fake)))


def check(value, expected):
    assert value.dtype == tf.float32 and value.shape == ()
    np.testing.assert_allclose(value.numpy(), expected, rtol=1e-5, atol=1e-6)


def test_minimax():
    g, d = minimax(REAL, FAKE)
    check(d, hand_d_loss(REAL, FAKE))
    check(g, np.mean(np.log(1.0 - sigmoid(FAKE))))


def test_non_saturating():
    g, d = non_saturating(REAL, FAKE)
    check(d, hand_d_loss(REAL, FAKE))
    check(g, -np.mean(np.log(sigmoid(FAKE))))


def test_hinge():
    g, d = hinge(REAL, FAKE)
    check(d, np.mean(np.maximum(0.0, 1.0 - REAL)) + np.mean(np.maximum(0.0, 1.0 + FAKE)))
    check(g, -np.mean(FAKE))


def test_wasserstein():
    g, d = wasserstein(REAL, FAKE)
    check(d, np.mean(FAKE) - np.mean(REAL))
    check(g, -np.mean(FAKE))
    assert LOSSES["wgan_gp"] is wasserstein


def test_shape_b1_and_float64_give_float32_scalars():
    # [B, 1] logits (a Dense(1) head) reduce to the same mean as [B].
    g, d = non_saturating(REAL[:, None].astype(np.float64), FAKE[:, None].astype(np.float64))
    check(d, hand_d_loss(REAL, FAKE))
    check(g, -np.mean(np.log(sigmoid(FAKE))))


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_tf_function_matches_eager(name):
    loss = LOSSES[name]
    compiled = tf.function(loss)
    for eager, graph in zip(loss(REAL, FAKE), compiled(tf.constant(REAL), tf.constant(FAKE))):
        np.testing.assert_allclose(graph.numpy(), eager.numpy(), rtol=1e-6)


@pytest.mark.parametrize("name", sorted(LOSSES))
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_extreme_logits_are_finite(name, sign):
    real = tf.constant([100.0, -100.0, sign * 100.0])
    fake = tf.constant([-100.0, 100.0, -sign * 100.0])
    with tf.GradientTape(persistent=True) as tape:
        tape.watch([real, fake])
        g, d = LOSSES[name](real, fake)
    # L_G does not depend on the real logits: count that gradient as zero, not None.
    zero = tf.UnconnectedGradients.ZERO
    grads = [*tape.gradient(g, [real, fake], unconnected_gradients=zero),
             *tape.gradient(d, [real, fake], unconnected_gradients=zero)]
    for value in (g, d, *grads):
        assert np.all(np.isfinite(value.numpy()))


def test_cross_entropy_limits_at_extreme_logits():
    # A confident, correct D has loss ~0; a confident, wrong one ~100 per term.
    g, d = minimax(tf.fill([2], 100.0), tf.fill([2], -100.0))
    np.testing.assert_allclose([g.numpy(), d.numpy()], [0.0, 0.0], atol=1e-6)
    g, d = non_saturating(tf.fill([2], -100.0), tf.fill([2], 100.0))
    np.testing.assert_allclose([g.numpy(), d.numpy()], [0.0, 200.0], rtol=1e-6, atol=1e-6)
    g, _ = non_saturating(tf.fill([2], 100.0), tf.fill([2], -100.0))
    np.testing.assert_allclose(g.numpy(), 100.0, rtol=1e-6)


@pytest.mark.parametrize("name", ["non_saturating", "hinge"])
def test_discriminator_gradient_matches_finite_differences(name):
    loss = LOSSES[name]
    # hinge kinks at real = 1 and fake = -1: the points here stay away from them.
    real, fake = tf.constant(REAL), tf.constant(FAKE)
    with tf.GradientTape() as tape:
        tape.watch([real, fake])
        _, d = loss(real, fake)
    analytic = np.concatenate([g.numpy() for g in tape.gradient(d, [real, fake])])
    x0, h = np.concatenate([REAL, FAKE]).astype(np.float64), 1e-2
    n = len(REAL)

    def d_loss(x):
        return float(loss(x[:n].astype(np.float32), x[n:].astype(np.float32)).discriminator)

    numeric = np.array([(d_loss(x0 + h * e) - d_loss(x0 - h * e)) / (2 * h) for e in np.eye(2 * n)])
    np.testing.assert_allclose(analytic, numeric, atol=2e-4)


# ---------------------------------------------------------------------------------- penalty

B = 3
EPS = np.array([0.0, 0.35, 1.0], np.float32)


def images(seed, shape=(B, 4, 4, 2)):
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def per_example_sum(x):
    return tf.reduce_sum(tf.reshape(x, [tf.shape(x)[0], -1]), axis=1)


def test_penalty_linear_critic():
    # D(x) = sum(w * x): the gradient is w at every x_hat, so the penalty is (||w|| - 1)^2.
    w = images(2, (1, 4, 4, 2))[0]
    penalty = gradient_penalty(lambda x: per_example_sum(w * x), images(0), images(1), EPS)
    check(penalty, (np.linalg.norm(w) - 1.0) ** 2)


def test_penalty_quadratic_critic():
    # D(x) = sum(x^2): the gradient is 2 x_hat, with x_hat the per-example interpolation.
    real, fake = images(0), images(1)
    x_hat = EPS[:, None, None, None] * real + (1 - EPS[:, None, None, None]) * fake
    norms = np.linalg.norm((2 * x_hat).reshape(B, -1), axis=1)
    penalty = gradient_penalty(lambda x: per_example_sum(x ** 2), real, fake, EPS)
    check(penalty, np.mean((norms - 1.0) ** 2))
    # eps = 1 is the real example and eps = 0 the fake one: the penalty's interpolation order.
    np.testing.assert_allclose(x_hat[0], fake[0])
    np.testing.assert_allclose(x_hat[2], real[2])


def test_penalty_tuple_joint_critic():
    # BiGAN's D(x, z): linear in x, quadratic in z; the norm is over the joint gradient.
    x_real, x_fake = images(0), images(1)
    z_real, z_fake = images(3, (B, 5)), images(4, (B, 5))
    w = images(2, (1, 4, 4, 2))[0]
    z_hat = EPS[:, None] * z_real + (1 - EPS[:, None]) * z_fake
    joint = np.concatenate([np.broadcast_to(w, (B,) + w.shape).reshape(B, -1), 2 * z_hat], axis=1)
    expected = np.mean((np.linalg.norm(joint, axis=1) - 1.0) ** 2)

    def critic(inputs):
        x, z = inputs
        return per_example_sum(w * x) + tf.reduce_sum(z ** 2, axis=1)

    check(gradient_penalty(critic, (x_real, z_real), (x_fake, z_fake), EPS), expected)
    # A member the critic ignores contributes a zero gradient, not an error.
    ignores_z = gradient_penalty(lambda inputs: per_example_sum(w * inputs[0]),
                                 (x_real, z_real), (x_fake, z_fake), EPS)
    check(ignores_z, (np.linalg.norm(w) - 1.0) ** 2)


def test_penalty_in_tf_function_and_differentiable_in_critic_weights():
    # d/dw (||w|| - 1)^2 = 2 (||w|| - 1) w / ||w||: the outer tape sees through the inner one.
    w0 = images(2, (1, 4, 4, 2))[0]
    w = tf.Variable(w0)
    real, fake = tf.constant(images(0)), tf.constant(images(1))

    @tf.function
    def penalty_and_grad(eps):
        with tf.GradientTape() as tape:
            penalty = gradient_penalty(lambda x: per_example_sum(w * x), real, fake, eps)
        return penalty, tape.gradient(penalty, w)

    penalty, grad = penalty_and_grad(tf.constant(EPS))
    norm = np.linalg.norm(w0)
    check(penalty, (norm - 1.0) ** 2)
    np.testing.assert_allclose(grad.numpy(), 2 * (norm - 1.0) * w0 / norm, rtol=1e-4, atol=1e-6)


def test_penalty_finite_for_a_flat_critic():
    # A critic with zero gradient (a dead ReLU): penalty 1, and finite weight gradients.
    w = tf.Variable(tf.zeros([4, 4, 2]))
    with tf.GradientTape() as tape:
        penalty = gradient_penalty(lambda x: per_example_sum(tf.nn.relu(w * x)), images(0), images(1), EPS)
    np.testing.assert_allclose(penalty.numpy(), 1.0, rtol=1e-5)
    assert np.all(np.isfinite(tape.gradient(penalty, w).numpy()))
