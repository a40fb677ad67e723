"""Every TensorFlow and Keras internal that il_tf relies on, and nothing else.

Each name below says which private API it stands for and who uses it; no other il_tf module
imports `tensorflow.python` or `tensorflow.core`, or reads a private attribute of TF or Keras.
tests/test_tf_internals.py exercises each one, so a TensorFlow or Keras release that changes
one fails there first, naming what to update here.
"""
import contextlib
import copy
from typing import Iterator, Optional, Set

# Protocol buffers of graphs and session configs (`tensorflow.core`; only some have public
# `tf.compat.v1` aliases). functions.py edits traced definitions and Grappler's config.
from tensorflow.core.framework import attr_value_pb2
from tensorflow.core.framework import function_pb2
from tensorflow.core.framework import node_def_pb2
from tensorflow.core.protobuf import config_pb2
from tensorflow.core.protobuf import rewriter_config_pb2
from tensorflow.python.eager import context
from tensorflow.python.eager import record
from tensorflow.python.framework import func_graph
from tensorflow.python.framework import op_def_registry
from tensorflow.python.framework import ops as tf_ops

AttrValue = attr_value_pb2.AttrValue
FunctionDef = function_pb2.FunctionDef
NodeDef = node_def_pb2.NodeDef
ConfigProto = config_pb2.ConfigProto
RewriterConfig = rewriter_config_pb2.RewriterConfig
# A traced function's Python graph (tests check that functions.py lets it go).
FuncGraph = func_graph.FuncGraph


# ------------------------------------------------------------------ the eager context
# `context.context()`'s function library and call options (functions.py).

def register_function(definition) -> None:
    """Adds a FunctionDef to the eager context's library (`Context.add_function_def`)."""
    context.context().add_function_def(definition)


def has_function(name: str) -> bool:
    """Whether the eager context's library holds `name` (`Context.has_function`)."""
    return context.context().has_function(name)


def remove_function(name: str) -> None:
    """Drops `name` from the eager context's library (`Context.remove_function`)."""
    context.context().remove_function(name)


def function_call_config() -> bytes:
    """The serialized ConfigProto functions are called with in this thread
    (`Context.function_call_options.config_proto_serialized`)."""
    return context.context().function_call_options.config_proto_serialized


@contextlib.contextmanager
def function_call_config_set(config: bytes):
    """Within the block, functions called in this thread get the serialized ConfigProto
    `config` (`Context.function_call_options`: a `FunctionCallOptions`, copied and set)."""
    ctx = context.context()
    before = ctx.function_call_options
    options = copy.copy(before)
    options.config_proto_serialized = ConfigProto.FromString(config)
    ctx.function_call_options = options
    try:
        yield
    finally:
        ctx.function_call_options = before


# ------------------------------------------------------------------ ops and graphs

def op_is_stateful(op_type: str) -> Optional[bool]:
    """Whether a registered op has side effects; None for a name that is no registered op
    (e.g. a call of a function by its name) (`op_def_registry.get`)."""
    op_def = op_def_registry.get(op_type)
    return None if op_def is None else op_def.is_stateful


def graph_calls_functions(graph) -> bool:
    """Whether a traced graph holds definitions of functions it calls (`Graph._functions`)."""
    return bool(graph._functions)  # pylint: disable=protected-access


# ------------------------------------------------------------------ gradients

def custom_gradient_names() -> Set[str]:
    """The names in TF's process-wide gradient registry (`ops._gradient_registry._registry`),
    where `tf.custom_gradient` in a graph registers a closure that keeps the graph alive."""
    return set(tf_ops._gradient_registry._registry)  # pylint: disable=protected-access


def forget_custom_gradients(names) -> None:
    """Removes entries from TF's gradient registry (see `custom_gradient_names`)."""
    registry = tf_ops._gradient_registry._registry  # pylint: disable=protected-access
    for name in names:
        del registry[name]


# The gradient tape's recording API (`tensorflow.python.eager.record`), as
# `tf.custom_gradient` uses it eagerly (recompute.py):
stop_recording = record.stop_recording          # no tape records inside the block
VariableWatcher = record.VariableWatcher        # the variables read inside the block
record_operation = record.record_operation      # (op name, outputs, inputs, backward function)


# ------------------------------------------------------------------ tf.data
from tensorflow.python.data.ops import multi_device_iterator_ops  # pylint: disable=g-import-not-at-top,wrong-import-position


def set_per_device_stream_options(options) -> None:
    """Gives `options` to the per-device pipeline a distributed iterator builds after the
    input pipeline (`multi_device_iterator_ops._create_device_dataset`, which both
    `MultiDeviceIterator`s call by its module name: wrapped once, the options replaced on a
    second call); device_streams.py."""
    create = multi_device_iterator_ops._create_device_dataset  # pylint: disable=protected-access
    original = getattr(create, "il_tf_original", create)

    def create_with_options(*args, **kwargs):
        return original(*args, **kwargs).with_options(options)

    create_with_options.il_tf_original = original
    multi_device_iterator_ops._create_device_dataset = create_with_options  # pylint: disable=protected-access


def per_device_stream(dataset, device: str):
    """(The per-device pipeline a distributed iterator would put after `dataset` on `device`,
    the `MultiDeviceIterator` that feeds it: keep it while reading); for
    tests/test_tf_internals.py, which checks the pipeline's options and elements."""
    iterator = multi_device_iterator_ops.MultiDeviceIterator(dataset, [device])
    stream = multi_device_iterator_ops._create_device_dataset(  # pylint: disable=protected-access
        iterator._prototype_device_datasets[0], iterator._incarnation_id,  # pylint: disable=protected-access
        1, False)
    return stream, iterator


# ------------------------------------------------------------------ Keras

def flatten_layers(layer, include_self: bool = True, recursive: bool = True) -> Iterator:
    """A Keras layer's nested layers, itself first (`Layer._flatten_layers`; Keras 3 has no
    public recursive listing). Used by models/network.py and learning/functional.py."""
    return layer._flatten_layers(  # pylint: disable=protected-access
        include_self=include_self, recursive=recursive)


# ------------------------------------------------------------------ build flags

def onednn_enabled() -> bool:
    """Whether this process runs TensorFlow's oneDNN kernels
    (`tensorflow.python.util._pywrap_util_port.IsMklEnabled`; tests/test_onednn.py)."""
    from tensorflow.python.util import _pywrap_util_port  # pylint: disable=g-import-not-at-top
    return bool(_pywrap_util_port.IsMklEnabled())


# ------------------------------------------------------------------ checkpoints, strategies
from tensorflow.core.protobuf import trackable_object_graph_pb2  # pylint: disable=g-import-not-at-top,wrong-import-position


def checkpoint_object_graph(serialized: bytes):
    """A checkpoint's `_CHECKPOINTABLE_OBJECT_GRAPH` parsed (runs/checkpoints.py counts the
    saved elements of a tracked list with it)."""
    graph = trackable_object_graph_pb2.TrackableObjectGraph()
    graph.ParseFromString(serialized)
    return graph


def num_workers(strategy) -> int:
    """Workers of a strategy (`StrategyExtended._num_workers`; 1 unless multi-worker);
    distribute.py and runs/loop.py use it."""
    return getattr(strategy.extended, "_num_workers", 1)
