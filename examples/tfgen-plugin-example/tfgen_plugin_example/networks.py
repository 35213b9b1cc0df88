"""Network ``skip_mlp``: an MLP whose output layer sees the hidden features and the input."""
from __future__ import annotations

import dataclasses
import math
from typing import Literal

import tensorflow as tf
import tf_keras as keras

from tfgen.models.networks import Network
from tfgen.registry import NETWORKS
from tfgen.schema import setting


@dataclasses.dataclass
class SkipMLPConfig:
    hidden: list[int] = setting(factory=lambda: [64], at_least=1, help="hidden layer widths")
    activation: Literal["relu", "tanh", "swish"] = setting("relu")


class SkipMLP(Network):
    """x -> Dense(h_1) -> ... -> h_L;  output = Dense([h_L, x]), reshaped to the output shape:
    a linear path from the input to the output next to the nonlinear one (as in a residual
    network's skip connection, He et al. 2016)."""

    def __init__(self, output_shape, hidden=(64,), activation="relu", **kwargs):
        super().__init__(output_shape, **kwargs)
        self.hidden, self.activation_name = list(hidden), activation

    def build(self, input_shape):
        self.body = [keras.layers.Dense(h, activation=self.activation_name)
                     for h in self.hidden]
        self.head = keras.layers.Dense(math.prod(self.target_shape))
        super().build(input_shape)

    def call(self, inputs, training=False):
        x = tf.reshape(inputs, [tf.shape(inputs)[0], -1])
        h = x
        for layer in self.body:
            h = layer(h)
        out = self.head(tf.concat([h, tf.cast(x, h.dtype)], axis=-1))
        return tf.reshape(out, [-1, *self.target_shape])

    def get_config(self):
        return {**super().get_config(), "hidden": self.hidden,
                "activation": self.activation_name}


@NETWORKS.register("skip_mlp", config=SkipMLPConfig)
def skip_mlp(config: SkipMLPConfig, output_shape, key: str):
    """MLP with a linear skip from the input to the output (encoder or decoder)."""
    return SkipMLP(output_shape, hidden=config.hidden, activation=config.activation)
