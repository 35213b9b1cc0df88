"""The ``geodesic_kmeans`` task: k-medoids with graph geodesic distances against Euclidean
k-means and k-medoids, scored by purity against the labels (Grisi & Darcet 2020, "Experiment 1";
:mod:`tfgen.geometry.clustering`)."""
from __future__ import annotations

import dataclasses
import time

import numpy as np

from tfgen import figures
from tfgen.evaluation.tasks import EvalContext, SplitName
from tfgen.geometry import clustering
from tfgen.geometry.metric import decoder_embedding
from tfgen.geometry.tasks.common import (LatentPlane, LatentSource, Variance, check_geometry,
                                         compile_mode, data_latents, label_axes, latents_field,
                                         prefix, variance_field, variant_model)
from tfgen.models.kmeans import kmeans, squared_distances
from tfgen.registry import EVALUATIONS
from tfgen.footprint import UNCOUNTED
from tfgen.schema import TaskConfig, setting


@dataclasses.dataclass
class GeodesicKMeansConfig(TaskConfig):
    split: SplitName = setting("test")
    latents: LatentSource = latents_field()
    variance: Variance = variance_field()
    num_points: int = setting(1000, at_least=2, at_most=5000, help="latents clustered (the "
                                                                   "distance matrix is "
                                                                   "num_points^2)")
    clusters: int = setting(0, at_least=0, at_most=1000, help="k (0 = the number of labels "
                                                              "present)")
    neighbours: int = setting(10, at_least=1, at_most=1000, help="nearest neighbours joined in the "
                                                                 "graph")
    subdivisions: int = setting(4, at_least=1, at_most=100, help="pieces per edge when measuring "
                                                                 "its length")
    restarts: int = setting(10, at_least=1, at_most=1000, help="seedings; the lowest-cost run is "
                                                               "kept")

    def check(self, cfg):
        check_geometry(cfg, "geodesic_kmeans", self.split, self.latents, self.variance)

    def peak(self, shape, act):
        return UNCOUNTED  # num_points latents, the metric along the graph's edges


@EVALUATIONS.register("geodesic_kmeans", config=GeodesicKMeansConfig)
def geodesic_kmeans_task(params: GeodesicKMeansConfig, ctx: EvalContext) -> dict:
    """k-medoids with graph geodesic distances against Euclidean k-means: purity (Arvanitidis, Hansen & Hauberg 2018; Grisi & Darcet 2020)."""
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
    euclidean = np.sqrt(squared_distances(data.points, data.points))
    runs = {
        "euclidean_kmeans": kmeans(data.points, k, seed, params.restarts)[0],
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
    fig, axes = figures.panels(3)
    for ax, (title, colours) in zip(axes, [("labels", data.labels),
                                           ("Euclidean k-means", runs["euclidean_kmeans"]),
                                           ("geodesic k-medoids", runs["geodesic_kmedoids"])]):
        figures.scatter_labels(ax, points2d, colours, size=5, legend=title == "labels")
        purity = "" if title == "labels" else f": purity {clustering.purity(colours, data.labels):.3f}"
        ax.set_title(title + purity, fontsize=10)
        label_axes(ax, plane)
    figures.write_figure(fig, ctx.figure(f"{key}.png"), f"eval/{key}", ctx.step)
    return results


