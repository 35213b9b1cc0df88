"""Coupling networks as network components: the realnvp prior's and the flow scheme's
``coupling`` key takes any network (``name = "layers"`` too), sized by the coupling layer; left
out, the MLP of ``hidden`` widths is built as before."""
from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from conftest import build_in_memory
from tfgen.assemble import from_dict
from tfgen.errors import ConfigError

IMAGES = (np.random.default_rng(0).integers(0, 256, (16, 2, 2, 1)) / 255.0).astype(np.float32)
BINARY = (np.random.default_rng(4).random((8, 4, 4, 1)) < 0.5).astype(np.float32)


def mlp_as_layers(hidden: list[int]) -> dict:
    """The default coupling MLP written as a layer list (tfgen appends the zero-started head)."""
    return {"name": "layers",
            "layers": [{"type": "Dense", "units": w, "activation": "relu"} for w in hidden]}


def prior_config(coupling: dict | None) -> dict:
    prior = {"name": "realnvp", "dim": 4, "coupling_layers": 2, "hidden": [16]}
    if coupling is not None:
        prior = {**prior, "coupling": coupling}
        del prior["hidden"]
    return {"experiment": {"seed": 3}, "data": {"val_split": "", "binarize": "static"},
            "model": {"prior": prior, "decoder": {"name": "mlp", "hidden": [8]},
                      "likelihood": {"name": "bernoulli"}},
            "inference": {"scheme": "vae", "encoder": {"name": "mlp", "hidden": [8]}},
            "train": {"batch_size": 4}, "evaluate": []}


def flow_config(coupling: dict | None) -> dict:
    inference = {"scheme": "flow", "coupling_layers": 2, "hidden": [16]}
    if coupling is not None:
        inference = {"scheme": "flow", "coupling_layers": 2, "coupling": coupling}
    return {"experiment": {"seed": 3}, "data": {"val_split": ""},
            "model": {"likelihood": {"name": "normal"}}, "inference": inference,
            "train": {"batch_size": 8, "learning_rate": 1e-2}, "evaluate": []}


def losses(raw: dict, images: np.ndarray, steps: int = 4):
    tf.keras.utils.set_random_seed(0)
    scheme = build_in_memory(raw, images)
    idx = np.arange(len(images))[:8]
    out = [float(scheme.standalone_step(tf.constant(images[idx]), tf.constant(idx, tf.int64))["loss"])
           for _ in range(steps)]
    return scheme, out


def coupling_parameters(networks) -> int:
    return sum(int(np.prod(v.shape)) for net in networks for v in net.trainable_variables)


@pytest.mark.parametrize("kind", ["prior", "flow"])
def test_a_layers_copy_of_the_default_coupling_mlp_trains_like_it(kind):
    """The same layers created in the same order, the head started at zero: the same
    parameter count, the same initial weights and the same losses under one seed."""
    config, images = (prior_config, BINARY) if kind == "prior" else (flow_config, IMAGES)
    default, default_losses = losses(config(None), images)
    listed, listed_losses = losses(config(mlp_as_layers([16])), images)
    nets = {s: (s.model.prior.networks if kind == "prior" else s.networks)
            for s in (default, listed)}
    assert coupling_parameters(nets[listed]) == coupling_parameters(nets[default]) > 0
    assert all(np.isfinite(default_losses)) and default_losses[-1] < default_losses[0]
    np.testing.assert_allclose(listed_losses, default_losses, rtol=1e-5)


@pytest.mark.parametrize("kind", ["prior", "flow"])
def test_a_layers_coupling_network_of_another_shape_trains(kind):
    """A residual block and a repeat in the coupling network: it builds and trains."""
    coupling = {"name": "layers", "layers": [
        {"type": "Dense", "units": 12, "activation": "tanh"},
        {"type": "residual", "layers": [{"type": "Dense", "units": 12, "activation": "relu"}]},
        {"type": "repeat", "times": 2, "layers": [{"type": "Dense", "units": 6}]}]}
    config, images = (prior_config, BINARY) if kind == "prior" else (flow_config, IMAGES)
    _, trained = losses(config(coupling), images, steps=6)
    assert all(np.isfinite(trained)) and trained[-1] < trained[0]


@pytest.mark.parametrize("config,key,outputs", [
    (prior_config, "model.prior.coupling", "(4,)"),  # d = 4: shift and log scale of 2 dims
    (flow_config, "inference.coupling", "(4,)"),     # 2x2 images: 4 pixels
])
def test_a_coupling_network_of_the_wrong_output_shape_is_refused_at_load_time(config, key,
                                                                               outputs):
    raw = config({"name": "layers", "head": "none",
                  "layers": [{"type": "Dense", "units": 8}, {"type": "Dense", "units": 3}]})
    if key == "inference.coupling":  # the image shape from the config
        raw["data"].update({"resize": 2, "color": "grayscale"})
    with pytest.raises(ConfigError) as err:
        from_dict(raw)
    assert str(err.value) == (
        f"<config>: {key}.layers: the last layer outputs (3,), but this network must output "
        f"{outputs} per example; allowed: layers that end in that shape, or head = 'auto' "
        f"(tfgen appends the layer that emits it)")


def test_hidden_with_a_coupling_network_is_refused():
    raw = prior_config(mlp_as_layers([16]))
    raw["model"]["prior"]["hidden"] = [32]
    with pytest.raises(ConfigError) as err:
        from_dict(raw)
    assert str(err.value).startswith(
        "<config>: model.prior.hidden: sets the widths of the default coupling network, but "
        "model.prior.coupling is given; given [32]")
