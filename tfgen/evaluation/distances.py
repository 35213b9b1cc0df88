"""Distances between two sets of image features: FID, KID, and precision/recall.

All in NumPy float64, on features [n, D] (rows = images) from any extractor (tfgen's own
classifier, :mod:`tfgen.evaluation.classifier`, or InceptionV3, :mod:`tfgen.evaluation.inception`).

* FID, the Frechet distance between Gaussians fitted to the two sets (Heusel et al. 2017,
  "GANs trained by a two time-scale update rule converge to a local Nash equilibrium", eq. (6);
  the 2-Wasserstein distance between Gaussians, Dowson & Landau 1982):

      FID = ||mu_1 - mu_2||^2 + tr(S_1 + S_2 - 2 (S_1 S_2)^{1/2}).

  tr((S_1 S_2)^{1/2}) is taken as sum_i sqrt(lambda_i) over the eigenvalues of the symmetric
  positive semi-definite A = S_1^{1/2} S_2 S_1^{1/2}, which has the eigenvalues of S_1 S_2;
  both square roots come from ``eigh`` with negative round-off clipped to 0, so no complex
  parts and no ``sqrtm`` iteration are involved.
* KID, the squared maximum mean discrepancy with the cubic polynomial kernel
  k(x, y) = (x.y / D + 1)^3, unbiased estimator (Binkowski et al. 2018, "Demystifying MMD
  GANs", section 4 / appendix; Gretton et al. 2012, eq. (3)), averaged over random subsets:

      MMD^2_u = 1/(m(m-1)) sum_{i != j} [k(x_i, x_j) + k(y_i, y_j)] - 2/m^2 sum_{i,j} k(x_i, y_j).

* Improved precision and recall (Kynkaenniemi et al. 2019, "Improved precision and recall
  metric for assessing generative models", eqs. (1)-(2)): each set's manifold is the union of
  balls around its points of radius the distance to the point's k-th nearest neighbour in the
  set; precision = the share of generated points inside the real manifold, recall = the share
  of real points inside the generated manifold.
"""
from __future__ import annotations

import numpy as np

#: rows of a pairwise-distance block: memory stays O(CHUNK x n)
CHUNK = 1000


def _features(x) -> np.ndarray:
    x = np.asarray(x, np.float64)
    if x.ndim != 2 or len(x) < 2:
        raise ValueError(f"expected features [n >= 2, D], got shape {x.shape}")
    return x


def moments(features) -> tuple[np.ndarray, np.ndarray]:
    """(mean, covariance with the 1/(n-1) normalisation) of features [n, D], float64."""
    x = _features(features)
    mean = x.mean(axis=0)
    centred = x - mean
    return mean, centred.T @ centred / (len(x) - 1)


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    """The symmetric square root of a symmetric PSD matrix (eigh; negative round-off -> 0)."""
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T


def trace_sqrt_product(sigma1, sigma2) -> float:
    """tr((S_1 S_2)^{1/2}) = sum sqrt(eig(S_1^{1/2} S_2 S_1^{1/2})) for PSD S_1, S_2."""
    root = _psd_sqrt(np.asarray(sigma1, np.float64))
    inner = root @ np.asarray(sigma2, np.float64) @ root
    values = np.linalg.eigvalsh((inner + inner.T) / 2)
    return float(np.sqrt(np.clip(values, 0.0, None)).sum())


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """||mu_1 - mu_2||^2 + tr(S_1 + S_2 - 2 (S_1 S_2)^{1/2}) (Heusel et al. 2017, eq. (6))."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    value = (float(np.sum((mu1 - mu2) ** 2)) + float(np.trace(sigma1)) + float(np.trace(sigma2))
             - 2.0 * trace_sqrt_product(sigma1, sigma2))
    return max(value, 0.0)  # round-off can take an exact 0 slightly below


def fid(features1, features2) -> float:
    """FID between two feature sets [n_1, D], [n_2, D]."""
    return frechet_distance(*moments(features1), *moments(features2))


def polynomial_mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD^2 of two equal-sized sets with k(a, b) = (a.b / D + 1)^3 (Binkowski et al.
    2018; Gretton et al. 2012, eq. (3))."""
    m, dim = x.shape
    k_xx = (x @ x.T / dim + 1.0) ** 3
    k_yy = (y @ y.T / dim + 1.0) ** 3
    k_xy = (x @ y.T / dim + 1.0) ** 3
    within = ((k_xx.sum() - np.trace(k_xx)) + (k_yy.sum() - np.trace(k_yy))) / (m * (m - 1))
    return float(within - 2.0 * k_xy.sum() / (m * m))


def kid(features1, features2, subsets: int = 100, subset_size: int = 1000,
        seed: int = 0) -> tuple[float, float]:
    """KID: the mean and standard deviation of the unbiased polynomial-kernel MMD^2 over
    ``subsets`` random subsets of ``min(subset_size, n_1, n_2)`` points of each set, drawn
    without replacement within a subset (Binkowski et al. 2018)."""
    x, y = _features(features1), _features(features2)
    m = min(subset_size, len(x), len(y))
    rng = np.random.default_rng(seed)
    values = np.array([polynomial_mmd2_unbiased(x[rng.choice(len(x), m, replace=False)],
                                                y[rng.choice(len(y), m, replace=False)])
                       for _ in range(subsets)])
    return float(values.mean()), float(values.std(ddof=1) if subsets > 1 else 0.0)


def _squared_distances(a: np.ndarray, b: np.ndarray, b_norms: np.ndarray) -> np.ndarray:
    d2 = (a * a).sum(axis=1)[:, None] - 2.0 * a @ b.T + b_norms[None, :]
    return np.maximum(d2, 0.0)


def knn_radii(features, k: int = 3) -> np.ndarray:
    """Squared distance from each point to its k-th nearest neighbour in the set (itself
    excluded), computed ``CHUNK`` rows at a time."""
    x = _features(features)
    if not 1 <= k < len(x):
        raise ValueError(f"k = {k} needs 1 <= k < the set's size {len(x)}")
    norms = (x * x).sum(axis=1)
    radii = np.empty(len(x))
    for start in range(0, len(x), CHUNK):
        d2 = _squared_distances(x[start:start + CHUNK], x, norms)
        rows = np.arange(d2.shape[0])
        d2[rows, start + rows] = np.inf  # not one's own neighbour
        radii[start:start + CHUNK] = np.partition(d2, k - 1, axis=1)[:, k - 1]
    return radii


def inside_manifold(points, manifold, radii) -> np.ndarray:
    """For each point: is it within radius_j of some manifold point j (boolean [n])."""
    p, m = _features(points), _features(manifold)
    norms = (m * m).sum(axis=1)
    inside = np.empty(len(p), bool)
    # a relative slack so that a point that is a manifold point counts whatever the round-off
    slack = 1e-9 * (1.0 + radii)
    for start in range(0, len(p), CHUNK):
        d2 = _squared_distances(p[start:start + CHUNK], m, norms)
        inside[start:start + CHUNK] = (d2 <= (radii + slack)[None, :]).any(axis=1)
    return inside


def precision_recall(real, generated, k: int = 3) -> tuple[float, float]:
    """(precision, recall) of generated against real features (Kynkaenniemi et al. 2019)."""
    real, generated = _features(real), _features(generated)
    precision = inside_manifold(generated, real, knn_radii(real, k)).mean()
    recall = inside_manifold(real, generated, knn_radii(generated, k)).mean()
    return float(precision), float(recall)
