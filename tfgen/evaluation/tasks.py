"""The evaluation tasks.  Each returns its metrics (merged into metrics.json) and writes figures."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Literal

import numpy as np
import tensorflow as tf

from tfgen.config import Config, field
from tfgen.data import DataBundle, Split
from tfgen.errors import ConfigError
from tfgen.evaluation import figures
from tfgen.evaluation.metrics import mean_elbo, mean_log_likelihood
from tfgen.evaluation.samplers import Sampler, check_sampler, sample_latents
from tfgen.inference.capabilities import LogLikelihood, Posterior, require
from tfgen.registry import EVALUATIONS

SplitName = Literal["train", "val", "test"]


@dataclasses.dataclass
class EvalContext:
    cfg: Config
    scheme: object
    data: DataBundle
    run_dir: Path
    history: list[dict]
    step: int
    #: set when a finished run is evaluated again (``tfgen complete``): figure names get
    #: ``_<tag>`` so that they do not overwrite the run's own
    figure_tag: str = ""
    #: the figure paths handed out, in order
    figures: list[Path] = dataclasses.field(default_factory=list)

    @property
    def model(self):
        return self.scheme.model

    def split(self, name: str, key: str) -> Split:
        split = getattr(self.data, name)
        if split is None:
            raise ConfigError(self.cfg.source_file, key, f"the {name} split is empty "
                              f"(data.{name}_split = '')", name, "a configured split")
        return split

    def figure(self, name: str) -> Path:
        if self.figure_tag:
            stem, dot, suffix = name.rpartition(".")
            name = f"{stem}_{self.figure_tag}{dot}{suffix}" if dot else f"{name}_{self.figure_tag}"
        path = self.run_dir / "figures" / name
        self.figures.append(path)
        return path


def task_key(cfg: Config, params) -> str:
    """The key path of the ``[[evaluate]]`` entry whose params are ``params``, for messages:
    ``evaluate[<i>]`` (``evaluate`` if it is not in the config's list)."""
    for i, task in enumerate(cfg.evaluate):
        if task.params is params:
            return f"evaluate[{i}]"
    return "evaluate"


def _needs(cfg: Config, capability, task: str) -> None:
    require(cfg, capability, "evaluate", f"task {task!r}",
            alternative="drop this [[evaluate]] entry")


# --------------------------------------------------------------------------- ELBO

@dataclasses.dataclass
class ElboTaskConfig:
    split: SplitName = field("test")
    mc_samples: int = field(1, min=1, max=10000)
    batch_size: int = field(500, min=1)
    max_images: int = field(0, min=0, help="0 = the whole split (a q fitted at test time costs "
                                           "an optimisation per image)")

    def check(self, cfg):
        _needs(cfg, Posterior, "elbo")


@EVALUATIONS.register("elbo", config=ElboTaskConfig)
def elbo_task(params: ElboTaskConfig, ctx: EvalContext) -> dict:
    """Mean ELBO, reconstruction term and KL on a split (nats per image)."""
    split = ctx.split(params.split, "evaluate.split")
    terms = mean_elbo(ctx.scheme, split, params.batch_size, ctx.cfg.experiment.seed, params.mc_samples,
                      params.max_images)
    return {f"{params.split}_{k}": v for k, v in terms.items()}


# --------------------------------------------------------------------------- log-likelihood

@dataclasses.dataclass
class LogLikelihoodConfig:
    split: SplitName = field("test")
    samples: int = field(100, min=1, max=100000, help="importance samples K per image")
    max_images: int = field(1000, min=0, help="0 = the whole split")
    batch_size: int = field(50, min=1)

    def check(self, cfg):
        _needs(cfg, LogLikelihood, "log_likelihood")


@EVALUATIONS.register("log_likelihood", config=LogLikelihoodConfig)
def log_likelihood_task(params: LogLikelihoodConfig, ctx: EvalContext) -> dict:
    """Importance-sampled log p(y) with q(z | y) as proposal (IWAE bound, K samples)."""
    split = ctx.split(params.split, "evaluate.split")
    result = mean_log_likelihood(ctx.scheme, split, params.batch_size, ctx.cfg.experiment.seed,
                                 params.samples, params.max_images)
    return {f"{params.split}_{k}": v for k, v in result.items()}


# --------------------------------------------------------------------------- figures

@dataclasses.dataclass
class ReconstructionsConfig:
    split: SplitName = field("test")
    num_images: int = field(32, min=1, max=512)
    ncols: int = field(8, min=1, max=64)

    def check(self, cfg):
        _needs(cfg, Posterior, "reconstructions")


def reconstruction_grid(scheme, images, ncols, pixel_range) -> np.ndarray:
    recon = scheme.reconstruct(tf.constant(images)).numpy()
    return figures.stacked_grid([images, recon], ncols, pixel_range)


@EVALUATIONS.register("reconstructions", config=ReconstructionsConfig)
def reconstructions_task(params: ReconstructionsConfig, ctx: EvalContext) -> dict:
    """Grid of originals (odd rows) above their reconstructions E[y | z = mu(y)] (even rows)."""
    split = ctx.split(params.split, "evaluate.split")
    grid = reconstruction_grid(ctx.scheme, split.images[:params.num_images], params.ncols,
                               ctx.data.pixel_range)
    figures.write_png(ctx.figure(f"reconstructions_{params.split}.png"), grid)
    figures.summary_image(f"eval/reconstructions_{params.split}", grid, ctx.step)
    return {}


@dataclasses.dataclass
class SamplesConfig:
    num_images: int = field(64, min=1, max=1024)
    ncols: int = field(8, min=1, max=64)
    sampler: Sampler = field("prior", help="where the latents come from: the prior, or a "
                                           "Gaussian fitted to a particle cloud (PGA)")
    show: Literal["mean", "sample"] = field("mean", help="decoder mean E[y|z], or a draw y ~ p(y|z)")

    def check(self, cfg):
        check_sampler(cfg, self.sampler, "evaluate.sampler")


def sample_grid(scheme, params: SamplesConfig, seed: int, pixel_range) -> np.ndarray:
    z = sample_latents(params.sampler, scheme, params.num_images, seed)
    out = scheme.model.decode(z)
    lik = scheme.model.likelihood
    images = lik.mean(out) if params.show == "mean" else lik.sample(out, seed=tf.constant([seed, 1]))
    return figures.image_grid(np.asarray(images), params.ncols, pixel_range)


@EVALUATIONS.register("samples", config=SamplesConfig)
def samples_task(params: SamplesConfig, ctx: EvalContext) -> dict:
    """Images decoded from latents drawn by the chosen sampler."""
    grid = sample_grid(ctx.scheme, params, ctx.cfg.experiment.seed, ctx.data.pixel_range)
    figures.write_png(ctx.figure(f"samples_{params.sampler}.png"), grid)
    figures.summary_image(f"eval/samples_{params.sampler}", grid, ctx.step)
    return {}


#: axis labels of the metrics schemes report; any other metric is plotted under its own name
CURVE_LABELS = {"elbo": "ELBO (nats / image)", "reconstruction": "E_q[log p(y|z)] (nats / image)",
                "kl": "KL(q || p) (nats / image)", "loss": "loss"}


@EVALUATIONS.register("curves")
def curves_task(params, ctx: EvalContext) -> dict:
    """Per-epoch training and validation curves of every metric the scheme reports, as PNG plots
    (``<metric>_curves.png``: train and validation on one plot)."""
    metrics = sorted({key.split("_", 1)[1] for record in ctx.history for key in record
                      if key.startswith(("train_", "val_"))})
    for metric in metrics:
        figures.plot_curves(ctx.history, [(f"train_{metric}", "train"),
                                          (f"val_{metric}", "validation")],
                            ctx.figure(f"{metric}_curves.png"), f"{metric} per epoch",
                            CURVE_LABELS.get(metric, metric))
    return {}
