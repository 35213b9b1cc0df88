"""``name = "layers"``: networks written in the TOML as lists of Keras layers.

The built-in networks of the 2AMU20 VAE assignment (conv_encoder, conv_decoder) and Kuntz et al.
(2023) (residual_decoder) rewritten as layer lists build the same parameter counts and train to the
same losses; the blocks compute what they say; bad tables are one-line errors at load time.
"""
from __future__ import annotations

import copy
import json
import tomllib
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from conftest import blob_images, build_in_memory, run_cli, run_process, tiny_config
from tfgen.assemble import from_dict
from tfgen.config import dumps_toml, to_dict
from tfgen.models.layer_list import LayerList, Residual
from tfgen.models.networks import ConvDecoder, ConvEncoder, ResidualDecoder
from tfgen.resources import DataShape, estimate


def layer(kind: str, **args) -> dict:
    return {"type": kind, **args}


def conv_decoder_layers(latent_dim: int) -> list[dict]:
    """conv_decoder: z as a 1x1 map, [convT(k 5, stride 2, PyTorch padding 1) -> BN -> ReLU] x 3,
    convT(1), then the dense head (head = "auto" after the Flatten)."""
    layers = [layer("Reshape", target_shape=[1, 1, latent_dim])]
    for filters in (128, 64, 32):
        layers += [layer("Conv2DTranspose", filters=filters, kernel_size=5, strides=2),
                   layer("Cropping2D", cropping=1),  # 'valid' then a crop of 1 == padding 1
                   layer("BatchNormalization"), layer("Activation", activation="relu")]
    return layers + [layer("Conv2DTranspose", filters=1, kernel_size=5, strides=2),
                     layer("Cropping2D", cropping=1), layer("Flatten")]


CONV_ENCODER = [item for filters, kernel in ((32, 5), (64, 5), (128, 3)) for item in (
    layer("Conv2D", filters=filters, kernel_size=kernel, padding="same", activation="relu"),
    layer("MaxPool2D", pool_size=2))]

BN = {"momentum": 0.9, "epsilon": 1e-5}  # PyTorch's defaults, as residual_decoder's
RESIDUAL_DECODER = [  # 32x32 images: the projection to (16, 16, 4)
    layer("Dense", units=16 * 16 * 4), layer("BatchNormalization", **BN),
    layer("Activation", activation="gelu"), layer("Reshape", target_shape=[16, 16, 4]),
    layer("Conv2D", filters=64, kernel_size=5, padding="same", use_bias=False),
    layer("BatchNormalization", **BN), layer("Activation", activation="gelu"),
    layer("repeat", times=2, layers=[layer("residual", layers=[
        layer("Conv2D", filters=64, kernel_size=5, padding="same"),
        layer("BatchNormalization", **BN), layer("Activation", activation="gelu"),
        layer("Conv2D", filters=64, kernel_size=3, padding="same"),
        layer("BatchNormalization", **BN), layer("Activation", activation="gelu")])]),
    layer("Conv2DTranspose", filters=1, kernel_size=4, strides=2, padding="same"),
    layer("Activation", activation="tanh")]


def trainable(network) -> int:
    return sum(int(np.prod(v.shape)) for v in network.trainable_variables)


@pytest.mark.parametrize("builtin,layers,head,output_shape,input_shape", [
    (ConvEncoder((20,)), CONV_ENCODER, "auto", (20,), (2, 28, 28, 1)),
    (ConvDecoder((28, 28, 1)), conv_decoder_layers(10), "auto", (28, 28, 1), (2, 10)),
    (ResidualDecoder((32, 32, 1)), RESIDUAL_DECODER, "none", (32, 32, 1), (2, 10)),
])
def test_layer_lists_of_the_builtin_networks_have_their_parameter_counts(
        builtin, layers, head, output_shape, input_shape):
    x = tf.random.normal(input_shape)
    built_in_out = builtin(x)
    net = LayerList(output_shape, layers, head)
    out = net(x)
    assert out.shape == built_in_out.shape
    assert trainable(net) == trainable(builtin)
    assert net.count_params() == builtin.count_params()  # batch norms' moving statistics too
    if isinstance(builtin, ResidualDecoder):
        assert trainable(net) == 300_161  # Kuntz et al. (2023), d = 10, one channel (README)


def test_get_config_round_trips():
    net = LayerList((32, 32, 1), RESIDUAL_DECODER, "none", key="model.decoder")
    x = tf.random.normal([2, 10])
    y = net(x)
    clone = LayerList.from_config(net.get_config())
    clone(x)
    assert clone.get_config() == net.get_config()
    clone.set_weights(net.get_weights())
    np.testing.assert_allclose(clone(x).numpy(), y.numpy(), rtol=1e-5, atol=1e-5)


def test_residual_block_output_is_its_layers_output_plus_the_projected_input():
    x = np.random.default_rng(0).normal(size=(3, 4)).astype(np.float32)
    same = Residual([layer("Dense", units=4, activation="tanh")])
    y = same(x).numpy()
    w, b = same.inner[0].get_weights()
    np.testing.assert_allclose(y, np.tanh(x @ w + b) + x, rtol=1e-5, atol=1e-6)
    assert same.projection is None

    wider = Residual([layer("Dense", units=6, activation="relu")])  # 4 -> 6: a projection
    y = wider(x).numpy()
    w, b = wider.inner[0].get_weights()
    pw, pb = wider.projection.get_weights()
    np.testing.assert_allclose(y, np.maximum(x @ w + b, 0) + (x @ pw + pb), rtol=1e-5, atol=1e-6)

    maps = np.random.default_rng(1).normal(size=(2, 5, 5, 3)).astype(np.float32)
    conv = Residual([layer("Conv2D", filters=8, kernel_size=3, padding="same")])
    y = conv(maps).numpy()
    pw, pb = conv.projection.get_weights()  # a 1x1 Conv2D: a matrix over the channels
    assert pw.shape == (1, 1, 3, 8)
    inner = conv.inner[0](maps).numpy()
    np.testing.assert_allclose(y, inner + maps @ pw[0, 0] + pb, rtol=1e-5, atol=1e-5)


def test_repeat_makes_copies_with_their_own_weights():
    net = LayerList((4,), [layer("repeat", times=3, layers=[
        layer("Dense", units=5, activation="relu"), layer("LayerNormalization")])])
    net(tf.zeros([1, 5]))
    dense = [l for l in net.body if type(l).__name__ == "Dense"]
    norms = [l for l in net.body if type(l).__name__ == "LayerNormalization"]
    assert len(dense) == len(norms) == 3
    assert len({id(v) for l in dense for v in l.trainable_variables}) == 6
    kernels = [l.kernel.numpy() for l in dense]
    assert not np.allclose(kernels[0], kernels[1]) and not np.allclose(kernels[1], kernels[2])


def _vae(decoder: dict, encoder: dict) -> dict:
    return {"experiment": {"seed": 5}, "data": {"binarize": "static"},
            "model": {"prior": {"dim": 4}, "decoder": decoder, "likelihood": {"name": "bernoulli"}},
            "inference": {"scheme": "vae", "encoder": encoder}, "evaluate": []}


def _losses(raw: dict, images: np.ndarray, steps: int = 4) -> list[float]:
    tf.keras.utils.set_random_seed(0)
    scheme = build_in_memory(raw, images)
    idx = np.arange(16)
    return [float(scheme.standalone_step(tf.constant(images[idx]), tf.constant(idx, tf.int64))["loss"])
            for _ in range(steps)]


def test_layer_lists_train_like_the_builtin_conv_encoder_and_decoder():
    """The 2AMU20 VAE assignment's networks: the same layers created in the same order start from
    the same initial weights under one seed, so the losses agree (measured: equal to float
    precision)."""
    images = (blob_images(16)[0] > 127).astype(np.float32)
    builtin = _losses(_vae({"name": "conv_decoder"}, {"name": "conv_encoder"}), images)
    listed = _losses(_vae({"name": "layers", "layers": conv_decoder_layers(4)},
                          {"name": "layers", "layers": CONV_ENCODER}), images)
    assert builtin[-1] < builtin[0]  # it trains
    np.testing.assert_allclose(listed, builtin, rtol=1e-5)


SMALL_DECODER = ('[model.decoder]\nname = "layers"\n[[model.decoder.layers]]\ntype = "Dense"\n'
                 'units = 16\nactivation = "relu"\n[[model.decoder.layers]]\ntype = "Reshape"\n'
                 'target_shape = [4, 4, 1]\n[[model.decoder.layers]]\ntype = "residual"\n'
                 'layers = [{type = "Conv2D", filters = 3, kernel_size = 3, padding = "same"}]\n'
                 '[[model.decoder.layers]]\ntype = "Flatten"\n')


def _with_small_decoder(idx_folder: Path, tmp_path: Path) -> Path:
    path = tmp_path / "exp.toml"
    path.write_text(tiny_config(idx_folder, tmp_path / "runs", epochs=1).replace(
        '[model.decoder]\nname = "mlp"\nhidden = [32]\n', SMALL_DECODER))
    return path


def test_layer_list_decoder_under_mixed_precision(idx_folder, tmp_path):
    """The layers (a residual block's too) follow the decoder's dtype policy: float16
    compute, float32 variables, and a float32 output after the model's cast."""
    raw = tomllib.loads(_with_small_decoder(idx_folder, tmp_path).read_text())
    raw.update(runtime={"mixed_precision": "mixed_float16"}, evaluate=[])
    images = (blob_images(16)[0] > 127).astype(np.float32)
    scheme = build_in_memory(raw, images)
    decoder = scheme.model.decoder
    inner = decoder.body[2].inner + [decoder.body[2].projection]
    assert {l.compute_dtype for l in decoder.body + decoder.head + inner} == {"float16"}
    assert all(v.dtype == tf.float32 for v in decoder.trainable_variables)
    assert scheme.model.decode(tf.zeros([2, 2])).dtype == tf.float32
    idx = tf.range(16, dtype=tf.int64)
    assert np.isfinite(float(scheme.standalone_step(tf.constant(images), idx)["loss"]))


def test_layer_list_networks_run_mirrored_on_two_devices(idx_folder, tmp_path):
    text = _with_small_decoder(idx_folder, tmp_path).read_text().replace(
        '[inference.encoder]\nname = "mlp"\nhidden = [32]\n',
        '[inference.encoder]\nname = "layers"\n[[inference.encoder.layers]]\n'
        'type = "repeat"\ntimes = 2\nlayers = [{type = "Conv2D", filters = 4, kernel_size = 3, '
        'strides = 2}, {type = "BatchNormalization"}]\n')
    path = tmp_path / "exp.toml"
    path.write_text(text)
    result = run_process("run", str(path), "--quiet", "--set", "runtime.strategy=mirrored",
                         "--set", "runtime.cpu_devices=2", "--set", "evaluate=[]", timeout=300)
    assert result.returncode == 0, result.stderr
    metrics = json.loads(next((tmp_path / "runs").glob("tiny/*/metrics.json")).read_text())
    assert metrics["status"] == "completed"


def test_memory_estimate_matches_the_builtin_network():
    """resources traces the layer list like the built-in network of the same architecture."""
    shape = DataShape(train=1000, val=0, test=0, image_shape=(28, 28, 1))
    builtin = from_dict(_vae({"name": "conv_decoder"}, {"name": "conv_encoder"}))
    listed = from_dict(_vae({"name": "layers", "layers": conv_decoder_layers(4)},
                            {"name": "layers", "layers": CONV_ENCODER}))
    a, b = estimate(builtin, shape), estimate(listed, shape)
    assert b.total == pytest.approx(a.total, rel=0.05)
    assert b.peak.bytes == pytest.approx(a.peak.bytes, rel=0.05)


def test_config_with_blocks_survives_the_runs_config_toml():
    raw = _vae({"name": "layers", "layers": RESIDUAL_DECODER[:4] + [
        layer("residual", layers=[layer("Dense", units=8)])], "head": "auto"},
        {"name": "layers", "layers": CONV_ENCODER})
    cfg = from_dict(copy.deepcopy(raw))
    again = from_dict(tomllib.loads(dumps_toml(to_dict(cfg))))
    assert again == cfg
    assert again.model.decoder.params.layers[4]["layers"] == [{"type": "Dense", "units": 8}]


# --------------------------------------------------------------------------- load-time errors

DECODER = """
[model.decoder]
name = "layers"
{head}
[[model.decoder.layers]]
type = "Dense"
units = 1568
activation = "relu"
[[model.decoder.layers]]
type = "Reshape"
target_shape = [7, 7, 32]
[[model.decoder.layers]]
type = "{conv}"
{argument} = 64
kernel_size = 3
strides = 2
padding = {padding}
"""


def _validate(tmp_path: Path, conv="Conv2DTranspose", argument="filters", padding='"same"',
              head="", data='[data]\nbinarize = "static"\n'):
    path = tmp_path / "exp.toml"
    path.write_text(data + DECODER.format(conv=conv, argument=argument, padding=padding, head=head))
    result = run_cli("validate", str(path))
    return path, result


@pytest.mark.parametrize("kwargs,expected", [
    ({"conv": "Conv2DTranspos"}, "model.decoder.layers[2].type: unknown layer type (did you mean "
                                 "'Conv2DTranspose'?); given 'Conv2DTranspos'"),
    ({"argument": "filtres"}, "model.decoder.layers[2].filtres: unknown argument of "
                              "Conv2DTranspose (did you mean 'filters'?); allowed: filters, "),
    ({"padding": "1"}, "model.decoder.layers[2].padding: expected a string (default 'valid'); "
                       "given 1"),
    ({"padding": '"diagonal"'}, "model.decoder.layers[2]: Conv2DTranspose refuses these arguments "
                                "(ValueError: The `padding` argument must be"),
])
def test_bad_layer_tables_are_one_line_errors(tmp_path, kwargs, expected):
    path, result = _validate(tmp_path, **kwargs)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1
    assert f"error: {path}: {expected}" in result.stderr


def test_shape_mismatch_names_both_shapes_at_validate(tmp_path):
    # the config fixes the image shape (resize, grayscale): 28 x 28 x 1 Bernoulli logits
    data = '[data]\nbinarize = "static"\nresize = 28\ncolor = "grayscale"\n'
    path, result = _validate(tmp_path, head='head = "none"', data=data)
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"error: {path}: model.decoder.layers: the last layer outputs (14, 14, 64), but this "
        f"network must output (28, 28, 1) per example (H, W, C * the likelihood's parameters "
        f"per pixel); allowed: layers that end in that shape, or head = 'auto' (tfgen appends "
        f"the layer that emits it)")
    path, result = _validate(tmp_path, data=data)  # auto: a 14x14 map cannot get a 1x1 head
    assert result.returncode == 2 and "outputs (14, 14, 64), but this network must output " \
                                      "(28, 28, 1)" in result.stderr
    path, result = _validate(tmp_path)  # no data to read the shape from: checked at run time
    assert result.returncode == 0, result.stderr
    assert (f"note: {path}: model.decoder: its layers' shapes are checked when tfgen run builds "
            f"the networks" in result.stdout)


def test_validate_reads_the_image_shape_from_the_data_headers(tmp_path, idx_folder):
    """An IDX folder's and an .npz file's image shape come from their headers: validate
    refuses the mismatch that run would, without a resize in the config."""
    npz = tmp_path / "images.npz"
    np.savez(npz, x_train=np.zeros((6, 28, 28), np.uint8), x_test=np.zeros((2, 28, 28), np.uint8))
    for source in (f'source = "idx"\npath = "{idx_folder}"', f'source = "npz"\npath = "{npz}"'):
        data = f'[data]\n{source}\nbinarize = "static"\ntrain_split = "train"\nval_split = ""\n'
        path, result = _validate(tmp_path, head='head = "none"', data=data)
        assert result.returncode == 2
        assert result.stderr.strip().startswith(
            f"error: {path}: model.decoder.layers: the last layer outputs (14, 14, 64), but this "
            f"network must output (28, 28, 1) per example")


def test_shape_mismatch_from_the_data_refused_before_a_run_directory(tmp_path, idx_folder):
    text = tiny_config(idx_folder, tmp_path / "runs").replace(
        '[model.decoder]\nname = "mlp"\nhidden = [32]\n',
        '[model.decoder]\nname = "layers"\nhead = "none"\n[[model.decoder.layers]]\n'
        'type = "Dense"\nunits = 12\n')
    path = tmp_path / "exp.toml"
    path.write_text(text)
    result = run_cli("run", str(path), "--quiet")
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"error: {path}: model.decoder.layers: the last layer outputs (12,), but this network "
        f"must output (28, 28, 1) per example (H, W, C * the likelihood's parameters per "
        f"pixel); allowed: layers that end in that shape, or head = 'auto' (tfgen appends the "
        f"layer that emits it)")
    assert not (tmp_path / "runs").exists()
