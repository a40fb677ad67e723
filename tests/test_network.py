"""Tests for il_tf.models.network: the discrete DARTS networks built from a genotype."""
import numpy as np
import pytest
import tensorflow as tf

from il_tf import runtime
from il_tf.models import network as net
from il_tf.search_space import genotypes as g
from il_tf.search_space import ops as ops_lib

TINY = dict(channels=8, layers=5)


def _tiny_cifar(**kw):
    return net.NetworkCIFAR("DARTS_V2", **{**TINY, "num_classes": 10, **kw})


# ------------------------------------------------------------------------ sizes as published

@pytest.mark.parametrize("cls, genotype, channels, layers, classes, paper, ours", [
    # DARTS (Liu et al. 2019), Table 1 and 2; PC-DARTS (Xu et al. 2020), Table 1.
    (net.NetworkCIFAR, "DARTS_V2", 36, 20, 10, 3.3e6, 3_349_342),
    (net.NetworkCIFAR, "PC_DARTS", 36, 20, 10, 3.6e6, 3_634_678),
    (net.NetworkImageNet, "DARTS_V2", 48, 14, 1000, 4.7e6, 4_718_752),
])
def test_published_parameter_counts(cls, genotype, channels, layers, classes, paper, ours):
    model = cls(genotype, channels=channels, layers=layers, num_classes=classes, auxiliary=True)
    params = net.count_parameters(model)
    assert abs(params - paper) < 0.1e6
    assert params == ours  # The exact count, so that a structural change shows up here.
    assert net.count_parameters(model, exclude_auxiliary=False) > params


def test_cell_parameters_by_hand():
    """A DARTS_V2 normal cell at C=16 after a 48-channel stem, counted by hand."""
    c = 16
    cell = net.Cell(g.DARTS_V2, 48, 48, c, reduction=False, reduction_prev=False)
    relu_conv_bn = 48 * c + 2 * c
    sep_conv_3x3 = 2 * (9 * c + c * c + 2 * c)
    dil_conv_3x3 = 9 * c + c * c + 2 * c
    expected = 2 * relu_conv_bn + 5 * sep_conv_3x3 + dil_conv_3x3  # + 2 parameter-free skips
    assert net.count_parameters(cell) == expected
    assert cell.droppable == (True, True, True, True, True, False, False, True)
    # BN moving statistics exist but are not parameters.
    assert len(cell.non_trainable_variables) == 2 * (2 + 5 * 2 + 1)


def test_darts_v2_imagenet_multiply_adds():
    """Convs and the classifier at 224x224. The paper says 574M; counting convs and linear
    layers of DARTS's own PyTorch model gives ~523-530M too (quark0/darts issue #46)."""
    model = net.NetworkImageNet("DARTS_V2", channels=48, layers=14, num_classes=1000)
    madds = net.count_multiply_adds(model, (224, 224, 3))
    assert 520e6 < madds < 600e6  # The mobile setting: under 600M.
    assert madds == 529_911_552


def test_multiply_adds_of_a_plain_conv_net():
    """The counter against a count by hand: stem conv, one cell's worth is too long, so a
    model made of the two counted kinds (conv and dense) only."""

    class Tiny(tf.keras.layers.Layer):
        def __init__(self):
            super().__init__()
            self.conv = ops_lib.Conv(4, 3, 2)
            self.dw = ops_lib.Conv(0, 3, 1, depthwise=True)
            self.dil = ops_lib.Conv(0, 3, 1, dilation=2, depthwise=True)
            self.head = net.ClassifierHead(5)

        def call(self, x, training=False):
            y = self.dil(self.dw(self.conv(x)))
            return self.head(tf.reduce_mean(y, axis=[1, 2]))

    m = Tiny()
    m(tf.zeros([1, 9, 9, 3]))
    # conv: 5x5 outputs x 4 filters x 3x3x3; depthwise and dilated: 5x5 x 4 x 3x3; dense 4x5.
    expected = 25 * 4 * 27 + 2 * 25 * 4 * 9 + 4 * 5
    assert net.count_multiply_adds(m, (9, 9, 3)) == expected


# ------------------------------------------------------------------------- the call contract

@pytest.mark.parametrize("auxiliary", [False, True])
def test_cifar_output_shapes(auxiliary):
    model = _tiny_cifar(auxiliary=auxiliary)
    x = tf.random.normal([2, 32, 32, 3])
    logits = model(x, training=False)
    assert logits.shape == (2, 10) and logits.dtype == tf.float32
    out = model(x, training=True)
    if auxiliary:
        logits, aux_logits = out
        assert logits.shape == (2, 10) and aux_logits.shape == (2, 10)
    else:
        assert out.shape == (2, 10)
    assert model.feature_dim == 4 * 4 * TINY["channels"]


def test_imagenet_output_shapes():
    model = net.NetworkImageNet("DARTS_V2", **TINY, num_classes=7, auxiliary=True)
    logits, aux_logits = model(tf.random.normal([1, 224, 224, 3]), training=True)
    assert logits.shape == (1, 7) and aux_logits.shape == (1, 7)
    assert model(tf.random.normal([2, 224, 224, 3]), training=False).shape == (2, 7)
    # Global pooling serves smaller images in inference (the auxiliary head needs 224).
    assert model(tf.random.normal([2, 64, 64, 3]), training=False).shape == (2, 7)


def test_weights_exist_before_any_call_auxiliary_head_included():
    model = _tiny_cifar(auxiliary=True)
    assert model.auxiliary_variables
    n_all = len(model.trainable_variables)
    assert len(model.main_variables) + len(model.auxiliary_variables) == n_all
    model(tf.zeros([1, 32, 32, 3]), training=True)
    assert len(model.trainable_variables) == n_all  # The call created nothing new.
    assert _tiny_cifar(auxiliary=False).auxiliary_variables == []


def test_genotype_by_name_path_or_value(tmp_path):
    path = g.PC_DARTS.save(tmp_path / "genotype.json")
    for spec in ("pc-darts", path, str(tmp_path), g.PC_DARTS):
        assert net.NetworkCIFAR(spec, **TINY, num_classes=3).genotype == g.PC_DARTS


def test_config_round_trip():
    model = _tiny_cifar(auxiliary=True, drop_path_prob=0.3)
    clone = net.NetworkCIFAR.from_config(model.get_config())
    assert clone.genotype == model.genotype and clone.drop_path_prob == pytest.approx(0.3)
    assert net.count_parameters(clone, False) == net.count_parameters(model, False)


# ---------------------------------------------------------------------------------- drop path

def test_drop_path_changes_training_outputs_not_inference():
    x = tf.random.normal([4, 32, 32, 3], seed=1)
    model = _tiny_cifar()
    # Training calls would move the BN statistics, and with them the inference output.
    with runtime.moving_statistics_frozen():
        infer = model(x, training=False)
        train = model(x, training=True)
        model.drop_path_prob = 0.5
        np.testing.assert_array_equal(model(x, training=False), infer)
        assert not np.allclose(model(x, training=True), train, rtol=1e-3, atol=1e-3)
        model.drop_path_prob = 0.0  # At 0 drop path is the identity: training is deterministic.
        np.testing.assert_allclose(model(x, training=True), train, rtol=1e-5, atol=1e-5)


def test_drop_path_statistics():
    x = tf.ones([20000, 1, 1, 1])
    y = net.drop_path(x, tf.constant(0.25), tf.constant([0, 7], tf.int64)).numpy().ravel()
    assert set(np.unique(y)) <= {0.0, np.float32(1 / 0.75)}
    assert abs((y == 0).mean() - 0.25) < 0.02
    assert abs(y.mean() - 1.0) < 0.03


def test_drop_path_prob_is_read_by_a_traced_step_without_retrace():
    model = _tiny_cifar(auxiliary=True)
    x = tf.random.normal([4, 32, 32, 3])
    traces = []

    @tf.function
    def step(images):
        traces.append(1)
        logits, _ = model(images, training=True)
        return logits

    outputs = []
    for p in (0.0, 0.0, 0.6):
        model.drop_path_prob = p
        tf.random.set_seed(0)
        outputs.append(step(x).numpy())
    assert len(traces) == 1
    np.testing.assert_allclose(outputs[0], outputs[1], rtol=1e-5, atol=1e-5)
    assert not np.allclose(outputs[0], outputs[2])


def test_drop_path_prob_is_validated():
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        _tiny_cifar(drop_path_prob=1.0)


# ------------------------------------------------------------------------------ gradient flow

def test_every_weight_gets_a_gradient():
    """The main loss reaches every main weight; the auxiliary head only through its loss."""
    model = _tiny_cifar(auxiliary=True)
    x = tf.random.normal([4, 32, 32, 3])
    labels = tf.constant([0, 1, 2, 3])
    ce = tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    with tf.GradientTape(persistent=True) as tape:
        logits, aux_logits = model(x, training=True)
        main_loss = ce(labels, logits)
        aux_loss = ce(labels, aux_logits)
    grads = tape.gradient(main_loss, model.main_variables)
    for v, grad in zip(model.main_variables, grads):
        assert grad is not None and np.any(grad.numpy() != 0), v.path
    assert all(gr is None for gr in tape.gradient(main_loss, model.auxiliary_variables))
    aux_grads = tape.gradient(aux_loss, model.auxiliary_variables)
    assert all(gr is not None and np.any(gr.numpy() != 0) for gr in aux_grads)
