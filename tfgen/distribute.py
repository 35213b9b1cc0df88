"""Data parallelism on ``tf.distribute``: which images and which per-datapoint rows each replica
holds, and a step's randomness that does not depend on how many replicas share the step.

TensorFlow's strategies (``runtime.strategy``) run a scheme's replica step on every replica,
all-reduce the gradients (the Keras optimizers sum them over replicas) and mirror the
weights.  What they do not know is tfgen's per-datapoint state -- PGA's particle cloud, the
svi/map latent tables -- which is as large as the training set times the particles and is
the part of a PGA step that scales.  Here:

* **Rows are sharded in contiguous blocks.**  Of M rows, replica r of R holds rows
  [lo_r, hi_r), lo_r = floor(r M / R) (:class:`ShardedRows`), in one variable on its own
  device; no replica holds a row it does not move.  A checkpoint stores the M rows as one
  tensor under the key a plain variable would have, so it restores under any R.
* **A global batch is split so that each replica gets the images whose rows it holds.**  For
  sharded schemes the B indices of a global batch are sorted and cut at the shard bounds;
  otherwise the batch is cut into R near-equal contiguous parts (``ReplicaLayout.replica_dataset``).
  The split happens in the input pipeline (``distribute_datasets_from_function``), so each
  replica receives only its images.
* **Losses are scaled by the global batch.**  A replica differentiates
  sum_{b in its part} f_b / B (B the global batch, all-reduced), so the all-reduced sum of
  gradients is the gradient of the global batch mean: the same update as on one replica.
* **Noise is indexed globally.**  A step's seed is drawn once, in cross-replica context, from
  the run's generator (checkpointed).  Noise per image is the slice, at the replica's offset
  in the global batch, of noise drawn for the whole batch (:class:`ReplicaBatch`); noise per
  row chunk is seeded by the chunk's global number.  A run on R replicas therefore draws the
  same numbers as a run on one, and the two follow the same loss curve (tests/test_distribute.py).
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import numpy as np
import tensorflow as tf

# salts separating a step's random streams (fold_in data)
SALT_TRANSFORM = 1
SALT_REPARAMETERIZE = 2
SALT_LANGEVIN = 3
SALT_TRANSFORM_ROWS = 4


def fold_seed(seed: tf.Tensor, *data) -> tf.Tensor:
    for value in data:
        seed = tf.random.experimental.stateless_fold_in(seed, tf.cast(value, tf.int64))
    return seed


class ReplicaBatch(NamedTuple):
    """One replica's view of a step: its part of the global batch and the step's seed."""

    seed: tf.Tensor           # [2]: the step's seed (the same on every replica)
    replica: int              # global replica id (static)
    offset: tf.Tensor         # position of this replica's first image in the global batch
    size: tf.Tensor           # images on this replica (int32)
    global_size: tf.Tensor    # images in the global batch (int32)

    @classmethod
    def current(cls, seed: tf.Tensor, indices: tf.Tensor) -> "ReplicaBatch":
        """Inside ``strategy.run``: the sizes of every replica's part, gathered (one small
        all-gather per step), give this replica's offset and the global batch."""
        ctx = tf.distribute.get_replica_context()
        replica = int(tf.get_static_value(ctx.replica_id_in_sync_group))
        size = tf.shape(indices)[0]
        sizes = ctx.all_gather(size[None], axis=0)
        return cls(seed, replica, tf.reduce_sum(sizes[:replica]), size, tf.reduce_sum(sizes))

    def seed_for(self, *salts) -> tf.Tensor:
        return fold_seed(self.seed, *salts)

    def _per_image(self, draw, tail, salt) -> tf.Tensor:
        whole = draw(tf.concat([[self.global_size], tf.cast(tail, tf.int32)], 0), self.seed_for(salt))
        return whole[self.offset:self.offset + self.size]

    def normal(self, tail, salt: int, dtype=tf.float32) -> tf.Tensor:
        """N(0, I) noise [size, *tail]: this replica's rows of the global batch's noise."""
        return self._per_image(lambda s, seed: tf.random.stateless_normal(s, seed, dtype=dtype),
                               tail, salt)

    def uniform(self, tail, salt: int, dtype=tf.float32) -> tf.Tensor:
        """U(0, 1) noise [size, *tail], sliced like :meth:`normal`."""
        return self._per_image(lambda s, seed: tf.random.stateless_uniform(s, seed, dtype=dtype),
                               tail, salt)


def step_seed(generator: tf.random.Generator) -> tf.Tensor:
    """The step's seed [2] (int64), drawn in cross-replica context from the run's generator,
    whose state every checkpoint holds."""
    return generator.make_seeds(1)[:, 0]


def single_replica_batch(seed: tf.Tensor, indices: tf.Tensor) -> ReplicaBatch:
    """The whole batch on one replica (outside ``strategy.run``)."""
    size = tf.shape(indices)[0]
    return ReplicaBatch(seed, 0, tf.constant(0), size, size)


class ReplicaLayout:
    """How a strategy's R replicas share the batches and (if ``rows`` is given) the rows of
    per-datapoint state."""

    def __init__(self, strategy: tf.distribute.Strategy, rows: int | None = None):
        self.strategy = strategy
        # the no-strategy default (not a OneDeviceStrategy): batches need no distributing
        self.is_default = type(strategy).__name__ == "_DefaultDistributionStrategy"
        self.num_replicas = strategy.num_replicas_in_sync
        self.rows = rows
        r = self.num_replicas
        self.bounds = [i * rows // r for i in range(r + 1)] if rows is not None else None
        # the replicas of this worker: consecutive global ids (one input pipeline per worker)
        self.local_replicas = 1 if self.is_default else len(strategy.extended.worker_devices)
        resolver = getattr(strategy, "cluster_resolver", None)
        worker = resolver.task_id if resolver is not None and resolver.task_id is not None else 0
        self.first_local = worker * self.local_replicas if self.local_replicas < r else 0
        self.tables: list = []

    def register(self, rows: "ShardedRows") -> None:
        self.tables.append(rows)

    def gather_rows(self) -> None:
        """Gather every sharded table once, after training, so that evaluation reads them
        locally (in a multi-worker cluster a gather is a collective every worker must join:
        all workers call this, then only worker 0 evaluates)."""
        for rows in self.tables:
            rows.freeze()

    @property
    def sharded(self) -> bool:
        return self.bounds is not None

    def shard(self, replica: int) -> tuple[int, int]:
        return self.bounds[replica], self.bounds[replica + 1]

    @property
    def max_shard_rows(self) -> int:
        return max(hi - lo for hi, lo in zip(self.bounds[1:], self.bounds[:-1]))

    # ------------------------------------------------------------------ input
    def replica_dataset(self, batches: tf.data.Dataset, pipeline: int = 0,
                        pipelines: int = 1) -> tf.data.Dataset:
        """Global ``(images, indices)`` batches -> the per-replica parts of input pipeline
        ``pipeline``'s replicas, in replica order (the order in which tf.distribute hands a
        pipeline's elements to its replicas)."""
        r = self.num_replicas
        per_pipeline = r // pipelines
        first = pipeline * per_pipeline
        bounds = tf.constant(self.bounds, tf.int64) if self.sharded else None

        def split(images, indices):
            if bounds is not None:  # sorted, cut at the shard bounds
                order = tf.argsort(indices)
                images, indices = tf.gather(images, order), tf.gather(indices, order)
                cuts = tf.searchsorted(indices, bounds, side="left")
                sizes = cuts[1:] - cuts[:-1]
            else:  # near-equal contiguous parts
                b = tf.shape(indices, out_type=tf.int64)[0]
                sizes = b // r + tf.cast(tf.range(r, dtype=tf.int64) < b % r, tf.int64)
            parts = (tf.RaggedTensor.from_row_lengths(images, sizes),
                     tf.RaggedTensor.from_row_lengths(indices, sizes))
            mine = tuple(p[first:first + per_pipeline] for p in parts)
            return tf.data.Dataset.from_tensor_slices(mine)

        if r == 1 and not self.sharded:
            return batches
        return batches.flat_map(split)

    def distribute(self, batches: tf.data.Dataset):
        """The iterable the step loop pulls from: per-replica parts (plain batches under the
        default strategy)."""
        if self.is_default:
            return self.replica_dataset(batches)
        return self.strategy.distribute_datasets_from_function(
            lambda ctx: self.replica_dataset(batches, ctx.input_pipeline_id, ctx.num_input_pipelines))


class ShardedRows(tf.__internal__.tracking.Trackable):
    """Rows [M, *row_shape] held in R shards, shard r = rows [lo_r, hi_r) on replica r's device.

    The storage is one ``ON_READ`` variable (a component per replica device, each of
    ``max_shard_rows`` rows, the tail unused when R does not divide M).  In a replica step,
    :meth:`local` is the replica's own component, addressed by global row minus lo_r.  A
    checkpoint holds the M rows as one tensor under ``VARIABLE_VALUE``, the key of a plain
    variable: it restores under any number of replicas (and from checkpoints written before
    sharding existed).  Under the default strategy this is one plain variable of M rows.
    """

    def __init__(self, layout: ReplicaLayout, initial, name: str, dtype=None):
        self.layout = layout
        initial = tf.convert_to_tensor(initial, dtype=dtype)
        self.dtype = initial.dtype
        self.row_shape = initial.shape[1:]
        rows = layout.max_shard_rows
        with layout.strategy.scope():
            self._storage = tf.Variable(
                tf.zeros([rows, *self.row_shape], self.dtype), trainable=False, name=name,
                synchronization=tf.VariableSynchronization.ON_READ,
                aggregation=tf.VariableAggregation.NONE)
        self._frozen = None
        self._gather = None
        self._assign_all(initial)
        layout.register(self)

    def freeze(self) -> None:
        """Keep a gathered copy of the rows for :meth:`full` (training is over)."""
        if self.layout.local_replicas != self.layout.num_replicas:
            self._frozen = self.full()

    # ------------------------------------------------------------------ replica context
    def components(self) -> tuple:
        return self.layout.strategy.experimental_local_results(self._storage)

    def local(self, replica: int) -> tf.Variable:
        """Replica ``replica``'s shard variable (rows lo_r.. of the table)."""
        return self.components()[replica - self.layout.first_local]

    def local_rows(self, replica: int, indices: tf.Tensor) -> tf.Tensor:
        """Positions in the replica's shard of global row ``indices`` (which it must hold)."""
        return tf.cast(indices, tf.int64) - self.layout.bounds[replica]

    def gather(self, replica: int, indices: tf.Tensor) -> tf.Tensor:
        return tf.gather(self.local(replica), self.local_rows(replica, indices))

    def scatter(self, replica: int, indices: tf.Tensor, rows: tf.Tensor) -> None:
        self.local(replica).scatter_nd_update(self.local_rows(replica, indices)[:, None], rows)

    def assign_shard(self, replica: int, rows: tf.Tensor) -> None:
        """All of the replica's rows (hi_r - lo_r of them)."""
        lo, hi = self.layout.shard(replica)
        var = self.local(replica)
        if hi - lo == var.shape[0]:
            var.assign(rows)
        else:
            var[: hi - lo].assign(rows)

    # ------------------------------------------------------------------ the whole table
    def full(self) -> tf.Tensor:
        """The M rows as one tensor (gathered from every worker: a collective in multi-worker
        runs, so every worker must call it)."""
        layout = self.layout
        if self._frozen is not None:
            return self._frozen
        if layout.num_replicas == 1:
            return tf.convert_to_tensor(self.components()[0])
        if layout.local_replicas == layout.num_replicas:
            parts = self.components()
        else:
            if self._gather is None:  # one trace, however often checkpoints are written
                self._gather = tf.function(lambda: layout.strategy.gather(self._storage, axis=0))
            stacked = self._gather()
            m = layout.max_shard_rows
            parts = [stacked[r * m:(r + 1) * m] for r in range(layout.num_replicas)]
        return tf.concat([tf.convert_to_tensor(p)[: hi - lo] for p, (lo, hi) in
                          zip(parts, zip(layout.bounds[:-1], layout.bounds[1:]))], 0)

    def numpy(self) -> np.ndarray:
        return self.full().numpy()

    def __getitem__(self, item):
        return self.full()[item]

    @property
    def shape(self):
        return tf.TensorShape([self.layout.bounds[-1], *self.row_shape])

    def _assign_all(self, values: tf.Tensor) -> None:
        self._frozen = None
        for j, var in enumerate(self.components()):
            lo, hi = self.layout.shard(self.layout.first_local + j)
            part = values[lo:hi]
            if hi - lo < var.shape[0]:
                var[: hi - lo].assign(part)
            else:
                var.assign(part)

    def assign(self, values) -> None:
        """Set all M rows (eager, cross-replica)."""
        self._assign_all(tf.convert_to_tensor(values, self.dtype))

    # ------------------------------------------------------------------ checkpoints
    def _serialize_to_tensors(self):
        return {"VARIABLE_VALUE": self.full()}

    def _restore_from_tensors(self, restored_tensors):
        self._assign_all(restored_tensors["VARIABLE_VALUE"])
        return tf.no_op()


tf.register_tensor_conversion_function(
    ShardedRows, lambda value, dtype=None, name=None, as_ref=False: value.full())


def transform_noise(batch: ReplicaBatch, images: tf.Tensor) -> Callable[[], tf.Tensor]:
    """U(0, 1) noise for the data transform of a replica's images (dynamic binarization)."""
    return lambda: batch.uniform(tf.shape(images)[1:], SALT_TRANSFORM, images.dtype)
