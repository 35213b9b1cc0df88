"""The memory a configuration needs, estimated before anything is allocated, and the check
that refuses what cannot fit.

:func:`estimate` is a pure function of the config and the data's shape (:class:`DataShape`).
Its parts:

* the runtime: Python, TensorFlow, tf.data and the compiled steps (measured: the peak RSS of a
  tiny run), more when XLA compiles;
* resident for the whole run: every split as float32, the tf.data copy of the training set
  (and its cache), the parameters with their gradients and optimizer slots, and what the
  scheme declares it holds (``Scheme.memory_terms``: a per-datapoint table, PGA's cloud of
  M N d floats and the training images it keeps on the device);
* the largest transient peak of one step or one evaluation batch: the activations of the
  decoder (and encoder) for the examples processed at once -- the scheme's training step as
  it declares it (a training batch times the Monte Carlo samples or particles, one chunk of
  PGA's particle update with its temporaries), the validation batches, and each
  ``[[evaluate]]`` task's batch as the task declares it (``TaskConfig.peak``).

Schemes and tasks state their terms in the vocabulary of :mod:`tfgen.footprint`; this module
traces the networks and sums what they declare.

Activations follow one documented rule, not a guess per network: the networks are built once
in a scratch ``tf.Graph`` (nothing is allocated -- tf_keras' variable initialization is
skipped there -- and the run's random seeds are not touched), called on 1 and on 2 examples,
and the difference of the summed sizes of the float tensors that their convolutions,
transposed convolutions, matrix products and batch norms output is the per-example size
(tensors whose batch dimension is unknown, as Keras functional models leave it, count their
per-example size directly).  Ops inside the functions a layer calls, and inside the larger
branch of a ``tf.cond``, count as if inlined.  Other element-wise ops are fused or freed at
once, except the likelihood's per-pixel terms, which count ``PIXEL_TENSORS``
(:mod:`tfgen.footprint`) tensors of the decoder's output size, and the prior's log density,
which counts ``PRIOR_TENSORS`` tensors of its largest element-wise term (a mixture's [K, d]
per latent).  A scheme whose model is a density network of its own (``flow``,
``autoregressive``) gives it by ``traced_log_prob``; it stands in for the decoder.  A pass
with a backward pass (training, the particle update, inpainting) counts 3 x the network's
tensors and 2 x the pixel terms (the forward tensors kept for the gradient, and the
gradients); a forward pass 1 x.

Measured against peak RSS (README, "What tfgen guarantees"), the estimate is within a factor of
about 1.5 of the truth on the shipped experiments; the check refuses only what exceeds the
memory available (:mod:`tfgen.memory`): ``MemAvailable`` plus what this process already
holds, capped by the cgroup limit if one is set and by the address-space limit (``ulimit -v``)
if one is set.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import math

from tfgen.config import Config
from tfgen.errors import ResourceError
from tfgen.footprint import Activations, DataShape, Term
from tfgen.inference.capabilities import AmortizedPosterior
from tfgen.memory import FLOAT, available_memory, format_bytes
from tfgen.registry import SCHEMES
from tfgen.schema import Component

#: peak RSS of a tiny run (2-d latents, MLPs, 128 images), measured: Python, TensorFlow and
#: its runtime, tf.data, the compiled steps
RUNTIME_BYTES = 900 * 2**20
#: what XLA's compiler adds (pga_quick under XLA against graph mode, measured)
XLA_BYTES = 400 * 2**20
#: ops whose outputs are materialised tensors (contractions and normalisations)
COUNTED_OPS = {"Conv2D", "Conv2DBackpropInput", "Conv3D", "DepthwiseConv2dNative", "MatMul",
               "BatchMatMulV2", "BatchMatMulV3", "_FusedMatMul", "FusedBatchNormV3",
               "FusedBatchNorm", "Einsum"}
#: function-call ops whose bodies are counted as if inlined
CALL_OPS = {"StatefulPartitionedCall", "PartitionedCall"}
COND_OPS = {"If", "StatelessIf"}
#: tensors of the largest element-wise term that a prior's log density materialises (a
#: mixture's [components, d] per latent: the standardised distances, their squares, the
#: per-component sums)
PRIOR_TENSORS = 3
#: validation batch of the trainer (``Scheme.validate`` evaluates in batches of 500)
VALIDATION_BATCH = 500


@dataclasses.dataclass(frozen=True)
class Estimate:
    runtime: int
    resident: tuple[Term, ...]  # held for the whole run (they add up)
    peaks: tuple[Term, ...]  # one at a time (the largest counts)

    @property
    def peak(self) -> Term:
        return max(self.peaks, key=lambda t: t.bytes, default=Term("nothing", 0))

    @property
    def total(self) -> int:
        return self.runtime + sum(t.bytes for t in self.resident) + self.peak.bytes

    def largest(self, count: int = 3) -> list[Term]:
        """The largest parts of the total (the resident terms and the peak)."""
        return sorted([*self.resident, self.peak], key=lambda t: -t.bytes)[:count]


def estimate(cfg: Config, shape: DataShape, activations: Activations | None = None) -> Estimate:
    """The memory ``cfg`` needs on data of ``shape`` (``activations`` traced if not given)."""
    from tfgen.runtime import resolve_compile_mode

    act = activations or trace_activations(cfg, shape)
    scheme = SCHEMES.factory_for(cfg.inference)
    image = shape.image_bytes
    runtime = RUNTIME_BYTES + (XLA_BYTES if resolve_compile_mode(cfg.train.compile) == "xla" else 0)

    copies = 1 + (1 if cfg.data.cache else 0)  # tf.data's tensor of the training set (+ cache)
    resident = [
        Term("the data set as float32", (shape.train + shape.val + shape.test) * image,
             ("data.subsample", "data.train_split")),
        Term("the training set in tf.data", copies * shape.train * image,
             ("data.subsample", "data.cache")),
        Term("the evaluation split in tf.data", max(shape.val, shape.test) * image,
             ("data.val_split", "data.test_split")),
        Term("parameters, gradients and optimizer slots", _parameter_bytes(cfg, shape),
             getattr(scheme, "size_keys", ("model.decoder",))),
    ]
    training = scheme.memory_terms(cfg.inference.params, cfg, shape, act)
    resident += training.resident
    peaks = list(training.peaks)
    if shape.val and scheme.validation_metrics:
        # through the encoder, or (no encoder) latents fitted by gradient steps
        fitted = not issubclass(scheme, AmortizedPosterior)
        validation = min(VALIDATION_BATCH, shape.val)
        peaks.append(Term("validation",
                          validation * (act.encode(False) + act.decode(backward=fitted)),
                          ("data.val_split",)))
    peaks.append(Term("the image summaries",
                      cfg.logging.num_images * (act.encode(False) + act.decode(False)),
                      ("logging.num_images",)))
    for i, task in enumerate(cfg.evaluate):
        peaks.append(task_peak(i, task, shape, act))
    return Estimate(runtime, tuple(t for t in resident if t.bytes), tuple(peaks))


def task_peak(i: int, task: Component, shape: DataShape, act: Activations) -> Term:
    """``[[evaluate]]`` entry ``i``'s peak, as its config declares it (``TaskConfig.peak``),
    its keys as ``--set`` paths, with the prior's where it outweighs the decoder."""
    size, keys = task.params.peak(shape, act)
    return Term(f"evaluation task {task.name!r}", size,
                tuple(f"evaluate.{i}.{key}" for key in keys) + act.prior_keys())


def _parameter_bytes(cfg: Config, shape: DataShape) -> int:
    """Parameters, their gradients and up to two optimizer slots each (Adam's m and v)."""
    return 4 * _count_parameters(cfg, shape) * FLOAT


_TRACES: dict = {}


def _traced(cfg: Config, shape: DataShape) -> tuple[Activations, int]:
    """(per-example activations, parameter count), from the networks built in a scratch graph."""
    import tensorflow as tf

    encoder_cfg = getattr(cfg.inference.params, "encoder", None)
    key = (repr(cfg.model), repr(encoder_cfg), repr(cfg.inference), shape)
    if key not in _TRACES:
        logger = tf.get_logger()
        level = logger.level
        logger.setLevel(logging.ERROR)  # graph-mode layers warn about deprecated TF1 internals
        try:
            _TRACES[key] = _trace(cfg, shape, encoder_cfg)
        finally:
            logger.setLevel(level)
    return _TRACES[key]


@contextlib.contextmanager
def _no_variable_initialization():
    """tf_keras, building a functional model (tfd.PixelCNN's network) in a graph, runs a
    session that initializes every variable of the graph, i.e. allocates the parameters the
    estimate is about; the trace only reads shapes, so that initialization is skipped."""
    try:
        from tf_keras.src import backend
    except ImportError:  # another tf_keras layout: nothing to skip
        yield
        return
    original = backend._initialize_variables  # noqa: SLF001
    backend._initialize_variables = lambda session: None  # noqa: SLF001
    try:
        yield
    finally:
        backend._initialize_variables = original  # noqa: SLF001


def _trace(cfg: Config, shape: DataShape, encoder_cfg) -> tuple[Activations, int]:
    import tensorflow as tf

    from tfgen.models.model import build_model, with_file
    from tfgen.models.networks import build_network

    graph = tf.Graph()
    with graph.as_default(), _no_variable_initialization():
        model = build_model(cfg, shape.image_shape, shape.pixel_range)
        encoder = None
        if encoder_cfg is not None:
            encoder = build_network(encoder_cfg, (2 * model.latent_dim,), "inference.encoder")
            with_file(cfg, lambda: encoder(tf.zeros([1, *shape.image_shape])))
        # a scheme whose model is its own density network (flow, autoregressive) says how
        # to build it; its log-density takes the decoder's place
        density = getattr(SCHEMES.factory_for(cfg.inference), "traced_log_prob", None)
        log_prob = density(cfg.inference.params, shape.image_shape) if density else None
        sizes = {}
        for n in (1, 2):
            z = tf.zeros([n, model.latent_dim])
            y = tf.zeros([n, *shape.image_shape])
            decoder = ((lambda: log_prob(y)) if log_prob else
                       (lambda: model.log_likelihood(z, y, training=True)))
            sizes[n] = (_counted_bytes(graph, decoder),
                        _counted_bytes(graph, lambda: encoder(y, training=True)) if encoder
                        else (0, 0),
                        _counted_bytes(graph, lambda: model.log_prior(z), PRIOR_TENSORS))
        output = model.decode(tf.zeros([1, model.latent_dim])).shape.num_elements() * FLOAT
        parameters = sum(v.shape.num_elements() for v in graph.get_collection(
            tf.compat.v1.GraphKeys.GLOBAL_VARIABLES))
    # per example: what grows from 1 to 2 examples, plus what is counted per example
    per = [sizes[2][k][0] - sizes[1][k][0] + sizes[1][k][1] for k in range(3)]
    act = Activations(decoder=per[0], decoder_output=output, encoder=per[1], prior=per[2])
    return act, parameters


def _counted_bytes(graph, call, largest_other: int = 0) -> tuple[int, int]:
    """Bytes output by the counted ops that ``call()`` adds to ``graph``, inside the bodies
    of the functions it calls too (the layers of tf_keras models such as tfd.PixelCNN's run
    as function calls), plus ``largest_other`` times the largest other float tensor: (the
    bytes of tensors of static shape, the bytes per example of tensors whose batch size is
    unknown, as Keras functional models leave it)."""
    before = len(graph.get_operations())
    call()
    fixed, per_example, largest = _ops_bytes(graph, graph.get_operations()[before:])
    return fixed + largest_other * largest, per_example


def _tensor_bytes(tensor) -> tuple[int, int]:
    """(bytes if the shape is static, bytes per example if only the first dimension is not)."""
    if not tensor.dtype.is_floating or tensor.shape.rank is None:
        return 0, 0
    dims = tensor.shape.as_list()
    if all(d is not None for d in dims):
        return math.prod(dims) * tensor.dtype.size, 0
    if dims and dims[0] is None and all(d is not None for d in dims[1:]):
        return 0, math.prod(dims[1:]) * tensor.dtype.size
    return 0, 0


def _ops_bytes(graph, ops) -> tuple[int, int, int]:
    """(static bytes and bytes per example output by the counted ops among ``ops`` and in
    the functions they call, the largest static float tensor any other of them outputs)."""
    fixed = per_example = largest = 0
    for op in ops:
        sizes = [_tensor_bytes(out) for out in op.outputs]
        if op.type in COUNTED_OPS:
            fixed += sum(f for f, _ in sizes)
            per_example += sum(e for _, e in sizes)
            continue
        largest = max([largest, *(f for f, _ in sizes)])
        # a call counts its body; a conditional its larger branch (TFP's weight-normalised
        # convolutions sit in a tf.cond on their initialisation flag)
        branches = ([op.get_attr("f").name] if op.type in CALL_OPS else
                    [op.get_attr("then_branch").name, op.get_attr("else_branch").name]
                    if op.type in COND_OPS else [])
        inner = [_ops_bytes(body, body.get_operations()) for body in
                 (_function_graph(graph, name) for name in branches) if body is not None]
        if inner:
            fixed += max(f for f, _, _ in inner)
            per_example += max(e for _, e, _ in inner)
            largest = max(largest, *(l for _, _, l in inner))
        elif op.type in CALL_OPS:  # a body not at hand: its outputs are materialised
            fixed += sum(f for f, _ in sizes)
            per_example += sum(e for _, e in sizes)
    return fixed, per_example, largest


def _function_graph(graph, name: str):
    """The traced body of the function ``name`` called in ``graph`` (None if unknown)."""
    while graph is not None:
        function = graph._get_function(name)  # noqa: SLF001 -- no public lookup by name
        if function is not None:
            return getattr(function, "graph", None)
        graph = getattr(graph, "outer_graph", None)
    return None


def trace_activations(cfg: Config, shape: DataShape) -> Activations:
    return _traced(cfg, shape)[0]


def _count_parameters(cfg: Config, shape: DataShape) -> int:
    return _traced(cfg, shape)[1]


# --------------------------------------------------------------------------- the check

def check_memory(cfg: Config, data) -> Estimate:
    """Refuse (ResourceError) a configuration whose estimate exceeds the available memory."""
    est = estimate(cfg, DataShape.of(data))
    available = available_memory()
    if available is not None and est.total > available.bytes:
        parts = ", ".join(f"{t.what} {format_bytes(t.bytes)}" for t in est.largest())
        keys = list(dict.fromkeys(k for t in est.largest(2) for k in t.keys))
        shown = " or ".join(f"{k} ({_value(cfg, k)})" for k in keys)
        raise ResourceError(
            f"{cfg.source_file}: this configuration needs about {format_bytes(est.total)} of "
            f"memory ({parts}), but {format_bytes(available.bytes)} is available "
            f"({available.source}); lower {shown}, or run anyway with --no-memory-check")
    return est


def _value(cfg: Config, key: str) -> str:
    """The value at a ``--set`` key path of ``cfg`` ("inference.particles", "evaluate.1.samples")."""
    node = cfg
    for part in key.split("."):
        if isinstance(node, list):
            node = node[int(part)]
            continue
        if isinstance(node, Component):
            node = node.params
        node = getattr(node, part, None)
    return node.name if isinstance(node, Component) else repr(node)
