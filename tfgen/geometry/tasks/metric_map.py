"""The ``metric_map`` task: the magnification factor sqrt(det M(z)) of the expected metric over a
latent grid, data latents on top (Arvanitidis, Hansen & Hauberg 2018, Theorem 1)."""
from __future__ import annotations

import dataclasses
from typing import Literal

import numpy as np

from tfgen import figures
from tfgen.evaluation.tasks import EvalContext, SplitName
from tfgen.geometry.metric import ExpectedMetric, Mode, decoder_embedding, log_magnification
from tfgen.geometry.tasks.common import (LOG10, LatentPlane, LatentSource, check_geometry,
                                         compile_mode, data_latents, label_axes, latents_field,
                                         magnification_grid, prefix, variant_model)
from tfgen.registry import EVALUATIONS
from tfgen.footprint import UNCOUNTED
from tfgen.schema import TaskConfig, setting


@dataclasses.dataclass
class MetricMapConfig(TaskConfig):
    split: SplitName = setting("test", help="whose latents are drawn on top")
    latents: LatentSource = latents_field()
    num_points: int = setting(2000, at_least=1, at_most=100000, help="data latents drawn on the "
                                                                     "map")
    resolution: int = setting(100, at_least=2, at_most=2000, help="grid points per side")
    margin: float = setting(0.25, at_least=0.0, at_most=10.0, help="grid beyond the data, as a "
                                                                   "fraction of the data's extent "
                                                                   "per side")
    variance: Literal["standard", "rbf_precision", "both"] = setting(
        "standard", help="both: the standard and the RBF precision variance side by side")
    mode: Mode = setting("auto", help="Jacobians by forward or reverse mode (auto: forward when "
                                      "d <= the number of decoded outputs)")
    max_evaluations: int = setting(4096, at_least=1, help="decoder evaluations per chunk (memory "
                                                          "bound)")

    def check(self, cfg):
        check_geometry(cfg, "metric_map", self.split, self.latents,
                       "rbf_precision" if self.variance != "standard" else "standard")

    def peak(self, shape, act):
        return UNCOUNTED  # the metric at resolution^2 grid points


@EVALUATIONS.register("metric_map", config=MetricMapConfig)
def metric_map_task(params: MetricMapConfig, ctx: EvalContext) -> dict:
    """Magnification factor sqrt(det M(z)) over a latent grid, data latents on top (Arvanitidis, Hansen & Hauberg 2018; Grisi & Darcet 2020)."""
    data = data_latents(ctx, params.split, params.latents, params.num_points)
    plane = LatentPlane.through(data.points)
    points2d = plane.project(data.points)
    grid, extent = plane.grid(points2d, params.resolution, params.margin)
    variants = ["standard", "rbf_precision"] if params.variance == "both" else [params.variance]
    mode = compile_mode(ctx)
    fig, axes = figures.panels(len(variants))
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
        figures.heat_map(fig, ax, values.reshape(params.resolution, params.resolution), extent,
                         title, "log10 sqrt(det M)")
        figures.scatter_labels(ax, points2d, data.labels)
        label_axes(ax, plane)
    name = "metric_map" if params.variance == "standard" else f"metric_map_{params.variance}"
    figures.write_figure(fig, ctx.figure(f"{name}.png"), f"eval/{name}", ctx.step)
    return results


