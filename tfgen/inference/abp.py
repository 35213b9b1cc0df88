"""Alternating back-propagation (scheme ``abp``): a persistent Langevin chain per training image.

Han, Lu, Zhu & Wu 2017 ("Alternating Back-Propagation for Generator Network", AAAI), as
Kuntz et al.'s (2023) paper runs it for its comparison (ParEM ``AlternatingBackprop``: "a
sub-sampled version of Alternating Backprop: a persistent version of short run").  Every training
image m has one latent z^m, a row of the shared per-datapoint table
(:class:`tfgen.inference.latents.LatentTable`, no row optimizer), initialised from the prior
p(z).  Each step, for a batch B: the inferential back-propagation, K Langevin steps on the
z^m, m in B, under log p_theta(z, y^m) from where the last visit left them (the chain
persists across epochs), written back to the table; then the learning back-propagation, one
theta step at the new latents.  The step, the parameterization and the defaults are those of
:mod:`tfgen.inference.langevin_chains` (Han et al.'s step s is sqrt(2h)).

Han et al. run the chains of all images every iteration on the full data set; with batches
(the reference, and here) each chain takes K steps once per epoch.  Against PGA: one chain
per image instead of N particles, K steps per visit instead of one step of every particle
every step.
"""
from __future__ import annotations

import tensorflow as tf

from tfgen.inference import kernels
from tfgen.inference.capabilities import PerDatapointLatents
from tfgen.inference.langevin_chains import ChainConfig, LangevinChainScheme
from tfgen.inference.latents import LatentTable
from tfgen.registry import SCHEMES


@SCHEMES.register("abp", config=ChainConfig)
class AlternatingBackprop(LangevinChainScheme, PerDatapointLatents):
    """Alternating back-propagation: K Langevin steps on a kept latent per image, then theta."""

    shards_training_rows = True

    def __init__(self, params: ChainConfig, model, data, cfg, generator, strategy):
        super().__init__(params, model, data, cfg, generator, strategy)
        seed = tf.cast(kernels.seeds_from(generator) % (2**31 - 1), tf.int32)
        initial = model.prior.distribution().sample(self.num_images, seed=seed)  # z ~ p(z)
        self.latents = LatentTable(initial, self.layout, name="chain_latents")

    def checkpoint_items(self):
        return {**super().checkpoint_items(), "latents": self.latents}

    def chain_start(self, indices, batch, first_noise):
        return self.latents.gather(batch.replica, indices)

    def keep_chain_ends(self, indices, batch, ends):
        self.latents.scatter(batch.replica, indices, ends)

    def latent_cloud(self) -> tf.Tensor:
        """The table's latents [M, d]."""
        return self.latents.values.full()

    def summary_latents(self, count: int):
        return self.latents.values.numpy()[:count]
