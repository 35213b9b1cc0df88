"""The Python API (tfgen.load_config, tfgen.run, tfgen.open_run): the README's snippet runs as
written; an opened run's methods give the numbers of the run's own tasks; what its scheme
lacks is refused with the CLI's error."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO, STEPS, run_cli, tiny_config

README_CONFIG = "experiments/vae_bernoulli.toml"


def readme_snippet() -> str:
    """The first ```python block of the README's section "Using a run from Python"."""
    section = (REPO / "README.md").read_text().split("## Using a run from Python", 1)[1]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


def test_import_tfgen_imports_no_tensorflow():
    """The CLI imports TensorFlow itself, quietly: ``import tfgen`` must not."""
    code = "import sys, tfgen; print('tensorflow' in sys.modules, sorted(dir(tfgen)))"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    imported, names = result.stdout.split(" ", 1)
    assert imported == "False"
    assert all(name in names for name in ("'load_config'", "'open_run'", "'run'"))


def test_readme_snippet_runs(tmp_path, idx_folder):
    """The README's snippet, with the experiment file replaced by the tiny config."""
    code = readme_snippet()
    assert README_CONFIG in code
    config = tmp_path / "tiny.toml"
    config.write_text(tiny_config(idx_folder, tmp_path / "runs", epochs=2))
    namespace: dict = {}
    exec(compile(code.replace(README_CONFIG, str(config)), "README.md", "exec"), namespace)
    run = namespace["run"]
    assert run.run_dir.parent == tmp_path / "runs" / "tiny" and run.step == 4  # 1 epoch of 4
    assert namespace["samples"].shape == (16, 28, 28, 1)
    assert namespace["probabilities"].shape == (8, 28, 28, 1)
    log_px = namespace["log_px"]
    assert log_px.shape == (8,) and np.isfinite(log_px).all() and (log_px < 0).all()
    images, filled = namespace["images"], namespace["filled"]
    assert filled.shape == images.shape
    np.testing.assert_array_equal(filled[:, :, :14], images[:, :, :14])  # the observed half
    assert not np.array_equal(filled[:, :, 14:], images[:, :, 14:])
    assert namespace["test_elbo"] == run.metrics["evaluation"]["test_elbo"] < 0
    assert namespace["latent_dim"] == 2 and namespace["decoder"].count_params() > 0


@pytest.fixture(scope="module")
def opened(finished):
    import tfgen

    return tfgen.open_run(finished)


def test_methods_give_the_runs_own_numbers(opened):
    own = opened.metrics["evaluation"]
    images = opened.data.test.images[:16]  # the task's max_images = 16, samples = 8
    assert opened.log_likelihood(images, samples=8).mean() == pytest.approx(
        own["test_log_likelihood"], rel=1e-6)

    q = opened.encode(images)
    mean, log_variance = np.split(opened.encoder(images).numpy(), 2, axis=-1)
    np.testing.assert_allclose(q.mean().numpy(), mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(q.stddev().numpy(), np.exp(0.5 * log_variance), rtol=1e-5)
    assert set(opened.networks) == {"decoder", "encoder"}

    first, again, other = (opened.sample(4, seed=s) for s in (1, 1, 2))
    np.testing.assert_array_equal(first, again)
    assert not np.allclose(first, other)
    drawn = opened.sample(4, seed=1, show="sample")
    assert set(np.unique(drawn)) <= {0.0, 1.0}


def test_a_vaes_particle_gaussian_is_fitted_to_the_encoder_means(opened):
    """``particle_gaussian`` on a VAE: N(mu, Sigma) of E_q[z | y_m] over the training images."""
    from tfgen.inference import samplers

    means = opened.encode(opened.data.train.images).mean().numpy().astype(np.float64)
    np.testing.assert_allclose(samplers.training_latents(opened._scheme), means, rtol=1e-5,
                               atol=1e-6)
    z = samplers.sample_latents("particle_gaussian", opened._scheme, 20000, seed=3).numpy()
    np.testing.assert_allclose(z.mean(0), means.mean(0), atol=0.05 * means.std(0).max())
    np.testing.assert_allclose(np.cov(z.T), np.cov(means.T), rtol=0.1, atol=1e-3)
    assert opened.sample(3, sampler="particle_gaussian").shape == (3, 28, 28, 1)


def test_complete_takes_a_mask_name_or_array(opened):
    images = opened.data.test.images[:3]
    named = opened.complete(images, mask="right_half", steps=5, fill="mean")
    hidden = np.zeros((28, 28), bool)
    hidden[:, 14:] = True
    given = opened.complete(images, mask=hidden, steps=5, fill="mean")
    np.testing.assert_allclose(named.completion, given.completion, rtol=1e-6)
    np.testing.assert_array_equal(given.completion[:, :, :14], images[:, :, :14])


@pytest.mark.parametrize("call,message", [
    (lambda r: r.complete(r.data.test.images[:2], method="svii"),
     "complete(method=...): not an allowed value (did you mean 'svi'?); given 'svii'"),
    (lambda r: r.complete(r.data.test.images[:2], stepz=3),
     "complete(stepz=...): unknown key (did you mean 'steps'?)"),
    (lambda r: r.complete(r.data.test.images[:2], mask=np.zeros((27, 28), bool)),
     "complete(mask=...): a mask array must be boolean (True = hidden)"),
    (lambda r: r.encode(np.zeros((2, 27, 28))),
     "encode(images): images of the run's shape are needed; given 'shape [2, 27, 28]'"),
    (lambda r: r.sample(0), "sample(n=...): must be a positive integer; given 0"),
    (lambda r: r.sample(2, sampler="particle_gausian"),
     "sample(sampler=...): unknown sampler; given 'particle_gausian'; allowed: 'prior', "
     "'particle_gaussian', 'gmm'"),
    (lambda r: r.decode(np.zeros((2, 3))), "decode(z): latents must be [n, d]"),
])
def test_bad_arguments_are_one_line(opened, call, message):
    from tfgen.errors import ConfigError

    with pytest.raises(ConfigError) as caught:
        call(opened)
    assert message in str(caught.value) and "\n" not in str(caught.value)


GAN = """
[experiment]
name = "tiny_gan"
seed = 3
output_dir = "{out}"

[data]
source = "idx"
path = "{idx}"
train_split = "train[:64]"
val_split = ""
test_split = "test"

[model.prior]
dim = 2

[model.decoder]
name = "mlp"
hidden = [16]

[model.likelihood]
name = "normal"
mean_activation = "sigmoid"

[model.discriminator]
name = "mlp"
hidden = [16]

[inference]
scheme = "gan"

[train]
epochs = 1
batch_size = 32

[[evaluate]]
task = "samples"
num_images = 4
"""


@pytest.fixture(scope="module")
def gan_run(tmp_path_factory, idx_folder):
    out = tmp_path_factory.mktemp("gan")
    config = out / "gan.toml"
    config.write_text(GAN.format(out=out / "runs", idx=idx_folder))
    result = run_cli("run", str(config), "--quiet", *STEPS)
    assert result.returncode == 0, result.stderr
    [run] = (out / "runs" / "tiny_gan").iterdir()
    return run


def test_what_a_gan_lacks_is_refused_with_the_clis_error(gan_run):
    import tfgen
    from tfgen.errors import ConfigError

    run = tfgen.open_run(gan_run)
    assert run.sample(3).shape == (3, 28, 28, 1)  # what it has works
    assert set(run.networks) == {"decoder", "discriminator"}
    needs_q = ("needs a posterior q(z | y) (an encoder, or one fitted at test time), which "
               "scheme 'gan' does not have")
    images = run.data.test.images[:2]
    for call, needed_by, needs in [
            (lambda: run.encode(images), "encode()", needs_q),
            (lambda: run.log_likelihood(images), "log_likelihood(estimator='is')",
             "needs a log-likelihood estimate, which scheme 'gan' does not have"),
            (lambda: run.encoder, "encoder", "needs an amortized posterior q(z | y)")]:
        with pytest.raises(ConfigError) as caught:
            call()
        text = str(caught.value)
        assert text.startswith(f"{gan_run / 'config.toml'}: inference.scheme: {needed_by} "
                               f"{needs}"), text
    with pytest.raises(ConfigError) as caught:
        run.sample(2, sampler="particle_gaussian")
    assert ("sample(sampler=...): sampler 'particle_gaussian' needs latents of the training "
            "images (a latent cloud, or an encoder), which scheme 'gan' does not have"
            in str(caught.value)), str(caught.value)
    # the same refusal as the command line's, for the same missing capability
    cli = run_cli("eval", str(gan_run), "--task", "elbo")
    assert cli.returncode == 2 and needs_q in cli.stderr


def test_a_gan_exports_without_encode(gan_run, tmp_path):
    import tensorflow as tf

    result = run_cli("export", str(gan_run), "--out", str(tmp_path / "gan"))
    assert result.returncode == 0, result.stderr
    assert "signatures decode, sample; " in result.stdout
    model = tf.saved_model.load(str(tmp_path / "gan"))
    assert sorted(model.signatures) == ["decode", "sample"]
    decoded = model.signatures["decode"](z=tf.zeros([2, 2]))
    assert sorted(decoded) == ["decoder_output", "loc", "mean", "scale"]  # the Normal's
