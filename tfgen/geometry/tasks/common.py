"""What every latent-geometry task shares: its config keys and load-time checks, the data
latents it draws (:mod:`tfgen.evaluation.latent_selection`), the latent plane they span, the
magnification map over that plane, and the model whose geometry it measures (the trained
variance or the RBF precision one)."""
from __future__ import annotations

import dataclasses
import time
from typing import Literal

import numpy as np
import tensorflow as tf

from tfgen import figures
from tfgen.config import Config
from tfgen.errors import ConfigError
from tfgen.evaluation.latent_selection import Latents, pca, resolve_source_split, select_latents
from tfgen.evaluation.tasks import EvalContext
from tfgen.geometry.metric import ExpectedMetric, log_magnification, restricted
from tfgen.geometry.precision import (RBFPrecision, RBFPrecisionConfig, fit_rbf_precision,
                                      precision_model, squared_residuals)
from tfgen.inference.capabilities import (DecoderLikelihood, PerDatapointLatents, Posterior,
                                          has, require)
from tfgen.models import likelihood_capabilities
from tfgen.models.likelihood_capabilities import HasMeanStddev
from tfgen.schema import setting

LatentSource = Literal["auto", "posterior", "cloud"]
Variance = Literal["standard", "rbf_precision"]
RBF_FILE = "geometry/rbf_precision.npz"
LOG10 = float(np.log(10.0))


# --------------------------------------------------------------------------- config and checks

def latents_field():
    return setting("auto", help="where the data's latents come from: posterior (q(z|y) means), "
                                "cloud (per-datapoint latents, training split), auto")


def variance_field():
    return setting("standard", help="standard: the trained likelihood's sigma; rbf_precision: "
                                    "sigma from the RBF precision network (Normal likelihood)")


def check_geometry(cfg: Config, task: str, split: str, latents: str, variance: str) -> None:
    """Load-time checks every geometry task shares."""
    require(cfg, DecoderLikelihood, "evaluate", f"task {task!r}",
            alternative="drop this [[evaluate]] entry")
    # the expected metric is built from the decoder's per-pixel mean and sd (Arvanitidis, Hansen &
    # Hauberg 2018; Grisi & Darcet 2020)
    likelihood_capabilities.require(cfg, HasMeanStddev, "evaluate.task", f"task {task!r}",
                                    given=task, alternative="drop this [[evaluate]] entry")
    if latents == "cloud":
        require(cfg, PerDatapointLatents, "evaluate.latents", f"task {task!r} with latents = "
                "'cloud'", given=latents, alternative="latents = 'posterior'")
        if split != "train":
            raise ConfigError(cfg.source_file, "evaluate.split", "latents = 'cloud' are the "
                              "training images' latents", split, "'train'")
    elif latents == "posterior" or not has(cfg, PerDatapointLatents) or split != "train":
        require(cfg, Posterior, "evaluate.latents", f"task {task!r} with latents = "
                f"{latents!r}", given=latents, alternative="latents = 'cloud'")
    if not getattr(cfg.data, f"{split}_split"):
        raise ConfigError(cfg.source_file, "evaluate.split", f"task {task!r} uses the {split} "
                          f"split, but data.{split}_split is empty", split, "a configured split")
    if variance == "rbf_precision":
        check_normal(cfg, task, "evaluate.variance")


def check_normal(cfg: Config, task: str, key: str) -> None:
    if cfg.model.likelihood.name != "normal":
        raise ConfigError(cfg.source_file, key, f"task {task!r}: the RBF precision replaces a "
                          f"Normal likelihood's sigma, but the likelihood is "
                          f"{cfg.model.likelihood.name!r}", "rbf_precision",
                          "model.likelihood.name = 'normal'")


def compile_mode(ctx: EvalContext) -> str:
    return "eager" if ctx.cfg.train.compile == "eager" else "graph"


def prefix(task: str, variance: str) -> str:
    return task if variance == "standard" else f"{task}_{variance}"


# --------------------------------------------------------------------------- data latents

def data_latents(ctx: EvalContext, split_name: str, latents: str, num_points: int) -> Latents:
    """Latents of up to ``num_points`` images of a split: q(z | y) means of its first images,
    or a seeded random subset of the per-datapoint latents (``cloud``)."""
    source, _ = resolve_source_split(ctx.cfg, latents, split_name, "cloud")
    return select_latents(ctx, source, split_name, num_points, "evaluate.split")


# --------------------------------------------------------------------------- the plane

@dataclasses.dataclass
class LatentPlane:
    """z = origin + basis s: the latent plane itself (d = 2) or the data's PCA plane."""

    origin: np.ndarray   # [d]
    basis: np.ndarray    # [d, 2], orthonormal columns
    axis_names: tuple[str, str]

    @classmethod
    def through(cls, points: np.ndarray) -> "LatentPlane":
        points = np.asarray(points, np.float64)
        d = points.shape[1]
        if d == 2:
            return cls(np.zeros(2, np.float32), np.eye(2, dtype=np.float32), ("z1", "z2"))
        if d == 1:
            raise ValueError("a latent plane needs d >= 2")
        fit = pca(points)
        return cls(fit.mean.astype(np.float32), fit.components.T.astype(np.float32),
                   ("PC 1", "PC 2"))

    def project(self, z) -> np.ndarray:
        return (np.asarray(z, np.float32) - self.origin) @ self.basis

    def embedding(self, embed):
        return restricted(embed, self.origin, self.basis)

    def grid(self, points2d: np.ndarray, resolution: int, margin: float):
        """Grid points [R * R, 2] (row-major in the second axis) and the extent (x0, x1, y0, y1)."""
        low, high = np.percentile(points2d, [0.5, 99.5], axis=0)
        pad = margin * (high - low)
        low, high = low - pad, high + pad
        xs = np.linspace(low[0], high[0], resolution, dtype=np.float32)
        ys = np.linspace(low[1], high[1], resolution, dtype=np.float32)
        gx, gy = np.meshgrid(xs, ys)
        return np.stack([gx.ravel(), gy.ravel()], -1), (low[0], high[0], low[1], high[1])


def label_axes(ax, plane: LatentPlane) -> None:
    ax.set_xlabel(plane.axis_names[0])
    ax.set_ylabel(plane.axis_names[1])


# --------------------------------------------------------------------------- magnification map

def magnification_grid(embed, plane: LatentPlane, grid, params_mode: str, max_evaluations: int,
                       mode: str) -> tuple[np.ndarray, float, str]:
    """log10 sqrt(det M) of the plane's metric at the grid points, the seconds it took (the
    compiled call; tracing included) and the Jacobian mode used."""
    metric = ExpectedMetric(plane.embedding(embed), 2, params_mode, max_evaluations, mode)
    start = time.perf_counter()
    values = metric(grid).numpy()
    seconds = time.perf_counter() - start
    return np.asarray(log_magnification(values)) / LOG10, seconds, metric.mode


def background_map(fig, axes, embed, plane, points2d, resolution, margin, mode, titles):
    """The magnification map over the region of ``points2d``, drawn on every axis."""
    grid, extent = plane.grid(points2d, resolution, margin)
    values, _, _ = magnification_grid(embed, plane, grid, "auto", 4096, mode)
    for ax, title in zip(axes, titles):
        figures.heat_map(fig, ax, values.reshape(resolution, resolution), extent, title,
                         "log10 sqrt(det M)")
        label_axes(ax, plane)


# --------------------------------------------------------------------------- model variants

def rbf_path(ctx: EvalContext):
    return ctx.run_dir / RBF_FILE


def variant_model(ctx: EvalContext, variance: str):
    """The trained model, or it with the RBF precision sigma (loaded, or fitted now)."""
    if variance == "standard":
        return ctx.model
    path = rbf_path(ctx)
    rbf = RBFPrecision.load(path) if path.exists() else fit_and_store_rbf(ctx, RBFPrecisionConfig())[0]
    return precision_model(ctx.model, rbf)


def fit_and_store_rbf(ctx: EvalContext, params: RBFPrecisionConfig, batch: int = 500):
    """Fit the RBF precision on training latents (samples of q, or the cloud's particles) and
    their residuals under the trained mean; store it in the run directory."""
    train = ctx.split("train", "evaluate")
    seed, mode = ctx.cfg.experiment.seed, compile_mode(ctx)
    count = min(params.fit_images, len(train))
    if resolve_source_split(ctx.cfg, "auto", "train", "cloud")[0] == "cloud":
        cloud = np.asarray(ctx.scheme.latent_cloud())
        per_image = len(cloud) // len(train)
        cloud = cloud.reshape(len(train), per_image, -1)[:count, :params.fit_samples]
        index = np.repeat(np.arange(count), cloud.shape[1])
        latents = cloud.reshape(len(index), -1)
    else:
        rng = np.random.default_rng([seed, 11])
        parts = []
        for i, lo in enumerate(range(0, count, batch)):
            q = ctx.scheme.posterior_for(tf.constant(train.images[lo:min(lo + batch, count)]),
                                         [seed, 1000 + i])
            loc, scale = np.asarray(q.loc), np.asarray(q.scale.diag)
            eps = rng.standard_normal((params.fit_samples, *loc.shape)).astype(np.float32)
            parts.append(np.transpose(loc + scale * eps, (1, 0, 2)))   # [b, S, d]
        latents = np.concatenate(parts).reshape(-1, parts[0].shape[-1])
        index = np.repeat(np.arange(count), params.fit_samples)
    residuals = squared_residuals(ctx.model, latents, train.images[index], compile_mode=mode)
    start = time.perf_counter()
    rbf, info = fit_rbf_precision(latents, residuals, params,
                                  ctx.cfg.model.likelihood.params.min_sigma, seed, mode)
    info["seconds"] = time.perf_counter() - start
    info["latents"] = len(latents)
    rbf.save(rbf_path(ctx))
    return rbf, info


