"""A scheme's pictures as image grids: decoded samples and reconstructions, shown in
TensorBoard during training (:mod:`tfgen.training`, a scheme's own summaries) and written by
the ``samples`` and ``reconstructions`` evaluation tasks."""
from __future__ import annotations

import dataclasses
from typing import Literal

import numpy as np
import tensorflow as tf

from tfgen import figures
from tfgen.footprint import batch_bytes
from tfgen.inference.capabilities import ImageSampler, has
from tfgen.inference.samplers import Sampler, check_sampler, sample_latents
from tfgen.schema import TaskConfig, setting


def reconstruction_grid(scheme, images, ncols, pixel_range) -> np.ndarray:
    """Originals above their reconstructions E[y | z = posterior mean], ``ncols`` a row."""
    recon = scheme.reconstruct(tf.constant(images)).numpy()
    return figures.stacked_grid([images, recon], ncols, pixel_range)


@dataclasses.dataclass
class SamplesConfig(TaskConfig):
    """A grid of samples (the ``samples`` task's settings)."""

    num_images: int = setting(64, at_least=1, at_most=1024)
    ncols: int = setting(8, at_least=1, at_most=64)
    sampler: Sampler = setting("prior", help="where the latents come from: the prior, or a "
                                             "Gaussian fitted to a particle cloud (PGA)")
    show: Literal["mean", "sample"] = setting("mean", help="decoder mean E[y|z], or a draw y ~ "
                                                           "p(y|z)")

    def check(self, cfg):
        check_samples(cfg, self.sampler, "evaluate.sampler")

    def peak(self, shape, act):
        return batch_bytes(shape, act, self.num_images), ("num_images",)


def check_samples(cfg, sampler: str, key: str) -> None:
    """Load-time: the scheme can give images from ``sampler`` (``key`` names it in errors)."""
    if has(cfg, ImageSampler) and sampler == "prior":
        return  # the model's own samples
    check_sampler(cfg, sampler, key)


def draw_images(scheme, num: int, sampler: str, show: str, seed: int) -> np.ndarray:
    """``num`` images [num, H, W, C] in the data's pixel range: the model's own samples
    (:class:`ImageSampler`), else latents from ``sampler`` (z ~ p(z) from the seed
    [seed, 0]) decoded to E[y | z] (``show = "mean"``) or to a draw y ~ p(y | z) (seed
    [seed, 1])."""
    if isinstance(scheme, ImageSampler):  # a model without a latent to decode
        return np.asarray(scheme.sample_images(num, seed, mean=show == "mean"))
    z = sample_latents(sampler, scheme, num, seed)
    out = scheme.model.decode(z)
    lik = scheme.model.likelihood
    images = lik.mean(out) if show == "mean" else lik.sample(out, seed=tf.constant([seed, 1]))
    return np.asarray(images)

    def peak(self, shape, act):
        return batch_bytes(shape, act, self.num_images), ("num_images",)


def sample_grid(scheme, params: SamplesConfig, seed: int, pixel_range) -> np.ndarray:
    """Images decoded from latents drawn by ``params.sampler`` (or, for a model without a
    latent to decode, the model's own samples), ``params.ncols`` a row."""
    images = draw_images(scheme, params.num_images, params.sampler, params.show, seed)
    return figures.image_grid(images, params.ncols, pixel_range)
