"""A normalizing flow as the whole model: the lecture's third way, an invertible map
(Mairal & Alameda-Pineda 2019-2020, RealNVP slides; Dinh, Sohl-Dickstein & Bengio 2017).

``scheme = "flow"`` trains, by exact maximum likelihood, a RealNVP on the flattened pixels:

    x~ = (255 x + u) / 256,  u ~ U(0, 1)^D          uniform dequantization (Theis et al. 2016)
    s  = logit(a + (1 - 2a) x~)                       RealNVP's logit pre-processing, a = alpha
    v  = f(s),  v ~ N(0, I_D)                         ``coupling_layers`` affine couplings

so that log p(x~) = log N(f(s)) + log |det df/ds| + log |det ds/dx~| exactly.  For the
8-bit image x, E_u[log p(x~)] - D log 256 <= log P(x) (the dequantization bound), which is
what training maximises and what ``log_likelihood`` with ``estimator = "exact"`` reports
(one u per image, seeded): nats per image and bits/dim of the discrete image.  Samples
invert the flow from v ~ N(0, I).

The coupling networks work on the flattened image (``tfgen.models.priors.realnvp_bijector``,
shared with the ``realnvp`` prior): by default MLPs of ``hidden`` widths, or any network of
the networks registry (``coupling``, e.g. ``name = "layers"``); the paper's multi-scale
convolutional architecture (squeezing, checkerboard masks) is not here.  The config's prior, decoder and likelihood are not used (the flow is the model); pixels
must be in [0, 1] and not binarized.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Optional

import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

from tfgen.errors import ConfigError
from tfgen.inference.base import MaximumLikelihood
from tfgen.inference.capabilities import ImageSampler
from tfgen.models.model import with_file
from tfgen.models.priors import (COUPLING_HELP, HIDDEN_HELP, check_coupling_keys, coupling_shapes,
                                 realnvp_bijector)
from tfgen.registry import SCHEMES
from tfgen.schema import Component, setting

tfd = tfp.distributions
SALT_DEQUANTIZE = 21


@dataclasses.dataclass
class FlowConfig:
    #: keys that size checkpointed state: a resume may not change them (config.fixed_on_resume)
    #: (``coupling``, a network key, is fixed as every scheme's network is)
    fixed_on_resume = ("coupling_layers", "hidden")

    coupling_layers: int = setting(8, at_least=1, at_most=128, help="affine coupling layers (masks "
                                                                    "alternate)")
    hidden: list[int] = setting(factory=lambda: [512, 512], at_least=1, help=HIDDEN_HELP)
    coupling: Optional[Component] = setting(None, registry="networks", help=COUPLING_HELP)
    alpha: float = setting(0.05, at_least=0.0, at_most=0.49, help="a of the logit pre-processing "
                                                                  "logit(a + (1 - 2a) x) (RealNVP: "
                                                                  "0.05)")
    levels: int = setting(256, at_least=2, at_most=65536, help="pixel levels of the data (8-bit: "
                                                               "256)")

    def network_shapes(self, field: str, image_shape) -> tuple[tuple | None, tuple | None]:
        """(input, output) shape per example of the network at ``field`` (``coupling``) where
        the image shape is known (for the load-time check of a ``layers`` network)."""
        if image_shape is None:
            return None, None
        return coupling_shapes(int(np.prod(image_shape)))

    def check(self, cfg):
        check_coupling_keys(self, cfg.source_file, "inference")
        if cfg.data.binarize != "none":
            raise ConfigError(cfg.source_file, "data.binarize", "the flow is a density on "
                              "dequantized pixel levels", cfg.data.binarize, "'none'")
        if cfg.data.pixel_range != "[0,1]":
            raise ConfigError(cfg.source_file, "data.pixel_range", "the flow dequantizes "
                              "levels in [0, 1]", cfg.data.pixel_range, "'[0,1]'")


def coupling_bijector(params: FlowConfig, pixels: int):
    """(f, its coupling networks) on [.., pixels] (``tfgen.models.priors.realnvp_bijector``)."""
    return realnvp_bijector(pixels, params.coupling_layers, params.coupling, params.hidden,
                            "inference.coupling", name="flow_coupling")


def flow_log_density(bijector: tfp.bijectors.Bijector, alpha: float, x: tf.Tensor) -> tf.Tensor:
    """log p(x~) [B] of dequantized pixels x~ [B, D] in [0, 1) under the logit pre-processing
    and ``bijector`` onto N(0, I) (module docstring)."""
    y = alpha + (1.0 - 2.0 * alpha) * x
    s = tf.math.log(y) - tf.math.log1p(-y)
    # d s / d x = (1 - 2a) / (y (1 - y)) per pixel
    log_det_pre = tf.reduce_sum(math.log(1.0 - 2.0 * alpha) - tf.math.log(y) - tf.math.log1p(-y),
                                -1)
    v = bijector.forward(s)
    return (standard_normal(x.shape[-1]).log_prob(v)
            + bijector.forward_log_det_jacobian(s, event_ndims=1) + log_det_pre)


def standard_normal(pixels: int) -> tfd.Distribution:
    """The flow's base distribution N(0, I_D)."""
    return tfd.MultivariateNormalDiag(tf.zeros([pixels]), tf.ones([pixels]))


@SCHEMES.register("flow", config=FlowConfig)
class Flow(MaximumLikelihood, ImageSampler):
    """RealNVP on pixels, trained by maximum likelihood on dequantized images."""

    default_evaluations = ({"task": "log_likelihood", "estimator": "exact", "max_images": 0},
                           "samples", "curves")

    def __init__(self, params: FlowConfig, model, data, cfg, generator, strategy):
        super().__init__(params, model, data, cfg, generator, strategy)
        self.image_shape = data.image_shape
        pixels = int(np.prod(data.image_shape))
        self.bijector, self.networks = with_file(cfg, lambda: coupling_bijector(params, pixels))
        self.build_optimizer()

    #: the keys that size the network (for the memory check's message)
    size_keys = ("inference.hidden", "inference.coupling", "inference.coupling_layers")

    @staticmethod
    def traced_log_prob(params: FlowConfig, image_shape):
        """For the memory estimate (tfgen.resources): the coupling networks built in the
        caller's (scratch) graph, and a function of images [n, H, W, C] through them."""
        pixels = int(np.prod(image_shape))
        bijector, _ = coupling_bijector(params, pixels)
        return lambda images: flow_log_density(bijector, params.alpha,
                                               tf.reshape(images, [-1, pixels]))

    def density_variables(self) -> list:
        return [v for net in self.networks for v in net.trainable_variables]

    def density_module(self):
        return tf.train.Checkpoint(networks=self.networks)

    # ---- the density
    def base(self) -> tfd.Distribution:
        return standard_normal(self.pixels)

    def dequantize(self, images: tf.Tensor, uniform: tf.Tensor) -> tf.Tensor:
        top = float(self.params.levels - 1)
        flat = tf.reshape(images, [-1, self.pixels])
        return (tf.round(flat * top) + uniform) / (top + 1.0)

    def log_density(self, x: tf.Tensor) -> tf.Tensor:
        """log p(x~) [B] of dequantized pixels x~ [B, D] in (0, 1) (module docstring)."""
        return flow_log_density(self.bijector, self.params.alpha, x)

    def discrete_bound(self, images: tf.Tensor, uniform: tf.Tensor) -> tf.Tensor:
        """log p(x~) - D log levels <= log P(x), per image."""
        return (self.log_density(self.dequantize(images, uniform))
                - self.pixels * math.log(self.params.levels))

    def exact_log_likelihood(self, images):
        """The dequantization bound of the discrete images, with u from a fixed seed."""
        uniform = tf.random.stateless_uniform([tf.shape(images)[0], self.pixels], (7, 11))
        return self.discrete_bound(images, uniform)

    def sample_images(self, num: int, seed: int, mean: bool = False) -> tf.Tensor:
        """x = (sigmoid(f^-1(v)) - a) / (1 - 2a), v ~ N(0, I) (``mean``: v = 0 is not a mean;
        both draw v)."""
        v = self.base().sample(num, seed=tf.constant([seed, 0], tf.int32))
        y = tf.sigmoid(self.bijector.inverse(v))
        x = tf.clip_by_value((y - self.params.alpha) / (1.0 - 2.0 * self.params.alpha), 0.0, 1.0)
        return tf.reshape(x, [num, *self.image_shape])

    # ---- training
    def training_log_prob(self, images, batch):
        return self.discrete_bound(images, batch.uniform([self.pixels], SALT_DEQUANTIZE))
