"""Sample-quality ``[[evaluate]]`` tasks: ``sample_quality`` (FID, KID, precision and recall of
generated images against a split's images) and ``feature_classifier`` (train or load the
feature classifier and report its accuracy).

``sample_quality`` draws ``num_samples`` latents from a sampler (``prior``,
``particle_gaussian``, ``gmm``: :mod:`tfgen.inference.samplers`), decodes them (the
likelihood's mean, or a draw), and compares them with the first ``max_reference`` images of
``reference_split`` in a feature space:

* ``features = "classifier"`` (default): tfgen's own classifier
  (:mod:`tfgen.evaluation.classifier`), trained on the labelled training split once per
  recipe and cached under ``<output_dir>/.cache/classifiers/``; its test accuracy is
  reported beside the FID (``fid_classifier_accuracy``).
* ``features = "inception"``: the InceptionV3 pool features of the ``tfgen[fid]`` extra,
  computed out of process (:mod:`tfgen.evaluation.inception`).

The formulas are :mod:`tfgen.evaluation.distances` (FID: Heusel et al. 2017; KID: Binkowski
et al. 2018; precision/recall: Kynkaenniemi et al. 2019).  With ``baseline = true`` the
same numbers are computed for as many randomly chosen training images in place of the
generated ones: the score of real data, the floor the model's numbers are read against.
"""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Literal

import numpy as np
import tensorflow as tf

from tfgen import figures
from tfgen.config import Config
from tfgen.errors import ConfigError
from tfgen.evaluation import distances, inception
from tfgen.evaluation.classifier import ClassifierConfig, load_or_train
from tfgen.evaluation.tasks import EvalContext, SplitName, task_key
from tfgen.inference.capabilities import DecoderLikelihood, ImageSampler, has, require
from tfgen.inference.samplers import GMMConfig, Sampler, check_sampler, sample_latents
from tfgen.registry import EVALUATIONS
from tfgen.runtime import compile_step
from tfgen.footprint import UNCOUNTED, batch_bytes
from tfgen.schema import TaskConfig, setting

Features = Literal["classifier", "inception"]


def classifier_root(ctx: EvalContext) -> Path:
    """``<output_dir>/.cache/classifiers``: a run directory is ``<output_dir>/<name>/<stamp>``."""
    return ctx.run_dir.parent.parent / ".cache" / "classifiers"


def check_classifier_data(cfg: Config, classifier: ClassifierConfig, key: str) -> None:
    """The classifier trains and is tested on the data set's own labelled splits."""
    for name in ("train_split", "test_split"):
        if not getattr(classifier, name):
            raise ConfigError(cfg.source_file, f"{key}.{name}", "the feature classifier needs "
                              "the data set's labelled training and test images", "",
                              "a split of the data set, e.g. 'train' and 'test'")


# --------------------------------------------------------------------------- sample_quality

@dataclasses.dataclass
class SampleQualityConfig(TaskConfig):
    sampler: Sampler = setting("prior", help="where the latents come from: the prior, a Gaussian "
                                             "(particle_gaussian) or a mixture (gmm) fitted to "
                                             "the training latents")
    num_samples: int = setting(10000, at_least=10, at_most=1_000_000, help="generated images")
    show: Literal["auto", "mean", "sample"] = setting(
        "auto", help="decoder mean E[y|z], or a draw y ~ p(y|z); auto: a draw when data.binarize "
                     "is on (the reference images are binary then), else the mean")
    reference_split: SplitName = setting("test", help="the real images compared with")
    max_reference: int = setting(10000, at_least=0, help="first N images of the split (0 = all)")
    features: Features = setting("classifier", help="classifier: tfgen's own, trained on the "
                                                    "labelled training split and cached; "
                                                    "inception: InceptionV3 (pip install "
                                                    "tfgen[fid])")
    classifier: ClassifierConfig = setting(factory=ClassifierConfig)
    gmm: GMMConfig = setting(factory=GMMConfig)
    kid_subsets: int = setting(100, at_least=1, at_most=10000, help="KID: random subsets averaged")
    kid_subset_size: int = setting(1000, at_least=2, help="KID: images per subset (at most the "
                                                          "sets' sizes)")
    nearest_neighbours: int = setting(3, at_least=1, at_most=100, help="precision/recall: the k of "
                                                                       "the k-NN balls")
    baseline: bool = setting(True, help="also score as many training images (the real-data floor)")
    inception_python: str = setting("", help="interpreter with the tfgen[fid] extra ('' = this "
                                             "one)")
    batch_size: int = setting(500, at_least=1, help="images decoded and featurized at once")

    def check(self, cfg: Config) -> None:
        key = task_key(cfg, self)
        if not (has(cfg, ImageSampler) and self.sampler == "prior"):  # a model's own samples
            require(cfg, DecoderLikelihood, key, "task 'sample_quality'",
                    alternative="drop this [[evaluate]] entry")
            check_sampler(cfg, self.sampler, f"{key}.sampler")
        if not getattr(cfg.data, f"{self.reference_split}_split"):
            raise ConfigError(cfg.source_file, f"{key}.reference_split",
                              f"data.{self.reference_split}_split is empty",
                              self.reference_split, "a configured split")
        if self.nearest_neighbours >= min(self.num_samples, self.max_reference or self.num_samples):
            raise ConfigError(cfg.source_file, f"{key}.nearest_neighbours",
                              "k must be smaller than the number of images in each set",
                              self.nearest_neighbours, "< num_samples and < max_reference")
        if self.features == "classifier":
            check_classifier_data(cfg, self.classifier, f"{key}.classifier")
        else:
            gone = inception.missing(self.inception_python)
            if gone:
                raise ConfigError(cfg.source_file, f"{key}.features",
                                  f"InceptionV3 features need the fid extra; "
                                  f"{inception.interpreter(self.inception_python)} cannot import "
                                  f"{', '.join(gone)}", self.features,
                                  f"'classifier', or `{inception.INSTALL}` "
                                  "(or inception_python = an interpreter that has it)")

    def peak(self, shape, act):
        """``batch_size`` images decoded at once, and the ``num_samples`` generated ones kept."""
        return (batch_bytes(shape, act, self.batch_size, generated=self.num_samples),
                ("batch_size", "num_samples"))


def shown(params: SampleQualityConfig, data) -> str:
    """``show`` with ``auto`` resolved: binarized data are compared with draws, as binary images."""
    if params.show != "auto":
        return params.show
    return "sample" if data.config.binarize != "none" else "mean"


def generate(scheme, params: SampleQualityConfig, seed: int, compile_mode: str) -> np.ndarray:
    """``num_samples`` decoded images [n, H, W, C] in the data's pixel range (a model with no
    latent to decode, an :class:`ImageSampler`, draws its own)."""
    if isinstance(scheme, ImageSampler):
        low, high = scheme.data.pixel_range
        mean = shown(params, scheme.data) == "mean"
        return np.concatenate([np.clip(scheme.sample_images(
            min(params.batch_size, params.num_samples - i), seed + i, mean=mean).numpy(), low, high)
            for i in range(0, params.num_samples, params.batch_size)])
    z = sample_latents(params.sampler, scheme, params.num_samples, seed, params.gmm)
    model, lik = scheme.model, scheme.model.likelihood
    low, high = scheme.data.pixel_range
    show = shown(params, scheme.data)

    def decode(z_batch, batch_seed):
        out = model.decode(z_batch)
        images = lik.mean(out) if show == "mean" else lik.sample(out, seed=batch_seed)
        return tf.clip_by_value(tf.cast(images, tf.float32), low, high)

    decode = compile_step(decode, compile_mode)
    return np.concatenate([decode(z[i:i + params.batch_size], tf.constant([seed, 2 + i], tf.int32)).numpy()
                           for i in range(0, params.num_samples, params.batch_size)])


def scores(real: np.ndarray, fake: np.ndarray, params: SampleQualityConfig, seed: int,
           name: str) -> dict:
    kid, kid_std = distances.kid(real, fake, params.kid_subsets, params.kid_subset_size, seed)
    precision, recall = distances.precision_recall(real, fake, params.nearest_neighbours)
    return {f"fid_{name}": distances.fid(real, fake), f"kid_{name}": kid,
            f"kid_{name}_std": kid_std, f"precision_{name}": precision, f"recall_{name}": recall}


@EVALUATIONS.register("sample_quality", config=SampleQualityConfig)
def sample_quality_task(params: SampleQualityConfig, ctx: EvalContext) -> dict:
    """FID, KID and precision/recall of generated images against a split's, on the features of
    tfgen's own classifier (its accuracy beside the FID) or InceptionV3 (the fid extra)."""
    seed = ctx.cfg.experiment.seed
    key = task_key(ctx.cfg, params)
    split = ctx.split(params.reference_split, f"{key}.reference_split")
    reference = split.images[:params.max_reference or len(split)]
    start = time.monotonic()
    generated = generate(ctx.scheme, params, seed, ctx.cfg.train.compile)
    results: dict = {}
    if params.features == "classifier":
        model = load_or_train(params.classifier, ctx.data, classifier_root(ctx),
                              f"{task_key(ctx.cfg, params)}.classifier")
        extract = lambda images: model.features(images, params.batch_size)  # noqa: E731
        results.update({"fid_classifier_accuracy": model.accuracy,
                        "fid_classifier_accuracy_split": model.accuracy_split,
                        "fid_classifier_train_seconds": model.train_seconds,
                        "fid_classifier_cached": not model.trained,
                        "fid_classifier_path": str(model.path)})
    else:
        extract = lambda images: inception.features(  # noqa: E731
            images, ctx.data.pixel_range, params.inception_python)
    real = extract(reference)
    name = f"{params.features}_{params.sampler}"
    results.update(scores(real, extract(generated), params, seed, name))
    if params.baseline:
        train = ctx.data.train.images
        rng = np.random.default_rng(seed)
        chosen = train[np.sort(rng.choice(len(train), min(params.num_samples, len(train)),
                                          replace=False))]
        if ctx.data.config.binarize == "dynamic":  # binary, as the evaluation splits are
            low, high = ctx.data.pixel_range
            unit = (chosen - low) / (high - low)
            chosen = low + (high - low) * (rng.random(unit.shape) < unit).astype(np.float32)
        results.update(scores(real, extract(chosen), params, seed,
                              f"{params.features}_train_images"))
    results.update({"fid_show": shown(params, ctx.data), "fid_num_samples": params.num_samples, "fid_num_reference": len(reference),
                    f"fid_{name}_seconds": round(time.monotonic() - start, 3)})
    grid = figures.image_grid(generated[:64], 8, ctx.data.pixel_range)
    figures.write_png(ctx.figure(f"quality_samples_{params.sampler}.png"), grid)
    return results


# --------------------------------------------------------------------------- feature_classifier

@dataclasses.dataclass
class FeatureClassifierTaskConfig(TaskConfig):
    classifier: ClassifierConfig = setting(factory=ClassifierConfig)

    def check(self, cfg: Config) -> None:
        check_classifier_data(cfg, self.classifier, f"{task_key(cfg, self)}.classifier")

    def peak(self, shape, act):
        return UNCOUNTED  # the classifier's training batches


@EVALUATIONS.register("feature_classifier", config=FeatureClassifierTaskConfig)
def feature_classifier_task(params: FeatureClassifierTaskConfig, ctx: EvalContext) -> dict:
    """Train (or load from the cache) the classifier whose features FID uses; its accuracy."""
    model = load_or_train(params.classifier, ctx.data, classifier_root(ctx),
                          f"{task_key(ctx.cfg, params)}.classifier")
    return {"feature_classifier_accuracy": model.accuracy,
            "feature_classifier_accuracy_split": model.accuracy_split,
            "feature_classifier_train_seconds": model.train_seconds,
            "feature_classifier_cached": not model.trained,
            "feature_classifier_path": str(model.path)}
