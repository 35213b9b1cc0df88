"""tfgen compare: one table of runs (seeds of one config aggregated), its three file formats,
the figures and image sheet, and the refusals -- on real tiny runs made by tfgen run, and on
copies of them with one file changed where a test needs a run that differs in one way."""
from __future__ import annotations

import csv
import io
import json
import shutil
import statistics
from pathlib import Path

import pytest

from conftest import STEPS, run_cli, tiny_config

COMPLETE = """
[[evaluate]]
task = "complete"
num_images = 4
fit.steps = 3
"""


@pytest.fixture(scope="module")
def study(tmp_path_factory, idx_folder) -> Path:
    """Three real runs in one output folder: seeds 3 and 4 of one config (a point of two
    seeds) and seed 3 with a 3-d latent (a point of one)."""
    out = tmp_path_factory.mktemp("study")
    config = out / "tiny.toml"
    config.write_text(tiny_config(idx_folder, out, COMPLETE, epochs=2))
    for sets in (["experiment.seed=3"], ["experiment.seed=4"], ["model.prior.dim=3"]):
        args = [a for s in sets for a in ("--set", s)]
        result = run_cli("run", str(config), "--quiet", *STEPS, *args)
        assert result.returncode == 0, result.stderr
    config.unlink()
    return out


def runs_of(study: Path) -> list[Path]:
    return sorted((study / "tiny").iterdir())


def metrics(run: Path) -> dict:
    return json.loads((run / "metrics.json").read_text())


def dim_of(run: Path) -> int:
    return 3 if "dim = 3" in (run / "config.toml").read_text() else 2


def compare_json(*args: str, tmp: Path) -> dict:
    out = tmp / "table.json"
    result = run_cli("compare", *args, "--out", str(out))
    assert result.returncode == 0, result.stderr
    return json.loads(out.read_text())


def test_rows_are_points_with_the_differing_keys_and_seeds_as_mean_and_std(study, tmp_path):
    table = compare_json(str(study), tmp=tmp_path)
    assert table["keys"] == ["model.prior.dim"]  # seed, name and output folder are identity
    by_dim = {row["config"]["model.prior.dim"]: row for row in table["rows"]}
    assert sorted(by_dim) == [2, 3]
    pair, single = by_dim[2], by_dim[3]
    assert sorted(pair["seeds"]) == [3, 4] and single["seeds"] == [3]
    nll = [-metrics(r)["evaluation"]["test_log_likelihood"] for r in runs_of(study)
           if dim_of(r) == 2]
    cell = pair["metrics"]["test NLL (nats)"]
    assert cell["n"] == 2 and nll[0] != nll[1]
    assert cell["mean"] == pytest.approx(statistics.fmean(nll))
    assert cell["std"] == pytest.approx(statistics.stdev(nll))
    assert single["metrics"]["test NLL (nats)"]["std"] is None
    for name in ("bits/dim", "train time (s)", "eval time (s)", "peak RSS (MiB)",
                 "hidden MSE (complete_right_half_svi_sample_test)"):
        assert pair["metrics"][name]["n"] == 2, name
    # the runner records the peak resident memory and the training time over sessions
    run = runs_of(study)[0]
    assert metrics(run)["peak_rss_bytes"] > 50 * 2 ** 20
    assert pair["metrics"]["train time (s)"]["keys"] == ["train.train_seconds"] * 2


def test_key_shows_only_the_chosen_config_columns(study, tmp_path):
    assert compare_json(str(study), "--key", "model", tmp=tmp_path)["keys"] == ["model.prior.dim"]
    table = compare_json(str(study), "--key", "inference", tmp=tmp_path)
    assert table["keys"] == [] and len(table["rows"]) == 2  # the rows stay the points
    bad = run_cli("compare", str(study), "--key", "model..dim")
    assert bad.returncode == 2 and "--key: is not a dotted config key" in bad.stderr


def test_a_key_an_older_run_lacks_counts_as_its_default(study, tmp_path):
    """A run made before a setting existed (its config.toml lacks the key) is one point with
    a run that saved the setting's default."""
    import shutil

    old_and_new = tmp_path / "runs"
    for run in runs_of(study)[:2]:
        shutil.copytree(run, old_and_new / run.name)
    older = sorted(old_and_new.iterdir())[1]
    text = (older / "config.toml").read_text()
    assert "steps_per_execution = 1\n" in text
    (older / "config.toml").write_text(text.replace("steps_per_execution = 1\n", ""))
    rows = compare_json(str(old_and_new), tmp=tmp_path)["rows"]
    assert [sorted(row["seeds"]) for row in rows] in ([[3, 4]], [[4, 3]])


def test_markdown_csv_and_json_agree(study, tmp_path):
    table = compare_json(str(study), "--metric", "train.images_per_second", tmp=tmp_path)
    assert run_cli("compare", str(study), "--metric", "train.images_per_second", "--out",
                   str(tmp_path / "t.csv")).returncode == 0
    result = run_cli("compare", str(study), "--metric", "train.images_per_second",
                     "--format", "markdown")  # no --out: printed instead of the terminal table
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if line.startswith("|")]
    head = [c.strip() for c in lines[0].strip("|").split("|")]
    markdown = [dict(zip(head, (c.strip() for c in line.strip("|").split("|"))))
                for line in lines[2:]]
    rows = list(csv.DictReader(io.StringIO((tmp_path / "t.csv").read_text())))
    assert len(markdown) == len(rows) == len(table["rows"]) == 2
    assert head[:3] == ["run", "n", "seeds"] and "train.images_per_second" in head
    for md, row, js in zip(markdown, rows, table["rows"]):
        assert md["run"] == row["run"] == js["label"]
        for name in table["metrics"]:
            cell = js["metrics"][name]
            if cell is None:
                assert md[name] == row[name] == ""
                continue
            assert float(row[name]) == pytest.approx(cell["mean"])
            assert float(md[name].split(" ± ")[0]) == pytest.approx(cell["mean"], rel=1e-3)
            if cell["std"] is not None:
                assert float(row[f"{name} std"]) == pytest.approx(cell["std"])
                assert float(md[name].split(" ± ")[1]) == pytest.approx(cell["std"], rel=0.05)


def test_a_missing_metric_is_blank_not_zero(study, tmp_path):
    folder = tmp_path / "two"
    keep, drop = [shutil.copytree(r, folder / r.name) for r in runs_of(study)[:2]]
    lacking = metrics(drop)
    del lacking["evaluation"]["test_log_likelihood"]
    (drop / "metrics.json").write_text(json.dumps(lacking))
    assert run_cli("compare", str(keep), str(drop), "--metric", "evaluation.nothing_here",
                   "--out", str(tmp_path / "t.csv")).returncode == 0
    rows = {r["run"].split("/")[-1]: r for r in
            csv.DictReader(io.StringIO((tmp_path / "t.csv").read_text()))}
    if dim_of(keep) == dim_of(drop):  # one point of two seeds: the NLL of one seed
        [row] = rows.values()
        assert row["test NLL (nats) n"] == "1" and row["test NLL (nats) std"] == ""
    assert all(row["evaluation.nothing_here"] == "" for row in rows.values())
    result = run_cli("compare", str(drop), "--format", "markdown")
    cells = [c.strip() for c in result.stdout.splitlines()[2].strip("|").split("|")]
    head = [c.strip() for c in result.stdout.splitlines()[0].strip("|").split("|")]
    assert cells[head.index("test NLL (nats)")] == "" and cells[head.index("bits/dim")] == ""
    assert float(cells[head.index("train time (s)")]) > 0


def test_runs_on_other_data_or_fid_features_are_refused_and_nothing_is_written(study, tmp_path):
    first, second = runs_of(study)[:2]
    other = shutil.copytree(second, tmp_path / "other")
    config = other / "config.toml"
    config.write_text(config.read_text().replace('test_split = "test"',
                                                 'test_split = "test[:20]"'))
    out, figures_dir = tmp_path / "t.md", tmp_path / "figs"
    result = run_cli("compare", str(first), str(other), "--out", str(out),
                     "--figures", str(figures_dir))
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"error: {other}: data.test_split: is 'test[:20]' but {first}'s is 'test'; runs in "
        f"one table must be evaluated on the same data")
    assert not out.exists() and not figures_dir.exists()

    fids = []
    for features in ("classifier", "inception"):
        run = shutil.copytree(second, tmp_path / features)
        found = metrics(run)
        found["evaluation"][f"fid_{features}_prior"] = 12.5
        (run / "metrics.json").write_text(json.dumps(found))
        fids.append(run)
    result = run_cli("compare", *map(str, fids), "--out", str(out))
    assert result.returncode == 2 and not out.exists()
    assert "FID in one table must be on one feature set" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("given, says", [("missing", "does not exist"),
                                         ("empty", "is neither a run directory nor a folder"),
                                         ("file.txt", "is a file")])
def test_a_path_that_is_no_run_is_one_line(tmp_path, given, says):
    (tmp_path / "empty").mkdir()
    (tmp_path / "file.txt").write_text("x")
    result = run_cli("compare", str(tmp_path / given))
    assert result.returncode == 2
    assert result.stderr.startswith(f"error: {tmp_path / given}: {says}")
    assert len(result.stderr.strip().splitlines()) == 1


def test_figures_over_wall_time_and_the_image_sheet(study, tmp_path):
    import matplotlib.pyplot as plt

    figures_dir = tmp_path / "figs"
    result = run_cli("compare", str(study), "--figures", str(figures_dir))
    assert result.returncode == 0, result.stderr
    names = sorted(p.name for p in figures_dir.iterdir())
    assert "images.png" in names and "val_loss_over_time.png" in names
    assert "train_seconds_over_time.png" not in names
    sheet = plt.imread(str(figures_dir / "images.png"))
    assert sheet.shape[0] > 300 and sheet.shape[1] > 500  # 2 rows x 2 columns of grids
    # nothing is overwritten, and nothing is written into a run directory
    again = run_cli("compare", str(study), "--figures", str(figures_dir))
    assert again.returncode == 2 and "exists and is not an empty folder" in again.stderr
    inside = runs_of(study)[0] / "compare"
    refused = run_cli("compare", str(study), "--figures", str(inside))
    assert refused.returncode == 2 and not inside.exists()


def test_the_time_axis_falls_back_to_the_total_then_the_epoch():
    from tfgen.compare import Comparison, Point, RunRecord, history_curves

    def point(history, train):
        run = RunRecord(Path("r"), {}, {"train": train}, history, sessions=1, label="r")
        return Comparison([], [], [Point("r", [run], {})], [])

    epochs = [{"epoch": 1, "train_loss": 2.0}, {"epoch": 2, "train_loss": 1.0}]
    curves, xlabel = history_curves(point(epochs, {"wall_seconds_this_session": 10.0}))
    assert "spread over epochs" in xlabel
    assert curves["train_loss"] == [("r", [(5.0, 2.0), (10.0, 1.0)])]
    curves, xlabel = history_curves(point(epochs, {}))
    assert xlabel.startswith("epoch") and curves["train_loss"][0][1] == [(1, 2.0), (2, 1.0)]
    timed = [dict(r, train_seconds=3.0 * r["epoch"]) for r in epochs]
    curves, xlabel = history_curves(point(timed, {}))
    assert xlabel == "training wall time (s)"
    assert curves["train_loss"][0][1] == [(3.0, 2.0), (6.0, 1.0)]


def test_fid_is_refused_once_the_runs_share_no_feature_set():
    from tfgen.compare import check_comparable, RunRecord
    from tfgen.errors import ConfigError

    def run(name, *features):
        evaluation = {f"fid_{f}_prior": 10.0 for f in features}
        return RunRecord(Path(name), {}, {"evaluation": evaluation}, [], sessions=1)

    check_comparable([run("a", "classifier", "inception"), run("b", "inception")])
    with pytest.raises(ConfigError, match="^c: fid: is on the inception features but the runs "
                                          "before it share only the classifier features"):
        check_comparable([run("a", "classifier", "inception"), run("b", "classifier"),
                          run("c", "inception")])
