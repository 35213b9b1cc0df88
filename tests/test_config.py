"""Config language: typed parsing, overrides, the resolved-config round trip, and the
bad-input table run through the real CLI (exit 2, one message, no traceback, no run dir)."""
from __future__ import annotations

from pathlib import Path

import pytest

from conftest import REPO, run_cli, run_process
from tfgen.assemble import from_dict, load_config
from tfgen.config import apply_overrides, dumps_toml, to_dict
from tfgen.errors import ConfigError

try:
    import tomllib
except ModuleNotFoundError:  # pragma: no cover
    import tomli as tomllib


def test_defaults_and_components_are_typed():
    cfg = from_dict({"data": {"binarize": "static"}})
    assert cfg.inference.name == "vae"
    assert cfg.inference.params.encoder.name == "conv_encoder"
    assert cfg.inference.params.encoder.params.channels == [32, 64, 128]
    assert cfg.model.prior.params.dim == 16
    assert [e.name for e in cfg.evaluate] == ["elbo", "reconstructions", "samples", "curves"]
    assert isinstance(cfg.train.learning_rate, float)


def test_categorical_derives_data_bins_and_rejects_mismatch():
    cfg = from_dict({"model": {"likelihood": {"name": "categorical", "bins": 4}}})
    assert cfg.data.bins == 4
    with pytest.raises(ConfigError, match="data.bins"):
        from_dict({"data": {"bins": 3}, "model": {"likelihood": {"name": "categorical", "bins": 4}}})


def test_bernoulli_requires_binarized_data():
    with pytest.raises(ConfigError, match="data.binarize"):
        from_dict({"model": {"likelihood": {"name": "bernoulli"}}})


def test_errors_in_overridden_keys_name_the_command_line(tmp_path):
    """An override's error names ``--set KEY`` (under the file it applies to); an error in a key
    no override touched stays the file's, even next to one."""
    config = tmp_path / "exp.toml"
    config.write_text("[train]\nepochs = \"ten\"\n[data]\nbinarize = \"static\"\n")
    with pytest.raises(ConfigError) as caught:
        load_config(config, ["train.learning_rate=-1"])
    lines = caught.value.lines()
    assert f"{config}: --set train.learning_rate: out of range; given -1; allowed: > 0.0" in lines
    assert f"{config}: train.epochs: expected an integer; given 'ten'" in lines
    assert len(lines) == 2, lines


@pytest.mark.parametrize("tasks,index", [(["elbo"], 0), (["samples", "curves", "elbo"], 2)])
def test_capability_refusals_name_the_task_in_the_list(tasks, index):
    """A GAN has no posterior: the elbo task is refused at its own place, evaluate[i]."""
    raw = {"data": {"binarize": "static"}, "inference": {"scheme": "gan"},
           "evaluate": [{"task": t} for t in tasks]}
    with pytest.raises(ConfigError) as caught:
        from_dict(raw, "gan.toml")
    assert caught.value.key == f"evaluate[{index}]", str(caught.value)
    assert "task 'elbo' needs" in str(caught.value)
    assert str(caught.value).startswith(f"gan.toml: evaluate[{index}]: task 'elbo' needs")


def test_overrides_are_toml_typed(tmp_path):
    raw = {"train": {"epochs": 10}}
    apply_overrides(raw, ["train.epochs=3", "model.prior.dim=2", "train.learning_rate=1e-4",
                          "data.train_split=train[:100]", "train.early_stopping.restore_best=false"])
    assert raw["train"]["epochs"] == 3 and raw["model"]["prior"]["dim"] == 2
    assert raw["train"]["learning_rate"] == 1e-4
    assert raw["data"]["train_split"] == "train[:100]"
    assert raw["train"]["early_stopping"]["restore_best"] is False


@pytest.mark.parametrize("path", sorted((REPO / "experiments").glob("*.toml")), ids=lambda p: p.name)
def test_resolved_config_round_trips(path):
    cfg = load_config(path)
    text = dumps_toml(to_dict(cfg))
    again = from_dict(tomllib.loads(text), "resolved")
    assert to_dict(again) == to_dict(cfg)


BAD_INPUT = [
    # (name, file content or None, extra CLI args, substrings the message must contain)
    ("unknown key", "[train]\nepochz = 3\n", [], ["train.epochz", "did you mean 'epochs'"]),
    ("wrong type", "[train]\nepochs = \"three\"\n", [], ["train.epochs", "expected an integer", "'three'"]),
    ("out of range", "[train]\nlearning_rate = -0.5\n", [], ["train.learning_rate", "out of range", "> 0.0"]),
    ("bad literal", "[data]\nbinarize = \"dynamc\"\n", [], ["data.binarize", "did you mean 'dynamic'", "'static'"]),
    ("unknown likelihood", "[model.likelihood]\nname = \"bernouli\"\n", [],
     ["model.likelihood.name", "did you mean 'bernoulli'", "'categorical'"]),
    ("unknown scheme", "[inference]\nscheme = \"vea\"\n", [], ["inference.scheme", "did you mean 'vae'"]),
    ("unknown network", "[model.decoder]\nname = \"conv_decoderr\"\n", [],
     ["model.decoder.name", "did you mean 'conv_decoder'"]),
    ("nested unknown key", "[inference.encoder]\nname = \"mlp\"\nhiden = [3]\n", [],
     ["inference.encoder.hiden", "did you mean 'hidden'"]),
    ("syntax error", "[train\nepochs = 3\n", [], ["TOML syntax error", "line 1, column"]),
    ("bad override", "", ["--set", "train.epochs=x"],
     ["--set train.epochs: expected an integer", "'x'"]),
    ("override of an unknown key", "", ["--set", "train.epochz=3"],
     ["--set train.epochz: unknown key", "did you mean 'epochs'"]),
    ("override of a table", "", ["--set", 'model.decoder={name = "mlp", hiden = [3]}'],
     ["--set model.decoder.hiden: unknown key", "did you mean 'hidden'"]),
    ("override without =", "", ["--set", "train.epochs"], ["--set", "KEY=VALUE"]),
    ("bad split", "[data]\nsource = \"idx\"\npath = \"{idx}\"\ntrain_split = \"trian[:10]\"\n", [],
     ["data.train_split", "trian"]),
    ("missing data set", "[data]\nsource = \"tfds\"\nname = \"mnist\"\ndata_dir = \"{tmp}/nothing\"\n"
     "binarize = \"static\"\n", [], ["'mnist' not found", "looked in", "data.path"]),
    ("missing data path", "[data]\nsource = \"idx\"\npath = \"{tmp}/nowhere\"\n", [], ["data.path", "does not exist"]),
    ("unknown tfds name", "[data]\nname = \"mnsit\"\n", [], ["data.name", "unknown TFDS data set"]),
    ("decoder/image mismatch", "[data]\nsource = \"idx\"\npath = \"{idx}\"\nbinarize = \"static\"\n"
     "train_split = \"train\"\nval_split = \"\"\n[model.decoder]\nname = \"upconv_decoder\"\n"
     "channels = [64, 32, 16, 8]\n", [], ["model.decoder.channels", "divisible by 8"]),
    ("zero width", "[model.decoder]\nname = \"mlp\"\nhidden = [16, 0]\n", [],
     ["model.decoder.hidden[1]", "out of range", ">= 1"]),
    ("negative width", "[model.prior]\nname = \"realnvp\"\nhidden = [-2]\n", [],
     ["model.prior.hidden[0]", ">= 1"]),
    ("worker without port", "[runtime]\nworkers = [\"localhost\"]\n", [],
     ["runtime.workers[0]", "not a host:port address", "1..65535"]),
    ("worker port too large", "[runtime]\nworkers = [\"127.0.0.1:99999\", \"b:2\"]\n", [],
     ["runtime.workers[0]", "'127.0.0.1:99999'"]),
    ("worker twice", "[runtime]\nstrategy = \"multi_worker\"\nworkers = [\"a:1\", \"a:1\"]\n", [],
     ["runtime.workers", "the same entry twice", "'a:1'"]),
    ("workers without multi_worker", "[runtime]\nworkers = [\"a:1\", \"b:1\"]\n", [],
     ["runtime.workers: lists a cluster, but runtime.strategy = 'default' trains on this "
      "machine alone", "allowed: workers only with runtime.strategy = \"multi_worker\""]),
    ("workers with mirrored", "[runtime]\nstrategy = \"mirrored\"\nworkers = [\"a:1\"]\n", [],
     ["runtime.workers", "runtime.strategy = 'mirrored'"]),
    ("connect timeout zero", "[runtime]\nconnect_timeout_s = 0\n", [],
     ["runtime.connect_timeout_s", "out of range", "> 0.0"]),
    ("device twice", "[runtime]\nstrategy = \"mirrored\"\ndevices = [\"CPU:0\", \"CPU:0\"]\n", [],
     ["runtime.devices", "the same entry twice"]),
    ("empty output_dir", "", ["--set", 'experiment.output_dir=""'],
     ["experiment.output_dir", "an empty path"]),
]


@pytest.mark.parametrize("name,content,args,expected", BAD_INPUT, ids=[b[0] for b in BAD_INPUT])
def test_bad_input_table(tmp_path, idx_folder, name, content, args, expected):
    out = tmp_path / "runs"
    base = f"[experiment]\noutput_dir = \"{out}\"\n"
    body = content.format(idx=idx_folder, tmp=tmp_path)
    if name != "syntax error" and "binarize" not in body:  # the default likelihood is Bernoulli
        body = body.replace("[data]\n", "[data]\nbinarize = \"static\"\n") if "[data]" in body \
            else body + "[data]\nbinarize = \"static\"\n"
    config = tmp_path / "bad.toml"
    config.write_text(base + body if name != "syntax error" else body)
    result = run_cli("run", str(config), "--quiet", *args)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    message = result.stderr.strip()
    assert message.startswith("error:"), message
    assert message.count("\n") == 0, message  # one message
    if name not in ("override without =",):
        assert str(config) in message
    for part in expected:
        assert part in message, (part, message)
    assert not out.exists() or not any(out.rglob("*")), "bad input left a run directory behind"


@pytest.mark.parametrize("target", ["missing", "directory", "binary"])
def test_unreadable_files(tmp_path, target):
    path = {"missing": tmp_path / "nope.toml", "directory": tmp_path,
            "binary": tmp_path / "bin.toml"}[target]
    if target == "binary":
        path.write_bytes(b"\xff\xfe\x00bad")
    result = run_cli("validate", str(path))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert str(path) in result.stderr


def test_bad_input_in_a_real_process(tmp_path):
    """The console script itself: one line on stderr, exit 2, no TF start-up noise, no traceback."""
    config = tmp_path / "bad.toml"
    config.write_text("[train]\nepochs = -1\n")
    result = run_process("run", str(config), "--quiet")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: {config}: train.epochs: out of range; given -1; allowed: >= 0"]


def test_validate_all_experiments():
    result = run_cli("validate", *map(str, sorted((REPO / "experiments").glob("*.toml"))))
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("ok:") == len(list((REPO / "experiments").glob("*.toml")))


def test_list_shows_every_registry():
    result = run_cli("list", "--no-keys")
    assert result.returncode == 0, result.stderr
    for name in ["bernoulli", "beta", "categorical", "normal", "conv_encoder", "conv_decoder",
                 "mlp", "vae", "elbo", "log_likelihood", "samples", "reconstructions"]:
        assert name in result.stdout


def test_config_is_data_not_code(tmp_path):
    """A value that looks like code is just a string that fails validation."""
    config = tmp_path / "evil.toml"
    marker = tmp_path / "pwned"
    config.write_text(f"[model.likelihood]\nname = \"__import__('os').system('touch {marker}')\"\n")
    result = run_cli("validate", str(config))
    assert result.returncode == 2 and not marker.exists()
