"""Using a run from Python: ``tfgen.load_config``, ``tfgen.run`` and ``tfgen.open_run``
(exported, lazily, by ``tfgen/__init__.py``), and the :class:`Run` they give.

Nothing here computes anything of its own: a run is opened by the runner's ``open_run`` (the
weights ``tfgen eval`` uses: the best checkpoint if early stopping kept the best weights,
else the newest intact one), trained by the runner's ``run``, and its methods call the code
the evaluation tasks call (the samplers, the importance-sampled or exact log-likelihood, the
test-time fit and completion).  With the default seeds (the run's ``experiment.seed``) a
method gives the number its task gives (tested).  A method the run's scheme cannot serve is
refused with the error the CLI gives for it
(:func:`tfgen.inference.capabilities.require`), before anything is computed.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from tfgen.assemble import from_dict
from tfgen.config import Config, apply_overrides, read_toml, to_dict
from tfgen.errors import ConfigError

#: images encoded, decoded or scored at once (as the tasks' batches)
BATCH = 500


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """The experiment in the TOML file ``path``, validated as ``tfgen validate`` does, with
    ``overrides`` (``"KEY=VALUE"``, the value read as TOML, as ``--set`` takes them)."""
    from tfgen.assemble import load_config as load

    return load(str(path), list(overrides))


def run(config: Config | str | Path, overrides: list[str] | tuple[str, ...] = (), *,
        quiet: bool = False, memory_check: bool = True) -> "Run":
    """Train and evaluate ``config`` (a :class:`Config` from :func:`load_config`, or a TOML
    file) exactly as ``tfgen run`` does -- a new run directory, checkpoints, TensorBoard,
    metrics.json -- and return the finished run, opened (:func:`open_run`)."""
    from tfgen.runner import run as run_experiment

    if not isinstance(config, Config):
        config = load_config(config, overrides)
    elif overrides:
        raw = apply_overrides(to_dict(config), list(overrides))
        config = from_dict(raw, config.source_file)
    run_dir = run_experiment(config, [], None, quiet, memory_check)
    return open_run(run_dir, memory_check=memory_check)


def open_run(run_dir: str | Path, *, memory_check: bool = True) -> "Run":
    """A finished (or interrupted) run, from its directory ``<output_dir>/<name>/<timestamp>``:
    its config, data and weights (those ``tfgen eval`` uses).  Reads the run, writes nothing,
    takes no lock."""
    from tfgen.runner import open_run as open_opened

    return Run(open_opened(str(run_dir), None, "tfgen.open_run", memory_check, purpose="open"))


class Run:
    """A trained run, open in this process.  What it offers depends on its scheme's
    capabilities (:mod:`tfgen.inference.capabilities`); asking for one it lacks raises the
    CLI's :class:`tfgen.errors.ConfigError`.

    Images go in and come out as the run's data has them: float32 ``[n, H, W, C]`` in the
    data's pixel range (``run.data.test.images`` are such images)."""

    def __init__(self, opened):
        self._opened = opened
        self._scheme = opened.scheme

    def __repr__(self) -> str:
        cfg = self.config
        return (f"<tfgen Run {self.run_dir}: scheme {cfg.inference.name}, likelihood "
                f"{cfg.model.likelihood.name}, step {self.step}>")

    # ------------------------------------------------------------------ what it is
    @property
    def run_dir(self) -> Path:
        return self._opened.run_dir

    @property
    def config(self) -> Config:
        """The run's own config (``config.toml``, every default filled in)."""
        return self._opened.cfg

    @property
    def data(self):
        """The run's data (:class:`tfgen.data.DataBundle`: ``train``, ``val``, ``test`` splits
        of ``images`` and ``labels``; ``image_shape``; ``pixel_range``)."""
        return self._opened.data

    @property
    def step(self) -> int:
        """The training step of the weights."""
        return self._opened.step

    @property
    def weights(self) -> str:
        """The checkpoint the weights came from."""
        return self._opened.weights

    @property
    def history(self) -> list[dict]:
        """Per-epoch training and validation metrics."""
        return self._opened.history

    @property
    def metrics(self) -> dict:
        """metrics.json as it is now (read at each access: ``tfgen eval`` may add to it)."""
        from tfgen.runner import read_run_metrics

        return read_run_metrics(self.run_dir / "metrics.json")

    @property
    def networks(self) -> dict:
        """The run's Keras networks by role: ``decoder``, ``encoder``, ``discriminator``
        (those its scheme has)."""
        found = {"decoder": getattr(getattr(self._scheme, "model", None), "decoder", None)}
        found.update((role, getattr(self._scheme, role, None))
                     for role in ("encoder", "discriminator"))
        return {role: net for role, net in found.items() if net is not None}

    @property
    def decoder(self):
        """The decoder network z -> the likelihood's parameters (a Keras model)."""
        from tfgen.inference.capabilities import DecoderLikelihood

        self._require(DecoderLikelihood, "decoder")
        return self._scheme.model.decoder

    @property
    def encoder(self):
        """The encoder network y -> q(z | y)'s parameters (a Keras model)."""
        from tfgen.inference.capabilities import AmortizedPosterior

        self._require(AmortizedPosterior, "encoder")
        network = getattr(self._scheme, "encoder", None)
        if network is None:
            raise ConfigError(self.config.source_file, "inference.scheme", f"scheme "
                              f"{self.config.inference.name!r} computes q(z | y) in closed form, "
                              f"with no encoder network", self.config.inference.name,
                              "encode(images) for q(z | y)")
        return network

    # ------------------------------------------------------------------ what it does
    def sample(self, n: int, sampler: str = "prior", seed: int | None = None,
               show: str = "mean") -> np.ndarray:
        """``n`` new images [n, H, W, C] (numpy): latents from ``sampler`` ("prior",
        "particle_gaussian", "gmm"; the ``samples`` task's) decoded to E[y | z] (``show =
        "mean"``) or drawn from p(y | z) (``"sample"``); a model without latents (flow,
        autoregressive, em gmm) samples itself.  ``seed``: default the run's
        ``experiment.seed``, so ``run.sample(64)`` is the ``samples`` task's figure."""
        from tfgen.inference.samplers import SAMPLERS
        from tfgen.inference.grids import check_samples, draw_images

        self._choice("sample", "sampler", sampler, SAMPLERS)
        self._choice("sample", "show", show, ("mean", "sample"))
        check_samples(self.config, sampler, "sample(sampler=...)")
        return draw_images(self._scheme, self._count("sample", n), sampler, show,
                           self._seed(seed))

    def encode(self, images, seed: int | None = None):
        """q(z | y) for each image: a ``tfd.MultivariateNormalDiag`` with batch shape [n]
        (``.mean()``, ``.stddev()``, ``.sample()``).  The encoder's, or for a scheme without
        one (svi, map, pga) the one fitted to each image at test time (its
        ``inference.posterior_fit`` settings; ``seed`` seeds the fit)."""
        import tensorflow as tf

        from tfgen.inference.capabilities import Posterior
        from tfgen.inference.elbo import gaussian_posterior_from_scale

        self._require(Posterior, "encode()")
        images = self._images("encode", images)
        seed = self._seed(seed)
        parts = [self._scheme.posterior_for(tf.constant(images[lo:lo + BATCH]), [seed, i])
                 for i, lo in enumerate(range(0, len(images), BATCH))]
        return gaussian_posterior_from_scale(tf.concat([q.loc for q in parts], 0),
                                             tf.concat([q.scale.diag for q in parts], 0))

    def decode(self, z):
        """p(y | z) for latents ``z`` [n, d]: the likelihood's TFP distribution (a
        ``tfd.Independent`` over [H, W, C]; its ``.distribution`` holds the per-pixel
        parameters).  It is over the likelihood's own support (0/1 bits for the Bernoulli,
        bin indices for the Categorical, [0, 1] for the Beta); ``sample(show="mean")`` and
        the exported ``decode`` give images in the data's pixel range."""
        import tensorflow as tf

        from tfgen.inference.capabilities import DecoderLikelihood

        self._require(DecoderLikelihood, "decode()")
        model = self._scheme.model
        z = np.asarray(z, np.float32)
        if z.ndim != 2 or z.shape[1] != model.latent_dim:
            raise ConfigError(str(self.run_dir), "decode(z)", "latents must be [n, d]",
                              f"shape {list(z.shape)}", f"[n, {model.latent_dim}]")
        return model.likelihood.distribution(model.decode(tf.constant(z)))

    def log_likelihood(self, images, samples: int = 100, seed: int | None = None,
                       estimator: str = "auto", batch_size: int = 50) -> np.ndarray:
        """log p(y) per image (nats, numpy [n]): ``estimator = "is"``, the importance estimate
        with K = ``samples`` draws of q(z | y) (Burda et al. 2016), a stochastic lower bound;
        ``"exact"``, the closed form of models that have one (flow, autoregressive, em);
        ``"auto"``: exact where there is one, else is.  The ``log_likelihood`` task's
        estimates: with its ``batch_size`` and seed, the same numbers."""
        from tfgen.data import Split
        from tfgen.inference.estimators import per_image
        from tfgen.inference.capabilities import ExactLogLikelihood, LogLikelihood, has

        self._choice("log_likelihood", "estimator", estimator, ("auto", "is", "exact"))
        if estimator == "auto":
            estimator = "exact" if has(self.config, ExactLogLikelihood) else "is"
        self._require(ExactLogLikelihood if estimator == "exact" else LogLikelihood,
                      f"log_likelihood(estimator={estimator!r})")
        images = self._images("log_likelihood", images)
        samples = self._count("log_likelihood", samples, "samples")
        seed, scheme = self._seed(seed), self._scheme
        if estimator == "exact":
            from tfgen.runtime import compile_step

            exact = compile_step(scheme.exact_log_likelihood, self.config.train.compile)
            estimate = lambda batch, i: exact(batch)  # noqa: E731
        else:
            estimate = lambda batch, i: scheme.log_likelihood_estimate(  # noqa: E731
                batch, [seed, i], samples)
        split = Split(images, np.full(len(images), -1, np.int64))
        return per_image(estimate, split, self._count("log_likelihood", batch_size,
                                                      "batch_size"))

    def complete(self, images, mask="right_half", method: str = "svi", fill: str = "sample",
                 seed: int | None = None, **fit):
        """Complete partly hidden images as ``tfgen complete`` does: fit latents to the
        observed pixels (``method``: svi, map, mle, langevin, encoder), fill the hidden ones
        from p(y_H | z) (``fill``: mean or sample).  ``mask``: a name (center, left_half,
        right_half, top_half, bottom_half, random) or a boolean array [H, W] or [n, H, W],
        True = hidden; ``fit``: any other key of the task's ``[evaluate.fit]`` table
        (``steps=100``, ``patience=0``, ``optimizer={"name": "adam"}`` ...).  Returns a
        :class:`tfgen.evaluation.completion.Completion`: ``completion`` (the images, hidden
        pixels filled), ``decoded``, ``latents`` and the ``fit``."""
        from tfgen.evaluation.completion import complete

        images = self._images("complete", images)
        n, height, width, _ = images.shape
        # a split the run has (the task checks that its split is configured; here unused)
        split = next((s for s in ("test", "val", "train")
                      if getattr(self.config.data, f"{s}_split")), "train")
        table = {"task": "complete", "split": split, "fill": fill,
                 "fit": {"method": method, **fit}}
        hidden = None
        if isinstance(mask, str):
            table["mask"] = mask
        else:
            hidden = np.asarray(mask)
            if hidden.dtype != bool or hidden.shape not in ((height, width), (n, height, width)):
                raise ConfigError(str(self.run_dir), "complete(mask=...)", "a mask array must "
                                  "be boolean (True = hidden)", f"{hidden.dtype} array of shape "
                                  f"{list(hidden.shape)}", f"bool [{height}, {width}] or "
                                  f"[{n}, {height}, {width}], or a mask name")
            hidden = np.broadcast_to(hidden, (n, height, width))
        params = self._task(table, "complete").params
        run_seed = self.config.experiment.seed
        if hidden is None:
            hidden = params.hidden(n, height, width, run_seed)
        # seed + 5: where the completion tasks draw their initial latents from
        return complete(self._scheme, images, hidden, params.fit, params.fill,
                        (run_seed if seed is None else seed) + 5, self.config.train.compile)

    # ------------------------------------------------------------------ checks
    def _require(self, capability, needed_by: str) -> None:
        from tfgen.inference.capabilities import require

        require(self.config, capability, "inference.scheme", needed_by)

    def _seed(self, seed: int | None) -> int:
        if seed is None:
            return self.config.experiment.seed
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ConfigError(str(self.run_dir), "seed", "must be a non-negative integer", seed)
        return int(seed)

    def _count(self, method: str, value, name: str = "n") -> int:
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ConfigError(str(self.run_dir), f"{method}({name}=...)", "must be a positive "
                              "integer", value)
        return int(value)

    def _choice(self, method: str, name: str, value, allowed) -> None:
        if value not in allowed:
            raise ConfigError(str(self.run_dir), f"{method}({name}=...)", f"unknown {name}",
                              value, ", ".join(repr(a) for a in allowed))

    def _images(self, method: str, images) -> np.ndarray:
        """``images`` as float32 [n, H, W, C] of the run's shape ([n, H, W] for one channel)."""
        shape = tuple(self.data.image_shape)
        array = np.asarray(images, np.float32)
        if array.ndim == 3 and shape[-1] == 1:
            array = array[..., None]
        if array.ndim != 4 or tuple(array.shape[1:]) != shape or not len(array):
            raise ConfigError(str(self.run_dir), f"{method}(images)", "images of the run's "
                              "shape are needed", f"shape {list(np.shape(images))}",
                              f"[n, {', '.join(map(str, shape))}], n >= 1, in the pixel range "
                              f"{list(self.data.pixel_range)}")
        if not np.isfinite(array).all():
            raise ConfigError(str(self.run_dir), f"{method}(images)", "images must be finite "
                              "(NaN or infinite pixels given)")
        return array

    def _task(self, table: dict, method: str):
        """The ``[[evaluate]]`` entry ``table``, validated with the run's config as ``tfgen
        eval`` validates it (the same checks, the same refusals), its keys' errors told as the
        method's arguments (``complete(method=...)``)."""
        config_file = self.run_dir / "config.toml"
        raw = read_toml(config_file)
        raw["evaluate"] = [table]
        try:
            return from_dict(raw, str(config_file)).evaluate[0]
        except ConfigError as err:
            raise ConfigError.combine([_as_argument(e, method, str(self.run_dir))
                                       for e in getattr(err, "errors", [err])]) from None


def _as_argument(err: ConfigError, method: str, where: str) -> ConfigError:
    """An error in ``evaluate[0].<key>`` as one in the method's argument that set it: fit keys
    are keyword arguments of their own (``fit.steps`` -> ``steps``), ``fit.method`` is
    ``method``."""
    match = re.fullmatch(r"evaluate(?:\[0\])?(?:\.(.+))?", err.key or "")
    if not match:
        return err
    key = match.group(1) or ""
    name = "method" if key == "fit.method" else key.removeprefix("fit.").split(".")[0]
    return ConfigError(where, f"{method}({name}=...)" if name else f"{method}()", err.message,
                       err.given, err.allowed)
