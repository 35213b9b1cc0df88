"""Evaluation task ``mean_pixel_error``: how far reconstructions are from their images."""
from __future__ import annotations

import dataclasses
from typing import Literal

import numpy as np
import tensorflow as tf

from tfgen.inference.capabilities import Posterior, require
from tfgen.registry import EVALUATIONS
from tfgen.footprint import batch_bytes
from tfgen.schema import TaskConfig, setting


@dataclasses.dataclass
class MeanPixelErrorConfig(TaskConfig):
    split: Literal["train", "val", "test"] = setting("test")
    num_images: int = setting(256, at_least=1, at_most=100000, help="the first N images of the split")
    batch_size: int = setting(64, at_least=1)

    def check(self, cfg):
        # checked when the config is loaded, like a built-in task's needs
        require(cfg, Posterior, "evaluate", "task 'mean_pixel_error'",
                alternative="drop this [[evaluate]] entry")

    def peak(self, shape, act):
        # declared, as every task's: batch_size images through the encoder and the decoder at once
        return batch_bytes(shape, act, self.batch_size), ("batch_size",)


@EVALUATIONS.register("mean_pixel_error", config=MeanPixelErrorConfig)
def mean_pixel_error(params: MeanPixelErrorConfig, ctx) -> dict:
    """Mean absolute pixel error of reconstructions E[y | z = q's mean] (data's pixel range).

    Per image, the mean over pixels of |y - E[y | z]| with z the posterior mean; then the mean
    over the first ``num_images`` images of the split."""
    images = ctx.split(params.split, "evaluate.split").images[:params.num_images]
    errors = []
    for start in range(0, len(images), params.batch_size):
        batch = images[start:start + params.batch_size]
        recon = ctx.scheme.reconstruct(tf.constant(batch)).numpy()
        errors.append(np.abs(recon - batch).reshape(len(batch), -1).mean(axis=1))
    per_image = np.concatenate(errors)
    return {f"{params.split}_mean_pixel_error": float(per_image.mean()),
            f"{params.split}_mean_pixel_error_images": float(len(per_image))}
