"""The vocabulary config classes are written in: a setting (a key with its help and allowed
values), a chosen component, a component without keys, the protocol of an evaluation
task's config.

The ground floor: it imports nothing of tfgen's, so every layer may use it.  Every section of
:mod:`tfgen.config` and every component's config class (a likelihood's, a scheme's, a task's)
declares its keys with :func:`setting`; :mod:`tfgen.config` reads the metadata when it parses a
TOML file, and a key that names a registry entry (``registry="networks"``) is parsed as a
:class:`Component`.
"""
from __future__ import annotations

import dataclasses
from typing import Any, ClassVar


def setting(default: Any = dataclasses.MISSING, *, help: str = "",
            at_least: float | None = None, at_most: float | None = None,
            above: float | None = None, factory: Any = None, registry: str | None = None,
            name_key: str = "name", pattern: tuple[str, str, str] | None = None):
    """A config key: a dataclass field with its help text and what values it allows.

    ``at_least`` / ``at_most`` bound a number inclusively, ``above`` exclusively (> above).
    ``factory`` builds a mutable default (``dataclasses.field``'s ``default_factory``).
    ``registry`` names the registry whose entries the key chooses (parsed as a
    :class:`Component`, its name under ``name_key``).  ``pattern`` is (regular expression the
    whole string must match, the error message when it does not, the allowed strings in words).
    The metadata keys are the argument names; :mod:`tfgen.config` reads them when it parses.
    """
    meta = {"help": help, "at_least": at_least, "at_most": at_most, "above": above,
            "registry": registry, "name_key": name_key, "pattern": pattern}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


@dataclasses.dataclass
class Component:
    """A registry entry chosen in the TOML (``name``) and its own typed params."""

    name: str
    params: Any = None


@dataclasses.dataclass
class Empty:
    """Config of a component that takes no keys."""


class TaskConfig:
    """The base of every evaluation task's config: what a task states about itself, so that
    adding a task is its own module (its config and its function, registered with
    ``@EVALUATIONS.register(name, config=...)``) and nothing elsewhere in tfgen.

    * ``key_settings`` -- the settings a result of ``tfgen eval`` / ``tfgen complete`` is keyed
      with in metrics.json even at their defaults (every other setting when changed);
    * ``check(cfg)`` -- load-time checks (what it needs of the scheme and of the likelihood:
      ``require`` of :mod:`tfgen.inference.capabilities` and
      :mod:`tfgen.models.likelihood_capabilities`, with the key ``evaluate`` or
      ``evaluate.<key>``, which the errors name as ``evaluate[i]...``);
    * ``check_data(cfg, data)`` -- checks that need the images (before a run directory exists);
    * ``peak(shape, act)`` -- its largest transient memory (required: the memory estimate,
      :mod:`tfgen.resources`, counts it), ``(bytes, its own keys that shrink it)``, from the
      data's :class:`tfgen.footprint.DataShape` and the networks' per-example
      :class:`tfgen.footprint.Activations` (:func:`tfgen.footprint.batch_bytes` for a batch).
    """

    key_settings: ClassVar[tuple[str, ...]] = ()

    def check(self, cfg) -> None:
        """Load-time checks across sections (none by default)."""

    def check_data(self, cfg, data) -> None:
        """Checks that need the loaded images (none by default)."""

    def peak(self, shape, act) -> tuple[int, tuple[str, ...]]:
        raise NotImplementedError(f"{type(self).__name__} declares no peak (TaskConfig.peak)")

