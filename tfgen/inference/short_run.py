"""Short-run MCMC (scheme ``short_run``): fresh K-step Langevin chains from noise for every batch.

Nijkamp, Pang, Han, Zhou, Zhu & Wu 2020 ("Learning Multi-layer Latent Variable Model via
Variational Optimization of Short Run MCMC for Approximate Inference", ECCV), as Kuntz et al.'s
(2023) paper runs it (ParEM ``ShortRun``).  Each step, every image of the batch gets a fresh chain:
z_0 ~ N(0, I), K Langevin steps under log p_theta(z, y), then one theta step at the chains'
ends (:mod:`tfgen.inference.langevin_chains`: the step, its parameterization, the defaults).
Nothing persists per datapoint: the distribution of z_K given y, a fixed number of noisy
gradient steps from noise, is the approximate posterior, which Nijkamp et al. treat as a
variational family that theta's update also tunes.

Latents of the training images.  There is no table to read them from, so the scheme does
what the reference's ``ShortRun.update_posterior`` does before it synthesises images: it runs
the same short chain, with the current theta, on the training images (the first
``cloud_images`` of them, 0 = all), from a fixed seed, in chunks of ``cloud_batch_size``
(:meth:`ShortRun.latent_cloud`).  They are honest draws of the scheme's own posterior for
those images, made when asked; they feed the ``particle_gaussian`` and ``gmm`` samplers
(capability :class:`~tfgen.inference.capabilities.LatentCloud`).  Tasks that pair a kept
latent with each training image (``latent_scatter`` or ``embedding_projector`` with
``source = "latents"``, the geometry tasks' ``latents = "latents"``) ask for per-datapoint
latents, which this scheme does not have, and are refused at load time; their ``posterior``
source (a q fitted at test time, like PGA's) works.  The cloud is kept for the weights it was
drawn with (a hash of every model variable), so the evaluation tasks of one run share one
short run; it costs K forward and backward passes of the decoder per image.
"""
from __future__ import annotations

import dataclasses
import hashlib

import numpy as np
import tensorflow as tf

from tfgen.schema import setting
from tfgen.inference import kernels
from tfgen.inference.capabilities import LatentCloud
from tfgen.inference.langevin_chains import ChainConfig, LangevinChainScheme
from tfgen.registry import SCHEMES
from tfgen.runtime import compile_step

#: second word of the stateless seed of the training images' chains (the first: experiment.seed)
CLOUD_SEED = 20


@dataclasses.dataclass
class ShortRunConfig(ChainConfig):
    cloud_images: int = setting(0, at_least=0, at_most=10_000_000,
                                help="training images whose short run gives the latent cloud of "
                                     "the particle_gaussian / gmm samplers (0 = all, as the "
                                     "reference)")
    cloud_batch_size: int = setting(256, at_least=1, at_most=100_000,
                                    help="images whose chains run together for the latent cloud")


@SCHEMES.register("short_run", config=ShortRunConfig)
class ShortRun(LangevinChainScheme, LatentCloud):
    """Short-run MCMC: fresh K-step Langevin chains from N(0, I) for every batch, then theta."""

    def chain_start(self, indices, batch, first_noise):
        return first_noise  # z_0 ~ N(0, I)

    # ---- latents of given images
    def _chains_fn(self, images, noise):
        return self.run_chains(noise[:, 0], images, noise[:, 1:])

    def chain_latents(self, images: np.ndarray, seed: int) -> np.ndarray:
        """z_K [n, d] of one fresh short run per image (the current theta, the decoder in
        inference mode, the images as stored); image i's noise is row i of one [n, K + 1, d]
        draw from ``(seed, CLOUD_SEED)``, so the chunking does not change the result."""
        n, d, k = len(images), self.model.latent_dim, self.params.langevin_steps
        noise = kernels.standard_normal([n, k + 1, d], tf.constant([seed, CLOUD_SEED], tf.int64))
        run = self.__dict__.setdefault("_chains", compile_step(self._chains_fn,
                                                               self.cfg.train.compile))
        size = self.params.cloud_batch_size
        return np.concatenate([run(tf.constant(images[lo:lo + size]), noise[lo:lo + size]).numpy()
                               for lo in range(0, n, size)]) if n else np.zeros((0, d), np.float32)

    def latent_cloud(self) -> tf.Tensor:
        """A fresh short run on the training images (module docstring), [n, d]; kept while the
        model's variables stay the same."""
        count = self.params.cloud_images or self.num_images
        fingerprint = hashlib.sha256()
        for variable in self.model.variables:
            fingerprint.update(variable.numpy().tobytes())
        key = (fingerprint.hexdigest(), count)
        cache = self.__dict__.setdefault("_cloud", {})
        if key not in cache:
            cache.clear()
            cache[key] = tf.constant(self.chain_latents(self.data.train.images[:count],
                                                        self.cfg.experiment.seed))
        return cache[key]

    def summary_latents(self, count: int) -> np.ndarray:
        return self.chain_latents(self.data.train.images[:count], self.cfg.experiment.seed)
