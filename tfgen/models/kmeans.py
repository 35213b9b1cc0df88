"""k-means++ seeding and Lloyd's k-means: the starts of the Gaussian mixtures' EM
(:mod:`tfgen.models.gmm`, ``scheme = "em"``'s mixture) and the Euclidean clusterings of the
latent geometry (:mod:`tfgen.geometry.clustering`, the RBF precision's centres).

k-means++ (Arthur & Vassilvitskii 2007, "k-means++: the advantages of careful seeding"): the
first centre uniformly at random, each next one with probability proportional to the squared
distance to the nearest centre chosen so far.  Lloyd's algorithm (Lloyd 1982, "Least squares
quantization in PCM") then alternates assigning every point to its nearest centre and moving
every centre to the mean of its points (a centre that no point picks stays where it is).
"""
from __future__ import annotations

from typing import Callable

import numpy as np


def squared_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """||a_i - b_j||^2 [n, m] in float64, expanded into matrix products (no [n, m, d] array);
    the expansion's rounding below zero is clipped."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    out = (a * a).sum(1)[:, None] - 2.0 * a @ b.T + (b * b).sum(1)[None, :]
    return np.maximum(out, 0.0)


def plus_plus(squared_to: Callable[[int], np.ndarray], n: int, k: int,
              rng: np.random.Generator) -> list[int]:
    """k-means++ seeding: the indices of k of n points.  ``squared_to(i)`` gives the squared
    distances [n] of all points to point i (coordinates or a precomputed distance matrix)."""
    chosen = [int(rng.integers(n))]
    nearest = squared_to(chosen[0])
    for _ in range(1, k):
        total = nearest.sum()
        # every point coincides with a centre already (duplicated data): any choice is as good
        pick = int(rng.choice(n, p=nearest / total)) if total > 0 else int(rng.integers(n))
        chosen.append(pick)
        nearest = np.minimum(nearest, squared_to(pick))
    return chosen


def kmeans_plus_plus(x, k: int, rng: np.random.Generator) -> np.ndarray:
    """k initial centres [k, D] (float64) chosen from the rows of ``x`` by k-means++."""
    x = np.asarray(x, np.float64)
    return x[plus_plus(lambda i: ((x - x[i]) ** 2).sum(1), len(x), k, rng)]


def lloyd(x: np.ndarray, centres: np.ndarray, iterations: int,
          until_still: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Lloyd's steps from ``centres``: (assignments [n], centres [k, D]).  At most
    ``iterations`` steps; ``until_still``: stop early once no centre moves (np.allclose)."""
    centres = np.array(centres, np.float64)
    for _ in range(iterations):
        assign = squared_distances(x, centres).argmin(1)
        moved = np.array([x[assign == c].mean(0) if np.any(assign == c) else centres[c]
                          for c in range(len(centres))])
        if until_still and np.allclose(moved, centres):
            break
        centres = moved
    return squared_distances(x, centres).argmin(1), centres


def kmeans(points, k: int, seed: int = 0, restarts: int = 10,
           iterations: int = 100) -> tuple[np.ndarray, np.ndarray, float]:
    """Lloyd's k-means from k-means++ seeds, the lowest-cost of ``restarts`` runs (one
    generator from ``seed`` for all): (assignments [n], centres [k, d], cost = the sum of
    squared distances to the assigned centres)."""
    x = np.asarray(points, np.float64)
    rng = np.random.default_rng(seed)
    best = None
    for _ in range(restarts):
        assign, centres = lloyd(x, kmeans_plus_plus(x, k, rng), iterations)
        cost = float(squared_distances(x, centres)[np.arange(len(x)), assign].sum())
        if best is None or cost < best[2]:
            best = (assign, centres, cost)
    return best
