"""``tfgen eval`` on a finished run: the same numbers as the tasks at the end of ``tfgen run``,
results merged with their settings (never overwriting other settings), refusals in one line
with the run directory unchanged."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from conftest import run_cli, tiny_config


def digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, idx_folder) -> Path:
    out = tmp_path_factory.mktemp("eval_runs")
    config = out / "tiny.toml"
    config.write_text(tiny_config(idx_folder, out / "runs", epochs=1))
    result = run_cli("run", str(config), "--quiet")
    assert result.returncode == 0, result.stderr
    return next((out / "runs" / "tiny").iterdir())


def test_eval_repeats_the_runs_own_tasks_and_merges_them(finished_run):
    before = json.loads((finished_run / "metrics.json").read_text())
    result = run_cli("eval", str(finished_run))
    assert result.returncode == 0, result.stderr
    after = json.loads((finished_run / "metrics.json").read_text())
    for key, value in before.items():  # nothing was dropped
        assert after[key] == value, key
    entries = after["evaluations_after_run"]
    own = before["evaluation"]
    elbo = next(e for e in entries.values() if e["task"] == "elbo")["results"]
    assert elbo["test_elbo"] == pytest.approx(own["test_elbo"], rel=1e-6)
    loglik = next(e for e in entries.values() if e["task"] == "log_likelihood")["results"]
    assert loglik["test_log_likelihood"] == pytest.approx(own["test_log_likelihood"], rel=1e-6)
    assert {e["task"] for e in entries.values()} == {"elbo", "log_likelihood", "reconstructions",
                                                     "samples", "curves"}
    assert all(Path(f).is_file() for e in entries.values() for f in e["figures"])

    # other settings get an entry of their own; the same settings replace their own entry
    more = run_cli("eval", str(finished_run), "--task", "log_likelihood", "--set", "samples=3")
    assert more.returncode == 0, more.stderr
    entries2 = json.loads((finished_run / "metrics.json").read_text())["evaluations_after_run"]
    assert set(entries) < set(entries2) and len(entries2) == len(entries) + 1
    new_key = (set(entries2) - set(entries)).pop()
    assert "samples=3" in new_key and entries2[new_key]["settings"]["samples"] == 3


@pytest.mark.parametrize("args,message", [
    (["--task", "elbow"], "unknown evaluation task"),
    (["--task", "elbo", "--set", "samples=3"], "unknown key"),
    (["--task", "log_likelihood", "--set", "samples=0"], "out of range"),
])
def test_eval_refuses_bad_tasks_and_keys_in_one_line_and_changes_nothing(finished_run, args,
                                                                         message):
    before = digest(finished_run)
    result = run_cli("eval", str(finished_run), *args)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "allowed" in lines[0], lines
    assert "Traceback" not in result.stderr
    assert digest(finished_run) == before


def test_eval_of_a_missing_run_is_one_line(tmp_path):
    result = run_cli("eval", str(tmp_path / "missing"))
    assert result.returncode == 2 and "does not exist" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
