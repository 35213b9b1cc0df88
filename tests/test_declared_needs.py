"""A likelihood, an evaluation task and an inference scheme added from outside tfgen/ (here,
this module) state their needs themselves: tfgen validates, refuses and estimates them
through those declarations, with nothing else in tfgen edited.

* the likelihood declares its capabilities (``Factorized``, not ``HasMeanStddev``) and the
  data key it derives (``data_defaults``);
* the task declares what it requires of the likelihood (``Discrete``) and its memory peak
  (``TaskConfig.peak``);
* the scheme declares its memory terms (``memory_terms``).

Each is registered with the registries' own decorators for one test, and removed after it.
"""
from __future__ import annotations

import dataclasses

import pytest
import tensorflow_probability as tfp

from tfgen import resources
from tfgen.assemble import from_dict
from tfgen.errors import ConfigError, ResourceError
from tfgen.footprint import Activations, DataShape, MemoryTerms, Term, batch_bytes
from tfgen.inference.vae import VAE, VAEConfig
from tfgen.memory import Available
from tfgen.models.likelihood_capabilities import Discrete, Factorized
from tfgen.models.likelihoods import Likelihood
from tfgen.registry import EVALUATIONS, LIKELIHOODS, SCHEMES
from tfgen.schema import TaskConfig, setting

#: per-example activations: the estimate's numbers below need no network traced
ACT = Activations(decoder=1000, decoder_output=784, encoder=500)
SHAPE = DataShape(train=1000, val=0, test=100, image_shape=(28, 28, 1))
TINY = {"data": {"val_split": ""},
        "model": {"prior": {"dim": 2}, "decoder": {"name": "mlp", "hidden": [8]}},
        "inference": {"scheme": "vae", "encoder": {"name": "mlp", "hidden": [8]}}}


# --------------------------------------------------------------------------- the three components

@dataclasses.dataclass
class LaplaceConfig:
    scale: float = setting(0.1, above=0.0)

    def data_defaults(self):
        return {"bins": 16}  # a Laplace on 16 grey levels: the data binned to them


class LaplaceLikelihood(Likelihood, Factorized):
    """y_i | z ~ Laplace(m_i(z), b): per pixel, so Factorized; no mean-and-sd declared."""

    def _pixel_distribution(self, decoder_output):
        return tfp.distributions.Laplace(decoder_output, self.config.scale)


@dataclasses.dataclass
class BitsConfig(TaskConfig):
    batch_size: int = setting(40, at_least=1)
    copies: int = setting(3, at_least=1)

    def check(self, cfg):
        from tfgen.models import likelihood_capabilities

        likelihood_capabilities.require(cfg, Discrete, "evaluate.task", "task 'bits'",
                                        given="bits", alternative="drop this [[evaluate]] entry")

    def peak(self, shape, act):
        return batch_bytes(shape, act, self.batch_size, self.copies), ("batch_size", "copies")


def bits_task(params, ctx):
    """Bits per pixel of something discrete."""
    return {}


@dataclasses.dataclass
class UndeclaredConfig:  # no TaskConfig: states no peak
    batch_size: int = 10


@dataclasses.dataclass
class BufferedVAEConfig(VAEConfig):
    buffer_images: int = setting(200_000, at_least=0)


class BufferedVAE(VAE):
    """A VAE that keeps a replay buffer of images: a resident term of its own."""

    @classmethod
    def memory_terms(cls, params, cfg, shape, act):
        base = super().memory_terms(params, cfg, shape, act)
        buffer = Term("the replay buffer", params.buffer_images * shape.image_bytes,
                      ("inference.buffer_images",))
        return MemoryTerms(base.resident + (buffer,), base.peaks)


@pytest.fixture
def plugins(monkeypatch):
    """The three components (and a task without a peak) registered for one test."""
    for registry in (LIKELIHOODS, EVALUATIONS, SCHEMES):
        monkeypatch.setattr(registry, "_entries", dict(registry._entries))
    LIKELIHOODS.register("laplace", config=LaplaceConfig)(LaplaceLikelihood)
    EVALUATIONS.register("bits", config=BitsConfig)(bits_task)
    EVALUATIONS.register("undeclared", config=UndeclaredConfig)(bits_task)
    SCHEMES.register("buffered_vae", config=BufferedVAEConfig)(BufferedVAE)


def config(likelihood: dict, tasks: list, scheme: str = "vae", data: dict | None = None) -> dict:
    raw = {**TINY, "evaluate": tasks}
    raw["model"] = {**TINY["model"], "likelihood": likelihood}
    raw["inference"] = {**TINY["inference"], "scheme": scheme}
    raw["data"] = {**TINY["data"], **(data or {})}
    return raw


# --------------------------------------------------------------------------- the likelihood

def test_a_task_that_requires_a_discrete_likelihood_refuses_a_normal_one(plugins):
    with pytest.raises(ConfigError) as err:
        from_dict(config({"name": "normal"}, [{"task": "bits"}]))
    assert str(err.value) == (
        "<config>: evaluate[0].task: task 'bits' needs a likelihood of discrete images (a "
        "probability mass, not a density), which likelihood 'normal' does not have; given "
        "'bits'; allowed: drop this [[evaluate]] entry, or model.likelihood.name = 'bernoulli' "
        "or 'categorical' or 'discretized_logistic_mixture' or 'pixelcnn'")
    cfg = from_dict(config({"name": "bernoulli"}, [{"task": "bits"}],
                           data={"binarize": "static"}))
    assert cfg.evaluate[0].name == "bits"


def test_a_new_likelihood_is_checked_by_what_it_declares(plugins):
    """Factorized: accepted by image completion, named among the likelihoods that would do;
    no mean and sd: refused by the latent geometry; its data_defaults set data.bins where the
    file leaves it at 0, and leave a value the file gives."""
    cfg = from_dict(config({"name": "laplace"}, [{"task": "complete", "split": "test"}]))
    assert cfg.data.bins == 16
    assert from_dict(config({"name": "laplace"}, [], data={"bins": 4})).data.bins == 4
    with pytest.raises(ConfigError, match=r"evaluate\[0\]\.task: task 'metric_map' needs a "
                                          r"likelihood with a per-pixel mean and standard "
                                          r"deviation, which likelihood 'laplace' does not have"):
        from_dict(config({"name": "laplace"}, [{"task": "metric_map"}]))
    with pytest.raises(ConfigError) as err:
        from_dict(config({"name": "pixelcnn", "levels": 2}, [{"task": "inpainting"}],
                         data={"binarize": "static"}))
    assert "'laplace'" in err.value.allowed and "'normal'" in err.value.allowed


# --------------------------------------------------------------------------- the task

def test_a_new_task_is_estimated_by_its_declared_peak(plugins):
    cfg = from_dict(config({"name": "bernoulli"}, [{"task": "bits", "batch_size": 7}],
                           data={"binarize": "static"}))
    est = resources.estimate(cfg, SHAPE, ACT)
    term = next(t for t in est.peaks if t.what == "evaluation task 'bits'")
    assert term.bytes == 7 * (ACT.encode(False) + 3 * ACT.decode(False))
    assert term.keys == ("evaluate.0.batch_size", "evaluate.0.copies")


def test_a_task_that_declares_no_peak_is_refused_at_load_time(plugins):
    with pytest.raises(ConfigError) as err:
        from_dict(config({"name": "normal"}, [{"task": "undeclared"}]))
    assert str(err.value).startswith("<config>: evaluate[0].task: task 'undeclared' does not "
                                     "declare its memory peak")


def test_every_registered_task_states_its_peak():
    for entry in EVALUATIONS.entries():
        assert issubclass(entry.config_cls, TaskConfig), entry.name
        assert entry.config_cls.peak is not TaskConfig.peak, entry.name
        size, keys = entry.config_cls().peak(SHAPE, ACT)
        assert size >= 0 and all(isinstance(k, str) for k in keys), entry.name


# --------------------------------------------------------------------------- the scheme

def test_a_new_schemes_memory_terms_are_in_the_estimate_and_the_refusal(plugins, monkeypatch):
    cfg = from_dict(config({"name": "normal"}, [], scheme="buffered_vae"))
    est = resources.estimate(cfg, SHAPE, ACT)
    buffer = next(t for t in est.resident if t.what == "the replay buffer")
    assert buffer.bytes == 200_000 * 28 * 28 * 4
    # the training step is the base's: one decoder pass per image of the batch
    step = next(t for t in est.peaks if t.what == "a training step's activations")
    assert step.bytes == 256 * (ACT.encode(True) + ACT.decode(True))

    class Data:  # what check_memory reads of the data
        train, val, test = [0] * SHAPE.train, None, [0] * SHAPE.test
        image_shape, pixel_range = SHAPE.image_shape, (0.0, 1.0)

    monkeypatch.setattr(resources, "trace_activations", lambda cfg, shape: ACT)
    monkeypatch.setattr(resources, "available_memory",
                        lambda: Available(2**30, "MemAvailable"))
    with pytest.raises(ResourceError) as err:
        resources.check_memory(cfg, Data())
    message = str(err.value)
    assert "(the replay buffer 598 MiB, " in message, message
    assert "inference.buffer_images (200000)" in message, message


def test_the_built_in_schemes_declare_their_state():
    """PGA's cloud and the per-datapoint table come from the schemes' own declarations."""
    from tfgen.inference.pga import PGA, PGAConfig
    from tfgen.inference.svi import SVI, SVIConfig

    cfg = from_dict(config({"name": "normal"}, []))
    pga = PGA.memory_terms(PGAConfig(particles=5), cfg, SHAPE, ACT)
    assert [t.what for t in pga.resident] == ["the particle cloud",
                                              "the training images on the device"]
    assert pga.resident[0].bytes == 1000 * 5 * 2 * 4
    svi = SVI.memory_terms(SVIConfig(mc_samples=3), cfg, SHAPE, ACT)
    assert svi.resident[0].bytes == 3 * 2 * 2 * 4 * 1000
    assert svi.peaks[0].bytes == 256 * (ACT.encode(True) + 3 * ACT.decode(True))
    assert "inference.mc_samples" in svi.peaks[0].keys
