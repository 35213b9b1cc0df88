"""``tfgen export RUN_DIR``: a trained run as a TensorFlow SavedModel that plain TensorFlow
loads (``tf.saved_model.load``; no tfgen, no TFP import needed to call it).

The SavedModel is a ``tf.Module`` holding the run's generative model (prior, decoder,
likelihood: their variables at the weights ``tfgen eval`` uses) and, where the scheme has
one, its encoder, with three ``tf.function`` serving signatures:

* ``decode(z [n, d] float32)`` -> ``mean`` (E[y | z] in the data's pixel range, [n, H, W, C]),
  ``decoder_output`` (the decoder's raw output) and the parameters of the likelihood's
  per-pixel TFP distribution, one output each, named by their TFP names (``logits`` for the
  Bernoulli and Categorical, ``loc`` and ``scale`` for the Normal, ``concentration1`` and
  ``concentration0`` for the Beta, ``mixture_distribution_logits``,
  ``components_distribution_distribution_loc`` ... for the discretized logistic mixture);
* ``sample(n int32, seed int32)`` -> ``z`` ~ p(z), the run's own prior (a Gaussian mixture or
  a RealNVP flow too: the TFP distribution is traced into the graph) drawn with stateless
  ops from the seed [seed, 0], and their images: ``mean`` = E[y | z] and ``sample`` ~ p(y | z)
  (seed [seed, 1]).  The same seed gives the same images, the images ``tfgen``'s ``samples``
  task and ``Run.sample(n, seed=seed)`` give;
* ``encode(images [n, H, W, C] float32)`` -> ``mean``, ``stddev`` and ``log_variance`` of
  q(z | y), for schemes with an amortized posterior (vae, bigan, em ppca).

What it needs is asked of the capabilities, as a task asks (:mod:`tfgen.capability`): of the
scheme a decoder with a likelihood (``DecoderLikelihood``) and prior samples
(``LatentSampler``), which flow, autoregressive and em gmm lack; of the likelihood per-pixel
factors (``Factorized``: their parameters are what ``decode`` serves), which the autoregressive
``pixelcnn`` lacks.  A config whose scheme or likelihood (a plugin's too) lacks one is
refused in one line naming the capability, before anything is read or written.  ``tfgen_export.json`` beside ``saved_model.pb`` records the run, the
weights, the shapes and the signatures.

The export is written to a temporary folder beside the target and moved into place with
``os.replace``: a failure (a full disk) leaves no half-written SavedModel.  An existing
target is replaced only if it is an earlier tfgen export.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import tensorflow as tf
import tensorflow_probability as tfp

from tfgen import runlock, storage
from tfgen.assemble import load_config
from tfgen.errors import ConfigError
from tfgen.inference.capabilities import (AmortizedPosterior, DecoderLikelihood, LatentSampler,
                                          require)
from tfgen.models import likelihood_capabilities
from tfgen.models.likelihood_capabilities import Factorized
from tfgen.rundir import CONFIG_NAME, open_run_dir
from tfgen.runner import open_run

#: written beside saved_model.pb: marks a folder as a tfgen export (which may be replaced)
MANIFEST = "tfgen_export.json"


def default_out(run_dir: Path) -> Path:
    return run_dir / "export" / "savedmodel"


def export_run(run_dir: str, out: str | None = None, memory_check: bool = True) -> tuple[Path, dict]:
    """Export the run in ``run_dir`` to ``out`` (default ``RUN_DIR/export/savedmodel``);
    returns the folder and its manifest.  Refusals (not a run, a scheme or likelihood that
    cannot be exported, no checkpoint, a target that is not an earlier export) come before
    anything is written; the run directory is locked as by ``tfgen eval``."""
    path = open_run_dir(run_dir, "tfgen export")
    target = Path(out) if out else default_out(path)
    cfg = load_config(path / CONFIG_NAME)
    for capability in (DecoderLikelihood, LatentSampler):
        require(cfg, capability, "inference.scheme", "tfgen export")
    # ``decode`` serves the parameters of the per-pixel factor p(y_i | z)
    likelihood_capabilities.require(cfg, Factorized, "model.likelihood.name", "tfgen export")
    _refuse_target(target, out)
    with runlock.holding(path, f"tfgen export {path}"):
        opened = open_run(str(path), None, "tfgen export", memory_check, purpose="export")
        _refuse_target(target, out)  # again: it may have appeared meanwhile
        module = _Servable(opened.scheme, opened.data.image_shape)
        manifest = {"run_dir": str(path), "step": opened.step, "weights": opened.weights,
                    "scheme": cfg.inference.name, "likelihood": cfg.model.likelihood.name,
                    "prior": cfg.model.prior.name, "latent_dim": module.latent_dim,
                    "image_shape": list(opened.data.image_shape),
                    "pixel_range": list(opened.data.pixel_range),
                    "signatures": module.describe()}
        _write_atomically(module, target, manifest)
    return target, manifest


def _refuse_target(target: Path, out: str | None) -> None:
    if target.exists() and not (target / MANIFEST).is_file():
        where = "--out" if out else "RUN_DIR/export/savedmodel"
        raise ConfigError("tfgen export", where, "exists and is not a tfgen export (it would be "
                          "replaced)", str(target), "a new folder, or an earlier tfgen export "
                          "to replace")


def _write_atomically(module, target: Path, manifest: dict) -> None:
    """tf.saved_model.save into a temporary folder beside ``target``, then os.replace; an
    earlier export at ``target`` is moved aside first and removed last."""
    staging = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    previous = target.with_name(f".{target.name}.old-{os.getpid()}")
    with storage.writing(target):
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(staging, ignore_errors=True)
            tf.saved_model.save(module, str(staging), signatures=module.signatures())
            (staging / MANIFEST).write_text(json.dumps(manifest, indent=1))
            if target.exists():
                os.replace(target, previous)
            os.replace(staging, target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            if previous.exists() and not target.exists():
                os.replace(previous, target)  # the earlier export stays
            raise
    shutil.rmtree(previous, ignore_errors=True)


def distribution_tensors(dist, prefix: str = "") -> dict:
    """The tensor parameters of a TFP distribution, nested distributions' included, flat
    (``components_distribution_distribution_loc``); parameters given as None are left out."""
    out = {}
    for name, value in dist.parameters.items():
        if isinstance(value, tfp.distributions.Distribution):
            out.update(distribution_tensors(value, f"{prefix}{name}_"))
        elif value is not None and tf.is_tensor(value):
            out[f"{prefix}{name}"] = tf.convert_to_tensor(value)
    return out


class _Servable(tf.Module):
    """The exported module: the run's model (and encoder) and the serving functions."""

    def __init__(self, scheme, image_shape):
        super().__init__(name="tfgen_export")
        self.model = scheme.model  # prior, decoder, likelihood: their variables
        self.latent_dim = int(scheme.model.latent_dim)
        self.functions = {}
        d = self.latent_dim
        self.decode = tf.function(self._decode, input_signature=[
            tf.TensorSpec([None, d], tf.float32, name="z")])
        self.sample = tf.function(self._sample, input_signature=[
            tf.TensorSpec([], tf.int32, name="n"), tf.TensorSpec([], tf.int32, name="seed")])
        self.functions = {"decode": self.decode, "sample": self.sample}
        if isinstance(scheme, AmortizedPosterior):
            # q(z | y) reads the encoder's variables (or, for PPCA, the model's)
            self.encoder = getattr(scheme, "encoder", None)
            self._posterior = scheme.posterior
            self.encode = tf.function(self._encode, input_signature=[
                tf.TensorSpec([None, *image_shape], tf.float32, name="images")])
            self.functions["encode"] = self.encode

    def _images(self, decoder_output):
        return self.model.likelihood.mean(decoder_output)

    def _decode(self, z):
        out = self.model.decode(z)
        pixels = self.model.likelihood.distribution(out).distribution
        return {"mean": self._images(out), "decoder_output": out,
                **distribution_tensors(pixels)}

    def _sample(self, n, seed):
        # the seeds of tfgen.inference.samplers.sample_latents and grids.draw_images
        z = self.model.prior.distribution().sample(n, seed=tf.stack([seed, 0]))
        out = self.model.decode(z)
        drawn = self.model.likelihood.sample(out, seed=tf.stack([seed, 1]))
        return {"z": z, "mean": self._images(out), "sample": drawn}

    def _encode(self, images):
        q = self._posterior(images)
        stddev = q.stddev()
        return {"mean": q.mean(), "stddev": stddev, "log_variance": 2.0 * tf.math.log(stddev)}

    def signatures(self) -> dict:
        return {name: fn.get_concrete_function() for name, fn in self.functions.items()}

    def describe(self) -> dict:
        """Per signature: its inputs and outputs (shape and dtype)."""
        described = {}
        for name, fn in self.functions.items():
            concrete = fn.get_concrete_function()
            inputs = {spec.name: [spec.shape.as_list(), spec.dtype.name]
                      for spec in fn.input_signature}
            outputs = {key: [t.shape.as_list(), t.dtype.name]
                       for key, t in concrete.structured_outputs.items()}
            described[name] = {"inputs": inputs, "outputs": outputs}
        return described
