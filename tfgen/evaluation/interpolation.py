"""Decoded paths through the latent space: ``interpolation`` between pairs of images (the 2AMU20 VAE
assignment task 3c) and the ``manifold_grid`` of a 2-D latent space (Kingma & Welling 2014, fig. 4).

Interpolation.  The images y_a, y_b of a pair get latents z_a, z_b from a source of
:mod:`tfgen.evaluation.latent_selection` (the encoder's means, or q fitted at test time for a
scheme without an encoder; per-datapoint latents on the training split), and the path at
t_k = k / (N - 1), k = 0..N-1, is decoded with the likelihood's mean E[y | z]:

* ``linear``: z(t) = (1 - t) z_a + t z_b (the 2AMU20 VAE assignment, task 3c, with lambda = 1 - t).
* ``spherical``: slerp (Shoemake 1985, "Animating rotation with quaternion curves"; proposed for
  latent spaces by White 2016, "Sampling generative networks"):
  z(t) = sin((1 - t) W) / sin W z_a + sin(t W) / sin W z_b,
  cos W = z_a . z_b / (|z_a| |z_b|).  Between points of equal norm it stays on their sphere at
  constant angular speed; a linear path instead cuts through the low-norm centre, where few
  latents of a high-dimensional Gaussian lie.  Where sin W is about 0 (parallel or opposite
  latents, or a zero latent) the arc is undefined and the linear path is used.

The metric ``..._mid_norm_ratio`` is |z(1/2)| / ((|z_a| + |z_b|) / 2), averaged over the
pairs: how far the path's midpoint falls inside the endpoints' norm (White 2016, sec. 2.1).

Manifold grid (d = 2): latents at the prior's quantiles, z = (F_1^-1(u_i), F_2^-1(u_j)) for u on
a regular grid of [margin, 1 - margin] (Kingma & Welling: "linearly spaced coordinates on the
unit square were transformed through the inverse CDF of the Gaussian"), decoded; columns go
along z1, rows down from high to low z2, as on a plot.  A d > 2 latent space has no such grid
over the prior; it is refused at load time.
"""
from __future__ import annotations

import dataclasses
from typing import ClassVar, Literal

import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

from tfgen import figures
from tfgen.errors import ConfigError, TfgenError
from tfgen.evaluation.latent_selection import (Source, SourceSplit, check_source,
                                               decoded_means, latent_dim, latent_means,
                                               resolve_task_source_split, source_field, split_field)
from tfgen.evaluation.tasks import EvalContext, task_key
from tfgen.inference.capabilities import DecoderLikelihood, require
from tfgen.registry import EVALUATIONS
from tfgen.footprint import UNCOUNTED
from tfgen.schema import TaskConfig, setting

tfd = tfp.distributions

Kind = Literal["linear", "spherical"]
#: below this sin W, slerp falls back to the linear path
SLERP_EPSILON = 1e-6


def lerp(a: np.ndarray, b: np.ndarray, t: np.ndarray) -> np.ndarray:
    """[n, d], [n, d], [T] -> [n, T, d]: (1 - t) a + t b."""
    a, b, t = np.asarray(a, np.float64), np.asarray(b, np.float64), np.asarray(t, np.float64)
    return (1.0 - t)[None, :, None] * a[:, None] + t[None, :, None] * b[:, None]


def slerp(a: np.ndarray, b: np.ndarray, t: np.ndarray) -> np.ndarray:
    """[n, d], [n, d], [T] -> [n, T, d]: Shoemake's slerp per pair (module docstring), in float64."""
    a, b, t = np.asarray(a, np.float64), np.asarray(b, np.float64), np.asarray(t, np.float64)
    norms = np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1)
    cos = np.clip(np.sum(a * b, axis=-1) / np.where(norms > 0, norms, 1.0), -1.0, 1.0)
    omega = np.arccos(cos)[:, None]                                   # [n, 1]
    sin = np.sin(omega)
    arc = sin > SLERP_EPSILON
    safe = np.where(arc, sin, 1.0)
    wa = np.where(arc, np.sin((1.0 - t)[None] * omega) / safe, (1.0 - t)[None])   # [n, T]
    wb = np.where(arc, np.sin(t[None] * omega) / safe, t[None])
    return wa[..., None] * a[:, None] + wb[..., None] * b[:, None]


def interpolate(a, b, steps: int, kind: str) -> np.ndarray:
    """Latents [n, steps, d] (float32) from a to b at t = 0, 1/(steps-1), ..., 1."""
    t = np.linspace(0.0, 1.0, steps)
    path = slerp(a, b, t) if kind == "spherical" else lerp(a, b, t)
    path[:, 0], path[:, -1] = a, b   # exactly the endpoints
    return path.astype(np.float32)


# --------------------------------------------------------------------------- interpolation

@dataclasses.dataclass
class InterpolationConfig(TaskConfig):
    prefer_latents: ClassVar[bool] = False
    source: Source = source_field("encoder, else posterior")
    split: SourceSplit = split_field()
    pairs: list[list[int]] = setting(factory=list, at_least=0, help="[[i, j], ...]: indices of the "
                                     "split's images to join (empty: num_pairs random pairs)")
    num_pairs: int = setting(8, at_least=1, at_most=1000, help="random pairs when pairs is empty "
                                                               "(seeded)")
    steps: int = setting(10, at_least=2, at_most=200, help="decoded latents per path, endpoints "
                                                           "included")
    kind: Kind = setting("linear", help="linear: (1 - t) z_a + t z_b; spherical: slerp "
                                        "(White 2016)")
    originals: bool = setting(True, help="frame each row with the two images it joins")

    def check(self, cfg):
        require(cfg, DecoderLikelihood, task_key(cfg, self), "task 'interpolation'",
                alternative="drop this [[evaluate]] entry")
        check_source(cfg, self, "interpolation")
        for i, pair in enumerate(self.pairs):
            if len(pair) != 2:
                raise ConfigError(cfg.source_file, f"{task_key(cfg, self)}.pairs[{i}]",
                                  "a pair is two image indices", pair, "[i, j]")

    def peak(self, shape, act):
        return UNCOUNTED  # num_pairs x steps latents decoded

    def check_data(self, cfg, data) -> None:
        """The pairs' indices exist in the split (before a run directory exists)."""
        _, split = resolve_task_source_split(cfg, self)
        if getattr(data, split) is None:
            return   # an empty split: refused by check() already
        size = len(getattr(data, split))
        if not self.pairs and size < 2:
            raise ConfigError(cfg.source_file, f"{task_key(cfg, self)}.split", f"random pairs "
                              f"need two images, the {split} split has {size}", self.split,
                              "a split of two or more images, or pairs = [[i, j], ...]")
        for i, pair in enumerate(self.pairs):
            if max(pair) >= size:
                raise ConfigError(cfg.source_file, f"{task_key(cfg, self)}.pairs[{i}]",
                                  f"the {split} split has {size} images", pair,
                                  f"indices 0 to {size - 1}")


def pair_indices(params: InterpolationConfig, size: int, seed: int) -> np.ndarray:
    """[P, 2]: the configured pairs, or num_pairs random pairs of distinct images."""
    if params.pairs:
        return np.asarray(params.pairs, np.int64)
    rng = np.random.default_rng([seed, 31])
    return np.stack([rng.choice(size, 2, replace=False) for _ in range(params.num_pairs)])


@EVALUATIONS.register("interpolation", config=InterpolationConfig)
def interpolation_task(params: InterpolationConfig, ctx: EvalContext) -> dict:
    """Decoded latent paths between pairs of images, linear or spherical (the 2AMU20 VAE assignment, task 3c)."""
    source, split_name = resolve_task_source_split(ctx.cfg, params)
    split = ctx.split(split_name, f"{task_key(ctx.cfg, params)}.split")
    pairs = pair_indices(params, len(split), ctx.cfg.experiment.seed)
    latents = latent_means(ctx.scheme, split, source, pairs.reshape(-1), ctx.cfg.experiment.seed)
    za, zb = latents[0::2], latents[1::2]
    path = interpolate(za, zb, params.steps, params.kind)
    decoded = decoded_means(ctx.model, path).reshape(len(pairs), params.steps,
                                                     *split.images.shape[1:])
    rows = decoded
    if params.originals:
        rows = np.concatenate([split.images[pairs[:, 0]][:, None], decoded,
                               split.images[pairs[:, 1]][:, None]], axis=1)
    grid = figures.image_grid(rows.reshape(-1, *rows.shape[2:]), rows.shape[1],
                              ctx.data.pixel_range)
    name = f"interpolation_{params.kind}_{source}_{split_name}_{'pairs' if params.pairs else 'random'}"
    figures.write_png(ctx.figure(f"{name}.png"), grid)
    figures.summary_image(f"eval/{name}", grid, ctx.step)
    middle = interpolate(za, zb, 3, params.kind)[:, 1]
    ends = 0.5 * (np.linalg.norm(za, axis=-1) + np.linalg.norm(zb, axis=-1))
    ratio = np.linalg.norm(middle, axis=-1) / np.maximum(ends, 1e-12)
    return {f"{name}_mid_norm_ratio": float(ratio.mean()), f"{name}_rows": float(len(pairs))}


# --------------------------------------------------------------------------- manifold grid

@dataclasses.dataclass
class ManifoldGridConfig(TaskConfig):
    size: int = setting(20, at_least=2, at_most=100, help="latents per side")
    margin: float = setting(0.05, above=0.0, at_most=0.49, help="the grid's quantiles run from "
                                                                "margin to 1 - margin (0 and 1 are "
                                                                "infinite)")

    def check(self, cfg):
        require(cfg, DecoderLikelihood, task_key(cfg, self), "task 'manifold_grid'",
                alternative="drop this [[evaluate]] entry")
        d = latent_dim(cfg)
        if d != 2:
            raise ConfigError(cfg.source_file, f"{task_key(cfg, self)}.task", f"task "
                              f"'manifold_grid' decodes a grid over a 2-D latent space, but the "
                              f"latent dimension is {d} (for d > 2, 'latent_scatter' draws the "
                              f"latents' PCA plane and 'interpolation' decodes paths)",
                              "manifold_grid", "model.prior.dim = 2")

    def peak(self, shape, act):
        return UNCOUNTED  # size^2 latents decoded


def prior_quantile_grid(prior_distribution, size: int, margin: float) -> np.ndarray:
    """[size, size, 2]: row r, column c holds (F_1^-1(u_c), F_2^-1(u_{size-1-r})), u regular
    on [margin, 1 - margin], for a prior with independent Gaussian coordinates."""
    if not isinstance(prior_distribution, tfd.MultivariateNormalDiag):
        raise TfgenError(f"manifold_grid needs a prior with independent Gaussian coordinates "
                         f"(its quantiles); got {type(prior_distribution).__name__}")
    marginals = tfd.Normal(prior_distribution.mean(), prior_distribution.stddev())
    u = np.linspace(margin, 1.0 - margin, size)
    q = np.asarray(marginals.quantile(tf.constant(u[:, None], prior_distribution.dtype)))  # [size, 2]
    z1, z2 = np.meshgrid(q[:, 0], q[::-1, 1])
    return np.stack([z1, z2], axis=-1).astype(np.float32)


@EVALUATIONS.register("manifold_grid", config=ManifoldGridConfig)
def manifold_grid_task(params: ManifoldGridConfig, ctx: EvalContext) -> dict:
    """Images decoded over a grid of the 2-D prior's quantiles (Kingma & Welling 2014, fig. 4)."""
    grid_z = prior_quantile_grid(ctx.model.prior.distribution(), params.size, params.margin)
    images = decoded_means(ctx.model, grid_z)
    grid = figures.image_grid(images, params.size, ctx.data.pixel_range, pad=0)
    figures.write_png(ctx.figure("manifold_grid.png"), grid)
    figures.summary_image("eval/manifold_grid", grid, ctx.step)
    return {}
