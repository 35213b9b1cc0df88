"""Inpainting: recover hidden pixels by fitting latents to the observed ones (seed 000, eq. (4)).

Following seed 000 (after Nijkamp et al. 2020, Section 5.3), for a corrupted image y_c with
hidden pixels H the latent is fitted to the observed pixels only,

    x* = argmin_x  sum_{i not in H} (y_i - E[y_i | x])^2,

with Adam (seed 000: 1000 steps of step size 0.01), and the image is recovered as
E[y | x*], the likelihood's mean of the decoder output (for the seed's Normal likelihood
with a tanh decoder this is f_theta(x*)).  The latents start from a sampler (the prior, or
a Gaussian fitted to a PGA particle cloud).  All images are fitted at once, in one compiled
``tf.while_loop``; no encoder is involved, so it works for every scheme.

The masks, the optimisation and the figure are plain functions, reusable for other
encoder-free completion tasks.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Literal

import numpy as np
import tensorflow as tf

from tfgen.config import field
from tfgen.errors import ConfigError
from tfgen.evaluation import figures
from tfgen.evaluation.samplers import Sampler, check_sampler, sample_latents
from tfgen.evaluation.tasks import EvalContext, SplitName
from tfgen.registry import EVALUATIONS
from tfgen.runtime import compile_step

MaskKind = Literal["center", "left_half", "right_half", "top_half", "bottom_half", "random"]

#: seed 000 hides pixels 10..21 of a 32 x 32 image on both axes: a centred square of side 12
CENTER_FRACTION_OF_SIDE = 12 / 32


# --------------------------------------------------------------------------- masks

def hidden_mask(kind: str, num: int, height: int, width: int, fraction: float = 0.5,
                seed: int = 0) -> np.ndarray:
    """Boolean [num, height, width], True where a pixel is hidden (all channels of it).

    ``center``: a centred square of side round(12/32 * side) (rows and columns 10..21 at
    32 x 32, seed 000); ``left_half`` / ``right_half`` / ``top_half`` / ``bottom_half``: that
    half is hidden (width // 2 or height // 2 pixels); ``random``: every image hides its own
    round(fraction * height * width) pixels, drawn without replacement from ``seed``.
    """
    mask = np.zeros((num, height, width), bool)
    if kind == "center":
        side_h = max(1, round(CENTER_FRACTION_OF_SIDE * height))
        side_w = max(1, round(CENTER_FRACTION_OF_SIDE * width))
        top, left = (height - side_h) // 2, (width - side_w) // 2
        mask[:, top:top + side_h, left:left + side_w] = True
    elif kind == "left_half":
        mask[:, :, : width // 2] = True
    elif kind == "right_half":
        mask[:, :, width - width // 2:] = True
    elif kind == "top_half":
        mask[:, : height // 2] = True
    elif kind == "bottom_half":
        mask[:, height - height // 2:] = True
    elif kind == "random":
        if not 0.0 < fraction < 1.0:
            raise ValueError(f"fraction must lie in (0, 1), got {fraction}")
        pixels = height * width
        count = int(round(fraction * pixels))
        rng = np.random.default_rng([seed, 11])
        for i in range(num):
            mask[i].flat[rng.choice(pixels, count, replace=False)] = True
    else:
        raise ValueError(f"unknown mask {kind!r}")  # config validation rules this out
    return mask


def corrupt(images: np.ndarray, hidden: np.ndarray, pixel_range=(0.0, 1.0),
            fill: float = 0.2) -> np.ndarray:
    """The corrupted images as shown: hidden pixels set to a grey (``fill`` of the range)."""
    low, high = pixel_range
    return np.where(hidden[..., None], np.float32(low + fill * (high - low)), images)


def completion_grid(corrupted, recovered, original, ncols: int, pixel_range) -> np.ndarray:
    """Row blocks corrupted | recovered | original (seed 000's inpainting figure)."""
    return figures.stacked_grid([np.asarray(corrupted), np.asarray(recovered),
                                 np.asarray(original)], ncols, pixel_range)


def masked_mse(a, b, mask) -> float:
    """Mean of (a - b)^2 over the pixels (all channels) where ``mask`` [n, H, W] is True."""
    weights = np.broadcast_to(np.asarray(mask, np.float64)[..., None], np.shape(a))
    total = weights.sum()
    if total == 0:
        return float("nan")
    return float(((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2 * weights).sum() / total)


# --------------------------------------------------------------------------- fitting

def _fit_latents(model, images, observed, initial, steps, learning_rate):
    """Adam on z for the squared error on observed pixels; one while loop (Kingma & Ba 2015,
    beta = (0.9, 0.999), eps = 1e-8 as in the seed's PyTorch Adam)."""
    beta1, beta2, eps = 0.9, 0.999, 1e-8
    observed = tf.cast(observed, images.dtype)  # [n, H, W, 1]
    per_image = tf.reduce_sum(observed * tf.ones_like(images), axis=[1, 2, 3])

    def loss_fn(z):
        mean = model.likelihood.mean(model.decode(z))
        squared = tf.reduce_sum(observed * tf.square(mean - images), axis=[1, 2, 3])
        return tf.reduce_sum(squared / per_image)  # the images' latents are independent

    def body(t, z, m, v):
        with tf.GradientTape(watch_accessed_variables=False) as tape:
            tape.watch(z)
            loss = loss_fn(z)
        g = tape.gradient(loss, z)
        m = beta1 * m + (1.0 - beta1) * g
        v = beta2 * v + (1.0 - beta2) * tf.square(g)
        step = tf.cast(t + 1, z.dtype)
        m_hat = m / (1.0 - beta1 ** step)
        v_hat = v / (1.0 - beta2 ** step)
        return t + 1, z - learning_rate * m_hat / (tf.sqrt(v_hat) + eps), m, v

    zeros = tf.zeros_like(initial)
    _, z, _, _ = tf.while_loop(lambda t, *_: t < steps, body,
                               (tf.constant(0), initial, zeros, zeros))
    return z, model.likelihood.mean(model.decode(z))


def complete_images(model, images, observed, initial, steps: int = 1000,
                    learning_rate: float = 0.01, compile_mode: str = "auto"):
    """Fit latents [n, d] (from ``initial``) to ``images`` where ``observed`` [n, H, W] is True;
    returns (latents, recovered images E[y | z])."""
    fit = compile_step(functools.partial(_fit_latents, model), compile_mode)
    images = tf.convert_to_tensor(images, tf.float32)
    observed = tf.convert_to_tensor(np.asarray(observed, np.float32)[..., None])
    z, recovered = fit(images, observed, tf.convert_to_tensor(initial, tf.float32),
                       tf.constant(steps), tf.constant(learning_rate, tf.float32))
    return z.numpy(), recovered.numpy()


# --------------------------------------------------------------------------- the task

@dataclasses.dataclass
class InpaintingConfig:
    split: SplitName = field("test", help="images to corrupt and recover (seed 000: training images)")
    num_images: int = field(16, min=1, max=1024)
    ncols: int = field(8, min=1, max=64)
    mask: MaskKind = field("center", help="hidden region: center (rows/cols 10..21 at 32x32, "
                                          "seed 000), a named half, or random pixels")
    fraction: float = field(0.5, gt=0.0, max=0.999, help="hidden fraction of the pixels "
                                                        "(mask = 'random')")
    steps: int = field(1000, min=1, max=1000000, help="Adam steps (seed 000: 1000)")
    learning_rate: float = field(0.01, gt=0.0, max=10.0, help="Adam step size (seed 000: 0.01)")
    sampler: Sampler = field("prior", help="where the latents start")

    def check(self, cfg):
        check_sampler(cfg, self.sampler, "evaluate.sampler")
        if not getattr(cfg.data, f"{self.split}_split"):
            raise ConfigError(cfg.source_file, "evaluate.split",
                              f"inpainting uses the {self.split} split, but data.{self.split}_split "
                              f"is empty", self.split, "a configured split")


@EVALUATIONS.register("inpainting", config=InpaintingConfig)
def inpainting_task(params: InpaintingConfig, ctx: EvalContext) -> dict:
    """Recover hidden pixels: Adam on z for the observed pixels' squared error (seed 000, eq. (4))."""
    split = ctx.split(params.split, "evaluate.split")
    images = split.images[: params.num_images]
    n, height, width, _ = images.shape
    seed = ctx.cfg.experiment.seed
    hidden = hidden_mask(params.mask, n, height, width, params.fraction, seed)
    initial = sample_latents(params.sampler, ctx.scheme, n, seed + 5)
    _, recovered = complete_images(ctx.model, images, ~hidden, initial, params.steps,
                                   params.learning_rate, ctx.cfg.train.compile)
    grid = completion_grid(corrupt(images, hidden, ctx.data.pixel_range), recovered, images,
                           params.ncols, ctx.data.pixel_range)
    name = f"inpainting_{params.mask}_{params.split}"
    figures.write_png(ctx.figure(f"{name}.png"), grid)
    figures.summary_image(f"eval/{name}", grid, ctx.step)
    return {f"{name}_hidden_mse": masked_mse(recovered, images, hidden),
            f"{name}_observed_mse": masked_mse(recovered, images, ~hidden)}
