"""Seconds for the latent-geometry computations on the 2AMU20 VAE assignment's decoder (``conv_decoder``, 28x28).

For a Bernoulli decoder (mu and sigma = sqrt(p (1 - p)) both depend on z, so the embedding
has P = 2 x 784 outputs) with random weights it times

* the expected metric M(z) and the magnification map sqrt(det M) on a 100 x 100 latent
  grid (d = 2): tfgen's batched, compiled forward-mode computation, its reverse mode, and
  the seed's way, one ``tf.GradientTape.jacobian`` per point (eager, and compiled with
  ``tf.function``), and a compiled per-point forward-mode loop (what batching alone gains);
  the slow ones are timed on a subset of the points and scaled to the grid;
* the metric for d = 16 (the 2AMU20 VAE assignment's latent size) on 2,000 points, forward against
  reverse mode (the ``mode = "auto"`` rule's two sides);
* geodesics: a batch of 100 random pairs, 20 segments, by L-BFGS (50 iterations at most) and
  by Adam (300 steps), seconds per batch and per curve, and the length ratio geodesic /
  straight line (untrained weights: a flat-ish metric, so only the timing means much).

Every timing is the median of ``--repeats`` runs after one warm-up (which compiles).  The
machine's load average before and after is printed too: this CPU (2 cores) is shared.
Prints one JSON object.

    python tools/bench_geometry.py
    python tools/bench_geometry.py --repeats 1 --grid 50 --only geodesics
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
import tensorflow as tf

from tfgen.assemble import build, from_dict
from tfgen.data import DataBundle
from tfgen.geometry import curves
from tfgen.geometry.geodesics import GeodesicSolver
from tfgen.geometry.metric import ExpectedMetric, decoder_embedding, log_magnification, metric_at


def make_model(latent_dim: int):
    cfg = from_dict({
        "data": {"val_split": "", "binarize": "static"},
        "model": {"prior": {"dim": latent_dim}, "decoder": {"name": "conv_decoder"},
                  "likelihood": {"name": "bernoulli"}},
        "inference": {"scheme": "vae", "encoder": {"name": "mlp", "hidden": [8]}},
        "train": {"compile": "graph"}, "evaluate": []})
    images = np.random.default_rng(0).uniform(size=(8, 28, 28, 1)).astype(np.float32)
    _, scheme, _ = build(cfg, DataBundle.in_memory(cfg.data, images))
    return scheme.model


def timed(fn, repeats: int, label: str = "") -> float:
    """Median wall seconds of ``fn()`` after one warm-up call (progress on stderr)."""
    fn()
    walls = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        walls.append(time.perf_counter() - t0)
    if label:
        print(f"{label}: {statistics.median(walls):.2f} s", file=sys.stderr, flush=True)
    return statistics.median(walls)


def grid_points(side: int) -> np.ndarray:
    xs = np.linspace(-3.0, 3.0, side, dtype=np.float32)
    gx, gy = np.meshgrid(xs, xs)
    return np.stack([gx.ravel(), gy.ravel()], -1)


def per_point_jacobian(embed, z):
    """The seed's way: J of one point by GradientTape.jacobian, then J^T J."""
    with tf.GradientTape() as tape:
        tape.watch(z)
        out = embed(z)
    jac = tape.jacobian(out, z)[0, :, 0, :]
    return tf.matmul(jac, jac, transpose_a=True)


def bench_metric_map(args) -> dict:
    model = make_model(2)
    embed = decoder_embedding(model)
    grid = grid_points(args.grid)
    n = len(grid)
    out = {"points": n, "outputs_P": None}
    forward = ExpectedMetric(embed, 2, "forward", args.max_evaluations, "graph")
    out["outputs_P"] = forward.output_dim

    def metric_map():
        return np.exp(log_magnification(forward(grid)).numpy())

    out["forward_batched_s"] = timed(metric_map, args.repeats, "metric map, forward, batched")
    reverse = ExpectedMetric(embed, 2, "reverse", args.max_evaluations, "graph")
    subset = grid[:args.reverse_points]
    out["reverse_batched_s"] = timed(lambda: reverse(subset).numpy(), args.repeats,
                                     "reverse, batched (subset)") * n / len(subset)
    out["reverse_batched_measured_points"] = len(subset)
    # agreement of the two modes (and the per-point loop) on the subset
    m_forward = forward(subset).numpy()
    m_reverse = reverse(subset).numpy()
    out["forward_vs_reverse_max_rel_diff"] = float(np.abs(m_forward - m_reverse).max() / np.abs(m_forward).max())

    eager_points = grid[:args.loop_points]

    def eager_loop():
        return [per_point_jacobian(embed, tf.constant(z[None])).numpy() for z in eager_points]

    loop = timed(eager_loop, 1, "per-point jacobian, eager (subset)")
    out["per_point_eager_s"] = loop * n / len(eager_points)
    out["per_point_eager_measured_points"] = len(eager_points)
    compiled_one = tf.function(lambda z: per_point_jacobian(embed, z))
    compiled_points = grid[:args.compiled_loop_points]

    def compiled_loop():
        return [compiled_one(tf.constant(z[None])).numpy() for z in compiled_points]

    loop_compiled = timed(compiled_loop, 1, "per-point jacobian, compiled (subset)")
    out["per_point_compiled_s"] = loop_compiled * n / len(compiled_points)
    out["per_point_compiled_measured_points"] = len(compiled_points)
    # the same per-point loop in forward mode: what batching alone gains
    forward_one = tf.function(lambda z: metric_at(embed, z, "forward"))

    def forward_loop():
        return [forward_one(tf.constant(z[None])).numpy() for z in compiled_points]

    out["per_point_forward_compiled_s"] = timed(forward_loop, 1, "per-point forward, compiled (subset)") \
        * n / len(compiled_points)
    m_loop = np.stack(eager_loop()[:8])
    out["loop_vs_batched_max_rel_diff"] = float(np.abs(m_loop - forward(eager_points[:8]).numpy()).max()
                                                / np.abs(m_loop).max())
    out["speedup_vs_eager_loop"] = out["per_point_eager_s"] / out["forward_batched_s"]
    out["speedup_vs_compiled_loop"] = out["per_point_compiled_s"] / out["forward_batched_s"]
    out["speedup_vs_forward_loop"] = out["per_point_forward_compiled_s"] / out["forward_batched_s"]
    return out


def bench_high_dim(args) -> dict:
    model = make_model(16)
    embed = decoder_embedding(model)
    z = np.random.default_rng(1).normal(size=(args.high_dim_points, 16)).astype(np.float32)
    out = {"latent_dim": 16, "points": len(z)}
    for mode in ["forward", "reverse"]:
        metric = ExpectedMetric(embed, 16, mode, args.max_evaluations, "graph")
        points = z if mode == "forward" else z[:args.reverse_points]
        out[f"{mode}_s"] = timed(lambda: metric(points).numpy(), args.repeats,
                                 f"d = 16, {mode}") * len(z) / len(points)
        out[f"{mode}_measured_points"] = len(points)
    out["auto_mode"] = ExpectedMetric(embed, 16, "auto", args.max_evaluations, "graph").mode
    return out


def bench_geodesics(args) -> dict:
    model = make_model(2)
    embed = decoder_embedding(model)
    rng = np.random.default_rng(2)
    a = rng.normal(size=(args.pairs, 2)).astype(np.float32)
    b = rng.normal(size=(args.pairs, 2)).astype(np.float32)
    out = {"pairs": args.pairs, "segments": args.segments}
    straight = curves.riemannian_length(embed, curves.straight_lines(tf.constant(a), tf.constant(b),
                                                                    args.segments)).numpy()
    for optimizer in ["lbfgs", "adam"]:
        solver = GeodesicSolver(embed, args.segments, 0, 0.05, "graph", optimizer)
        seconds = timed(lambda: solver(a, b)[0].numpy(), args.repeats, f"geodesics, {optimizer}")
        nodes, _, evaluations = solver(a, b)
        ratio = curves.riemannian_length(embed, nodes).numpy() / straight
        out[optimizer] = {"steps": solver.steps, "batch_s": seconds,
                          "energy_evaluations_max": int(np.max(evaluations)),
                          "per_geodesic_s": seconds / args.pairs,
                          "length_ratio_median": float(np.median(ratio)),
                          "length_ratio_min": float(ratio.min())}
    return out


SECTIONS = {"metric_map_d2": bench_metric_map, "metric_d16": bench_high_dim,
            "geodesics": bench_geodesics}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grid", type=int, default=100, help="grid side (grid^2 points)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-evaluations", type=int, default=4096)
    parser.add_argument("--loop-points", type=int, default=20, help="points timed in the eager loop")
    parser.add_argument("--compiled-loop-points", type=int, default=50)
    parser.add_argument("--reverse-points", type=int, default=10)
    parser.add_argument("--high-dim-points", type=int, default=2000)
    parser.add_argument("--pairs", type=int, default=100)
    parser.add_argument("--segments", type=int, default=20)
    parser.add_argument("--only", choices=sorted(SECTIONS), action="append",
                        help="run only this section (repeatable)")
    args = parser.parse_args()
    load_before = os.getloadavg()
    result = {"cpu_count": os.cpu_count(), "tensorflow": tf.__version__}
    for name in args.only or sorted(SECTIONS):
        start = time.perf_counter()
        result[name] = SECTIONS[name](args)
        result[name]["section_wall_s"] = time.perf_counter() - start
    result["load_average_before"] = [round(x, 2) for x in load_before]
    result["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(result, indent=1, default=float))


if __name__ == "__main__":
    main()
