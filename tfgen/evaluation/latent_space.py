"""Pictures of the latent space (seed 001 task 3a/3b): where a split's latents come from, the
``latent_scatter`` task (a scatter of latent means coloured by label, through PCA when d > 2)
and the ``embedding_projector`` task (the latents, sprite images and labels for TensorBoard's
embedding projector).

Latent sources (``source``), each asked of the scheme through its capability:

* ``encoder`` -- the means mu_phi(y) of an amortized posterior q_phi(z | y)
  (:class:`~tfgen.inference.capabilities.AmortizedPosterior`), any split (seed 001 task 3a).
* ``posterior`` -- the means of the scheme's q(z | y) for any image
  (:class:`~tfgen.inference.capabilities.Posterior`): the encoder's, or for a scheme without one
  a diagonal Gaussian fitted at test time by svi
  (:class:`~tfgen.inference.fitting.FittedPosterior`, the scheme's ``inference.posterior_fit``).
* ``latents`` -- the scheme's per-datapoint latents of the training images
  (:class:`~tfgen.inference.capabilities.PerDatapointLatents`): svi's means mu_m, map's points
  z_m, and for PGA the mean of each image's N particles, 1/N sum_n X^{n,m}.  Training split
  only, no optimisation.
* ``auto`` -- ``encoder`` if the scheme has one, else ``latents`` (training split; not for
  ``interpolation``, which joins test images), else ``posterior``; ``split = "auto"`` is the
  training split for ``latents`` and the test split otherwise.

The first ``num_points`` images of the split are used, so two schemes are compared on the same
images (seed 001 task 3a: the first 1000 test images).

PCA (d > 2; seed 001 task 3b): the points X [n, d] are centred, X - mean = U S V^T (NumPy's
SVD in float64), the coordinates are the first two columns of (X - mean) V = U S, and
component k explains S_k^2 / sum_j S_j^2 of the total variance (Jolliffe 2002, Principal
Component Analysis, sections 1.1 and 3.5).  Each component's sign is fixed so that its largest
loading is positive, so the picture does not flip between runs of the same latents.
"""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import ClassVar, Literal, NamedTuple

import numpy as np
import tensorflow as tf

from tfgen.config import Config
from tfgen.data import Split
from tfgen.errors import ConfigError
from tfgen.evaluation import figures
from tfgen.evaluation.tasks import EvalContext, task_key
from tfgen.inference.capabilities import (AmortizedPosterior, PerDatapointLatents, Posterior,
                                          has, require)
from tfgen.registry import EVALUATIONS
from tfgen.schema import field

Source = Literal["auto", "encoder", "posterior", "latents"]
SourceSplit = Literal["auto", "train", "val", "test"]
#: the capability each source needs, and what to offer instead
NEEDS = {"encoder": (AmortizedPosterior, "source = 'posterior' or 'latents'"),
         "posterior": (Posterior, "source = 'latents'"),
         "latents": (PerDatapointLatents, "source = 'encoder' or 'posterior'")}


def source_field(auto: str = "encoder, else latents, else posterior"):
    return field("auto", help="encoder: the encoder's means; posterior: q(z|y) means (the "
                              "encoder's, or fitted at test time); latents: per-datapoint "
                              "latents of the training images (PGA: mean over particles); "
                              f"auto: {auto}")


def split_field():
    return field("auto", help="whose latents: auto = train for source 'latents', else test")


# --------------------------------------------------------------------------- latent sources

def resolve(cfg: Config, source: str, split: str, prefer_latents: bool = True) -> tuple[str, str]:
    """(source, split) with ``auto`` replaced by the scheme's default (``prefer_latents``
    False: a scheme without an encoder gets ``posterior``, on the test split by default)."""
    if source == "auto":
        source = ("encoder" if has(cfg, AmortizedPosterior)
                  else "latents" if (prefer_latents and has(cfg, PerDatapointLatents)
                                     and split in ("auto", "train"))
                  else "posterior")
    if split == "auto":
        split = "train" if source == "latents" else "test"
    return source, split


def check_source(cfg: Config, params, task: str) -> tuple[str, str]:
    """Load-time: the scheme has what the source needs, and the split exists."""
    key = task_key(cfg, params)
    source, split = resolve(cfg, params.source, params.split, params.prefer_latents)
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


def latent_means(scheme, split: Split, source: str, indices: np.ndarray, seed: int,
                 batch: int = 500) -> np.ndarray:
    """The latents [len(indices), d] of the split's images ``indices`` from a resolved source."""
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


class Latents(NamedTuple):
    points: np.ndarray   # [n, d]
    labels: np.ndarray   # [n], -1 where unknown
    images: np.ndarray   # [n, H, W, C]
    source: str          # resolved
    split: str           # resolved

    @property
    def label(self) -> str:
        return f"{self.source}_{self.split}"


def split_latents(ctx: EvalContext, params, num_points: int) -> Latents:
    """Latents of the first ``num_points`` images of the task's split."""
    source, split_name = resolve(ctx.cfg, params.source, params.split, params.prefer_latents)
    split = ctx.split(split_name, f"{task_key(ctx.cfg, params)}.split")
    indices = np.arange(min(num_points, len(split)))
    points = latent_means(ctx.scheme, split, source, indices, ctx.cfg.experiment.seed)
    return Latents(points, split.labels[indices], split.images[indices], source, split_name)


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


# --------------------------------------------------------------------------- latent_scatter

#: how figure titles name each source
DESCRIPTION = {"encoder": "encoder means", "posterior": "posterior means (q fitted per image)",
               "latents": "per-datapoint latent means"}

@dataclasses.dataclass
class LatentScatterConfig:
    prefer_latents: ClassVar[bool] = True
    source: Source = source_field()
    split: SourceSplit = split_field()
    num_points: int = field(1000, min=2, max=100000, help="the split's first images "
                                                         "(seed 001 task 3: 1000 test images)")
    point_size: float = field(4.0, gt=0.0, max=100.0, help="marker area (points^2)")

    def check(self, cfg):
        check_source(cfg, self, "latent_scatter")
        if (latent_dim(cfg) or 2) < 2:
            raise ConfigError(cfg.source_file, f"{task_key(cfg, self)}.task", "task "
                              "'latent_scatter' draws a plane and needs d >= 2",
                              latent_dim(cfg), "model.prior.dim >= 2")


@EVALUATIONS.register("latent_scatter", config=LatentScatterConfig)
def latent_scatter_task(params: LatentScatterConfig, ctx: EvalContext) -> dict:
    """Latent means coloured by label: the plane itself for d = 2, PCA for d > 2 (seed 001 task 3)."""
    from tfgen.geometry import plots

    data = split_latents(ctx, params, params.num_points)
    n, d = data.points.shape
    name = f"latent_scatter_{data.label}"
    results = {}
    what = f"{DESCRIPTION[data.source]} of {n} {data.split} images"
    if d == 2:
        points2d, axes = data.points, ("z1", "z2")
        title = f"{what} (d = 2)"
    else:
        fit = pca(data.points)
        points2d, ratio = fit.coordinates, fit.explained_ratio
        axes = (f"PC 1 ({100 * ratio[0]:.1f}% of variance)",
                f"PC 2 ({100 * ratio[1]:.1f}% of variance)")
        title = (f"{what}: PCA of d = {d}, "
                 f"2 components explain {100 * (ratio[0] + ratio[1]):.1f}%")
        results = {f"{name}_pc1_variance_ratio": float(ratio[0]),
                   f"{name}_pc2_variance_ratio": float(ratio[1]),
                   f"{name}_pc12_variance_ratio": float(ratio[0] + ratio[1])}
    fig, (ax,) = plots.panels(1, size=6.0)
    plots.scatter_labels(ax, points2d, data.labels, size=params.point_size)
    ax.set_xlabel(axes[0])
    ax.set_ylabel(axes[1])
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    plots.write(fig, ctx.figure(f"{name}.png"), f"eval/{name}", ctx.step)
    return results


# --------------------------------------------------------------------------- embedding projector

PROJECTOR_CONFIG = "projector_config.pbtxt"
CHECKPOINT_NAME = "embeddings"


@dataclasses.dataclass
class EmbeddingProjectorConfig:
    prefer_latents: ClassVar[bool] = True
    source: Source = source_field()
    split: SourceSplit = split_field()
    num_points: int = field(1000, min=1, max=10000, help="the split's first images (the "
                                                        "sprite holds one thumbnail each)")

    def check(self, cfg):
        check_source(cfg, self, "embedding_projector")


class ProjectorFiles(NamedTuple):
    tensor_name: str
    checkpoint: str
    metadata: Path
    sprite: Path
    config: Path


def variable_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_]", "_", text)


def write_projector(log_dir, name: str, points, labels, images, pixel_range) -> ProjectorFiles:
    """Add (or replace) the embedding ``name`` in ``log_dir``'s projector files: the points in
    the checkpoint ``embeddings-<k>`` of the directory (with every other embedding its
    projector_config.pbtxt lists, so earlier ones stay), ``<name>_metadata.tsv`` (index and
    label of each point, a header line), ``<name>_sprite.png`` and the config."""
    from google.protobuf import text_format
    from tensorboard.plugins import projector

    log_dir = Path(log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    name = variable_name(name)
    tensor_name = f"{name}/.ATTRIBUTES/VARIABLE_VALUE"
    config = projector.ProjectorConfig()
    config_path = log_dir / PROJECTOR_CONFIG
    if config_path.exists():
        text_format.Parse(config_path.read_text(), config)
    previous = tf.train.latest_checkpoint(str(log_dir))
    reader = tf.train.load_checkpoint(previous) if previous else None
    tensors = {}
    kept = [e for e in config.embeddings if e.tensor_name != tensor_name]
    for embedding in kept:   # the embeddings written before, read back from their checkpoint
        if reader is not None and reader.has_tensor(embedding.tensor_name):
            tensors[embedding.tensor_name.split("/")[0]] = reader.get_tensor(embedding.tensor_name)
    kept = [e for e in kept if e.tensor_name.split("/")[0] in tensors]
    tensors[name] = np.asarray(points, np.float32)
    del config.embeddings[:]
    config.embeddings.extend(kept)

    metadata = log_dir / f"{name}_metadata.tsv"
    labels = np.asarray(labels)
    metadata.write_text("index\tlabel\n" + "".join(
        f"{i}\t{label if label >= 0 else 'unknown'}\n" for i, label in enumerate(labels)))
    sprite, thumb = figures.sprite(images, pixel_range)
    sprite_path = figures.write_png(log_dir / f"{name}_sprite.png", sprite, scale=1)
    embedding = config.embeddings.add()
    embedding.tensor_name = tensor_name
    embedding.metadata_path = metadata.name
    embedding.sprite.image_path = sprite_path.name
    embedding.sprite.single_image_dim.extend([thumb[1], thumb[0]])   # width, height

    variables = {key: tf.Variable(value, trainable=False, name=key) for key, value in tensors.items()}
    checkpoint = tf.train.Checkpoint(**variables)
    number = 1 + (int(previous.rsplit("-", 1)[1]) if previous else 0)
    manager = tf.train.CheckpointManager(checkpoint, str(log_dir), max_to_keep=1,
                                         checkpoint_name=CHECKPOINT_NAME)
    saved = manager.save(checkpoint_number=number)
    # no model_checkpoint_path: the projector takes the directory's latest checkpoint, so the
    # run directory can be moved
    config_path.write_text(text_format.MessageToString(config))
    return ProjectorFiles(tensor_name, saved, metadata, sprite_path, config_path)


@EVALUATIONS.register("embedding_projector", config=EmbeddingProjectorConfig)
def embedding_projector_task(params: EmbeddingProjectorConfig, ctx: EvalContext) -> dict:
    """The latents with sprite images and labels for TensorBoard's embedding projector."""
    data = split_latents(ctx, params, params.num_points)
    name = f"latents_{data.label}" + (f"_{ctx.figure_tag}" if ctx.figure_tag else "")
    files = write_projector(ctx.run_dir / "tensorboard", name, data.points, data.labels,
                            data.images, ctx.data.pixel_range)
    ctx.figures.append(files.sprite)
    n, d = data.points.shape
    return {f"embedding_projector_{data.label}_points": float(n),
            f"embedding_projector_{data.label}_dim": float(d)}
