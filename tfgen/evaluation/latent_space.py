"""Pictures of the latent space (the 2AMU20 VAE assignment, task 3a/3b): the ``latent_scatter`` task
(a scatter of latent means coloured by label, through PCA when d > 2) and the
``embedding_projector`` task (the latents, sprite images and labels for TensorBoard's embedding
projector).

Both take the latents of the first ``num_points`` images of a split from a ``source``
(``encoder``, ``posterior``, ``latents`` or ``auto``) of
:mod:`tfgen.evaluation.latent_selection`, which describes them and the PCA.
"""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import ClassVar, NamedTuple

import numpy as np
import tensorflow as tf

from tfgen import figures
from tfgen.errors import ConfigError
from tfgen.evaluation.latent_selection import (Latents, Source, SourceSplit, check_source,
                                               latent_dim, pca, resolve_task_source_split,
                                               select_latents, source_field, split_field)
from tfgen.evaluation.tasks import EvalContext, task_key
from tfgen.registry import EVALUATIONS
from tfgen.footprint import UNCOUNTED
from tfgen.schema import TaskConfig, setting


def split_latents(ctx: EvalContext, params, num_points: int) -> Latents:
    """Latents of the first ``num_points`` images of the task's split."""
    source, split = resolve_task_source_split(ctx.cfg, params)
    return select_latents(ctx, source, split, num_points, f"{task_key(ctx.cfg, params)}.split")


# --------------------------------------------------------------------------- latent_scatter

#: how figure titles name each source
DESCRIPTION = {"encoder": "encoder means", "posterior": "posterior means (q fitted per image)",
               "latents": "per-datapoint latent means"}


@dataclasses.dataclass
class LatentScatterConfig(TaskConfig):
    prefer_latents: ClassVar[bool] = True
    source: Source = source_field()
    split: SourceSplit = split_field()
    num_points: int = setting(1000, at_least=2, at_most=100000, help="the split's first images "
                                                                     "(the 2AMU20 VAE assignment's "
                                                                     "task 3: 1000 test images)")
    point_size: float = setting(4.0, above=0.0, at_most=100.0, help="marker area (points^2)")

    def check(self, cfg):
        check_source(cfg, self, "latent_scatter")
        if (latent_dim(cfg) or 2) < 2:
            raise ConfigError(cfg.source_file, f"{task_key(cfg, self)}.task", "task "
                              "'latent_scatter' draws a plane and needs d >= 2",
                              latent_dim(cfg), "model.prior.dim >= 2")

    def peak(self, shape, act):
        return UNCOUNTED  # num_points images encoded


@EVALUATIONS.register("latent_scatter", config=LatentScatterConfig)
def latent_scatter_task(params: LatentScatterConfig, ctx: EvalContext) -> dict:
    """Latent means coloured by label: the plane itself for d = 2, PCA for d > 2 (the 2AMU20 VAE assignment, task 3)."""
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
    fig, (ax,) = figures.panels(1, size=6.0)
    figures.scatter_labels(ax, points2d, data.labels, size=params.point_size)
    ax.set_xlabel(axes[0])
    ax.set_ylabel(axes[1])
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    figures.write_figure(fig, ctx.figure(f"{name}.png"), f"eval/{name}", ctx.step)
    return results


# --------------------------------------------------------------------------- embedding projector

PROJECTOR_CONFIG = "projector_config.pbtxt"
CHECKPOINT_NAME = "embeddings"


@dataclasses.dataclass
class EmbeddingProjectorConfig(TaskConfig):
    prefer_latents: ClassVar[bool] = True
    source: Source = source_field()
    split: SourceSplit = split_field()
    num_points: int = setting(1000, at_least=1, at_most=10000, help="the split's first images (the "
                                                                    "sprite holds one thumbnail "
                                                                    "each)")

    def check(self, cfg):
        check_source(cfg, self, "embedding_projector")

    def peak(self, shape, act):
        return UNCOUNTED  # num_points images encoded


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
