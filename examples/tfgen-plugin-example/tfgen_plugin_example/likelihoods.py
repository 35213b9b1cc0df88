"""Likelihood ``laplace``: y_i | z ~ Laplace(m_i(z), b_i), independent pixels."""
from __future__ import annotations

import dataclasses
import math
from typing import Literal

import tensorflow as tf
import tensorflow_probability as tfp

from tfgen.errors import ConfigError
from tfgen.models.likelihoods import Likelihood
from tfgen.registry import LIKELIHOODS
from tfgen.schema import setting

tfd = tfp.distributions


@dataclasses.dataclass
class LaplaceConfig:
    scale: Literal["fixed", "per_pixel"] = setting(
        "fixed", help="fixed: b as given; per_pixel: the decoder outputs a b per pixel")
    b: float = setting(0.1, above=0.0, help="the fixed scale b (sd = sqrt(2) b)")
    min_scale: float = setting(1e-3, at_least=0.0, help="floor of a per-pixel b")

    def check(self, cfg):
        if cfg.data.binarize != "none":
            raise ConfigError(cfg.source_file, "model.likelihood.name", "the Laplace "
                              "likelihood is a density for continuous pixels, but "
                              "data.binarize is set", cfg.data.binarize,
                              "data.binarize = 'none' (or likelihood 'bernoulli')")


@LIKELIHOODS.register("laplace", config=LaplaceConfig)
class LaplaceLikelihood(Likelihood):
    """y_i | z ~ Laplace(m_i(z), b_i), independent pixels (an L1 reconstruction loss)."""

    def __init__(self, config: LaplaceConfig, image_shape, pixel_range):
        super().__init__(config, image_shape, pixel_range)
        self.params_per_channel = 2 if config.scale == "per_pixel" else 1
        self.stddev_varies = config.scale == "per_pixel"

    def _pixel_distribution(self, decoder_output):
        if self.config.scale == "per_pixel":
            loc, raw_scale = self._split(decoder_output)
            return tfd.Laplace(loc, self.config.min_scale + tf.nn.softplus(raw_scale))
        return tfd.Laplace(decoder_output, tf.constant(self.config.b, decoder_output.dtype))

    def mean_stddev(self, decoder_output):
        dist = self._pixel_distribution(decoder_output)
        # Var = 2 b^2 for Laplace(m, b)
        return dist.loc, tf.broadcast_to(math.sqrt(2.0) * dist.scale, tf.shape(dist.loc))
