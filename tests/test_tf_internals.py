"""Each TensorFlow and Keras internal il_tf relies on, exercised on its own.

Every one of them is reached through il_tf/runtime/internals.py and nowhere else. A TensorFlow
or Keras release that changes one fails here first, with a message naming the internal, the
il_tf file that relies on it, and what to update. Kept fast: no trace bigger than a few ops.
"""
import contextlib

import keras
import pytest

import il_tf  # noqa: F401  (quiet TensorFlow import)
import tensorflow as tf

from il_tf.runtime import internals


@contextlib.contextmanager
def relied_on(internal: str, used_by: str):
    """Turns any failure inside the block into one that names what changed and where."""
    try:
        yield
    except Exception as error:  # pylint: disable=broad-except
        pytest.fail(f"TensorFlow {tf.__version__} / Keras {keras.__version__} changed "
                    f"{internal} (relied on by {used_by}): {type(error).__name__}: {error}. "
                    "Update its accessor in il_tf/runtime/internals.py.", pytrace=True)


def _definition(fn, *specs):
    concrete = tf.function(fn, autograph=False).get_concrete_function(*specs)
    definition = internals.FunctionDef()
    definition.CopyFrom(concrete.function_def)
    return concrete, definition


def test_function_library_of_the_eager_context():
    with relied_on("Context.add_function_def / has_function / remove_function and the "
                   "FunctionDef protocol buffer", "il_tf/runtime/functions.py (RuntimeFunction)"):
        _, definition = _definition(lambda a: a * 3.0, tf.TensorSpec([], tf.float32))
        definition.signature.name = "il_tf_test_internals_library"
        for key in ("_noinline", "_nospecialize"):  # function attributes RuntimeFunction sets
            definition.attr[key].CopyFrom(internals.AttrValue(b=True))
        internals.register_function(definition)
        assert internals.has_function("il_tf_test_internals_library")
        out, = tf.raw_ops.PartitionedCall(args=[tf.constant(2.0)], Tout=[tf.float32],
                                          f="il_tf_test_internals_library")
        assert float(out) == 6.0
        internals.remove_function("il_tf_test_internals_library")
        assert not internals.has_function("il_tf_test_internals_library")


def test_function_call_options_carry_a_grappler_config():
    with relied_on("Context.function_call_options (FunctionCallOptions."
                   "config_proto_serialized) and the ConfigProto/RewriterConfig fields",
                   "il_tf/runtime/functions.py (lean_grappler_calls, RuntimeFunction calls)"):
        before = internals.function_call_config()
        config = internals.ConfigProto.FromString(before)
        rewrite = config.graph_options.rewrite_options
        rewrite.meta_optimizer_iterations = internals.RewriterConfig.ONE
        for field in ("function_optimization", "layout_optimizer", "memory_optimization"):
            setattr(rewrite, field, internals.RewriterConfig.OFF)
        lean = config.SerializeToString(deterministic=True)
        with internals.function_call_config_set(lean):
            assert internals.function_call_config() == lean
            assert float(tf.function(lambda a: a + 1.0)(tf.constant(1.0))) == 2.0
        assert internals.function_call_config() == before


def test_op_registry_says_which_ops_are_stateful():
    with relied_on("op_def_registry.get(op).is_stateful",
                   "il_tf/runtime/functions.py (simplify_function_def)"):
        assert internals.op_is_stateful("RandomUniform") is True
        assert internals.op_is_stateful("AddV2") is False
        assert internals.op_is_stateful("il_tf_no_such_op") is None


def test_graph_lists_the_functions_it_calls():
    with relied_on("Graph._functions", "il_tf/runtime/functions.py (RuntimeFunction._trace)"):
        inner = tf.function(lambda a: a * 2.0)
        calling, _ = _definition(lambda a: inner(a) + 1.0, tf.TensorSpec([], tf.float32))
        plain, _ = _definition(lambda a: a + 1.0, tf.TensorSpec([], tf.float32))
        assert internals.graph_calls_functions(calling.graph)
        assert not internals.graph_calls_functions(plain.graph)
        assert isinstance(plain.graph, internals.FuncGraph)  # tests/test_runtime_function.py


def test_custom_gradients_register_in_the_gradient_registry():
    with relied_on("ops._gradient_registry._registry (tf.custom_gradient's entries)",
                   "il_tf/runtime/functions.py (RuntimeFunction._trace lets graphs go)"):
        @tf.custom_gradient
        def square(a):
            return a * a, lambda dy: dy * 2.0 * a

        def f(a):
            with tf.GradientTape() as tape:
                tape.watch(a)
                y = square(a)
            return tape.gradient(y, a)

        before = internals.custom_gradient_names()
        _definition(f, tf.TensorSpec([], tf.float32))
        new = internals.custom_gradient_names() - before
        assert new, "tracing tf.custom_gradient registered nothing"
        internals.forget_custom_gradients(new)
        assert internals.custom_gradient_names() == before


def test_tape_recording_api():
    with relied_on("tensorflow.python.eager.record (stop_recording, VariableWatcher, "
                   "record_operation)", "il_tf/runtime/recompute.py (recompute_in_backward)"):
        v = tf.Variable(2.0)
        x = tf.constant(3.0)
        with tf.GradientTape() as tape:
            tape.watch(x)
            with internals.stop_recording(), internals.VariableWatcher() as watcher:
                y = tf.identity(x * v)
            assert [w.name for w in watcher.watched_variables()] == [v.name]
            internals.record_operation("IlTfTest", [y], [x], lambda dy: [dy * 7.0])
        assert float(tape.gradient(y, x)) == 7.0


def test_keras_lists_nested_layers():
    with relied_on("keras Layer._flatten_layers(include_self, recursive)",
                   "il_tf/models/network.py, il_tf/learning/functional.py"):
        class Outer(keras.layers.Layer):
            def __init__(self):
                super().__init__()
                self.inner = keras.Sequential([keras.layers.Dense(2)])

        outer = Outer()
        layers = list(internals.flatten_layers(outer))
        assert layers[0] is outer and outer.inner in layers
        assert any(isinstance(l, keras.layers.Dense) for l in layers)
        assert outer not in list(internals.flatten_layers(outer, include_self=False))
        assert list(internals.flatten_layers(outer, recursive=False)) == [outer, outer.inner]


def test_onednn_flag_is_readable():
    with relied_on("tensorflow.python.util._pywrap_util_port.IsMklEnabled",
                   "tests/test_onednn.py"):
        assert isinstance(internals.onednn_enabled(), bool)


def test_the_per_device_stage_of_distributed_streams_gets_its_options():
    with relied_on("multi_device_iterator_ops._create_device_dataset and MultiDeviceIterator's "
                   "prototype per-device datasets", "il_tf/runtime/device_streams.py"):
        stream, source = internals.per_device_stream(tf.data.Dataset.range(3), "/cpu:0")
        # Set by il_tf's import (device_streams.untune): no autotuning thread to wait for.
        assert stream.options().autotune.enabled is False
        assert list(stream.as_numpy_iterator()) == [0, 1, 2]
        del source
