"""The ``random_walk`` task: Euclidean random walks in the latent space against walks whose
steps have covariance M(z)^-1 (the random-walk experiment of Grisi & Darcet 2020;
:mod:`tfgen.geometry.random_walk`), decoded."""
from __future__ import annotations

import dataclasses
import time

import numpy as np
import tensorflow as tf

from tfgen import figures
from tfgen.evaluation.latent_selection import decoded_means
from tfgen.evaluation.tasks import EvalContext, SplitName
from tfgen.geometry import curves
from tfgen.geometry.metric import ExpectedMetric, decoder_embedding, log_magnification
from tfgen.geometry.random_walk import random_walks
from tfgen.geometry.tasks.common import (LatentPlane, LatentSource, Variance, background_map,
                                         check_geometry, compile_mode, data_latents,
                                         latents_field, prefix, variance_field, variant_model)
from tfgen.registry import EVALUATIONS
from tfgen.footprint import UNCOUNTED
from tfgen.schema import TaskConfig, setting


@dataclasses.dataclass
class RandomWalkConfig(TaskConfig):
    split: SplitName = setting("test", help="walks start at the latents of this split's images")
    latents: LatentSource = latents_field()
    variance: Variance = variance_field()
    walks: int = setting(6, at_least=1, at_most=1000)
    steps: int = setting(100, at_least=1, at_most=100000)
    step_size: float = setting(0.05, above=0.0, at_most=100.0, help="s: Euclidean step sd; a "
                                                                    "Riemannian step has "
                                                                    "covariance s^2 m M(z)^-1")
    show_every: int = setting(10, at_least=1, help="decode every this many steps")
    scale_points: int = setting(500, at_least=1, help="data latents whose median det(M)^(1/d) is m")
    resolution: int = setting(60, at_least=2, at_most=1000, help="grid side of the background map")

    def check(self, cfg):
        check_geometry(cfg, "random_walk", self.split, self.latents, self.variance)

    def peak(self, shape, act):
        return UNCOUNTED  # walks x steps metric evaluations


@EVALUATIONS.register("random_walk", config=RandomWalkConfig)
def random_walk_task(params: RandomWalkConfig, ctx: EvalContext) -> dict:
    """Euclidean walks against walks with covariance M(z)^-1 (the random-walk experiment of Grisi & Darcet 2020), decoded."""
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
    fig, axes = figures.panels(2)
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
            # how even the pace of change of the decoded images is (Grisi & Darcet 2020: "regular
            # changes")
            f"{key}_{kind}_riemannian_step_cv": float((riemannian.std(1) / riemannian.mean(1)).mean()),
            f"{key}_{kind}_final_norm_mean": float(np.linalg.norm(path[:, -1], axis=-1).mean()),
        })
        ax.scatter(points2d[:, 0], points2d[:, 1], s=1, c="0.85", linewidths=0)
        figures.draw_paths(ax, [plane.project(p) for p in path], "-", colour="red", width=0.8)
        images = decoded_means(model, path[:, shown])
        grid = figures.image_grid(images, len(shown), ctx.data.pixel_range)
        figures.write_png(ctx.figure(f"{key}_{kind}.png"), grid)
        figures.summary_image(f"eval/{key}_{kind}", grid, ctx.step)
    figures.write_figure(fig, ctx.figure(f"{key}_paths.png"), f"eval/{key}_paths", ctx.step)
    return results


