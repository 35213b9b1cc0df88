"""Image completion: fill hidden pixels from latents fitted to the observed ones.

For an image y whose pixels H are hidden and O observed, the latents are fitted to y_O alone
by the shared test-time fitting layer (:class:`tfgen.inference.fitting.LatentFitter`: svi,
map, mle, langevin or the encoder).  Its objective counts only the observed pixels, under
the model's own likelihood (Bernoulli, Categorical, Beta, Normal),

    log p_theta(y_O | z) = sum_{i in O} log p_theta(y_i | z)
                                              (the 2AMU20 VAE assignment, task 4b),

so the hidden pixels cannot change it.  The hidden pixels are then filled from
p_theta(y_H | z), the observed ones kept as given:

* ``fill = "mean"``: E[y_H | z] at the fitted z (q's mean for svi and the encoder);
* ``fill = "sample"``: for svi and the encoder z ~ q(z | psi*) first (the 2AMU20 VAE assignment,
  task 4b), then y_H ~ p_theta(y_H | z); for map / mle / langevin y_H ~ p_theta(y_H | z) at the
  fitted z.

Eq. (4) of Kuntz et al. (2023) (after Nijkamp et al. 2020, Section 5.3) is the ``mle`` method under
a Normal likelihood with fixed sigma, where -log p(y_O | x) = sum_{i not in M} (y_i -
f_theta(x)_i)^2 / (2 sigma^2) + const: Adam for 1000 steps of 0.01 from latents drawn by a
sampler, the image recovered as f_theta(x_mle) (``fill = "mean"``).

One implementation, three registered tasks that differ in their defaults only:

* ``inpainting`` -- Kuntz et al. (2023): the centre square hidden, mle, Adam 1000 x 0.01 from the
  ``prior`` sampler, no early stopping, fill with the mean;
* ``complete`` -- the 2AMU20 VAE assignment, task 4b: the left half observed (``mask =
  "right_half"``), svi with SGD (learning rate 1e-3) from a random psi ~ N(0, I), at most 500 steps
  with patience 50 per image, fill with a sample;
* ``reconstruct_without_encoder`` -- the 2AMU20 VAE assignment, task 4a: every pixel observed, svi
  as above, the reconstruction E[y | z = mu*].
"""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import ClassVar, Literal, NamedTuple

import numpy as np
import tensorflow as tf

from tfgen import figures
from tfgen.errors import ConfigError
from tfgen.evaluation.tasks import EvalContext, SplitName, task_key
from tfgen.footprint import batch_bytes
from tfgen.inference.capabilities import AmortizedPosterior
from tfgen.inference.fitting import FitConfig, FitResult, LatentFitter
from tfgen.inference.latents import LatentOptimizerConfig
from tfgen.models import likelihood_capabilities
from tfgen.models.likelihood_capabilities import Factorized
from tfgen.registry import EVALUATIONS
from tfgen.schema import TaskConfig, setting

MaskKind = Literal["center", "left_half", "right_half", "top_half", "bottom_half", "random", "file"]
Fill = Literal["mean", "sample"]

#: Kuntz et al. (2023) hide pixels 10..21 of a 32 x 32 image on both axes: a centred square
#: of side 12
CENTER_FRACTION_OF_SIDE = 12 / 32
MASK_FILE_ALLOWED = ("a .png (pixels >= 128 in grey, i.e. white, are hidden) or a .npy array "
                     "[H, W] of 0/1 or false/true (1 / true = hidden), of the images' size")


# --------------------------------------------------------------------------- masks

def hidden_mask(kind: str, num: int, height: int, width: int, fraction: float = 0.5,
                seed: int = 0, pattern: np.ndarray | None = None) -> np.ndarray:
    """Boolean [num, height, width], True where a pixel is hidden (all channels of it).

    ``center``: a centred square of side round(12/32 * side) (rows and columns 10..21 at
    32 x 32, Kuntz et al. (2023)); ``left_half`` / ``right_half`` / ``top_half`` / ``bottom_half``:
    that half is hidden (width // 2 or height // 2 pixels); ``random``: every image hides its own
    round(fraction * height * width) pixels, drawn without replacement from ``seed``;
    ``file``: ``pattern`` [height, width] (from :func:`read_mask_file`) for every image.
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
    elif kind == "file":
        if pattern is None or pattern.shape != (height, width):
            raise ValueError(f"a mask pattern of shape {(height, width)} is needed")
        mask[:] = pattern
    else:
        raise ValueError(f"unknown mask {kind!r}")  # config validation rules this out
    return mask


def read_mask_file(path: str | Path) -> np.ndarray:
    """The hidden pixels [H, W] (True = hidden) that a mask file declares.

    A ``.png`` is read as grey and hides its pixels >= 128 (white = hidden, as in image
    editors' inpainting masks); a ``.npy`` array [H, W] (or [H, W, 1]) of booleans or 0/1
    hides its true / 1 entries.  A mask must hide some pixels and leave some observed.
    Raises ValueError saying what is wrong with the file (callers add the key).
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".png", ".npy"):
        raise ValueError("is neither a .png nor a .npy file")
    if not path.exists():
        raise ValueError("does not exist")
    if not path.is_file():
        raise ValueError("is not a file")
    if suffix == ".png":
        try:
            grey = tf.io.decode_png(tf.io.read_file(str(path)), channels=1).numpy()[..., 0]
        except (tf.errors.OpError, OSError) as err:
            raise ValueError(f"cannot be read as a PNG ({_first_line(err)})") from None
        hidden = grey >= 128
    else:
        try:
            array = np.load(path, allow_pickle=False)
        except (OSError, ValueError, EOFError) as err:
            raise ValueError(f"cannot be read as a .npy array ({_first_line(err)})") from None
        if not isinstance(array, np.ndarray):  # an .npz archive under a .npy name
            raise ValueError("holds several arrays (an .npz archive), not one .npy array")
        if array.ndim == 3 and array.shape[-1] == 1:
            array = array[..., 0]
        if array.ndim != 2:
            raise ValueError(f"holds an array of shape {array.shape}, not [H, W]")
        if array.dtype != bool and not (np.issubdtype(array.dtype, np.number)
                                        and np.isin(array, (0, 1)).all()):
            raise ValueError(f"holds values other than 0/1 or false/true (type {array.dtype})")
        hidden = array.astype(bool)
    if not hidden.any():
        raise ValueError("hides no pixel")
    if hidden.all():
        raise ValueError("hides every pixel (nothing is observed)")
    return hidden


def _first_line(err: BaseException) -> str:
    text = getattr(err, "message", None) or str(err)
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return (lines[-1] if lines else type(err).__name__)[:200]


def corrupt(images: np.ndarray, hidden: np.ndarray, pixel_range=(0.0, 1.0),
            fill: float = 0.5) -> np.ndarray:
    """The observed images as shown: hidden pixels set to a grey (``fill`` of the range)."""
    low, high = pixel_range
    return np.where(hidden[..., None], np.float32(low + fill * (high - low)), images)


def masked_mse_per_image(a, b, mask) -> np.ndarray:
    """Per image, the mean of (a - b)^2 over the pixels (all channels) where ``mask``
    [n, H, W] is True (NaN for an image with no such pixel)."""
    weights = np.broadcast_to(np.asarray(mask, np.float64)[..., None], np.shape(a))
    squared = (np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2 * weights
    total = weights.reshape(len(weights), -1).sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return squared.reshape(len(squared), -1).sum(1) / total


def masked_mse(a, b, mask) -> float:
    """Mean of (a - b)^2 over the pixels (all channels) where ``mask`` [n, H, W] is True."""
    weights = np.broadcast_to(np.asarray(mask, np.float64)[..., None], np.shape(a))
    total = weights.sum()
    if total == 0:
        return float("nan")
    return float(((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2 * weights).sum() / total)


# --------------------------------------------------------------------------- completing

class Completion(NamedTuple):
    """The fit; the latents decoded (the fitted point, q's mean, or a draw from q); p(y | z)'s
    mean or a sample at them, every pixel; the completion: observed pixels as given, hidden
    ones from ``decoded``."""

    fit: FitResult
    latents: np.ndarray
    decoded: np.ndarray
    completion: np.ndarray


def complete(scheme, images, hidden, fit: FitConfig, fill: str, seed: int,
             compile_mode: str = "auto") -> Completion:
    """Fit latents to the pixels of ``images`` [n, H, W, C] that ``hidden`` [n, H, W] leaves
    observed, and fill the hidden ones from p(y_H | z) (``fill``: "mean" or "sample")."""
    images = np.asarray(images, np.float32)
    hidden = np.asarray(hidden, bool)
    fitted = LatentFitter(scheme, fit, compile_mode).fit(images, ~hidden, seed=seed)
    latents = fitted.mean
    # z ~ q(z | psi*), as in the 2AMU20 VAE assignment's task 4b
    if fill == "sample" and fitted.scale is not None:
        noise = tf.random.stateless_normal(latents.shape, tf.constant([seed, 6], tf.int64))
        latents = latents + fitted.scale * noise.numpy()
    decoded = decode(scheme.model, latents, fill, seed, fit.batch_size)
    return Completion(fitted, latents, decoded, np.where(hidden[..., None], decoded, images))


def decode(model, latents: np.ndarray, fill: str, seed: int, batch_size: int) -> np.ndarray:
    """E[y | z] (``fill = "mean"``) or y ~ p(y | z) (``"sample"``) for latents [n, d], in
    batches of ``batch_size``."""
    parts = []
    for lo in range(0, len(latents), batch_size):
        out = model.decode(tf.constant(latents[lo:lo + batch_size]))
        if fill == "mean":
            parts.append(model.likelihood.mean(out).numpy())
        else:
            parts.append(model.likelihood.sample(out, seed=tf.constant([seed, 7 + lo])).numpy())
    return np.concatenate(parts)


def completion_grid(images, hidden, filled, encoder, ncols: int, pixel_range) -> np.ndarray:
    """Row blocks original | observed (hidden pixels grey) | ``filled`` | ``encoder`` (omitted
    when None); with ``hidden`` None, original | ``filled`` | ``encoder``."""
    rows = [images] + ([] if hidden is None else [corrupt(images, hidden, pixel_range)]) + [filled]
    rows += [] if encoder is None else [encoder]
    return figures.stacked_grid([np.asarray(r) for r in rows], ncols, pixel_range)


# --------------------------------------------------------------------------- the task configs

def with_default(cls: type, name: str, default=dataclasses.MISSING, factory=None):
    """Field ``name`` of the config dataclass ``cls`` with another default and the same
    validation metadata and help (for a subclass that only changes defaults)."""
    parent = next(f for f in dataclasses.fields(cls) if f.name == name)
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=parent.metadata)
    return dataclasses.field(default=default, metadata=parent.metadata)


def svi_fit_2amu20() -> FitConfig:
    """The 2AMU20 VAE assignment, task 4 (a and b): svi, SGD with learning rate 1e-3, psi = (mu, log
    sigma^2) ~ N(0, I), one reparameterized sample, at most 500 steps ("epochs"), patience 50 per
    image."""
    return FitConfig(method="svi", steps=500, patience=50, init="random", mc_samples=1,
                     optimizer=LatentOptimizerConfig(name="sgd", learning_rate=1e-3))


def mle_fit_kuntz2023() -> FitConfig:
    """Kuntz et al. (2023), eq. (4): the latents that maximise the observed pixels' likelihood
    (mle), Adam (0.9, 0.999, 1e-8) for 1000 steps of 0.01 from latents drawn by the sampler, no
    early stopping."""
    return FitConfig(method="mle", steps=1000, patience=0, init="sampler", sampler="prior",
                     optimizer=LatentOptimizerConfig(name="adam", learning_rate=0.01))


FILL_HELP = ("hidden pixels from p(y_H | z): its mean, or a sample (for svi / encoder at a "
             "z ~ q, as in the 2AMU20 VAE assignment's task 4b)")


@dataclasses.dataclass
class FittedImagesConfig(TaskConfig):
    """The keys of ``reconstruct_without_encoder`` (the 2AMU20 VAE assignment, task 4a), and what
    the completion tasks add their masks to."""

    task: ClassVar[str] = "reconstruct_without_encoder"
    #: the metric and figure name
    label_format: ClassVar[str] = "{task}_{method}_{fill}_{split}"
    #: settings a result of ``tfgen complete`` is keyed with even at their defaults
    key_settings: ClassVar[tuple[str, ...]] = ("split", "num_images", "fill", "fit.method")

    split: SplitName = setting("test", help="the images (the 2AMU20 VAE assignment's task 4 uses "
                                            "test images)")
    num_images: int = setting(10, at_least=1, at_most=100_000, help="the first num_images images "
                                                                    "of the split (the 2AMU20 VAE "
                                                                    "assignment's task 4: 10)")
    ncols: int = setting(10, at_least=1, at_most=64, help="images per row of the figure")
    fill: Fill = setting("mean", help=FILL_HELP)
    fit: FitConfig = setting(factory=svi_fit_2amu20, help="how the latents are fitted: an "
                                                          "[evaluate.fit] table of these keys")

    def check(self, cfg):
        key = task_key(cfg, self)
        # the fit's objective is the observed pixels' marginal (module docstring)
        likelihood_capabilities.require(cfg, Factorized, f"{key}.task", f"task {self.task!r}",
                                        given=self.task,
                                        alternative="drop this [[evaluate]] entry")
        if not getattr(cfg.data, f"{self.split}_split"):
            raise ConfigError(cfg.source_file, f"{key}.split",
                              f"task {self.task!r} uses the {self.split} split, but "
                              f"data.{self.split}_split is empty", self.split, "a configured split")
        self.fit.check(cfg, f"{key}.fit")

    def peak(self, shape, act):
        return batch_bytes(shape, act, self.num_images), ("num_images",)

    def label(self) -> str:
        return self.label_format.format(task=self.task, method=self.fit.method, fill=self.fill,
                                        split=self.split, mask=self.mask_label())

    def mask_label(self) -> str:
        return "none"

    def hidden(self, num: int, height: int, width: int, seed: int) -> np.ndarray | None:
        """The hidden pixels [num, height, width], or None (every pixel observed)."""
        return None


@dataclasses.dataclass
class CompletionConfig(FittedImagesConfig):
    """The keys of ``complete`` (the defaults of the 2AMU20 VAE assignment's task 4b)."""

    task: ClassVar[str] = "complete"
    label_format: ClassVar[str] = "{task}_{mask}_{method}_{fill}_{split}"
    key_settings: ClassVar[tuple[str, ...]] = ("split", "num_images", "mask", "fill",
                                               "fit.method")

    fill: Fill = setting("sample", help=FILL_HELP)
    mask: MaskKind = setting("right_half", help="the hidden pixels: center (rows/cols 10..21 at "
                                                "32x32, Kuntz et al. (2023)), a named half "
                                                "(right_half: the left half observed, as in the "
                                                "2AMU20 VAE assignment's task 4b), random pixels, "
                                                "or a mask file")
    mask_file: str = setting("", help=f"mask = 'file': {MASK_FILE_ALLOWED}")
    fraction: float = setting(0.5, above=0.0, at_most=0.999, help="hidden fraction of the pixels "
                                                                 "(mask = 'random')")

    def check(self, cfg):
        super().check(cfg)
        key = f"{task_key(cfg, self)}.mask_file"
        if self.mask != "file":
            if self.mask_file:
                raise ConfigError(cfg.source_file, key, f"a mask file is read only with mask = "
                                  f"'file' (mask is {self.mask!r})", self.mask_file,
                                  "'' or mask = 'file'")
            return
        if not self.mask_file:
            raise ConfigError(cfg.source_file, key, "mask = 'file' needs a mask file",
                              self.mask_file, MASK_FILE_ALLOWED)
        try:
            read_mask_file(self.mask_file)
        except ValueError as err:
            raise ConfigError(cfg.source_file, key, f"the mask file {err}", self.mask_file,
                              MASK_FILE_ALLOWED) from None

    def check_data(self, cfg, data) -> None:
        if self.mask != "file":
            return
        key = f"{task_key(cfg, self)}.mask_file"
        height, width = data.image_shape[:2]
        try:
            pattern = read_mask_file(self.mask_file)
        except ValueError as err:  # changed since the config was loaded
            raise ConfigError(cfg.source_file, key, f"the mask file {err}", self.mask_file,
                              MASK_FILE_ALLOWED) from None
        if pattern.shape != (height, width):
            raise ConfigError(cfg.source_file, key, f"the mask file is {pattern.shape[0]} x "
                              f"{pattern.shape[1]} pixels, the images {height} x {width}",
                              self.mask_file, f"a {height} x {width} mask")

    def mask_label(self) -> str:
        if self.mask != "file":
            return self.mask
        return "file-" + re.sub(r"[^A-Za-z0-9_-]", "_", Path(self.mask_file).stem)[:40]

    def hidden(self, num, height, width, seed):
        pattern = read_mask_file(self.mask_file) if self.mask == "file" else None
        return hidden_mask(self.mask, num, height, width, self.fraction, seed, pattern)


@dataclasses.dataclass
class InpaintingConfig(CompletionConfig):
    """The keys of ``inpainting``: the completion task with the defaults of Kuntz et al. (2023)."""

    task: ClassVar[str] = "inpainting"
    label_format: ClassVar[str] = "{task}_{mask}_{split}"

    num_images: int = with_default(CompletionConfig, "num_images", 16)
    ncols: int = with_default(CompletionConfig, "ncols", 8)
    fill: Fill = with_default(CompletionConfig, "fill", "mean")
    fit: FitConfig = with_default(CompletionConfig, "fit", factory=mle_fit_kuntz2023)
    mask: MaskKind = with_default(CompletionConfig, "mask", "center")


# --------------------------------------------------------------------------- the tasks

def run_task(params: FittedImagesConfig, ctx: EvalContext) -> dict:
    """Fit, fill, draw the figure, and measure; the one implementation of the three tasks."""
    key = task_key(ctx.cfg, params)
    images = ctx.split(params.split, f"{key}.split").images[: params.num_images]
    n, height, width, _ = images.shape
    seed = ctx.cfg.experiment.seed
    hidden = params.hidden(n, height, width, seed)
    observed = np.ones((n, height, width), bool) if hidden is None else ~hidden
    # seed + 5: where the inpainting task has always drawn its initial latents from
    result = complete(ctx.scheme, images, ~observed, params.fit, params.fill, seed + 5,
                      ctx.cfg.train.compile)
    encoder = None
    if isinstance(ctx.scheme, AmortizedPosterior):  # what an encoder that sees every pixel gives
        encoder = np.concatenate([ctx.scheme.reconstruct(tf.constant(images[lo:lo + 500])).numpy()
                                  for lo in range(0, n, 500)])
    name = params.label()
    shown = result.decoded if hidden is None else result.completion
    grid = completion_grid(images, hidden, shown, encoder, params.ncols, ctx.data.pixel_range)
    figures.write_png(ctx.figure(f"{name}.png"), grid)
    figures.summary_image(f"eval/{name}", grid, ctx.step)

    if hidden is None:
        per_image = masked_mse_per_image(result.decoded, images, observed)
        metrics = {f"{name}_mse": masked_mse(result.decoded, images, observed)}
        if encoder is not None:
            metrics[f"{name}_encoder_mse"] = masked_mse(encoder, images, observed)
    else:
        per_image = masked_mse_per_image(result.decoded, images, hidden)
        metrics = {f"{name}_hidden_mse": masked_mse(result.decoded, images, hidden),
                   f"{name}_observed_mse": masked_mse(result.decoded, images, observed)}
    tf.summary.histogram(f"eval/{name}_{'mse' if hidden is None else 'hidden_mse'}_per_image",
                         per_image, step=ctx.step)
    if params.fit.method != "encoder":  # the encoder is not fitted: no objective, no steps
        metrics[f"{name}_objective_mean"] = float(np.mean(result.fit.objective))
        metrics[f"{name}_steps_mean"] = float(np.mean(result.fit.steps))
        tf.summary.histogram(f"eval/{name}_objective", result.fit.objective, step=ctx.step)
        tf.summary.histogram(f"eval/{name}_steps", result.fit.steps, step=ctx.step)
    metrics[f"{name}_fit_seconds"] = float(result.fit.seconds)
    return metrics


@EVALUATIONS.register("complete", config=CompletionConfig)
def complete_task(params: CompletionConfig, ctx: EvalContext) -> dict:
    """Image completion (the 2AMU20 VAE assignment, task 4b): latents fitted to the observed pixels fill the hidden ones."""
    return run_task(params, ctx)


@EVALUATIONS.register("inpainting", config=InpaintingConfig)
def inpainting_task(params, ctx: EvalContext) -> dict:
    """Inpainting (Kuntz et al. 2023, eq. (4)): complete with their defaults (centre, mle, Adam)."""
    return run_task(params, ctx)


@EVALUATIONS.register("reconstruct_without_encoder", config=FittedImagesConfig)
def reconstruct_without_encoder_task(params: FittedImagesConfig, ctx: EvalContext) -> dict:
    """Reconstruction without the encoder (the 2AMU20 VAE assignment, task 4a): latents fitted to every pixel."""
    return run_task(params, ctx)
