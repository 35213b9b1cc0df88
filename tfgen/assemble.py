"""The composition root: TOML -> :class:`~tfgen.config.Config` -> assembled components.

The one module that knows every component.  Importing it imports the component modules,
whose decorators fill the registries (:mod:`tfgen.registry`); it passes the registries to
the parser (:mod:`tfgen.config`, which knows none of them), gives a config without
``[[evaluate]]`` its scheme's default tasks, applies the data keys the likelihood derives
(its config's ``data_defaults()``), runs the checks that span sections (each component's own
``check(cfg)``, the scheme's ``check_config(cfg)``, what a prior needs of the scheme) and
builds the model and the scheme for a run (:func:`build`).  The CLI and the
runner load every config through it: ``tfgen validate``, ``tfgen list``, ``tfgen run``
(and ``--resume``), ``tfgen eval`` and ``tfgen complete``.  After the built-in components it
loads the plugins (:func:`load_plugins`, :mod:`tfgen.plugins`): installed ones on the first
config loaded, those ``--plugin`` names when a command starts.
"""
from __future__ import annotations

import copy
import dataclasses
import functools
import os
from pathlib import Path
from typing import Any, Sequence

import tensorflow as tf

from tfgen import config, plugins, runtime
from tfgen.config import Config
from tfgen.compose import compose
from tfgen.data import DataBundle, load_data
from tfgen.errors import ConfigError
# the component modules: importing them registers their entries (each one's decorator)
from tfgen.evaluation import completion, interpolation, latent_space, quality, tasks  # noqa: F401
from tfgen.geometry.tasks import (geodesic_kmeans, geodesics, metric_map,  # noqa: F401
                                  random_walk, rbf_precision)
from tfgen.inference import (abp, adversarial, autoregressive, em, flow, map_latents, pga,  # noqa: F401
                             short_run, svi, vae)
from tfgen.inference.capabilities import AmortizedPosterior, require
from tfgen.models import layer_list, likelihoods, networks, priors  # noqa: F401
from tfgen.models.model import build_model
from tfgen.registry import ALL, PRIORS, SCHEMES
from tfgen.schema import Component, TaskConfig

#: registry kind -> registry, every component registered: what the parser validates against
CATALOG = ALL


# --------------------------------------------------------------------------- loading

def load_plugins(specs: Sequence[str] = ()) -> list[plugins.Plugin]:
    """Load the plugins, after the built-in components (imported above): the installed ones
    (entry points of ``tfgen.components``), those the environment's ``TFGEN_PLUGINS`` names
    and ``specs`` (``--plugin``); each once per process.  Returns every plugin loaded."""
    return plugins.load(specs, os.environ.get(plugins.ENVIRONMENT, ""))


def from_dict(raw: dict, file: str = "<config>") -> Config:
    """The config of the TOML tables ``raw`` (read from ``file``): parsed against the
    registries (the plugins loaded first), with the scheme's default ``[[evaluate]]`` list
    where it gives none, and checked across sections."""
    load_plugins()
    cfg = config.from_dict(raw, file, CATALOG)
    if "evaluate" not in raw:
        # each scheme names its own defaults (task names or tables)
        defaults = SCHEMES.factory_for(cfg.inference).default_evaluations
        cfg.evaluate = config.evaluations_from(defaults, file, CATALOG)
    apply_data_defaults(cfg)
    cross_check(cfg)
    return cfg


def apply_data_defaults(cfg: Config) -> None:
    """The data keys the likelihood derives, where the file leaves them at their default
    (the Categorical's ``data.bins``: the data binned as the likelihood bins it); a value the
    file gives is the likelihood's ``check`` to judge."""
    derive = getattr(cfg.model.likelihood.params, "data_defaults", None)
    if derive is None:
        return
    defaults = {f.name: f.default for f in dataclasses.fields(cfg.data)}
    for key, value in derive().items():
        if getattr(cfg.data, key) == defaults[key]:
            setattr(cfg.data, key, value)


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """The config in ``path``, composed with the files it extends (:mod:`tfgen.compose`), with
    ``overrides`` applied; an error in a key an override set names the command line
    (``exp.toml: --set train.epochs: ...``), the others the file that set the key."""
    composed = compose(path)
    raw = config.apply_overrides(composed.raw, list(overrides))
    try:
        cfg = from_dict(raw, str(path))
    except ConfigError as err:
        raise config.blame_overrides(composed.attribute(err), overrides, str(path)) from None
    cfg.source_chain = composed.chain
    return cfg


def load_resumed(path: str | Path, overrides: list[str] | tuple[str, ...],
                 where: str) -> tuple[Config, Config]:
    """(the run's config, the config with ``overrides``) of the run being resumed whose
    config.toml is ``path``.

    The run's own errors name its file.  A change to a key its checkpoint was trained with
    (:func:`tfgen.config.fixed_on_resume`) is refused before the changed config is parsed --
    so it is named as the change it is, not as what it breaks (another scheme's unknown
    keys) -- and again after (a table replaced by ``--set`` that drops a key to another
    default).  Errors of the changed config can only come from the overrides: they name
    ``--set`` and ``where`` (the run directory)."""
    raw = config.read_toml(path)
    run_cfg = from_dict(copy.deepcopy(raw), str(path))
    fixed = config.fixed_on_resume(run_cfg)
    changed = config.apply_overrides(copy.deepcopy(raw), list(overrides))
    config.refuse_changes(raw, changed, fixed, where, known_only=True)
    try:
        cfg = from_dict(changed, str(path))
    except ConfigError as err:
        raise config.blame_overrides(err, overrides, where, every=True) from None
    config.refuse_changes(config.to_dict(run_cfg), config.to_dict(cfg), fixed, where)
    return run_cfg, cfg


# --------------------------------------------------------------------------- checks across sections

def cross_check(cfg: Config) -> None:
    """Checks that span sections; each component may add its own ``check(cfg)``, and the
    scheme class its ``check_config(cfg)``.  The checks are independent: all of them run,
    and their errors are raised together."""
    checks = [SCHEMES.factory_for(cfg.inference).check_config, _check_runtime_lists,
              _check_prior_needs]
    for comp in [cfg.model.prior, cfg.model.likelihood, cfg.inference]:
        check = getattr(comp.params, "check", None)
        if check is not None:
            checks.append(check)
    for i, task in enumerate(cfg.evaluate):
        checks.append(functools.partial(_task_check, task, i))
    # A network's config is used in several places (decoder, encoder, discriminator, a
    # coupling network), so its check is told the key path it sits at.
    for key, network in networks_of(cfg):
        if hasattr(network.params, "check"):
            checks.append(functools.partial(network.params.check, key=key))
    errors = []
    for check in checks:
        try:
            check(cfg)
        except ConfigError as err:
            errors.append(err)
    if errors:
        raise ConfigError.combine(errors)


def networks_of(cfg: Config) -> list[tuple[str, Component]]:
    """(key path, component) of every network the config chooses: the model's, the prior's
    (a coupling network) and the scheme's."""
    found = []
    for section, owner in [("model", cfg.model), ("model.prior", cfg.model.prior.params),
                           ("inference", cfg.inference.params)]:
        for sub in dataclasses.fields(owner):
            value = getattr(owner, sub.name)
            if isinstance(value, Component) and sub.metadata.get("registry") == "networks":
                found.append((f"{section}.{sub.name}", value))
    return found


def unchecked_at_load(cfg: Config) -> list[str]:
    """What the load-time checks of the config's networks left to ``tfgen run`` (each
    network's ``unchecked(cfg, key)``), for ``tfgen validate`` to say."""
    notes = []
    for key, network in networks_of(cfg):
        unchecked = getattr(network.params, "unchecked", None)
        note = unchecked(cfg, key) if unchecked is not None else None
        if note:
            notes.append(note)
    return notes


def _check_runtime_lists(cfg: Config) -> None:
    """A device or worker listed twice would be two replicas on one device, or two workers
    waiting for each other on one address; workers under another strategy would be ignored
    (the run would train on this machine alone while its config lists a cluster)."""
    if cfg.runtime.workers and cfg.runtime.strategy != "multi_worker":
        raise ConfigError(cfg.source_file, "runtime.workers", f"lists a cluster, but "
                          f"runtime.strategy = {cfg.runtime.strategy!r} trains on this machine "
                          f"alone", cfg.runtime.workers, "workers only with runtime.strategy = "
                          "\"multi_worker\" (else workers = [])")
    for key in ("devices", "workers"):
        values = getattr(cfg.runtime, key)
        repeated = sorted({v for v in values if values.count(v) > 1})
        if repeated:
            raise ConfigError(cfg.source_file, f"runtime.{key}", "lists the same entry twice",
                              repeated[0], "each entry once")


def _check_prior_needs(cfg: Config) -> None:
    """A prior made of the scheme's encoder (the VampPrior) needs a scheme that has one: the
    prior says so (``needs_encoder``), the check lives here, where priors and schemes meet."""
    prior = PRIORS.get(cfg.model.prior.name).factory
    if prior.needs_encoder:
        require(cfg, AmortizedPosterior, "model.prior.name", prior.described_as,
                given=cfg.model.prior.name, alternative=prior.instead_without_encoder)


def _task_check(task: Component, i: int, cfg: Config) -> None:
    """A task's ``check``, its errors at ``evaluate[i]``: a task's config does not know its
    place in the list, so its checks name the table ``evaluate`` (or ``evaluate.<key>``).
    A task whose config does not state its needs (a :class:`~tfgen.schema.TaskConfig` with
    its own ``peak``) is refused: the memory estimate could not count it."""
    params = task.params
    if not isinstance(params, TaskConfig) or type(params).peak is TaskConfig.peak:
        raise ConfigError(cfg.source_file, f"evaluate[{i}].task", f"task {task.name!r} does not "
                          f"declare its memory peak (its config class "
                          f"{type(params).__name__} is no tfgen.schema.TaskConfig with a peak "
                          f"method)", task.name, "a task whose config declares peak()")
    try:
        params.check(cfg)
    except ConfigError as err:
        errors = []
        for e in getattr(err, "errors", [err]):
            key = e.key
            if key == "evaluate" or (key or "").startswith("evaluate."):
                key = f"evaluate[{i}]{key[len('evaluate'):]}"
            errors.append(ConfigError(e.file, key, e.message, e.given, e.allowed))
        raise ConfigError.combine(errors) from None


# --------------------------------------------------------------------------- building

def build(cfg: Config, data: DataBundle | None = None,
          strategy: tf.distribute.Strategy | None = None):
    """Everything that can fail on bad input happens here, before a run directory exists.

    ``data`` replaces the configured data set (tests and benchmarks pass in-memory images);
    ``strategy`` is the one :func:`tfgen.runtime.configure` made (made here if not given);
    returns (data, scheme, generator).
    """
    if strategy is None:
        strategy = runtime.configure(cfg.runtime, cfg.source_file)
    generator = runtime.apply_seed(cfg.experiment.seed)
    if data is None:
        data = load_data(cfg.data, cfg.experiment.seed, cfg.source_file)
    for task in cfg.evaluate:  # checks that need the images' size (e.g. a mask file's)
        task.params.check_data(cfg, data)
    with strategy.scope():
        model = build_model(cfg, data.image_shape, data.pixel_range)
        scheme_cls = SCHEMES.factory_for(cfg.inference)
        scheme = scheme_cls(cfg.inference.params, model, data, cfg, generator, strategy)
    return data, scheme, generator
