"""The TFDS split syntax of ``[data]`` (``train[:50000]``, ``train[50000:]+test[10%:]``)
applied to local arrays of named splits."""
from __future__ import annotations

import types

import numpy as np

from tfgen.errors import ConfigError


def select(raw: dict[str, tuple[np.ndarray, np.ndarray]], spec: str, key: str,
           file: str) -> tuple[np.ndarray, np.ndarray]:
    """Apply TFDS split syntax (``train[:50000]+test[10%:]``) to local arrays."""
    import tensorflow_datasets as tfds

    try:
        instruction = tfds.core.ReadInstruction.from_spec(spec)
        infos = {name: types.SimpleNamespace(num_examples=len(arr[0])) for name, arr in raw.items()}
        pieces = instruction.to_absolute(infos)
    except (ValueError, KeyError, AssertionError) as err:
        message = str(err).splitlines()[0]
        raise ConfigError(file, key, f"not a usable split ({message})", spec,
                          f"TFDS split syntax over the splits {sorted(raw)}, e.g. 'train[:50000]'") from None
    images = [raw[p.splitname][0][p.from_:p.to] for p in pieces]
    labels = [raw[p.splitname][1][p.from_:p.to] for p in pieces]
    return np.concatenate(images), np.concatenate(labels)
