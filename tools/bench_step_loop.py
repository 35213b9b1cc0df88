"""Steps per second of a small VAE (batch 64): the per-step host loop against device-side loops.

The same scheme step (built by the runner's ``build``), on the same batches, four ways:

* ``host_loop``: the training loop before ``tfgen/execution.py``: one call per step, then
  ``float()`` of every metric and of the step counter (a device-to-host read per output and
  step);
* ``executor_1``: ``StepExecutor`` with ``train.steps_per_execution = 1`` (one flag read per
  step, the metrics summed on the device);
* ``executor_10``: 10 steps per call;
* ``on_device``: all the steps in one call (a pure on-device loop).

Timed over ``--steps`` steps after a warm-up; best of ``--repeats`` rounds taken round-robin,
so a busy machine hits every variant alike.  Prints one JSON object.

    python tools/bench_step_loop.py [--steps 400] [--batch 64] [--hidden 128]
"""
from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np
import tensorflow as tf

from tfgen.assemble import build, from_dict
from tfgen.data import DataBundle, train_dataset
from tfgen.execution import StepExecutor


def make(args):
    cfg = from_dict({
        "data": {"binarize": "static", "val_split": ""},
        "model": {"prior": {"dim": 16}, "decoder": {"name": "mlp", "hidden": [args.hidden]},
                  "likelihood": {"name": "bernoulli"}},
        "inference": {"scheme": "vae", "encoder": {"name": "mlp", "hidden": [args.hidden]}},
        "train": {"batch_size": args.batch, "compile": "graph"}, "evaluate": []})
    images = (np.random.default_rng(0).random((args.batch * args.steps, 28, 28, 1)) < 0.3)
    data, scheme, _ = build(cfg, DataBundle.in_memory(cfg.data, images.astype(np.float32)))
    counters = {name: tf.Variable(0, dtype=tf.int64) for name in
                ("step", "batches", "images", "images_seen")}
    executor = StepExecutor(scheme.step_on_replica, scheme.strategy, scheme.generator, counters,
                            "graph")
    dataset = train_dataset(data.train, args.batch, 0, 0, cfg.data).repeat()
    return scheme, counters, executor, dataset


def host_loop(scheme, counters, dataset, steps):
    batches = iter(dataset)
    for _ in range(steps):
        images, indices = next(batches)
        out = scheme.standalone_step(images, indices)
        values = {k: float(v) for k, v in out.items()}  # noqa: F841 (the reads are the point)
        int(counters["step"].assign_add(1).numpy())
        batch = int(images.shape[0])
        for name in ("batches", "images", "images_seen"):
            counters[name].assign_add(1 if name == "batches" else batch)


def executor_loop(executor, dataset, steps, per_call):
    batches = iter(dataset)
    done = 0
    while done < steps:
        n = min(per_call, steps - done)
        ran = executor.run(batches, tf.constant(n, tf.int64))
        bool(ran.finite)
        done += n


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    scheme, counters, executor, dataset = make(args)
    variants = {
        "host_loop": lambda steps: host_loop(scheme, counters, dataset, steps),
        "executor_1": lambda steps: executor_loop(executor, dataset, steps, 1),
        "executor_10": lambda steps: executor_loop(executor, dataset, steps, 10),
        "on_device": lambda steps: executor_loop(executor, dataset, steps, steps),
    }
    for run in variants.values():  # warm-up: tracing and first allocations
        run(20)
    best = dict.fromkeys(variants, 0.0)
    load_before = os.getloadavg()
    for _ in range(args.repeats):
        for name, run in variants.items():
            t0 = time.perf_counter()
            run(args.steps)
            best[name] = max(best[name], args.steps / (time.perf_counter() - t0))
    result = {"batch": args.batch, "hidden": args.hidden, "steps": args.steps,
              "repeats": args.repeats, "cpu_count": os.cpu_count(),
              "steps_per_second": {k: round(v, 1) for k, v in best.items()},
              "speedup_vs_host_loop": {k: round(v / best["host_loop"], 3) for k, v in best.items()},
              "load_average_before": [round(x, 2) for x in load_before],
              "load_average_after": [round(x, 2) for x in os.getloadavg()]}
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
