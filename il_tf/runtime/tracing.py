"""Trace-time state: what the layers read while a function is traced, not when it runs.

Two things the supernet's traced passes need from the layers that plain Keras has no place
for, kept here so that the layers (search_space/ops.py) hold no globals of their own:
- one constant per graph for a value used at many places (`shared_constant`): a supernet
  trace holds hundreds of identical BN scale/offset constants and reshape shapes otherwise,
  and every node costs trace and Grappler time;
- what training-mode BN does with its moving statistics (`moving_statistics_mode`): the
  architecture step's passes, the recomputation in the backward pass (recompute.py) and the
  search's flat-vector passes each want another update, decided when they are traced.
Both are plain Python read at trace time; a traced definition keeps what they gave it.
"""
import contextlib
import weakref

import tensorflow as tf

# Graph -> its shared constants, both held weakly: a constant (the graph's own tensor)
# referenced strongly would keep its graph, the key, alive for good.
_GRAPH_CONSTANTS = weakref.WeakKeyDictionary()


def shared_constant(key, make):
    """One constant per traced graph for `key` (made by `make()`), instead of a new Const
    op at every use; eagerly, `make()`."""
    if tf.executing_eagerly():
        return make()
    graph = tf.compat.v1.get_default_graph()
    cache = _GRAPH_CONSTANTS.setdefault(graph, weakref.WeakValueDictionary())
    if key not in cache:
        cache[key] = make()
    return cache[key]


# What training-mode BN does with its moving statistics (at trace time): "average" this
# batch's statistics into them, leave them "frozen", or set them to the "batch" statistics.
MOVING_STATISTICS_MODES = ("average", "frozen", "batch")
_MOVING_STATISTICS = ["average"]


def moving_statistics_mode() -> str:
    """The innermost mode set (one of MOVING_STATISTICS_MODES); "average" outside all."""
    return _MOVING_STATISTICS[-1]


@contextlib.contextmanager
def _moving_statistics(mode):
    _MOVING_STATISTICS.append(mode)
    try:
        yield
    finally:
        _MOVING_STATISTICS.pop()


def moving_statistics_frozen():
    """Within this context (at trace time) training-mode BN normalises with batch statistics
    but does not update its moving averages.

    The architecture step's gradient passes (virtual step, finite differences) are not real
    training steps: their statistics must not leak into the model, and leaving the update
    out saves a third of the forward graph's nodes.
    """
    return _moving_statistics("frozen")


def moving_statistics_deferred():
    """Within this context (at trace time) training-mode BN sets its moving statistics to
    this batch's (mean, unbiased variance); the caller averages them in
    (`ops.moving_average`).

    The search's traced pass runs at a dozen points of weight space per iteration and only
    the weight steps keep its statistics: averaging all of them at once, on the flat vector,
    outside the pass, leaves 1,000 nodes (three per statistic) out of the pass's graph.
    """
    return _moving_statistics("batch")
