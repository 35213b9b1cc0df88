"""Clustering latents with geodesic distances against Euclidean k-means (Grisi & Darcet 2020, Experiment 1).

Geodesic distances between many points.  Solving a boundary problem for each of n^2 / 2
pairs is out of reach, so, after Chen et al. (2019, "Fast approximate geodesics"), the
points become the nodes of a graph: every point is joined to its ``neighbours`` nearest
points (Euclidean, in the latent space), each edge weighted by the Riemannian length of the
straight latent segment between its ends (:func:`tfgen.geometry.curves.riemannian_length`,
decoder passes only), and the geodesic distance is the shortest-path distance
(Floyd-Warshall, O(n^3) vectorised: about a second for n = 1000).  Where the graph falls
apart into pieces the neighbour count is doubled until it is connected.

Clustering.  Grisi & Darcet's (2020) geodesic k-means assigns every point to the nearest centre in
geodesic distance and moves each centre to the point minimising the sum of squared
geodesic distances of its cluster (a Frechet mean).  On the graph the centres are data
points: this is k-medoids (Kaufman & Rousseeuw 1987) on the squared graph distances, with
the k-means++ seeding (Arthur & Vassilvitskii 2007) on those distances and the lowest-cost
run of ``restarts``.  The baselines are Lloyd's k-means in the Euclidean latent space
(:func:`tfgen.models.kmeans.kmeans`) and, to tell the metric's effect from the algorithm's,
the same k-medoids on Euclidean distances.  Purity: the fraction of points whose cluster's majority label is their own.
"""
from __future__ import annotations

import functools

import numpy as np
import tensorflow as tf

from tfgen.geometry import curves
from tfgen.geometry.metric import Embedding
from tfgen.models.kmeans import plus_plus, squared_distances
from tfgen.runtime import compile_step


def segment_lengths(embed: Embedding, a, b, subdivisions: int = 4, batch: int = 1024,
                    compile_mode: str = "auto") -> np.ndarray:
    """Riemannian lengths of the straight segments a_i -> b_i ([E, d] each), [E]."""
    measure = compile_step(functools.partial(_segment_length, embed, subdivisions), compile_mode)
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    out = []
    for lo in range(0, len(a), batch):
        rows = slice(lo, lo + batch)
        count = len(a[rows])
        # pad to one shape (no retracing)
        pa = np.concatenate([a[rows], np.repeat(a[rows][-1:], batch - count, 0)])
        pb = np.concatenate([b[rows], np.repeat(b[rows][-1:], batch - count, 0)])
        out.append(measure(tf.constant(pa), tf.constant(pb)).numpy()[:count])
    return np.concatenate(out) if out else np.zeros(0, np.float32)


def _segment_length(embed, subdivisions, a, b):
    return curves.riemannian_length(embed, tf.stack([a, b], axis=1), subdivisions)


def nearest_neighbour_edges(points: np.ndarray, neighbours: int) -> np.ndarray:
    """Undirected edges (i < j) joining every point to its ``neighbours`` nearest, [E, 2]."""
    squared = squared_distances(points, points)
    np.fill_diagonal(squared, np.inf)
    k = min(neighbours, len(points) - 1)
    nearest = np.argpartition(squared, k - 1, axis=1)[:, :k]
    i = np.repeat(np.arange(len(points)), k)
    pairs = np.sort(np.stack([i, nearest.reshape(-1)], axis=1), axis=1)
    return np.unique(pairs, axis=0)


def shortest_paths(num_nodes: int, edges: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """All-pairs shortest-path distances of an undirected weighted graph (Floyd-Warshall)."""
    dist = np.full((num_nodes, num_nodes), np.inf)
    np.fill_diagonal(dist, 0.0)
    dist[edges[:, 0], edges[:, 1]] = weights
    dist[edges[:, 1], edges[:, 0]] = weights
    for k in range(num_nodes):
        np.minimum(dist, dist[:, k, None] + dist[None, k, :], out=dist)
    return dist


def graph_geodesic_distances(embed: Embedding, points, neighbours: int = 10,
                             subdivisions: int = 4, compile_mode: str = "auto") -> tuple[np.ndarray, int]:
    """Approximate geodesic distances between all points, [n, n], and the neighbour count
    that made the graph connected."""
    points = np.asarray(points, np.float32)
    n = len(points)
    while True:
        edges = nearest_neighbour_edges(points, neighbours)
        weights = segment_lengths(embed, points[edges[:, 0]], points[edges[:, 1]], subdivisions,
                                  compile_mode=compile_mode)
        dist = shortest_paths(n, edges, weights.astype(np.float64))
        if np.isfinite(dist).all() or neighbours >= n - 1:
            return dist, neighbours
        neighbours = min(2 * neighbours, n - 1)


def kmedoids(distances, k: int, seed: int = 0, restarts: int = 10,
             iterations: int = 100) -> tuple[np.ndarray, np.ndarray, float]:
    """k-medoids on a distance matrix [n, n], minimising the sum of squared distances to the
    medoid (Grisi & Darcet 2020: the centre minimises the sum of squared geodesic distances of its
    cluster): (assignments [n], medoid indices [k], cost)."""
    squared = np.square(np.asarray(distances, np.float64))
    n = len(squared)
    rng = np.random.default_rng(seed)
    best = None
    for _ in range(restarts):
        medoids = np.array(plus_plus(lambda i: squared[:, i], n, k, rng))
        for _ in range(iterations):
            assign = squared[:, medoids].argmin(1)
            moved = medoids.copy()
            for c in range(k):
                members = np.flatnonzero(assign == c)
                if len(members):
                    moved[c] = members[squared[np.ix_(members, members)].sum(0).argmin()]
            if np.array_equal(moved, medoids):
                break
            medoids = moved
        assign = squared[:, medoids].argmin(1)
        cost = float(squared[np.arange(n), medoids[assign]].sum())
        if best is None or cost < best[2]:
            best = (assign, medoids, cost)
    return best


def purity(assignments, labels) -> float:
    """Sum over clusters of the count of its most frequent label, over n (labels >= 0 only)."""
    assignments, labels = np.asarray(assignments), np.asarray(labels)
    known = labels >= 0
    if not known.any():
        return float("nan")
    assignments, labels = assignments[known], labels[known]
    total = 0
    for c in np.unique(assignments):
        total += np.bincount(labels[assignments == c]).max()
    return float(total / len(labels))
