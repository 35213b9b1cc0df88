"""Latent-space pictures (the 2AMU20 VAE assignment, task 3): latent_scatter (PCA against NumPy's
SVD), embedding_projector (files consistent with each other), interpolation (slerp and linear
endpoints), manifold_grid; each end to end through ``tfgen eval`` on a tiny VAE run and a
tiny PGA run; bad keys refused by name."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from conftest import blob_images, build_in_memory, run_cli, tiny_config

RNG = np.random.default_rng(5)


# --------------------------------------------------------------------------- PCA

def test_pca_coordinates_and_explained_variance_agree_with_numpy_svd():
    from tfgen.evaluation.latent_selection import pca

    # anisotropic, correlated, off-centre points in d = 6
    mixing = RNG.normal(size=(6, 6)) * np.array([5.0, 3.0, 1.0, 0.5, 0.2, 0.1])[:, None]
    points = (RNG.normal(size=(300, 6)) @ mixing + 4.0).astype(np.float32)
    fit = pca(points)
    x = points.astype(np.float64) - points.astype(np.float64).mean(0)
    u, s, vt = np.linalg.svd(x, full_matrices=False)
    np.testing.assert_allclose(fit.explained_ratio, s ** 2 / np.sum(s ** 2), rtol=1e-10)
    assert fit.explained_ratio[0] > fit.explained_ratio[1] > fit.explained_ratio[2]
    # coordinates = U S up to each component's sign
    for k in range(2):
        sign = np.sign(fit.coordinates[:, k] @ (u[:, k] * s[k]))
        np.testing.assert_allclose(fit.coordinates[:, k], sign * u[:, k] * s[k], atol=1e-9)
    # the explained ratio is the variance of each coordinate over the total variance
    np.testing.assert_allclose(fit.coordinates.var(0) / x.var(0).sum(), fit.explained_ratio[:2],
                               rtol=1e-10)
    # the sign convention: each component's largest loading is positive
    assert all(row[np.argmax(np.abs(row))] > 0 for row in fit.components)


# --------------------------------------------------------------------------- interpolation

def test_slerp_endpoints_norms_and_constant_angular_speed():
    from tfgen.evaluation.interpolation import interpolate, slerp

    a = RNG.normal(size=(5, 8))
    b = RNG.normal(size=(5, 8))
    b *= (np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1))[:, None]   # equal norms
    t = np.linspace(0, 1, 11)
    path = slerp(a, b, t)
    np.testing.assert_allclose(path[:, 0], a, atol=1e-12)
    np.testing.assert_allclose(path[:, -1], b, atol=1e-12)
    norms = np.linalg.norm(path, axis=-1)
    np.testing.assert_allclose(norms, np.linalg.norm(a, axis=-1)[:, None].repeat(11, 1), rtol=1e-10)
    # the angle from a grows linearly in t
    unit = path / norms[..., None]
    angle = np.arccos(np.clip(np.einsum("nd,ntd->nt", unit[:, 0], unit), -1, 1))
    np.testing.assert_allclose(angle, angle[:, -1:] * t[None], atol=1e-7)
    # a linear path dips inside the sphere; slerp does not
    linear = interpolate(a, b, 11, "linear")
    assert (np.linalg.norm(linear[:, 5], axis=-1) < 0.99 * norms[:, 5]).all()
    # unequal norms: endpoints exact; parallel latents fall back to the line
    c = 3.0 * a
    np.testing.assert_allclose(interpolate(a, 2.0 * b, 7, "spherical")[:, -1], 2.0 * b, rtol=1e-6)
    np.testing.assert_allclose(slerp(a, c, t), interpolate(a, c, 11, "linear"), rtol=1e-5)


def tiny_vae(dim: int = 3):
    images, labels = blob_images(12, seed=4)
    images = (images > 127).astype(np.float32)
    return build_in_memory({
        "data": {"val_split": "", "binarize": "static"},
        "model": {"prior": {"dim": dim}, "decoder": {"name": "mlp", "hidden": [16]},
                  "likelihood": {"name": "bernoulli"}},
        "inference": {"scheme": "vae", "encoder": {"name": "mlp", "hidden": [8]}},
        "train": {"compile": "graph"}, "evaluate": []}, images, labels=labels)


def test_linear_interpolation_endpoints_decode_to_the_endpoint_reconstructions():
    from tfgen.evaluation.interpolation import interpolate
    from tfgen.evaluation.latent_selection import decoded_means, latent_means

    scheme = tiny_vae()
    split = scheme.data.train
    pairs = np.array([[0, 5], [3, 7], [11, 2]])
    z = latent_means(scheme, split, "encoder", pairs.reshape(-1), seed=0)
    np.testing.assert_allclose(z, scheme.posterior(tf.constant(split.images[pairs.reshape(-1)])).loc,
                               rtol=1e-6)
    for kind in ("linear", "spherical"):
        path = interpolate(z[0::2], z[1::2], 6, kind)
        decoded = decoded_means(scheme.model, path).reshape(3, 6, *split.images.shape[1:])
        np.testing.assert_allclose(decoded[:, 0], scheme.reconstruct(split.images[pairs[:, 0]]),
                                   atol=1e-6)
        np.testing.assert_allclose(decoded[:, -1], scheme.reconstruct(split.images[pairs[:, 1]]),
                                   atol=1e-6)
        assert np.abs(decoded[:, 2] - decoded[:, 0]).max() > 1e-4   # the middle is not an end


def test_manifold_grid_runs_over_the_prior_quantiles():
    from tfgen.evaluation.interpolation import prior_quantile_grid
    from tfgen.models.priors import StandardNormalConfig, StandardNormalPrior

    grid = prior_quantile_grid(StandardNormalPrior(StandardNormalConfig(dim=2)).distribution(),
                               5, 0.05)
    q = 1.6448536   # Phi^-1(0.95)
    np.testing.assert_allclose(grid[0, 0], [-q, q], rtol=1e-5)      # top left: low z1, high z2
    np.testing.assert_allclose(grid[-1, -1], [q, -q], rtol=1e-5)
    np.testing.assert_allclose(grid[2, 2], [0.0, 0.0], atol=1e-6)
    assert (np.diff(grid[..., 0], axis=1) > 0).all() and (np.diff(grid[..., 1], axis=0) < 0).all()


# --------------------------------------------------------------------------- projector

def read_projector(log_dir: Path):
    from google.protobuf import text_format
    from tensorboard.plugins import projector

    config = projector.ProjectorConfig()
    text_format.Parse((log_dir / "projector_config.pbtxt").read_text(), config)
    reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(str(log_dir)))
    return config, reader


def test_projector_files_are_consistent_and_earlier_embeddings_stay(tmp_path):
    from tfgen.evaluation.latent_space import write_projector

    images, labels = blob_images(10, size=6, seed=2)
    points = RNG.normal(size=(10, 4)).astype(np.float32)
    write_projector(tmp_path, "first", points, labels, images / 255.0, (0.0, 1.0))
    labels2 = labels[:7].copy()
    labels2[3] = -1
    write_projector(tmp_path, "second", points[:7, :3] + 1, labels2, images[:7] / 255.0, (0.0, 1.0))
    write_projector(tmp_path, "first", points * 2, labels, images / 255.0, (0.0, 1.0))  # replaced
    config, reader = read_projector(tmp_path)
    assert [e.tensor_name.split("/")[0] for e in config.embeddings] == ["second", "first"]
    expected = {"first": (points * 2, labels), "second": (points[:7, :3] + 1, labels2)}
    for embedding in config.embeddings:
        values, want_labels = expected[embedding.tensor_name.split("/")[0]]
        np.testing.assert_array_equal(reader.get_tensor(embedding.tensor_name), values)
        lines = (tmp_path / embedding.metadata_path).read_text().splitlines()
        assert lines[0] == "index\tlabel" and len(lines) - 1 == len(values)
        assert [line.split("\t")[1] for line in lines[1:]] == [
            str(v) if v >= 0 else "unknown" for v in want_labels]
        sprite = tf.io.decode_png(tf.io.read_file(str(tmp_path / embedding.sprite.image_path))).numpy()
        side = int(np.ceil(np.sqrt(len(values))))
        assert list(embedding.sprite.single_image_dim) == [6, 6]
        assert sprite.shape == (6 * side, 6 * side, 3)
        # thumbnail i sits at row i // side, column i % side
        i = len(values) - 1
        r, c = divmod(i, side)
        np.testing.assert_array_equal(sprite[6 * r:6 * r + 6, 6 * c:6 * c + 6, 0], images[i, ..., 0])
    assert len(list(tmp_path.glob("embeddings-*.index"))) == 1   # older checkpoints deleted


def test_sprite_shrinks_thumbnails_to_the_projector_limit():
    from tfgen import figures

    sprite, (h, w) = figures.sprite(np.zeros((5000, 200, 200, 1), np.float32))
    assert sprite.shape[0] <= figures.MAX_SPRITE and sprite.shape == (71 * h, 71 * w, 3)
    assert h == w == 8192 // 71


# --------------------------------------------------------------------------- end to end

LATENT_TASKS = """
[[evaluate]]
task = "latent_scatter"

[[evaluate]]
task = "embedding_projector"
num_points = 30

[[evaluate]]
task = "interpolation"
pairs = [[0, 1], [2, 3]]
steps = 5
"""


def run_tiny(idx_folder, out: Path, replace: dict[str, str], extra: str) -> Path:
    text = tiny_config(idx_folder, out / "runs", extra=extra, epochs=1)
    for old, new in replace.items():
        assert old in text
        text = text.replace(old, new)
    config = out / "tiny.toml"
    config.write_text(text)
    result = run_cli("run", str(config), "--quiet")
    assert result.returncode == 0, result.stderr
    return next((out / "runs" / "tiny").iterdir())


@pytest.fixture(scope="module")
def vae_run(tmp_path_factory, idx_folder) -> Path:
    """d = 2 VAE with the new tasks in its own list."""
    return run_tiny(idx_folder, tmp_path_factory.mktemp("latent_vae"), {},
                    LATENT_TASKS + '\n[[evaluate]]\ntask = "manifold_grid"\nsize = 6\n')


PGA = """[inference]
scheme = "pga"
particles = 3
step_size = 1e-3

[inference.posterior_fit]
steps = 20
"""


@pytest.fixture(scope="module")
def pga_run(tmp_path_factory, idx_folder) -> Path:
    """d = 3 PGA (no encoder): PCA, particle means, test-time fits."""
    return run_tiny(idx_folder, tmp_path_factory.mktemp("latent_pga"), {
        "dim = 2": "dim = 3",
        '[inference]\nscheme = "vae"\n\n[inference.encoder]\nname = "mlp"\nhidden = [32]\n': PGA,
    }, "")


def entries(run: Path) -> dict:
    return json.loads((run / "metrics.json").read_text()).get("evaluations_after_run", {})


def test_vae_run_draws_the_latent_pictures_and_eval_repeats_them(vae_run):
    metrics = json.loads((vae_run / "metrics.json").read_text())
    assert metrics["status"] == "completed"
    own = metrics["evaluation"]
    assert own["interpolation_linear_encoder_test_pairs_rows"] == 2.0
    assert own["embedding_projector_encoder_test_points"] == 30.0
    assert "latent_scatter_encoder_test_pc1_variance_ratio" not in own   # d = 2: no PCA
    for name in ["latent_scatter_encoder_test.png", "interpolation_linear_encoder_test_pairs.png",
                 "manifold_grid.png"]:
        assert (vae_run / "figures" / name).is_file(), name
    grid = tf.io.decode_png(tf.io.read_file(str(vae_run / "figures" / "manifold_grid.png"))).numpy()
    assert grid.shape[:2] == (2 * 6 * 28, 2 * 6 * 28)    # 6 x 6 images, no padding, upscaled 2x
    strip = tf.io.decode_png(tf.io.read_file(
        str(vae_run / "figures" / "interpolation_linear_encoder_test_pairs.png"))).numpy()
    assert strip.shape[:2] == (2 * (2 * 30 + 2), 2 * (7 * 30 + 2))   # 2 rows of 5 + 2 originals
    config, reader = read_projector(vae_run / "tensorboard")
    (embedding,) = config.embeddings
    assert reader.get_tensor(embedding.tensor_name).shape == (30, 2)
    tags = {v.tag for path in (vae_run / "tensorboard").glob("events*")
            for event in tf.compat.v1.train.summary_iterator(str(path)) for v in event.summary.value}
    assert {"eval/latent_scatter_encoder_test", "eval/interpolation_linear_encoder_test_pairs",
            "eval/manifold_grid"} <= tags

    # tfgen eval: other settings, the same encoder latents as the encoder gives now
    result = run_cli("eval", str(vae_run), "--task", "interpolation", "--task", "latent_scatter",
                     "--set", "split=val")
    assert result.returncode == 0, result.stderr
    found = {e["task"]: e for e in entries(vae_run).values()}
    assert found["interpolation"]["results"]["interpolation_linear_encoder_val_random_rows"] == 8.0
    assert all(Path(f).is_file() for e in found.values() for f in e["figures"])
    ratio = {}
    for kind in ["linear", "spherical"]:
        result = run_cli("eval", str(vae_run), "--task", "interpolation", "--set", f"kind={kind}",
                         "--set", "pairs=[[0, 1]]")
        assert result.returncode == 0, result.stderr
        ratio[kind] = [e["results"] for e in entries(vae_run).values()
                       if e["settings"]["task"] == "interpolation" and e["settings"]["kind"] == kind
                       and e["settings"]["pairs"] == [[0, 1]]][0][
                           f"interpolation_{kind}_encoder_test_pairs_mid_norm_ratio"]
    # |(a + b) / 2| <= (|a| + |b|) / 2; the arc's midpoint is that chord's, pushed out by
    # 1 / cos(W / 2) >= 1
    assert 0.0 < ratio["linear"] <= 1.0 + 1e-6 and ratio["spherical"] >= ratio["linear"] - 1e-6


def test_pga_run_scatter_is_the_pca_of_its_particle_means(pga_run):
    from tfgen.evaluation.latent_selection import pca
    from tfgen.runner import open_run

    result = run_cli("eval", str(pga_run), "--task", "latent_scatter", "--task",
                     "embedding_projector", "--task", "interpolation", "--set", "num_points=50")
    # num_points is not a key of interpolation; the error names the option that set it
    assert result.returncode == 2 and "tfgen eval: --set num_points: unknown key" in result.stderr
    for task in ["latent_scatter", "embedding_projector"]:
        result = run_cli("eval", str(pga_run), "--task", task, "--set", "num_points=50")
        assert result.returncode == 0, result.stderr
    result = run_cli("eval", str(pga_run), "--task", "interpolation", "--set", "num_pairs=2")
    assert result.returncode == 0, result.stderr
    found = {e["task"]: e["results"] for e in entries(pga_run).values()}
    assert found["interpolation"]["interpolation_linear_posterior_test_random_rows"] == 2.0

    opened = open_run(str(pga_run))
    cloud = opened.scheme.particle_cloud.numpy()                  # [M, N, d]
    means = cloud.mean(axis=1)[:50]
    config, reader = read_projector(pga_run / "tensorboard")
    (embedding,) = config.embeddings
    np.testing.assert_allclose(reader.get_tensor(embedding.tensor_name), means, rtol=1e-6)
    lines = (pga_run / "tensorboard" / embedding.metadata_path).read_text().splitlines()
    assert [int(line.split("\t")[1]) for line in lines[1:]] == list(opened.data.train.labels[:50])
    ratio = pca(means).explained_ratio
    scatter = found["latent_scatter"]
    assert scatter["latent_scatter_latents_train_pc1_variance_ratio"] == pytest.approx(ratio[0])
    assert scatter["latent_scatter_latents_train_pc12_variance_ratio"] == pytest.approx(ratio[:2].sum())


@pytest.mark.parametrize("args,message", [
    (["--task", "latent_scatter", "--set", "sourse=encoder"], "unknown key (did you mean 'source'?)"),
    (["--task", "latent_scatter", "--set", "source=encoder"],
     "tfgen eval: --set source: task 'latent_scatter' with source = 'encoder' needs an amortized"),
    (["--task", "latent_scatter", "--set", "source=latents", "--set", "split=test"],
     "tfgen eval: --set split: source = 'latents' are the training images' latents"),
    (["--task", "interpolation", "--set", "kind=cubic"], "tfgen eval: --set kind: not an allowed value"),
    (["--task", "interpolation", "--set", "pairs=[[0, 40]]"],
     "tfgen eval: --set pairs[0]: the test split has 40 images"),
    (["--task", "interpolation", "--set", "pairs=[[0, 1, 2]]"], "tfgen eval: --set pairs[0]: a pair is"),
    (["--task", "manifold_grid"], "tfgen eval: --task: task 'manifold_grid' decodes a grid over a 2-D"),
])
def test_bad_keys_are_refused_naming_the_key(pga_run, args, message):
    before = (pga_run / "metrics.json").read_text()
    result = run_cli("eval", str(pga_run), *args)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "allowed" in lines[0], lines
    assert (pga_run / "metrics.json").read_text() == before
