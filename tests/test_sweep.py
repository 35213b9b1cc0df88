"""tfgen sweep: the [sweep] table's bad input, a grid shared by two processes with a failing
trial, a killed sweep whose trial resumes from its checkpoint, and PostgreSQL storage."""
from __future__ import annotations

import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from conftest import REPO, run_cli, tiny_config

pytest.importorskip("optuna")

CHEAP = ("--set", "train.steps_per_epoch=2", "--set", "logging.images_every_steps=1000")
LOG_LIKELIHOOD = '{task = "log_likelihood", samples = 4, max_images = 8}'


def write_sweep(tmp_path: Path, idx_folder: Path, space: str, sweep: str = "", epochs: int = 1,
                name: str = "st") -> Path:
    """A sweep over the tiny experiment (study ``name`` in tmp_path/out): one cheap task."""
    base = tmp_path / "base.toml"
    base.write_text(tiny_config(idx_folder, tmp_path / "out", epochs=epochs)
                    .replace('name = "tiny"', f'name = "{name}"'))
    file = tmp_path / "sweep.toml"
    metric = "" if "metric =" in sweep else 'metric = "evaluation.test_log_likelihood"'
    file.write_text(f"""extends = "base.toml"
evaluate = [{LOG_LIKELIHOOD}]

[sweep]
{metric}
direction = "maximize"
{sweep}

[sweep.space]
{space}
""")
    return file


def start(*args: str, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "tfgen", *args], cwd=REPO, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})})


def finish(*processes: subprocess.Popen) -> str:
    """Wait for each sweep; all must succeed; their stdout, joined."""
    out = []
    for process in processes:
        stdout, stderr = process.communicate(timeout=600)
        assert process.returncode == 0, stderr
        out.append(stdout)
    return "\n".join(out)


def trials_of(storage: str, name: str = "st") -> list:
    import optuna

    if storage.startswith("journal:"):
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        storage = JournalStorage(JournalFileBackend(storage[len("journal:"):]))
    return optuna.load_study(study_name=name, storage=storage).get_trials()


def check_trial_folders(study_dir: Path, trials: list) -> None:
    """One folder per trial, named by it, with one run directory run with the trial's seed."""
    names = sorted(p.name for p in study_dir.glob("st-t*"))
    assert names == [f"st-t{t.number:04d}" for t in sorted(trials, key=lambda t: t.number)]
    for trial in trials:
        folder = study_dir / f"st-t{trial.number:04d}"
        info = json.loads((folder / "trial.json").read_text())
        assert (info["trial"], info["seed"], info["state"]) == (
            trial.number, trial.user_attrs["seed"], trial.state.name)
        [run] = [p for p in folder.iterdir() if (p / "config.toml").is_file()]
        assert info["run_dir"] == str(run)
        assert f"seed = {info['seed']}\n" in (run / "config.toml").read_text()


# --------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("sweep, space, expected", [
    ('method = "grid"\nfoo = 1', "train.learning_rate = {choices = [1e-3]}",
     "sweep.foo: unknown key; allowed: method, trials, metric, direction, seeds, space"),
    ('method = "grid"', "",
     "sweep.space: is empty; given {}; allowed: at least one config key path"),
    ('method = "grid"', "train.batch_size = {choices = []}",
     "sweep.space.train.batch_size.choices: expected a non-empty array; given []"),
    ('method = "random"\ntrials = 2', "train.learning_rate = {low = 1e-2, high = 1e-3}",
     "sweep.space.train.learning_rate.low: not below high (0.001); given 0.01; allowed: low < high"),
    ('method = "random"\ntrials = 2', "train.learning_rate = {low = 0.0, high = 1e-3, log = true}",
     "sweep.space.train.learning_rate.low: a log range needs low > 0; given 0.0"),
    ('method = "grid"', "train.batch_size = {low = 2.5, high = 8, int = true}",
     "sweep.space.train.batch_size.low: an int range takes integers; given 2.5"),
    ('method = "grid"', "train.learning_rat = {choices = [1e-3]}",
     "sweep.space.train.learning_rat: not a key of the experiment's config (did you mean "
     "'train.learning_rate'?)"),
    ('method = "grid"', 'train.batch_size = {choices = [32, "x"]}',
     "sweep.space.train.batch_size.choices[1]: makes an invalid experiment: train.batch_size: "
     "expected an integer; given 'x'"),
    ('method = "grid"', "train.learning_rate = {low = 1e-4, high = 1e-2}",
     "sweep.space.train.learning_rate: a grid takes choices or integer ranges"),
    ('method = "grid"', "experiment.seed = {choices = [1, 2]}",
     "sweep.space.experiment.seed: set by the sweep itself"),
    ('method = "grid"\nmetric = "test_nll"', "train.batch_size = {choices = [32]}",
     "sweep.metric: not a metric key path; given 'test_nll'"),
    ('method = "grid"\nseeds = [0, 1]\ntrials = 3', "train.batch_size = {choices = [32, 16]}",
     "sweep.trials: not a multiple of the 2 seeds"),
])
def test_bad_sweep_input_is_one_line_exit_2_and_nothing_written(tmp_path, idx_folder, sweep,
                                                               space, expected):
    file = write_sweep(tmp_path, idx_folder, space, sweep)
    result = run_cli("sweep", str(file))
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(f"error: {file}: ") and expected in line, line
    assert not (tmp_path / "out").exists()


def test_an_unknown_storage_is_refused_naming_the_allowed_forms(tmp_path, idx_folder):
    file = write_sweep(tmp_path, idx_folder, "train.batch_size = {choices = [32]}")
    result = run_cli("sweep", str(file), "--storage", "redis://localhost")
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert line == (f"error: {file}: --storage: not a storage a sweep can use; given "
                    f"'redis://localhost'; allowed: sqlite:///PATH (the default: "
                    f"STUDY_FOLDER/study.db), journal:PATH (a journal file on a shared file "
                    f"system) or postgresql://USER:PASSWORD@HOST:PORT/DATABASE")
    assert not (tmp_path / "out").exists()


def test_validate_checks_a_sweep_file(tmp_path, idx_folder):
    file = write_sweep(tmp_path, idx_folder, "train.batch_size = {choices = [32, 16]}",
                       'method = "grid"\nseeds = [0, 1]')
    result = run_cli("validate", str(file))
    assert result.returncode == 0, result.stderr
    assert "sweep: grid, 4 trials, maximize evaluation.test_log_likelihood" in result.stdout


@pytest.mark.parametrize("path", sorted((REPO / "experiments" / "sweeps").glob("*.toml")),
                         ids=lambda p: p.name)
def test_the_sweep_experiments_are_valid_and_name_their_study(path):
    from tfgen.sweep import load_sweep

    assert load_sweep(str(path)).name in (path.stem, f"sweep_{path.stem}")


# --------------------------------------------------------------------------- running studies

def test_a_grid_shared_by_two_processes_runs_every_trial_once_and_records_a_failure(
        tmp_path, idx_folder):
    """2 points x 2 seeds on the default SQLite storage, by a sweep with 2 workers and another
    sweep at the same time; the points differ in their evaluation: one lacks the metric."""
    file = write_sweep(tmp_path, idx_folder, f'evaluate = {{choices = [[{{task = "elbo"}}], '
                       f'[{LOG_LIKELIHOOD}]]}}', 'method = "grid"\nseeds = [0, 1]')
    out = finish(start("sweep", str(file), "--workers", "2", *CHEAP),
                 start("sweep", str(file), *CHEAP))
    study_dir = tmp_path / "out" / "st"
    trials = trials_of(f"sqlite:///{study_dir / 'study.db'}")
    assert sorted(t.number for t in trials) == [0, 1, 2, 3]
    assert sorted((t.user_attrs["point"], t.user_attrs["seed"]) for t in trials) == [
        (0, 0), (0, 1), (1, 0), (1, 1)]
    for t in trials:  # point 0 evaluates the ELBO only: its trials fail, and the study goes on
        if t.user_attrs["point"] == 0:
            assert t.state.name == "FAIL"
            assert t.user_attrs["error"].startswith(
                "metric evaluation.test_log_likelihood is not in metrics.json (evaluation has: "
                "test_elbo,")
        else:
            assert t.state.name == "COMPLETE" and t.value < 0
    check_trial_folders(study_dir, trials)
    study = json.loads((study_dir / "study.json").read_text())
    assert study["study"] == "st" and study["sweep"]["seeds"] == [0, 1]
    assert "best trial" in out and ": FAIL: metric evaluation.test_log_likelihood" in out
    assert list((study_dir / "hparams").glob("events.out.tfevents.*"))


def _stopped(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "T"
    except OSError:
        return False


def _gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in "ZX"
    except OSError:
        return True


def _wait(condition, seconds: float = 120.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


def test_a_killed_sweep_resumes_its_trial_from_the_checkpoint_on_a_journal_file(
        tmp_path, idx_folder):
    """Trial 0's run stops itself (SIGSTOP) after step 3, its epoch-1 checkpoint written; the
    sweep is killed (SIGKILL), its run gets SIGTERM and stops at a checkpoint.  Two sweeps
    started then against the journal share the rest: one continues trial 0's run directory."""
    file = write_sweep(tmp_path, idx_folder, "train.learning_rate = {choices = [1e-3, 2e-3]}",
                       'method = "grid"', epochs=3)
    storage = f"journal:{tmp_path / 'study.journal'}"
    first = start("sweep", str(file), "--storage", storage, *CHEAP,
                  env={"TFGEN_TEST_SIGNAL": "3:SIGSTOP"})
    folder = tmp_path / "out" / "st" / "st-t0000"

    def run_pid() -> int | None:
        for lock in folder.glob("*/.lock"):
            text = lock.read_text()
            if text:
                return json.loads(text)["pid"]
        return None

    _wait(lambda: run_pid() is not None and _stopped(run_pid()))
    pid = run_pid()
    first.kill()
    first.communicate()
    os.kill(pid, signal.SIGCONT)  # it had SIGTERM when the sweep died: it stops at a checkpoint
    _wait(lambda: _gone(pid))
    out = finish(start("sweep", str(file), "--storage", storage, *CHEAP),
                 start("sweep", str(file), "--storage", storage, *CHEAP))
    trials = trials_of(storage)
    assert sorted((t.number, t.state.name) for t in trials) == [(0, "COMPLETE"), (1, "COMPLETE")]
    check_trial_folders(tmp_path / "out" / "st", trials)
    [run] = folder.glob("*/config.toml")
    sessions = json.loads((run.parent / "run.json").read_text())["sessions"]
    assert [s["resumed"] for s in sessions] == [False, True]
    metrics = json.loads((run.parent / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["train"]["steps"] == 6
    assert "seed 3; resumed" in out


# --------------------------------------------------------------------------- PostgreSQL

def _postgres_bin() -> Path | None:
    found = shutil.which("pg_ctl")
    if found:
        return Path(found).resolve().parent
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    return Path(versions[-1]).parent if versions else None


@pytest.fixture
def postgres():
    """A throwaway PostgreSQL cluster on loopback (initdb and pg_ctl in a temporary folder, as
    an unprivileged user: initdb refuses root), its database URL; stopped afterwards."""
    bindir = _postgres_bin()
    if bindir is None:
        pytest.skip("PostgreSQL's initdb/pg_ctl are not installed (tools/setup.sh --test "
                    "installs Debian's postgresql)")
    as_user: list[str] = []
    folder = Path(tempfile.mkdtemp(prefix="tfgen-pg-"))
    if os.geteuid() == 0:
        as_user = ["runuser", "-u", "postgres", "--"]
        shutil.chown(folder, "postgres")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    run = lambda *args: subprocess.run([*as_user, *map(str, args)], check=True,  # noqa: E731
                                       capture_output=True, text=True, timeout=120)
    run(bindir / "initdb", "-D", folder / "data", "-U", "tfgen", "-A", "trust", "--no-sync")
    run(bindir / "pg_ctl", "-D", folder / "data", "-l", folder / "log", "-w", "-o",
        f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off", "start")
    try:
        run(bindir / "createdb", "-h", "127.0.0.1", "-p", port, "-U", "tfgen", "sweeps")
        yield f"postgresql://tfgen@127.0.0.1:{port}/sweeps"
    finally:
        run(bindir / "pg_ctl", "-D", folder / "data", "-m", "immediate", "-w", "stop")
        shutil.rmtree(folder, ignore_errors=True)


def test_two_sweeps_share_a_postgresql_study(tmp_path, idx_folder, postgres):
    file = write_sweep(tmp_path, idx_folder, "train.batch_size = {choices = [16, 32]}",
                       'method = "random"\ntrials = 2')
    finish(start("sweep", str(file), "--storage", postgres, *CHEAP),
           start("sweep", str(file), "--storage", postgres, *CHEAP))
    trials = trials_of(postgres.replace("postgresql://", "postgresql+psycopg2://"))
    assert sorted((t.number, t.state.name) for t in trials) == [(0, "COMPLETE"), (1, "COMPLETE")]
    check_trial_folders(tmp_path / "out" / "st", trials)
    assert not (tmp_path / "out" / "st" / "study.db").exists()
    assert json.loads((tmp_path / "out" / "st" / "study.json").read_text())["storage"] == postgres
