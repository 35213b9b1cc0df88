"""The vocabulary config classes are written in: a field with validation metadata, a chosen
component, a component without keys.

The ground floor: it imports nothing of tfgen's, so every layer may use it.  Every section of
:mod:`tfgen.config` and every component's config class (a likelihood's, a scheme's, a task's)
declares its keys with :func:`field`; :mod:`tfgen.config` reads the metadata when it parses a
TOML file, and a key that names a registry entry (``registry="networks"``) is parsed as a
:class:`Component`.
"""
from __future__ import annotations

import dataclasses
from typing import Any


def field(default: Any = dataclasses.MISSING, *, help: str = "", min: float | None = None,
          max: float | None = None, gt: float | None = None, factory: Any = None,
          registry: str | None = None, name_key: str = "name",
          pattern: tuple[str, str, str] | None = None):
    """A dataclass field with validation metadata (range, registry, a string's pattern).

    ``pattern`` is (regular expression the whole string must match, the error message
    when it does not, the allowed strings in words).
    """
    meta = {"help": help, "min": min, "max": max, "gt": gt,
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
