"""Comparing runs: ``tfgen compare RUN_DIR... | STUDY_DIR``, one table of their configs and
metrics, figures of their training curves over wall time and a sheet of their images.

It reads run directories and writes nothing into them (no lock is taken: a reader needs none):
``config.toml`` (the resolved config, read as TOML -- no plugin is needed to compare runs that
used one), ``metrics.json`` (:func:`tfgen.runner.read_run_metrics`), ``history.json`` and
``run.json``.  A folder that is not itself a run directory (a study, an experiment's folder of
runs, an output folder) stands for every run directory below it.

Rows are points: runs whose configs agree on every key but the run's identity
(:data:`IDENTITY_KEYS`: its seed, name and output folder) are the seeds of one point, shown as
mean ± standard deviation (n - 1 in its denominator) with their number; a run alone is a
point of one seed.  So a sweep's trials group by themselves, whatever its own files say.
Columns are the flat config keys whose values differ between the points, then the metrics
(:data:`METRICS`, then each ``--metric``); a metric a run lacks is blank, never 0.

Runs evaluated on different data cannot share one table (:data:`DATA_KEYS`), nor FID on
different feature sets or feature classifiers: those are refused, naming the runs and keys.
"""
from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
import re
import shutil
import statistics
from pathlib import Path
from typing import Callable, get_args

from tfgen import figures, storage
from tfgen.config import read_toml
from tfgen.errors import ConfigError
from tfgen.evaluation.quality import Features
from tfgen.rundir import CONFIG_NAME, RUN_INFO, atomic_write
from tfgen.runner import AFTER_RUN, PEAK_RSS, read_run_metrics

COMMAND = "tfgen compare"
#: the keys that name a run rather than what it computes: seeds of one point differ in them
IDENTITY_KEYS = ("experiment.seed", "experiment.name", "experiment.output_dir")
#: the keys that decide which images a run is evaluated on: equal across one table
DATA_KEYS = ("data.source", "data.name", "data.path", "data.test_split", "data.resize",
             "data.pixel_range", "data.color", "data.binarize", "data.binarize_threshold",
             "data.bins")
#: the output formats of ``--format``, by the suffix ``--out`` implies them by
FORMATS = {"markdown": ".md", "csv": ".csv", "json": ".json"}
#: the figures of the evaluation tasks the image sheet shows: samples first, then completions
SAMPLE_FIGURES = ("samples_*.png", "quality_samples_*.png")
COMPLETION_FIGURES = ("complete_*.png", "inpainting_*.png", "reconstruct_without_encoder_*.png")
#: log-likelihood estimators, the most exact first (tfgen.evaluation.tasks.log_likelihood_task)
ESTIMATOR_ORDER = ("_exact", "_ais", "")
#: fid_<features>_<name> numbers that are not a sampler's FID
FID_NOT_SAMPLERS = ("accuracy", "train_seconds", "train_images")


# --------------------------------------------------------------------------- reading runs

@dataclasses.dataclass
class RunRecord:
    """One run directory as read from its files."""
    path: Path
    config: dict  # flat: {"model.prior.dim": 2, "evaluate[0].task": "elbo", ...}
    metrics: dict
    history: list
    sessions: int
    label: str = ""

    @property
    def seed(self):
        return self.config.get("experiment.seed")

    def numbers(self) -> dict:
        """The evaluation results: the run's own tasks', then those evaluated after it
        (``tfgen eval``, ``tfgen complete``) in the order they were made, the newest winning."""
        out = dict(self.metrics.get("evaluation") or {})
        later = sorted((self.metrics.get(AFTER_RUN) or {}).values(),
                       key=lambda entry: str(entry.get("time", "")))
        for entry in later:
            out.update(entry.get("results") or {})
        return out


def flatten(table, prefix: str = "") -> dict:
    """A TOML table as {dotted key path: value}; arrays of tables by index (``evaluate[0].task``)."""
    out = {}
    if isinstance(table, dict):
        for key, value in table.items():
            out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    elif isinstance(table, list) and table and all(isinstance(v, dict) for v in table):
        for i, value in enumerate(table):
            out.update(flatten(value, f"{prefix}[{i}]"))
    else:
        out[prefix] = table
    return out


def read_run(path: Path) -> RunRecord:
    config = flatten(resolved_today(read_toml(path / CONFIG_NAME), path / CONFIG_NAME))
    metrics = read_run_metrics(path / "metrics.json")
    history = _read_json(path / "history.json", None)
    if not isinstance(history, list):
        history = metrics.get("history") or []
    info = _read_json(path / RUN_INFO, {})
    sessions = len(info.get("sessions") or []) if isinstance(info, dict) else 0
    return RunRecord(path, config, metrics, [h for h in history if isinstance(h, dict)], sessions)


def resolved_today(raw: dict, file: Path) -> dict:
    """A run's saved config as today's parser resolves it: a key that a run made by an older
    tfgen lacks gets its default, so two seeds of one point made on either side of a new
    setting's arrival still agree.  A config today's parser refuses (a plugin not loaded
    here, a key since renamed) is compared as it was saved."""
    from tfgen.assemble import from_dict
    from tfgen.config import to_dict
    from tfgen.errors import TfgenError

    try:
        return to_dict(from_dict(raw, str(file)))
    except TfgenError:
        return raw


def _read_json(path: Path, default):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return default


def is_run_dir(path: Path) -> bool:
    return (path / CONFIG_NAME).is_file() and any(
        (path / name).is_file() for name in ("metrics.json", RUN_INFO))


def find_runs(paths: list[str]) -> list[RunRecord]:
    """The run directories ``paths`` name: each a run directory, or a folder (a study, an
    experiment's folder of runs, an output folder) standing for every run directory below it;
    each run once, in the order given (a folder's runs sorted by path)."""
    found: dict[Path, Path] = {}
    for given in paths:
        path = Path(given)
        if is_run_dir(path):
            found.setdefault(path.resolve(), path)
            continue
        if not path.exists():
            raise ConfigError(given, None, "does not exist; tfgen compare takes run directories "
                                           "(<output_dir>/<name>/<timestamp>) or a folder of "
                                           "them (a study)")
        if not path.is_dir():
            raise ConfigError(given, None, "is a file, not a run directory or a folder of runs")
        below = sorted(p.parent for p in path.rglob(CONFIG_NAME)
                       if is_run_dir(p.parent) and not _hidden(p.parent.relative_to(path)))
        if not below:
            raise ConfigError(given, None, f"is neither a run directory nor a folder of runs (no "
                                           f"{CONFIG_NAME} with a metrics.json or {RUN_INFO} in "
                                           f"it or below it)")
        for run in below:
            found.setdefault(run.resolve(), run)
    runs = [read_run(path) for path in found.values()]
    for run, label in zip(runs, _labels([r.path for r in runs])):
        run.label = label
    return runs


def _hidden(relative: Path) -> bool:
    return any(part.startswith(".") for part in relative.parts)  # .cache/, staging folders


def _labels(paths: list[Path]) -> list[str]:
    """``<name>/<timestamp>`` (a run directory's last two parts), or more parts where those
    are not unique."""
    for parts in range(2, 64):
        labels = ["/".join(p.resolve().parts[-parts:]) for p in paths]
        if len(set(labels)) == len(labels):
            return labels
    return [str(p) for p in paths]


# --------------------------------------------------------------------------- one table or none

def check_comparable(runs: list[RunRecord]) -> None:
    """Refuse runs evaluated on different data, or with FID on different features."""
    first = runs[0]
    for run in runs[1:]:
        for key in DATA_KEYS:
            mine, theirs = run.config.get(key), first.config.get(key)
            if mine != theirs:
                raise ConfigError(str(run.path), key, f"is {mine!r} but {first.path}'s is "
                                  f"{theirs!r}; runs in one table must be evaluated on the same "
                                  f"data")
    with_fid = [(run, set(fid_values(run))) for run in runs if fid_values(run)]
    if not with_fid:
        return
    (a, common) = with_fid[0]
    for run, features in with_fid[1:]:
        if not common & features:
            theirs = (f"{a.path}'s is on the {', '.join(sorted(common))} features"
                      if common == with_fid[0][1] else f"the runs before it share only the "
                                                       f"{', '.join(sorted(common))} features")
            raise ConfigError(str(run.path), "fid", f"is on the {', '.join(sorted(features))} "
                              f"features but {theirs}; FID in one table must be on one feature "
                              f"set")
        common = common & features
    if "classifier" in common:  # the classifier's folder is named by its recipe and data
        classifiers = [(run, Path(str(run.numbers().get("fid_classifier_path", ""))).name)
                       for run, _ in with_fid]
        (a, mine) = classifiers[0]
        for run, theirs in classifiers[1:]:
            if mine and theirs and theirs != mine:
                raise ConfigError(str(run.path), "fid_classifier_path", f"is the classifier "
                                  f"{theirs} but {a.path}'s is {mine}; FID in one table must be "
                                  f"on one feature classifier (the same [evaluate.classifier])")


def fid_values(run: RunRecord) -> dict[str, dict[str, float]]:
    """{features: {sampler: FID}} of the run's sample_quality results."""
    out: dict[str, dict[str, float]] = {}
    for key, value in run.numbers().items():
        for features in get_args(Features):
            prefix = f"fid_{features}_"
            sampler = key[len(prefix):]
            if (key.startswith(prefix) and _is_number(value) and not sampler.endswith("_seconds")
                    and sampler not in FID_NOT_SAMPLERS):
                out.setdefault(features, {})[sampler] = float(value)
    return out


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


# --------------------------------------------------------------------------- metrics

@dataclasses.dataclass(frozen=True)
class Metric:
    """A column: its header, and a run's (value, the metrics.json key it came from) or None."""
    header: str
    read: Callable[[RunRecord], "tuple[float, str] | None"]


def _evaluation(key: str, scale: float = 1.0):
    def read(run: RunRecord):
        value = run.numbers().get(key)
        return (scale * float(value), f"evaluation.{key}") if _is_number(value) else None
    return read


def _log_likelihood_suffix(run: RunRecord) -> str | None:
    """The suffix of the run's most exact test log-likelihood (exact, ais, is with q, then
    another proposal)."""
    numbers = run.numbers()
    suffixes = [k[len("test_log_likelihood"):] for k, v in numbers.items()
                if k.startswith("test_log_likelihood") and not k.endswith("_stderr")
                and _is_number(v)]
    ranked = [s for s in ESTIMATOR_ORDER if s in suffixes] + sorted(
        s for s in suffixes if s not in ESTIMATOR_ORDER)
    return ranked[0] if ranked else None


def _test_nll(run: RunRecord):
    suffix = _log_likelihood_suffix(run)
    return None if suffix is None else _evaluation(f"test_log_likelihood{suffix}", -1.0)(run)


def _bits_per_dim(run: RunRecord):
    """Of a discrete likelihood, or of a density on 8-bit data in the 8-bit units (the number
    comparable to a discrete one's); a density's own bits/dim only by --metric."""
    suffix = _log_likelihood_suffix(run)
    if suffix is None:
        return None
    return (_evaluation(f"test_bits_per_dim{suffix}")(run)
            or _evaluation(f"test_bits_per_dim_8bit{suffix}")(run))


def _train_seconds(run: RunRecord):
    """Training wall seconds over every session (metrics.json's train.train_seconds, else the
    history's last record), else the one session's, if the run had one."""
    train = run.metrics.get("train") or {}
    if _is_number(train.get("train_seconds")):
        return float(train["train_seconds"]), "train.train_seconds"
    if run.history and _is_number(run.history[-1].get("train_seconds")):
        return float(run.history[-1]["train_seconds"]), "history[-1].train_seconds"
    if run.sessions == 1 and _is_number(train.get("wall_seconds_this_session")):
        return float(train["wall_seconds_this_session"]), "train.wall_seconds_this_session"
    return None


def _eval_seconds(run: RunRecord):
    seconds = run.metrics.get("evaluation_seconds")
    if not isinstance(seconds, list) or not seconds:
        return None
    return sum(float(s.get("seconds", 0.0)) for s in seconds), "evaluation_seconds"


def _peak_memory(run: RunRecord):
    value = run.metrics.get(PEAK_RSS)
    return (float(value) / 2 ** 20, PEAK_RSS) if _is_number(value) else None


#: the columns every table has (blank where no run has the number)
METRICS = [Metric("test NLL (nats)", _test_nll), Metric("bits/dim", _bits_per_dim)]
TIMES = [Metric("train time (s)", _train_seconds), Metric("eval time (s)", _eval_seconds),
         Metric("peak RSS (MiB)", _peak_memory)]


def metric_columns(runs: list[RunRecord], extra: list[str]) -> list[Metric]:
    """The default metrics, FID per sampler on the one feature set, completion MSE per task
    setting, times and memory, then ``extra`` (dotted paths into metrics.json)."""
    columns = list(METRICS)
    fids = [fid_values(run) for run in runs]
    features = [f for f in get_args(Features) if any(f in fid for fid in fids)]
    if features:
        chosen = next(f for f in features if all(f in fid for fid in fids if fid))
        for sampler in dict.fromkeys(s for fid in fids for s in fid.get(chosen, {})):
            columns.append(Metric(f"FID ({chosen}, {sampler})",
                                  _evaluation(f"fid_{chosen}_{sampler}")))
    names = dict.fromkeys(name for run in runs for name in _completion_keys(run))
    columns += [Metric(f"hidden MSE ({name.removesuffix('_hidden_mse')})" if name.endswith(
        "_hidden_mse") else f"MSE ({name.removesuffix('_mse')})", _evaluation(name))
                for name in names]
    columns += TIMES
    columns += [Metric(path, _dotted(path)) for path in extra]
    return columns


def _completion_keys(run: RunRecord) -> list[str]:
    """The completion tasks' error of the hidden pixels (or of every pixel, with no mask)."""
    tasks = tuple(p.split("_*")[0] for p in COMPLETION_FIGURES)
    return [k for k, v in run.numbers().items() if _is_number(v) and k.startswith(tasks)
            and (k.endswith("_hidden_mse") or (k.endswith("_mse") and not re.search(
                r"_(observed|encoder)_mse$", k)))]


def _dotted(path: str):
    def read(run: RunRecord):
        value = run.metrics
        for part in path.split("."):
            if not isinstance(value, dict) or part not in value:
                return None
            value = value[part]
        return (float(value), path) if _is_number(value) else None
    return read


# --------------------------------------------------------------------------- the table

@dataclasses.dataclass
class Cell:
    values: list[float]
    keys: list[str]

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float | None:
        return statistics.fmean(self.values) if self.values else None

    @property
    def std(self) -> float | None:
        return statistics.stdev(self.values) if self.n > 1 else None


@dataclasses.dataclass
class Point:
    """One row: runs that differ only in their identity (:data:`IDENTITY_KEYS`)."""
    label: str
    runs: list[RunRecord]
    config: dict
    cells: dict[str, Cell] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class Comparison:
    keys: list[str]
    metrics: list[str]
    points: list[Point]
    notes: list[str]


def compare(runs: list[RunRecord], extra: list[str] = (), shown_keys: list[str] = ()
            ) -> Comparison:
    """The table of ``runs``: seeds of one config grouped into a point; the config keys that
    differ between points (only those at or below one of ``shown_keys``, if given: a sweep
    over whole schemes differs in every scheme's own settings), then the metric columns."""
    check_comparable(runs)
    groups: dict[str, list[RunRecord]] = {}
    for run in runs:
        point = {k: v for k, v in run.config.items() if k not in IDENTITY_KEYS}
        groups.setdefault(json.dumps(point, sort_keys=True, default=str), []).append(run)
    points = []
    for i, members in enumerate(groups.values()):
        names = {str(r.config.get("experiment.name")) for r in members}
        label = (members[0].label if len(members) == 1 else
                 names.pop() if len(names) == 1 else f"point {i + 1}")
        config = {k: v for k, v in members[0].config.items() if k not in IDENTITY_KEYS}
        points.append(Point(label, members, config))
    if len({p.label for p in points}) < len(points):  # two points of one experiment name
        for i, point in enumerate(points):
            point.label = f"{point.label} #{i + 1}"
    every = list(dict.fromkeys(k for p in points for k in p.config))
    keys = [k for k in every if len({json.dumps(p.config.get(k, "\0"), default=str)
                                     for p in points}) > 1]
    if shown_keys:
        keys = [k for k in keys if any(k == s or k.startswith(s + ".") or k.startswith(s + "[")
                                       for s in shown_keys)]
    columns = metric_columns(runs, list(extra))
    notes = [f"{run.label}: {str(run.metrics.get('status', 'no metrics.json'))[:200]}"
             for run in runs if run.metrics.get("status") != "completed"]
    for column in columns:
        sources = set()
        for point in points:
            found = [column.read(run) for run in point.runs]
            found = [f for f in found if f is not None]
            point.cells[column.header] = Cell([v for v, _ in found], [k for _, k in found])
            sources.update(k for _, k in found)
        if len(sources) > 1:
            notes.append(f"{column.header}: from {', '.join(sorted(sources))} (per run in the "
                         f"json output)")
        if not sources and column.header in extra:
            notes.append(f"--metric {column.header}: no run has a number there")
    return Comparison(keys, [c.header for c in columns], points, notes)


def seeds_text(point: Point) -> str:
    return ", ".join(str(r.seed) for r in point.runs)


def cell_text(cell: Cell, runs: int) -> str:
    """``mean ± std`` (``(n=k)`` when fewer seeds than the point's have it); blank if none."""
    if not cell.n:
        return ""
    text = f"{cell.mean:.4g}" + (f" ± {cell.std:.2g}" if cell.std is not None else "")
    return text + (f" (n={cell.n})" if cell.n < runs else "")


def _value_text(value) -> str:
    if value is None:
        return ""
    return value if isinstance(value, str) else json.dumps(value)


def header(comparison: Comparison) -> list[str]:
    return ["run", "n", "seeds", *comparison.keys, *comparison.metrics]


def text_rows(comparison: Comparison) -> list[list[str]]:
    return [[p.label, str(len(p.runs)), seeds_text(p),
             *(_value_text(p.config.get(k)) for k in comparison.keys),
             *(cell_text(p.cells[m], len(p.runs)) for m in comparison.metrics)]
            for p in comparison.points]


def to_markdown(comparison: Comparison) -> str:
    escape = lambda text: text.replace("|", "\\|")  # noqa: E731
    head = header(comparison)
    lines = ["| " + " | ".join(map(escape, head)) + " |",
             "|" + "|".join("---" if i < 3 + len(comparison.keys) else "---:"
                            for i in range(len(head))) + "|"]
    lines += ["| " + " | ".join(map(escape, row)) + " |" for row in text_rows(comparison)]
    lines += [f"\n{note}" for note in comparison.notes]
    return "\n".join(lines) + "\n"


def to_csv(comparison: Comparison) -> str:
    """One row per point: the keys' values, then per metric its mean, std and n (blank if none)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["run", "n", "seeds", *comparison.keys,
                     *(f"{m}{part}" for m in comparison.metrics for part in ("", " std", " n"))])
    for point in comparison.points:
        cells = [point.cells[m] for m in comparison.metrics]
        writer.writerow([point.label, len(point.runs), seeds_text(point),
                         *(_value_text(point.config.get(k)) for k in comparison.keys),
                         *(x for c in cells for x in ("" if c.mean is None else repr(c.mean),
                                                       "" if c.std is None else repr(c.std),
                                                       c.n or ""))])
    return out.getvalue()


def to_json(comparison: Comparison) -> str:
    rows = []
    for point in comparison.points:
        rows.append({
            "label": point.label, "runs": [str(r.path) for r in point.runs],
            "seeds": [r.seed for r in point.runs],
            "config": {k: point.config.get(k) for k in comparison.keys},
            "metrics": {m: ({"mean": c.mean, "std": c.std, "n": c.n, "values": c.values,
                             "keys": c.keys} if c.n else None)
                        for m, c in point.cells.items()}})
    return json.dumps({"keys": comparison.keys, "metrics": comparison.metrics, "rows": rows,
                       "notes": comparison.notes}, indent=1) + "\n"


RENDER = {"markdown": to_markdown, "csv": to_csv, "json": to_json}


def rich_table(comparison: Comparison):
    from rich.table import Table

    table = Table(show_lines=False)
    for i, name in enumerate(header(comparison)):
        table.add_column(name, justify="right" if i >= 3 + len(comparison.keys) else "left",
                         overflow="fold")
    for row in text_rows(comparison):
        table.add_row(*row)
    return table


# --------------------------------------------------------------------------- figures

def history_curves(comparison: Comparison) -> tuple[dict[str, list], str]:
    """{history metric: [(point label, [(x, y) ...])]} and the x axis's label.  x is the
    training wall time of each epoch's end (``train_seconds``); where a run's history lacks
    it, its total training time spread evenly over its epochs; without that, the epoch."""
    runs = [r for p in comparison.points for r in p.runs if r.history]
    measured = all(all(_is_number(h.get("train_seconds")) for h in r.history) for r in runs)
    spread = all(_train_seconds(r) is not None for r in runs)
    xlabel = ("training wall time (s)" if measured else
              "training wall time (s; some estimated: total spread over epochs)" if spread else "epoch (no training wall time recorded)")

    def x_of(run: RunRecord, i: int, record: dict) -> float:
        if measured or (spread and _is_number(record.get("train_seconds"))):
            return float(record["train_seconds"])
        if spread:
            return _train_seconds(run)[0] * (i + 1) / len(run.history)
        return float(record.get("epoch", i + 1))

    names = dict.fromkeys(k for r in runs for h in r.history for k, v in h.items()
                          if k.startswith(("train_", "val_")) and k != "train_seconds"
                          and _is_number(v))
    curves = {}
    for name in names:
        lines = []
        for point in comparison.points:
            by_epoch: dict[int, list[tuple[float, float]]] = {}
            for run in point.runs:
                for i, record in enumerate(run.history):
                    if _is_number(record.get(name)):
                        by_epoch.setdefault(record.get("epoch", i + 1), []).append(
                            (x_of(run, i, record), float(record[name])))
            # the mean over seeds, at the epochs every seed reached
            pts = [(statistics.fmean(x for x, _ in xy), statistics.fmean(y for _, y in xy))
                   for _, xy in sorted(by_epoch.items()) if len(xy) == len(point.runs)]
            label = point.label + (f" (mean of {len(point.runs)})" if len(point.runs) > 1 else "")
            lines.append((label, pts))
        curves[name] = lines
    return curves, xlabel


def sheet_cells(comparison: Comparison) -> tuple[list[list[Path | None]], list[str], list[str]]:
    """The image sheet's cells: one column per point (its first run's images), one row for
    samples and one per completion figure any run wrote."""
    firsts = [p.runs[0] for p in comparison.points]
    samples = [next((f for pattern in SAMPLE_FIGURES
                     for f in sorted((r.path / "figures").glob(pattern))), None) for r in firsts]
    completions = dict.fromkeys(f.name for r in firsts for pattern in COMPLETION_FIGURES
                                for f in sorted((r.path / "figures").glob(pattern)))
    cells = [samples] + [[(r.path / "figures" / name) if (r.path / "figures" / name).is_file()
                          else None for r in firsts] for name in completions]
    rows = ["samples"] + [name.removesuffix(".png") for name in completions]
    titles = [p.label + (f"\n(seed {p.runs[0].seed})" if len(p.runs) > 1 else "")
              for p in comparison.points]
    return cells, titles, rows


def check_figures_dir(path: Path, runs: list[RunRecord]) -> None:
    """A new (or empty) folder outside every run directory: nothing is overwritten."""
    resolved = path.resolve()
    for run in runs:
        if resolved == run.path.resolve() or run.path.resolve() in resolved.parents:
            raise ConfigError(COMMAND, "--figures", f"is inside the run directory {run.path}; "
                              f"tfgen compare writes nothing into a run", str(path),
                              "a folder outside the run directories")
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise ConfigError(COMMAND, "--figures", "exists and is not an empty folder (nothing is "
                          "overwritten)", str(path), "a new folder")


def write_figures(comparison: Comparison, folder: Path) -> list[Path]:
    """The curves over wall time and the image sheet, made in a staging folder beside
    ``folder`` and moved there whole: a failure leaves no half-written folder."""
    staging = folder.with_name(f".{folder.name}.tmp-{os.getpid()}")
    with storage.writing(folder):
        try:
            folder.parent.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir()
            written = []
            curves, xlabel = history_curves(comparison)
            for name, lines in curves.items():
                path = figures.plot_lines(lines, staging / f"{name}_over_time.png",
                                          f"{name} over training time", xlabel, name)
                written += [path] if path else []
            cells, titles, rows = sheet_cells(comparison)
            if any(cell is not None for row in cells for cell in row):
                written.append(figures.image_sheet(cells, titles, rows,
                                                   staging / "images.png"))
            if folder.exists():
                folder.rmdir()  # empty (checked): replaced by the finished folder
            os.replace(staging, folder)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    return [folder / p.name for p in written]


# --------------------------------------------------------------------------- the command

def output_format(fmt: str | None, out: str | None) -> str | None:
    """The format of ``--out`` (given, or implied by its suffix); refused before any reading."""
    if fmt is not None and fmt not in FORMATS:
        raise ConfigError(COMMAND, "--format", "unknown format", fmt, ", ".join(FORMATS))
    if out is not None and fmt is None:
        fmt = next((f for f, suffix in FORMATS.items() if out.endswith(suffix)), None)
        if fmt is None:
            raise ConfigError(COMMAND, "--out", "does not say its format (no .md, .csv or "
                              ".json suffix); give --format", out, ", ".join(FORMATS))
    return fmt


def run_compare(paths: list[str], metrics: list[str] = (), fmt: str | None = None,
                out: str | None = None, figures_dir: str | None = None,
                shown_keys: list[str] = ()) -> tuple[Comparison, str | None, list[Path]]:
    """Read, check and tabulate; write ``--out`` and ``--figures`` (everything is refused
    before anything is written).  Returns the comparison, the ``--format`` text (None for the
    terminal's table) and the figures written."""
    fmt = output_format(fmt, out)
    for path in metrics:
        if not path or any(not part for part in path.split(".")):
            raise ConfigError(COMMAND, "--metric", "is not a dotted path into metrics.json",
                              path, "e.g. evaluation.test_elbo or train.images_per_second")
    for key in shown_keys:
        if not key or any(not part for part in key.split(".")):
            raise ConfigError(COMMAND, "--key", "is not a dotted config key", key,
                              "e.g. inference.scheme or train")
    runs = find_runs(list(paths))
    comparison = compare(runs, list(metrics), list(shown_keys))
    if out is not None:
        target = Path(out).resolve()
        inside = next((r for r in runs if r.path.resolve() in target.parents), None)
        if inside is not None:
            raise ConfigError(COMMAND, "--out", f"is inside the run directory {inside.path}; "
                              f"tfgen compare writes nothing into a run", out,
                              "a file outside the run directories")
        if Path(out).is_dir():
            raise ConfigError(COMMAND, "--out", "is a folder", out, "a file")
        if not Path(out).parent.is_dir():
            raise ConfigError(COMMAND, "--out", "is in a folder that does not exist", out,
                              "a file in an existing folder")
    if figures_dir is not None:
        check_figures_dir(Path(figures_dir), runs)
    text = RENDER[fmt](comparison) if fmt else None
    written = []
    if figures_dir is not None:
        written = write_figures(comparison, Path(figures_dir))
    if out is not None:
        atomic_write(Path(out), text)
    return comparison, text, written

