"""Composition of config files (tfgen.compose): ``extends`` and ``unset``, exact merging, where
each error points, the run directory's flat config and chain, and the bad inputs (one line,
exit 2, nothing written)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import REPO, run_cli, tiny_config
from tfgen.compose import compose
from tfgen.assemble import load_config
from tfgen.config import to_dict
from tfgen.errors import ConfigError

try:
    import tomllib
except ModuleNotFoundError:  # pragma: no cover
    import tomli as tomllib


def write(folder: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


# A chain that exercises every rule: bases in a subfolder, an extends list, a base that
# extends a file by a path relative to its own folder, an unset, a table replaced by a scalar.
CHAIN = {
    "lib/data.toml": '[data]\nsource = "idx"\npath = "d"\ntrain_split = "train"\n',
    "lib/model.toml": 'extends = "../shared.toml"\n'
                      '[model.prior]\nname = "gaussian_mixture"\ncomponents = 10\ndim = 4\n'
                      '[model.decoder]\nname = "mlp"\nhidden = [8, 8]\n'
                      '[[evaluate]]\ntask = "elbo"\n[[evaluate]]\ntask = "samples"\n',
    "shared.toml": '[train]\nepochs = 5\nbatch_size = 8\n[train.early_stopping]\npatience = 2\n'
                   '[logging]\nevery_steps = 3\n',
    "exp.toml": 'extends = ["lib/data.toml", "lib/model.toml"]\n'
                'unset = ["model.prior.components", "train.early_stopping"]\n'
                '[experiment]\nname = "exp"\n'
                '[data]\ntrain_split = "train[:10]"\n'
                '[model.prior]\nname = "standard_normal"\n'
                '[model.decoder]\nhidden = [16]\n'
                '[[evaluate]]\ntask = "curves"\n'
                '[logging]\nevery_steps = 7\n',
}


def test_composition_is_exact_on_a_chain(tmp_path):
    """Tables merge at every depth, scalars and arrays (of tables too) are replaced whole,
    unset drops inherited keys, extends applies left to right with the file itself last."""
    write(tmp_path, CHAIN)
    composed = compose(tmp_path / "exp.toml")
    assert composed.raw == {
        "data": {"source": "idx", "path": "d", "train_split": "train[:10]"},
        "train": {"epochs": 5, "batch_size": 8},
        "logging": {"every_steps": 7},
        "model": {"prior": {"name": "standard_normal", "dim": 4},
                  "decoder": {"name": "mlp", "hidden": [16]}},
        "evaluate": [{"task": "curves"}],
        "experiment": {"name": "exp"},
    }
    folder = str(tmp_path)
    assert composed.chain == [f"{folder}/lib/data.toml", f"{folder}/shared.toml",
                              f"{folder}/lib/model.toml", f"{folder}/exp.toml"]
    assert composed.provenance["model.prior.dim"] == f"{folder}/lib/model.toml"
    assert composed.provenance["model.prior.name"] == f"{folder}/exp.toml"
    assert composed.provenance["train.epochs"] == f"{folder}/shared.toml"
    assert "model.prior.components" not in composed.provenance
    assert "train.early_stopping.patience" not in composed.provenance


def test_a_composed_file_loads_as_its_flat_equivalent(tmp_path):
    """load_config of the chain == load_config of the same values written in one file."""
    write(tmp_path, CHAIN)
    flat = tmp_path / "flat.toml"
    flat.write_text('[experiment]\nname = "exp"\n'
                    '[data]\nsource = "idx"\npath = "d"\ntrain_split = "train[:10]"\n'
                    'binarize = "static"\n'
                    '[model.prior]\nname = "standard_normal"\ndim = 4\n'
                    '[model.decoder]\nname = "mlp"\nhidden = [16]\n'
                    '[train]\nepochs = 5\nbatch_size = 8\n[logging]\nevery_steps = 7\n'
                    '[[evaluate]]\ntask = "curves"\n')
    sets = ["data.binarize=static"]
    cfg = load_config(tmp_path / "exp.toml", sets)
    assert to_dict(cfg) == to_dict(load_config(flat))
    assert cfg.source_chain[-1] == str(tmp_path / "exp.toml")
    # --set applies after the merge: it overrides a base's value
    assert load_config(tmp_path / "exp.toml", sets + ["train.epochs=9"]).train.epochs == 9


def test_a_later_base_wins_and_a_diamond_is_applied_once_per_path(tmp_path):
    write(tmp_path, {"a.toml": "[train]\nepochs = 1\nbatch_size = 1\n",
                     "b.toml": 'extends = "a.toml"\n[train]\nepochs = 2\n',
                     "c.toml": 'extends = "a.toml"\n[train]\nbatch_size = 3\n',
                     "d.toml": 'extends = ["b.toml", "c.toml"]\n'})
    composed = compose(tmp_path / "d.toml")
    # c's composition brings a's epochs again, after b's: each base is applied as composed
    assert composed.raw == {"train": {"epochs": 1, "batch_size": 3}}
    assert [Path(f).name for f in composed.chain] == ["a.toml", "b.toml", "c.toml", "d.toml"]


def test_errors_name_the_file_that_set_the_key(tmp_path):
    """A bad value in a base names the base (an array element: the file that set the array);
    a key no file set, and --set, name the experiment."""
    write(tmp_path, {"common/data.toml": '[data]\nbinarize = "dynamc"\n'
                                         '[[evaluate]]\ntask = "samples"\nnum_images = 0\n',
                     "exp.toml": 'extends = "common/data.toml"\n[train]\nepochs = -1\n'})
    exp, base = tmp_path / "exp.toml", tmp_path / "common" / "data.toml"
    with pytest.raises(ConfigError) as caught:
        load_config(exp, ["logging.every_steps=0"])
    assert sorted(line.split(": ")[:2] for line in caught.value.lines()) == sorted([
        [f"{base}", "data.binarize"], [f"{base}", "evaluate[0].num_images"],
        [f"{exp}", "train.epochs"],
        [f"{exp}", "--set logging.every_steps"]]), caught.value.lines()


def test_a_cross_check_names_the_base_that_set_the_key(tmp_path):
    """A check across sections blames the file that set the key; a default, which no file
    set, is the experiment's to change (even inside a table a base wrote)."""
    write(tmp_path, {"base.toml": '[data]\nbinarize = "none"\n',
                     "exp.toml": 'extends = "base.toml"\n[model.likelihood]\nname = "bernoulli"\n',
                     "base2.toml": '[data]\nsource = "idx"\n',
                     "exp2.toml": 'extends = "base2.toml"\n[model.likelihood]\nname = "bernoulli"\n'})
    for exp, blamed in [("exp.toml", "base.toml"), ("exp2.toml", "exp2.toml")]:
        with pytest.raises(ConfigError) as caught:
            load_config(tmp_path / exp)
        assert str(caught.value).startswith(f"{tmp_path / blamed}: data.binarize: "), str(caught.value)


BAD = [
    # (name, files, the experiment, the whole error line after "error: " with {d} the folder)
    ("missing file", {"exp.toml": 'extends = "common/nope.toml"\n'}, "exp.toml",
     "{d}/exp.toml: extends: {d}/common/nope.toml does not exist; given 'common/nope.toml'; "
     "allowed: a TOML file, its path relative to the folder of {d}/exp.toml"),
    ("a directory", {"exp.toml": 'extends = ["common"]\n', "common/x.toml": ""}, "exp.toml",
     "{d}/exp.toml: extends[0]: {d}/common is a directory; given 'common'; allowed: a TOML "
     "file, its path relative to the folder of {d}/exp.toml"),
    ("cycle", {"a.toml": 'extends = "lib/b.toml"\n', "lib/b.toml": 'extends = "c.toml"\n',
               "lib/c.toml": 'extends = "../a.toml"\n'}, "a.toml",
     "{d}/lib/c.toml: extends: a cycle of extends: {d}/a.toml -> {d}/lib/b.toml -> "
     "{d}/lib/c.toml -> {d}/a.toml; given '../a.toml'; allowed: files that do not extend each "
     "other in a loop"),
    ("itself", {"a.toml": 'extends = ["a.toml"]\n'}, "a.toml",
     "{d}/a.toml: extends[0]: a cycle of extends: {d}/a.toml -> {d}/a.toml; given 'a.toml'; "
     "allowed: files that do not extend each other in a loop"),
    ("not a string", {"exp.toml": "extends = 3\n"}, "exp.toml",
     "{d}/exp.toml: extends: expected a file path or an array of them; given 3; allowed: a "
     "file path or an array of file paths (relative to this file's folder)"),
    ("not a string in the list", {"exp.toml": 'extends = ["b.toml", 1]\n', "b.toml": ""},
     "exp.toml",
     "{d}/exp.toml: extends[1]: expected a file path; given 1; allowed: a file path or an "
     "array of file paths (relative to this file's folder)"),
    ("a bad base", {"exp.toml": 'extends = "b.toml"\n', "b.toml": "[train\n"}, "exp.toml",
     "{d}/b.toml: TOML syntax error: Expected ']' at the end of a table declaration (at line "
     "1, column 7)"),
    ("unset of a missing key", {"exp.toml": 'extends = "b.toml"\nunset = ["train.epoch"]\n',
                                "b.toml": "[train]\nepochs = 3\n"}, "exp.toml",
     "{d}/exp.toml: unset[0]: no such key in the files it extends (did you mean "
     "'train.epochs'?); given 'train.epoch'; allowed: a key path that one of the files in "
     "extends sets"),
    ("unset without extends", {"exp.toml": 'unset = ["train"]\n[train]\nepochs = 3\n'},
     "exp.toml",
     "{d}/exp.toml: unset[0]: no such key in the files it extends; given 'train'; allowed: a "
     "key path that one of the files in extends sets"),
    ("unset not a list", {"exp.toml": 'unset = "train.epochs"\n'}, "exp.toml",
     "{d}/exp.toml: unset: expected an array of key paths; given 'train.epochs'; allowed: an "
     "array of dotted key paths, e.g. [\"model.prior.components\"]"),
    ("unset of a non-string", {"exp.toml": "unset = [[1]]\n"}, "exp.toml",
     "{d}/exp.toml: unset[0]: expected a dotted key path; given [1]; allowed: an array of "
     "dotted key paths, e.g. [\"model.prior.components\"]"),
    ("unset of an empty part", {"exp.toml": 'unset = ["train..epochs"]\n'}, "exp.toml",
     "{d}/exp.toml: unset[0]: expected a dotted key path; given 'train..epochs'; allowed: an "
     "array of dotted key paths, e.g. [\"model.prior.components\"]"),
]


@pytest.mark.parametrize("name,files,experiment,line", BAD, ids=[b[0] for b in BAD])
def test_bad_composition_is_one_line_and_writes_nothing(tmp_path, name, files, experiment, line):
    out = tmp_path / "runs"
    write(tmp_path, files)
    result = run_cli("run", str(tmp_path / experiment), "--quiet",
                     "--set", f'experiment.output_dir="{out}"')
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines() == ["error: " + line.format(d=tmp_path)]
    assert not out.exists()
    result = run_cli("validate", str(tmp_path / experiment))
    assert (result.returncode, result.stderr.splitlines()) == (2, ["error: " + line.format(d=tmp_path)])


def test_a_run_keeps_the_flat_config_and_the_chain(tmp_path, idx_folder):
    """The run's config.toml has every value and no extends/unset; run.json names the chain;
    validate and run --set work on the composed file."""
    out = tmp_path / "runs"
    text = tiny_config(idx_folder, out, epochs=1)
    base = text[:text.index("[model.prior]")]  # experiment and data
    write(tmp_path, {"common/tiny_data.toml": base + '\n[model.prior]\ndim = 3\n',
                     "exp.toml": 'extends = "common/tiny_data.toml"\n'
                                 + text[text.index("[model.prior]"):]})
    exp = tmp_path / "exp.toml"
    result = run_cli("validate", str(exp))
    assert result.returncode == 0 and result.stdout.startswith(f"ok: {exp}"), result.stderr
    result = run_cli("run", str(exp), "--quiet", "--set", "train.steps_per_epoch=1",
                     "--set", 'data.test_split="test[:8]"')
    assert result.returncode == 0, result.stderr
    [run] = (out / "tiny").iterdir()
    written = (run / "config.toml").read_text()
    raw = tomllib.loads(written)
    assert not {"extends", "unset"} & set(raw) and "extends =" not in written
    assert raw["model"]["prior"]["dim"] == 2  # the experiment's own value over the base's 3
    assert raw["data"]["test_split"] == "test[:8]"  # --set after the merge
    expected = load_config(exp, ["train.steps_per_epoch=1", 'data.test_split="test[:8]"'])
    assert to_dict(load_config(run / "config.toml")) == to_dict(expected)
    info = json.loads((run / "run.json").read_text())
    assert info["config_chain"] == [str(tmp_path / "common" / "tiny_data.toml"), str(exp)]


def test_experiment_bases_are_not_experiments():
    """Partial bases live in experiments/common/, out of `experiments/*.toml`; every
    experiment names itself after its file (a child that forgot would write into its
    parent's run folder)."""
    for path in sorted((REPO / "experiments").glob("*.toml")):
        assert load_config(path).experiment.name == path.stem, path
    assert any((REPO / "experiments" / "common").glob("*.toml"))
