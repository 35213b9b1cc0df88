"""The experiment config: TOML -> typed, validated dataclasses, once, at the edge.

:func:`from_dict` converts a TOML file's tables into :class:`Config`; everything downstream
receives these typed objects, never raw dicts.  Sections that name a registry entry
(``[model.likelihood] name = "beta"``, ``[inference] scheme = "vae"``, ``[[evaluate]] task =
"samples"``) are validated against the config dataclass that the entry registered, so a new
component brings its own keys.  The parser looks the entries up in the ``catalog`` it is
given (registry kind -> registry, e.g. ``"networks"`` -> the networks): it imports no
component, registry or scheme.  Loading the components, a scheme's default evaluations and
the checks that span sections are :mod:`tfgen.assemble`'s, which passes the catalog.

A config is data: nothing in it is imported or evaluated as code.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import re
import sys
import typing
from pathlib import Path
from typing import Any, Literal, Mapping, Optional

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from tfgen.compose import compose, read_toml
from tfgen.errors import ConfigError
from tfgen.schema import Component, Empty, setting

#: registry kind (a field's ``registry``: "likelihoods", "networks", "priors", "schemes",
#: "evaluations") -> the registry of its entries (:class:`tfgen.registry.Registry`)
Catalog = Mapping[str, Any]


# --------------------------------------------------------------------------- sections

#: A run name is one folder name under output_dir: no separators, no '..', nothing hidden,
#: no control characters, short enough for any file system with the timestamp below it.
RUN_NAME = (r"(?!.*\.\.)[A-Za-z0-9_][A-Za-z0-9._-]{0,99}",
            "not a valid run name (it names a folder under experiment.output_dir)",
            "1 to 100 of the characters A-Z a-z 0-9 . _ -, not starting with '.' or '-', "
            "no '..' (one folder name: no '/', '\\', spaces or control characters)")


@dataclasses.dataclass
class ExperimentConfig:
    name: str = setting("experiment", pattern=RUN_NAME,
                        help="run directories go to <output_dir>/<name>/<timestamp>")
    seed: int = setting(0, at_least=0, help="seeds TF, NumPy, data shuffling and subsampling")
    output_dir: str = setting("runs", pattern=(r"(?s)(?=.*\S).+", "an empty path",
                                               "a folder path, e.g. \"runs\""),
                              help="parent folder of run directories (relative to the cwd)")
    description: str = setting("", help="free text, saved with the run")


@dataclasses.dataclass
class DataConfig:
    source: Literal["tfds", "idx", "npz", "image_folder"] = setting(
        "tfds", help="tfds: a TFDS name (falls back to local IDX files offline); "
                     "idx: a folder of IDX files; npz: one .npz file; image_folder: PNG/JPEG files")
    name: str = setting("mnist", help="TFDS data set name (source = 'tfds')")
    path: Optional[str] = setting(None, help="local folder/file; for 'tfds', where to look for "
                                             "local IDX files when TFDS has no prepared copy")
    data_dir: Optional[str] = setting(None, help="TFDS data_dir (default: TFDS's own, or "
                                                 "$TFDS_DATA_DIR)")
    train_split: str = setting("train[:50000]", help="TFDS split syntax, also applied to local "
                                                     "sources")
    val_split: str = setting("train[50000:]", help="'' for no validation set")
    test_split: str = setting("test", help="'' for no test set")
    subsample: int = setting(0, at_least=0, help="keep M random training images (0 = all), seeded")
    resize: int = setting(0, at_least=0, help="resize images to resize x resize (0 = keep), e.g. "
                                              "28 -> 32")
    pixel_range: Literal["[0,1]", "[-1,1]"] = setting("[0,1]")
    color: Literal["keep", "grayscale", "rgb"] = setting("keep")
    binarize: Literal["none", "static", "dynamic"] = setting(
        "none", help="static: threshold once; dynamic: Bernoulli-sample every time a batch is drawn")
    binarize_threshold: float = setting(0.5, at_least=0.0, at_most=1.0)
    bins: int = setting(0, at_least=0, help="quantize pixels into k levels (0 = off); the "
                                            "Categorical likelihood sets this to its k when left "
                                            "at 0")
    shuffle_buffer: int = setting(0, at_least=0, help="0 = the whole training set")
    cache: bool = setting(True)
    prefetch: bool = setting(True)


@dataclasses.dataclass
class ModelConfig:
    prior: Component = setting(factory=lambda: Component("standard_normal"), registry="priors")
    decoder: Component = setting(factory=lambda: Component("conv_decoder"), registry="networks")
    likelihood: Component = setting(factory=lambda: Component("bernoulli"), registry="likelihoods")
    discriminator: Component = setting(
        factory=lambda: Component("conv_encoder"), registry="networks",
        help="the discriminator (critic) of the adversarial schemes gan and bigan, a network with "
             "vector output; the other schemes do not use it")


@dataclasses.dataclass
class EarlyStoppingConfig:
    patience: int = setting(0, at_least=0, help="epochs without improvement before stopping (0 = "
                                                "off)")
    min_delta: float = setting(0.0, at_least=0.0)
    restore_best: bool = setting(True, help="restore the best weights at the end")


@dataclasses.dataclass
class TrainConfig:
    epochs: int = setting(10, at_least=0)
    batch_size: int = setting(256, at_least=1)
    steps_per_epoch: int = setting(0, at_least=0, help="cap on steps per epoch (0 = one pass over "
                                                       "the data)")
    steps_per_execution: int = setting(
        1, at_least=1, at_most=100000, help="training steps per host round trip (one compiled "
                                            "loop; metrics are read back only at logging steps and "
                                            "epoch ends)")
    optimizer: Literal["adam", "adamw", "rmsprop", "sgd"] = setting("adam")
    learning_rate: float = setting(1e-3, above=0.0)
    compile: Literal["auto", "graph", "xla", "eager"] = setting(
        "auto", help="auto = graph on CPU (measured faster than XLA here), xla on GPU")
    early_stopping: EarlyStoppingConfig = setting(factory=EarlyStoppingConfig)
    time_budget_s: float = setting(
        0.0, at_least=0.0, help="stop training once it has taken this many seconds of wall time, "
                                "summed over resumed sessions (0 = no budget); a stopping rule "
                                "like early stopping: checkpoint, then evaluate")
    checkpoint_every_epochs: int = setting(1, at_least=1)
    keep_checkpoints: int = setting(2, at_least=1)


#: host:port of a worker: a host name, IPv4 address or [IPv6] address, and a port 1..65535
WORKER_ADDRESS = (r"([A-Za-z0-9_.-]+|\[[0-9A-Fa-f:.]+\]):"
                  r"(6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[1-9][0-9]{0,3})",
                  "not a host:port address", "host:port with a port in 1..65535, e.g. "
                  "\"10.0.0.2:12345\" or \"[::1]:12345\"")


@dataclasses.dataclass
class RuntimeConfig:
    """Where and how the steps run; README "Scaling up".  The same TOML trains on a CPU, one
    GPU, several GPUs (``mirrored``) or several machines (``multi_worker``)."""

    strategy: Literal["default", "mirrored", "multi_worker"] = setting(
        "default", help="default: one device; mirrored: data parallel over this machine's "
                        "devices; multi_worker: data parallel over the machines of TF_CONFIG "
                        "(or of runtime.workers with tfgen run --worker-index)")
    devices: list[str] = setting(factory=list, help="devices to use, e.g. [\"GPU:0\", \"GPU:1\"] "
                                                    "(empty: every GPU, else the CPU)")
    cpu_devices: int = setting(1, at_least=1, at_most=64, help="split the CPU into this many "
                                                               "logical devices (mirrored on a "
                                                               "machine without GPUs)")
    workers: list[str] = setting(factory=list, pattern=WORKER_ADDRESS,
                                 help="host:port of every worker, for tfgen run --worker-index "
                                      "(instead of TF_CONFIG); only with strategy = "
                                      "\"multi_worker\"")
    connect_timeout_s: float = setting(300.0, above=0.0, at_most=86400.0,
                                       help="multi_worker: seconds to wait for every worker to "
                                            "join the cluster; then the missing ones are named "
                                            "and the run stops")
    mixed_precision: Literal["float32", "mixed_float16", "mixed_bfloat16"] = setting(
        "float32", help="compute dtype of the decoder (the likelihood, log densities, latents "
                        "and optimizer state stay float32)")
    intra_op_threads: int = setting(0, at_least=0, at_most=1024, help="threads per op (0: "
                                                                      "TensorFlow's choice)")
    inter_op_threads: int = setting(0, at_least=0, at_most=1024, help="ops run at once (0: "
                                                                      "TensorFlow's choice)")


@dataclasses.dataclass
class LoggingConfig:
    every_steps: int = setting(20, at_least=1, help="scalar summaries every N steps")
    images_every_steps: int = setting(500, at_least=1, help="image summaries every N steps")
    num_images: int = setting(32, at_least=1, at_most=256, help="images per grid")
    progress: bool = setting(True, help="progress bar on stderr (--quiet turns it off)")


@dataclasses.dataclass
class Config:
    experiment: ExperimentConfig = setting(factory=ExperimentConfig)
    data: DataConfig = setting(factory=DataConfig)
    model: ModelConfig = setting(factory=ModelConfig)
    inference: Component = setting(factory=lambda: Component("vae"), registry="schemes",
                                   name_key="scheme")
    train: TrainConfig = setting(factory=TrainConfig)
    runtime: RuntimeConfig = setting(factory=RuntimeConfig)
    logging: LoggingConfig = setting(factory=LoggingConfig)
    evaluate: list[Component] = setting(factory=list, registry="evaluations", name_key="task")

    source_file: str = dataclasses.field(default="<config>", compare=False, repr=False,
                                         metadata={"internal": True})
    #: the files composed into it (tfgen.compose), source_file last
    source_chain: list[str] = dataclasses.field(default_factory=list, compare=False,
                                                repr=False, metadata={"internal": True})


# --------------------------------------------------------------------------- parsing

class _Parser:
    """Typed parsing of one config file that goes on after an error, so all are reported.

    ``error`` raises, which abandons the value being parsed; ``dataclass`` (per key) and
    array parsing (per item) catch it, record it in ``errors`` and go on with the next.  A value whose parse failed is ``FAILED``, and
    so is every table or array holding one; ``raise_errors`` raises them all before
    anything uses the half-built config.
    """

    def __init__(self, file: str, catalog: Catalog):
        self.file = file
        self.catalog = catalog
        self.errors: list[ConfigError] = []

    def error(self, key: str, message: str, given: Any = ..., allowed: str | None = None):
        raise ConfigError(self.file, key, message, given, allowed)

    def attempt(self, parse: Any, *args: Any) -> Any:
        """``parse(*args)``, or ``FAILED`` with its error recorded."""
        try:
            return parse(*args)
        except ConfigError as err:
            self.errors.append(err)
            return FAILED

    def raise_errors(self) -> None:
        if self.errors:
            raise ConfigError.combine(self.errors)

    def dataclass(self, cls: type, raw: Any, path: str, skip: tuple[str, ...] = ()):
        if not isinstance(raw, dict):
            self.error(path, "expected a table", raw)
        hints = typing.get_type_hints(cls)
        fields = [f for f in dataclasses.fields(cls) if not f.metadata.get("internal")]
        names = [f.name for f in fields]
        for key in raw:
            if key in skip:
                continue
            if key not in names:
                close = difflib.get_close_matches(key, names, n=1, cutoff=0.6)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                self.attempt(self.error, _join(path, key), f"unknown key{hint}", ...,
                             ", ".join(names) if names else "no keys")
        values = {}
        for f in fields:
            key = _join(path, f.name)
            meta = dict(f.metadata)
            if meta.get("registry") and f.default_factory is not dataclasses.MISSING:
                default = f.default_factory()
                meta["default_name"] = default.name if isinstance(default, Component) else None
            if (not meta.get("registry") and dataclasses.is_dataclass(hints[f.name])
                    and f.default_factory not in (dataclasses.MISSING, hints[f.name])
                    and isinstance(raw.get(f.name, {}), dict)):
                # a table whose field has its own defaults (e.g. a scheme's cheaper
                # posterior_fit): the keys given override those, not the class's
                given = _over(to_dict(f.default_factory()), raw.get(f.name, {}))
                values[f.name] = self.attempt(self.dataclass, hints[f.name], given, key)
            elif f.name in raw:
                values[f.name] = self.attempt(self.value, hints[f.name], raw[f.name], key, meta)
            elif f.metadata.get("registry") and f.default_factory is not dataclasses.MISSING:
                # a defaulted component still gets its own params' defaults
                values[f.name] = self.attempt(self.value, hints[f.name], f.default_factory(), key, meta)
            elif dataclasses.is_dataclass(hints[f.name]):
                values[f.name] = self.attempt(self.dataclass, hints[f.name], {}, key)
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                self.attempt(self.error, key, "required key is missing")
                values[f.name] = FAILED
        if any(v is FAILED for v in values.values()):
            return FAILED  # its errors are recorded; the table itself is never used
        return cls(**values)

    def value(self, tp: Any, raw: Any, key: str, meta: Any):
        origin = typing.get_origin(tp)
        args = typing.get_args(tp)
        if meta.get("registry"):
            if origin is list:
                if not isinstance(raw, list):
                    self.error(key, "expected an array of tables", raw)
                return self.items(raw, key, lambda item, item_key: self.component(item, item_key, meta))
            return self.component(raw, key, meta)
        if tp is Any:  # free-form TOML data (e.g. a layer list), checked by its component's check
            return raw
        if origin is typing.Union:  # Optional[X]
            inner = [a for a in args if a is not type(None)]
            return self.value(inner[0], raw, key, meta)
        if origin is Literal:
            if raw not in args:
                close = difflib.get_close_matches(str(raw), [str(a) for a in args], n=1, cutoff=0.5)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                self.error(key, f"not an allowed value{hint}", raw,
                           ", ".join(repr(a) for a in args))
            return raw
        if origin is list:
            if not isinstance(raw, list):
                self.error(key, "expected an array", raw)
            return self.items(raw, key, lambda item, item_key: self.value(args[0], item, item_key, meta))
        if dataclasses.is_dataclass(tp):
            return self.dataclass(tp, raw, key)
        if tp is bool:
            if not isinstance(raw, bool):
                self.error(key, "expected true or false", raw)
            return raw
        if tp is int:
            if isinstance(raw, bool) or not isinstance(raw, int):
                self.error(key, "expected an integer", raw)
            self.check_range(key, raw, meta)
            return raw
        if tp is float:
            if isinstance(raw, bool) or not isinstance(raw, (int, float)):
                self.error(key, "expected a number", raw)
            if not math.isfinite(raw):
                self.error(key, "expected a finite number", raw)
            self.check_range(key, raw, meta)
            return float(raw)
        if tp is str:
            if not isinstance(raw, str):
                self.error(key, "expected a string", raw)
            self.check_text(key, raw, meta)
            return raw
        raise TypeError(f"config type {tp!r} at {key} is not supported")  # programming error

    def items(self, raw: list, key: str, parse: Any) -> list:
        """An array's items, each parsed on its own (so each bad item is reported)."""
        out = [self.attempt(parse, item, f"{key}[{i}]") for i, item in enumerate(raw)]
        if any(v is FAILED for v in out):
            return FAILED
        return out

    def check_range(self, key: str, raw: float, meta: Any) -> None:
        at_least, at_most, above = meta.get("at_least"), meta.get("at_most"), meta.get("above")
        if ((at_least is not None and raw < at_least) or (at_most is not None and raw > at_most)
                or (above is not None and raw <= above)):
            self.error(key, "out of range", raw, _range_text(at_least, at_most, above))

    def check_text(self, key: str, raw: str, meta: Any) -> None:
        # A lone surrogate (from undecodable bytes in a --set argument) cannot be written to
        # the run's config.toml as UTF-8 or as a TOML escape, so it would not survive a resume.
        if any("\ud800" <= ch <= "\udfff" for ch in raw):
            self.error(key, "not valid Unicode text (a lone surrogate; undecodable bytes?)", raw,
                       "text that can be written as UTF-8")
        pattern = meta.get("pattern")
        if pattern is not None and not re.fullmatch(pattern[0], raw):
            self.error(key, pattern[1], raw, pattern[2])

    def component(self, raw: Any, key: str, meta: Any) -> Component:
        registry = self.catalog[meta["registry"]]
        name_key = meta["name_key"]
        if isinstance(raw, Component):  # a default
            raw = {name_key: raw.name}
        if not isinstance(raw, dict):
            self.error(key, "expected a table", raw)
        if name_key not in raw and meta.get("default_name"):
            raw = {name_key: meta["default_name"], **raw}  # the section's default component
        if name_key not in raw:
            self.error(_join(key, name_key), "required key is missing",
                       allowed=", ".join(repr(n) for n in registry.names()))
        name = raw[name_key]
        if not isinstance(name, str) or name not in registry:
            close = registry.suggestion(name) if isinstance(name, str) else None
            hint = f" (did you mean {close!r}?)" if close else ""
            self.error(_join(key, name_key), f"unknown {registry.kind}{hint}", name,
                       ", ".join(repr(n) for n in registry.names()))
        entry = registry.get(name)
        params = self.dataclass(entry.config_cls or Empty, raw, key, skip=(name_key,))
        return FAILED if params is FAILED else Component(name, params)


#: Stands for a value whose parse failed (its error is recorded in the parser).
FAILED: Any = type("Failed", (), {"__repr__": lambda self: "FAILED"})()


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _over(defaults: dict, given: dict) -> dict:
    """``given`` laid over ``defaults``, table by table."""
    out = dict(defaults)
    for key, value in given.items():
        out[key] = (_over(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict)
                    else value)
    return out


def _range_text(at_least, at_most, above) -> str:
    parts = []
    if above is not None:
        parts.append(f"> {above}")
    if at_least is not None:
        parts.append(f">= {at_least}")
    if at_most is not None:
        parts.append(f"<= {at_most}")
    return " and ".join(parts)


# --------------------------------------------------------------------------- overrides

def parse_override(text: str) -> tuple[list[str], Any]:
    """``train.epochs=3`` -> (["train", "epochs"], 3); the value is read as TOML."""
    if "=" not in text:
        raise ConfigError("--set", None, "expected KEY=VALUE", text)
    key, value_text = text.split("=", 1)
    key = key.strip()
    parts = key.split(".")
    if not key or any(not p for p in parts):
        raise ConfigError("--set", None, "expected a dotted key path before '='", text)
    try:
        value = tomllib.loads(f"v = {value_text.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = value_text.strip()  # a bare word is a string, as on most CLIs
    return parts, value


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    for text in overrides:
        parts, value = parse_override(text)
        node: Any = raw
        for i, part in enumerate(parts[:-1]):
            if isinstance(node, list):
                if not part.isdigit() or int(part) >= len(node):
                    raise ConfigError("--set", ".".join(parts[: i + 1]),
                                      f"index out of range for an array of {len(node)}", part)
                node = node[int(part)]
                continue
            child = node.setdefault(part, {})
            if not isinstance(child, (dict, list)):
                raise ConfigError("--set", ".".join(parts[: i + 1]), "is not a table", child)
            node = child
        if isinstance(node, list):
            raise ConfigError("--set", ".".join(parts), "cannot set an array element's value")
        node[parts[-1]] = value
    return raw


# --------------------------------------------------------------------------- loading

def from_dict(raw: dict, file: str, catalog: Catalog) -> Config:
    """The typed config of the tables ``raw`` (read from ``file``), its component sections
    validated against the entries of ``catalog``; every key's error at once."""
    parser = _Parser(file, catalog)
    cfg = parser.dataclass(Config, dict(raw), "")
    parser.raise_errors()
    cfg.source_file, cfg.source_chain = file, [file]
    return cfg


def evaluations_from(tasks: list | tuple, file: str, catalog: Catalog) -> list[Component]:
    """``tasks`` (tables, or task names for a task with its defaults) parsed as the
    ``evaluate`` key is: a scheme's default evaluations, for a config without one."""
    parser = _Parser(file, catalog)
    evaluate = next(f for f in dataclasses.fields(Config) if f.name == "evaluate")
    tables = [dict(t) if isinstance(t, dict) else {evaluate.metadata["name_key"]: t}
              for t in tasks]
    parsed = parser.value(typing.get_type_hints(Config)["evaluate"], tables, "evaluate",
                          evaluate.metadata)
    parser.raise_errors()
    return parsed


def override_keys(overrides: list[str] | tuple[str, ...]) -> list[str]:
    """The key paths ``overrides`` set, spelled as errors spell them (``evaluate[0].samples``
    for ``--set evaluate.0.samples=...``)."""
    keys = []
    for text in overrides:
        parts, _ = parse_override(text)
        key = ""
        for part in parts:
            key = f"{key}[{part}]" if part.isdigit() and key else _join(key, part)
        keys.append(key)
    return keys


def overridden_key(key: str | None, keys: list[str]) -> str | None:
    """The key to name for an error at ``key`` if one of the overrides' ``keys`` set it (the
    key itself, something above it, or something below it), else None."""
    if not key:
        return None
    for set_key in keys:
        if key == set_key or key.startswith((set_key + ".", set_key + "[")):
            return key
        if set_key.startswith((key + ".", key + "[")):
            return set_key
    return None


def blame_overrides(err: ConfigError, overrides: list[str] | tuple[str, ...], where: str,
                    every: bool = False) -> ConfigError:
    """``err``, found in a config with ``overrides`` applied, told as the command line's
    (``<where>: --set KEY: ...``) where an override set the key; with ``every`` (the config
    was valid without the overrides, so they caused every error) the others too."""
    keys = override_keys(overrides)
    out = []
    for e in getattr(err, "errors", [err]):
        key = overridden_key(e.key, keys)
        if key is not None:
            out.append(ConfigError(where, f"--set {key}", e.message, e.given, e.allowed))
        elif every and keys:
            message = f"{e.key}: {e.message}" if e.key else e.message
            out.append(ConfigError(where, f"--set {', '.join(keys)}", message, e.given, e.allowed))
        else:
            out.append(e)
    return ConfigError.combine(out)


# --------------------------------------------------------------------------- resuming

#: What a checkpoint was trained as, so a resume may not change it: the model (prior and
#: latent dimension, decoder, likelihood, discriminator), the scheme and the images' shape.
#: ``fixed_on_resume`` adds the scheme's networks and the keys its config lists in its own
#: ``fixed_on_resume`` (e.g. PGA's particles, which size the checkpointed cloud).  Another data
#: source may give another image shape too; the runner compares the shapes once both are loaded.
FIXED_ON_RESUME = ("inference.scheme", "model", "data.resize", "data.color")


def fixed_on_resume(cfg: Config) -> list[str]:
    """The key paths (each with everything below it) that a resume of ``cfg``'s run may not
    change."""
    keys = list(FIXED_ON_RESUME)
    params = cfg.inference.params
    if dataclasses.is_dataclass(params):
        keys += [f"inference.{f.name}" for f in dataclasses.fields(params)
                 if f.metadata.get("registry") == "networks"]
        keys += [f"inference.{key}" for key in getattr(params, "fixed_on_resume", ())]
    return keys


def refuse_changes(before: dict, after: dict, fixed: list[str], where: str,
                    known_only: bool = False) -> None:
    """A ConfigError with a line per value under a ``fixed`` key that differs between the
    raw configs ``before`` and ``after``; ``known_only``: only keys ``before`` has (an
    unknown key is the parser's to report)."""
    errors = []
    for prefix in fixed:
        old, new = _leaves(_lookup(before, prefix), prefix), _leaves(_lookup(after, prefix), prefix)
        for key in dict.fromkeys([*old, *([] if known_only else new)]):
            if key in old and key in new and old[key] == new[key]:
                continue
            if known_only and key not in new:
                continue
            was, now = old.get(key, "(not set)"), new.get(key, "(not set)")
            errors.append(ConfigError(where, f"--set {key}", f"cannot change on resume (the run "
                                      f"is {was!r}, --set asked for {now!r})", allowed=f"the "
                                      f"run's {was!r} (another value needs a new run)"))
    if errors:
        raise ConfigError.combine(errors)


def _lookup(raw: Any, key: str) -> Any:
    for part in key.split("."):
        if not isinstance(raw, dict) or part not in raw:
            return FAILED
        raw = raw[part]
    return raw


def _leaves(raw: Any, path: str) -> dict[str, Any]:
    """{dotted key: value} of every non-table value in ``raw`` (at ``path``)."""
    if raw is FAILED:
        return {}
    if not isinstance(raw, dict):
        return {path: raw}
    out: dict[str, Any] = {}
    for key, value in raw.items():
        out.update(_leaves(value, _join(path, key)))
    return out


# --------------------------------------------------------------------------- writing

def to_dict(obj: Any, name_key: str = "name") -> Any:
    """The inverse of parsing: a plain dict that ``from_dict`` reads back to ``obj``."""
    if isinstance(obj, Component):
        out = {name_key: obj.name}
        if obj.params is not None:
            out.update(to_dict(obj.params))
        return out
    if dataclasses.is_dataclass(obj):
        out = {}
        for f in dataclasses.fields(obj):
            if f.metadata.get("internal"):
                continue
            value = getattr(obj, f.name)
            key = f.metadata.get("name_key", "name")
            if isinstance(value, list):
                out[f.name] = [to_dict(v, key) for v in value]
            elif value is not None:
                out[f.name] = to_dict(value, key)
        return out
    return obj


def dumps_toml(data: dict) -> str:
    """A small TOML writer for the config's shapes (tables, arrays of tables, scalars).

    Every string and key is written so that ``tomllib.loads`` gives it back unchanged
    (control characters escaped as TOML requires); tested with random values.
    """
    lines: list[str] = []

    def scalar(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)  # TOML reads Python's int and float reprs, inf and nan included
        if isinstance(v, str):
            return _toml_string(v)
        if isinstance(v, list):
            return "[" + ", ".join(scalar(x) for x in v) + "]"
        if isinstance(v, dict):  # a table inside an array of values
            return "{" + ", ".join(f"{_toml_key(k)} = {scalar(x)}" for k, x in v.items()) + "}"
        raise TypeError(type(v))

    def is_table(v: Any) -> bool:
        return isinstance(v, dict)

    def is_table_array(v: Any) -> bool:
        return isinstance(v, list) and v and all(isinstance(x, dict) for x in v)

    def emit(table: dict, prefix: str, header: str | None, always_header: bool = False) -> None:
        simple = {k: v for k, v in table.items() if not is_table(v) and not is_table_array(v)}
        if header is not None and (always_header or simple
                                   or not any(is_table(v) for v in table.values())):
            lines.append("")
            lines.append(header)
        for k, v in simple.items():
            lines.append(f"{_toml_key(k)} = {scalar(v)}")
        for k, v in table.items():
            if is_table(v):
                name = f"{prefix}{_toml_key(k)}"
                emit(v, name + ".", f"[{name}]")
        for k, v in table.items():
            if is_table_array(v):
                name = f"{prefix}{_toml_key(k)}"
                for item in v:
                    # each element needs its own header, even one holding only sub-tables
                    emit(item, name + ".", f"[[{name}]]", always_header=True)

    emit(data, "", None)
    return "\n".join(lines).lstrip("\n") + "\n"


_TOML_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f",
                 "\r": "\\r"}


def _toml_string(text: str) -> str:
    """A TOML basic string: the short escapes, and \\uXXXX for the other control characters
    (U+0000..U+001F and U+007F may not appear raw); everything else is written as it is."""
    out = []
    for ch in text:
        if ch in _TOML_ESCAPES:
            out.append(_TOML_ESCAPES[ch])
        elif ch < " " or ch == "\x7f":
            out.append(f"\\u{ord(ch):04X}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _toml_key(key: str) -> str:
    """A bare key where TOML allows one, else a quoted key."""
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else _toml_string(key)


def describe_fields(cls: type) -> list[tuple[str, str, str]]:
    """(key, default, help) rows of a component's config, for ``tfgen list``."""
    rows = []
    if cls is None:
        return rows
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            default = repr(f.default)
        elif f.default_factory is not dataclasses.MISSING:
            default = repr(to_dict(f.default_factory()))
        else:
            default = "(required)"
        rows.append((f.name, default, f.metadata.get("help", "")))
    return rows
