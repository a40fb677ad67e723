"""RuntimeFunction: a traced function run from its FunctionDef, with its Python graph let go."""
import gc

import numpy as np
import pytest

import il_tf  # noqa: F401  (quiet TensorFlow import)
import tensorflow as tf
from tensorflow.core.framework import function_pb2
from tensorflow.python.framework import func_graph
from tensorflow.python.framework import ops as tf_ops

from il_tf.learning import runtime_function
from il_tf.models import supernet as supernet_lib
from il_tf.search_space import ops as ops_lib


@tf.custom_gradient
def _square(a):
    """a**2 by a custom gradient: in a graph, `tf.custom_gradient` registers its gradient in
    TF's process-wide registry, whose entry would keep the traced graph alive."""
    y = a * a
    return y, lambda dy: dy * 2.0 * a


def _loss_and_gradient(w, h, x):
    """A function that computes its own gradient, through the supernet's recomputing
    backward pass, a `tf.custom_gradient` (a user's function may use one) and a shared
    constant (as the BN layers use), with a head `h` of any size."""
    one = ops_lib._shared_constant(("test", 1), lambda: tf.constant(1.0))  # pylint: disable=protected-access
    with tf.GradientTape() as tape:
        tape.watch(w)
        y, = supernet_lib.recompute_in_backward(lambda a, b: (tf.tanh(a @ b),), x, w)
        loss = tf.reduce_sum(_square(y) * tf.reduce_mean(h)) * one
    return tf.concat([tf.reshape(loss, [1]), tf.reshape(tape.gradient(loss, w), [-1])], 0)


def _graphs_named(name):
    gc.collect()
    return [g for g in gc.get_objects()
            if isinstance(g, func_graph.FuncGraph) and g.name == name]


def test_runs_the_traced_function_and_lets_its_graph_go():
    rng = np.random.default_rng(0)
    w = tf.constant(rng.normal(size=(3, 2)), tf.float32)
    x = tf.constant(rng.normal(size=(4, 3)), tf.float32)
    heads = [tf.constant(rng.normal(size=(n,)), tf.float32) for n in (5, 7)]
    expected = [_loss_and_gradient(w, h, x).numpy() for h in heads]
    registry = set(tf_ops._gradient_registry._registry)  # pylint: disable=protected-access

    fn = runtime_function.RuntimeFunction(_loss_and_gradient, "test", relaxed=(1,))
    eager = [fn(w, h, x)[0].numpy() for h in heads]

    @tf.function
    def outer(w, h, x):
        return fn(w, h, x)[0] * 1.0

    traced = [outer(w, h, x).numpy() for h in heads]
    for got in (eager, traced):
        for e, g in zip(expected, got):
            np.testing.assert_allclose(g, e, rtol=1e-6)
    assert len(fn._traced) == 1  # one trace, relaxed head, for both sizes and both callers
    assert not _graphs_named("_loss_and_gradient")
    assert set(tf_ops._gradient_registry._registry) == registry  # pylint: disable=protected-access
    # A plain tf.function keeps it (the check can tell).
    plain = tf.function(_loss_and_gradient)
    plain(w, heads[0], x)
    assert _graphs_named("_loss_and_gradient")
    del plain


def test_the_definition_goes_with_the_function():
    from tensorflow.python.eager import context  # pylint: disable=g-import-not-at-top
    fn = runtime_function.RuntimeFunction(lambda a: a * 2.0, "test_lifetime")
    assert float(fn(tf.constant(1.0))[0]) == 2.0
    name, = [name for name, _, _ in fn._traced.values()]
    assert context.context().has_function(name)
    del fn
    gc.collect()
    assert not context.context().has_function(name)


def test_captured_tensors_are_refused():
    outside = tf.Variable(1.0)
    fn = runtime_function.RuntimeFunction(lambda a: a * outside, "test_capture")
    with pytest.raises(ValueError, match="captures"):
        fn(tf.constant(1.0))


def test_simplify_merges_identical_nodes_drops_dead_ones_and_keeps_stateful_ones():
    def f(a):
        tf.sin(a)  # dead: no output needs it
        noise = tf.random.uniform([3]) - tf.random.uniform([3])  # stateful: never merged
        first, second = a * 2.0 + 3.0, a * 2.0 + 3.0
        with tf.compat.v1.colocate_with(second.op):  # names a node that is merged away
            total = first + second
        return total + 0.0 * noise

    concrete = tf.function(f, autograph=False).get_concrete_function(tf.TensorSpec([3]))
    definition = function_pb2.FunctionDef()
    definition.CopyFrom(concrete.function_def)
    before = [n.op for n in definition.node_def]
    removed = runtime_function.simplify_function_def(definition)
    after = [n.op for n in definition.node_def]
    assert removed == len(before) - len(after) > 0
    assert before.count("Mul") == 3 and after.count("Mul") == 2  # a * 2 once, 0 * noise
    assert "Sin" in before and "Sin" not in after
    assert after.count("RandomUniform") == 2
    names = [n.name for n in definition.node_def]
    assert len(set(names)) == len(after)
    groups = [g.decode() for n in definition.node_def for g in n.attr["_class"].list.s]
    assert groups and all(g[len("loc:@"):] in names for g in groups)
    # The simplified definition is what RuntimeFunction registers and runs.
    fn = runtime_function.RuntimeFunction(f, "test_simplify")
    a = tf.constant([1.0, -2.0, 0.5])
    np.testing.assert_allclose(fn(a)[0].numpy(), 2 * (2 * a.numpy() + 3), rtol=1e-6)


def test_lean_grappler_calls_sets_the_passes_config_for_the_block_only():
    """Inside the block, functions are called with the config the passes' calls carry (one
    round, no function optimiser; no layout or memory optimiser without GPUs), so that the
    search step and its calls of the pass are prepared alike; after it, the old config."""
    from tensorflow.core.protobuf import config_pb2  # pylint: disable=g-import-not-at-top
    from tensorflow.core.protobuf import rewriter_config_pb2  # pylint: disable=g-import-not-at-top
    from tensorflow.python.eager import context  # pylint: disable=g-import-not-at-top
    before = context.context().function_call_options.config_proto_serialized
    with runtime_function.lean_grappler_calls():
        inside = context.context().function_call_options.config_proto_serialized
        x = tf.function(lambda a: a * 2.0, autograph=False)(tf.constant(3.0))  # still runs
    assert float(x) == 6.0
    assert context.context().function_call_options.config_proto_serialized == before
    rewrite = config_pb2.ConfigProto.FromString(inside).graph_options.rewrite_options
    off = rewriter_config_pb2.RewriterConfig.OFF
    assert rewrite.meta_optimizer_iterations == rewriter_config_pb2.RewriterConfig.ONE
    assert rewrite.function_optimization == off
    assert (rewrite.layout_optimizer == off) == (not tf.config.list_logical_devices("GPU"))
    assert inside == runtime_function._lean_grappler(before)  # pylint: disable=protected-access
