"""Recompute in the backward pass: gradient checkpointing that saves memory in a graph.

A caller gets `layer(*inputs)` whose backward pass recomputes the layer's forward instead of
keeping its intermediate tensors (`call_recomputed`; the supernet's `recompute` modes), for
one more forward pass of that layer per gradient. Passes that are differentiated twice run
inside `recompute_disabled` and keep everything. The tape recording uses TF internals
(`internals.record_operation` and friends, as `tf.custom_gradient` does eagerly).
"""
import contextlib

import keras
import tensorflow as tf

from il_tf.runtime import internals
from il_tf.runtime import tracing


def recompute_in_backward(forward, *args):
    """forward(*args) whose backward pass recomputes forward instead of keeping its
    intermediate tensors (gradient checkpointing); returns forward's outputs (a tuple).

    Unlike `tf.recompute_grad` inside a `tf.function`, the recomputation waits for the
    incoming gradient (a control dependency): TF's executor runs every op as soon as its
    inputs exist, so a recomputation that depends only on the forward's inputs runs during
    the forward pass and keeps everything alive, which costs time and saves no memory.
    `forward` must read no variables (values come in as arguments).

    Only forward's first output is differentiated; the others (the BN moving statistics
    `call_recomputed` returns) get no gradient. The recomputation runs with the statistics
    frozen (`tracing.moving_statistics_frozen`): their update would be recomputed only to be
    thrown away (1,944 of the 19,989 nodes the pass traced at C=8, 5 cells).

    The gradient tape records the first output alone (`internals.record_operation`, as
    `tf.custom_gradient` does eagerly). In a graph `tf.custom_gradient` records every output
    and every input passed through, and the tape makes a zero gradient for each one nothing
    differentiates, to be thrown away: about 1,000 nodes of the supernet pass's trace.
    """
    with internals.stop_recording(), internals.VariableWatcher() as watcher:
        outputs = forward(*args)
        first = tf.identity(outputs[0])  # a tensor of its own, recorded below
    read = watcher.watched_variables()

    def grad(dout):
        if read:  # (they would get no gradient)
            raise ValueError("recompute_in_backward: forward read variables "
                             f"{[v.name for v in read]}; pass their values instead.")
        with tf.control_dependencies([dout]):
            again_in = [tf.identity(x) for x in args]
        with tf.GradientTape() as tape:
            tape.watch(again_in)
            with tracing.moving_statistics_frozen():
                again = forward(*again_in)[0]
        return tape.gradient(again, again_in, output_gradients=dout)

    internals.record_operation("RecomputeInBackward", [first], list(args), grad)
    return (first, *outputs[1:])


_RECOMPUTE = [True]


def recompute_enabled() -> bool:
    """False inside `recompute_disabled` (a trace-time switch: part of a trace cache key)."""
    return _RECOMPUTE[-1]


@contextlib.contextmanager
def recompute_disabled():
    """Within this context (at trace time) the supernet keeps every activation, whatever its
    `recompute`: for passes that are differentiated twice (hessian="exact"), which a
    recomputing backward pass (`recompute_in_backward`) does not support."""
    _RECOMPUTE.append(False)
    try:
        yield
    finally:
        _RECOMPUTE.pop()


def call_recomputed(layer, inputs, call=None, **kwargs):
    """layer(*inputs, **kwargs) through `recompute_in_backward`; a plain call inside
    `recompute_disabled`. `call(*inputs, **kwargs)`, if given, calls the layer instead
    (for a layer whose inputs are not plain positional tensors).

    recompute_in_backward differentiates its function w.r.t. its arguments only, so the
    layer's variables enter as arguments: their current values (`v.value` is the substituted
    one inside a keras.StatelessScope, as in the search's traced passes), mapped back onto
    the variables in a scope of the function's own. The BN moving statistics the layer
    updates come out as outputs and are assigned here (recorded by an enclosing
    StatelessScope, if any). `inputs` are tensors.
    """
    call = call or layer
    if not _RECOMPUTE[-1]:
        return call(*inputs, **kwargs)
    variables = list(layer.variables)
    statistics = [v for v in variables if not v.trainable]
    n = len(inputs)

    def forward(*args):
        with keras.StatelessScope(state_mapping=list(zip(variables, args[n:]))) as scope:
            out = call(*args[:n], **kwargs)
            updated = [scope.get_current_value(v) for v in statistics]
        return (out, *updated)

    out, *updated = recompute_in_backward(forward, *inputs, *[v.value for v in variables])
    for v, value in zip(statistics, updated):
        v.assign(value)
    return out
