"""Execution switches: the compile mode (XLA / graph / eager), seeding, the device strategy."""
from __future__ import annotations

import random

import numpy as np
import tensorflow as tf

_FORCE_EAGER = False


def force_eager(enabled: bool = True) -> None:
    """The debugging escape hatch (``tfgen run --eager``): every step runs op by op."""
    global _FORCE_EAGER
    _FORCE_EAGER = enabled
    tf.config.run_functions_eagerly(enabled)


def resolve_compile(mode: str) -> str:
    """``auto`` -> ``graph`` on CPU, ``xla`` with a GPU.

    Measured here (tools/bench_vae.py): on this 2-core CPU, XLA made the conv
    VAE step slower than plain graph mode, so graph mode is the CPU default.
    """
    if _FORCE_EAGER:
        return "eager"
    if mode != "auto":
        return mode
    return "xla" if tf.config.list_physical_devices("GPU") else "graph"


def compile_step(fn, mode: str):
    """Wrap a step function per the compile mode; the one place steps get compiled."""
    mode = resolve_compile(mode)
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


def strategy(name: str) -> tf.distribute.Strategy:
    """Variables are created under this strategy's scope (the default one on one device)."""
    return tf.distribute.get_strategy()
