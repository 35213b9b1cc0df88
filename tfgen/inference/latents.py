"""Per-datapoint latents: a table with one row per training image, and the row optimizers.

Schemes without an encoder keep state for every training image m: PGA a cloud of N
particles X^{., m} (Kuntz et al. 2023), svi the variational parameters psi_m = (mu_m, log sigma^2_m)
of q(z | psi_m) (the 2AMU20 VAE assignment, task 4a), map a point latent z_m.  :class:`LatentTable`
holds them as one ``[M, *row_shape]`` variable, indexed by image, with gather/scatter and an
optimizer of its own whose state (moments, per-row step counts) lives beside the rows, so a
row is updated only when its image is in the batch and each row's Adam bias correction
counts that row's own steps.  Everything is a ``tf.Module`` attribute: a checkpoint that
holds the table holds the rows and the optimizer state.
"""
from __future__ import annotations

import dataclasses
from typing import Literal

import tensorflow as tf

from tfgen.distribute import ReplicaLayout, ShardedRows
from tfgen.inference import kernels
from tfgen.schema import setting


@dataclasses.dataclass
class LatentOptimizerConfig:
    """The optimizer of per-datapoint latents (separate from theta's ``train.optimizer``)."""

    name: Literal["adam", "sgd"] = setting("adam", help="adam (Kingma & Ba 2015) or sgd (the "
                                                        "2AMU20 VAE assignment's task 4: SGD, lr "
                                                        "1e-3)")
    learning_rate: float = setting(1e-2, above=0.0, at_most=100.0)
    beta1: float = setting(0.9, at_least=0.0, at_most=0.9999, help="Adam's first-moment decay")
    beta2: float = setting(0.999, at_least=0.0, at_most=0.999999, help="Adam's second-moment decay")
    epsilon: float = setting(1e-8, above=0.0, at_most=1.0, help="Adam's denominator offset")
    momentum: float = setting(0.0, at_least=0.0, at_most=0.9999, help="SGD momentum")


class RowOptimizer:
    """Adam or SGD on rows of latents; the state is a tuple of tensors shaped like the rows
    (Adam: m, v and a per-row step count; SGD: the velocity)."""

    def __init__(self, config: LatentOptimizerConfig):
        self.config = config

    def initial_state(self, rows: tf.Tensor) -> tuple[tf.Tensor, ...]:
        zeros = tf.zeros_like(rows)
        if self.config.name == "adam":
            return zeros, zeros, tf.zeros(tf.shape(rows)[:1], tf.int64)
        return (zeros,)

    def step(self, rows, grads, state, learning_rate=None):
        """(rows', state') after one step down ``grads``; ``learning_rate`` may be a tensor."""
        c = self.config
        lr = c.learning_rate if learning_rate is None else learning_rate
        if c.name == "adam":
            m, v, t = state
            per_row = tf.reshape(t, tf.concat([tf.shape(t), tf.ones([tf.rank(rows) - 1], tf.int32)], 0))
            rows, new = kernels.adam_step(rows, grads, kernels.AdamState(m, v, per_row), lr,
                                          c.beta1, c.beta2, c.epsilon)
            return rows, (new.m, new.v, t + 1)
        rows, velocity = kernels.sgd_step(rows, grads, state[0], lr, c.momentum)
        return rows, (velocity,)

    def masked_step(self, rows, grads, state, active, learning_rate=None):
        """A step only for rows where ``active`` [rows] is True; the others keep rows and state."""
        new_rows, new_state = self.step(rows, grads, state, learning_rate)

        def keep(new, old):
            mask = tf.reshape(active, tf.concat([tf.shape(active),
                                                 tf.ones([tf.rank(old) - 1], tf.int32)], 0))
            return tf.where(mask, new, old)

        return keep(new_rows, rows), tuple(keep(n, o) for n, o in zip(new_state, state))


class LatentTable(tf.Module):
    """Rows ``[M, *row_shape]`` of per-datapoint latents, with an optional row optimizer.

    The rows and the optimizer state are :class:`tfgen.distribute.ShardedRows`: on R replicas
    replica r holds rows [lo_r, hi_r) only.  The replica-step methods take the (static)
    replica id of :class:`tfgen.distribute.ReplicaBatch` and global row indices, which must
    be the replica's own (the input pipeline sees to it)."""

    def __init__(self, initial: tf.Tensor, layout: ReplicaLayout,
                 optimizer: LatentOptimizerConfig | None = None, name: str = "latents"):
        super().__init__(name=name)
        self.values = ShardedRows(layout, initial, name=name)
        self.optimizer = RowOptimizer(optimizer) if optimizer is not None else None
        state = self.optimizer.initial_state(tf.convert_to_tensor(initial)) if self.optimizer else ()
        self.optimizer_state = [ShardedRows(layout, s, name=f"{name}_slot{i}")
                                for i, s in enumerate(state)]

    @property
    def num_rows(self) -> int:
        return int(self.values.shape[0])

    def gather(self, replica: int, indices: tf.Tensor) -> tf.Tensor:
        return self.values.gather(replica, indices)

    def scatter(self, replica: int, indices: tf.Tensor, rows: tf.Tensor) -> None:
        self.values.scatter(replica, indices, rows)

    def assign(self, values: tf.Tensor) -> None:
        """All M rows (eager, outside the replica step)."""
        self.values.assign(values)

    def apply_gradients(self, replica: int, indices: tf.Tensor, grads: tf.Tensor,
                        rows: tf.Tensor | None = None):
        """One optimizer step of the rows ``indices`` down ``grads`` (rows gathered before the
        gradient may be passed in, to save a gather)."""
        rows = self.gather(replica, indices) if rows is None else rows
        state = tuple(s.gather(replica, indices) for s in self.optimizer_state)
        rows, state = self.optimizer.step(rows, grads, state)
        self.scatter(replica, indices, rows)
        for table, value in zip(self.optimizer_state, state):
            table.scatter(replica, indices, value)
