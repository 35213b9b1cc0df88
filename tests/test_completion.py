"""Image completion, inpainting and reconstruction without the encoder on the shared fitting
layer: the objective counts only the observed pixels under the model's own likelihood (so
hidden pixels change neither it nor the fitted latents), the protocols of Kuntz et al. (2023) and
the 2AMU20 VAE assignment from TOML, the masks (a mask file too), the figure and metrics, and
``tfgen complete`` on a finished run (same numbers as the task at the end of ``tfgen run``, metrics
merged, bad input refused with the run directory unchanged)."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from conftest import build_in_memory, run_cli, tiny_config
from tfgen.assemble import from_dict
from tfgen.config import to_dict
from tfgen.data import Split
from tfgen.errors import ConfigError
from tfgen.evaluation import completion
from tfgen.evaluation.tasks import EvalContext
from tfgen.inference.fitting import FitConfig, fill_hidden
from tfgen.inference.latents import LatentOptimizerConfig

SIZE = 6


def tiny_scheme(scheme: str = "vae", likelihood: dict | None = None, evaluate=(), n: int = 6,
                seed: int = 0):
    """A small scheme on binary in-memory training images (an mlp decoder, d = 2)."""
    images = (np.random.default_rng(seed).uniform(size=(n, SIZE, SIZE, 1)) < 0.4).astype(np.float32)
    inference = ({"scheme": "vae", "encoder": {"name": "mlp", "hidden": [8]}} if scheme == "vae"
                 else {"scheme": "pga", "particles": 1})
    return build_in_memory({
        "data": {"val_split": "", "binarize": "static"},
        "model": {"prior": {"dim": 2}, "decoder": {"name": "mlp", "hidden": [8]},
                  "likelihood": likelihood or {"name": "bernoulli"}},
        "inference": inference, "train": {"compile": "graph"}, "evaluate": list(evaluate)}, images)


def fit_config(**kwargs) -> FitConfig:
    optimizer = LatentOptimizerConfig(**kwargs.pop("optimizer", {"learning_rate": 0.05}))
    return FitConfig(optimizer=optimizer, **kwargs)


# --------------------------------------------------------------------------- the objective

@pytest.mark.parametrize("method", ["svi", "map", "mle", "langevin", "encoder"])
def test_hidden_pixels_change_neither_the_objective_nor_the_latents(tmp_path, method):
    """Through the task: the same images but for their hidden pixels give the same
    objective, steps and latents (and so the same filled pixels); the observed pixels of a
    completion are the image's own."""
    scheme = tiny_scheme(evaluate=[{"task": "complete", "split": "train", "num_images": 6,
                                    "ncols": 3, "fill": "mean",
                                    "fit": {"method": method, "steps": 25, "patience": 5,
                                            "optimizer": {"name": "adam", "learning_rate": 0.05}}}])
    cfg, data = scheme.cfg, scheme.data
    params = cfg.evaluate[0].params
    images = data.train.images
    hidden = params.hidden(len(images), SIZE, SIZE, seed=0)
    changed = np.where(hidden[..., None], 1.0 - images, images)  # every hidden pixel flipped
    a = completion.complete(scheme, images, hidden, params.fit, "mean", seed=3, compile_mode="graph")
    b = completion.complete(scheme, changed, hidden, params.fit, "mean", seed=3, compile_mode="graph")
    np.testing.assert_array_equal(a.latents, b.latents)
    np.testing.assert_array_equal(a.fit.objective, b.fit.objective)
    np.testing.assert_array_equal(a.completion[hidden], b.completion[hidden])
    np.testing.assert_array_equal(a.completion[~hidden], images[~hidden])

    metrics = []
    for train in (images, changed):
        ctx = EvalContext(cfg, scheme, dataclasses.replace(data, train=Split(train, data.train.labels)),
                          tmp_path, [], 0)
        metrics.append(completion.complete_task(params, ctx))
    name = params.label()
    assert name == f"complete_right_half_{method}_mean_train"
    for suffix in ["_objective_mean", "_steps_mean", "_observed_mse"]:
        if method == "encoder" and suffix != "_observed_mse":
            assert name + suffix not in metrics[0]  # nothing is fitted
            continue
        assert metrics[0][name + suffix] == metrics[1][name + suffix], suffix
    # the hidden truth did change, so the error on it does
    assert metrics[0][f"{name}_hidden_mse"] != metrics[1][f"{name}_hidden_mse"]


def test_the_objective_is_the_observed_pixels_likelihood_not_the_squared_error():
    """mle's final objective is -log p(y_O | z) under the model's likelihood: Bernoulli
    cross-entropy on the observed pixels; for a Normal with fixed sigma, eq. (4) of Kuntz et al.
    (2023) squared error / (2 sigma^2) plus the normaliser."""
    fit = fit_config(method="mle", steps=15, patience=0)
    bernoulli = tiny_scheme()
    images = bernoulli.data.train.images
    hidden = completion.hidden_mask("left_half", len(images), SIZE, SIZE)
    result = completion.complete(bernoulli, images, hidden, fit, "mean", seed=1, compile_mode="graph")
    logits = bernoulli.model.decode(tf.constant(result.latents)).numpy().astype(np.float64)
    log_p = images * -np.logaddexp(0, -logits) + (1 - images) * -np.logaddexp(0, logits)
    expected = -(log_p * ~hidden[..., None]).sum(axis=(1, 2, 3))
    np.testing.assert_allclose(result.fit.objective, expected, rtol=1e-4)

    sigma = 0.3
    normal = tiny_scheme(likelihood={"name": "normal", "sigma": sigma})
    result = completion.complete(normal, images, hidden, fit, "mean", seed=1, compile_mode="graph")
    mean = normal.model.likelihood.mean(normal.model.decode(tf.constant(result.latents))).numpy()
    observed = (~hidden).reshape(len(images), -1).sum(1)
    squared = (((images - mean) ** 2) * ~hidden[..., None]).sum(axis=(1, 2, 3))
    expected = squared / (2 * sigma**2) + observed * math.log(sigma * math.sqrt(2 * math.pi))
    np.testing.assert_allclose(result.fit.objective, expected, rtol=1e-4)


# --------------------------------------------------------------------------- the protocols

MLE_FIT_KUNTZ2023 = {"method": "mle", "steps": 1000, "patience": 0, "init": "sampler",
                     "sampler": "prior", "optimizer": {"name": "adam", "learning_rate": 0.01}}
SVI_FIT_2AMU20 = {"method": "svi", "steps": 500, "patience": 50, "init": "random", "mc_samples": 1,
                  "optimizer": {"name": "sgd", "learning_rate": 0.001}}


def parse_evaluate(toml_tables: str, base: str = '[data]\nbinarize = "static"\n'):
    import tomllib

    return from_dict(tomllib.loads(base + toml_tables)).evaluate


def expected_fit(settings: dict) -> dict:
    optimizer = settings.get("optimizer", {})
    return to_dict(dataclasses.replace(FitConfig(), **{k: v for k, v in settings.items()
                                                       if k != "optimizer"},
                                       optimizer=LatentOptimizerConfig(**optimizer)))


def test_inpainting_and_completion_protocols_parse_from_toml():
    inpainting, complete, reconstruct = parse_evaluate(
        '[[evaluate]]\ntask = "inpainting"\n[[evaluate]]\ntask = "complete"\n'
        '[[evaluate]]\ntask = "reconstruct_without_encoder"\n')
    # the defaults are the protocols of Kuntz et al. (2023) and the 2AMU20 VAE assignment
    assert to_dict(inpainting.params.fit) == expected_fit(MLE_FIT_KUNTZ2023)
    assert (inpainting.params.mask, inpainting.params.fill) == ("center", "mean")
    assert to_dict(complete.params.fit) == expected_fit(SVI_FIT_2AMU20)
    assert (complete.params.mask, complete.params.fill) == ("right_half", "sample")  # left observed
    assert to_dict(reconstruct.params.fit) == expected_fit(SVI_FIT_2AMU20)
    # ... and each is written out in the other task's [evaluate.fit] table
    as_complete, as_inpainting = parse_evaluate('''
[[evaluate]]
task = "complete"
mask = "center"
fill = "mean"
[evaluate.fit]
method = "mle"
steps = 1000
patience = 0
init = "sampler"
[evaluate.fit.optimizer]
name = "adam"
learning_rate = 0.01

[[evaluate]]
task = "inpainting"
mask = "right_half"
[evaluate.fit]
method = "svi"
steps = 500
patience = 50
init = "random"
[evaluate.fit.optimizer]
name = "sgd"
learning_rate = 1e-3
''')
    assert to_dict(as_complete.params.fit) == expected_fit(MLE_FIT_KUNTZ2023)
    assert to_dict(as_inpainting.params.fit) == expected_fit(SVI_FIT_2AMU20)
    # a partial table keeps its task's other defaults (not FitConfig's)
    (partial,) = parse_evaluate('[[evaluate]]\ntask = "inpainting"\n[evaluate.fit]\nsteps = 5\n')
    assert to_dict(partial.params.fit) == expected_fit({**MLE_FIT_KUNTZ2023, "steps": 5})


@pytest.mark.parametrize("entry,key,allowed", [
    ({"task": "complete", "mask": "middle"}, "evaluate[0].mask", "'right_half'"),
    ({"task": "complete", "fill": "median"}, "evaluate[0].fill", "'sample'"),
    ({"task": "complete", "fit": {"method": "ml"}}, "evaluate[0].fit.method", "'mle'"),
    ({"task": "complete", "fit": {"optimizer": {"name": "lbfgs"}}},
     "evaluate[0].fit.optimizer.name", "'sgd'"),
    ({"task": "reconstruct_without_encoder", "fit": {"steps": 0}}, "evaluate[0].fit.steps", ">= 1"),
    ({"task": "complete", "split": "val"}, "evaluate[0].split", "a configured split"),
])
def test_bad_values_are_refused_at_load_time_with_the_key(entry, key, allowed):
    with pytest.raises(ConfigError) as err:
        from_dict({"data": {"binarize": "static", "val_split": ""}, "evaluate": [entry]})
    assert err.value.key == key and allowed in err.value.allowed, err.value


def test_the_encoder_method_needs_an_encoder_and_the_figure_omits_its_row(tmp_path):
    pga = {"data": {"val_split": ""}, "model": {"likelihood": {"name": "normal"}},
           "inference": {"scheme": "pga"}}
    with pytest.raises(ConfigError) as err:
        from_dict({**pga, "evaluate": [{"task": "complete", "fit": {"method": "encoder"}}]})
    assert err.value.key == "evaluate[0].fit.method" and "'vae'" in err.value.allowed
    assert from_dict({**pga, "evaluate": [{"task": "reconstruct_without_encoder"}]}).evaluate

    scheme = tiny_scheme("pga", evaluate=[{"task": "complete", "split": "train", "ncols": 3,
                                           "num_images": 5, "fit": {"steps": 3}}])
    ctx = EvalContext(scheme.cfg, scheme, scheme.data, tmp_path, [], 0)
    completion.complete_task(scheme.cfg.evaluate[0].params, ctx)
    (figure,) = ctx.figures
    height, width, _ = tf.io.decode_png(tf.io.read_file(str(figure))).shape
    # 2 blocks of original | observed | completion, each image 6 + 2 pixels, scaled x2
    assert (height, width) == (2 * (2 * 3 * (SIZE + 2) + 2), 2 * (3 * (SIZE + 2) + 2))


@pytest.mark.parametrize("fill", ["mean", "sample"])
def test_the_encoder_method_completes_from_the_encoders_q(fill):
    """method = "encoder": q(z | observed image) is the result, its scale kept for fill = sample."""
    scheme = tiny_scheme("vae")
    images = scheme.data.train.images[:4]
    hidden = completion.hidden_mask("right_half", 4, SIZE, SIZE)
    result = completion.complete(scheme, images, hidden, fit_config(method="encoder"), fill, 3)
    q = scheme.posterior(tf.constant(fill_hidden(images, ~hidden, scheme)))
    np.testing.assert_allclose(result.fit.mean, q.loc.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(result.fit.scale, q.scale.diag.numpy(), rtol=1e-4)
    moved = np.abs(result.latents - result.fit.mean).max()
    assert (moved > 0) == (fill == "sample")
    np.testing.assert_array_equal(result.completion[~hidden], images[~hidden])


# --------------------------------------------------------------------------- masks

def test_masks_and_mask_files(tmp_path):
    pattern = np.zeros((SIZE, SIZE), bool)
    pattern[1:4, 2:5] = True
    png, npy = tmp_path / "holes.png", tmp_path / "holes.npy"
    tf.io.write_file(str(png), tf.io.encode_png((pattern * 255).astype(np.uint8)[..., None]))
    np.save(npy, pattern.astype(np.uint8))
    for path in (png, npy):  # white / 1 = hidden
        np.testing.assert_array_equal(completion.read_mask_file(path), pattern)
    for kind in ["center", "left_half", "right_half", "top_half", "bottom_half", "random"]:
        mask = completion.hidden_mask(kind, 3, SIZE, SIZE, fraction=0.25, seed=1)
        assert mask.shape == (3, SIZE, SIZE) and 0 < mask.sum() < mask.size, kind

    def evaluate(**entry):
        return from_dict({"data": {"binarize": "static"},
                          "evaluate": [{"task": "complete", **entry}]}).evaluate[0].params

    params = evaluate(mask="file", mask_file=str(png))
    np.testing.assert_array_equal(params.hidden(2, SIZE, SIZE, 0), np.stack([pattern] * 2))
    assert params.label() == "complete_file-holes_svi_sample_test"

    garbage, twos, stack = tmp_path / "garbage.png", tmp_path / "twos.npy", tmp_path / "stack.npy"
    garbage.write_bytes(b"not a png at all")
    np.save(twos, np.full((SIZE, SIZE), 2))
    np.save(stack, np.zeros((2, SIZE, SIZE)))
    cases = [({"mask": "file"}, "needs a mask file"),
             ({"mask": "file", "mask_file": str(tmp_path / "missing.png")}, "does not exist"),
             ({"mask": "file", "mask_file": str(garbage)}, "cannot be read as a PNG"),
             ({"mask": "file", "mask_file": str(twos)}, "other than 0/1"),
             ({"mask": "file", "mask_file": str(stack)}, "not [H, W]"),
             ({"mask": "file", "mask_file": str(tmp_path / "holes.jpg")}, "neither a .png"),
             ({"mask": "center", "mask_file": str(png)}, "only with mask = 'file'")]
    for entry, message in cases:
        with pytest.raises(ConfigError) as err:
            evaluate(**entry)
        assert err.value.key == "evaluate[0].mask_file" and message in err.value.message, err.value
        assert len(str(err.value).splitlines()) == 1
    # the size is checked against the images when the run is built, before a run directory
    np.save(tmp_path / "big.npy", np.eye(28, dtype=bool))
    with pytest.raises(ConfigError) as err:
        tiny_scheme(evaluate=[{"task": "complete", "split": "train", "mask": "file",
                               "mask_file": str(tmp_path / "big.npy")}])
    assert err.value.key == "evaluate[0].mask_file" and "28 x 28" in err.value.message
    assert "big.npy" in str(err.value)


# --------------------------------------------------------------------------- figure, metrics

def test_tasks_write_their_figure_and_metrics(tmp_path):
    scheme = tiny_scheme(evaluate=[
        {"task": "reconstruct_without_encoder", "split": "train", "num_images": 4, "ncols": 4,
         "fit": {"steps": 10}},
        {"task": "inpainting", "split": "train", "mask": "random", "fraction": 0.25,
         "num_images": 3, "ncols": 3, "fit": {"steps": 3}}])
    cfg = scheme.cfg
    ctx = EvalContext(cfg, scheme, scheme.data, tmp_path, [], 0)
    reconstruct = completion.reconstruct_without_encoder_task(cfg.evaluate[0].params, ctx)
    name = "reconstruct_without_encoder_svi_mean_train"
    assert set(reconstruct) == {f"{name}_{k}" for k in ["mse", "encoder_mse", "objective_mean",
                                                        "steps_mean", "fit_seconds"]}
    assert 1 <= reconstruct[f"{name}_steps_mean"] <= 10
    inpainting = completion.inpainting_task(cfg.evaluate[1].params, ctx)
    assert {"inpainting_random_train_hidden_mse", "inpainting_random_train_observed_mse",
            "inpainting_random_train_objective_mean"} <= set(inpainting)
    assert inpainting["inpainting_random_train_steps_mean"] == 3  # patience 0: every step
    shapes = [tf.io.decode_png(tf.io.read_file(str(p))).shape[:2] for p in ctx.figures]
    assert [p.name for p in ctx.figures] == [f"{name}.png", "inpainting_random_train.png"]
    # original | fitted | encoder (1 block of 4), original | observed | completion | encoder (1 of 3)
    assert shapes == [(2 * (3 * (SIZE + 2) + 2), 2 * (4 * (SIZE + 2) + 2)),
                      (2 * (4 * (SIZE + 2) + 2), 2 * (3 * (SIZE + 2) + 2))]


# --------------------------------------------------------------------------- tfgen complete

COMPLETE_TASK = """
[[evaluate]]
task = "complete"
num_images = 4
ncols = 4

[evaluate.fit]
steps = 30
patience = 5
"""
SAME_AS_THE_TASK = ["--num-images", "4", "--steps", "30", "--set", "ncols=4", "--set",
                    "fit.patience=5"]


def snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): hashlib.sha1(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, idx_folder) -> Path:
    out = tmp_path_factory.mktemp("complete_runs")
    config = out / "tiny.toml"
    config.write_text(tiny_config(idx_folder, out / "runs", COMPLETE_TASK))
    result = run_cli("run", str(config), "--quiet")
    assert result.returncode == 0, result.stderr
    return next((out / "runs" / "tiny").iterdir())


def test_tfgen_complete_merges_the_numbers_of_the_run_task(finished_run):
    run_dir = finished_run
    before = json.loads((run_dir / "metrics.json").read_text())
    own_figure = (run_dir / "figures" / "complete_right_half_svi_sample_test.png").read_bytes()
    result = run_cli("complete", str(run_dir), "--mask", "right_half", "--method", "svi",
                     *SAME_AS_THE_TASK)
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.strip().splitlines()) == 1 and "hidden-pixel MSE" in result.stdout
    other = run_cli("complete", str(run_dir), "--method", "map", "--fill", "mean",
                    "--num-images", "3", "--steps", "10")
    assert other.returncode == 0, other.stderr

    after = json.loads((run_dir / "metrics.json").read_text())
    for key, value in before.items():  # nothing was dropped
        assert after[key] == value, key
    entries = after["evaluations_after_run"]
    same = entries["complete split=test num_images=4 ncols=4 fill=sample fit.method=svi "
                   "fit.steps=30 fit.patience=5 mask=right_half"]
    assert ("complete split=test num_images=3 fill=mean fit.method=map fit.steps=10 "
            "mask=right_half") in entries  # other settings: an entry of their own
    assert same["step"] == before["train"]["steps"] and same["settings"]["fit"]["steps"] == 30
    name = "complete_right_half_svi_sample_test"
    compared = [k for k in before["evaluation"] if k.startswith(name) and "seconds" not in k]
    assert len(compared) == 4
    for key in compared:  # the same numbers as the task at the end of tfgen run
        assert same["results"][key] == pytest.approx(before["evaluation"][key], rel=1e-5), key
    (figure,) = same["figures"]
    assert Path(figure).is_file() and Path(figure).name.startswith(name + "_")
    assert (run_dir / "figures" / f"{name}.png").read_bytes() == own_figure  # not overwritten

    from tensorboard.backend.event_processing import event_accumulator

    events = event_accumulator.EventAccumulator(str(run_dir / "tensorboard"),
                                                size_guidance={event_accumulator.TENSORS: 0})
    events.Reload()
    tags = set(events.Tags()["tensors"])
    for suffix in ["", "_hidden_mse", "_observed_mse", "_objective_mean", "_steps_mean",
                   "_objective", "_steps", "_hidden_mse_per_image"]:  # image, scalars, histograms
        assert f"eval/{name}{suffix}" in tags, suffix


@pytest.mark.parametrize("args,message", [
    (["{missing}"], "does not exist"),
    (["{empty}"], "not a run directory"),
    (["{unfinished}"], "no checkpoint"),
    (["{run}", "--mask", "lefthalf"], "--mask: not an allowed value (did you mean 'left_half'?)"),
    (["{run}", "--method", "encoders"], "--method: not an allowed value"),
    (["{run}", "--num-images", "many"], "--num-images: expected an integer"),
    (["{run}", "--set", "fit.patiense=3"], "--set fit.patiense: unknown key"),
    (["{run}", "--mask", "file", "--mask-file", "{missing}.png"], "--mask-file: the mask file does not exist"),
])
def test_tfgen_complete_refuses_bad_input_in_one_line(finished_run, tmp_path, args, message):
    empty, unfinished = tmp_path / "empty", tmp_path / "unfinished"
    empty.mkdir()
    unfinished.mkdir()
    (unfinished / "config.toml").write_bytes((finished_run / "config.toml").read_bytes())
    (unfinished / ".lock").touch()  # as every run directory has (tfgen.runlock), empty
    places = {"missing": tmp_path / "missing", "empty": empty, "unfinished": unfinished,
              "run": finished_run}
    before = {folder: snapshot(folder) for folder in (finished_run, unfinished)}
    result = run_cli("complete", *[a.format(**places) for a in args])
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in result.stderr, lines
    for folder, files in before.items():
        assert snapshot(folder) == files  # nothing written
