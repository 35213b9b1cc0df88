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
from tfgen.schema import TaskConfig, field


def reconstruction_grid(scheme, images, ncols, pixel_range) -> np.ndarray:
    """Originals above their reconstructions E[y | z = posterior mean], ``ncols`` a row."""
    recon = scheme.reconstruct(tf.constant(images)).numpy()
    return figures.stacked_grid([images, recon], ncols, pixel_range)


@dataclasses.dataclass
class SamplesConfig(TaskConfig):
    """A grid of samples (the ``samples`` task's settings)."""

    num_images: int = field(64, min=1, max=1024)
    ncols: int = field(8, min=1, max=64)
    sampler: Sampler = field("prior", help="where the latents come from: the prior, or a "
                                           "Gaussian fitted to a particle cloud (PGA)")
    show: Literal["mean", "sample"] = field("mean", help="decoder mean E[y|z], or a draw y ~ p(y|z)")

    def check(self, cfg):
        if has(cfg, ImageSampler) and self.sampler == "prior":
            return  # the model's own samples
        check_sampler(cfg, self.sampler, "evaluate.sampler")

    def peak(self, shape, act):
        return batch_bytes(shape, act, self.num_images), ("num_images",)


def sample_grid(scheme, params: SamplesConfig, seed: int, pixel_range) -> np.ndarray:
    """Images decoded from latents drawn by ``params.sampler`` (or, for a model without a
    latent to decode, the model's own samples), ``params.ncols`` a row."""
    if isinstance(scheme, ImageSampler):  # a model without a latent to decode
        images = scheme.sample_images(params.num_images, seed, mean=params.show == "mean")
        return figures.image_grid(np.asarray(images), params.ncols, pixel_range)
    z = sample_latents(params.sampler, scheme, params.num_images, seed)
    out = scheme.model.decode(z)
    lik = scheme.model.likelihood
    images = lik.mean(out) if params.show == "mean" else lik.sample(out, seed=tf.constant([seed, 1]))
    return figures.image_grid(np.asarray(images), params.ncols, pixel_range)
