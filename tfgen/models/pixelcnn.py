"""PixelCNN: an autoregressive distribution over whole images (the lecture's fourth way, no
latents; Mairal & Alameda-Pineda 2019-2020), as a likelihood p(y | z) conditioned on the decoder's
output and as a whole model (``scheme = "autoregressive"``).

It is TFP's ``tfd.PixelCNN`` (van den Oord et al. 2016; Salimans et al. 2017, PixelCNN++:
gated resnet blocks, vertical and horizontal stacks, a discretized logistic mixture per
pixel).  Its conditioning is global: the conditional input is flattened and projected into a
bias of every gated block, so the decoder's output [H, W, c] conditions every pixel.

Causality.  ``tfd.PixelCNN`` masks its convolutions through Keras *kernel constraints*, which
Keras applies only after an optimizer step.  Freshly built, the network is not autoregressive:
measured on TF 2.21 / TFP 0.25, the parameters of every pixel depended on every input pixel,
including those below and to the right.  :func:`build_pixelcnn` therefore projects every
constrained kernel once at construction (the tf_keras optimizers project them after every
step); tests/test_pixelcnn.py checks that no output depends on its own or a later pixel.
"""
from __future__ import annotations

import dataclasses

import tensorflow as tf
import tensorflow_probability as tfp

from tfgen.schema import setting

tfd = tfp.distributions


@dataclasses.dataclass
class PixelCNNConfig:
    levels: int = setting(256, at_least=2, at_most=65536, help="pixel levels (8-bit: 256; "
                                                               "binarized: 2)")
    num_resnet: int = setting(2, at_least=1, at_most=20, help="gated resnet blocks per hierarchy")
    num_hierarchies: int = setting(2, at_least=1, at_most=5, help="resolutions (down- then "
                                                                  "up-sampled)")
    num_filters: int = setting(32, at_least=1, at_most=1024, help="feature maps of every block")
    num_logistic_mix: int = setting(5, at_least=1, at_most=100, help="logistics per pixel's "
                                                                     "mixture")
    dropout: float = setting(0.0, at_least=0.0, at_most=0.9, help="dropout in the blocks while "
                                                                  "training")


def build_pixelcnn(config: PixelCNNConfig, image_shape, conditional_shape=None) -> tfd.PixelCNN:
    """A ``tfd.PixelCNN`` over ``levels`` levels, its variables built now (under the caller's
    strategy scope) and its causal masks applied (module docstring)."""
    dist = tfd.PixelCNN(image_shape=tuple(image_shape), conditional_shape=conditional_shape,
                        num_resnet=config.num_resnet, num_hierarchies=config.num_hierarchies,
                        num_filters=config.num_filters, num_logistic_mix=config.num_logistic_mix,
                        dropout_p=config.dropout, use_data_init=False, low=0,
                        high=config.levels - 1)
    zeros = tf.zeros([1, *image_shape])
    dist.log_prob(zeros, conditional_input=None if conditional_shape is None
                  else tf.zeros([1, *conditional_shape]), training=False)
    apply_masks(dist)
    return dist


def apply_masks(dist: tfd.PixelCNN) -> int:
    """Project every constrained (masked) kernel; returns how many there were."""
    count = 0
    for variable in dist.network.trainable_variables:
        if getattr(variable, "constraint", None) is not None:
            variable.assign(variable.constraint(variable))
            count += 1
    return count


def levels_of(images: tf.Tensor, pixel_range, levels: int) -> tf.Tensor:
    """Pixels in ``pixel_range`` -> level indices 0 .. levels - 1 (as floats, TFP's dtype)."""
    low, high = pixel_range
    top = float(levels - 1)
    return tf.clip_by_value(tf.round((images - low) / (high - low) * top), 0.0, top)


def int_seed(seed) -> int:
    """tfd.PixelCNN.sample takes an int seed: the first of a static [2] seed, else 0."""
    value = tf.get_static_value(seed) if seed is not None else None
    if value is None:
        return 0
    return int(value if getattr(value, "ndim", 0) == 0 else value.ravel()[0])
