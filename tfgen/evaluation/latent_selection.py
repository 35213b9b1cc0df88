"""The latents of a split's images: where they come from, which images they are, their PCA, and
the images decoded back from latents.  Every task that looks at the latent space draws on it:
``latent_scatter`` and ``embedding_projector`` (:mod:`tfgen.evaluation.latent_space`),
``interpolation`` (:mod:`tfgen.evaluation.interpolation`) and the latent-geometry tasks
(:mod:`tfgen.geometry.tasks`).

Sources, each asked of the scheme through its capability:

* ``encoder`` -- the means mu_phi(y) of an amortized posterior q_phi(z | y)
  (:class:`~tfgen.inference.capabilities.AmortizedPosterior`), any split (the 2AMU20 VAE assignment,
  task 3a).
* ``posterior`` -- the means of the scheme's q(z | y) for any image
  (:class:`~tfgen.inference.capabilities.Posterior`): the encoder's, or for a scheme without one
  a diagonal Gaussian fitted at test time by svi
  (:class:`~tfgen.inference.fitting.FittedPosterior`, the scheme's ``inference.posterior_fit``).
* ``latents`` -- the scheme's per-datapoint latents of the training images
  (:class:`~tfgen.inference.capabilities.PerDatapointLatents`): svi's means mu_m, map's points
  z_m, and for PGA the mean of each image's N particles, 1/N sum_n X^{n,m}.  Training split
  only, no optimisation.
* ``cloud`` -- the same per-datapoint latents, every one a point (for PGA every particle,
  labelled with its image's label): a seeded random subset of them.
* ``auto`` -- ``encoder`` if the scheme has one, else the task's per-datapoint source
  (``latents`` or ``cloud``; none for ``interpolation``, which joins test images) on the
  training split, else ``posterior``; ``split = "auto"`` is the training split for a
  per-datapoint source and the test split otherwise.

Except for ``cloud``, the first ``num_points`` images of the split are used, so two schemes are
compared on the same images (the 2AMU20 VAE assignment, task 3a: the first 1000 test images).

PCA (d > 2; the 2AMU20 VAE assignment, task 3b): the points X [n, d] are centred, X - mean = U S V^T
(NumPy's SVD in float64), the coordinates are the first two columns of (X - mean) V = U S, and
component k explains S_k^2 / sum_j S_j^2 of the total variance (Jolliffe 2002, Principal
Component Analysis, sections 1.1 and 3.5).  Each component's sign is fixed so that its largest
loading is positive, so the picture does not flip between runs of the same latents.
"""
from __future__ import annotations

from typing import Literal, NamedTuple

import numpy as np
import tensorflow as tf

from tfgen.config import Config
from tfgen.data import Split
from tfgen.errors import ConfigError
from tfgen.evaluation.tasks import EvalContext, task_key
from tfgen.inference.capabilities import (AmortizedPosterior, PerDatapointLatents, Posterior,
                                          has, require)
from tfgen.schema import setting

Source = Literal["auto", "encoder", "posterior", "latents"]
SourceSplit = Literal["auto", "train", "val", "test"]
#: the sources that read the per-datapoint latents (training images only)
PER_DATAPOINT = ("latents", "cloud")
#: the capability each source needs, and what to offer instead
NEEDS = {"encoder": (AmortizedPosterior, "source = 'posterior' or 'latents'"),
         "posterior": (Posterior, "source = 'latents'"),
         "latents": (PerDatapointLatents, "source = 'encoder' or 'posterior'")}


def source_field(auto: str = "encoder, else latents, else posterior"):
    return setting("auto", help="encoder: the encoder's means; posterior: q(z|y) means (the "
                                "encoder's, or fitted at test time); latents: per-datapoint "
                                "latents of the training images (PGA: mean over particles); "
                                f"auto: {auto}")


def split_field():
    return setting("auto", help="whose latents: auto = train for source 'latents', else test")


def resolve_source_split(cfg: Config, source: str, split: str,
            per_datapoint: str | None = "latents") -> tuple[str, str]:
    """(source, split) with ``auto`` replaced by the scheme's default: ``per_datapoint`` is
    the source ``auto`` takes for the training split of a scheme with per-datapoint latents
    and no encoder (``latents``, ``cloud``, or None: ``posterior``, on the test split by
    default)."""
    if source == "auto":
        source = ("encoder" if has(cfg, AmortizedPosterior)
                  else per_datapoint if (per_datapoint and has(cfg, PerDatapointLatents)
                                         and split in ("auto", "train"))
                  else "posterior")
    if split == "auto":
        split = "train" if source in PER_DATAPOINT else "test"
    return source, split


def resolve_task_source_split(cfg: Config, params) -> tuple[str, str]:
    """:func:`resolve_source_split` for a task with ``source`` and ``split`` keys (its class's
    ``prefer_latents``: whether ``auto`` takes the per-datapoint ``latents``)."""
    return resolve_source_split(cfg, params.source, params.split,
                                "latents" if params.prefer_latents else None)


def check_source(cfg: Config, params, task: str) -> tuple[str, str]:
    """Load-time: the scheme has what the task's ``source`` needs, and the split exists."""
    key = task_key(cfg, params)
    source, split = resolve_task_source_split(cfg, params)
    capability, alternative = NEEDS[source]
    require(cfg, capability, f"{key}.source", f"task {task!r} with source = {source!r}",
            given=params.source, alternative=alternative)
    if source == "latents" and split != "train":
        raise ConfigError(cfg.source_file, f"{key}.split", "source = 'latents' are the training "
                          "images' latents", params.split, "'train' or 'auto'")
    if not getattr(cfg.data, f"{split}_split"):
        raise ConfigError(cfg.source_file, f"{key}.split", f"task {task!r} uses the {split} "
                          f"split, but data.{split}_split is empty", params.split,
                          "a configured split")
    return source, split


def latent_dim(cfg: Config) -> int | None:
    return getattr(cfg.model.prior.params, "dim", None)


# --------------------------------------------------------------------------- the latents

def latent_means(scheme, split: Split, source: str, indices: np.ndarray, seed: int,
                 batch: int = 500) -> np.ndarray:
    """The latents [len(indices), d] of the split's images ``indices`` from a resolved source
    other than ``cloud``."""
    indices = np.asarray(indices, np.int64)
    if source == "latents":
        cloud = np.asarray(scheme.latent_cloud())
        per_image = len(cloud) // len(split)   # PGA: N particles per image, image-major
        return cloud.reshape(len(split), per_image, -1).mean(axis=1)[indices].astype(np.float32)
    images = split.images[indices]
    parts = []
    for i, lo in enumerate(range(0, len(images), batch)):
        chunk = tf.constant(images[lo:lo + batch])
        q = (scheme.posterior(chunk) if source == "encoder"
             else scheme.posterior_for(chunk, [seed, 900 + i]))
        parts.append(np.asarray(q.loc, np.float32))
    return np.concatenate(parts)


def cloud_rows(scheme, split: Split, num_points: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(points [n, d], the image index of each): ``num_points`` of the per-datapoint latents
    (every particle a row, image-major) drawn at random from ``seed``, in their cloud order."""
    cloud = np.asarray(scheme.latent_cloud())
    per_image = len(cloud) // len(split)
    rows = np.sort(np.random.default_rng([seed, 7]).permutation(len(cloud))[:num_points])
    return cloud[rows], rows // per_image


class Latents(NamedTuple):
    points: np.ndarray   # [n, d]
    labels: np.ndarray   # [n], -1 where unknown
    images: np.ndarray   # [n, H, W, C], the image of each point
    source: str          # resolved
    split: str           # resolved

    @property
    def label(self) -> str:
        return f"{self.source}_{self.split}"


def select_latents(ctx: EvalContext, source: str, split_name: str, num_points: int,
                   key: str) -> Latents:
    """The latents of up to ``num_points`` images of a split from a resolved source (``key``:
    the task's split key, for the message if the split is empty)."""
    split = ctx.split(split_name, key)
    seed = ctx.cfg.experiment.seed
    if source == "cloud":
        points, index = cloud_rows(ctx.scheme, split, num_points, seed)
    else:
        index = np.arange(min(num_points, len(split)))
        points = latent_means(ctx.scheme, split, source, index, seed)
    return Latents(points, split.labels[index], split.images[index], source, split_name)


def decoded_means(model, z, batch: int = 500) -> np.ndarray:
    """E[y | z] for latents [..., d], batched: [n, H, W, C]."""
    z = np.asarray(z, np.float32).reshape(-1, model.latent_dim)
    return np.concatenate([np.asarray(model.likelihood.mean(model.decode(tf.constant(z[lo:lo + batch]))))
                           for lo in range(0, len(z), batch)])


# --------------------------------------------------------------------------- PCA

class PCA(NamedTuple):
    mean: np.ndarray             # [d]
    components: np.ndarray       # [k, d], orthonormal rows
    explained_ratio: np.ndarray  # [min(n, d)]: S_k^2 / sum S^2, every component
    coordinates: np.ndarray      # [n, k]


def pca(points, k: int = 2) -> PCA:
    """Principal components of ``points`` [n, d] by NumPy's SVD in float64 (module docstring)."""
    x = np.asarray(points, np.float64)
    mean = x.mean(axis=0)
    centred = x - mean
    _, s, vt = np.linalg.svd(centred, full_matrices=False)
    largest = np.argmax(np.abs(vt), axis=1)
    vt = vt * np.sign(vt[np.arange(len(vt)), largest])[:, None]
    power = s ** 2
    total = power.sum()
    ratio = power / total if total > 0 else np.zeros_like(power)
    return PCA(mean, vt[:k], ratio, centred @ vt[:k].T)
