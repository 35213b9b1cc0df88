"""Annealed importance sampling (AIS) of log p(y): the second, independent estimator that
checks the importance-sampling numbers on small subsets.

AIS (Neal 2001, "Annealed importance sampling"; for decoder-based generative models Wu et al.
2017, "On the quantitative analysis of decoder-based generative models") moves C chains per
image through the geometric path of unnormalised densities

    f_t(z) = pi_0(z)^(1 - b_t) p(z, y)^(b_t),   0 = b_0 < b_1 < ... < b_T = 1,

from a normalised start pi_0 -- the prior p(z) (Wu et al.'s choice: nothing is fitted, so it
also works for encoder-free schemes without a test-time fit), or the importance proposal r(z)
around q(z | y) (:mod:`tfgen.inference.proposals`) -- to the posterior p(z | y) proportional
to p(z, y).  With z_0 ~ pi_0 and z_t drawn by a transition that leaves f_t invariant, the
weight

    log w = sum_{t=1..T} (b_t - b_{t-1}) [log p(z_{t-1}, y) - log pi_0(z_{t-1})]

has E[w] = p(y) (Neal 2001, sec. 2), so log (1/C) sum_c w_c is a stochastic lower bound,
E[.] <= log p(y) (Jensen; Wu et al. 2017, sec. 4.1).  The schedule is the sigmoid one of
Grosse, Ghahramani & Adams (2015, "Sandwiching the marginal likelihood using bidirectional
Monte Carlo") that Wu et al. use: b_t proportional to sigmoid(r (2t/T - 1)), r = 4, rescaled to
[0, 1].  The transitions are HMC with accept/reject (:func:`tfgen.inference.kernels.hmc_step`;
``leapfrog = 1`` is MALA) with Wu et al.'s step-size rule: after every transition an image's
step size (shared by its chains) is multiplied by 1.02 if its chains' mean acceptance
probability exceeds 0.65, else by 0.98, kept in [1e-4, 0.5].  That adaptation looks at the
chains' past, as Wu et al.'s does; it is not covered by Neal's unbiasedness argument, whose
kernels are fixed in advance.  On a PPCA model with a known log p(y), the defaults (T = 500,
C = 16, L = 10, from the prior) were off by -0.023, -0.007 and +0.006 nats for three images
(standard errors 0.029, 0.023, 0.016 over 20 repeats): no bias visible at that resolution
(tests/test_log_likelihood.py checks 0.1 nats).

All chains of all images of a batch run at once, z of shape [C, B, d], in one compiled
``tf.while_loop`` over the T steps; every random draw comes from the stateless seed
(seed, t).  The cost is C * (L (T - 1) + 2) decoder passes with their backward passes per
image: meant for small subsets (the task's ``max_images``).

Why an ``estimator`` key of the ``log_likelihood`` task rather than an ``ais`` task: the two
estimate the same number on the same images, with the same split, seeds, proposal and
reporting (nats with a standard error, bits per dimension), so they share the task and its
keys, and their results sit side by side (``<split>_log_likelihood`` and
``<split>_log_likelihood_ais``).
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import numpy as np
import tensorflow as tf

from tfgen.inference import kernels, proposals
from tfgen.inference.proposals import Proposal

#: Wu et al. 2017's step-size rule (module docstring)
TARGET_ACCEPTANCE, GROW, SHRINK, MIN_STEP, MAX_STEP = 0.65, 1.02, 0.98, 1e-4, 0.5
STARTS = ("prior", "proposal")


class AISSettings(NamedTuple):
    steps: int = 500           # T
    chains: int = 16           # C per image
    leapfrog: int = 10         # L per transition (1 = MALA)
    step_size: float = 0.05    # initial HMC step size e
    start: str = "prior"       # pi_0: 'prior' or 'proposal'


def sigmoid_schedule(steps: int, radius: float = 4.0) -> np.ndarray:
    """b_0 = 0 < ... < b_T = 1, T = ``steps`` (Grosse et al. 2015's sigmoid schedule)."""
    s = 1.0 / (1.0 + np.exp(-np.linspace(-radius, radius, steps + 1)))
    return (s - s[0]) / (s[-1] - s[0])


def _target(model, images, loc, scale, proposal: Proposal, start: str, beta, z):
    """log f_b(z) and its gradient; extras = (log pi_0, h = log p(z, y) - log pi_0, their
    gradients), so that the next b costs no decoder pass."""
    with tf.GradientTape(persistent=True, watch_accessed_variables=False) as tape:
        tape.watch(z)
        if start == "prior":
            log_start = model.log_prior(z)
            h = model.log_likelihood(z, images)  # log p(z, y) - log p(z)
        else:
            log_start = proposals.log_prob(proposal, z, loc, scale)
            h = model.log_joint(z, images) - log_start
        start_total, h_total = tf.reduce_sum(log_start), tf.reduce_sum(h)
    grad_start, grad_h = tape.gradient(start_total, z), tape.gradient(h_total, z)
    del tape
    return _at_beta((log_start, h, grad_start, grad_h), z, beta)


def _at_beta(extras, z, beta) -> kernels.HMCState:
    log_start, h, grad_start, grad_h = extras
    return kernels.HMCState(z, log_start + beta * h, grad_start + beta * grad_h, extras)


def ais_log_weights(model, images, loc, scale, seed, betas, settings: AISSettings,
                    proposal: Proposal):
    """The C chains' log AIS weights [C, B] and each image's mean acceptance probability [B]
    (module docstring).  ``loc`` / ``scale`` [B, d]: q of the images (used when
    ``settings.start`` is 'proposal'); ``betas`` [T + 1]: the schedule."""
    c = settings
    if c.start == "prior":
        tfp_seed = tf.random.stateless_uniform([2], seed, minval=None, dtype=tf.int32)
        z0 = model.prior.distribution(loc.dtype).sample(
            tf.stack([c.chains, tf.shape(loc)[0]]), seed=tfp_seed)  # TFP takes int32 seeds
    else:
        z0, _ = proposals.draw(proposal, loc, scale, seed, c.chains)
    target = functools.partial(_target, model, images, loc, scale, proposal, c.start)
    state = target(betas[0], z0)
    step = tf.fill(tf.shape(loc)[:1], tf.constant(c.step_size, loc.dtype))
    log_w = tf.zeros(tf.shape(z0)[:2], loc.dtype)

    def body(t, state, log_w, step, acceptance):
        beta = betas[t]
        log_w = log_w + (beta - betas[t - 1]) * state.extras[1]
        state = _at_beta(state.extras, state.x, beta)
        seed_t = tf.random.experimental.stateless_fold_in(seed, tf.cast(t, tf.int64))
        state, accept = kernels.hmc_step(state, functools.partial(target, beta),
                                         step[None, :, None], c.leapfrog, seed_t)
        rate = tf.reduce_mean(accept, axis=0)
        step = tf.clip_by_value(step * tf.where(rate > TARGET_ACCEPTANCE, GROW, SHRINK),
                                MIN_STEP, MAX_STEP)
        return t + 1, state, log_w, step, acceptance + rate

    # transitions at b_1 .. b_{T-1}; the last increment needs no move after it
    _, state, log_w, _, acceptance = tf.while_loop(
        lambda t, *_: t < c.steps, body,
        (tf.constant(1), state, log_w, step, tf.zeros_like(step)))
    log_w = log_w + (betas[c.steps] - betas[c.steps - 1]) * state.extras[1]
    return log_w, acceptance / tf.cast(tf.maximum(c.steps - 1, 1), loc.dtype)


def ais_log_likelihood(scheme, images, seed, settings: AISSettings,
                       proposal: Proposal = proposals.POSTERIOR) -> tuple[np.ndarray, np.ndarray]:
    """Per image: log (1/C) sum_c w_c, the AIS estimate of log p(y), and the mean acceptance
    probability of its transitions.  ``scheme`` gives the model (and q, fitted or encoded, when
    the chains start from the proposal); ``seed`` as the other estimators take it."""
    settings = AISSettings(*settings)
    if settings.start not in STARTS:
        raise ValueError(f"unknown AIS start {settings.start!r}; allowed: {', '.join(STARTS)}")
    images = tf.convert_to_tensor(images, tf.float32)
    if settings.start == "proposal":
        q = scheme.posterior_for(images, seed)
        loc, scale = q.loc, q.scale.diag
    else:
        loc = tf.zeros([images.shape[0], scheme.model.latent_dim], images.dtype)
        scale = tf.ones_like(loc)
    run = scheme._compiled("ais", functools.partial(ais_log_weights, scheme.model))
    log_w, acceptance = run(images, loc, scale, tf.constant(seed, tf.int64),
                            tf.constant(sigmoid_schedule(settings.steps), images.dtype),
                            settings, Proposal(*proposal))
    estimate = tf.reduce_logsumexp(log_w, axis=0) - tf.math.log(
        tf.cast(settings.chains, log_w.dtype))
    return estimate.numpy(), acceptance.numpy()
