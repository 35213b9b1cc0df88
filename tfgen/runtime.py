"""Execution switches: the compile mode (XLA / graph / eager), seeding, the device strategy.

The ``[runtime]`` keys (:class:`tfgen.config.RuntimeConfig`) take effect in
:func:`configure`, which must run before TensorFlow initialises its devices (thread pools,
logical CPU devices and the collective ops of ``multi_worker`` cannot change afterwards): the
runner calls it right after the config is loaded.  The strategies are TensorFlow's own
(``tf.distribute``); tfgen adds only how per-datapoint state and batches are laid out over
the replicas (:mod:`tfgen.distribute`).
"""
from __future__ import annotations

import json
import os
import random
import socket
import threading
import time

import numpy as np
import tensorflow as tf

_FORCE_EAGER = False


def force_eager(enabled: bool = True) -> None:
    """The debugging escape hatch (``tfgen run --eager``): every step runs op by op."""
    global _FORCE_EAGER
    _FORCE_EAGER = enabled
    tf.config.run_functions_eagerly(enabled)


def resolve_compile_mode(mode: str) -> str:
    """``auto`` -> ``graph`` on CPU, ``xla`` with a GPU.

    Measured here (tools/bench_vae.py): on this 2-core CPU, XLA made the conv
    VAE step slower than plain graph mode, so graph mode is the CPU default.
    """
    if _FORCE_EAGER:
        return "eager"
    if mode != "auto":
        return mode
    return "xla" if tf.config.list_physical_devices("GPU") else "graph"


def step_compile_mode(mode: str, strategy) -> str:
    """The training step's mode: ``resolve_compile_mode``, but graph instead of XLA on several
    replicas (the step's all-reduces cannot sit in an XLA function nested in strategy.run)."""
    mode = resolve_compile_mode(mode)
    if mode == "xla" and strategy.num_replicas_in_sync > 1:
        return "graph"
    return mode


def compile_step(fn, mode: str):
    """Wrap a step function per the compile mode; the one place steps get compiled."""
    mode = resolve_compile_mode(mode)
    if mode == "eager":
        return fn
    return tf.function(fn, jit_compile=(mode == "xla"), reduce_retracing=True)


def apply_seed(seed: int) -> tf.random.Generator:
    """Seed Python, NumPy and TF; return the stateful generator the steps draw from.

    The generator's state is part of every checkpoint, so a resumed run draws
    the same noise as an uninterrupted one.
    """
    random.seed(seed)
    np.random.seed(seed % 2**32)
    tf.random.set_seed(seed)
    return tf.random.Generator.from_seed(seed)


_CONFIGURED: dict = {}  # what configure() set in this process (it can be set once)


def configure(runtime, file: str = "<config>", worker_index: int | None = None
              ) -> tf.distribute.Strategy:
    """Apply ``[runtime]`` (threads, logical CPU devices, TF_CONFIG)
    and return the strategy whose scope the model and the scheme are built under.

    A process configures its devices once: a second run in the same process (tests, notebooks)
    may ask only for what is already set, else it is refused with the key to change."""
    from tfgen.errors import ConfigError

    if worker_index is not None:
        _set_tf_config(runtime, file, worker_index)
    wanted = {"intra_op_threads": runtime.intra_op_threads,
              "inter_op_threads": runtime.inter_op_threads, "cpu_devices": runtime.cpu_devices,
              "multi_worker": runtime.strategy == "multi_worker"}
    if not _CONFIGURED:
        try:
            if runtime.intra_op_threads:
                tf.config.threading.set_intra_op_parallelism_threads(runtime.intra_op_threads)
            if runtime.inter_op_threads:
                tf.config.threading.set_inter_op_parallelism_threads(runtime.inter_op_threads)
            if runtime.cpu_devices > 1:
                cpu = tf.config.list_physical_devices("CPU")[0]
                tf.config.set_logical_device_configuration(
                    cpu, [tf.config.LogicalDeviceConfiguration()] * runtime.cpu_devices)
        except RuntimeError:  # TensorFlow already initialised (e.g. a test before this run)
            wanted = {**wanted, "intra_op_threads": 0, "inter_op_threads": 0,
                      "cpu_devices": len(tf.config.list_logical_devices("CPU"))}
            if runtime.cpu_devices > 1 and wanted["cpu_devices"] != runtime.cpu_devices:
                raise ConfigError(file, "runtime.cpu_devices", "logical CPU devices can be set "
                                  "only before TensorFlow starts in this process",
                                  runtime.cpu_devices, "a fresh process (tfgen run) or 1") from None
        _CONFIGURED.update(wanted)
    else:
        for key, value in wanted.items():
            if key in ("intra_op_threads", "inter_op_threads") and not value:
                continue
            if key == "cpu_devices" and value == 1:
                continue
            if _CONFIGURED[key] != value:
                raise ConfigError(file, f"runtime.{key}" if key != "multi_worker" else
                                  "runtime.strategy", "fixed when this process first started "
                                  "TensorFlow; it cannot change within one process", value,
                                  f"{_CONFIGURED[key]!r} (or run in a fresh process)")
    return make_strategy(runtime, file)


def make_strategy(runtime, file: str = "<config>") -> tf.distribute.Strategy:
    from tfgen.errors import ConfigError

    devices = list(runtime.devices)
    if runtime.strategy == "default":
        if len(devices) > 1:
            raise ConfigError(file, "runtime.devices", "the default strategy runs on one device",
                              devices, "one device, or runtime.strategy = \"mirrored\"")
        if devices:
            return tf.distribute.OneDeviceStrategy(_device_name(devices[0], file))
        return tf.distribute.get_strategy()
    if runtime.strategy == "mirrored":
        if not devices:
            gpus = tf.config.list_logical_devices("GPU")
            devices = [d.name for d in (gpus or tf.config.list_logical_devices("CPU"))]
        return tf.distribute.MirroredStrategy([_device_name(d, file) for d in devices])
    if "TF_CONFIG" not in os.environ:
        raise ConfigError(file, "runtime.strategy", "multi_worker needs the cluster: set "
                          "TF_CONFIG, or list runtime.workers and pass tfgen run --worker-index",
                          runtime.strategy, "TF_CONFIG set, or runtime.workers + --worker-index")
    # CPU workers talk over gRPC ring all-reduce; NCCL where the workers have GPUs
    implementation = (tf.distribute.experimental.CommunicationImplementation.NCCL
                      if tf.config.list_physical_devices("GPU")
                      else tf.distribute.experimental.CommunicationImplementation.RING)
    _await_cluster(runtime.connect_timeout_s, file)
    return tf.distribute.MultiWorkerMirroredStrategy(
        communication_options=tf.distribute.experimental.CommunicationOptions(
            implementation=implementation))


def _await_cluster(timeout_s: float, file: str) -> None:
    """Return once every other task of TF_CONFIG answers at its host:port, or raise RunFailed
    naming those that did not within ``timeout_s`` (``runtime.connect_timeout_s``).

    TensorFlow's own wait for the cluster (in the strategy's constructor) has no limit and
    holds the GIL in C++, so nothing in this process can end it (its registration timeout,
    ``cluster_register_timeout_in_ms``, was not enforced in TF 2.21 when tried).  So the
    tasks meet first: each listens on its own port (where TensorFlow's server will listen)
    and connects to the others' until all have answered; then it closes its port and builds
    the strategy, whose server takes the port over.  A task that has seen all the others
    goes on; one still looking finds the port answered by that server, or retries until
    then.  (A peer that fails between the meeting and building its strategy still leaves the
    others waiting in TensorFlow.)"""
    from tfgen.errors import ConfigError, RunFailed

    spec = json.loads(os.environ["TF_CONFIG"])
    task = spec.get("task", {})
    tasks = [(job, i, address) for job, addresses in spec.get("cluster", {}).items()
             for i, address in enumerate(addresses)]
    own = [address for job, i, address in tasks if (job, i) == (task.get("type"), task.get("index"))]
    others = [t for t in tasks if t[2] not in own]
    if not own or not others:
        return
    try:
        port = int(own[0].rpartition(":")[2])  # every interface, as TensorFlow's server
        listener = (socket.create_server(("", port), family=socket.AF_INET6, dualstack_ipv6=True)
                    if socket.has_dualstack_ipv6() else socket.create_server(("", port)))
    except OSError as err:
        raise ConfigError(file, "runtime.workers", f"this task's address {own[0]} cannot be "
                          f"listened on ({err.strerror or err})", own[0],
                          "a free port on this machine") from None
    listener.settimeout(0.2)
    stop = threading.Event()

    def answer() -> None:
        while not stop.is_set():
            try:
                listener.accept()[0].close()
            except OSError:  # the 0.2 s timeout, or the listener closed
                continue

    answering = threading.Thread(target=answer, name="tfgen-cluster-meeting", daemon=True)
    answering.start()
    deadline = time.monotonic() + timeout_s
    try:
        waiting = list(others)
        while waiting:
            waiting = [t for t in waiting if not _answers(t[2])]
            if waiting and time.monotonic() >= deadline:
                break
            if waiting:
                time.sleep(0.2)
    finally:
        stop.set()
        answering.join()
        listener.close()
    if waiting:
        shown = ", ".join(f"{job} {i} ({address})" for job, i, address in waiting)
        start = " and ".join(f"--worker-index {i}" for job, i, _ in waiting if job == "worker")
        them = "it" if len(waiting) == 1 else "them"
        raise RunFailed(f"{file}: runtime.connect_timeout_s: {shown} did not join the cluster "
                        f"within {timeout_s:g} s (nothing answers at "
                        f"{'its' if len(waiting) == 1 else 'their'} address); start {them}"
                        + (f" (tfgen run ... {start})" if start else "")
                        + f", or raise runtime.connect_timeout_s ({timeout_s:g})")


def _answers(address: str) -> bool:
    """Whether anything accepts a TCP connection at ``host:port`` (``[v6]:port`` too)."""
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=1):
            return True
    except (OSError, ValueError):
        return False


def _device_name(name: str, file: str) -> str:
    from tfgen.errors import ConfigError

    known = {d.name.split("device:")[-1]: d.name for d in tf.config.list_logical_devices()}
    short = name.split("device:")[-1].upper().replace("/", "")
    if short not in known:
        raise ConfigError(file, "runtime.devices", "no such device on this machine", name,
                          ", ".join(sorted(known)))
    return known[short]


def _set_tf_config(runtime, file: str, worker_index: int) -> None:
    """``tfgen run --worker-index i``: TF_CONFIG from ``runtime.workers`` (TensorFlow's
    documented format: the cluster's workers and this task's index)."""
    from tfgen.errors import ConfigError

    if not runtime.workers:
        raise ConfigError(file, "runtime.workers", "--worker-index needs the workers' "
                          "host:port list", runtime.workers, 'e.g. ["10.0.0.1:12345", '
                          '"10.0.0.2:12345"] (or set TF_CONFIG and leave --worker-index out)')
    if not 0 <= worker_index < len(runtime.workers):
        raise ConfigError(file, "runtime.workers", f"--worker-index {worker_index} is not one of "
                          f"its {len(runtime.workers)} workers", runtime.workers,
                          f"an index in 0..{len(runtime.workers) - 1}")
    os.environ["TF_CONFIG"] = json.dumps({"cluster": {"worker": list(runtime.workers)},
                                          "task": {"type": "worker", "index": worker_index}})


def describe(strategy: tf.distribute.Strategy) -> dict:
    """The strategy, its replicas and this worker's devices (for run.json and the log)."""
    name = type(strategy).__name__
    default = name == "_DefaultDistributionStrategy"
    devices = ([d.name for d in tf.config.list_logical_devices()[:1]] if default
               else list(strategy.extended.worker_devices))
    return {"strategy": "default" if default else name, "replicas": strategy.num_replicas_in_sync,
            "devices": devices, "workers": json.loads(os.environ["TF_CONFIG"])["cluster"]
            if name == "MultiWorkerMirroredStrategy" else None}


def loopback_workers(count: int) -> list[str]:
    """``count`` "127.0.0.1:port" addresses of free ports: a multi-worker cluster on this
    machine (tests, tools/bench_distribute.py)."""
    import socket

    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    addresses = [f"127.0.0.1:{s.getsockname()[1]}" for s in sockets]
    for s in sockets:
        s.close()
    return addresses


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Whether this process writes the run directory (worker 0 of a multi-worker cluster)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.cluster_spec().as_dict():
        return True
    return resolver.task_type in (None, "chief") or (resolver.task_type == "worker"
                                                     and resolver.task_id == 0
                                                     and "chief" not in resolver.cluster_spec().as_dict())
