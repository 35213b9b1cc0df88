"""Networks: get_config round trips, output shapes, and decoder heads derived from the likelihood."""
from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from tfgen.assemble import from_dict
from tfgen.models.model import build_model
from tfgen.models.networks import MLP, ConvDecoder, ConvEncoder, UpconvDecoder


@pytest.mark.parametrize("layer,input_shape", [
    (MLP((3, 4, 2), hidden=[8, 5], activation="gelu"), (2, 6)),
    (ConvEncoder((10,), channels=[4, 8], kernels=[5, 3]), (2, 28, 28, 1)),
    (ConvDecoder((28, 28, 4), channels=[8, 4]), (2, 16)),
    (UpconvDecoder((32, 32, 3), channels=[8, 4, 4]), (2, 16)),
])
def test_get_config_round_trip(layer, input_shape):
    x = tf.random.normal(input_shape)
    y = layer(x)
    clone = type(layer).from_config(layer.get_config())
    clone(x)
    assert clone.get_config() == layer.get_config()
    assert clone.count_params() == layer.count_params()
    clone.set_weights(layer.get_weights())
    np.testing.assert_allclose(clone(x).numpy(), y.numpy(), rtol=1e-5, atol=1e-5)


def test_assignment_decoder_geometry():
    """The 2AMU20 VAE assignment: kernel 5, stride 2, padding 1 grows 1 -> 3 -> 7 -> 15 -> 31 before the dense head."""
    dec = ConvDecoder((28, 28, 1))
    dec(tf.zeros([1, 16]))
    x = tf.zeros([1, 1, 1, 16])
    sides = []
    for up in dec.ups:
        x = dec._up(up, x)
        sides.append(x.shape[1])
    sides.append(dec._up(dec.last_up, x).shape[1])
    assert sides == [3, 7, 15, 31]
    assert dec.head.kernel.shape == (31 * 31, 28 * 28)


@pytest.mark.parametrize("likelihood,channels", [
    ({"name": "bernoulli"}, 1), ({"name": "beta"}, 2), ({"name": "categorical", "bins": 4}, 4),
    ({"name": "normal", "scale": "per_pixel"}, 2), ({"name": "normal"}, 1)])
def test_decoder_head_is_derived_from_the_likelihood(likelihood, channels):
    binarize = "static" if likelihood["name"] == "bernoulli" else "none"
    cfg = from_dict({"data": {"binarize": binarize}, "model": {"likelihood": likelihood}})
    model = build_model(cfg, (28, 28, 1), (0.0, 1.0))
    out = model.decode(tf.zeros([3, 16]))
    assert out.shape == (3, 28, 28, channels)
    y = tf.zeros([3, 28, 28, 1])
    assert model.log_joint(tf.zeros([3, 16]), y).shape == (3,)
