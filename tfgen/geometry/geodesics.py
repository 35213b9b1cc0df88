"""Geodesics: shortest latent curves under the expected metric, for a batch of end-point pairs.

Energy minimisation (the solver used by the tasks).  With the end points fixed, the T - 1
interior nodes of a T-segment polyline minimise the discrete curve energy
E = T sum_t |g(z_{t+1}) - g(z_t)|^2 (:mod:`tfgen.geometry.curves`); its minimisers are
discrete geodesics at constant speed.  The batch of curves is one tensor [B, T - 1, d] and
one compiled ``tf.while_loop`` optimises all of them at once; every energy evaluation is one
decoder pass (forward and backward) over the B (T - 1) interior nodes.  The start is the
straight line with its nodes at equal Riemannian arc length
(:func:`tfgen.geometry.curves.constant_speed_lines`): its energy is its squared length, so
the minimisation can only shorten it.  Two optimisers:

* ``lbfgs`` (default): batched L-BFGS (``tfp.optimizer.lbfgs_minimize``; Nocedal & Wright
  2006, Alg. 7.5; Hager-Zhang line search), every curve with its own history, line search and
  convergence test (relative energy change below 1e-7, float32's resolution), at most
  ``steps`` iterations.  Measured on the sphere test (100 curves, T = 20): 20 iterations
  (61 energy evaluations) reach the great-circle lengths to 5e-4, the discretisation's own
  error; its line search never accepts a step that raises the energy.
* ``adam``: ``steps`` Adam steps (Kingma & Ba 2015) of size ``learning_rate`` times the
  curve's end-point distance, with a cosine decay to zero (Loshchilov & Hutter 2017); one
  evaluation per step, about 300 steps for the same accuracy.  Adam normalises every
  gradient coordinate, so where a curve is already (nearly) optimal it still moves nodes by
  about the step size in float32-noise directions: the decay makes them settle.

Shooting (a check).  A geodesic of M = J^T J solves (the ODE of Arvanitidis, Hansen & Hauberg 2018,
written with the embedding's second derivative instead of dvec(M)/dz: the tangential part of the
acceleration of g(gamma) vanishes, J^T (J gamma'' + d^2 g[gamma', gamma']) = 0)

    gamma'' = - M(gamma)^-1 J(gamma)^T d^2 g(gamma)[gamma', gamma'],

where d^2 g[v, v] is a forward-over-forward derivative (two nested
``ForwardAccumulator``).  :func:`shoot` integrates it with RK4 from the start point and
corrects the initial velocity by Newton steps on the end-point miss (finite-difference
Jacobian, all d + 1 trajectories in one batch).  Started from the energy solution's initial
velocity, a small miss and an equal length confirm the energy solution.  The ODE needs a
twice differentiable decoder (as Theorem 1 of Arvanitidis et al. (2018) does): with ReLU units the
metric jumps across their kinks, d^2 g misses those jumps, and the trajectories go astray (measured
on a ReLU conv decoder: initial misses of 10^6 latent distances); use a smooth activation
(GELU, softplus, tanh, swish) where the check matters.
"""
from __future__ import annotations

import functools
from typing import Literal

import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

from tfgen.geometry import curves
from tfgen.geometry.metric import Embedding, jacobian_columns
from tfgen.runtime import compile_step

Optimizer = Literal["lbfgs", "adam"]
ADAM_BETA1, ADAM_BETA2, ADAM_EPSILON = 0.9, 0.999, 1e-12
#: iterations (L-BFGS) or steps (Adam) when ``steps`` is 0
DEFAULT_STEPS = {"lbfgs": 50, "adam": 300}


def curve_energy(embed: Embedding, segments: int, start: tf.Tensor, end: tf.Tensor):
    """interior nodes [B, T - 1, d] -> energies [B] of the curves start -> interior -> end."""
    d = start.shape[-1]
    g_start, g_end = embed(start)[:, None, :], embed(end)[:, None, :]
    batch = tf.shape(start)[0]

    def energy(interior):
        g_inner = tf.reshape(embed(tf.reshape(interior, [-1, d])), [batch, segments - 1, -1])
        return curves.energy_of_embedded(tf.concat([g_start, g_inner, g_end], axis=1))

    return energy


def minimise_energy_lbfgs(embed: Embedding, segments: int, start: tf.Tensor, end: tf.Tensor,
                          steps: tf.Tensor, learning_rate: tf.Tensor):
    """Discrete geodesics by batched L-BFGS: nodes [B, T + 1, d], energies [B], and the number
    of energy evaluations (``learning_rate`` is unused: the line search sets the steps)."""
    d = start.shape[-1]
    batch = tf.shape(start)[0]
    energy = curve_energy(embed, segments, start, end)
    interior0 = curves.constant_speed_lines(embed, start, end, segments)[:, 1:-1, :]

    def value_and_gradients(flat):
        with tf.GradientTape(watch_accessed_variables=False) as tape:
            tape.watch(flat)
            values = energy(tf.reshape(flat, [batch, segments - 1, d]))
            total = tf.reduce_sum(values)   # the curves are independent
        return values, tape.gradient(total, flat)

    result = tfp.optimizer.lbfgs_minimize(
        value_and_gradients, tf.reshape(interior0, [batch, -1]), max_iterations=steps,
        tolerance=0.0, x_tolerance=0.0, f_relative_tolerance=1e-7)
    interior = tf.reshape(result.position, [batch, segments - 1, d])
    nodes = tf.concat([start[:, None, :], interior, end[:, None, :]], axis=1)
    return nodes, result.objective_value, result.num_objective_evaluations


def minimise_energy_adam(embed: Embedding, segments: int, start: tf.Tensor, end: tf.Tensor,
                         steps: tf.Tensor, learning_rate: tf.Tensor):
    """Discrete geodesics by Adam with cosine decay: nodes [B, T + 1, d], energies [B], and the
    number of energy evaluations."""
    energy = curve_energy(embed, segments, start, end)
    interior0 = curves.constant_speed_lines(embed, start, end, segments)[:, 1:-1, :]
    scale = tf.norm(end - start, axis=-1)[:, None, None]           # per-curve step size unit

    def body(t, interior, m, v):
        with tf.GradientTape(watch_accessed_variables=False) as tape:
            tape.watch(interior)
            total = tf.reduce_sum(energy(interior))   # the curves are independent
        grad = tape.gradient(total, interior)
        m = ADAM_BETA1 * m + (1.0 - ADAM_BETA1) * grad
        v = ADAM_BETA2 * v + (1.0 - ADAM_BETA2) * tf.square(grad)
        step = tf.cast(t + 1, interior.dtype)
        m_hat = m / (1.0 - ADAM_BETA1 ** step)
        v_hat = v / (1.0 - ADAM_BETA2 ** step)
        decay = 0.5 * (1.0 + tf.cos(np.pi * tf.cast(t, interior.dtype) / tf.cast(steps, interior.dtype)))
        interior = interior - learning_rate * decay * scale * m_hat / (tf.sqrt(v_hat) + ADAM_EPSILON)
        return t + 1, interior, m, v

    zeros = tf.zeros_like(interior0)
    _, interior, _, _ = tf.while_loop(lambda t, *_: t < steps, body,
                                      (tf.constant(0), interior0, zeros, zeros))
    nodes = tf.concat([start[:, None, :], interior, end[:, None, :]], axis=1)
    return nodes, energy(interior), steps + 1


class GeodesicSolver:
    """Batched, compiled energy minimisation; ``solver(start, end) -> (nodes, energies,
    energy evaluations)``."""

    def __init__(self, embed: Embedding, segments: int = 20, steps: int = 0,
                 learning_rate: float = 0.05, compile_mode: str = "auto",
                 optimizer: Optimizer = "lbfgs"):
        if segments < 2:
            raise ValueError("a geodesic needs at least 2 segments (1 interior node)")
        self.segments, self.learning_rate = int(segments), float(learning_rate)
        self.steps = int(steps) or DEFAULT_STEPS[optimizer]
        minimise = minimise_energy_lbfgs if optimizer == "lbfgs" else minimise_energy_adam
        self._compiled = compile_step(functools.partial(minimise, embed, self.segments),
                                      compile_mode)

    def __call__(self, start, end):
        start = tf.convert_to_tensor(start, tf.float32)
        end = tf.convert_to_tensor(end, tf.float32)
        return self._compiled(start, end, tf.constant(self.steps),
                              tf.constant(self.learning_rate, tf.float32))


# --------------------------------------------------------------------------- the geodesic ODE

def geodesic_acceleration(embed: Embedding, z: tf.Tensor, velocity: tf.Tensor) -> tf.Tensor:
    """gamma'' = -M^-1 J^T d^2 g[v, v] at points z [n, d] with velocities v [n, d]."""
    columns = jacobian_columns(embed, z)                                   # [d, n, P]
    with tf.autodiff.ForwardAccumulator(z, velocity) as outer:
        with tf.autodiff.ForwardAccumulator(z, velocity) as inner:
            out = embed(z)
        first = inner.jvp(out, unconnected_gradients=tf.UnconnectedGradients.ZERO)   # J v
    second = outer.jvp(first, unconnected_gradients=tf.UnconnectedGradients.ZERO)    # d^2 g[v, v]
    # the d x d system in float64: far from the data (e.g. under an RBF-precision variance)
    # M's entries span many orders of magnitude, and a float32 LU met an exactly zero pivot
    # ("Input matrix is not invertible", latent_geometry.toml); cheap, d is small
    columns64 = tf.cast(columns, tf.float64)
    metric = tf.einsum("inp,jnp->nij", columns64, columns64)
    rhs = tf.einsum("inp,np->ni", columns64, tf.cast(second, tf.float64))
    return -tf.cast(safe_solve(metric, rhs), z.dtype)


def safe_solve(metric: tf.Tensor, rhs: tf.Tensor) -> tf.Tensor:
    """M^-1 rhs per row ([n, d, d], [n, d]); NaN for rows where M or rhs is not finite (a
    trajectory that blew up), instead of the solver's error, so that a check reports it.
    Meant for float64 (see :func:`geodesic_acceleration`)."""
    d = metric.shape[-1]
    eye = tf.eye(d, dtype=metric.dtype)
    finite = tf.logical_and(tf.reduce_all(tf.math.is_finite(metric), axis=[1, 2]),
                            tf.reduce_all(tf.math.is_finite(rhs), axis=1))
    # a relative jitter keeps the solve finite where M is nearly singular (and a tiny absolute
    # one where M = 0, e.g. at a dead-ReLU point); M is a Gram matrix, so M + jitter is
    # positive definite and its pivots are not 0
    trace = tf.where(finite, tf.linalg.trace(metric), 1.0)
    jitter = (1e-10 * trace[:, None, None] + 1e-30) * eye
    safe = tf.where(finite[:, None, None], metric + jitter, eye)
    out = tf.linalg.solve(safe, tf.where(finite[:, None], rhs, 0.0)[..., None])[..., 0]
    return tf.where(finite[:, None], out, tf.constant(np.nan, metric.dtype))


def integrate_geodesic(embed: Embedding, start: tf.Tensor, velocity: tf.Tensor,
                       ode_steps: tf.Tensor) -> tf.Tensor:
    """RK4 on (gamma, gamma') over t in [0, 1]; the trajectory [B, ode_steps + 1, d]."""
    h = 1.0 / tf.cast(ode_steps, start.dtype)

    def accel(z, v):
        return geodesic_acceleration(embed, z, v)

    def body(i, z, v, path):
        k1z, k1v = v, accel(z, v)
        k2z, k2v = v + 0.5 * h * k1v, accel(z + 0.5 * h * k1z, v + 0.5 * h * k1v)
        k3z, k3v = v + 0.5 * h * k2v, accel(z + 0.5 * h * k2z, v + 0.5 * h * k2v)
        k4z, k4v = v + h * k3v, accel(z + h * k3z, v + h * k3v)
        z = z + h / 6.0 * (k1z + 2.0 * k2z + 2.0 * k3z + k4z)
        v = v + h / 6.0 * (k1v + 2.0 * k2v + 2.0 * k3v + k4v)
        return i + 1, z, v, path.write(i + 1, z)

    path = tf.TensorArray(start.dtype, size=ode_steps + 1).write(0, start)
    _, _, _, path = tf.while_loop(lambda i, *_: i < ode_steps, body,
                                  (tf.constant(0), start, velocity, path))
    return tf.transpose(path.stack(), [1, 0, 2])


def initial_velocity(nodes) -> np.ndarray:
    """gamma'(0) of a constant-speed discrete curve on [0, 1]: the one-sided second-order
    difference T (-3 z_0 + 4 z_1 - z_2) / 2."""
    nodes = np.asarray(nodes, np.float64)
    segments = nodes.shape[1] - 1
    return (segments * (-3.0 * nodes[:, 0] + 4.0 * nodes[:, 1] - nodes[:, 2]) / 2.0).astype(np.float32)


def shoot(embed: Embedding, start, end, velocity, ode_steps: int = 50, newton_steps: int = 4,
          compile_mode: str = "auto") -> dict:
    """Solve the boundary problem gamma(0) = start, gamma(1) = end by shooting from
    ``velocity``: Newton steps on v -> gamma_v(1) - end with a forward-difference Jacobian.
    Returns the trajectory [B, ode_steps + 1, d], the final velocities and the end-point miss
    per curve (latent units) after each Newton step."""
    integrate = compile_step(functools.partial(integrate_geodesic, embed), compile_mode)
    start = np.asarray(start, np.float32)
    end = np.asarray(end, np.float32)
    v = np.asarray(velocity, np.float64)
    batch, d = v.shape
    # every call integrates the d + 1 trajectories of a Newton step, so the compiled function
    # sees one shape (retracing with a relaxed batch dimension breaks nested forward mode)
    tiled_start = tf.constant(np.tile(start[None], (d + 1, 1, 1)).reshape(-1, d))
    misses = []
    for newton in range(newton_steps + 1):
        h = 1e-3 * np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-6)   # [B, 1]
        trial = np.concatenate([v[None], v[None] + h[None] * np.eye(d)[:, None, :]], axis=0)
        paths = integrate(tiled_start, tf.constant(trial.reshape(-1, d), tf.float32),
                          tf.constant(int(ode_steps))).numpy()
        ends = paths[:, -1].astype(np.float64).reshape(d + 1, batch, d)
        miss = ends[0] - end
        misses.append(np.linalg.norm(miss, axis=-1))
        if newton == newton_steps:
            break
        jacobian = np.transpose((ends[1:] - ends[0]) / h[None], (1, 2, 0))      # [B, d, d]
        # a curve whose trajectories blew up (non-finite) or whose Jacobian is singular keeps
        # its velocity: its miss is reported as it is
        ok = np.isfinite(jacobian).all((1, 2)) & np.isfinite(miss).all(1)
        ok[ok] = np.abs(np.linalg.det(jacobian[ok])) > 0
        v[ok] = v[ok] - np.linalg.solve(jacobian[ok], miss[ok][..., None])[..., 0]
    return {"path": paths[:batch], "velocity": v.astype(np.float32), "miss": np.stack(misses, -1)}
