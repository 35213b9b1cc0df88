"""Priors p(z) over the latent space."""
from __future__ import annotations

import dataclasses

import tensorflow as tf
import tensorflow_probability as tfp

from tfgen.config import field
from tfgen.registry import PRIORS

tfd = tfp.distributions


@dataclasses.dataclass
class StandardNormalConfig:
    dim: int = field(16, min=1, max=4096, help="latent dimension d")


@PRIORS.register("standard_normal", config=StandardNormalConfig)
class StandardNormalPrior:
    """p(z) = N(z | 0, I_d)  (seed 000, model step 1; seed 001, task 1a)."""

    def __init__(self, config: StandardNormalConfig):
        self.dim = config.dim

    def distribution(self, dtype=tf.float32) -> tfd.Distribution:
        return tfd.MultivariateNormalDiag(loc=tf.zeros([self.dim], dtype),
                                          scale_diag=tf.ones([self.dim], dtype))


def build_prior(component):
    return PRIORS.get(component.name).factory(component.params)
