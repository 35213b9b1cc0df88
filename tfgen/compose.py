"""Composition of config files: ``extends`` and ``unset``, and where each value came from.

A config file may start from others::

    extends = ["common/mnist.toml", "common/vae_seed001.toml"]   # or one string
    unset = ["inference.encoder"]                                 # keys of those to drop

Each file named in ``extends`` (a path relative to the folder of the file that names it) is
composed the same way, then they are laid over each other left to right, then ``unset``
removes keys from that result (TOML has no null), and the file's own keys go last.  Tables
merge key by key at every depth; any other value -- a number, a string, an array, an array of
tables (``[[evaluate]]``) included -- is replaced whole, so a list is never half one file's
and half another's.

The result is plain data (the parser in :mod:`tfgen.config` never sees ``extends`` or
``unset``), with the chain of files read and a provenance map: for every key path, the file
that set it, so an error in a value names the file to fix (:meth:`Composition.attribute`).

Only reading and merging live here: this module imports nothing of tfgen but its errors.
"""
from __future__ import annotations

import dataclasses
import difflib
import os
import re
import sys
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from tfgen.errors import ConfigError

#: the keys composition reads and removes; they never reach the parser or a run's config.toml
EXTENDS, UNSET = "extends", "unset"

UNSET_ALLOWED = 'an array of dotted key paths, e.g. ["model.prior.components"]'


def read_toml(path: str | Path) -> dict:
    """One TOML file as a dict; a missing, unreadable or malformed file is a ConfigError
    naming it."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(str(path), None, "file not found") from None
    except IsADirectoryError:
        raise ConfigError(str(path), None, "is a directory, expected a TOML file") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(str(path), None, f"cannot read file ({err.__class__.__name__}: {err})") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(str(path), None, f"TOML syntax error: {err}") from None


@dataclasses.dataclass
class Composition:
    """A composed config: ``raw`` the merged data; ``chain`` the files in the order they were
    applied, each once (the file itself last); ``provenance`` key path -> the file that set
    it last (tables too: the last file that wrote into them)."""

    raw: dict
    chain: list[str]
    provenance: dict[str, str]
    file: str

    def file_of(self, key: str | None) -> str:
        """The file an error at ``key`` (``evaluate[2].fit.steps``) belongs to: the file that
        set the key, or an array it is inside of; a key no file set (a default, a missing
        key) is the composed file's, where it would be added."""
        if not key:
            return self.file
        if key in self.provenance:
            return self.provenance[key]
        path = key
        while True:
            parent = re.sub(r"(\.[^.\[\]]+|\[\d+\])$", "", path)
            if parent == path:
                return self.file
            path = parent
            if path in self.provenance and not isinstance(_lookup(self.raw, path), dict):
                return self.provenance[path]

    def attribute(self, err: ConfigError) -> ConfigError:
        """``err`` (found in ``raw``, told as the composed file's) with each error naming the
        file that set its key."""
        out = []
        for e in getattr(err, "errors", [err]):
            if e.file == self.file and e.key is not None:
                e = ConfigError(self.file_of(e.key), e.key, e.message, e.given, e.allowed)
            out.append(e)
        return ConfigError.combine(out)


def compose(path: str | Path) -> Composition:
    """The config file ``path`` with everything it ``extends`` laid under it (module docstring)."""
    chain: list[str] = []
    provenance: dict[str, str] = {}
    raw = _compose(str(path), [], chain, provenance)
    return Composition(raw, chain, provenance, str(path))


def _compose(file: str, stack: list[tuple[str, str]], chain: list[str],
             provenance: dict[str, str]) -> dict:
    """``file`` composed; ``stack`` the (display name, real path) of the files that extend
    it, innermost last (to find a cycle); the files applied are appended to ``chain``,
    their keys to ``provenance``."""
    own = read_toml(file)
    bases = own.pop(EXTENDS, [])
    unset = own.pop(UNSET, [])
    stack = [*stack, (file, os.path.realpath(file))]
    reals = [real for _, real in stack]
    merged: dict = {}
    for key, base in _base_files(file, bases):
        if os.path.realpath(base) in reals:  # by real path: "a.toml" and "lib/../a.toml" are one
            start = reals.index(os.path.realpath(base))
            cycle = " -> ".join([name for name, _ in stack[start:]] + [base])
            raise ConfigError(file, key, f"a cycle of extends: {cycle}", _given(bases, key),
                              "files that do not extend each other in a loop")
        if not os.path.isfile(base):
            what = "is a directory" if os.path.isdir(base) else "does not exist"
            raise ConfigError(file, key, f"{base} {what}", _given(bases, key),
                              f"a TOML file, its path relative to the folder of {file}")
        merge(merged, _compose(base, stack, chain, provenance))
    for i, key in enumerate(_unset_keys(file, unset)):
        _remove(merged, key, file, f"{UNSET}[{i}]", provenance)
    merge(merged, own)
    _record(own, "", file, provenance)
    if file not in chain:
        chain.append(file)
    return merged


def _base_files(file: str, bases: Any) -> list[tuple[str, str]]:
    """[(the key naming it, the path)] of the files ``file`` extends, paths joined to its
    folder."""
    allowed = "a file path or an array of file paths (relative to this file's folder)"
    if isinstance(bases, str):
        items = [(EXTENDS, bases)]
    elif isinstance(bases, list):
        items = [(f"{EXTENDS}[{i}]", b) for i, b in enumerate(bases)]
    else:
        raise ConfigError(file, EXTENDS, "expected a file path or an array of them", bases, allowed)
    for key, base in items:
        if not isinstance(base, str) or not base.strip():
            raise ConfigError(file, key, "expected a file path", base, allowed)
    folder = os.path.dirname(file)
    return [(key, os.path.normpath(os.path.join(folder, base))) for key, base in items]


def _given(bases: Any, key: str) -> Any:
    return bases if key == EXTENDS else bases[int(key[len(EXTENDS) + 1:-1])]


def _unset_keys(file: str, unset: Any) -> list[str]:
    if not isinstance(unset, list):
        raise ConfigError(file, UNSET, "expected an array of key paths", unset, UNSET_ALLOWED)
    for i, key in enumerate(unset):
        if not isinstance(key, str) or not all(key.split(".")):
            raise ConfigError(file, f"{UNSET}[{i}]", "expected a dotted key path", key,
                              UNSET_ALLOWED)
    return unset


def _remove(merged: dict, key: str, file: str, where: str, provenance: dict[str, str]) -> None:
    """Delete ``key`` from ``merged`` (what ``file`` extends), and its provenance; a key that
    is not there is an error (a typo would otherwise keep the value silently)."""
    *parents, last = key.split(".")
    node: Any = merged
    for part in parents:
        node = node.get(part) if isinstance(node, dict) else None
    if not isinstance(node, dict) or last not in node:
        close = difflib.get_close_matches(key, key_paths(merged), n=1, cutoff=0.6)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(file, where, f"no such key in the files it extends{hint}", key,
                          "a key path that one of the files in extends sets")
    del node[last]
    for path in [p for p in provenance if p == key or p.startswith(key + ".")]:
        del provenance[path]


def key_paths(raw: dict, prefix: str = "") -> list[str]:
    """Every dotted key path in ``raw``, tables included."""
    out = []
    for key, value in raw.items():
        path = f"{prefix}.{key}" if prefix else key
        out.append(path)
        if isinstance(value, dict):
            out += key_paths(value, path)
    return out


def merge(into: dict, over: dict) -> None:
    """Lay ``over`` on ``into`` in place: tables merge key by key, anything else is replaced
    whole (copied, so that no two results share a table)."""
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            merge(into[key], value)
        else:
            into[key] = _copy(value)


def _copy(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy(v) for v in value]
    return value


def _record(own: dict, prefix: str, file: str, provenance: dict[str, str]) -> None:
    """Every key path ``file`` sets (its tables too) -> ``file``; a value that replaces a
    table or array drops what the earlier files had set below it."""
    for key, value in own.items():
        path = f"{prefix}.{key}" if prefix else key
        if not isinstance(value, dict):
            for below in [p for p in provenance if p.startswith(path + ".")]:
                del provenance[below]
        provenance[path] = file
        if isinstance(value, dict):
            _record(value, path, file, provenance)


def _lookup(raw: Any, key: str) -> Any:
    for part in key.split("."):
        if not isinstance(raw, dict) or part not in raw:
            return None
        raw = raw[part]
    return raw
