"""The ``[sweep]`` table of a sweep file, typed and checked once, and the storage a sweep uses.

A sweep file is an ordinary experiment (``extends`` included) plus::

    [sweep]
    method = "grid"              # "grid", "random" or "tpe" (Optuna's samplers)
    trials = 8                   # trials in all, seeds included (grid: every point x seed)
    metric = "evaluation.test_log_likelihood"   # a key path into the run's metrics.json
    direction = "maximize"       # or "minimize"
    seeds = [0, 1]               # every point runs once per seed (default: experiment.seed)

    [sweep.space]
    train.learning_rate = {low = 1e-4, high = 1e-2, log = true}
    train.batch_size = {choices = [32, 64]}
    "model.prior.dim" = {low = 2, high = 16, int = true}
    inference = {choices = [{scheme = "pga", particles = 5}, {scheme = "abp"}]}

A space key is a config key path (dotted keys or one quoted key); a choice that is a table is
merged into the config at that path as ``extends`` merges (:func:`tfgen.compose.merge`), so a
sweep can compare whole schemes.  Optuna stores each choice by its label (:func:`label`).

Only reading and checking live here (no Optuna, no TensorFlow): whether a key path is a key
of the experiment is :mod:`tfgen.sweep`'s to check, on the parsed config.
"""
from __future__ import annotations

import copy
import dataclasses
import difflib
import itertools
import json
import math
import re
from pathlib import Path
from typing import Any

from tfgen.compose import merge
from tfgen.errors import ConfigError

SWEEP = "sweep"
STUDY_DB = "study.db"
METHODS = ("grid", "random", "tpe")
DIRECTIONS = ("minimize", "maximize")
KEYS = ("method", "trials", "metric", "direction", "seeds", "space")
DIMENSION_KEYS = ("choices", "low", "high", "log", "int")

#: a metric: a key path into metrics.json under its "train" or "evaluation" table
METRIC = re.compile(r"(train|evaluation)(\.[A-Za-z0-9_\-\[\]@=,:+]+)+")
METRIC_ALLOWED = ("a key path into the run's metrics.json, e.g. "
                  "\"evaluation.test_log_likelihood\" or \"train.best_val_loss\"")

#: the keys a sweep sets itself: the run folders (the study's) and the seed (``seeds``)
RESERVED = ("experiment.name", "experiment.output_dir", "experiment.seed")

STORAGE_ALLOWED = ("sqlite:///PATH (the default: STUDY_FOLDER/study.db), journal:PATH (a "
                   "journal file on a shared file system) or postgresql://USER:PASSWORD@HOST:"
                   "PORT/DATABASE")


@dataclasses.dataclass
class Dimension:
    """One axis of the space: ``key`` (a config key path) with ``choices`` (their ``labels``
    for Optuna), or a range ``low``..``high`` (``log`` scale, ``integer`` values)."""

    key: str
    choices: list | None = None
    labels: list | None = None
    low: float | None = None
    high: float | None = None
    log: bool = False
    integer: bool = False

    def value(self, param: Any) -> Any:
        """The config value of the Optuna parameter ``param`` (a choice's label, a number)."""
        if self.choices is not None:
            return self.choices[self.labels.index(param)]
        return int(param) if self.integer else float(param)

    def grid(self) -> list:
        """The parameters of this axis in a grid (its labels, or each integer of its range)."""
        if self.choices is not None:
            return list(self.labels)
        return list(range(int(self.low), int(self.high) + 1))

    def record(self) -> dict:
        if self.choices is not None:
            return {"choices": self.choices}
        return {"low": self.low, "high": self.high, "log": self.log, "int": self.integer}


@dataclasses.dataclass
class SweepSpec:
    method: str
    trials: int
    metric: str
    direction: str
    seeds: list[int]
    space: list[Dimension]

    def grid_points(self) -> list[dict]:
        """Every point of the grid ({key: parameter}), in order (method "grid")."""
        axes = [d.grid() for d in self.space]
        return [dict(zip([d.key for d in self.space], combo)) for combo in itertools.product(*axes)]

    def record(self) -> dict:
        """The spec as JSON data (study.json, the study's record in the storage)."""
        return {"method": self.method, "trials": self.trials, "metric": self.metric,
                "direction": self.direction, "seeds": self.seeds,
                "space": {d.key: d.record() for d in self.space}}

    def identity(self) -> dict:
        """What makes two sweep commands one study (``trials`` may grow between runs)."""
        return {k: v for k, v in self.record().items() if k != "trials"}


def label(choice: Any) -> Any:
    """How Optuna stores a choice: a scalar as it is, a table or array as compact JSON text."""
    if isinstance(choice, (bool, int, float, str)):
        return choice
    return json.dumps(choice, sort_keys=True, separators=(", ", ": "))


def parse_sweep(raw: Any, file: str, default_seed: int) -> SweepSpec:
    """The ``[sweep]`` table ``raw`` of ``file`` (its keys named ``sweep.<key>``), every error
    found at once."""
    errors: list[ConfigError] = []

    def error(key: str, message: str, given: Any = ..., allowed: str | None = None) -> None:
        errors.append(ConfigError(file, f"{SWEEP}.{key}" if key else SWEEP, message, given, allowed))

    if not isinstance(raw, dict):
        raise ConfigError(file, SWEEP, "expected a table", raw, "[sweep] with " + ", ".join(KEYS))
    for key in raw:
        if key not in KEYS:
            close = difflib.get_close_matches(key, KEYS, n=1, cutoff=0.6)
            error(key, "unknown key" + (f" (did you mean {close[0]!r}?)" if close else ""),
                  allowed=", ".join(KEYS))
    method = raw.get("method", "grid")
    if method not in METHODS:
        error("method", "not an allowed value", method, ", ".join(repr(m) for m in METHODS))
    direction = raw.get("direction")
    if direction not in DIRECTIONS:
        error("direction", "required key is missing" if direction is None else
              "not an allowed value", ... if direction is None else direction,
              ", ".join(repr(d) for d in DIRECTIONS))
    metric = raw.get("metric")
    if metric is None:
        error("metric", "required key is missing", allowed=METRIC_ALLOWED)
    elif not isinstance(metric, str) or not METRIC.fullmatch(metric):
        error("metric", "not a metric key path", metric, METRIC_ALLOWED)
    seeds = raw.get("seeds", [default_seed])
    if (not isinstance(seeds, list) or not seeds
            or any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in seeds)
            or len(set(seeds)) != len(seeds)):
        error("seeds", "expected a non-empty array of distinct integers >= 0", seeds,
              "e.g. [0, 1, 2]")
        seeds = [default_seed]
    space = _space(raw.get("space"), error)
    trials = raw.get("trials")
    if trials is not None and (isinstance(trials, bool) or not isinstance(trials, int) or trials < 1):
        error("trials", "expected an integer >= 1", trials)
        trials = None
    if method == "grid" and space and not errors:
        ranges = [d.key for d in space if d.choices is None and not d.integer]
        if ranges:
            error(f"space.{ranges[0]}", "a grid takes choices or integer ranges", allowed=
                  "{choices = [...]} or {low, high, int = true}; or method = \"random\" or \"tpe\"")
        else:
            size = math.prod(len(d.grid()) for d in space) * len(seeds)
            if trials is None:
                trials = size
            elif trials > size:
                error("trials", f"more than the grid's {size} trials (points x seeds)", trials,
                      f"1 to {size}")
    elif trials is None and method != "grid":
        error("trials", "required key is missing (method random or tpe)",
              allowed="an integer >= 1, a multiple of the number of seeds")
    if trials is not None and not errors and trials % len(seeds):
        error("trials", f"not a multiple of the {len(seeds)} seeds (every point runs with "
              f"every seed)", trials, f"a multiple of {len(seeds)}")
    if errors:
        raise ConfigError.combine(errors)
    return SweepSpec(method, trials, metric, direction, seeds, space)


def _space(raw: Any, error) -> list[Dimension]:
    if raw is None:
        error("space", "required table is missing", allowed="[sweep.space] mapping config key "
              "paths to {choices = [...]}, {low, high, log = true} or {low, high, int = true}")
        return []
    if not isinstance(raw, dict):
        error("space", "expected a table", raw)
        return []
    found = list(_dimensions(raw, ""))
    if not found:
        error("space", "is empty", raw, "at least one config key path to sweep")
    space = []
    for key, table in found:
        if not isinstance(table, dict):
            error(f"space.{key}", "expected a table", table, "{choices = [...]}, {low, high, "
                  "log = true} or {low, high, int = true}")
            continue
        dimension = _dimension(key, table, lambda k, *a, **kw: error(f"space.{key}{k}", *a, **kw))
        if dimension is not None:
            space.append(dimension)
    for key in [d.key for d in space if d.key in RESERVED or d.key.startswith("sweep.")]:
        error(f"space.{key}", "set by the sweep itself, not a space key", allowed="any other "
              "config key; seeds go in sweep.seeds, the run folders are the study's")
    return space


def _dimensions(raw: dict, prefix: str):
    """(key path, table) of each axis: nested tables (``train.learning_rate = {...}`` unquoted)
    down to a table with an axis's keys, or to a value that is not a table."""
    for key, value in raw.items():
        path = f"{prefix}.{key}" if prefix else key
        if isinstance(value, dict) and value and not set(value) & set(DIMENSION_KEYS):
            yield from _dimensions(value, path)
        else:
            yield path, value


def _dimension(key: str, table: dict, error) -> Dimension | None:
    """The axis ``key`` of ``table``; errors are reported through ``error(subkey, ...)``."""
    unknown = [k for k in table if k not in DIMENSION_KEYS]
    for k in unknown:
        error(f".{k}", "unknown key", allowed=", ".join(DIMENSION_KEYS))
    if "choices" in table:
        choices = table["choices"]
        extra = [k for k in table if k in ("low", "high", "log", "int")]
        if extra:
            error(f".{extra[0]}", "choices take no range keys", allowed="either choices or "
                  "low and high")
            return None
        if not isinstance(choices, list) or not choices:
            error(".choices", "expected a non-empty array", choices, "e.g. [32, 64]")
            return None
        labels = [label(c) for c in choices]
        if len(set(map(json.dumps, labels))) != len(labels):
            error(".choices", "has the same choice twice", choices, "distinct choices")
            return None
        if unknown:
            return None
        return Dimension(key, choices=copy.deepcopy(choices), labels=labels)
    missing = [k for k in ("low", "high") if k not in table]
    if missing:
        error("", f"missing {' and '.join(missing)}", table,
              "{choices = [...]}, {low, high, log = true} or {low, high, int = true}")
        return None
    low, high = table["low"], table["high"]
    log, integer = table.get("log", False), table.get("int", False)
    ok = not unknown
    for k, flag in (("log", log), ("int", integer)):
        if not isinstance(flag, bool):
            error(f".{k}", "expected true or false", flag)
            ok = False
    for k, bound in (("low", low), ("high", high)):
        if isinstance(bound, bool) or not isinstance(bound, (int, float)) or not math.isfinite(bound):
            error(f".{k}", "expected a finite number", bound)
            ok = False
        elif integer is True and not isinstance(bound, int):
            error(f".{k}", "an int range takes integers", bound, "an integer, e.g. 2")
            ok = False
    if not ok:
        return None
    if low >= high:
        error(".low", f"not below high ({high!r})", low, "low < high")
        return None
    if log and low <= 0:
        error(".low", "a log range needs low > 0", low, "a number > 0")
        return None
    return Dimension(key, low=low, high=high, log=log, integer=integer)


def apply_point(raw: dict, spec: SweepSpec, params: dict) -> dict:
    """A copy of the experiment ``raw`` with the point ``params`` ({key: Optuna parameter})
    set: a table merged in at its key path, anything else replacing the value there."""
    out = copy.deepcopy(raw)
    for dimension in spec.space:
        set_value(out, dimension.key, dimension.value(params[dimension.key]))
    return out


def set_value(raw: dict, key: str, value: Any) -> None:
    """Set ``value`` at the dotted ``key`` of ``raw`` (tables created on the way); a table
    value is merged into a table there."""
    *parents, last = key.split(".")
    node = raw
    for part in parents:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    if isinstance(value, dict) and isinstance(node.get(last), dict):
        merge(node[last], value)
    else:
        node[last] = copy.deepcopy(value)


def metric_value(metrics: dict, metric: str) -> float:
    """The number at ``metric`` in a run's metrics.json; a ValueError with the reason in one
    line if it is missing or not a number."""
    node: Any = metrics
    walked = []
    for part in metric.split("."):
        if not isinstance(node, dict) or part not in node:
            have = ", ".join(sorted(node)) if isinstance(node, dict) else "not a table"
            where = ".".join(walked) or "metrics.json"
            raise ValueError(f"metric {metric} is not in metrics.json ({where} has: {have})")
        node = node[part]
        walked.append(part)
    if isinstance(node, bool) or not isinstance(node, (int, float)) or not math.isfinite(node):
        raise ValueError(f"metric {metric} is not a finite number in metrics.json: {node!r}")
    return float(node)


def storage_url(given: str | None, study_dir: Path, file: str) -> tuple[str, str]:
    """(kind, target) of the ``--storage`` value: ("sqlite", an SQLAlchemy URL), ("journal",
    a file path) or ("postgresql", an SQLAlchemy URL); default the SQLite file in the study
    folder.  Anything else is a ConfigError naming the allowed forms."""
    if given is None:
        return "sqlite", f"sqlite:///{study_dir / STUDY_DB}"
    if given.startswith("journal:") and given[len("journal:"):].strip():
        return "journal", given[len("journal:"):]
    if re.match(r"sqlite:///.", given):
        return "sqlite", given
    if re.match(r"postgresql(\+psycopg2)?://.", given):  # SQLAlchemy's URL (psycopg2 driver)
        return "postgresql", given
    raise ConfigError(file, "--storage", "not a storage a sweep can use", given,
                      STORAGE_ALLOWED)


def shown_url(url: str) -> str:
    """``url`` with its password hidden, for files and messages."""
    return re.sub(r"(://[^:/@]+:)[^@]*@", r"\1***@", url)
