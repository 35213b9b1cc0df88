"""Priors p(z) over the latent space: each a TFP distribution (``distribution()``, with
``log_prob`` and ``sample``) and its trainable variables, which join theta.

* ``standard_normal``: N(0, I) (Kuntz et al. 2023; the 2AMU20 VAE assignment), KL to a Gaussian q in
  closed form;
* ``gaussian_mixture``: sum_k pi_k N(mu_k, diag sigma_k^2), K learned components;
* ``realnvp``: a RealNVP flow on N(0, I) (Dinh, Sohl-Dickstein & Bengio 2017; the lecture's
  NVP slides): affine coupling layers whose masks alternate (a reversal between layers), each
  with a network of the networks registry (``coupling``; default an MLP of ``hidden`` widths);
* ``vamp``: the VampPrior, (1/K) sum_k q_phi(z | u_k) at K learned pseudo-inputs u_k
  (Tomczak & Welling 2018); it needs the scheme's encoder (``vae`` only).

For every prior but the standard normal the ELBO's KL(q || p) is the Monte Carlo estimate
E_q[log q(z) - log p(z)] at the ELBO's own samples (``GenerativeModel.kl_to_prior``).
PGA's Langevin move needs only grad log p(z), which TensorFlow differentiates through any
of them.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp
import tf_keras as keras

from tfgen.errors import ConfigError
from tfgen.models.networks import MLPConfig, Network, build_network
from tfgen.registry import PRIORS
from tfgen.schema import Component, setting

tfd = tfp.distributions
tfb = tfp.bijectors


class Prior(tf.Module):
    """Base: ``dim``, ``distribution(dtype)``, ``analytic_kl`` (KL to a diagonal Gaussian in
    closed form), and the tf.Module's trainable variables."""

    analytic_kl = False
    #: needs the scheme's amortized encoder (attach_encoder before use); such a prior says
    #: what it is (``described_as``) and what to use instead (``instead_without_encoder``)
    needs_encoder = False

    def __init__(self, dim: int, name: str):
        super().__init__(name=name)
        self.dim = dim

    def distribution(self, dtype=tf.float32) -> tfd.Distribution:
        raise NotImplementedError


@dataclasses.dataclass
class StandardNormalConfig:
    dim: int = setting(16, at_least=1, at_most=4096, help="latent dimension d")


@PRIORS.register("standard_normal", config=StandardNormalConfig)
class StandardNormalPrior(Prior):
    """p(z) = N(z | 0, I_d)  (Kuntz et al. 2023, the model; the 2AMU20 VAE assignment, task 1a)."""

    analytic_kl = True

    def __init__(self, config: StandardNormalConfig):
        super().__init__(config.dim, "standard_normal")

    def distribution(self, dtype=tf.float32) -> tfd.Distribution:
        return tfd.MultivariateNormalDiag(loc=tf.zeros([self.dim], dtype),
                                          scale_diag=tf.ones([self.dim], dtype))


@dataclasses.dataclass
class GaussianMixtureConfig:
    dim: int = setting(16, at_least=1, at_most=4096, help="latent dimension d")
    components: int = setting(10, at_least=1, at_most=10000, help="K mixture components")
    init_spread: float = setting(1.0, at_least=0.0, at_most=100.0,
                                 help="initial means ~ N(0, init_spread^2 I) (fixed seed)")
    init_scale: float = setting(1.0, above=0.0, at_most=100.0, help="initial sigma of every "
                                                                    "component")
    min_scale: float = setting(1e-3, at_least=0.0, at_most=1.0, help="floor of every component's "
                                                                     "sigma")


@PRIORS.register("gaussian_mixture", config=GaussianMixtureConfig)
class GaussianMixturePrior(Prior):
    """p(z) = sum_k softmax(a)_k N(z | mu_k, diag sigma_k^2), a, mu, sigma learned with theta
    (sigma = min_scale + softplus(raw))."""

    def __init__(self, config: GaussianMixtureConfig):
        super().__init__(config.dim, "gaussian_mixture")
        k, d = config.components, config.dim
        rng = np.random.default_rng(0)  # the initial means are part of the recipe, not the run
        self.config = config
        self.logits = tf.Variable(tf.zeros([k]), name="logits")
        self.means = tf.Variable((config.init_spread * rng.normal(size=(k, d))).astype(np.float32),
                                 name="means")
        raw = np.log(np.expm1(max(config.init_scale - config.min_scale, 1e-6)))
        self.raw_scales = tf.Variable(tf.fill([k, d], np.float32(raw)), name="raw_scales")

    def distribution(self, dtype=tf.float32) -> tfd.Distribution:
        scales = self.config.min_scale + tf.nn.softplus(self.raw_scales)
        return tfd.MixtureSameFamily(
            tfd.Categorical(logits=tf.cast(self.logits, dtype)),
            tfd.MultivariateNormalDiag(tf.cast(self.means, dtype), tf.cast(scales, dtype)))


#: what the coupling network of the realnvp prior and the flow scheme is, for their help texts
COUPLING_HELP = ("each coupling layer's network, from the unchanged half of z to the shift and "
                 "raw log scale of the other half (any network: name = 'layers' writes one as "
                 "Keras layers); the coupling layer sizes its output, and tfgen's head starts at "
                 "zero (every coupling starts as the identity); not given: an MLP of `hidden` "
                 "widths")
HIDDEN_HELP = ("widths of the hidden layers of the default coupling network (an MLP with ReLU), "
               "used when `coupling` is not given")


@dataclasses.dataclass
class RealNVPConfig:
    dim: int = setting(16, at_least=2, at_most=4096, help="latent dimension d (at least 2: "
                                                          "coupling layers split z)")
    coupling_layers: int = setting(4, at_least=1, at_most=64, help="affine coupling layers; the "
                                                                   "masks alternate (z is reversed "
                                                                   "between layers)")
    hidden: list[int] = setting(factory=lambda: [64, 64], at_least=1, help=HIDDEN_HELP)
    coupling: Optional[Component] = setting(None, registry="networks", help=COUPLING_HELP)

    def check(self, cfg):
        check_coupling_keys(self, cfg.source_file, "model.prior")

    def network_shapes(self, field: str, image_shape) -> tuple[tuple, tuple]:
        """(input, output) shape per example of the network at ``field`` (``coupling``), for
        the load-time check of a ``layers`` network."""
        return coupling_shapes(self.dim)


def check_coupling_keys(params, file, section: str) -> None:
    """``hidden`` sizes the default coupling network only: with ``coupling`` given, a
    changed ``hidden`` would be silently unused."""
    default = type(params)().hidden
    if params.coupling is not None and list(params.hidden) != default:
        raise ConfigError(file, f"{section}.hidden", "sets the widths of the default coupling "
                          f"network, but {section}.coupling is given", params.hidden,
                          f"the coupling network's own keys ({section}.coupling.*), or no "
                          f"{section}.coupling")


def coupling_shapes(dim: int) -> tuple[tuple[int], tuple[int]]:
    """(input, output) per example of each coupling network on [.., dim]: the m = dim // 2
    unchanged dimensions in, a shift and a raw log scale for each of the dim - m others out
    (Dinh et al. 2017, eqs. (4)-(6))."""
    masked = dim // 2
    return (masked,), (2 * (dim - masked),)


def default_coupling(hidden: list[int]) -> Component:
    """The coupling network when none is given: an MLP of ``hidden`` widths with ReLU."""
    return Component("mlp", MLPConfig(hidden=list(hidden), activation="relu"))


class CouplingNetwork(keras.layers.Layer):
    """(shift, log scale) of an affine coupling layer from the unchanged half x_{1:m}
    (Dinh et al. 2017, eq. (4)-(6)): the network's output split in two; log scale = tanh(raw)
    keeps each layer's Jacobian within e^{+-1} per dimension (a common stabilisation)."""

    def __init__(self, network: keras.layers.Layer, **kwargs):
        super().__init__(**kwargs)
        self.network = network

    def call(self, x, output_units=None):
        # a network takes one batch axis; z may have several (the ELBO's samples [S, B, d])
        flat = tf.reshape(x, [-1, x.shape[-1]])
        out = tf.reshape(self.network(flat), tf.concat([tf.shape(x)[:-1], [-1]], 0))
        shift, raw = tf.split(out, 2, axis=-1)
        return shift, tf.tanh(raw)


def realnvp_bijector(dim: int, layers: int, network: Optional[Component], hidden: list[int],
                     key: str, name: str = "coupling"):
    """(f, coupling networks): ``layers`` RealNVP affine couplings on [.., dim] (tfb.RealNVP,
    Dinh et al. 2017, eqs. (4)-(6)), z reversed between them so the masks alternate.  Each
    coupling's network is built from ``network`` (the config's ``key``; None: the default MLP
    of ``hidden`` widths) for the shapes of :func:`coupling_shapes`; its head starts at zero
    where the network has a head tfgen sizes (``Network.start_at_zero``), so every coupling
    starts as the identity.  Each network's variables exist on return (built under the
    caller's strategy scope); an output of another shape is a ConfigError at ``key``."""
    component = network if network is not None else default_coupling(hidden)
    (masked,), output_shape = coupling_shapes(dim)
    networks = []
    for i in range(layers):
        net = build_network(component, output_shape, key)
        if isinstance(net, Network):
            net.start_at_zero()
        networks.append(CouplingNetwork(net, name=f"{name}_{i}"))
    for net in networks:
        out = net.network(tf.zeros([1, masked]))
        if tuple(out.shape[1:]) != output_shape:
            raise ConfigError(None, key, f"a coupling network must output {output_shape[0]} "
                              f"values per example (a shift and a raw log scale for each of "
                              f"the {output_shape[0] // 2} transformed dimensions), but "
                              f"{component.name!r} outputs shape {tuple(out.shape[1:])}",
                              component.name, "a network that emits the shape it is given "
                              "(the built-in ones and name = 'layers' do)")
    bijectors = []
    for i, net in enumerate(networks):
        if i:
            bijectors.append(tfb.Permute(list(reversed(range(dim)))))
        bijectors.append(tfb.RealNVP(num_masked=masked, shift_and_log_scale_fn=net))
    return tfb.Chain(list(reversed(bijectors))), networks  # Chain applies the last first


@PRIORS.register("realnvp", config=RealNVPConfig)
class RealNVPPrior(Prior):
    """p(z): z = f(u), u ~ N(0, I), f a chain of ``coupling_layers`` RealNVP affine couplings
    (tfb.RealNVP with a Keras coupling network) with the dimensions reversed between them, so
    every dimension is transformed; log p(z) = log N(f^{-1}(z)) + log |det d f^{-1}/dz|."""

    def __init__(self, config: RealNVPConfig):
        super().__init__(config.dim, "realnvp")
        self.bijector, self.networks = realnvp_bijector(config.dim, config.coupling_layers,
                                                        config.coupling, config.hidden,
                                                        "model.prior.coupling")

    def distribution(self, dtype=tf.float32) -> tfd.Distribution:
        base = tfd.MultivariateNormalDiag(tf.zeros([self.dim], dtype), tf.ones([self.dim], dtype))
        return tfd.TransformedDistribution(base, self.bijector)


@dataclasses.dataclass
class VampConfig:
    dim: int = setting(16, at_least=1, at_most=4096, help="latent dimension d")
    pseudo_inputs: int = setting(500, at_least=1, at_most=100000,
                                 help="K learned pseudo-inputs u_k (Tomczak & Welling: 500)")
    init_mean: float = setting(0.5, help="initial u_k ~ N(init_mean, init_std^2), per pixel, in "
                                         "the data's pixel range (clipped to it)")
    init_std: float = setting(0.01, at_least=0.0, help="spread of the initial pseudo-inputs")


@PRIORS.register("vamp", config=VampConfig)
class VampPrior(Prior):
    """p(z) = (1/K) sum_k q_phi(z | u_k): the encoder's posteriors at K learned pseudo-inputs
    (Tomczak & Welling 2018, eq. (9)).  The pseudo-inputs are created when the scheme attaches
    its encoder (they have the images' shape); they are trained with theta and phi."""

    needs_encoder = True
    #: what it is and what to use instead, for a config whose scheme has no encoder (the
    #: check is tfgen.assemble's, where priors and schemes meet)
    described_as = "the VampPrior (a mixture of the encoder's posteriors at pseudo-inputs)"
    instead_without_encoder = "model.prior.name = 'gaussian_mixture' or 'realnvp'"

    def __init__(self, config: VampConfig):
        super().__init__(config.dim, "vamp")
        self.config = config
        self.encoder = None
        self.pseudo_inputs = None

    def attach_encoder(self, encoder, image_shape, pixel_range, posterior_params) -> None:
        """``posterior_params(encoder_output) -> (mean, log variance)``."""
        low, high = pixel_range
        rng = np.random.default_rng(0)
        c = self.config
        init = rng.normal(low + c.init_mean * (high - low), c.init_std * (high - low),
                          size=(c.pseudo_inputs, *image_shape))
        self.pseudo_inputs = tf.Variable(np.clip(init, low, high).astype(np.float32),
                                         name="pseudo_inputs")
        self.encoder = encoder
        self._posterior_params = posterior_params
        self._pixel_range = (low, high)

    def distribution(self, dtype=tf.float32) -> tfd.Distribution:
        if self.encoder is None:
            raise RuntimeError("the VampPrior needs the scheme's encoder (attach_encoder)")
        # u_k kept in the pixel range (Tomczak & Welling: a hardtanh on the pseudo-inputs)
        inputs = tf.clip_by_value(self.pseudo_inputs, *self._pixel_range)
        mean, log_variance = self._posterior_params(self.encoder(inputs))
        k = self.config.pseudo_inputs
        return tfd.MixtureSameFamily(
            tfd.Categorical(logits=tf.zeros([k], dtype)),
            tfd.MultivariateNormalDiag(tf.cast(mean, dtype),
                                       tf.cast(tf.exp(0.5 * log_variance), dtype)))

    @property
    def trainable_variables(self):
        # the encoder's variables are phi's (the scheme trains them); u_k are the prior's
        return (self.pseudo_inputs,) if self.pseudo_inputs is not None else ()


def build_prior(component):
    return PRIORS.get(component.name).factory(component.params)
