"""Traced functions kept only as their definition in the TF runtime, without the Python graph.

A `tf.function` keeps the Python `FuncGraph` it traced for as long as it lives: every
`Operation` and `Tensor` object, and the C++ graph with its shape-inference state. For the
supernet's gradient pass (18,600 nodes at C=8, 5 cells) that is about 140 MiB of a
1.3 GiB search step, for a FunctionDef of 3 MiB that the runtime runs by itself. Worse, a
`tf.custom_gradient` used while tracing (the supernet's recomputing backward pass) registers
a closure in TF's process-wide gradient registry that keeps the whole graph alive even
after the function is gone (tensorflow/tensorflow#97697).

`RuntimeFunction` traces once per input signature, registers the FunctionDef with the eager
context under a name of its own, lets the Python graph go, and calls the definition by name
(`tf.raw_ops.PartitionedCall`), from a graph or eagerly. The definition is read by the
runtime alone, so the call has no gradient: use it for functions that compute their own
gradients, as the supernet's passes do.

The registration and the registry clean-up use TF internals (`context.add_function_def`,
`ops._gradient_registry`); setup.py pins TensorFlow's minor version, and
tests/test_runtime_function.py checks that the graph is really released.
"""
import gc
import itertools
from typing import Any, Callable, Dict, Sequence, Tuple

import tensorflow as tf
from tensorflow.core.framework import function_pb2
from tensorflow.python.eager import context
from tensorflow.python.framework import ops as tf_ops

from il_tf import _malloc

_NAMES = itertools.count()


def _custom_gradient_names():
    return set(tf_ops._gradient_registry._registry)  # pylint: disable=protected-access


class RuntimeFunction:
    """`python_function(*args)` traced once per signature and run from its FunctionDef.

    Args:
      python_function: takes tensors (nested in lists/tuples) and returns one tensor or a
        flat list of tensors; it must capture no tensors or variables from outside.
      name: prefix of the registered function's name.
      relaxed: indices of arguments traced with every dimension unknown, so that one trace
        serves them at any size (e.g. heads of any number of classes).
      attributes: FunctionDef attributes (e.g. {"_noinline": True}).
    """

    def __init__(self, python_function: Callable, name: str, relaxed: Sequence[int] = (),
                 attributes: Dict[str, Any] = None):
        self._python_function = python_function
        self._name = name
        self._relaxed = frozenset(relaxed)
        self._attributes = attributes
        self._traced: Dict[Tuple, Tuple[str, bool, list]] = {}

    def __call__(self, *args):
        """The outputs, as a list of tensors."""
        args = tf.nest.map_structure(tf.convert_to_tensor, args)
        specs = [tf.nest.map_structure(lambda x, i=i: self._spec(x, i in self._relaxed), a)
                 for i, a in enumerate(args)]
        key = tuple(tf.nest.flatten(specs))
        if key not in self._traced:
            self._traced[key] = self._trace(specs)
            # The trace's graph is a web of reference cycles; collected, its memory is
            # free inside the heap, where the step's tensors cannot reuse it.
            gc.collect()
            _malloc.release_free_memory()
        name, stateful, outputs = self._traced[key]
        call = tf.raw_ops.StatefulPartitionedCall if stateful else tf.raw_ops.PartitionedCall
        results = call(args=tf.nest.flatten(args), Tout=[o.dtype for o in outputs], f=name,
                       config_proto=context.context().function_call_options
                       .config_proto_serialized)
        for result, spec in zip(results, outputs):
            result.set_shape(spec.shape)
        return list(results)

    @staticmethod
    def _spec(x, relaxed):
        shape = [None] * x.shape.rank if relaxed else x.shape
        return tf.TensorSpec(shape, x.dtype)

    def _trace(self, specs):
        registered_before = _custom_gradient_names()
        traced = tf.function(self._python_function, experimental_attributes=self._attributes)
        concrete = traced.get_concrete_function(*specs)
        if concrete.captured_inputs:
            raise ValueError(f"{self._name}: the traced function captures "
                             f"{concrete.captured_inputs}; pass those values as arguments.")
        if concrete.graph._functions:  # pylint: disable=protected-access
            raise ValueError(f"{self._name}: the traced function calls other functions "
                             "(their definitions would go with the Python graph).")
        definition = function_pb2.FunctionDef()
        definition.CopyFrom(concrete.function_def)
        name = f"il_tf_{self._name}_{next(_NAMES)}"
        definition.signature.name = name
        context.context().add_function_def(definition)
        stateful = any(op.op_def.is_stateful for op in concrete.graph.get_operations())
        outputs = [tf.TensorSpec(o.shape, o.dtype) for o in concrete.outputs]
        # The trace's custom gradients were used while tracing (the definition holds the
        # gradient ops); their registry entries would keep the graph alive.
        registry = tf_ops._gradient_registry._registry  # pylint: disable=protected-access
        for entry in _custom_gradient_names() - registered_before:
            del registry[entry]
        return name, stateful, outputs

    def __del__(self):
        try:
            ctx = context.context()
            for name, _, _ in self._traced.values():
                if ctx.has_function(name):
                    ctx.remove_function(name)
        except (AttributeError, TypeError):  # interpreter shutdown: modules already gone
            pass
