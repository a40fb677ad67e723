"""The persistent trace cache (il_tf/runtime/trace_cache.py): a later supernet with the same
configuration runs the stored definition without tracing and gets bit-identical results;
anything that changes the trace misses; a broken entry is traced again.

(End to end, tests/test_runs.py's resumed runs load the passes their first process stored,
and end bit-identical to runs that traced them.)"""
import os

import numpy as np
import pytest

import il_tf  # noqa: F401  (quiet TensorFlow import)
import tensorflow as tf

from il_tf.learning import functional
from il_tf.models import supernet as supernet_lib
from il_tf.search_space import ops as ops_lib


@pytest.fixture
def cache(tmp_path, monkeypatch):
    directory = tmp_path / "traces"
    monkeypatch.setenv("IL_TF_TRACE_CACHE", str(directory))
    return directory


def _pass(channels=2, kink_free=False):
    """A supernet's traced gradient pass at fixed inputs: (its outputs, the function)."""
    if kink_free:
        with ops_lib.kink_free():
            net = supernet_lib.Supernet(channels=channels, layers=2, seed=3, recompute="edges")
    else:
        net = supernet_lib.Supernet(channels=channels, layers=2, seed=3, recompute="edges")
    supernet_lib.build(net, (8, 8, 3))
    fn = functional.SupernetFunctions(net)
    rng = np.random.RandomState(0)
    w = tf.constant(rng.randn(fn.weights_layout.size) * 0.1, tf.float32)
    stats = tf.constant(rng.rand(fn.stats_layout.size) + 0.5, tf.float32)
    h = tf.constant(rng.randn(net.feature_dim * 3 + 3), tf.float32)
    alphas = [tf.constant(rng.randn(*v.shape) * 0.5, tf.float32)
              for v in net.architecture_variables]
    x = tf.constant(rng.randn(4, 8, 8, 3), tf.float32)
    y = tf.constant([0, 1, 2, 0])
    loss, correct, gw, gh, ga, new_stats = fn.gradients(w, h, stats, alphas, x, y,
                                                        tf.constant(0.25))
    evaluation = fn.evaluate(w, h, stats, alphas, x, y)
    outputs = [t.numpy() for t in (loss, correct, gw, gh, *ga, new_stats, *evaluation)]
    return outputs, fn


def _traces(fn):
    return fn._grad_fn.traces + fn._eval_fn.traces  # pylint: disable=protected-access


def test_a_stored_pass_runs_without_tracing_and_gives_identical_results(cache):
    first, fn = _pass()
    assert _traces(fn) == 2 and len(os.listdir(cache)) == 4  # two entries: .pb and .json
    again, fn = _pass()
    assert _traces(fn) == 0
    assert float(np.abs(first[2]).max()) > 0  # a real gradient
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)


def test_another_configuration_or_op_is_traced_again(cache):
    _pass()
    _, fn = _pass(channels=3)
    assert _traces(fn) == 2
    # Same configuration, but every ReLU smooth: the layers' structure is in the key.
    smooth, fn = _pass(kink_free=True)
    assert _traces(fn) == 2
    plain, _ = _pass()
    assert not np.array_equal(smooth[2], plain[2])


def test_a_broken_entry_is_traced_again_and_rewritten(cache):
    first, _ = _pass()
    for name in os.listdir(cache):
        if name.endswith(".pb"):
            with open(cache / name, "r+b") as f:
                f.seek(100)
                f.write(b"garbage")
    again, fn = _pass()
    assert _traces(fn) == 2
    # Two traces of one process, compared to float rounding: in one CI run (2026-12-07, both
    # cores busy) 29% of the weight gradient differed by up to 1e-5 between them, which a
    # rerun and 12 repeats under load did not reproduce (cause not found). A stored pass's
    # bit-identity is checked above; here the point is that the broken entry is not used.
    for a, b in zip(first, again):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    _, fn = _pass()
    assert _traces(fn) == 0  # rewritten


def test_the_cache_can_be_turned_off(tmp_path, monkeypatch):
    monkeypatch.setenv("IL_TF_TRACE_CACHE", "off")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    _pass()
    _, fn = _pass()
    assert _traces(fn) == 2 and not os.listdir(tmp_path)
