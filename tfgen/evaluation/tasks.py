"""The evaluation tasks.  Each returns its metrics (merged into metrics.json) and writes figures.

A task is its config (a :class:`tfgen.schema.TaskConfig`: its keys, checks, data needs and
memory peak) and its function, registered together with ``@EVALUATIONS.register``."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Literal

import numpy as np

from tfgen import figures
from tfgen.config import Config
from tfgen.data import DataBundle, Split
from tfgen.errors import ConfigError
from tfgen.evaluation.ais import AISSettings, ais_log_likelihood
from tfgen.evaluation.metrics import bits_per_dim, is_8bit
from tfgen.footprint import batch_bytes
from tfgen.inference.base import PosteriorEstimates
from tfgen.inference.capabilities import ExactLogLikelihood, LogLikelihood, Posterior, require
from tfgen.inference.estimators import mean_elbo, mean_log_likelihood, per_image, summary
from tfgen.inference.grids import SamplesConfig, reconstruction_grid, sample_grid
from tfgen.inference.proposals import Proposal
from tfgen.registry import EVALUATIONS
from tfgen.runtime import compile_step
from tfgen.schema import TaskConfig, setting

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
class ElboTaskConfig(TaskConfig):
    split: SplitName = setting("test")
    mc_samples: int = setting(1, at_least=1, at_most=10000)
    batch_size: int = setting(500, at_least=1)
    max_images: int = setting(0, at_least=0, help="0 = the whole split (a q fitted at test time "
                                                  "costs an optimisation per image)")

    def check(self, cfg):
        _needs(cfg, Posterior, "elbo")

    def peak(self, shape, act):
        return batch_bytes(shape, act, self.batch_size, self.mc_samples), ("batch_size",)


@EVALUATIONS.register("elbo", config=ElboTaskConfig)
def elbo_task(params: ElboTaskConfig, ctx: EvalContext) -> dict:
    """Mean ELBO, reconstruction term and KL on a split (nats per image)."""
    split = ctx.split(params.split, "evaluate.split")
    terms = mean_elbo(ctx.scheme, split, params.batch_size, ctx.cfg.experiment.seed, params.mc_samples,
                      params.max_images)
    return {f"{params.split}_{k}": v for k, v in terms.items()}


# --------------------------------------------------------------------------- log-likelihood

@dataclasses.dataclass
class LogLikelihoodConfig(TaskConfig):
    split: SplitName = setting("test")
    estimator: Literal["is", "ais", "exact"] = setting(
        "is", help="is: importance sampling with K = `samples` draws of `proposal` (Burda et "
                   "al. 2016); exact: log p(y) in closed form (models that have one: em); "
                   "ais: annealed importance sampling (Neal 2001; Wu et al. 2017), "
                   "slow: for small subsets (max_images), to check the is numbers")
    samples: int = setting(100, at_least=1, at_most=100000, help="is: importance samples K per "
                                                                 "image, decoded 100 at a time")
    proposal: Literal["posterior", "student_t", "scaled"] = setting(
        "posterior", help="is (and ais with ais_start = 'proposal'): q(z | y) itself (the "
                          "encoder's, or fitted at test time), a multivariate Student-t with q's "
                          "location and scale and proposal_df degrees of freedom, or q with its "
                          "scale times proposal_scale")
    proposal_df: float = setting(5.0, above=0.0, help="student_t: degrees of freedom nu (smaller: "
                                                      "heavier tails)")
    proposal_scale: float = setting(1.5, above=0.0, help="scaled: factor c on q's standard "
                                                         "deviations")
    ais_steps: int = setting(500, at_least=1, at_most=1_000_000, help="ais: T annealing "
                                                                      "distributions, sigmoid "
                                                                      "schedule")
    ais_chains: int = setting(16, at_least=1, at_most=10000, help="ais: chains per image")
    ais_leapfrog: int = setting(10, at_least=1, at_most=1000, help="ais: leapfrog steps per HMC "
                                                                   "transition (1 = MALA)")
    ais_step_size: float = setting(0.05, above=0.0, at_most=0.5, help="ais: initial HMC step size, "
                                                                      "then adapted per image to "
                                                                      "an acceptance of 0.65")
    ais_start: Literal["prior", "proposal"] = setting(
        "prior", help="ais: the chains start from p(z) (no q needed: no test-time fit for "
                      "encoder-free schemes) or from `proposal`")
    max_images: int = setting(1000, at_least=0, help="0 = the whole split")
    batch_size: int = setting(50, at_least=1, help="images at once (ais: times ais_chains chains)")

    def check(self, cfg):
        if self.estimator == "exact":
            require(cfg, ExactLogLikelihood, "evaluate.estimator", "task 'log_likelihood' "
                    "with estimator = 'exact'", given="exact", alternative="estimator = 'is'")
        else:
            _needs(cfg, LogLikelihood, "log_likelihood")

    def proposal_spec(self) -> Proposal:
        return Proposal(self.proposal, float(self.proposal_df), float(self.proposal_scale))

    def peak(self, shape, act):
        """``batch_size`` images at once: ais runs all its chains with gradients; is decodes at
        most ``IMPORTANCE_CHUNK`` samples at a time (more cost time, not memory)."""
        if self.estimator == "ais":
            samples, backward, keys = self.ais_chains, True, ("ais_chains",)
        elif self.estimator == "exact":
            samples, backward, keys = 1, False, ()
        else:
            samples, backward, keys = (min(self.samples, PosteriorEstimates.IMPORTANCE_CHUNK),
                                       False, ("samples",))
        return (batch_bytes(shape, act, self.batch_size, samples, backward),
                ("batch_size",) + keys)


@EVALUATIONS.register("log_likelihood", config=LogLikelihoodConfig)
def log_likelihood_task(params: LogLikelihoodConfig, ctx: EvalContext) -> dict:
    """log p(y) per image, in nats (mean and its standard error over images) and bits per
    dimension (:mod:`tfgen.evaluation.metrics`).

    ``estimator = 'is'``: the K-sample importance estimate (Burda et al. 2016) with q(z | y) or
    a widened q as proposal (:mod:`tfgen.inference.proposals`), keys
    ``<split>_log_likelihood[_<proposal>]`` (no suffix for q itself).  ``'ais'``: annealed
    importance sampling (:mod:`tfgen.evaluation.ais`, which says why it is this task's
    estimator rather than a task of its own), keys ``<split>_log_likelihood_ais`` and the
    transitions' mean acceptance probability ``<split>_ais_acceptance``.  Both are
    stochastic lower bounds of log p(y).  ``'exact'``: the closed form of models that have one
    (``<split>_log_likelihood_exact``)."""
    split = ctx.split(params.split, "evaluate.split")
    seed, proposal = ctx.cfg.experiment.seed, params.proposal_spec()
    if params.estimator == "is":
        result = mean_log_likelihood(ctx.scheme, split, params.batch_size, seed, params.samples,
                                     params.max_images, proposal)
        suffix = proposal.suffix
    elif params.estimator == "exact":
        exact = compile_step(ctx.scheme.exact_log_likelihood, ctx.cfg.train.compile)
        result = summary(per_image(lambda images, i: exact(images), split, params.batch_size,
                                   params.max_images))
        suffix = "_exact"
    else:
        settings = AISSettings(params.ais_steps, params.ais_chains, params.ais_leapfrog,
                               params.ais_step_size, params.ais_start)
        acceptance = []

        def estimate(images, i):
            values, rates = ais_log_likelihood(ctx.scheme, images, [seed, i], settings, proposal)
            acceptance.append(rates)
            return values

        result = summary(per_image(estimate, split, params.batch_size, params.max_images))
        result["ais_acceptance"] = float(np.concatenate(acceptance).mean())
        suffix = "_ais"
    used = split.images[:result["images"]]
    result.update(bits_per_dim(result, ctx.model.likelihood, ctx.data.image_shape,
                               is_8bit(ctx.cfg.data, used, ctx.data.pixel_range),
                               getattr(ctx.scheme, "discrete_log_likelihood", None)))
    named = {}
    if "ais_acceptance" in result:
        named[f"{params.split}_ais_acceptance"] = result.pop("ais_acceptance")
    for key, value in result.items():
        base, stderr = (key[:-len("_stderr")], "_stderr") if key.endswith("_stderr") else (key, "")
        named[f"{params.split}_{base}{suffix}{stderr}"] = value
    return named


# --------------------------------------------------------------------------- figures

@dataclasses.dataclass
class ReconstructionsConfig(TaskConfig):
    split: SplitName = setting("test")
    num_images: int = setting(32, at_least=1, at_most=512)
    ncols: int = setting(8, at_least=1, at_most=64)

    def check(self, cfg):
        _needs(cfg, Posterior, "reconstructions")

    def peak(self, shape, act):
        return batch_bytes(shape, act, self.num_images), ("num_images",)


@EVALUATIONS.register("reconstructions", config=ReconstructionsConfig)
def reconstructions_task(params: ReconstructionsConfig, ctx: EvalContext) -> dict:
    """Grid of originals (odd rows) above their reconstructions E[y | z = mu(y)] (even rows)."""
    split = ctx.split(params.split, "evaluate.split")
    grid = reconstruction_grid(ctx.scheme, split.images[:params.num_images], params.ncols,
                               ctx.data.pixel_range)
    figures.write_png(ctx.figure(f"reconstructions_{params.split}.png"), grid)
    figures.summary_image(f"eval/reconstructions_{params.split}", grid, ctx.step)
    return {}


@EVALUATIONS.register("samples", config=SamplesConfig)
def samples_task(params: SamplesConfig, ctx: EvalContext) -> dict:
    """Images decoded from latents drawn by the chosen sampler."""
    grid = sample_grid(ctx.scheme, params, ctx.cfg.experiment.seed, ctx.data.pixel_range)
    name = f"samples_{params.sampler}" + ("_drawn" if params.show == "sample" else "")
    figures.write_png(ctx.figure(f"{name}.png"), grid)
    figures.summary_image(f"eval/{name}", grid, ctx.step)
    return {}


#: axis labels of the metrics schemes report; any other metric is plotted under its own name
CURVE_LABELS = {"elbo": "ELBO (nats / image)", "reconstruction": "E_q[log p(y|z)] (nats / image)",
                "kl": "KL(q || p) (nats / image)", "loss": "loss"}


@dataclasses.dataclass
class CurvesConfig(TaskConfig):
    """No keys; plots the history, runs no network."""

    def peak(self, shape, act):
        return 0, ()


@EVALUATIONS.register("curves", config=CurvesConfig)
def curves_task(params: CurvesConfig, ctx: EvalContext) -> dict:
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
