"""Step-size schedules of a Langevin sampler: its step size h_k at optimizer step k.

* ``constant``   -- h_k = h.
* ``polynomial`` -- h_k = max(h, h_0 (1 + k / tau)^(-gamma)): Welling & Teh's (2011) SGLD
  schedule eps_t = a (b + t)^(-gamma) with b = tau and a = h_0 tau^gamma (so h_k starts at
  h_0 and falls by 2^gamma every time k + tau doubles), floored at the scheme's own step size
  h.  Welling & Teh need sum eps_t = inf and sum eps_t^2 < inf, gamma in (0.5, 1]; the floor
  keeps the steps from vanishing, so a run ends with the constant-step sampler at h.

h_k is a float64 tensor of the step counter (a variable the checkpoint holds), so a compiled
step computes it without retracing and a resumed run continues the schedule exactly.

Welling, M. & Teh, Y. W. (2011). Bayesian learning via stochastic gradient Langevin dynamics.
ICML.
"""
from __future__ import annotations

import dataclasses
from typing import Literal

import tensorflow as tf

from tfgen.errors import ConfigError
from tfgen.schema import setting


@dataclasses.dataclass
class StepSizeSchedule:
    """The ``[inference.step_size_schedule]`` table."""

    kind: Literal["constant", "polynomial"] = setting(
        "constant", help="constant: h_k = h; polynomial: h_k = max(h, initial * (1 + k / "
                         "decay_steps)^-power) (Welling & Teh 2011, SGLD)")
    initial: float = setting(1e-3, above=0.0, at_most=1.0,
                             help="polynomial: h_0, the step size at step 0 (at least h)")
    decay_steps: int = setting(1000, at_least=1, at_most=10**9,
                               help="polynomial: tau, the steps over which h_k falls by 2^power")
    power: float = setting(0.55, above=0.0, at_most=1.0,
                           help="polynomial: gamma in (0, 1] (Welling & Teh 2011: 0.55; their "
                                "convergence conditions need gamma > 0.5)")

    def check(self, floor: float, cfg, key: str, floor_key: str) -> None:
        """Load-time: a decaying schedule starts at or above its floor ``floor_key``."""
        if self.kind == "polynomial" and self.initial < floor:
            raise ConfigError(cfg.source_file, f"{key}.initial",
                              f"the schedule's initial step size is below its floor "
                              f"{floor_key} = {floor!r}", self.initial,
                              f"a value >= {floor_key} ({floor!r})")

    def step_size(self, floor: float, step) -> tf.Tensor:
        """h_k (float64) at step ``step`` (an integer or an integer tensor) above ``floor`` = h."""
        h = tf.constant(floor, tf.float64)
        if self.kind == "constant":
            return h
        k = tf.cast(step, tf.float64)
        decayed = self.initial * tf.pow(1.0 + k / float(self.decay_steps), -self.power)
        return tf.maximum(h, decayed)
