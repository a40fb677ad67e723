"""il_tf.runtime's traced functions: run from their FunctionDef, their Python graph let go."""
import gc

import numpy as np
import pytest

import il_tf  # noqa: F401  (quiet TensorFlow import)
import tensorflow as tf

from il_tf import runtime
from il_tf.runtime import internals


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
    one = runtime.shared_constant(("test", 1), lambda: tf.constant(1.0))
    with tf.GradientTape() as tape:
        tape.watch(w)
        y, = runtime.recompute_in_backward(lambda a, b: (tf.tanh(a @ b),), x, w)
        loss = tf.reduce_sum(_square(y) * tf.reduce_mean(h)) * one
    return tf.concat([tf.reshape(loss, [1]), tf.reshape(tape.gradient(loss, w), [-1])], 0)


def _graphs_named(name):
    gc.collect()
    return [g for g in gc.get_objects()
            if isinstance(g, internals.FuncGraph) and g.name == name]


def test_runs_the_traced_function_and_lets_its_graph_go():
    rng = np.random.default_rng(0)
    w = tf.constant(rng.normal(size=(3, 2)), tf.float32)
    x = tf.constant(rng.normal(size=(4, 3)), tf.float32)
    heads = [tf.constant(rng.normal(size=(n,)), tf.float32) for n in (5, 7)]
    expected = [_loss_and_gradient(w, h, x).numpy() for h in heads]
    registry = internals.custom_gradient_names()

    fn = runtime.RuntimeFunction(_loss_and_gradient, "test", relaxed=(1,))
    eager = [fn(w, h, x)[0].numpy() for h in heads]

    @tf.function
    def outer(w, h, x):
        return fn(w, h, x)[0] * 1.0

    traced = [outer(w, h, x).numpy() for h in heads]
    for got in (eager, traced):
        for e, g in zip(expected, got):
            np.testing.assert_allclose(g, e, rtol=1e-6)
    assert len(fn.definitions) == 1  # one trace, relaxed head, for both sizes and both callers
    assert not _graphs_named("_loss_and_gradient")
    assert internals.custom_gradient_names() == registry
    # A plain tf.function keeps it (the check can tell).
    plain = tf.function(_loss_and_gradient)
    plain(w, heads[0], x)
    assert _graphs_named("_loss_and_gradient")
    del plain


def test_the_definition_goes_with_the_function():
    fn = runtime.RuntimeFunction(lambda a: a * 2.0, "test_lifetime")
    assert float(fn(tf.constant(1.0))[0]) == 2.0
    name, = fn.definitions
    assert internals.has_function(name)
    del fn
    gc.collect()
    assert not internals.has_function(name)


def test_captured_tensors_are_refused():
    outside = tf.Variable(1.0)
    fn = runtime.RuntimeFunction(lambda a: a * outside, "test_capture")
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
    definition = internals.FunctionDef()
    definition.CopyFrom(concrete.function_def)
    before = [n.op for n in definition.node_def]
    removed = runtime.simplify_function_def(definition)
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
    fn = runtime.RuntimeFunction(f, "test_simplify")
    a = tf.constant([1.0, -2.0, 0.5])
    np.testing.assert_allclose(fn(a)[0].numpy(), 2 * (2 * a.numpy() + 3), rtol=1e-6)


def test_lean_grappler_calls_sets_the_passes_config_for_the_block_only():
    """Inside the block, functions are called with the config the passes' calls carry (one
    round, no function optimiser; no layout or memory optimiser without GPUs), so that the
    search step and its calls of the pass are prepared alike; after it, the old config."""
    before = internals.function_call_config()
    with runtime.lean_grappler_calls():
        inside = internals.function_call_config()
        x = tf.function(lambda a: a * 2.0, autograph=False)(tf.constant(3.0))  # still runs
    assert float(x) == 6.0
    assert internals.function_call_config() == before
    rewrite = internals.ConfigProto.FromString(inside).graph_options.rewrite_options
    off = internals.RewriterConfig.OFF
    assert rewrite.meta_optimizer_iterations == internals.RewriterConfig.ONE
    assert rewrite.function_optimization == off
    assert (rewrite.layout_optimizer == off) == (not tf.config.list_logical_devices("GPU"))
    assert inside == runtime.lean_grappler_config(before)


def test_shared_packs_the_outputs_into_one_and_gives_them_back():
    """shared=True: the definition has one float32 output, not inlined nor specialised, and
    the call gives back every output with its shape and dtype; the one output whose size
    depends on a relaxed argument (the head's gradient) comes back at each call's size."""
    def f(w, h, pair):
        return (tf.reduce_sum(w) * tf.reduce_sum(h), [w * 2.0, tf.cast(h, tf.float16)],
                pair[0] @ pair[1])

    fn = runtime.RuntimeFunction(f, "test_shared", relaxed=(1,), shared=True)
    w = tf.constant([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    pair = (tf.ones([2, 2]), tf.constant([[1.0], [2.0]]))
    for n in (3, 5):
        h = tf.range(n, dtype=tf.float32)
        got = fn(w, h, pair)
        expected = tf.nest.flatten(f(w, h, pair))
        assert [g.dtype for g in got] == [e.dtype for e in expected]
        for g, e in zip(got, expected):
            np.testing.assert_array_equal(g.numpy(), e.numpy())
    assert len(fn.definitions) == 1  # one trace for both head sizes

    two_unknown = runtime.RuntimeFunction(lambda a, b: (a * 2.0, b * 2.0), "test_two",
                                          relaxed=(0, 1), shared=True)
    with pytest.raises(ValueError, match="one output of unknown size"):
        two_unknown(tf.ones([2]), tf.ones([3]))
