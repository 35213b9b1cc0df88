"""The log-likelihood in bits per dimension (the data-set level estimates in nats per image
are :mod:`tfgen.inference.estimators`').

Bits per dimension (Theis, van den Oord & Bethge 2016, "A note on the evaluation of
generative models", sec. 3.1) divide by the number of dimensions D = H W C:

    bits/dim = -log p(y) / (D ln 2).

* Bernoulli (binarized pixels), Categorical (pixels in k bins), discretized logistic mixture
  and PixelCNN likelihoods give probabilities of the discrete images (they are ``Discrete``,
  :mod:`tfgen.models.likelihood_capabilities`): ``bits_per_dim`` is that number, directly.
* Normal and Beta likelihoods give densities of continuous pixel values (Normal: on the data's
  pixel range, [0, 1] or [-1, 1]; Beta: on pixels rescaled to [0, 1]).  A density can exceed 1
  and its bits/dim can be negative; it depends on the pixel scale and is not comparable with
  discrete-data numbers: ``bits_per_dim_density``.
* When the images are 8-bit integers (data.binarize = 'none', data.bins = 0 and every pixel on
  the grid low + (high - low) i / 255, i = 0..255: no resize, no colour mixing), the density is
  also converted to the 0..255 integer scale by the change of variables y = low + (high - low)
  x / 255 (Theis et al. 2016, sec. 3.1; Papamakarios, Pavlakou & Murray 2017, "Masked
  autoregressive flow for density estimation", report image densities in bits/pixel of the
  8-bit images the same way, with data x / 256 and the term D log 256):

      log p(x) = log p(y) - D log(255 / w),   w = the width of the density's pixel scale,

  reported as ``bits_per_dim_8bit`` = bits_per_dim_density + log2(255 / w).  tfgen scales
  8-bit data by 1/255, hence 255 here, not 256 (a difference of log2(256/255) = 0.0056 bits/dim).
  This number is comparable with published 8-bit bits/dim only approximately: the images were
  not dequantized (no uniform noise u in x + u), so p(x) is the density at the bins' points,
  not the probability P(x) = integral of the density over a bin that Theis et al. bound from
  below with dequantized data; a density much narrower than one intensity level makes it
  optimistic.
"""
from __future__ import annotations

import math

import numpy as np

from tfgen.models.likelihood_capabilities import Discrete


def bits_per_dim(result: dict, likelihood, image_shape, eight_bit: bool,
                 discrete: bool | None = None) -> dict[str, float]:
    """The bits-per-dimension figures of a :func:`tfgen.inference.estimators.summary` (module
    docstring): ``bits_per_dim`` for a :class:`~tfgen.models.likelihood_capabilities.Discrete`
    likelihood, else ``bits_per_dim_density`` and, for 8-bit data (``eight_bit``),
    ``bits_per_dim_8bit`` (from the likelihood's ``density_width()``); each with its standard
    error.  ``discrete`` overrides what the likelihood says (a model whose log-likelihood is
    of the discrete image without a pixel likelihood, e.g. a dequantized flow)."""
    per_nat = 1.0 / (math.prod(image_shape) * math.log(2.0))
    bits = -result["log_likelihood"] * per_nat
    stderr = result["log_likelihood_stderr"] * per_nat
    if discrete is None:
        discrete = isinstance(likelihood, Discrete)
    if discrete:
        return {"bits_per_dim": bits, "bits_per_dim_stderr": stderr}
    out = {"bits_per_dim_density": bits, "bits_per_dim_density_stderr": stderr}
    if eight_bit:
        out["bits_per_dim_8bit"] = bits + math.log2(255.0 / likelihood.density_width())
        out["bits_per_dim_8bit_stderr"] = stderr
    return out


def is_8bit(data_config, images: np.ndarray, pixel_range) -> bool:
    """Whether the images are 8-bit integers in the pixel range (module docstring)."""
    if data_config.binarize != "none" or data_config.bins:
        return False
    low, high = pixel_range
    levels = (np.asarray(images, np.float64) - low) * (255.0 / (high - low))
    return bool(np.all(np.abs(levels - np.round(levels)) < 1e-3))
