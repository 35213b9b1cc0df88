"""The latent-geometry ``[[evaluate]]`` tasks (seed 004): metric_map, geodesics, random_walk,
geodesic_kmeans and rbf_precision.

Each needs a decoder with a likelihood (:class:`~tfgen.inference.capabilities.DecoderLikelihood`)
and the latents of some data: the scheme's q(z | y) means (``latents = "posterior"``: an
encoder, or a q fitted at test time) or its per-datapoint latents (``"cloud"``: e.g. PGA's
particles, training images only); ``"auto"`` takes an encoder if there is one, else the
cloud for the training split, else the fitted q.  Maps are drawn over the latent plane
(d = 2) or the plane of the data latents' first two principal components (d > 2; there the
map shows the metric restricted to the plane, basis^T M basis).  ``variance =
"rbf_precision"`` runs a task on the model whose sigma is the RBF precision network of
:mod:`tfgen.geometry.precision` (Normal likelihoods), fitted by the ``rbf_precision`` task
and stored in the run directory (``geometry/rbf_precision.npz``), or fitted with its
defaults when the task has not run.  Geometry runs in graph mode (``tf.function``) unless
the run is eager: its loops have data-dependent sizes, which XLA would recompile.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Literal

import numpy as np
import tensorflow as tf

from tfgen.config import Config
from tfgen.errors import ConfigError
from tfgen.evaluation import figures
from tfgen.evaluation.metrics import mean_log_likelihood
from tfgen.evaluation.tasks import EvalContext, SplitName
from tfgen.geometry import clustering, curves, plots
from tfgen.geometry.geodesics import GeodesicSolver, Optimizer, initial_velocity, shoot
from tfgen.geometry.metric import (ExpectedMetric, Mode, decoder_embedding, log_magnification,
                                   restricted)
from tfgen.geometry.precision import (RBFPrecision, RBFPrecisionConfig, fit_rbf_precision,
                                      precision_model, squared_residuals)
from tfgen.geometry.random_walk import random_walks
from tfgen.inference.base import PosteriorEstimates
from tfgen.inference.capabilities import (AmortizedPosterior, DecoderLikelihood,
                                          PerDatapointLatents, Posterior, has, require)
from tfgen.registry import EVALUATIONS
from tfgen.runtime import compile_step
from tfgen.schema import field

LatentSource = Literal["auto", "posterior", "cloud"]
Variance = Literal["standard", "rbf_precision"]
RBF_FILE = "geometry/rbf_precision.npz"
LOG10 = float(np.log(10.0))


# --------------------------------------------------------------------------- shared config

def latents_field():
    return field("auto", help="where the data's latents come from: posterior (q(z|y) means), "
                              "cloud (per-datapoint latents, training split), auto")


def variance_field():
    return field("standard", help="standard: the trained likelihood's sigma; rbf_precision: "
                                  "sigma from the RBF precision network (Normal likelihood)")


def check_geometry(cfg: Config, task: str, split: str, latents: str, variance: str) -> None:
    """Load-time checks every geometry task shares."""
    require(cfg, DecoderLikelihood, "evaluate", f"task {task!r}",
            alternative="drop this [[evaluate]] entry")
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

@dataclasses.dataclass
class DataLatents:
    points: np.ndarray   # [n, d]
    labels: np.ndarray   # [n], -1 where unknown
    images: np.ndarray   # [n, H, W, C], the image of each point


def latent_source(scheme, latents: str, split: str) -> str:
    if latents != "auto":
        return latents
    if isinstance(scheme, AmortizedPosterior):
        return "posterior"
    if isinstance(scheme, PerDatapointLatents) and split == "train":
        return "cloud"
    return "posterior"


def data_latents(ctx: EvalContext, split_name: str, latents: str, num_points: int,
                 batch: int = 500) -> DataLatents:
    """Latents of up to ``num_points`` images of a split: q(z | y) means of its first images,
    or a seeded random subset of the per-datapoint latents."""
    split = ctx.split(split_name, "evaluate.split")
    seed = ctx.cfg.experiment.seed
    if latent_source(ctx.scheme, latents, split_name) == "cloud":
        cloud = np.asarray(ctx.scheme.latent_cloud())
        per_image = len(cloud) // len(split)
        rows = np.sort(np.random.default_rng([seed, 7]).permutation(len(cloud))[:num_points])
        index = rows // per_image
        return DataLatents(cloud[rows], split.labels[index], split.images[index])
    images = split.images[:num_points]
    means = [np.asarray(ctx.scheme.posterior_for(tf.constant(images[lo:lo + batch]),
                                                 [seed, 900 + i]).loc)
             for i, lo in enumerate(range(0, len(images), batch))]
    return DataLatents(np.concatenate(means), split.labels[:len(images)], images)


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
        origin = points.mean(0)
        _, _, vt = np.linalg.svd(points - origin, full_matrices=False)
        return cls(origin.astype(np.float32), vt[:2].T.astype(np.float32), ("PC 1", "PC 2"))

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
    if latent_source(ctx.scheme, "auto", "train") == "cloud":
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


class WithModel(PosteriorEstimates):
    """The scheme's q(z | y) with another generative model: the same ELBO and IWAE
    estimators, for a variant of the trained model (e.g. the RBF precision one)."""

    def __init__(self, scheme, model):
        self.scheme, self.model, self.cfg, self.data = scheme, model, scheme.cfg, scheme.data

    def posterior_for(self, images, seed):
        return self.scheme.posterior_for(images, seed)


def decoded_means(model, z, batch: int = 500) -> np.ndarray:
    z = np.asarray(z, np.float32).reshape(-1, model.latent_dim)
    return np.concatenate([np.asarray(model.likelihood.mean(model.decode(tf.constant(z[lo:lo + batch]))))
                           for lo in range(0, len(z), batch)])


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
        plots.heat_map(fig, ax, values.reshape(resolution, resolution), extent, title,
                       "log10 sqrt(det M)")
        label_axes(ax, plane)


# --------------------------------------------------------------------------- metric_map

@dataclasses.dataclass
class MetricMapConfig:
    split: SplitName = field("test", help="whose latents are drawn on top")
    latents: LatentSource = latents_field()
    num_points: int = field(2000, min=1, max=100000, help="data latents drawn on the map")
    resolution: int = field(100, min=2, max=2000, help="grid points per side")
    margin: float = field(0.25, min=0.0, max=10.0, help="grid beyond the data, as a fraction "
                                                       "of the data's extent per side")
    variance: Literal["standard", "rbf_precision", "both"] = field(
        "standard", help="both: the standard and the RBF precision variance side by side")
    mode: Mode = field("auto", help="Jacobians by forward or reverse mode (auto: forward when "
                                    "d <= the number of decoded outputs)")
    max_evaluations: int = field(4096, min=1, help="decoder evaluations per chunk (memory bound)")

    def check(self, cfg):
        check_geometry(cfg, "metric_map", self.split, self.latents,
                       "rbf_precision" if self.variance != "standard" else "standard")


@EVALUATIONS.register("metric_map", config=MetricMapConfig)
def metric_map_task(params: MetricMapConfig, ctx: EvalContext) -> dict:
    """Magnification factor sqrt(det M(z)) over a latent grid, data latents on top (seed 004)."""
    data = data_latents(ctx, params.split, params.latents, params.num_points)
    plane = LatentPlane.through(data.points)
    points2d = plane.project(data.points)
    grid, extent = plane.grid(points2d, params.resolution, params.margin)
    variants = ["standard", "rbf_precision"] if params.variance == "both" else [params.variance]
    mode = compile_mode(ctx)
    fig, axes = plots.panels(len(variants))
    results = {}
    for ax, variance in zip(axes, variants):
        embed = decoder_embedding(variant_model(ctx, variance))
        values, seconds, jacobian_mode = magnification_grid(embed, plane, grid, params.mode,
                                                            params.max_evaluations, mode)
        at_data = ExpectedMetric(embed, data.points.shape[1], params.mode, params.max_evaluations,
                                 mode)(data.points)
        key = prefix("metric_map", variance)
        finite = values[np.isfinite(values)]
        results.update({
            f"{key}_seconds": seconds,
            f"{key}_points_per_second": len(grid) / seconds,
            f"{key}_log10_magnification_grid_median": float(np.median(finite)) if finite.size else float("nan"),
            f"{key}_log10_magnification_data_median":
                float(np.median(np.asarray(log_magnification(at_data)) / LOG10)),
            f"{key}_forward_mode": float(jacobian_mode == "forward"),
        })
        title = f"{variance} variance: magnification sqrt(det M)"
        plots.heat_map(fig, ax, values.reshape(params.resolution, params.resolution), extent,
                       title, "log10 sqrt(det M)")
        plots.scatter_labels(ax, points2d, data.labels)
        label_axes(ax, plane)
    name = "metric_map" if params.variance == "standard" else f"metric_map_{params.variance}"
    plots.write(fig, ctx.figure(f"{name}.png"), f"eval/{name}", ctx.step)
    return results


# --------------------------------------------------------------------------- geodesics

#: a shooting solution "reaches" the end point when it misses by less than this fraction of the
#: Euclidean distance between the end points
SHOOTING_AGREES = 1e-2


@dataclasses.dataclass
class GeodesicsConfig:
    split: SplitName = field("test")
    latents: LatentSource = latents_field()
    variance: Variance = variance_field()
    pairs: int = field(100, min=1, max=100000, help="random pairs of data latents")
    segments: int = field(20, min=2, max=1000, help="T: segments of a discrete curve")
    optimizer: Optimizer = field("lbfgs", help="energy minimisation by batched L-BFGS or Adam")
    steps: int = field(0, min=0, max=100000, help="L-BFGS iterations or Adam steps (0 = 50 "
                                                 "for L-BFGS, 300 for Adam)")
    learning_rate: float = field(0.05, gt=0.0, max=10.0, help="Adam's step, as a fraction of "
                                                             "the pair's latent distance")
    subdivisions: int = field(4, min=1, max=100, help="lengths are measured after cutting every "
                                                     "segment into this many pieces")
    # one batched L-BFGS runs until its slowest curve is done: on latent_geometry.toml's RBF
    # variance 100 pairs took 643 s in one batch (1106 energy evaluations) and 258 s in batches
    # of 20, the same lengths; 100 s either way with the network's sigma (idle machine)
    batch_size: int = field(20, min=1, help="curves optimised at once (one L-BFGS: the "
                                            "slowest curve sets every curve's iterations)")
    show: int = field(6, min=0, max=64, help="pairs drawn and decoded in the figures")
    images: int = field(11, min=2, max=64, help="images decoded along each shown curve")
    shooting: int = field(4, min=0, max=1000, help="pairs checked against the geodesic ODE "
                                                  "(shooting from the energy solution; 0 = off)")
    ode_steps: int = field(50, min=1, max=10000, help="RK4 steps of the shooting check")
    resolution: int = field(60, min=2, max=1000, help="grid side of the background map")

    def check(self, cfg):
        check_geometry(cfg, "geodesics", self.split, self.latents, self.variance)


def points_along(paths: np.ndarray, count: int) -> np.ndarray:
    """``count`` points at equal steps of the node index along polylines [B, N, d] (equal
    arc length for a constant-speed geodesic, equal latent steps for a straight line)."""
    position = np.linspace(0.0, paths.shape[1] - 1, count)
    lower = np.minimum(np.floor(position).astype(int), paths.shape[1] - 2)
    frac = (position - lower)[None, :, None]
    return paths[:, lower] * (1 - frac) + paths[:, lower + 1] * frac


@EVALUATIONS.register("geodesics", config=GeodesicsConfig)
def geodesics_task(params: GeodesicsConfig, ctx: EvalContext) -> dict:
    """Geodesics between random pairs of data latents: lengths against straight lines, decoded.

    Energy minimisation for all pairs at once; the shooting check on the first few."""
    seed, mode = ctx.cfg.experiment.seed, compile_mode(ctx)
    data = data_latents(ctx, params.split, params.latents, max(2 * params.pairs, 2))
    rng = np.random.default_rng([seed, 13])
    first = rng.integers(len(data.points), size=params.pairs)
    second = (first + 1 + rng.integers(len(data.points) - 1, size=params.pairs)) % len(data.points)
    start, end = data.points[first], data.points[second]
    model = variant_model(ctx, params.variance)
    embed = decoder_embedding(model)
    solver = GeodesicSolver(embed, params.segments, params.steps, params.learning_rate, mode,
                            params.optimizer)
    measure = compile_step(lambda p: curves.riemannian_length(embed, p, params.subdivisions), mode)
    nodes, geodesic_length, straight_length, batch_seconds, evaluations = [], [], [], [], []
    for lo in range(0, params.pairs, params.batch_size):
        a, b = start[lo:lo + params.batch_size], end[lo:lo + params.batch_size]
        t0 = time.perf_counter()
        curve, _, count = solver(a, b)
        curve = curve.numpy()
        batch_seconds.append(time.perf_counter() - t0)
        evaluations.append(np.max(count))
        line = curves.straight_lines(tf.constant(a), tf.constant(b), params.segments)
        nodes.append(curve)
        geodesic_length.append(measure(tf.constant(curve)).numpy())
        straight_length.append(measure(line).numpy())
    nodes = np.concatenate(nodes)
    geodesic_length, straight_length = np.concatenate(geodesic_length), np.concatenate(straight_length)
    ratio = geodesic_length / straight_length
    key = prefix("geodesics", params.variance)
    results = {
        f"{key}_length_ratio_mean": float(ratio.mean()),
        f"{key}_length_ratio_median": float(np.median(ratio)),
        f"{key}_length_ratio_min": float(ratio.min()),
        f"{key}_length_ratio_max": float(ratio.max()),
        f"{key}_geodesic_length_mean": float(geodesic_length.mean()),
        f"{key}_straight_length_mean": float(straight_length.mean()),
        f"{key}_seconds": float(sum(batch_seconds)),
        f"{key}_seconds_first_batch": float(batch_seconds[0]),
        f"{key}_energy_evaluations_max": float(max(evaluations)),
    }
    if params.shooting:
        count = min(params.shooting, params.pairs)
        shot = shoot(embed, start[:count], end[:count], initial_velocity(nodes[:count]),
                     params.ode_steps, compile_mode=mode)
        ode_length = measure(tf.constant(shot["path"], tf.float32)).numpy()
        distance = np.linalg.norm(end[:count] - start[:count], axis=-1)
        final_miss = shot["miss"][:, -1] / distance
        length_error = np.abs(ode_length / geodesic_length[:count] - 1)
        agrees = final_miss < SHOOTING_AGREES
        results.update({
            f"{key}_shooting_initial_miss_max": float((shot["miss"][:, 0] / distance).max()),
            f"{key}_shooting_miss_max": float(final_miss.max()),
            f"{key}_shooting_miss_median": float(np.median(final_miss)),
            f"{key}_shooting_length_ratio_max": float(length_error.max()),
            # the pairs whose ODE solution reached the end point: there the energy solution is
            # checked (length error); elsewhere Newton did not converge, which checks nothing
            f"{key}_shooting_converged_fraction": float(agrees.mean()),
            f"{key}_shooting_converged_length_error_max": (float(length_error[agrees].max())
                                                           if agrees.any() else float("nan")),
        })
    if params.show:
        show = min(params.show, params.pairs)
        plane = LatentPlane.through(data.points)
        points2d = plane.project(data.points)
        fig, axes = plots.panels(1, size=6.0)
        background_map(fig, axes, embed, plane, points2d, params.resolution, 0.25, mode,
                       [f"geodesics (solid) and straight lines (dashed), {params.variance} variance"])
        axes[0].scatter(points2d[:, 0], points2d[:, 1], s=1, c="0.85", linewidths=0)
        lines = curves.straight_lines(tf.constant(start[:show]), tf.constant(end[:show]), 2).numpy()
        plots.curves(axes[0], [plane.project(p) for p in lines], "--")
        plots.curves(axes[0], [plane.project(p) for p in nodes[:show]], "-", colour="red")
        name = prefix("geodesics", params.variance)
        plots.write(fig, ctx.figure(f"{name}.png"), f"eval/{name}", ctx.step)
        # rows: straight line, geodesic, for every shown pair
        along_line = points_along(lines, params.images)
        along_geodesic = points_along(nodes[:show], params.images)
        rows = np.stack([along_line, along_geodesic], 1).reshape(-1, ctx.model.latent_dim)
        grid = figures.image_grid(decoded_means(model, rows), params.images, ctx.data.pixel_range)
        figures.write_png(ctx.figure(f"{name}_images.png"), grid)
        figures.summary_image(f"eval/{name}_images", grid, ctx.step)
    return results


# --------------------------------------------------------------------------- random walks

@dataclasses.dataclass
class RandomWalkConfig:
    split: SplitName = field("test", help="walks start at the latents of this split's images")
    latents: LatentSource = latents_field()
    variance: Variance = variance_field()
    walks: int = field(6, min=1, max=1000)
    steps: int = field(100, min=1, max=100000)
    step_size: float = field(0.05, gt=0.0, max=100.0, help="s: Euclidean step sd; a Riemannian "
                                                          "step has covariance s^2 m M(z)^-1")
    show_every: int = field(10, min=1, help="decode every this many steps")
    scale_points: int = field(500, min=1, help="data latents whose median det(M)^(1/d) is m")
    resolution: int = field(60, min=2, max=1000, help="grid side of the background map")

    def check(self, cfg):
        check_geometry(cfg, "random_walk", self.split, self.latents, self.variance)


@EVALUATIONS.register("random_walk", config=RandomWalkConfig)
def random_walk_task(params: RandomWalkConfig, ctx: EvalContext) -> dict:
    """Euclidean walks against walks with covariance M(z)^-1 (seed 004's experiment), decoded."""
    seed, mode = ctx.cfg.experiment.seed, compile_mode(ctx)
    data = data_latents(ctx, params.split, params.latents, max(params.scale_points, params.walks))
    model = variant_model(ctx, params.variance)
    embed = decoder_embedding(model)
    d = data.points.shape[1]
    at_data = ExpectedMetric(embed, d, "auto", 4096, mode)(data.points[:params.scale_points])
    # det(M)^(1/d) = exp(2 log sqrt(det M) / d): the typical metric scale at the data
    metric_scale = float(np.median(np.exp(2.0 * np.asarray(log_magnification(at_data)) / d)))
    start = time.perf_counter()
    paths = random_walks(embed, data.points[:params.walks], params.steps, params.step_size,
                         metric_scale, seed, mode)
    seconds = time.perf_counter() - start
    key = prefix("random_walk", params.variance)
    results = {f"{key}_seconds": seconds, f"{key}_metric_scale": metric_scale}
    shown = np.arange(0, params.steps + 1, params.show_every)
    plane = LatentPlane.through(data.points)
    points2d = plane.project(data.points)
    paths = {kind: path.numpy() for kind, path in paths.items()}
    fig, axes = plots.panels(2)
    walked = np.concatenate([plane.project(p.reshape(-1, d)) for p in paths.values()])
    background_map(fig, axes, embed, plane, np.concatenate([points2d, walked]), params.resolution,
                   0.05, mode, [f"{kind} random walks" for kind in paths])
    for ax, (kind, path) in zip(axes, paths.items()):
        embedded = curves.embed_points(embed, tf.constant(path)).numpy()
        riemannian = np.linalg.norm(np.diff(embedded, axis=1), axis=-1)       # [walks, steps]
        euclidean = np.linalg.norm(np.diff(path, axis=1), axis=-1)
        results.update({
            f"{key}_{kind}_latent_step_mean": float(euclidean.mean()),
            f"{key}_{kind}_riemannian_step_mean": float(riemannian.mean()),
            # how even the pace of change of the decoded images is (seed 004: "regular changes")
            f"{key}_{kind}_riemannian_step_cv": float((riemannian.std(1) / riemannian.mean(1)).mean()),
            f"{key}_{kind}_final_norm_mean": float(np.linalg.norm(path[:, -1], axis=-1).mean()),
        })
        ax.scatter(points2d[:, 0], points2d[:, 1], s=1, c="0.85", linewidths=0)
        plots.curves(ax, [plane.project(p) for p in path], "-", colour="red", width=0.8)
        images = decoded_means(model, path[:, shown])
        grid = figures.image_grid(images, len(shown), ctx.data.pixel_range)
        figures.write_png(ctx.figure(f"{key}_{kind}.png"), grid)
        figures.summary_image(f"eval/{key}_{kind}", grid, ctx.step)
    plots.write(fig, ctx.figure(f"{key}_paths.png"), f"eval/{key}_paths", ctx.step)
    return results


# --------------------------------------------------------------------------- geodesic k-means

@dataclasses.dataclass
class GeodesicKMeansConfig:
    split: SplitName = field("test")
    latents: LatentSource = latents_field()
    variance: Variance = variance_field()
    num_points: int = field(1000, min=2, max=5000, help="latents clustered (the distance "
                                                       "matrix is num_points^2)")
    clusters: int = field(0, min=0, max=1000, help="k (0 = the number of labels present)")
    neighbours: int = field(10, min=1, max=1000, help="nearest neighbours joined in the graph")
    subdivisions: int = field(4, min=1, max=100, help="pieces per edge when measuring its length")
    restarts: int = field(10, min=1, max=1000, help="seedings; the lowest-cost run is kept")

    def check(self, cfg):
        check_geometry(cfg, "geodesic_kmeans", self.split, self.latents, self.variance)


@EVALUATIONS.register("geodesic_kmeans", config=GeodesicKMeansConfig)
def geodesic_kmeans_task(params: GeodesicKMeansConfig, ctx: EvalContext) -> dict:
    """k-medoids with graph geodesic distances against Euclidean k-means: purity (seed 004)."""
    seed, mode = ctx.cfg.experiment.seed, compile_mode(ctx)
    data = data_latents(ctx, params.split, params.latents, params.num_points)
    known = data.labels[data.labels >= 0]
    k = params.clusters or (len(np.unique(known)) if len(known) else 10)
    k = min(k, len(data.points))
    embed = decoder_embedding(variant_model(ctx, params.variance))
    start = time.perf_counter()
    geodesic, neighbours = clustering.graph_geodesic_distances(
        embed, data.points, params.neighbours, params.subdivisions, mode)
    graph_seconds = time.perf_counter() - start
    euclidean = np.sqrt(clustering.squared_distances(data.points, data.points))
    runs = {
        "euclidean_kmeans": clustering.kmeans(data.points, k, seed, params.restarts)[0],
        "euclidean_kmedoids": clustering.kmedoids(euclidean, k, seed, params.restarts)[0],
        "geodesic_kmedoids": clustering.kmedoids(geodesic, k, seed, params.restarts)[0],
    }
    key = prefix("geodesic_kmeans", params.variance)
    results = {f"{key}_purity_{name}": clustering.purity(assign, data.labels)
               for name, assign in runs.items()}
    results.update({f"{key}_graph_seconds": graph_seconds, f"{key}_neighbours": float(neighbours),
                    f"{key}_clusters": float(k)})
    plane = LatentPlane.through(data.points)
    points2d = plane.project(data.points)
    fig, axes = plots.panels(3)
    for ax, (title, colours) in zip(axes, [("labels", data.labels),
                                           ("Euclidean k-means", runs["euclidean_kmeans"]),
                                           ("geodesic k-medoids", runs["geodesic_kmedoids"])]):
        plots.scatter_labels(ax, points2d, colours, size=5, legend=title == "labels")
        purity = "" if title == "labels" else f": purity {clustering.purity(colours, data.labels):.3f}"
        ax.set_title(title + purity, fontsize=10)
        label_axes(ax, plane)
    plots.write(fig, ctx.figure(f"{key}.png"), f"eval/{key}", ctx.step)
    return results


# --------------------------------------------------------------------------- RBF precision

@dataclasses.dataclass
class RBFPrecisionTaskConfig(RBFPrecisionConfig):
    split: SplitName = field("test", help="held-out images of the log-likelihood comparison")
    samples: int = field(100, min=1, max=100000, help="importance samples K (IWAE) per image")
    max_images: int = field(1000, min=0, help="0 = the whole split")
    batch_size: int = field(50, min=1)
    num_points: int = field(2000, min=1, max=100000, help="data latents drawn on the sigma maps")
    resolution: int = field(60, min=2, max=1000, help="grid side of the sigma maps")

    def check(self, cfg):
        check_geometry(cfg, "rbf_precision", self.split, "auto", "standard")
        require(cfg, Posterior, "evaluate", "task 'rbf_precision' (its log-likelihood "
                "comparison)", alternative="drop this [[evaluate]] entry")
        check_normal(cfg, "rbf_precision", "evaluate.task")
        if not cfg.data.train_split:
            raise ConfigError(cfg.source_file, "evaluate.task", "the RBF precision is fitted on "
                              "training latents, but data.train_split is empty", "rbf_precision",
                              "a training split")


@EVALUATIONS.register("rbf_precision", config=RBFPrecisionTaskConfig)
def rbf_precision_task(params: RBFPrecisionTaskConfig, ctx: EvalContext) -> dict:
    """Fit the RBF precision decoder variance (the paper's fix); held-out IWAE and sigma maps.

    Fitted after training on the training latents, stored in the run directory, compared with
    the trained variance."""
    rbf, info = fit_and_store_rbf(ctx, params)
    split = ctx.split(params.split, "evaluate.split")
    seed, mode = ctx.cfg.experiment.seed, compile_mode(ctx)
    variant = precision_model(ctx.model, rbf)
    results = {"rbf_precision_fit_seconds": info["seconds"],
               "rbf_precision_fit_latents": float(info["latents"]),
               "rbf_precision_fit_nll_start": info["nll_start"],
               "rbf_precision_fit_nll_end": info["nll_end"]}
    for name, scheme in [("standard", ctx.scheme), ("rbf_precision", WithModel(ctx.scheme, variant))]:
        # the log_likelihood task's estimator, seeds and images: comparable with its numbers
        estimate = mean_log_likelihood(scheme, split, params.batch_size, seed, params.samples,
                                       params.max_images)
        results[f"rbf_precision_{params.split}_log_likelihood_{name}"] = estimate["log_likelihood"]
        results[f"rbf_precision_{params.split}_log_likelihood_{name}_stderr"] = \
            estimate["log_likelihood_stderr"]
    results[f"rbf_precision_{params.split}_log_likelihood_gain"] = (
        results[f"rbf_precision_{params.split}_log_likelihood_rbf_precision"]
        - results[f"rbf_precision_{params.split}_log_likelihood_standard"])
    # sigma over the latent plane: the mean pixel sd, standard against RBF precision
    data = data_latents(ctx, params.split, "auto", params.num_points)
    plane = LatentPlane.through(data.points)
    points2d = plane.project(data.points)
    grid, extent = plane.grid(points2d, params.resolution, 0.5)
    fig, axes = plots.panels(2)
    for ax, (name, model) in zip(axes, [("standard", ctx.model), ("rbf_precision", variant)]):
        mean_sigma = compile_step(lambda s, model=model: tf.reduce_mean(
            model.likelihood.mean_stddev(model.decode(s))[1], axis=[1, 2, 3]), mode)
        lifted = plane.origin + grid @ plane.basis.T
        sigma = np.concatenate([mean_sigma(tf.constant(lifted[lo:lo + 1000])).numpy()
                                for lo in range(0, len(lifted), 1000)])
        plots.heat_map(fig, ax, np.log10(sigma).reshape(params.resolution, params.resolution),
                       extent, f"{name} variance: mean pixel sigma(z)", "log10 sigma", "magma")
        plots.scatter_labels(ax, points2d, data.labels, legend=False)
        label_axes(ax, plane)
    plots.write(fig, ctx.figure("rbf_precision_sigma.png"), "eval/rbf_precision_sigma", ctx.step)
    return results
