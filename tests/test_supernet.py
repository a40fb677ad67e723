"""The DARTS primitives and the supernet: shapes, exactness of the batched edges, mixing,
and which variable groups receive gradients."""
import collections

import numpy as np
import pytest

import il_tf  # noqa: F401  (quiet TensorFlow import)
import tensorflow as tf

from il_tf import runtime
from il_tf.models import supernet as supernet_lib
from il_tf.search_space import ops as ops_lib


@pytest.mark.parametrize("name", ops_lib.PRIMITIVES)
@pytest.mark.parametrize("stride", [1, 2])
def test_op_shapes(name, stride):
    x = tf.random.normal([2, 8, 8, 4])
    op = ops_lib.make_op(name, 4, stride, affine=False, supernet=True)
    y = op(x, training=True)
    assert y.shape == (2, 8 // stride, 8 // stride, 4)


def test_stride2_windows_match_pytorch_padding():
    """A stride-2 3x3 max pool with PyTorch's (1, 1) padding: output (0, 0) covers rows and
    columns -1..1, so it is the max of x[0:2, 0:2]; TF's "same" would cover 0..2."""
    x = tf.reshape(tf.range(64, dtype=tf.float32), [1, 8, 8, 1])
    y = ops_lib.Pool("max", 2)(x)
    assert float(y[0, 0, 0, 0]) == float(tf.reduce_max(x[0, 0:2, 0:2, 0]))
    avg = ops_lib.Pool("avg", 2)(x)  # average over the 4 real pixels (count_include_pad=False)
    assert np.isclose(float(avg[0, 0, 0, 0]), float(tf.reduce_mean(x[0, 0:2, 0:2, 0])))


def test_stride2_dilated_conv_equals_subsampled_stride1():
    """The reduction dil_conv (subsample, then undilated conv) is the stride-1 dilated conv
    taken at even pixels, the definition PyTorch computes."""
    x = tf.random.normal([1, 8, 8, 3])
    strided = ops_lib.DilConv(3, 3, 2, affine=False)
    strided(x)
    kernel = strided.depthwise.kernel  # (3, 3, 3, 1), applied undilated to even pixels
    dense = tf.nn.depthwise_conv2d(tf.nn.relu(x), kernel, [1, 1, 1, 1], "SAME", dilations=[2, 2])
    expected = tf.nn.conv2d(dense[:, ::2, ::2, :], strided.pointwise.kernel, 1, "VALID")
    got = strided.pointwise(strided.depthwise(tf.nn.relu(x)[:, ::2, ::2, :]))
    np.testing.assert_allclose(got.numpy(), expected.numpy(), rtol=1e-5, atol=1e-5)


def test_grouped_pointwise_conv_is_independent_blocks():
    """A 1x1 Conv with groups=G (run as a batched matmul) is G separate 1x1 convs, in value
    and in both gradients; first and second order (the search's `exact` mode nests tapes)."""
    g, c_in, c_out = 3, 2, 4
    x = tf.random.normal([2, 5, 5, g * c_in], seed=1)
    conv = ops_lib.Conv(g * c_out, 1, groups=g)
    conv(x)
    kernel = tf.convert_to_tensor(conv.kernel)

    def separate(x, kernel):
        return tf.concat([tf.nn.conv2d(x[..., i * c_in:(i + 1) * c_in],
                                       kernel[..., i * c_out:(i + 1) * c_out], 1, "VALID")
                          for i in range(g)], axis=-1)

    def grads(f):
        with tf.GradientTape() as outer:
            outer.watch([x, kernel])
            with tf.GradientTape() as inner:
                inner.watch([x, kernel])
                y = f(x, kernel)
                loss = tf.reduce_sum(tf.sin(y))
            gx, gk = inner.gradient(loss, [x, kernel])
            second = tf.reduce_sum(gx * gx) + tf.reduce_sum(gk * gk)
        return [y, gx, gk, *outer.gradient(second, [x, kernel])]

    def ours(x, kernel):
        return conv._grouped_pointwise(x, kernel)  # pylint: disable=protected-access

    for got, want in zip(grads(ours), grads(separate)):
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(conv(x).numpy(), separate(x, kernel).numpy(), atol=1e-5)


def _set_block(single, grouped, block, blocks):
    """Copies block `block` of a grouped op's kernels into the single-edge op `single`."""
    pairs = [(a, b) for a, b in zip(_convs(single), _convs(grouped))]
    for one, many in pairs:
        k = many.kernel.numpy()
        if many.depthwise:
            c = k.shape[2] // blocks
            one.kernel.assign(k[:, :, block * c:(block + 1) * c, :])
        else:
            c = k.shape[3] // blocks
            one.kernel.assign(k[:, :, :, block * c:(block + 1) * c])


def _convs(layer):
    return [l for l in runtime.flatten_layers(layer) if isinstance(l, ops_lib.Conv)]


@pytest.mark.parametrize("stride,sources,edges", [(1, 1, 3), (2, 2, 2), (1, 2, 4)])
def test_batched_edges_equal_separate_darts_ops(stride, sources, edges):
    """MixedOp runs every edge of its sources at once; each edge must equal the DARTS mixture
    of the separately applied primitives with that edge's weights."""
    c = 4
    layer = supernet_lib.MixedOp(c, stride, sources, edges)
    states = [tf.random.normal([3, 8, 8, c], seed=i) for i in range(sources)]
    weights = tf.nn.softmax(tf.random.normal([sources, edges, len(ops_lib.PRIMITIVES)], seed=9))
    out = layer(states, weights, training=True).numpy()  # (B, H, W, S, E, C)
    per_edge = {i: op for i, op in layer.per_edge}
    for s in range(sources):
        for e in range(edges):
            expected = 0.0
            for i, name in enumerate(ops_lib.PRIMITIVES):
                if name == "none":
                    continue
                single = ops_lib.make_op(name, c, stride, affine=False, supernet=True)
                single(states[s], training=True)  # build
                if i in per_edge:
                    _set_block(single, per_edge[i], s * edges + e, sources * edges)
                expected += weights[s, e, i] * single(states[s], training=True)
            np.testing.assert_allclose(out[:, :, :, s, e, :], expected.numpy(),
                                       rtol=1e-4, atol=1e-4)


@pytest.fixture(scope="module")
def tiny():
    net = supernet_lib.Supernet(channels=4, layers=3, seed=1)
    supernet_lib.build(net, (8, 8, 3))
    heads = [supernet_lib.ClassifierHead(5), supernet_lib.ClassifierHead(3)]
    for h in heads:
        h.build((None, net.feature_dim))
    return net, heads


def test_supernet_shapes_and_groups(tiny):
    net, _ = tiny
    y = net(tf.random.normal([2, 8, 8, 3]), training=True)
    assert y.shape == (2, net.feature_dim) == (2, 4 * 4 * 4)
    assert [tuple(v.shape) for v in net.architecture_variables] == [(14, 8), (14, 8)]
    arch = {id(v) for v in net.architecture_variables}
    assert all(id(v) not in arch for v in net.encoder_variables)
    assert len(net.encoder_variables) + 2 == len(net.trainable_variables)
    assert set(map(id, net.encoder_state)) >= set(map(id, net.non_trainable_variables))
    # DARTS's initialisation: 1e-3 * N(0, 1).
    assert 1e-4 < float(tf.math.reduce_std(net.architecture_variables[0])) < 1e-2


def test_alphas_mix_the_ops(tiny):
    net, _ = tiny
    x = tf.random.normal([2, 8, 8, 3], seed=3)
    before = net(x, training=True).numpy()
    alphas = net.architecture_variables[0]
    saved = alphas.numpy()
    try:
        alphas.assign(saved + np.eye(14, 8, k=0, dtype=np.float32) * 5.0)
        after = net(x, training=True).numpy()
    finally:
        alphas.assign(saved)
    assert np.abs(after - before).max() > 1e-3


def test_gradient_flow_encoder_alphas_and_heads(tiny):
    net, heads = tiny
    x = tf.random.normal([4, 8, 8, 3], seed=4)
    y = tf.constant([0, 1, 2, 0])
    with tf.GradientTape() as tape:
        logits = heads[0](net(x, training=True))
        loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(y, logits))
    variables = net.encoder_variables + net.architecture_variables + [
        v for h in heads for v in h.trainable_variables]
    grads = tape.gradient(loss, variables)
    n_enc, n_arch = len(net.encoder_variables), len(net.architecture_variables)
    enc, arch = grads[:n_enc], grads[n_enc:n_enc + n_arch]
    head0, head1 = grads[n_enc + n_arch:n_enc + n_arch + 2], grads[n_enc + n_arch + 2:]
    assert all(g is not None and float(tf.reduce_max(tf.abs(g))) > 0 for g in enc)
    assert all(g is not None and float(tf.reduce_max(tf.abs(g))) > 0 for g in arch)
    assert all(g is not None for g in head0)
    assert all(g is None for g in head1)  # a head only learns from its own learner


@pytest.mark.parametrize("partial_channels,traced", [(1, True), (2, False)])
def test_recomputing_gives_the_same_pass(partial_channels, traced):
    """`recompute` ("ops", "edges", "cells") changes what the backward pass keeps, not what it
    computes: the search's gradient pass (traced, as the search runs it; eagerly for
    PC-DARTS, whose edge betas take the other path) gives the same loss, gradients
    (weights, head, alphas, betas) and BN moving statistics as with "none"."""
    from il_tf.learning import functional  # pylint: disable=g-import-not-at-top
    nets = []
    for recompute in supernet_lib.RECOMPUTE_MODES:
        # 2 cells (both reductions) keep the traces short.
        net = supernet_lib.Supernet(channels=4, layers=2, partial_channels=partial_channels,
                                    seed=1, recompute=recompute)
        supernet_lib.build(net, (8, 8, 3))
        nets.append(net)
    for net in nets[1:]:
        net.set_weights(nets[0].get_weights())
    x = tf.random.normal([4, 8, 8, 3], seed=5)
    y = tf.constant([0, 1, 2, 0])
    results = []
    for net in nets:
        fn = functional.SupernetFunctions(net)
        w = tf.constant(fn.weights_layout.initial_value(net.encoder_variables))
        stats = tf.constant(fn.stats_layout.initial_value(net.non_trainable_variables))
        h = tf.constant(np.random.RandomState(6).randn(net.feature_dim * 3 + 3), tf.float32)
        alphas = [tf.convert_to_tensor(v) for v in net.architecture_variables]
        grads = fn.gradients if traced else fn._gradients  # pylint: disable=protected-access
        loss, _, gw, gh, ga, new_stats = grads(w, h, stats, alphas, x, y, tf.constant(0.25))
        ga = [g for g, v in zip(ga, net.architecture_variables) if "normal" not in v.path]
        results.append([loss, gw, gh, *ga, new_stats - stats])
    for mode, result in zip(supernet_lib.RECOMPUTE_MODES[1:], results[1:]):
        for ours, ref in zip(result, results[0]):
            assert float(tf.reduce_max(tf.abs(ref))) > 0  # a real gradient / statistics update
            np.testing.assert_allclose(ours.numpy(), ref.numpy(), rtol=1e-3, atol=3e-5,
                                       err_msg=f"recompute={mode!r}")


def test_traced_pass_averages_the_bn_statistics_as_keras_layers_do():
    """The traced pass returns the batch statistics and `gradients` averages them into the
    moving ones on the flat vector (`runtime.moving_statistics_deferred`); the result is what
    the BN layers' own update gives when the Keras model runs the same batch."""
    from il_tf.learning import functional  # pylint: disable=g-import-not-at-top
    net = supernet_lib.Supernet(channels=4, layers=2, seed=2, recompute="edges")
    supernet_lib.build(net, (8, 8, 3))
    fn = functional.SupernetFunctions(net)
    w = tf.constant(fn.weights_layout.initial_value(net.encoder_variables))
    stats = tf.constant(np.random.RandomState(9).rand(fn.stats_layout.size) + 0.5, tf.float32)
    h = tf.constant(np.random.RandomState(6).randn(net.feature_dim * 3 + 3), tf.float32)
    alphas = [tf.convert_to_tensor(v) for v in net.architecture_variables]
    x = tf.random.normal([4, 8, 8, 3], seed=8)
    new_stats = fn.gradients(w, h, stats, alphas, x, tf.constant([0, 1, 2, 0]),
                             tf.constant(0.25))[-1]
    for v, value in zip(net.non_trainable_variables, fn.stats_layout.unflatten(stats)):
        v.assign(value)
    net(x, training=True)  # every BN layer averages this batch into its statistics
    keras_stats = fn.stats_layout.flatten(net.non_trainable_variables)
    assert float(tf.reduce_max(tf.abs(keras_stats - stats))) > 1e-2  # a real update
    np.testing.assert_allclose(new_stats.numpy(), keras_stats.numpy(), rtol=1e-5, atol=1e-6)


def test_recompute_in_backward_matches_plain_gradients_and_refuses_variables():
    """The recomputing backward pass gives the plain gradient for every argument (None for
    one the output does not depend on), and refuses a forward that reads a variable (which
    would get no gradient)."""
    a = tf.constant([[1.0, -2.0], [0.5, 3.0]])
    b = tf.constant([[0.3], [-0.7]])
    unused = tf.constant([4.0])
    f = lambda a, b, unused: (tf.tanh(a @ b), unused * 2.0)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch([a, b, unused])
        y, _ = runtime.recompute_in_backward(f, a, b, unused)
        plain = tf.tanh(a @ b)
    got = tape.gradient(y, [a, b, unused])
    want = tape.gradient(plain, [a, b])
    for g, w in zip(got[:2], want):
        np.testing.assert_allclose(g.numpy(), w.numpy(), rtol=1e-6)
    assert got[2] is None
    v = tf.Variable([[1.0], [2.0]])
    with tf.GradientTape() as tape:
        tape.watch(a)
        y, = runtime.recompute_in_backward(lambda x: (x @ v,), a)
    with pytest.raises(ValueError, match="pass their values instead"):
        tape.gradient(y, a)


def test_recompute_disabled_allows_second_derivatives():
    """hessian="exact" differentiates the training loss twice (`training_loss` in nested
    tapes), which a recomputing backward pass does not support: there a recomputing
    supernet traces to the very graph of the plain one, and second derivatives exist.

    (The curvature's values are not compared: through ReLUs, max pools and BN on a batch
    of 2, float32 runs of the same graph already differ.)"""
    from il_tf.learning import functional  # pylint: disable=g-import-not-at-top
    x = tf.random.normal([2, 8, 8, 3], seed=7)
    y = tf.constant([0, 1])
    sizes = []
    for recompute in supernet_lib.RECOMPUTE_MODES:
        net = supernet_lib.Supernet(channels=2, layers=1, seed=3, recompute=recompute)
        supernet_lib.build(net, (8, 8, 3))
        fn = functional.SupernetFunctions(net)
        w = tf.constant(fn.weights_layout.initial_value(net.encoder_variables))
        h = tf.constant(np.random.RandomState(8).randn(net.feature_dim * 2 + 2), tf.float32)
        alphas = [tf.convert_to_tensor(v) for v in net.architecture_variables]

        @tf.function
        def curvature(w, h, alphas, fn=fn):
            with tf.GradientTape() as outer:
                outer.watch(alphas)
                with tf.GradientTape() as inner:
                    inner.watch(w)
                    loss = fn.training_loss(w, h, alphas, x, y, 0.5)
                norm = tf.reduce_sum(tf.square(inner.gradient(loss, w)))
            return outer.gradient(norm, alphas,
                                  unconnected_gradients=tf.UnconnectedGradients.ZERO)

        result = curvature(w, h, alphas)
        assert all(np.isfinite(g.numpy()).all() for g in result)
        assert max(float(tf.reduce_max(tf.abs(g))) for g in result) > 0
        graph = curvature.get_concrete_function(w, h, alphas).graph
        sizes.append(collections.Counter(op.type for op in graph.get_operations()))
    assert all(size == sizes[0] for size in sizes[1:])


def test_unknown_recompute_mode_is_refused():
    with pytest.raises(ValueError, match="recompute must be one of"):
        supernet_lib.Supernet(channels=2, layers=1, recompute="everything")


def test_partial_channels_variant():
    net = supernet_lib.Supernet(channels=4, layers=3, partial_channels=2)
    y = net(tf.random.normal([2, 8, 8, 3]), training=True)
    assert y.shape == (2, net.feature_dim)
    assert [tuple(v.shape) for v in net.architecture_variables] == [(14, 8), (14, 8), (14,), (14,)]


def test_shared_architecture_between_supernets():
    arch = supernet_lib.Architecture(name="shared")
    a = supernet_lib.Supernet(channels=2, layers=1, architecture=arch)
    b = supernet_lib.Supernet(channels=2, layers=1, architecture=arch)
    assert a.architecture_variables[0] is b.architecture_variables[0]
