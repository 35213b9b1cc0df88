"""The model without latents: a PixelCNN over whole images trained by maximum likelihood (the
lecture's fourth way, Mairal & Alameda-Pineda 2019-2020; van den Oord et al. 2016).

``scheme = "autoregressive"``: p(y) = prod_i p(y_i | y_<i), each factor a discretized logistic
mixture (:mod:`tfgen.models.pixelcnn`, tfd.PixelCNN with its masks applied).  Training
minimises the exact negative log-likelihood of the batch (nats per image; bits/dim beside it);
``log_likelihood`` with ``estimator = "exact"`` reports it on a split, of the discrete images.
Samples are drawn pixel by pixel in one compiled loop (tfd.PixelCNN's while loop inside one
``tf.function``).  The config's prior, decoder and likelihood are not used.
"""
from __future__ import annotations

import dataclasses

import tensorflow as tf

from tfgen.errors import ConfigError
from tfgen.inference.base import MaximumLikelihood
from tfgen.inference.capabilities import ImageSampler
from tfgen.models.pixelcnn import PixelCNNConfig, build_pixelcnn, levels_of
from tfgen.registry import SCHEMES


@dataclasses.dataclass
class AutoregressiveConfig(PixelCNNConfig):
    #: keys that size checkpointed state: a resume may not change them (config.fixed_on_resume)
    fixed_on_resume = ("levels", "num_resnet", "num_hierarchies", "num_filters",
                       "num_logistic_mix")

    def check(self, cfg):
        if cfg.data.binarize != "none" and self.levels != 2:
            raise ConfigError(cfg.source_file, "inference.levels", "binarized images have 2 "
                              "levels", self.levels, "2")


@SCHEMES.register("autoregressive", config=AutoregressiveConfig)
class Autoregressive(MaximumLikelihood, ImageSampler):
    """A PixelCNN as the whole model, trained by maximum likelihood."""

    default_evaluations = ({"task": "log_likelihood", "estimator": "exact", "max_images": 0},
                           "samples", "curves")

    def __init__(self, params: AutoregressiveConfig, model, data, cfg, generator, strategy):
        super().__init__(params, model, data, cfg, generator, strategy)
        self.image_shape = tuple(data.image_shape)
        self.pixelcnn = build_pixelcnn(params, self.image_shape)
        self.build_optimizer()
        self._sampler = tf.function(self._sample)

    #: the keys that size the network (for the memory check's message)
    size_keys = ("inference.num_filters", "inference.num_resnet", "inference.num_hierarchies")

    @staticmethod
    def traced_log_prob(params: AutoregressiveConfig, image_shape):
        """For the memory estimate (tfgen.resources): the PixelCNN built in the caller's
        (scratch) graph, and its log-probability of images [n, H, W, C] (as levels)."""
        pixelcnn = build_pixelcnn(params, tuple(image_shape))
        return lambda images: pixelcnn.log_prob(images, training=True)

    def density_variables(self) -> list:
        return self.pixelcnn.trainable_variables

    def density_module(self):
        return self.pixelcnn

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

    def training_log_prob(self, images, batch):
        return self.pixelcnn.log_prob(self.levels(images), training=True)
