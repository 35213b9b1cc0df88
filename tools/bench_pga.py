"""Seconds per PGA step, split into its pieces, for the decoder of Kuntz et al. (2023) (32x32 greyscale).

For each particle-update mode ("all", "batch") and each compile mode (graph; XLA, i.e.
``jit_compile``) it times

* the fused step: ``scheme.standalone_step`` (one compiled function: theta gradient, particle
  update, RMSprop step), as training runs it;
* the pieces, each compiled on its own: the theta gradient (decoder in training mode,
  backward to the weights), the particle update (all M N particles, or the batch's, in
  chunks), the RMSprop step.

It also reports peak resident memory (``ru_maxrss`` of a fresh process per setting), the decoder's forward and backward
FLOPs per image (from TensorFlow's graph profiler on concrete functions, with the
analytic count of the convolutions and matmuls beside it), the load average before and
after (other processes share the CPU), and the published PyTorch reference on this kind
of machine.  Prints one JSON object.

    python tools/bench_pga.py                 # M = 256, N = 4, M_B = 128
    python tools/bench_pga.py --large         # also M = 2000, N = 10
    python tools/bench_pga.py --repeats 5 --modes all --compile xla
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
import tensorflow as tf

from tfgen.assemble import build, from_dict
from tfgen.data import DataBundle
from tfgen.distribute import single_replica_batch
from tfgen.runtime import compile_step

#: the published PyTorch code (ParEM parem/pga.py) on this kind of machine, seconds per step
REFERENCE = {"M256_N4": {"step": 6.85, "theta_gradient": 2.56, "particle_update": 4.29},
             "M2000_N10": {"step": 80.0}}


def synthetic_images(n: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    return np.tanh(rng.normal(size=(n, 32, 32, 1))).astype(np.float32)  # in [-1, 1]


def make_scheme(M: int, N: int, batch: int, mode: str, compile_mode: str, chunk: int):
    cfg = from_dict({
        "data": {"pixel_range": "[-1,1]", "val_split": ""},
        "model": {"prior": {"dim": 10}, "decoder": {"name": "residual_decoder"},
                  "likelihood": {"name": "normal", "sigma": 0.3}},
        "inference": {"scheme": "pga", "particles": N, "particle_update": mode,
                      "chunk_size": chunk},
        "train": {"batch_size": batch, "compile": compile_mode},
        "evaluate": [],
    })
    data, scheme, _ = build(cfg, DataBundle.in_memory(cfg.data, synthetic_images(M), (-1.0, 1.0)))
    return cfg, data, scheme


def timed(fn, repeats: int) -> dict:
    """Median and min wall seconds (and process CPU seconds) of ``fn()``, after one warm-up."""
    tf.nest.map_structure(lambda t: t.numpy() if hasattr(t, "numpy") else t, fn())
    walls, cpus = [], []
    for _ in range(repeats):
        c0, t0 = time.process_time(), time.perf_counter()
        out = fn()
        tf.nest.map_structure(lambda t: t.numpy() if hasattr(t, "numpy") else t, out)
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    return {"median_s": round(statistics.median(walls), 4), "min_s": round(min(walls), 4),
            "cpu_s": round(statistics.median(cpus), 4)}


def bench_setting(M, N, batch, mode, compile_mode, chunk, repeats) -> dict:
    cfg, data, scheme = make_scheme(M, N, batch, mode, compile_mode, chunk)
    images = tf.constant(data.train.images[:batch])
    indices = tf.range(batch, dtype=tf.int64)

    seed = tf.constant([1, 2], tf.int64)

    def theta_gradient(images, indices):
        batch = single_replica_batch(seed, indices)
        out, grads = scheme.theta_gradient(images, scheme.latents.gather(0, indices), batch)
        return out["loss"], grads

    def particle_update(images, indices):
        if mode == "all":
            scheme.update_all_particles(seed)
        else:
            scheme.update_batch_particles(images, indices, scheme.latents.gather(0, indices),
                                          single_replica_batch(seed, indices))
        return tf.reduce_sum(scheme.particle_cloud.local(0)[:1])

    def theta_step(grads):
        scheme.apply_theta_gradient(grads)
        return tf.constant(0.0)

    theta_gradient_fn = compile_step(theta_gradient, compile_mode)
    particle_update_fn = compile_step(particle_update, compile_mode)
    theta_step_fn = compile_step(theta_step, compile_mode)
    _, grads = theta_gradient_fn(images, indices)
    result = {
        "fused_step": timed(lambda: scheme.standalone_step(images, indices), repeats),
        "theta_gradient": timed(lambda: theta_gradient_fn(images, indices), repeats),
        "particle_update": timed(lambda: particle_update_fn(images, indices), repeats),
        "theta_step": timed(lambda: theta_step_fn(grads), repeats),
    }
    result["pieces_sum_median_s"] = round(sum(result[k]["median_s"] for k in
                                              ("theta_gradient", "particle_update", "theta_step")), 4)
    result["chunk_images"] = scheme.chunk
    result["chunks"] = -(-M // scheme.chunk)
    return result


# --------------------------------------------------------------------------- FLOPs

def profiler_flops(concrete) -> int:
    """FLOPs of the ops the function's outputs depend on, from TensorFlow's registered FLOP
    statistics (the ones the tf.compat.v1 profiler sums).  The graph is pruned first: a traced
    gradient also holds e.g. filter gradients that a gradient to x does not need."""
    from tensorflow.python.framework import ops as tf_ops

    graph = concrete.graph
    names = [t.op.name for t in tf.nest.flatten(concrete.outputs)]
    needed = {n.name for n in tf.compat.v1.graph_util.extract_sub_graph(
        graph.as_graph_def(), names).node}
    total = 0
    for op in graph.get_operations():
        if op.name not in needed:
            continue
        try:
            stats = tf_ops.get_stats_for_node_def(graph, op.node_def, "flops")
        except (ValueError, TypeError):
            continue
        total += int(stats.value or 0)
    return total


def decoder_flops() -> dict:
    """Per image, batch 1, 32x32x1, d = 10: forward; backward = (forward + backward) - forward."""
    _, _, scheme = make_scheme(8, 1, 8, "all", "graph", 8)
    model = scheme.model
    spec = tf.TensorSpec([1, 10], tf.float32)
    target = tf.zeros([1, 32, 32, 1])

    def forward(z):
        return model.decoder(z, training=False)

    def forward_backward_x(z):  # the particle update's work
        with tf.GradientTape() as tape:
            tape.watch(z)
            out = tf.reduce_sum(tf.square(model.decoder(z, training=False) - target))
        return tape.gradient(out, z)

    def forward_backward_theta(z):  # the theta gradient's work (training-mode batch norm)
        with tf.GradientTape() as tape:
            out = tf.reduce_sum(tf.square(model.decoder(z, training=True) - target))
        return tape.gradient(out, model.decoder.trainable_variables)

    fwd = profiler_flops(tf.function(forward).get_concrete_function(spec))
    fbx = profiler_flops(tf.function(forward_backward_x).get_concrete_function(spec))
    fbt = profiler_flops(tf.function(forward_backward_theta).get_concrete_function(spec))
    return {"method": "TensorFlow's registered FLOP statistics (what the tf.compat.v1 profiler "
                      "sums) over the pruned concrete-function graphs, batch 1: convs, matmuls "
                      "and the element-wise ops that have statistics",
            "forward_per_image": fwd,
            "backward_to_x_per_image": fbx - fwd,
            "backward_to_theta_per_image": fbt - fwd,
            "analytic_conv_and_matmul_forward_per_image": analytic_forward_flops(),
            "note": "analytic: 2 * multiply-adds of the linear layer, the 5x5 projection "
                    "conv, 2 x (5x5 + 3x3) 64-channel convs and the 4x4 transposed-conv head; "
                    "a backward pass to x costs about one forward, to theta about two"}


def analytic_forward_flops(d=10, channels=64, proj=4, side=16, out_channels=1) -> int:
    area = side * side
    linear = d * proj * area
    project = area * proj * channels * 25
    residual = 2 * area * channels * channels * (25 + 9)
    head = area * channels * out_channels * 16  # each input pixel scatters a 4x4 kernel
    return int(2 * (linear + project + residual + head))


# --------------------------------------------------------------------------- main

def run_one(spec: str, repeats: int, chunk: int) -> dict:
    """One setting "M,N,mode,compile" in this process; its peak RSS is this process's."""
    M, N, mode, compile_mode = spec.split(",")
    result = bench_setting(int(M), int(N), 128, mode, compile_mode, chunk, repeats)
    result["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--large", action="store_true", help="also M = 2000, N = 10")
    parser.add_argument("--modes", default="all,batch")
    parser.add_argument("--compile", default="graph,xla", help="graph and/or xla")
    parser.add_argument("--chunk", type=int, default=0, help="chunk_size (0 = PGA's default)")
    parser.add_argument("--one", default="", help=argparse.SUPPRESS)  # "M,N,mode,compile"
    args = parser.parse_args()
    from tfgen.inference.pga import PGAConfig

    chunk = args.chunk or PGAConfig().chunk_size
    if args.one:
        print(json.dumps(run_one(args.one, args.repeats, chunk)))
        return
    out = {"load_average_before": os.getloadavg(), "cpu_count": os.cpu_count(),
           "tensorflow": tf.__version__, "decoder": "residual_decoder (Kuntz et al. 2023, 300,161 "
                                                    "params)",
           "image": [32, 32, 1], "batch_size": 128, "chunk_size": chunk,
           "peak_rss_note": "ru_maxrss of a fresh process per setting (TensorFlow itself "
                            "takes a few hundred MB)",
           "reference_pytorch_s": REFERENCE, "results": {}}
    sizes = [(256, 4)] + ([(2000, 10)] if args.large else [])
    for M, N in sizes:
        for mode in args.modes.split(","):
            for compile_mode in args.compile.split(","):
                key = f"M{M}_N{N}/{mode}/{compile_mode}"
                repeats = args.repeats if M * N <= 4096 else max(1, args.repeats - 1)
                # a process per setting: peak memory is the setting's own, not the maximum so far
                child = subprocess.run(
                    [sys.executable, __file__, "--one", f"{M},{N},{mode},{compile_mode}",
                     "--repeats", str(repeats), "--chunk", str(chunk)],
                    capture_output=True, text=True, check=True)
                out["results"][key] = json.loads(child.stdout.strip().splitlines()[-1])
                print(f"{key}: {json.dumps(out['results'][key])}", file=sys.stderr, flush=True)
    flops = out["decoder_flops"] = decoder_flops()
    particle_flops = flops["forward_per_image"] + flops["backward_to_x_per_image"]
    theta_flops = flops["forward_per_image"] + flops["backward_to_theta_per_image"]
    for key, value in out["results"].items():
        size, mode, _ = key.split("/")
        M, N = (int(part[1:]) for part in size.split("_"))
        moved = M * N if mode == "all" else 128 * N
        step_flops = moved * particle_flops + 128 * N * theta_flops
        value["gflop_per_step"] = round(step_flops / 1e9, 1)
        value["gflop_per_s"] = round(step_flops / 1e9 / value["fused_step"]["median_s"], 1)
        ref = REFERENCE.get(size, {}).get("step")
        if ref and mode == "all":
            value["speedup_vs_reference"] = round(ref / value["fused_step"]["median_s"], 3)
            value["reference_gflop_per_s"] = round(step_flops / 1e9 / ref, 1)
    out["load_average_after"] = os.getloadavg()
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
