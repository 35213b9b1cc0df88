"""The ``rbf_precision`` task: the paper's fix for the decoder variance, 1/sigma^2(z) as a
positive RBF network on the latent codes (:mod:`tfgen.geometry.precision`), fitted after
training and stored in the run directory; held-out IWAE log-likelihood with and without it,
and sigma over the latent plane."""
from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow as tf

from tfgen import figures
from tfgen.errors import ConfigError
from tfgen.evaluation.tasks import EvalContext, SplitName
from tfgen.geometry.precision import RBFPrecisionConfig, precision_model
from tfgen.geometry.tasks.common import (LatentPlane, check_geometry, check_normal,
                                         compile_mode, data_latents, fit_and_store_rbf,
                                         label_axes)
from tfgen.inference.base import PosteriorEstimates
from tfgen.inference.capabilities import Posterior, require
from tfgen.inference.estimators import mean_log_likelihood
from tfgen.registry import EVALUATIONS
from tfgen.runtime import compile_step
from tfgen.footprint import batch_bytes
from tfgen.schema import TaskConfig, setting


class WithModel(PosteriorEstimates):
    """The scheme's q(z | y) with another generative model: the same ELBO and IWAE
    estimators, for a variant of the trained model (e.g. the RBF precision one)."""

    def __init__(self, scheme, model):
        self.scheme, self.model, self.cfg, self.data = scheme, model, scheme.cfg, scheme.data

    def posterior_for(self, images, seed):
        return self.scheme.posterior_for(images, seed)


@dataclasses.dataclass
class RBFPrecisionTaskConfig(RBFPrecisionConfig, TaskConfig):
    split: SplitName = setting("test", help="held-out images of the log-likelihood comparison")
    samples: int = setting(100, at_least=1, at_most=100000, help="importance samples K (IWAE) per "
                                                                 "image")
    max_images: int = setting(1000, at_least=0, help="0 = the whole split")
    batch_size: int = setting(50, at_least=1)
    num_points: int = setting(2000, at_least=1, at_most=100000, help="data latents drawn on the "
                                                                     "sigma maps")
    resolution: int = setting(60, at_least=2, at_most=1000, help="grid side of the sigma maps")

    def check(self, cfg):
        check_geometry(cfg, "rbf_precision", self.split, "auto", "standard")
        require(cfg, Posterior, "evaluate", "task 'rbf_precision' (its log-likelihood "
                "comparison)", alternative="drop this [[evaluate]] entry")
        check_normal(cfg, "rbf_precision", "evaluate.task")
        if not cfg.data.train_split:
            raise ConfigError(cfg.source_file, "evaluate.task", "the RBF precision is fitted on "
                              "training latents, but data.train_split is empty", "rbf_precision",
                              "a training split")

    def peak(self, shape, act):
        """The IWAE comparison's ``batch_size`` images x ``samples``, with gradients while
        the precision is fitted (``steps``)."""
        return (batch_bytes(shape, act, self.batch_size, self.samples, backward=bool(self.steps)),
                ("batch_size", "samples"))


@EVALUATIONS.register("rbf_precision", config=RBFPrecisionTaskConfig)
def rbf_precision_task(params: RBFPrecisionTaskConfig, ctx: EvalContext) -> dict:
    """Fit the RBF precision decoder variance (the paper's fix); held-out IWAE and sigma maps.

    Fitted after training on the training latents, stored in the run directory, compared with
    the trained variance."""
    rbf, info = fit_and_store_rbf(ctx, params)
    split = ctx.split(params.split, "evaluate.split")
    seed, mode = ctx.cfg.experiment.seed, compile_mode(ctx)
    variant = precision_model(ctx.model, rbf)
    results = {"rbf_precision_fit_seconds": info["seconds"],
               "rbf_precision_fit_latents": float(info["latents"]),
               "rbf_precision_fit_nll_start": info["nll_start"],
               "rbf_precision_fit_nll_end": info["nll_end"]}
    for name, scheme in [("standard", ctx.scheme), ("rbf_precision", WithModel(ctx.scheme, variant))]:
        # the log_likelihood task's estimator, seeds and images: comparable with its numbers
        estimate = mean_log_likelihood(scheme, split, params.batch_size, seed, params.samples,
                                       params.max_images)
        results[f"rbf_precision_{params.split}_log_likelihood_{name}"] = estimate["log_likelihood"]
        results[f"rbf_precision_{params.split}_log_likelihood_{name}_stderr"] = \
            estimate["log_likelihood_stderr"]
    results[f"rbf_precision_{params.split}_log_likelihood_gain"] = (
        results[f"rbf_precision_{params.split}_log_likelihood_rbf_precision"]
        - results[f"rbf_precision_{params.split}_log_likelihood_standard"])
    # sigma over the latent plane: the mean pixel sd, standard against RBF precision
    data = data_latents(ctx, params.split, "auto", params.num_points)
    plane = LatentPlane.through(data.points)
    points2d = plane.project(data.points)
    grid, extent = plane.grid(points2d, params.resolution, 0.5)
    fig, axes = figures.panels(2)
    for ax, (name, model) in zip(axes, [("standard", ctx.model), ("rbf_precision", variant)]):
        mean_sigma = compile_step(lambda s, model=model: tf.reduce_mean(
            model.likelihood.mean_stddev(model.decode(s))[1], axis=[1, 2, 3]), mode)
        lifted = plane.origin + grid @ plane.basis.T
        sigma = np.concatenate([mean_sigma(tf.constant(lifted[lo:lo + 1000])).numpy()
                                for lo in range(0, len(lifted), 1000)])
        figures.heat_map(fig, ax, np.log10(sigma).reshape(params.resolution, params.resolution),
                         extent, f"{name} variance: mean pixel sigma(z)", "log10 sigma", "magma")
        figures.scatter_labels(ax, points2d, data.labels, legend=False)
        label_axes(ax, plane)
    figures.write_figure(fig, ctx.figure("rbf_precision_sigma.png"), "eval/rbf_precision_sigma",
                         ctx.step)
    return results
