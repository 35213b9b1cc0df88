"""The vocabulary components declare their memory in: the data's shape, the networks'
activations per example, and terms of bytes with the keys that shrink them.

The memory estimate (:mod:`tfgen.resources`) traces the networks into :class:`Activations`
and asks each component what it adds: a scheme its resident state and the peaks of its
training step (``Scheme.memory_terms``, :class:`MemoryTerms`), an evaluation task its largest
batch (``TaskConfig.peak``, :func:`batch_bytes`).  They live here, below the components,
so that a scheme or a task states its own memory without importing the estimate.

The rule the activations follow (the module docstring of :mod:`tfgen.resources`): a pass
with a backward pass counts ``BACKWARD_FACTOR`` x the network's tensors and 2 x the pixel
terms (the forward tensors kept for the gradient, and the gradients); a forward pass 1 x.
"""
from __future__ import annotations

import dataclasses
import math

from tfgen.memory import FLOAT

BACKWARD_FACTOR = 3
#: tensors of the decoder's output size that a log-density's element-wise terms materialise
#: in graph mode (twice that with the backward pass): measured 22 KB per particle for an MLP
#: decoder with 784 Bernoulli outputs, where the counted ops give 3 KB
PIXEL_TENSORS = 3


@dataclasses.dataclass(frozen=True)
class DataShape:
    """What the estimate needs to know about the data: split sizes and the image shape."""

    train: int
    val: int
    test: int
    image_shape: tuple[int, int, int]
    pixel_range: tuple[float, float] = (0.0, 1.0)

    @classmethod
    def of(cls, data) -> "DataShape":
        return cls(len(data.train), len(data.val) if data.val is not None else 0,
                   len(data.test) if data.test is not None else 0, tuple(data.image_shape),
                   tuple(data.pixel_range))

    @property
    def image_bytes(self) -> int:
        return math.prod(self.image_shape) * FLOAT


@dataclasses.dataclass(frozen=True)
class Term:
    what: str
    bytes: int
    keys: tuple[str, ...] = ()  # the config keys that shrink it


@dataclasses.dataclass(frozen=True)
class MemoryTerms:
    """What a scheme's training adds to the estimate: held for the whole run (they add up),
    and the transient peaks of its step (one at a time: the largest counts)."""

    resident: tuple[Term, ...] = ()
    peaks: tuple[Term, ...] = ()


@dataclasses.dataclass(frozen=True)
class Activations:
    """Bytes per example of one pass (the rule of the module docstring): the counted forward
    tensors of the decoder and of the encoder, and the size of the decoder's output."""

    decoder: int
    decoder_output: int
    encoder: int = 0
    prior: int = 0

    def decode(self, backward: bool) -> int:
        """One example through the decoder, the likelihood's and the prior's log-densities."""
        if backward:
            return (BACKWARD_FACTOR * (self.decoder + self.prior)
                    + 2 * PIXEL_TENSORS * self.decoder_output)
        return self.decoder + self.prior + PIXEL_TENSORS * self.decoder_output

    def encode(self, backward: bool) -> int:
        return (BACKWARD_FACTOR if backward else 1) * self.encoder

    def prior_keys(self) -> tuple[str, ...]:
        """The prior's section, where its log density outweighs the decoder's (a large
        mixture): a key that shrinks every decoding term."""
        return ("model.prior",) if self.prior > self.decoder else ()


def batch_bytes(shape: DataShape, act: Activations, images: int, samples: int = 1,
                backward: bool = False, generated: int = 0) -> int:
    """An evaluation batch: ``images`` images at once (at most the largest split, or the
    ``generated`` images), each through the encoder and ``samples`` decoder passes (with the
    backward pass if the task optimises), plus ``generated`` images kept as float32 (FID's
    samples)."""
    images = min(int(images), max(shape.train, shape.val, shape.test, generated))
    return (images * (act.encode(backward) + samples * act.decode(backward))
            + generated * shape.image_bytes)


def latent_dim(cfg) -> int:
    """The latent dimension d (every prior's config has ``dim``)."""
    return int(cfg.model.prior.params.dim)


#: ``peak()`` of a task whose network passes the estimate does not count yet (small next to a
#: training step on the shipped experiments; the estimate never counted them): to be measured
UNCOUNTED: tuple[int, tuple[str, ...]] = (0, ())
