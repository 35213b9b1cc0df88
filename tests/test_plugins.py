"""Plugins (tfgen.plugins): components from the user's own code.

The installed example package (examples/tfgen-plugin-example) runs in a fresh process, with
its entry point found by importlib.metadata; plugin files and modules given by --plugin and
TFGEN_PLUGINS are loaded in this process (each test unloads what it loaded), as are the
refusals of a run whose plugin is missing.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import REPO, STEPS, run_cli, tiny_config

EXAMPLE = REPO / "examples" / "tfgen-plugin-example"

#: a plugin file: a network (an MLP with a skip from input to output, small) and a task that
#: needs a posterior
NETWORK_PLUGIN = '''
import dataclasses
import math

import tensorflow as tf
import tf_keras as keras

from tfgen.inference.capabilities import Posterior, require
from tfgen.models.networks import Network
from tfgen.registry import EVALUATIONS, NETWORKS
from tfgen.schema import TaskConfig, setting


@dataclasses.dataclass
class TinySkipConfig:
    width: int = setting(16, at_least=1, help="hidden units")


class TinySkip(Network):
    def __init__(self, output_shape, width=16, **kwargs):
        super().__init__(output_shape, **kwargs)
        self.width = width

    def build(self, input_shape):
        self.body = keras.layers.Dense(self.width, activation="relu")
        self.head = keras.layers.Dense(math.prod(self.target_shape))
        super().build(input_shape)

    def call(self, inputs, training=False):
        x = tf.reshape(inputs, [tf.shape(inputs)[0], -1])
        out = self.head(tf.concat([self.body(x), x], axis=-1))
        return tf.reshape(out, [-1, *self.target_shape])


@NETWORKS.register("tiny_skip", config=TinySkipConfig)
def tiny_skip(config, output_shape, key):
    """A one-layer MLP with a skip (test plugin)."""
    return TinySkip(output_shape, width=config.width)


@dataclasses.dataclass
class PixelMeanConfig(TaskConfig):
    def check(self, cfg):
        require(cfg, Posterior, "evaluate", "task 'pixel_mean'")

    def peak(self, shape, act):
        return 0, ()  # reads the split's pixels, nothing on the device


@EVALUATIONS.register("pixel_mean", config=PixelMeanConfig)
def pixel_mean(params, ctx):
    """The mean pixel of the test split (test plugin)."""
    return {"pixel_mean": float(ctx.data.test.images.mean())}
'''


@pytest.fixture(autouse=True)
def unloaded():
    """Whatever a test loads into this process's registries is gone after it."""
    from tfgen import plugins

    before = {p.name for p in plugins.loaded()}
    yield
    for plugin in plugins.loaded():
        if plugin.name not in before:
            plugins.unload(plugin.name)


@pytest.fixture
def network_plugin(tmp_path) -> Path:
    path = tmp_path / "my_nets.py"
    path.write_text(NETWORK_PLUGIN)
    return path


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def uses_tiny_skip(idx_folder: Path, out: Path, epochs: int = 2) -> Path:
    """The tiny config with the plugin's network as decoder and its task."""
    text = tiny_config(idx_folder, out, epochs=epochs).replace(
        '[model.decoder]\nname = "mlp"\nhidden = [32]', '[model.decoder]\nname = "tiny_skip"')
    assert 'name = "tiny_skip"' in text
    config = out / "tiny.toml"
    config.write_text(text + '\n[[evaluate]]\ntask = "pixel_mean"\n')
    return config


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error: ")]


# --------------------------------------------------------------------------- the registry

def test_a_name_registered_twice_names_both_origins_and_a_plugin_can_be_forgotten():
    from tfgen.registry import BUILT_IN, NameTaken, Registry, registering_for

    registry = Registry("network")
    registry.register("a")(lambda: None)
    with registering_for("p", "plugin p 1.0"):
        registry.register("b")(lambda: None)
        with pytest.raises(NameTaken) as clash:
            registry.register("a")(lambda: None)
    assert (clash.value.first.origin, clash.value.origin, clash.value.plugin) == (
        BUILT_IN, "plugin p 1.0", "p")
    assert registry.get("b").origin == "plugin p 1.0" and registry.get("a").plugin is None
    registry.forget("p")
    assert registry.names() == ["a"]


# --------------------------------------------------------------------------- --plugin FILE

def test_a_plugin_file_trains_is_recorded_and_a_resume_without_it_is_refused(
        tmp_path, idx_folder, network_plugin):
    from tfgen import plugins

    config = uses_tiny_skip(idx_folder, tmp_path)
    result = run_cli("run", str(config), "--quiet", *STEPS, "--plugin", str(network_plugin))
    assert result.returncode == 0, result.stderr
    [run] = (tmp_path / "tiny").iterdir()
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["evaluation"]["pixel_mean"] > 0
    [record] = json.loads((run / "run.json").read_text())["sessions"][-1]["plugins"]
    path = str(network_plugin.resolve())
    assert {k: record[k] for k in ("name", "source", "file", "sha256")} == {
        "name": path, "source": "file", "file": path, "sha256": sha256(network_plugin)}
    assert record["components"] == {"networks": ["tiny_skip"], "evaluations": ["pixel_mean"]}
    assert record["used"] == [
        {"key": "model.decoder.name", "registry": "networks", "name": "tiny_skip"},
        {"key": "evaluate[5].task", "registry": "evaluations", "name": "pixel_mean"}]

    plugins.unload(path)  # as a new process without --plugin
    before = {p.name: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    refused = (f"error: {run}: uses network 'tiny_skip' (model.decoder.name), evaluation task "
               f"'pixel_mean' (evaluate[5].task) from plugin '{path}' (file, sha256 "
               f"{sha256(network_plugin)[:12]}), which is not loaded; pass --plugin {path} or "
               f"install it")
    for args in (["run", "--resume", str(run), "--quiet"], ["eval", str(run)],
                 ["eval", str(run), "--task", "elbo"], ["complete", str(run)]):
        result = run_cli(*args)
        assert (result.returncode, error_lines(result.stderr)) == (2, [refused]), args
    assert {p.name: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before

    # with the plugin, and its file changed since the run: it evaluates, with a warning
    network_plugin.write_text(NETWORK_PLUGIN + "# changed\n")
    result = run_cli("eval", str(run), "--task", "elbo", "--plugin", str(network_plugin))
    assert result.returncode == 0, result.stderr
    assert (f"warning: {run}: model.decoder.name: network 'tiny_skip' comes from plugin "
            f"'{path}' (file, sha256 {sha256(network_plugin)[:12]}) now; the run used plugin "
            f"'{path}' (file, sha256 {record['sha256'][:12]})") in result.stderr


def test_plugin_components_are_validated_like_built_in_ones(tmp_path, idx_folder,
                                                            network_plugin):
    config = uses_tiny_skip(idx_folder, tmp_path)
    config.write_text(config.read_text().replace('name = "tiny_skip"',
                                                 'name = "tiny_skip"\nwidht = 0') +
                      '\n[[evaluate]]\ntask = "pixel_mean"\nsplit = "val"\n')
    result = run_cli("validate", str(config), "--plugin", str(network_plugin))
    lines = error_lines(result.stderr)
    assert result.returncode == 2
    assert (f"error: {config}: model.decoder.widht: unknown key (did you mean 'width'?); "
            f"allowed: width") in lines
    assert f"error: {config}: evaluate[6].split: unknown key; allowed: no keys" in lines
    # the task's needs, checked at load time (gan has no posterior q(z | y))
    text = uses_tiny_skip(idx_folder, tmp_path).read_text()
    start = text.index("[inference]")
    config.write_text(text[:start] + '[inference]\nscheme = "gan"\n\n' +
                      text[text.index("[train]"):text.index("[[evaluate]]")] +
                      '[[evaluate]]\ntask = "pixel_mean"\n')
    result = run_cli("validate", str(config), "--plugin", str(network_plugin))
    [line] = error_lines(result.stderr)
    assert line.startswith(
        f"error: {config}: evaluate[0]: task 'pixel_mean' needs a posterior q(z | y) (an "
        f"encoder, or one fitted at test time), which scheme 'gan' does not have; given 'gan'; "
        f"allowed: inference.scheme = "), line
    assert "'bigan'" in line and "'vae'" in line, line


# --------------------------------------------------------------------------- TFGEN_PLUGINS

def test_tfgen_plugins_names_files_and_modules(tmp_path, idx_folder, network_plugin,
                                               monkeypatch):
    package = tmp_path / "pkgs"
    package.mkdir()
    (package / "my_likelihoods.py").write_text(textwrap.dedent('''
        from tfgen.models.likelihoods import BernoulliLikelihood
        from tfgen.registry import LIKELIHOODS


        @LIKELIHOODS.register("bernoulli_copy")
        class BernoulliCopy(BernoulliLikelihood):
            """The Bernoulli likelihood again (test plugin)."""
        '''))
    monkeypatch.syspath_prepend(str(package))
    monkeypatch.setenv("TFGEN_PLUGINS", f"{network_plugin}{os.pathsep}my_likelihoods")
    config = uses_tiny_skip(idx_folder, tmp_path)
    result = run_cli("validate", str(config), "--set", "model.likelihood.name=bernoulli_copy")
    assert result.returncode == 0, result.stderr
    assert "likelihood bernoulli_copy, decoder tiny_skip" in result.stdout
    result = run_cli("list", "--no-keys")
    assert ("  tiny_skip          (plugin my_nets.py) A one-layer MLP with a skip (test plugin)."
            in result.stdout.splitlines())
    assert ("  bernoulli_copy     (plugin my_likelihoods) The Bernoulli likelihood again (test "
            "plugin)." in result.stdout.splitlines())


# --------------------------------------------------------------------------- errors

def test_an_import_error_in_a_plugin_is_one_line_and_leaves_nothing_registered(tmp_path):
    from tfgen.errors import PluginError
    from tfgen.registry import NETWORKS

    bad = tmp_path / "bad_plugin.py"
    bad.write_text("from tfgen.models.networks import mlp\nfrom tfgen.registry import NETWORKS\n"
                   "NETWORKS.register('half_done')(mlp)\nvalue = undefined_name\n")
    result = run_cli("validate", "nothing.toml", "--plugin", str(bad))
    path = bad.resolve()
    assert (result.returncode, error_lines(result.stderr)) == (2, [
        f"error: plugin '{path}' (file, sha256 {sha256(bad)[:12]}): import failed: NameError: "
        f"name 'undefined_name' is not defined ({path}, line 4); run again with --debug for "
        f"the traceback"])
    assert "half_done" not in NETWORKS
    with pytest.raises(PluginError) as raised:  # --debug: the exception, with its cause
        run_cli("list", "--plugin", str(bad), "--debug")
    assert isinstance(raised.value.__cause__, NameError)


@pytest.mark.parametrize("spec, message", [
    ("missing_plugin.py", "--plugin: no such file; given 'missing_plugin.py'"),
    ("no_such_module_for_tfgen", "--plugin: no such module (not installed, not on "
                                 "PYTHONPATH); given 'no_such_module_for_tfgen'"),
    ("not a module", "--plugin: neither a .py file nor a module name; given 'not a module'"),
])
def test_a_plugin_that_cannot_be_found_is_one_line(spec, message):
    result = run_cli("list", "--plugin", spec)
    assert (result.returncode, error_lines(result.stderr)) == (2, [
        f"error: {message}; allowed: a Python file (path ending in .py) or an importable "
        f"module's dotted name"])


def test_a_name_that_exists_is_refused_naming_both_origins(tmp_path, network_plugin):
    from tfgen.registry import NETWORKS

    clash = tmp_path / "clash.py"
    clash.write_text("from tfgen.models.networks import mlp\nfrom tfgen.registry import NETWORKS\n"
                     "NETWORKS.register('own')(mlp)\nNETWORKS.register('mlp')(mlp)\n")
    path = clash.resolve()
    result = run_cli("list", "--plugin", str(clash))
    assert (result.returncode, error_lines(result.stderr)) == (2, [
        f"error: plugin '{path}' (file, sha256 {sha256(clash)[:12]}): registers network 'mlp', "
        f"which tfgen itself registers (built-in); rename it in one of them"])
    assert "own" not in NETWORKS

    copy = tmp_path / "copy" / "my_nets.py"
    copy.parent.mkdir()
    shutil.copy(network_plugin, copy)
    result = run_cli("list", "--plugin", str(network_plugin), "--plugin", str(copy))
    first = network_plugin.resolve()
    assert (result.returncode, error_lines(result.stderr)) == (2, [
        f"error: plugin '{copy.resolve()}' (file, sha256 {sha256(copy)[:12]}): registers "
        f"network 'tiny_skip', which plugin '{first}' (file, sha256 "
        f"{sha256(network_plugin)[:12]}) registers; rename it in one of them"])


# --------------------------------------------------------------------------- the installed example

@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """examples/tfgen-plugin-example installed into a folder of its own.

    ``pip install --target DIR --no-deps`` of a copy of the example (pip builds in the source
    folder), and DIR on PYTHONPATH: importlib.metadata finds the .dist-info there, with its
    entry points, exactly as in a venv's site-packages.  A venv would need tfgen's
    dependencies installed again (TensorFlow; minutes, and a network), or
    --system-site-packages, which does not see the packages of the venv tfgen runs in.
    --no-build-isolation --no-index: built offline with this venv's setuptools."""
    root = tmp_path_factory.mktemp("installed")
    shutil.copytree(EXAMPLE, root / "src", ignore=shutil.ignore_patterns("*.egg-info", "build"))
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                    "--no-build-isolation", "--no-index", "--target", str(root / "site"),
                    str(root / "src")], check=True, cwd=root, capture_output=True, timeout=300)
    return root / "site"


def tfgen_with(site: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(site)])}
    env.pop("TFGEN_PLUGINS", None)
    return subprocess.run([sys.executable, "-m", "tfgen", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)


def test_the_installed_example_runs_with_all_three_components(installed, tmp_path, idx_folder):
    text = tiny_config(idx_folder, tmp_path, epochs=1).replace('binarize = "dynamic"',
                                                                'binarize = "none"')
    text = text[:text.index("[[evaluate]]")] + textwrap.dedent('''
        [[evaluate]]
        task = "elbo"

        [[evaluate]]
        task = "mean_pixel_error"
        num_images = 20
        batch_size = 8
        ''')
    text = (text.replace('[model.decoder]\nname = "mlp"', '[model.decoder]\nname = "skip_mlp"')
            .replace('[inference.encoder]\nname = "mlp"', '[inference.encoder]\nname = "skip_mlp"')
            .replace('name = "bernoulli"', 'name = "laplace"'))
    assert text.count("skip_mlp") == 2 and 'name = "laplace"' in text
    config = tmp_path / "example.toml"
    config.write_text(text)
    result = tfgen_with(installed, "run", str(config), "--quiet", *STEPS)
    assert result.returncode == 0, result.stderr
    [run] = (tmp_path / "tiny").iterdir()
    error = json.loads((run / "metrics.json").read_text())["evaluation"]["test_mean_pixel_error"]
    assert 0 < error < 1
    [record] = json.loads((run / "run.json").read_text())["sessions"][-1]["plugins"]
    assert {k: record[k] for k in ("name", "source", "dist", "version", "entry_point")} == {
        "name": "tfgen_plugin_example", "source": "entry point", "dist": "tfgen-plugin-example",
        "version": "0.1.0", "entry_point": "example"}
    assert [use["key"] for use in record["used"]] == [
        "model.decoder.name", "model.likelihood.name", "inference.encoder.name",
        "evaluate[1].task"]

    # this process has not installed it: a resume is refused, naming the plugin
    result = run_cli("run", "--resume", str(run), "--quiet")
    assert (result.returncode, error_lines(result.stderr)) == (2, [
        f"error: {run}: uses network 'skip_mlp' (model.decoder.name, inference.encoder.name), "
        f"likelihood 'laplace' (model.likelihood.name), evaluation task 'mean_pixel_error' "
        f"(evaluate[1].task) from plugin 'tfgen_plugin_example' (entry point 'example' of "
        f"tfgen-plugin-example 0.1.0), which is not loaded; pass --plugin tfgen_plugin_example "
        f"or install it (tfgen-plugin-example 0.1.0)"])

    # tfgen list shows it as (its label; the line itself: test_tfgen_plugins_names_...)
    from tfgen.plugins import Plugin

    assert Plugin.from_record(record).label == "plugin tfgen-plugin-example 0.1.0"
