"""Encoder and decoder networks, built from their TOML sections.

Every network is a ``tf_keras`` layer with a build/call split and a
``get_config`` that round-trips.  A factory receives its typed config and the
output shape it must produce: ``(units,)`` for an encoder (2 d for a Gaussian
q(z|y)), ``(H, W, C * k)`` for a decoder, where ``k`` comes from the
likelihood, so a decoder's head is derived, never hand-sized.
"""
from __future__ import annotations

import dataclasses
from typing import Literal

import tensorflow as tf
import tf_keras as keras

from tfgen.errors import ConfigError
from tfgen.registry import NETWORKS
from tfgen.schema import setting

Activation = Literal["relu", "gelu", "elu", "leaky_relu", "tanh", "sigmoid", "swish", "softplus"]


def _require_image_output(name: str, output_shape, key: str) -> None:
    """Decoders that end in (transposed) convolutions produce [H, W, C] images only."""
    if len(output_shape) != 3:
        raise ConfigError(None, key, f"{name} produces images; use it as a decoder", name,
                          "conv_encoder, mlp")


def _activation(name: str):
    if name == "leaky_relu":
        return tf.nn.leaky_relu
    if name == "gelu":
        return lambda x: tf.nn.gelu(x, approximate=False)
    return keras.activations.get(name)


class Network(keras.layers.Layer):
    """Base: stores its constructor arguments so ``get_config`` round-trips.

    ``head_initializer`` is the kernel initializer of the head, the layer that emits the
    ``output_shape`` tfgen asks for (a network whose head is a Dense or a Conv2D it sizes
    passes it on: mlp, conv_encoder, layers with head = "auto")."""

    head_initializer = "glorot_uniform"  # Keras' default for Dense and Conv2D kernels

    def __init__(self, output_shape, name=None, **kwargs):
        super().__init__(name=name or type(self).__name__.lower(), **kwargs)
        self.target_shape = tuple(int(d) for d in output_shape)

    def start_at_zero(self) -> None:
        """Start the head's kernel (and so, with its zero bias, the output) at zero: a RealNVP
        coupling layer whose network starts at zero starts as the identity.  Before the
        network is built."""
        if self.built:
            raise RuntimeError(f"{self.name} is built: its head is initialised already")
        self.head_initializer = "zeros"

    def get_config(self):
        config = super().get_config()
        config["output_shape"] = list(self.target_shape)
        return config


# --------------------------------------------------------------------------- MLP

@dataclasses.dataclass
class MLPConfig:
    hidden: list[int] = setting(factory=lambda: [512, 256], at_least=1, help="hidden layer widths")
    activation: Activation = setting("relu")


@keras.utils.register_keras_serializable("tfgen")
class MLP(Network):
    """Flatten -> Dense(h_1) -> ... -> Dense(prod(output_shape)) -> reshape."""

    def __init__(self, output_shape, hidden=(512, 256), activation="relu", **kwargs):
        super().__init__(output_shape, **kwargs)
        self.hidden, self.activation_name = list(hidden), activation

    def build(self, input_shape):
        act = _activation(self.activation_name)
        self.body = [keras.layers.Dense(h, activation=act) for h in self.hidden]
        units = 1
        for d in self.target_shape:
            units *= d
        self.head = keras.layers.Dense(units, kernel_initializer=self.head_initializer)
        super().build(input_shape)

    def call(self, inputs, training=False):
        x = tf.reshape(inputs, [tf.shape(inputs)[0], -1])
        for layer in self.body:
            x = layer(x)
        x = self.head(x)
        return tf.reshape(x, [-1, *self.target_shape])

    def get_config(self):
        return {**super().get_config(), "hidden": self.hidden, "activation": self.activation_name}


@NETWORKS.register("mlp", config=MLPConfig)
def mlp(config: MLPConfig, output_shape, key: str):
    """Fully connected network (encoder or decoder)."""
    return MLP(output_shape, hidden=config.hidden, activation=config.activation)


# --------------------------------------------------------------------------- conv encoder

@dataclasses.dataclass
class ConvEncoderConfig:
    channels: list[int] = setting(factory=lambda: [32, 64, 128], at_least=1,
                                  help="filters per conv layer")
    kernels: list[int] = setting(factory=lambda: [5, 5, 3], at_least=1, at_most=31,
                                 help="kernel size per conv layer")
    activation: Activation = setting("relu")
    pooling: Literal["max", "average"] = setting("max", help="2x2 pooling after every conv")

    def check(self, cfg, key: str):
        if len(self.channels) != len(self.kernels):
            raise ConfigError(cfg.source_file, f"{key}.kernels",
                              "needs one kernel size per entry of channels", self.kernels,
                              f"a list of {len(self.channels)} integers")


@keras.utils.register_keras_serializable("tfgen")
class ConvEncoder(Network):
    """[conv(k, 'same') -> act -> pool 2]* -> flatten -> dense (the 2AMU20 VAE assignment, task 1a: 32/64/128, 5/5/3)."""

    def __init__(self, output_shape, channels=(32, 64, 128), kernels=(5, 5, 3),
                 activation="relu", pooling="max", **kwargs):
        super().__init__(output_shape, **kwargs)
        self.channels, self.kernels = list(channels), list(kernels)
        self.activation_name, self.pooling = activation, pooling

    def build(self, input_shape):
        act = _activation(self.activation_name)
        pool = keras.layers.MaxPool2D if self.pooling == "max" else keras.layers.AveragePooling2D
        self.body = []
        for c, k in zip(self.channels, self.kernels):
            self.body += [keras.layers.Conv2D(c, k, padding="same", activation=act), pool(2)]
        self.head = keras.layers.Dense(self.target_shape[-1],
                                       kernel_initializer=self.head_initializer)
        super().build(input_shape)

    def call(self, inputs, training=False):
        x = inputs
        for layer in self.body:
            x = layer(x)
        return self.head(tf.reshape(x, [tf.shape(x)[0], -1]))

    def get_config(self):
        return {**super().get_config(), "channels": self.channels, "kernels": self.kernels,
                "activation": self.activation_name, "pooling": self.pooling}


@NETWORKS.register("conv_encoder", config=ConvEncoderConfig)
def conv_encoder(config: ConvEncoderConfig, output_shape, key: str):
    """Convolutional encoder of the 2AMU20 VAE assignment (conv 32/64/128, ReLU, pooling)."""
    if len(output_shape) != 1:
        raise ConfigError(None, key, "conv_encoder produces a vector; use it as an encoder",
                          "conv_encoder", "conv_decoder, mlp")
    return ConvEncoder(output_shape, config.channels, config.kernels, config.activation,
                       config.pooling)


# --------------------------------------------------------------------------- conv decoder (the
# 2AMU20 VAE assignment)

@dataclasses.dataclass
class ConvDecoderConfig:
    channels: list[int] = setting(factory=lambda: [128, 64, 32], at_least=1,
                                  help="filters of the transposed convs; one more transposed conv "
                                       "emits the image channels")
    kernel: int = setting(5, at_least=3, at_most=15)
    activation: Activation = setting("relu")
    batch_norm: bool = setting(True)
    head_channels: int = setting(1, at_least=1, at_most=64, help="maps of the last transposed "
                                                                 "conv, which the dense head reads "
                                                                 "(the 2AMU20 VAE assignment: the "
                                                                 "image channels)")


@keras.utils.register_keras_serializable("tfgen")
class ConvDecoder(Network):
    """The 2AMU20 VAE assignment's decoder: z as a 1x1 map -> [convT(c_i, k, stride 2, padding 1) ->
    BN -> act]* -> convT(C) -> flatten -> one dense layer emitting every pixel's likelihood
    parameters.

    With k = 5 the side grows 1 -> 3 -> 7 -> 15 -> 31 (PyTorch ConvTranspose2d(k, 2, padding=1):
    out = 2 in - 2 + k - 2); the dense head maps the 31 x 31 map to any H x W x C*k, as the
    assignment's two linear layers (31*31 -> 28*28) do for the mean and the log-variance.
    """

    def __init__(self, output_shape, channels=(128, 64, 32), kernel=5, activation="relu",
                 batch_norm=True, head_channels=1, **kwargs):
        super().__init__(output_shape, **kwargs)
        self.channels, self.kernel = list(channels), int(kernel)
        self.activation_name, self.batch_norm = activation, bool(batch_norm)
        self.head_channels = int(head_channels)

    def build(self, input_shape):
        self.act = _activation(self.activation_name)
        self.ups, self.norms = [], []
        for c in self.channels:
            self.ups.append(keras.layers.Conv2DTranspose(c, self.kernel, strides=2, padding="valid"))
            self.norms.append(keras.layers.BatchNormalization() if self.batch_norm else None)
        self.last_up = keras.layers.Conv2DTranspose(self.head_channels, self.kernel, strides=2, padding="valid")
        h, w, c = self.target_shape
        self.head = keras.layers.Dense(h * w * c)
        super().build(input_shape)

    def _up(self, layer, x):
        # 'valid' transposed conv then crop one pixel per side == PyTorch padding=1
        return layer(x)[:, 1:-1, 1:-1, :]

    def call(self, z, training=False):
        x = tf.reshape(z, [-1, 1, 1, z.shape[-1]])
        for up, norm in zip(self.ups, self.norms):
            x = self._up(up, x)
            if norm is not None:
                x = norm(x, training=training)
            x = self.act(x)
        x = self._up(self.last_up, x)
        x = self.head(tf.reshape(x, [tf.shape(x)[0], -1]))
        return tf.reshape(x, [-1, *self.target_shape])

    def get_config(self):
        return {**super().get_config(), "channels": self.channels, "kernel": self.kernel,
                "activation": self.activation_name, "batch_norm": self.batch_norm,
                "head_channels": self.head_channels}


@NETWORKS.register("conv_decoder", config=ConvDecoderConfig)
def conv_decoder(config: ConvDecoderConfig, output_shape, key: str):
    """Transposed-conv decoder of the 2AMU20 VAE assignment (128/64/32, kernel 5, stride 2, BN, ReLU, dense head)."""
    _require_image_output("conv_decoder", output_shape, key)
    return ConvDecoder(output_shape, config.channels, config.kernel, config.activation,
                       config.batch_norm, config.head_channels)


# --------------------------------------------------------------------------- projection decoder

@dataclasses.dataclass
class UpconvDecoderConfig:
    channels: list[int] = setting(factory=lambda: [128, 64, 32], at_least=1,
                                  help="filters; the first is the projected feature map, every "
                                       "further one doubles the resolution (transposed conv, "
                                       "stride 2)")
    kernel: int = setting(5, at_least=1, at_most=15)
    activation: Activation = setting("relu")
    batch_norm: bool = setting(True)
    head_kernel: int = setting(3, at_least=1, at_most=15, help="kernel of the final conv that "
                                                               "emits the likelihood's parameters")


@keras.utils.register_keras_serializable("tfgen")
class UpconvDecoder(Network):
    """dense -> (s, s, c_0) -> [convT(c_i, stride 2, 'same') -> BN -> act]* -> conv head (DCGAN style)."""

    def __init__(self, output_shape, channels=(128, 64, 32), kernel=5, activation="relu",
                 batch_norm=True, head_kernel=3, **kwargs):
        super().__init__(output_shape, **kwargs)
        self.channels, self.kernel = list(channels), int(kernel)
        self.activation_name, self.batch_norm, self.head_kernel = activation, bool(batch_norm), int(head_kernel)
        factor = 2 ** (len(self.channels) - 1)
        h, w, _ = self.target_shape
        self.base = (h // factor, w // factor)

    def build(self, input_shape):
        act = _activation(self.activation_name)
        self.project = keras.layers.Dense(self.base[0] * self.base[1] * self.channels[0])
        self.project_norm = keras.layers.BatchNormalization() if self.batch_norm else None
        self.act = act
        self.ups, self.norms = [], []
        for c in self.channels[1:]:
            self.ups.append(keras.layers.Conv2DTranspose(c, self.kernel, strides=2, padding="same"))
            self.norms.append(keras.layers.BatchNormalization() if self.batch_norm else None)
        self.head = keras.layers.Conv2D(self.target_shape[-1], self.head_kernel, padding="same")
        super().build(input_shape)

    def call(self, z, training=False):
        x = self.project(z)
        if self.project_norm is not None:
            x = self.project_norm(x, training=training)
        x = tf.reshape(self.act(x), [-1, self.base[0], self.base[1], self.channels[0]])
        for up, norm in zip(self.ups, self.norms):
            x = up(x)
            if norm is not None:
                x = norm(x, training=training)
            x = self.act(x)
        return self.head(x)

    def get_config(self):
        return {**super().get_config(), "channels": self.channels, "kernel": self.kernel,
                "activation": self.activation_name, "batch_norm": self.batch_norm,
                "head_kernel": self.head_kernel}


@NETWORKS.register("upconv_decoder", config=UpconvDecoderConfig)
def upconv_decoder(config: UpconvDecoderConfig, output_shape, key: str):
    """Dense projection to a small feature map, then stride-2 transposed convs (heavier, sharper)."""
    _require_image_output("upconv_decoder", output_shape, key)
    factor = 2 ** (len(config.channels) - 1)
    h, w, _ = output_shape
    if h % factor or w % factor:
        raise ConfigError(None, f"{key}.channels",
                          f"{len(config.channels) - 1} upsamplings need image sides divisible by "
                          f"{factor}, but the images are {h}x{w}", config.channels,
                          "fewer channels entries, or data.resize")
    return UpconvDecoder(output_shape, config.channels, config.kernel, config.activation,
                       config.batch_norm, config.head_kernel)


def build_network(component, output_shape, key: str):
    """Instantiate the registry entry named in ``component`` for ``output_shape``."""
    try:
        return NETWORKS.get(component.name).factory(component.params, tuple(output_shape), key)
    except ConfigError as err:
        raise err from None


# --------------------------------------------------------------------------- residual decoder
# (Kuntz et al. 2023)

FinalActivation = Literal["tanh", "identity", "sigmoid"]


@tf.custom_gradient
def same_conv2d(x, kernel):
    """Stride-1 'same' convolution (odd kernel) whose input gradient is a forward convolution.

    The math is tf.nn.conv2d's: dx = conv(dy, kernel reversed in space with in/out swapped),
    dkernel = Conv2DBackpropFilter.  Spelling dx out with an explicit transpose keeps it on
    XLA:CPU's fast (Eigen) convolution inside while loops, where the automatic gradient's
    swapped kernel layout falls back to a slow generic loop (measured on 2 CPU cores: the PGA
    particle update of 1,024 particles took 26 CPU-s with the automatic gradient, 10 with
    this one; graph mode is unaffected).
    """
    def grad(dy):
        flipped = tf.transpose(tf.reverse(kernel, [0, 1]), [0, 1, 3, 2])
        dx = tf.nn.conv2d(dy, flipped, 1, "SAME")
        dkernel = tf.raw_ops.Conv2DBackpropFilter(
            input=x, filter_sizes=tf.shape(kernel), out_backprop=dy, strides=[1, 1, 1, 1],
            padding="SAME")
        return dx, dkernel

    return tf.nn.conv2d(x, kernel, 1, "SAME"), grad


@dataclasses.dataclass
class ResidualDecoderConfig:
    channels: int = setting(64, at_least=1, at_most=1024, help="feature maps of the projection and "
                                                               "residual layers (Kuntz et al. "
                                                               "2023: ngf * coef = 16 * 4)")
    projection_channels: int = setting(4, at_least=1, at_most=1024,
                                       help="maps of the linear layer's output, reshaped to (H/2, "
                                            "W/2, projection_channels) (Kuntz et al. 2023: coef = "
                                            "4)")
    residual_layers: int = setting(2, at_least=0, at_most=16, help="deterministic layers d = phi b "
                                                                   "c phi b c + I")
    kernels: list[int] = setting(factory=lambda: [5, 3], help="odd kernels of the two convs of a "
                                                              "residual layer (the first is also "
                                                              "the projection's conv)")
    output_kernel: int = setting(4, at_least=2, at_most=16, help="kernel of the stride-2 "
                                                                 "transposed conv head")
    activation: Activation = setting("gelu", help="phi (Kuntz et al. 2023: exact GELU)")
    final_activation: FinalActivation = setting(
        "tanh", help="tanh (Kuntz et al. 2023) bounds the output to (-1, 1): right for a Normal "
                     "mean on [-1,1] pixels; use 'identity' for likelihoods whose parameters are "
                     "unconstrained (Bernoulli/Categorical logits, Beta, Normal per_pixel)")

    def check(self, cfg, key: str):
        if len(self.kernels) != 2 or any(k < 1 or k > 15 or k % 2 == 0 for k in self.kernels):
            raise ConfigError(cfg.source_file, f"{key}.kernels",
                              "needs the (odd: 'same' padding is symmetric) kernel sizes of the "
                              "two convs of a residual layer", self.kernels,
                              "two odd integers in [1, 15], e.g. [5, 3]")


@keras.utils.register_keras_serializable("tfgen")
class ResidualDecoder(Network):
    """Kuntz et al.'s (2023) decoder (after Nijkamp et al. 2020, Table 4; ParEM ``parem/model.py``):

        f_theta = a o c^T o d o d o pi,
        pi = phi o b o c o phi o b o l          (projection: linear -> (H/2, W/2, 4) -> conv)
        d  = phi o b o c o phi o b o c + I      (residual "deterministic" layers)
        c^T: 4x4 transposed conv, stride 2 -> (H, W, C*k),  a = tanh (``final_activation``)

    with GELU phi and batch norm b (momentum 0.9, epsilon 1e-5: PyTorch's defaults, as in the
    reference).  For 32x32 images, d = 10 and one output channel it has 300,161 trainable
    parameters; for d = 64 and 3 channels 357,507 (the counts stated in Kuntz et al. 2023).  The
    head's channel count C*k comes from the likelihood (``output_shape``), so every likelihood fits.
    """

    def __init__(self, output_shape, channels=64, projection_channels=4, residual_layers=2,
                 kernels=(5, 3), output_kernel=4, activation="gelu", final_activation="tanh",
                 **kwargs):
        super().__init__(output_shape, **kwargs)
        self.channels, self.projection_channels = int(channels), int(projection_channels)
        self.residual_layers, self.kernels = int(residual_layers), [int(k) for k in kernels]
        self.output_kernel = int(output_kernel)
        self.activation_name, self.final_activation = activation, final_activation
        h, w, _ = self.target_shape
        self.base = (h // 2, w // 2)

    @staticmethod
    def _norm():
        return keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-5)

    def build(self, input_shape):
        self.act = _activation(self.activation_name)
        h, w = self.base
        c0, c, (k1, k2) = self.projection_channels, self.channels, self.kernels
        self.linear = keras.layers.Dense(h * w * c0)
        self.linear_norm = self._norm()
        # the convs' variables live in Conv2D layers; they are applied with same_conv2d
        self.project_conv = keras.layers.Conv2D(c, k1, padding="same", use_bias=False)
        self.project_conv(tf.zeros([1, h, w, c0]))  # builds its (named) variables
        self.project_norm = self._norm()
        self.blocks = []
        for _ in range(self.residual_layers):
            conv1 = keras.layers.Conv2D(c, k1, padding="same")
            conv2 = keras.layers.Conv2D(c, k2, padding="same")
            conv1(tf.zeros([1, h, w, c]))
            conv2(tf.zeros([1, h, w, c]))
            self.blocks.append((conv1, self._norm(), conv2, self._norm()))
        self.head = keras.layers.Conv2DTranspose(self.target_shape[-1], self.output_kernel,
                                                 strides=2, padding="same")
        super().build(input_shape)

    @staticmethod
    def _conv(layer, x):
        # the kernel's value, read here (in the layer's compute dtype): custom_gradient takes
        # tensors, and a mirrored variable passed in would count as a captured variable
        y = same_conv2d(x, tf.convert_to_tensor(layer.kernel))
        return y + layer.bias if layer.use_bias else y

    def call(self, z, training=False):
        act, conv = self.act, self._conv
        x = act(self.linear_norm(self.linear(z), training=training))
        x = tf.reshape(x, [-1, self.base[0], self.base[1], self.projection_channels])
        x = act(self.project_norm(conv(self.project_conv, x), training=training))
        for conv1, norm1, conv2, norm2 in self.blocks:
            y = act(norm1(conv(conv1, x), training=training))
            x = act(norm2(conv(conv2, y), training=training)) + x
        x = self.head(x)
        if self.final_activation == "tanh":
            return tf.tanh(x)
        if self.final_activation == "sigmoid":
            return tf.sigmoid(x)
        return x

    def get_config(self):
        return {**super().get_config(), "channels": self.channels,
                "projection_channels": self.projection_channels,
                "residual_layers": self.residual_layers, "kernels": self.kernels,
                "output_kernel": self.output_kernel, "activation": self.activation_name,
                "final_activation": self.final_activation}


@NETWORKS.register("residual_decoder", config=ResidualDecoderConfig)
def residual_decoder(config: ResidualDecoderConfig, output_shape, key: str):
    """Kuntz et al.'s (2023) decoder: projection, two residual conv layers, 4x4 transposed conv, tanh (GELU, BN)."""
    _require_image_output("residual_decoder", output_shape, key)
    h, w, _ = output_shape
    if h % 2 or w % 2:
        raise ConfigError(None, f"{key}.name", f"needs even image sides (one stride-2 upsampling), "
                          f"but the images are {h}x{w}", "residual_decoder", "data.resize to an even size")
    return ResidualDecoder(output_shape, config.channels, config.projection_channels,
                           config.residual_layers, config.kernels, config.output_kernel,
                           config.activation, config.final_activation)
