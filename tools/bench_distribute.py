"""Data-parallel speed and memory: the default strategy, MirroredStrategy over 2 logical CPU
devices, and MultiWorkerMirroredStrategy with 2 worker processes on 127.0.0.1.

Rows (each in fresh processes: logical devices and the cluster are fixed when TensorFlow starts):

* VAE images per second (conv encoder/decoder, 28x28, global batch ``--vae-batch``);
* seconds per PGA step, Kuntz et al.'s (2023) setting at M = 2000, N = 10 (residual decoder, 32x32,
  global batch 128, particle_update "all": every particle moves every step);
* per replica: the bytes of sharded per-datapoint state it holds (the particle cloud and the
  training images of its rows) and each process's peak resident memory.

Runs are built by the runner's own ``build`` and trained by the training loop's own pieces
(:class:`tfgen.execution.StepExecutor` over ``ReplicaLayout.distribute`` of the epoch's
batches).  On this 2-core CPU the logical devices share the same cores: the rows show that
the engine runs and what it costs, not a speed-up.  Prints one JSON object.

    python tools/bench_distribute.py                  # everything (PGA rows: ~15 min)
    python tools/bench_distribute.py --skip-pga
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

STRATEGIES = {
    "default": {"strategy": "default"},
    "mirrored_2_cpu": {"strategy": "mirrored", "cpu_devices": 2},
    "multi_worker_2": {"strategy": "multi_worker"},
}


def config(kind: str, runtime: dict, args) -> dict:
    if kind == "vae":
        return {"data": {"binarize": "static", "val_split": ""},
                "model": {"prior": {"dim": 16}},
                "inference": {"scheme": "vae"},
                "train": {"batch_size": args.vae_batch, "compile": "graph"},
                "runtime": runtime, "evaluate": []}
    return {"data": {"pixel_range": "[-1,1]", "val_split": ""},
            "model": {"prior": {"dim": 10}, "decoder": {"name": "residual_decoder"},
                      "likelihood": {"name": "normal", "sigma": 0.3}},
            "inference": {"scheme": "pga", "particles": args.particles, "chunk_size": 64},
            "train": {"batch_size": 128, "compile": "graph"}, "runtime": runtime, "evaluate": []}


def child(kind: str, runtime: dict, args) -> dict:
    """One setting in this process: build, warm up, time ``steps`` steps."""
    import numpy as np
    import tensorflow as tf

    from tfgen import runtime as rt
    from tfgen.assemble import build, from_dict
    from tfgen.data import DataBundle, train_dataset
    from tfgen.execution import StepExecutor

    cfg = from_dict(config(kind, runtime, args))
    strategy = rt.configure(cfg.runtime, "<bench>")
    rng = np.random.default_rng(0)
    if kind == "vae":
        count, steps = args.vae_batch * (args.vae_steps + 2), args.vae_steps
        images = (rng.random((count, 28, 28, 1)) < 0.3).astype(np.float32)
        data = DataBundle.in_memory(cfg.data, images)
    else:
        count, steps = args.images, args.pga_steps
        images = np.tanh(rng.normal(size=(count, 32, 32, 1))).astype(np.float32)
        data = DataBundle.in_memory(cfg.data, images, (-1.0, 1.0))
    data, scheme, generator = build(cfg, data, strategy)
    counters = {name: tf.Variable(0, dtype=tf.int64) for name in
                ("step", "batches", "images", "images_seen")}
    executor = StepExecutor(scheme.step_on_replica, strategy, generator, counters, "graph")
    batches = iter(scheme.layout.distribute(
        train_dataset(data.train, cfg.train.batch_size, 0, 0, cfg.data).repeat()))
    bool(executor.run(batches, tf.constant(1, tf.int64)).finite)  # warm-up: tracing
    start = time.perf_counter()
    ran = executor.run(batches, tf.constant(steps, tf.int64))
    bool(ran.finite)
    seconds = time.perf_counter() - start
    state = {}
    for rows in scheme.layout.tables:
        for component in rows.components():
            nbytes = int(np.prod(component.shape)) * component.dtype.size
            state[component.device] = state.get(component.device, 0) + nbytes
    out = {"replicas": strategy.num_replicas_in_sync, "steps": steps,
           "global_batch": cfg.train.batch_size, "seconds": round(seconds, 3),
           "sharded_state_bytes_per_device": state,
           "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
           "loss": float(ran.last["loss"])}
    if kind == "vae":
        out["images_per_second"] = round(steps * cfg.train.batch_size / seconds, 1)
    else:
        out["seconds_per_step"] = round(seconds / steps, 2)
    return out


def spawn(kind: str, name: str, args) -> dict:
    from tfgen.runtime import loopback_workers

    base = [sys.executable, __file__, "--child", kind, "--setting", name,
            *(f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items()
              if k not in ("child", "setting", "skip_pga", "skip_vae"))]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("TF_CONFIG", None)
    if name != "multi_worker_2":
        done = subprocess.run(base, capture_output=True, text=True, env=env, timeout=7200)
        if done.returncode:
            return {"error": done.stderr[-2000:]}
        return json.loads(done.stdout.strip().splitlines()[-1])
    cluster = loopback_workers(2)
    procs = []
    for index in (1, 0):
        tf_config = {"cluster": {"worker": cluster}, "task": {"type": "worker", "index": index}}
        procs.append(subprocess.Popen(base, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True, env={**env, "TF_CONFIG": json.dumps(tf_config)}))
    outs = [p.communicate(timeout=7200) for p in procs]
    if any(p.returncode for p in procs):
        return {"error": " | ".join(err[-1000:] for _, err in outs)}
    worker1, worker0 = (json.loads(out.strip().splitlines()[-1]) for out, _ in outs)
    worker0["peak_rss_bytes_per_worker"] = [worker0.pop("peak_rss_bytes"),
                                            worker1["peak_rss_bytes"]]
    worker0["sharded_state_bytes_per_device"] = {
        "worker 0": sum(worker0["sharded_state_bytes_per_device"].values()),
        "worker 1": sum(worker1["sharded_state_bytes_per_device"].values())}
    return worker0


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--setting", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--vae-batch", type=int, default=256)
    parser.add_argument("--vae-steps", type=int, default=40)
    parser.add_argument("--images", type=int, default=2000, help="PGA's M")
    parser.add_argument("--particles", type=int, default=10, help="PGA's N")
    parser.add_argument("--pga-steps", type=int, default=2)
    parser.add_argument("--skip-pga", action="store_true")
    parser.add_argument("--skip-vae", action="store_true")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, STRATEGIES[args.setting], args)))
        return
    load_before = os.getloadavg()
    result = {"cpu_count": os.cpu_count()}
    kinds = [k for k, skip in (("vae", args.skip_vae), ("pga", args.skip_pga)) if not skip]
    for kind in kinds:
        result[kind] = {name: spawn(kind, name, args) for name in STRATEGIES}
    result["load_average_before"] = [round(x, 2) for x in load_before]
    result["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
