"""Likelihoods p(y | z): objects that turn a decoder's output into a TFP distribution.

A decoder emits a tensor of shape ``[..., H, W, C * k]`` where ``k`` is
:meth:`Likelihood.params_per_channel`; the likelihood reshapes it into the
parameters of ``tfd.Independent(<per-pixel distribution>, 3)``, an event of
shape ``[H, W, C]`` (the pixels are conditionally independent given z,
the 2AMU20 VAE assignment, task 2).  Losses and estimators only ever call ``log_prob`` on what
:meth:`Likelihood.distribution` returns, so a new likelihood is one class.

Images reach a likelihood in the data's pixel range ([0,1] or [-1,1]);
:meth:`Likelihood.targets` maps them into the distribution's support (bin
indices for the Categorical, a clipped open interval for the Beta).

What else a likelihood can do it declares by inheriting the interfaces of
:mod:`tfgen.models.likelihood_capabilities` (``Discrete``, ``Factorized``,
``HasMeanStddev``), which evaluation tasks ``require``; what it needs of the data it checks
in its config's ``check(cfg)``, and a data key it derives (the Categorical's ``data.bins``)
it declares in its config's ``data_defaults()``, which :mod:`tfgen.assemble` applies.
"""
from __future__ import annotations

import dataclasses
from typing import Literal

import tensorflow as tf
import tensorflow_probability as tfp

from tfgen.errors import ConfigError
from tfgen.models.likelihood_capabilities import Discrete, Factorized, HasMeanStddev
from tfgen.models.pixelcnn import PixelCNNConfig, build_pixelcnn, int_seed, levels_of
from tfgen.registry import LIKELIHOODS
from tfgen.schema import setting

tfd = tfp.distributions


class Likelihood(tf.Module):
    """Base class.  Subclasses set ``params_per_channel`` and implement ``_pixel_distribution``."""

    params_per_channel = 1

    def __init__(self, config, image_shape: tuple[int, int, int], pixel_range: tuple[float, float]):
        super().__init__(name=type(self).__name__)
        self.config = config
        self.image_shape = tuple(image_shape)
        self.low, self.high = pixel_range

    def output_channels(self) -> int:
        """How many channels the decoder must emit: the decoder's head is derived from this."""
        return self.image_shape[-1] * self.params_per_channel

    def _split(self, decoder_output: tf.Tensor) -> list[tf.Tensor]:
        """[..., H, W, C*k] -> k tensors of shape [..., H, W, C]."""
        k = self.params_per_channel
        c = self.image_shape[-1]
        shape = tf.concat([tf.shape(decoder_output)[:-1], [c, k]], axis=0)
        params = tf.reshape(decoder_output, shape)
        return tf.unstack(params, num=k, axis=-1)

    def distribution(self, decoder_output: tf.Tensor) -> tfd.Distribution:
        return tfd.Independent(self._pixel_distribution(decoder_output), reinterpreted_batch_ndims=3)

    def log_prob(self, decoder_output: tf.Tensor, images: tf.Tensor) -> tf.Tensor:
        """log p(y | z) summed over pixels: shape = decoder_output's batch shape."""
        return self.distribution(decoder_output).log_prob(self.targets(images))

    def targets(self, images: tf.Tensor) -> tf.Tensor:
        return images

    def mean(self, decoder_output: tf.Tensor) -> tf.Tensor:
        """E[y | z], in the data's pixel range (for reconstructions and sample grids)."""
        return self._pixel_distribution(decoder_output).mean()

    def sample(self, decoder_output: tf.Tensor, seed=None) -> tf.Tensor:
        return self._pixel_distribution(decoder_output).sample(seed=seed)

    def density_width(self) -> float:
        """The width of the pixel scale a density (not :class:`Discrete`) is on: the data's
        pixel range (bits/dim of 8-bit data convert from it, :mod:`tfgen.evaluation.metrics`)."""
        return self.high - self.low

    def _pixel_distribution(self, decoder_output):  # pragma: no cover - abstract
        raise NotImplementedError

    def _unit(self, images: tf.Tensor) -> tf.Tensor:
        return (images - self.low) / (self.high - self.low)


# --------------------------------------------------------------------------- Normal

@dataclasses.dataclass
class NormalConfig:
    scale: Literal["fixed", "learned", "per_pixel"] = setting(
        "fixed", help="fixed: sigma as given; learned: one trainable sigma; "
                      "per_pixel: the decoder outputs a sigma for every pixel")
    sigma: float = setting(0.3, above=0.0, help="fixed sigma, or the initial value of a learned "
                                                "one (Kuntz et al. 2023 use sigma^2 = 0.3^2)")
    min_sigma: float = setting(1e-3, at_least=0.0, help="floor of a per-pixel or learned sigma")
    mean_activation: Literal["identity", "sigmoid", "tanh"] = setting(
        "identity", help="squashes the mean into the pixel range")


@LIKELIHOODS.register("normal", config=NormalConfig)
class NormalLikelihood(Likelihood, Factorized, HasMeanStddev):
    """y_i | z ~ N(m_i(z), s_i^2), independent pixels (the 2AMU20 VAE assignment, task 1a; Kuntz et al. 2023, eq. (1))."""

    def __init__(self, config: NormalConfig, image_shape, pixel_range):
        super().__init__(config, image_shape, pixel_range)
        self.params_per_channel = 2 if config.scale == "per_pixel" else 1
        self.stddev_varies = config.scale == "per_pixel"
        if config.scale == "learned":
            # unconstrained parameter: sigma = min_sigma + softplus(raw)
            init = tf.math.log(tf.math.expm1(tf.constant(config.sigma - config.min_sigma
                                                         if config.sigma > config.min_sigma
                                                         else config.sigma, tf.float32)))
            self.raw_sigma = tf.Variable(init, name="raw_sigma")

    def _loc(self, raw):
        act = self.config.mean_activation
        if act == "sigmoid":
            return self.low + (self.high - self.low) * tf.sigmoid(raw)
        if act == "tanh":
            return (self.low + self.high) / 2 + (self.high - self.low) / 2 * tf.tanh(raw)
        return raw

    def _pixel_distribution(self, decoder_output):
        cfg = self.config
        if cfg.scale == "per_pixel":
            raw_loc, raw_scale = self._split(decoder_output)
            return tfd.Normal(self._loc(raw_loc), cfg.min_sigma + tf.nn.softplus(raw_scale))
        loc = self._loc(decoder_output)
        if cfg.scale == "learned":
            return tfd.Normal(loc, cfg.min_sigma + tf.nn.softplus(self.raw_sigma))
        return tfd.Normal(loc, tf.constant(cfg.sigma, loc.dtype))

    def mean_stddev(self, decoder_output):
        dist = self._pixel_distribution(decoder_output)
        return dist.loc, tf.broadcast_to(dist.scale, tf.shape(dist.loc))


# --------------------------------------------------------------------------- Beta

@dataclasses.dataclass
class BetaConfig:
    epsilon: float = setting(1e-3, above=0.0, at_most=0.1,
                             help="pixels are clipped to [eps, 1-eps]: the Beta density is "
                                  "infinite or zero at 0 and 1")
    min_concentration: float = setting(1e-3, at_least=0.0)

    def check(self, cfg):
        if cfg.data.binarize != "none":
            raise ConfigError(cfg.source_file, "model.likelihood.name",
                              "the Beta likelihood needs continuous pixels, but data.binarize is set",
                              cfg.data.binarize, "data.binarize = 'none'")


@LIKELIHOODS.register("beta", config=BetaConfig)
class BetaLikelihood(Likelihood, Factorized, HasMeanStddev):
    """y_i | z ~ Beta(a_i(z), b_i(z)) on pixels rescaled to (0, 1) (the 2AMU20 VAE assignment, task 2b)."""

    params_per_channel = 2

    def __init__(self, config: BetaConfig, image_shape, pixel_range):
        super().__init__(config, image_shape, pixel_range)

    def targets(self, images):
        eps = self.config.epsilon
        return tf.clip_by_value(self._unit(images), eps, 1.0 - eps)

    def density_width(self) -> float:
        return 1.0  # a density on the pixels rescaled to [0, 1]

    def _pixel_distribution(self, decoder_output):
        raw_a, raw_b = self._split(decoder_output)
        floor = self.config.min_concentration
        return tfd.Beta(floor + tf.nn.softplus(raw_a), floor + tf.nn.softplus(raw_b))

    def mean(self, decoder_output):
        return self.low + (self.high - self.low) * super().mean(decoder_output)

    def mean_stddev(self, decoder_output):
        dist = self._pixel_distribution(decoder_output)
        return self.low + (self.high - self.low) * dist.mean(), (self.high - self.low) * dist.stddev()

    def sample(self, decoder_output, seed=None):
        return self.low + (self.high - self.low) * super().sample(decoder_output, seed)


# --------------------------------------------------------------------------- Categorical

@dataclasses.dataclass
class CategoricalConfig:
    bins: int = setting(4, at_least=2, at_most=256, help="k: pixel values are binned into k levels")

    def data_defaults(self) -> dict[str, int]:
        """Data keys this likelihood sets where the file leaves them at 0 (tfgen.assemble):
        the sensible default is to bin the data as the likelihood does."""
        return {"bins": self.bins}

    def check(self, cfg):
        if cfg.data.bins != self.bins:
            raise ConfigError(cfg.source_file, "data.bins",
                              "must equal model.likelihood.bins for the Categorical likelihood",
                              cfg.data.bins, f"{self.bins} (or 0 to derive it)")
        if cfg.data.binarize != "none":
            raise ConfigError(cfg.source_file, "data.binarize",
                              "cannot be combined with the Categorical likelihood's bins",
                              cfg.data.binarize, "'none'")


@LIKELIHOODS.register("categorical", config=CategoricalConfig)
class CategoricalLikelihood(Likelihood, Discrete, Factorized, HasMeanStddev):
    """y_i | z ~ Cat(pi_i(z)) over k pixel bins, pi = softmax(logits) (the 2AMU20 VAE assignment, task 2c)."""

    def __init__(self, config: CategoricalConfig, image_shape, pixel_range):
        super().__init__(config, image_shape, pixel_range)
        self.bins = config.bins
        self.params_per_channel = config.bins

    def targets(self, images):
        # data.bins quantized the images to k levels low + i (high-low)/(k-1); recover i.
        index = tf.round(self._unit(images) * (self.bins - 1))
        return tf.cast(tf.clip_by_value(index, 0, self.bins - 1), tf.int32)

    def _logits(self, decoder_output):
        c = self.image_shape[-1]
        shape = tf.concat([tf.shape(decoder_output)[:-1], [c, self.bins]], axis=0)
        return tf.reshape(decoder_output, shape)

    def _pixel_distribution(self, decoder_output):
        return tfd.Categorical(logits=self._logits(decoder_output))

    def _levels(self, dtype):
        return self.low + (self.high - self.low) * tf.linspace(tf.constant(0.0, dtype), 1.0, self.bins)

    def mean(self, decoder_output):
        probs = tf.nn.softmax(self._logits(decoder_output))
        return tf.reduce_sum(probs * self._levels(probs.dtype), axis=-1)

    def mean_stddev(self, decoder_output):
        """Mean and sd of the pixel's level under pi (the bins' values, not their indices)."""
        probs = tf.nn.softmax(self._logits(decoder_output))
        levels = self._levels(probs.dtype)
        mean = tf.reduce_sum(probs * levels, axis=-1)
        variance = tf.reduce_sum(probs * tf.square(levels - mean[..., None]), axis=-1)
        # the floor (sd >= 1e-6 of the range) keeps sqrt's gradient finite where one bin has all
        # the mass
        return mean, tf.sqrt(variance + 1e-12 * (self.high - self.low) ** 2)

    def sample(self, decoder_output, seed=None):
        index = super().sample(decoder_output, seed)
        return tf.gather(self._levels(decoder_output.dtype), index)


# --------------------------------------------------------------------------- Bernoulli

@dataclasses.dataclass
class BernoulliConfig:
    def check(self, cfg):
        if cfg.data.binarize == "none":
            raise ConfigError(cfg.source_file, "data.binarize",
                              "the Bernoulli likelihood is a density on binary images only",
                              "none", "'static' or 'dynamic'")


@LIKELIHOODS.register("bernoulli", config=BernoulliConfig)
class BernoulliLikelihood(Likelihood, Discrete, Factorized, HasMeanStddev):
    """y_i | z ~ Bernoulli(sigmoid(logit_i(z))) on binary images (the 2AMU20 VAE assignment, task 2d)."""

    def targets(self, images):
        return tf.cast(self._unit(images) > 0.5, tf.int32)

    def _pixel_distribution(self, decoder_output):
        return tfd.Bernoulli(logits=decoder_output, dtype=tf.int32)

    def mean(self, decoder_output):
        return self.low + (self.high - self.low) * tf.sigmoid(decoder_output)

    def mean_stddev(self, decoder_output):
        # sqrt(p (1 - p)) as exp((log sigmoid(l) + log sigmoid(-l)) / 2): finite gradients where
        # p saturates to 0 or 1 in float32 (sqrt's gradient at 0 is infinite)
        log_variance = tf.math.log_sigmoid(decoder_output) + tf.math.log_sigmoid(-decoder_output)
        return self.mean(decoder_output), (self.high - self.low) * tf.exp(0.5 * log_variance)

    def sample(self, decoder_output, seed=None):
        bits = tf.cast(super().sample(decoder_output, seed), decoder_output.dtype)
        return self.low + (self.high - self.low) * bits


# --------------------------------------------------------------------------- discretized logistics

@dataclasses.dataclass
class DiscretizedLogisticMixtureConfig:
    components: int = setting(10, at_least=1, at_most=100, help="K logistics per pixel "
                                                                "(PixelCNN++: 10)")
    levels: int = setting(256, at_least=2, at_most=65536, help="pixel levels (8-bit images: 256)")
    min_log_scale: float = setting(-7.0, help="floor of every logistic's log scale (PixelCNN++)")

    def check(self, cfg):
        if cfg.data.binarize != "none":
            raise ConfigError(cfg.source_file, "data.binarize", "the discretized logistic "
                              "mixture is a distribution over pixel levels, not bits",
                              cfg.data.binarize, "'none'")


@LIKELIHOODS.register("discretized_logistic_mixture", config=DiscretizedLogisticMixtureConfig)
class DiscretizedLogisticMixtureLikelihood(Likelihood, Discrete, Factorized):
    """y_i | z ~ sum_k pi_ik DiscretizedLogistic(mu_ik, s_ik) over ``levels`` pixel levels
    (Salimans, Karpathy, Chen & Kingma 2017, PixelCNN++, eq. (2)): the mass of level v is
    F(v + 1/2) - F(v - 1/2) for the logistic CDF F (in level units), with all the mass below
    the first level and above the last given to those levels.  Each channel is its own
    mixture (PixelCNN++ also couples an RGB pixel's channels linearly; not here).  A
    probability mass: its log-likelihood is that of the discrete image (bits/dim directly)."""

    def __init__(self, config: DiscretizedLogisticMixtureConfig, image_shape, pixel_range):
        super().__init__(config, image_shape, pixel_range)
        self.components = config.components
        self.params_per_channel = 3 * config.components

    def targets(self, images):
        top = self.config.levels - 1
        return tf.clip_by_value(tf.round(self._unit(images) * top), 0.0, float(top))

    def _params(self, decoder_output):
        c, k = self.image_shape[-1], self.components
        shape = tf.concat([tf.shape(decoder_output)[:-1], [c, 3, k]], axis=0)
        logits, loc, raw_scale = tf.unstack(tf.reshape(decoder_output, shape), axis=-2)
        top = float(self.config.levels - 1)
        # locations in level units around the middle of the range, scales >= e^min_log_scale
        loc = top / 2.0 + top / 2.0 * loc
        log_scale = tf.maximum(raw_scale, self.config.min_log_scale)
        return logits, loc, log_scale

    def _pixel_distribution(self, decoder_output):
        logits, loc, log_scale = self._params(decoder_output)
        top = float(self.config.levels - 1)
        # QuantizedDistribution puts the mass of (v - 1, v] on level v: the logistic shifted
        # down by 1/2 gives level v the mass of (v - 1/2, v + 1/2] under mu, PixelCNN++'s bins
        logistic = tfd.QuantizedDistribution(
            tfd.Logistic(loc - 0.5, tf.exp(log_scale)), low=tf.constant(0.0, loc.dtype),
            high=tf.constant(top, loc.dtype))
        return tfd.MixtureSameFamily(tfd.Categorical(logits=logits), logistic)

    def mean(self, decoder_output):
        """E[y | z]: the mixture's mean location, clipped to the range (the discretization
        moves the mean only near the edges; for figures)."""
        logits, loc, _ = self._params(decoder_output)
        top = float(self.config.levels - 1)
        level = tf.clip_by_value(tf.reduce_sum(tf.nn.softmax(logits) * loc, -1), 0.0, top)
        return self.low + (self.high - self.low) * level / top

    def sample(self, decoder_output, seed=None):
        level = self._pixel_distribution(decoder_output).sample(seed=seed)
        return self.low + (self.high - self.low) * level / float(self.config.levels - 1)


# --------------------------------------------------------------------------- PixelCNN

@dataclasses.dataclass
class PixelCNNLikelihoodConfig(PixelCNNConfig):
    conditional_channels: int = setting(1, at_least=1, at_most=64, help="maps per image channel "
                                                                        "the decoder emits to "
                                                                        "condition on")

    def check(self, cfg):
        binarized = cfg.data.binarize != "none"
        if binarized and self.levels != 2:
            raise ConfigError(cfg.source_file, "model.likelihood.levels", "binarized images "
                              "have 2 levels", self.levels, "2")


@LIKELIHOODS.register("pixelcnn", config=PixelCNNLikelihoodConfig)
class PixelCNNLikelihood(Likelihood, Discrete):
    """p(y | z) = PixelCNN(y | h = decoder(z)) (van den Oord et al. 2016; tfd.PixelCNN with the
    decoder's output as global conditioning, :mod:`tfgen.models.pixelcnn`): autoregressive over
    the pixels, so ``mean`` has no closed form (figures show a sample), and it is neither
    ``Factorized`` nor ``HasMeanStddev``: tasks that need per-pixel factors are refused at load
    time."""

    def __init__(self, config: PixelCNNLikelihoodConfig, image_shape, pixel_range):
        super().__init__(config, image_shape, pixel_range)
        self.params_per_channel = config.conditional_channels
        h, w, c = self.image_shape
        self.conditional_shape = (h, w, c * config.conditional_channels)
        self.pixelcnn = build_pixelcnn(config, self.image_shape, self.conditional_shape)

    def targets(self, images):
        return levels_of(images, (self.low, self.high), self.config.levels)

    def log_prob(self, decoder_output, images):
        return self.pixelcnn.log_prob(self.targets(images), conditional_input=decoder_output,
                                      training=False)

    def sample(self, decoder_output, seed=None):
        lead = tf.shape(decoder_output)[:-3]
        flat = tf.reshape(decoder_output, [-1, *self.conditional_shape])
        levels = self.pixelcnn.sample(tf.shape(flat)[0], seed=int_seed(seed),
                                      conditional_input=flat)
        images = self.low + (self.high - self.low) * levels / float(self.config.levels - 1)
        return tf.reshape(images, tf.concat([lead, self.image_shape], 0))

    def mean(self, decoder_output):
        """A sample (the autoregressive mean has no closed form): for figures only."""
        return self.sample(decoder_output, seed=0)


def build_likelihood(component, image_shape, pixel_range) -> Likelihood:
    return LIKELIHOODS.get(component.name).factory(component.params, image_shape, pixel_range)
