"""``name = "layers"``: a network written in the TOML as a list of tf_keras layers.

    [model.decoder]
    name = "layers"
    [[model.decoder.layers]]
    type = "Dense"
    units = 1568
    activation = "relu"
    [[model.decoder.layers]]
    type = "Reshape"
    target_shape = [7, 7, 32]

Each table names a class of ``tf_keras.layers`` (``type``) and gives its keyword arguments;
two blocks nest lists:

* ``{type = "residual", layers = [...]}``: y = f(x) + x, with a 1x1 projection of x (a Dense
  on flat features, a 1x1 Conv2D on maps) when f changes the number of channels (He et al.
  2016, eq. (2));
* ``{type = "repeat", times = n, layers = [...]}``: the sub-list n times, each copy with its
  own weights.

The head is sized by the likelihood, as for the built-in networks.  ``head = "auto"``
(default): after the user's layers tfgen appends the layer that emits exactly the shape the
network must produce (``output_shape``: ``(units,)`` for an encoder, ``(H, W, C*k)`` for a
decoder): a Dense (and a reshape) after a flat output, a Flatten and a Dense when a map must
become a vector, a 1x1 Conv2D after an H x W map.  ``head = "none"``: the last layer must
emit that shape itself.  Either way the shapes are checked when the network is built, and a
mismatch names both.

A config is data: ``type`` is only ever looked up among the layer classes (never imported,
never a callable), and an argument is a number, a string, a boolean or an array of them
(activations, initializers and regularizers by name).  Arguments are checked against the
class's ``__init__`` signature (plus the base layer's ``name``, ``trainable`` and ``dtype``)
and, where the default decides it, their type; then every layer is constructed once, so
Keras' own refusals become one-line errors at the key of the layer.  ``check`` does all that
at load time (``tfgen validate``), and builds the layers on their input shape where it is
known without loading the data (a decoder's latent dimension, a coupling network's half of z;
the image shape from ``data.resize`` and ``data.color`` or the data's headers,
:func:`tfgen.data.loader.peek_image_shape`); the rest is checked when ``tfgen run`` builds the
networks, before it creates a run directory (``unchecked`` says so for ``tfgen validate``).
"""
from __future__ import annotations

import copy
import dataclasses
import difflib
import functools
import inspect
import math
from typing import Any, Literal

import tensorflow as tf
import tf_keras as keras

from tfgen.errors import ConfigError
from tfgen.models.networks import Network
from tfgen.registry import NETWORKS
from tfgen.schema import Component, setting

#: the keys of the two blocks (besides ``type``)
BLOCKS = {"residual": ("layers",), "repeat": ("times", "layers")}
#: the base layer's arguments a layer table may set (the others -- input shapes, weights --
#: are tfgen's to decide)
BASE_ARGUMENTS = ("name", "trainable", "dtype")
#: layer classes a config may not name: the abstract bases, and Lambda, which runs a Python
#: function (a config is data)
EXCLUDED = frozenset({"Layer", "InputLayer", "Lambda", "Wrapper", "AbstractRNNCell"})
TYPE_HELP = ("a tf_keras.layers class name (e.g. 'Dense', 'Conv2D', 'BatchNormalization'), "
             "'residual' or 'repeat'")


@functools.lru_cache(maxsize=None)
def layer_classes() -> dict[str, type]:
    """The layer classes a ``type`` may name: tf_keras.layers' public Layer subclasses."""
    return {name: obj for name in dir(keras.layers)
            if not name.startswith("_") and name not in EXCLUDED
            for obj in [getattr(keras.layers, name)]
            if isinstance(obj, type) and issubclass(obj, keras.layers.Layer)}


# --------------------------------------------------------------------------- parsing

@dataclasses.dataclass(frozen=True)
class LayerSpec:
    key: str
    cls: type
    args: dict


@dataclasses.dataclass(frozen=True)
class ResidualSpec:
    key: str
    layers: list  # the raw tables (a Residual layer parses them itself)


@dataclasses.dataclass(frozen=True)
class RepeatSpec:
    key: str
    times: int
    body: tuple


def parse_layers(raw: Any, key: str, file: str | None = None) -> list:
    """The specs of a layer list; every error of the list at once (ConfigError[s])."""
    errors: list[ConfigError] = []
    specs = _parse_list(raw, key, file, errors)
    if errors:
        raise ConfigError.combine(errors)
    return specs


def _parse_list(raw: Any, key: str, file, errors: list) -> list:
    if not isinstance(raw, list):
        errors.append(ConfigError(file, key, "expected an array of layer tables", raw,
                                  f"tables with type = {TYPE_HELP}"))
        return []
    specs = []
    for i, item in enumerate(raw):
        try:
            specs.append(_parse_item(item, f"{key}[{i}]", file, errors))
        except ConfigError as err:
            errors.append(err)
    return specs


def _close(word: str, options) -> str:
    close = difflib.get_close_matches(str(word), list(options), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _parse_item(item: Any, key: str, file, errors: list):
    if not isinstance(item, dict):
        raise ConfigError(file, key, "expected a table with a 'type' key", item, TYPE_HELP)
    if "type" not in item:
        raise ConfigError(file, f"{key}.type", "required key is missing", allowed=TYPE_HELP)
    kind = item["type"]
    if isinstance(kind, str) and kind in BLOCKS:
        return _parse_block(kind, item, key, file, errors)
    classes = layer_classes()
    if not isinstance(kind, str) or kind not in classes:
        why = ("runs a Python function, and a config is data" if kind == "Lambda" else
               f"unknown layer type{_close(kind, [*classes, *BLOCKS]) if isinstance(kind, str) else ''}")
        raise ConfigError(file, f"{key}.type", why, kind, TYPE_HELP)
    cls = classes[kind]
    allowed = _arguments(cls)
    args, bad = {}, False
    for name, value in item.items():
        if name == "type":
            continue
        arg_key = f"{key}.{name}"
        try:
            if name not in allowed:
                raise ConfigError(file, arg_key, f"unknown argument of {kind}{_close(name, allowed)}",
                                  ..., ", ".join(allowed))
            _check_value(value, allowed[name], arg_key, file)
        except ConfigError as err:
            errors.append(err)
            bad = True
            continue
        args[name] = _as_keras(value)
    if not bad:
        construct(cls, args, key, file)
    return LayerSpec(key, cls, args)


def _parse_block(kind: str, item: dict, key: str, file, errors: list):
    for name in item:
        if name != "type" and name not in BLOCKS[kind]:
            errors.append(ConfigError(file, f"{key}.{name}",
                                      f"unknown key of a {kind} block{_close(name, BLOCKS[kind])}",
                                      ..., ", ".join(("type", *BLOCKS[kind]))))
    if "layers" not in item:
        raise ConfigError(file, f"{key}.layers", "required key is missing",
                          allowed="an array of layer tables")
    if not isinstance(item["layers"], list) or not item["layers"]:
        raise ConfigError(file, f"{key}.layers", "expected a non-empty array of layer tables",
                          item["layers"], f"tables with type = {TYPE_HELP}")
    body = _parse_list(item["layers"], f"{key}.layers", file, errors)
    if kind == "residual":
        return ResidualSpec(key, item["layers"])
    times = item.get("times", ...)
    if times is ...:
        raise ConfigError(file, f"{key}.times", "required key is missing",
                          allowed="an integer >= 1")
    if isinstance(times, bool) or not isinstance(times, int) or times < 1:
        raise ConfigError(file, f"{key}.times", "expected an integer >= 1", times)
    return RepeatSpec(key, times, tuple(body))


@functools.lru_cache(maxsize=None)
def _arguments(cls: type) -> dict[str, inspect.Parameter]:
    """The keyword arguments a layer table may give ``cls``: its ``__init__``'s named ones
    and, where it passes ``**kwargs`` on, the base layer's ``BASE_ARGUMENTS``."""
    params = {n: p for n, p in inspect.signature(cls.__init__).parameters.items()
              if n != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    if any(p.kind is p.VAR_KEYWORD for p in inspect.signature(cls.__init__).parameters.values()):
        base = inspect.signature(keras.layers.Layer.__init__).parameters
        params.update({n: base[n] for n in BASE_ARGUMENTS if n not in params})
    return params


def _is_data(value: Any) -> bool:
    if isinstance(value, list):
        return all(_is_data(v) for v in value)
    return isinstance(value, (bool, int, float, str))


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_value(value: Any, param: inspect.Parameter, key: str, file) -> None:
    """Refuse tables (a config is data) and the types the annotation or the default rules out."""
    if not _is_data(value):
        raise ConfigError(file, key, "a layer argument is a number, a string, a boolean or an "
                          "array of them (give activations, initializers and regularizers by "
                          "name)", value)
    expected = param.annotation if param.annotation in (bool, int, float, str) else None
    default = param.default
    if expected is None and default is not inspect.Parameter.empty and default is not None:
        expected = type(default)
    number = _is_int(value) or isinstance(value, float)
    rules = {  # Keras takes an int or a tuple of ints for most integer and tuple arguments
        bool: (isinstance(value, bool), "true or false"),
        int: (_is_int(value) or (isinstance(value, list) and all(map(_is_int, value))),
              "an integer (or an array of integers)"),
        float: (number, "a number"),
        str: (isinstance(value, str), "a string"),
        tuple: (number or isinstance(value, list), "a number or an array"),
        list: (number or isinstance(value, list), "a number or an array"),
    }
    ok, text = rules.get(expected, (True, ""))
    if not ok:
        hint = f" (default {default!r})" if default is not inspect.Parameter.empty else ""
        raise ConfigError(file, key, f"expected {text}{hint}", value)


def _as_keras(value: Any) -> Any:
    """TOML arrays as tuples, the shapes Keras documents (target_shape, kernel_size ...)."""
    return tuple(_as_keras(v) for v in value) if isinstance(value, list) else value


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}".rstrip(": ")


def construct(cls: type, args: dict, key: str, file=None):
    """``cls(**args)``, Keras' refusal (any exception: the arguments are the user's) as a
    one-line ConfigError at ``key``."""
    try:
        return cls(**args)
    except Exception as err:  # noqa: BLE001 -- anything Keras raises here is about the input
        raise ConfigError(file, key, f"{cls.__name__} refuses these arguments "
                          f"({_first_line(err)})", {k: _as_toml(v) for k, v in args.items()
                                                    if k != "dtype" or isinstance(v, str)}) from None


def _as_toml(value: Any) -> Any:
    return [_as_toml(v) for v in value] if isinstance(value, tuple) else value


# --------------------------------------------------------------------------- building

def instantiate(specs: list, policy) -> list[tuple[str, keras.layers.Layer]]:
    """(key, fresh layer) per layer of ``specs``, repeats unrolled; every layer under the dtype
    policy ``policy`` (the network's: float16 compute under mixed precision) unless its table
    sets ``dtype``."""
    out = []
    for spec in specs:
        if isinstance(spec, RepeatSpec):
            for _ in range(spec.times):
                out += instantiate(list(spec.body), policy)
        elif isinstance(spec, ResidualSpec):
            out.append((spec.key, Residual(spec.layers, key=spec.key, dtype=policy)))
        else:
            out.append((spec.key, construct(spec.cls, {"dtype": policy, **spec.args}, spec.key)))
    return out


def output_shape_of(layer: keras.layers.Layer, shape: tuple, key: str) -> tuple:
    """The per-example output shape of ``layer`` on per-example inputs of ``shape``, without
    running it where Keras can say (``compute_output_shape``), else by building it on one
    example of zeros; a layer that cannot take the shape is a ConfigError at ``key``."""
    try:
        try:
            out = layer.compute_output_shape(tf.TensorShape([None, *shape]))
        except (NotImplementedError, AttributeError):
            out = layer(tf.zeros([1, *shape], layer.compute_dtype)).shape
        out = tf.TensorShape(out).as_list()[1:]
    except ConfigError:
        raise
    except Exception as err:  # noqa: BLE001 -- Keras' shape errors come as several types
        raise ConfigError(None, key, f"cannot take its input of shape {_shape(shape)} "
                          f"({_first_line(err)})") from None
    if any(d is None or d <= 0 for d in out):
        raise ConfigError(None, key, f"gives the output shape {_shape(out)} on its input of "
                          f"shape {_shape(shape)}; every size must be known and positive")
    return tuple(out)


def propagate(items: list[tuple[str, keras.layers.Layer]], shape: tuple) -> tuple:
    for key, layer in items:
        shape = output_shape_of(layer, shape, key)
    return shape


def _shape(shape) -> str:
    return "(" + ", ".join(str(d) for d in shape) + ("," if len(shape) == 1 else "") + ")"


def head_layers(shape: tuple, target: tuple, head: str, key: str, policy,
                initializer: str = "glorot_uniform") -> list:
    """The layers that turn the user's last output (per example ``shape``) into ``target``
    (module docstring), the kernel of the one that emits it initialised by ``initializer``;
    a mismatch names both shapes."""
    needs = (f"this network must output {_shape(target)} per example"
             + (" (H, W, C * the likelihood's parameters per pixel)" if len(target) == 3 else ""))
    if head == "none":
        if tuple(shape) != tuple(target):
            raise ConfigError(None, f"{key}.layers", f"the last layer outputs {_shape(shape)}, "
                              f"but {needs}", allowed="layers that end in that shape, or "
                              "head = 'auto' (tfgen appends the layer that emits it)")
        return []
    dense = functools.partial(keras.layers.Dense, dtype=policy, kernel_initializer=initializer)
    if len(shape) == 1:
        return [dense(math.prod(target))] + (
            [keras.layers.Reshape(target, dtype=policy)] if len(target) > 1 else [])
    if len(target) == 1:
        return [keras.layers.Flatten(dtype=policy), dense(target[0])]
    if len(shape) == 3 and len(target) == 3 and tuple(shape[:2]) == tuple(target[:2]):
        return [keras.layers.Conv2D(target[-1], 1, dtype=policy, kernel_initializer=initializer)]
    raise ConfigError(None, f"{key}.layers", f"the last layer outputs {_shape(shape)}, but "
                      f"{needs}", allowed=f"with head = 'auto', layers that end in a "
                      f"{target[0]}x{target[1]} map (a 1x1 Conv2D head is added) or flat (end "
                      f"with a Flatten layer: a Dense head is added)")


@keras.utils.register_keras_serializable("tfgen")
class Residual(keras.layers.Layer):
    """y = f(x) + P x (He et al. 2016, eqs. (1)-(2)): f the block's layers, P the identity
    when f keeps the shape, else a learned 1x1 projection to f's channels (a Dense on flat
    features, a 1x1 Conv2D on H x W maps).  Only the last axis may change."""

    def __init__(self, layers, key: str = "layers", **kwargs):
        super().__init__(**kwargs)
        self.layer_tables, self.key = copy.deepcopy(list(layers)), key
        self.specs = parse_layers(self.layer_tables, f"{key}.layers")

    def build(self, input_shape):
        shape = tuple(tf.TensorShape(input_shape).as_list()[1:])
        items = instantiate(self.specs, self.dtype_policy)
        self.inner = [layer for _, layer in items]
        out = propagate(items, shape)
        self.projection = None
        if out != shape:
            if out[:-1] != shape[:-1]:
                raise ConfigError(None, f"{self.key}.layers", f"a residual block adds its input "
                                  f"to its output, but its layers map {_shape(shape)} to "
                                  f"{_shape(out)}", allowed="layers that keep every size but "
                                  "the channels (a 1x1 projection matches those)")
            self.projection = (keras.layers.Conv2D(out[-1], 1, dtype=self.dtype_policy)
                               if len(shape) == 3 else
                               keras.layers.Dense(out[-1], dtype=self.dtype_policy))
        self.out_shape = out
        super().build(input_shape)

    def compute_output_shape(self, input_shape):
        if not self.built:
            self.build(input_shape)
        return tf.TensorShape([tf.TensorShape(input_shape)[0], *self.out_shape])

    def call(self, x, training=False):
        y = x
        for layer in self.inner:
            y = layer(y, training=training)
        return y + (x if self.projection is None else self.projection(x))

    def get_config(self):
        return {**super().get_config(), "layers": copy.deepcopy(self.layer_tables),
                "key": self.key}


@keras.utils.register_keras_serializable("tfgen")
class LayerList(Network):
    """The layers of a ``layers`` table in order, then the head (module docstring)."""

    def __init__(self, output_shape, layers=(), head="auto", key="layers", **kwargs):
        super().__init__(output_shape, **kwargs)
        self.layer_tables, self.head_mode, self.key = copy.deepcopy(list(layers)), head, key
        self.specs = parse_layers(self.layer_tables, f"{key}.layers")

    def build(self, input_shape):
        items = instantiate(self.specs, self.dtype_policy)
        self.body = [layer for _, layer in items]
        shape = propagate(items, tuple(tf.TensorShape(input_shape).as_list()[1:]))
        self.head = head_layers(shape, self.target_shape, self.head_mode, self.key,
                                self.dtype_policy, self.head_initializer)
        super().build(input_shape)

    def call(self, x, training=False):
        for layer in self.body:
            x = layer(x, training=training)
        for layer in self.head:
            x = layer(x)
        return x

    def get_config(self):
        return {**super().get_config(), "layers": copy.deepcopy(self.layer_tables),
                "head": self.head_mode, "key": self.key}


# --------------------------------------------------------------------------- the component

@dataclasses.dataclass
class LayersConfig:
    layers: Any = setting(factory=list, help="the layers in order: tables with type = a "
                          "tf_keras.layers class name and its keyword arguments, or a block: "
                          "{type = 'residual', layers = [...]}, {type = 'repeat', times = n, "
                          "layers = [...]}")
    head: Literal["auto", "none"] = setting(
        "auto", help="auto: tfgen appends the layer that emits the shape the likelihood (or "
                     "the scheme) needs (a Dense after a flat output, a 1x1 Conv2D after an "
                     "H x W map); none: the last layer must emit it itself")

    def check(self, cfg, key: str) -> None:
        """The layers' types, arguments and construction; and their shapes, where the config
        and the data's headers fix the input shape (and the shape the network must emit: a
        decoder's from the likelihood, a coupling network's from its coupling layer)."""
        specs = parse_layers(self.layers, f"{key}.layers", cfg.source_file)
        input_shape, output_shape = _shapes_from_config(cfg, key)
        if input_shape is None:
            return
        try:
            with tf.Graph().as_default():  # shapes only: nothing is allocated
                shape = propagate(instantiate(specs, None), input_shape)
                if output_shape is not None:
                    head_layers(shape, output_shape, self.head, key, None)
        except ConfigError as err:
            raise err.in_file(cfg.source_file) from None

    def unchecked(self, cfg, key: str) -> str | None:
        """What ``check`` left to ``tfgen run`` (for ``tfgen validate`` to say), or None."""
        input_shape, output_shape = _shapes_from_config(cfg, key)
        if input_shape is None or (key == "model.decoder" and output_shape is None):
            return (f"{key}: its layers' shapes are checked when tfgen run builds the networks "
                    f"(the image shape is not known without loading the data)")
        return None


def _shapes_from_config(cfg, key: str) -> tuple[tuple | None, tuple | None]:
    """(input shape, output shape) per example of the network at ``key`` as far as the config
    and the data's headers fix them (:func:`tfgen.data.loader.peek_image_shape`; else they are
    the data's, checked when the run builds its networks).  A network inside a component
    (``model.prior.coupling``, ``inference.coupling``) has the shapes its owner's
    ``network_shapes(field, image_shape)`` gives."""
    from tfgen.data.loader import peek_image_shape

    image = peek_image_shape(cfg.data)
    *path, field = key.split(".")
    owner = cfg
    for part in path:
        owner = getattr(owner, part)
        owner = owner.params if isinstance(owner, Component) else owner
    shapes = getattr(owner, "network_shapes", None)
    if shapes is not None:
        return shapes(field, image)
    if key != "model.decoder":
        return image, None
    latent = (int(cfg.model.prior.params.dim),)
    if image is None:
        return latent, None
    from tfgen.data.transforms import pixel_range
    from tfgen.models.likelihoods import build_likelihood

    try:
        channels = build_likelihood(cfg.model.likelihood, image, pixel_range(cfg.data)).output_channels()
    except ConfigError:
        return latent, None  # the likelihood's own error is reported by its own check
    return latent, (*image[:2], channels)


@NETWORKS.register("layers", config=LayersConfig)
def layer_list(config: LayersConfig, output_shape, key: str):
    """A network written in the TOML as a list of tf_keras layers (blocks: residual, repeat)."""
    return LayerList(output_shape, config.layers, config.head, key=key)
