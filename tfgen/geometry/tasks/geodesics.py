"""The ``geodesics`` task: shortest curves between random pairs of data latents, by energy
minimisation, their lengths against straight lines', decoded; the geodesic ODE solved by
shooting from the first few as a check (:mod:`tfgen.geometry.geodesics`)."""
from __future__ import annotations

import dataclasses
import time

import numpy as np
import tensorflow as tf

from tfgen import figures
from tfgen.evaluation.latent_selection import decoded_means
from tfgen.evaluation.tasks import EvalContext, SplitName
from tfgen.geometry import curves
from tfgen.geometry.geodesics import GeodesicSolver, Optimizer, initial_velocity, shoot
from tfgen.geometry.metric import decoder_embedding
from tfgen.geometry.tasks.common import (LatentPlane, LatentSource, Variance, background_map,
                                         check_geometry, compile_mode, data_latents,
                                         latents_field, prefix, variance_field, variant_model)
from tfgen.registry import EVALUATIONS
from tfgen.runtime import compile_step
from tfgen.footprint import batch_bytes
from tfgen.schema import TaskConfig, setting


#: a shooting solution "reaches" the end point when it misses by less than this fraction of the
#: Euclidean distance between the end points
SHOOTING_AGREES = 1e-2


@dataclasses.dataclass
class GeodesicsConfig(TaskConfig):
    split: SplitName = setting("test")
    latents: LatentSource = latents_field()
    variance: Variance = variance_field()
    pairs: int = setting(100, at_least=1, at_most=100000, help="random pairs of data latents")
    segments: int = setting(20, at_least=2, at_most=1000, help="T: segments of a discrete curve")
    optimizer: Optimizer = setting("lbfgs", help="energy minimisation by batched L-BFGS or Adam")
    steps: int = setting(0, at_least=0, at_most=100000, help="L-BFGS iterations or Adam steps (0 = "
                                                             "50 for L-BFGS, 300 for Adam)")
    learning_rate: float = setting(0.05, above=0.0, at_most=10.0, help="Adam's step, as a fraction "
                                                                       "of the pair's latent "
                                                                       "distance")
    subdivisions: int = setting(4, at_least=1, at_most=100, help="lengths are measured after "
                                                                 "cutting every segment into this "
                                                                 "many pieces")
    # one batched L-BFGS runs until its slowest curve is done: on latent_geometry.toml's RBF
    # variance 100 pairs took 643 s in one batch (1106 energy evaluations) and 258 s in batches
    # of 20, the same lengths; 100 s either way with the network's sigma (idle machine)
    batch_size: int = setting(20, at_least=1, help="curves optimised at once (one L-BFGS: the "
                                                   "slowest curve sets every curve's iterations)")
    show: int = setting(6, at_least=0, at_most=64, help="pairs drawn and decoded in the figures")
    images: int = setting(11, at_least=2, at_most=64, help="images decoded along each shown curve")
    shooting: int = setting(4, at_least=0, at_most=1000, help="pairs checked against the geodesic "
                                                              "ODE (shooting from the energy "
                                                              "solution; 0 = off)")
    ode_steps: int = setting(50, at_least=1, at_most=10000, help="RK4 steps of the shooting check")
    resolution: int = setting(60, at_least=2, at_most=1000, help="grid side of the background map")

    def check(self, cfg):
        check_geometry(cfg, "geodesics", self.split, self.latents, self.variance)

    def peak(self, shape, act):
        """``batch_size`` curves optimised at once; with gradients counted where ``steps`` is
        set (as the estimate always counted it; steps = 0 optimises too, 50 iterations)."""
        return batch_bytes(shape, act, self.batch_size, backward=bool(self.steps)), ("batch_size",)


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
        fig, axes = figures.panels(1, size=6.0)
        background_map(fig, axes, embed, plane, points2d, params.resolution, 0.25, mode,
                       [f"geodesics (solid) and straight lines (dashed), {params.variance} variance"])
        axes[0].scatter(points2d[:, 0], points2d[:, 1], s=1, c="0.85", linewidths=0)
        lines = curves.straight_lines(tf.constant(start[:show]), tf.constant(end[:show]), 2).numpy()
        figures.draw_paths(axes[0], [plane.project(p) for p in lines], "--")
        figures.draw_paths(axes[0], [plane.project(p) for p in nodes[:show]], "-", colour="red")
        name = prefix("geodesics", params.variance)
        figures.write_figure(fig, ctx.figure(f"{name}.png"), f"eval/{name}", ctx.step)
        # rows: straight line, geodesic, for every shown pair
        along_line = points_along(lines, params.images)
        along_geodesic = points_along(nodes[:show], params.images)
        rows = np.stack([along_line, along_geodesic], 1).reshape(-1, ctx.model.latent_dim)
        grid = figures.image_grid(decoded_means(model, rows), params.images, ctx.data.pixel_range)
        figures.write_png(ctx.figure(f"{name}_images.png"), grid)
        figures.summary_image(f"eval/{name}_images", grid, ctx.step)
    return results


