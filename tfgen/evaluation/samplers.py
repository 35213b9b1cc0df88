"""Latent samplers for generating images: where the z fed to the decoder come from."""
from __future__ import annotations

import tensorflow as tf


def sample_latents(sampler: str, scheme, num: int, seed: int) -> tf.Tensor:
    """``prior``: z ~ p(z)."""
    if sampler == "prior":
        dist = scheme.model.prior.distribution()
        return dist.sample(num, seed=tf.constant([seed, 0], tf.int32))
    raise ValueError(f"unknown sampler {sampler!r}")  # config validation rules this out


SAMPLERS = ("prior",)
