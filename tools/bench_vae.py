"""Images per second of the VAE train step: tfgen's compiled step vs a hand-written TF2 step.

Both use the 2AMU20 VAE assignment's architecture (conv encoder 32/64/128, transposed-conv
decoder 128/64/32, latent 16), the same likelihood and batch size, in the
same process, in graph mode and with XLA.  Prints one JSON object.

    python tools/bench_vae.py [--batch 128] [--steps 30] [--likelihood bernoulli]
"""
from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp
import tf_keras as keras

from tfgen.assemble import build, from_dict
from tfgen.data import DataBundle

tfd = tfp.distributions


def synthetic_images(n):
    rng = np.random.default_rng(0)
    return (rng.random((n, 28, 28, 1)) < 0.3).astype(np.float32)


def tfgen_step(compile_mode, batch, likelihood):
    cfg = from_dict({"data": {"binarize": "static" if likelihood == "bernoulli" else "none"},
                     "model": {"likelihood": {"name": likelihood}},
                     "train": {"compile": compile_mode, "batch_size": batch}})
    data, scheme, _ = build(cfg, DataBundle.in_memory(cfg.data, synthetic_images(batch)))
    images = tf.constant(data.train.images)
    idx = tf.range(batch, dtype=tf.int64)
    return lambda: scheme.standalone_step(images, idx)["loss"]


def handwritten_step(jit, batch, likelihood):
    """A plain Keras/TF2 conv VAE step, written the way a user would write it by hand."""
    tf.random.set_seed(0)
    d = 16
    encoder = keras.Sequential([
        keras.layers.Conv2D(32, 5, padding="same", activation="relu"), keras.layers.MaxPool2D(2),
        keras.layers.Conv2D(64, 5, padding="same", activation="relu"), keras.layers.MaxPool2D(2),
        keras.layers.Conv2D(128, 3, padding="same", activation="relu"), keras.layers.MaxPool2D(2),
        keras.layers.Flatten(), keras.layers.Dense(2 * d)])
    out_channels = 1 if likelihood == "bernoulli" else 2
    crop = keras.layers.Cropping2D(1)  # 'valid' transposed conv + crop 1 == PyTorch padding=1
    decoder = keras.Sequential([keras.layers.Reshape((1, 1, d))] + [
        layer for c in (128, 64, 32) for layer in (
            keras.layers.Conv2DTranspose(c, 5, strides=2), keras.layers.Cropping2D(1),
            keras.layers.BatchNormalization(), keras.layers.ReLU())] + [
        keras.layers.Conv2DTranspose(1, 5, strides=2), crop, keras.layers.Flatten(),
        keras.layers.Dense(28 * 28 * out_channels), keras.layers.Reshape((28, 28, out_channels))])
    encoder.build((None, 28, 28, 1))
    decoder.build((None, d))
    opt = keras.optimizers.Adam(1e-3)
    variables = encoder.trainable_variables + decoder.trainable_variables
    images = tf.constant((np.random.default_rng(0).random((batch, 28, 28, 1)) < 0.3).astype(np.float32))

    @tf.function(jit_compile=jit)
    def step(x):
        with tf.GradientTape() as tape:
            mu, logvar = tf.split(encoder(x, training=True), 2, axis=-1)
            z = mu + tf.exp(0.5 * logvar) * tf.random.normal(tf.shape(mu))
            out = decoder(z, training=True)
            if likelihood == "bernoulli":
                rec = -tf.reduce_sum(tf.nn.sigmoid_cross_entropy_with_logits(labels=x, logits=out), [1, 2, 3])
            else:
                a, b = tf.nn.softplus(out[..., :1]), tf.nn.softplus(out[..., 1:])
                rec = tf.reduce_sum(tfd.Beta(a + 1e-3, b + 1e-3).log_prob(tf.clip_by_value(x, 1e-3, 1 - 1e-3)), [1, 2, 3])
            kl = 0.5 * tf.reduce_sum(tf.exp(logvar) + mu ** 2 - 1.0 - logvar, -1)
            loss = -tf.reduce_mean(rec - kl)
        grads = tape.gradient(loss, variables)
        opt.apply_gradients(zip(grads, variables))
        return loss

    return lambda: step(images)


def measure(fn, batch, steps):
    """Images per second over ``steps`` consecutive steps."""
    t0 = time.perf_counter()
    for _ in range(steps):
        loss = fn()
    float(loss)
    return steps * batch / (time.perf_counter() - t0)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--likelihood", default="bernoulli", choices=["bernoulli", "beta"])
    args = parser.parse_args()
    result = {"batch": args.batch, "likelihood": args.likelihood, "latent_dim": 16,
              "threads": {"intra": tf.config.threading.get_intra_op_parallelism_threads(),
                          "inter": tf.config.threading.get_inter_op_parallelism_threads()},
              "cpu_count": os.cpu_count(), "repeats": args.repeats,
              "load_average_before": os.getloadavg()}
    makers = {"handwritten_graph": lambda: handwritten_step(False, args.batch, args.likelihood),
              "tfgen_graph": lambda: tfgen_step("graph", args.batch, args.likelihood),
              "handwritten_xla": lambda: handwritten_step(True, args.batch, args.likelihood),
              "tfgen_xla": lambda: tfgen_step("xla", args.batch, args.likelihood)}
    steps = {name: make() for name, make in makers.items()}
    for fn in steps.values():  # warm-up: tracing, compilation, first allocations
        for _ in range(3):
            float(fn())
    # round-robin repeats, best of each: drift in the machine's speed (other processes, clock)
    # hits all four alike instead of favouring whichever ran first
    best = dict.fromkeys(steps, 0.0)
    for _ in range(args.repeats):
        for name, fn in steps.items():
            best[name] = max(best[name], measure(fn, args.batch, args.steps))
    result["images_per_second"] = {name: round(v, 1) for name, v in best.items()}
    ips = result["images_per_second"]
    result["tfgen_vs_handwritten_graph"] = round(ips["tfgen_graph"] / ips["handwritten_graph"], 3)
    result["tfgen_vs_handwritten_xla"] = round(ips["tfgen_xla"] / ips["handwritten_xla"], 3)
    result["load_average_after"] = os.getloadavg()
    result["faster_mode"] = "graph" if ips["tfgen_graph"] >= ips["tfgen_xla"] else "xla"
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
