"""The model without latents: a PixelCNN over whole images trained by maximum likelihood (the
lecture's fourth way, seed 003; van den Oord et al. 2016).

``scheme = "autoregressive"``: p(y) = prod_i p(y_i | y_<i), each factor a discretized logistic
mixture (:mod:`tfgen.models.pixelcnn`, tfd.PixelCNN with its masks applied).  Training
minimises the exact negative log-likelihood of the batch (nats per image; bits/dim beside it);
``log_likelihood`` with ``estimator = "exact"`` reports it on a split, of the discrete images.
Samples are drawn pixel by pixel in one compiled loop (tfd.PixelCNN's while loop inside one
``tf.function``).  The config's prior, decoder and likelihood are not used.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import tensorflow as tf

from tfgen.errors import ConfigError
from tfgen.inference.base import Scheme, make_optimizer
from tfgen.inference.capabilities import ExactLogLikelihood, ImageSampler
from tfgen.models.pixelcnn import PixelCNNConfig, apply_masks, build_pixelcnn, levels_of
from tfgen.registry import SCHEMES


@dataclasses.dataclass
class AutoregressiveConfig(PixelCNNConfig):
    def check(self, cfg):
        if cfg.data.binarize != "none" and self.levels != 2:
            raise ConfigError(cfg.source_file, "inference.levels", "binarized images have 2 "
                              "levels", self.levels, "2")


@SCHEMES.register("autoregressive", config=AutoregressiveConfig)
class Autoregressive(Scheme, ExactLogLikelihood, ImageSampler):
    """A PixelCNN as the whole model, trained by maximum likelihood."""

    default_evaluations = ({"task": "log_likelihood", "estimator": "exact", "max_images": 0},
                           "samples", "curves")
    discrete_log_likelihood = True

    def __init__(self, params: AutoregressiveConfig, model, data, cfg, generator, strategy):
        super().__init__(params, model, data, cfg, generator, strategy)
        self.image_shape = tuple(data.image_shape)
        self.pixels = int(np.prod(self.image_shape))
        self.pixelcnn = build_pixelcnn(params, self.image_shape)
        self.optimizer = make_optimizer(cfg.train)
        self.optimizer.build(self.pixelcnn.trainable_variables)
        self._sampler = tf.function(self._sample)

    def checkpoint_items(self):
        return {"pixelcnn": self.pixelcnn, "optimizer": self.optimizer}

    def after_restore(self):
        self.optimizer.learning_rate.assign(self.cfg.train.learning_rate)
        apply_masks(self.pixelcnn)  # a no-op on a trained network; kept for old checkpoints

    def levels(self, images):
        return levels_of(images, self.data.pixel_range, self.params.levels)

    def exact_log_likelihood(self, images):
        return self.pixelcnn.log_prob(self.levels(images), training=False)

    def _sample(self, num, seed):
        return self.pixelcnn.sample(num, seed=seed)

    def sample_images(self, num: int, seed: int, mean: bool = False) -> tf.Tensor:
        """Pixel by pixel, in one compiled loop (``mean`` is not defined: a sample)."""
        low, high = self.data.pixel_range
        levels = self._sampler(tf.constant(num), seed)
        return low + (high - low) * levels / float(self.params.levels - 1)

    def replica_step(self, images, indices, batch):
        variables = self.pixelcnn.trainable_variables
        with tf.GradientTape() as tape:
            log_prob = self.pixelcnn.log_prob(self.levels(images), training=True)
            scaled = -tf.reduce_sum(log_prob) * self.gradient_scale(batch)
        self.optimizer.apply_gradients(zip(tape.gradient(scaled, variables), variables))
        nll = -tf.reduce_mean(log_prob)
        return {"loss": nll, "bits_per_dim": nll / (self.pixels * math.log(2.0))}
