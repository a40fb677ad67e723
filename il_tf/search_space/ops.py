"""The eight DARTS primitives as Keras layers, in one name -> constructor registry.

Everything here follows quark0/darts `cnn/operations.py` to the pixel, in NHWC:
- ReLU -> conv -> BN order; a separable conv is applied twice; BatchNorm has PyTorch's
  momentum 0.1 (Keras momentum 0.9) and eps 1e-5.
- PyTorch pads stride-2 windows (1, 1) where TF's "same" pads (0, 1); every stride-2 op here
  pads explicitly so the windows sit where DARTS's do.
- A stride-2 dilated conv reads only even pixels (DARTS's paddings equal the dilation times
  the half kernel), so it is computed exactly as "subsample, then the undilated conv":
  4x cheaper than stride 1 + subsample, and TF refuses stride 2 with dilation 2 anyway.
- Weights start as PyTorch's default (uniform +-1/sqrt(fan_in)).
The ops are plain TF inside Keras layers: fewer graph nodes per op than stacks of Keras
layers, which is what the search step's trace time is made of.
"""
import contextlib
from typing import Callable, Dict

import keras
import tensorflow as tf

from il_tf import runtime

# The DARTS primitive order. Alphas have one column per entry, in this order.
PRIMITIVES = (
    "none",
    "max_pool_3x3",
    "avg_pool_3x3",
    "skip_connect",
    "sep_conv_3x3",
    "sep_conv_5x5",
    "dil_conv_3x3",
    "dil_conv_5x5",
)

# PyTorch's default init for conv and linear weights: kaiming_uniform(a=sqrt(5)), which is
# uniform(-1/sqrt(fan_in), 1/sqrt(fan_in)).
def torch_default_init():
    return keras.initializers.VarianceScaling(1.0 / 3.0, "fan_in", "uniform")


def _pads(p):
    return [[0, 0], [p, p], [p, p], [0, 0]]


class Composite(keras.layers.Layer):
    """A layer made only of other layers, which build themselves when first called.

    Keras builds a layer without a `build` method by tracing its `call` symbolically, and
    for nested layers that retraces every subtree: 55 s for a small supernet. Declaring the
    composite built and letting the leaves build on their first call avoids all of that.
    """

    # The nonlinearity in front of every conv: DARTS's ReLU. Ops that start with it take
    # `activated=True` for an input it was already applied to (the supernet applies it once
    # for all the edges that read a state). An attribute, not a bare call, so that a layer
    # built inside `kink_free()` can have a smooth one instead.
    activation = staticmethod(tf.nn.relu)

    def __init__(self, **kw):
        super().__init__(**kw)
        if _KINK_FREE[-1]:
            self.activation = _soft_relu

    def build(self, input_shape=None):
        self.built = True


# Whether layers constructed now are the kink-free twin (`kink_free`).
_KINK_FREE = [False]


def _soft_relu(x):
    """softplus(4x)/4: within 0.17 of ReLU everywhere, and twice differentiable."""
    return tf.nn.softplus(4.0 * x) / 4.0


@contextlib.contextmanager
def kink_free():
    """Within this context (at construction) the ops are a kink-free twin of DARTS's: every
    ReLU is softplus(4x)/4 and max pooling is average pooling. For tests; the library never
    enters it.

    The DARTS loss has kinks (a ReLU input at 0, a tie in a max-pool window) where its
    gradient jumps. The second-order hypergradient (PAPER.md eq. 4) differences gradients at
    theta +- eps v, so an activation that float32 rounding puts on the other side of a kink
    in one computation but not in another changes it by percents; which side it lands on
    depends on the CPU's kernels, the batch split and the thread count. The twin's loss is
    twice differentiable, so results that must agree (two replicas against one, finite
    differences against the exact derivative) agree to float32 rounding there. Everything
    else (shapes, weights, BN, the supernet's batching of edges) is the real op's.
    PC-DARTS's bypass (`partial_channels` > 1) keeps its max pooling.
    """
    _KINK_FREE.append(True)
    try:
        yield
    finally:
        _KINK_FREE.pop()


def moving_average(moving, batch, momentum):
    """The moving statistics after one batch: PyTorch's running-stat update, with Keras's
    momentum (the weight of the old value; PyTorch's momentum is 1 - this)."""
    return moving - (moving - batch) * (1.0 - momentum)


class BatchNorm(keras.layers.Layer):
    """BatchNorm on NHWC with PyTorch's defaults, as one fused op.

    `affine=False` is DARTS's supernet BN (no scale/offset). Moving statistics use the
    "mean" aggregation so that every replica of a MirroredStrategy may update them.
    """

    def __init__(self, affine: bool = True, momentum: float = 0.9, epsilon: float = 1e-5, **kw):
        super().__init__(**kw)
        self.affine, self.momentum, self.epsilon = affine, momentum, epsilon

    def build(self, input_shape):
        c = int(input_shape[-1])
        if self.affine:
            self.gamma = self.add_weight(shape=(c,), initializer="ones", name="gamma")
            self.beta = self.add_weight(shape=(c,), initializer="zeros", name="beta")
        self.moving_mean = self.add_weight(
            shape=(c,), initializer="zeros", trainable=False, name="moving_mean",
            aggregation="mean", autocast=False)
        self.moving_variance = self.add_weight(
            shape=(c,), initializer="ones", trainable=False, name="moving_variance",
            aggregation="mean", autocast=False)

    def call(self, x, training=False):
        c = x.shape[-1]
        if self.affine:
            scale, offset = tf.cast(self.gamma, tf.float32), tf.cast(self.beta, tf.float32)
        else:
            scale = runtime.shared_constant(("ones", c), lambda: tf.ones([c], tf.float32))
            offset = runtime.shared_constant(("zeros", c), lambda: tf.zeros([c], tf.float32))
        if training:
            empty = runtime.shared_constant("empty", lambda: tf.constant([], tf.float32))
            # Float32 takes the first version of the op: the gradient tape makes a zero
            # gradient for each of V3's five extra outputs, but not for V1's (whose gradient
            # is declared to ignore them): 865 fewer nodes to trace in the search's pass
            # at C=8, 5 cells, for the same kernel. V1 has no half-precision inputs.
            batch_norm = (tf.raw_ops.FusedBatchNorm if x.dtype == tf.float32
                          else tf.raw_ops.FusedBatchNormV3)
            y, mean, var = batch_norm(x=x, scale=scale, offset=offset, mean=empty,
                                      variance=empty, epsilon=self.epsilon,
                                      is_training=True)[:3]
            mode = runtime.moving_statistics_mode()  # set by the caller's trace
            if mode == "average":
                self.moving_mean.assign(moving_average(self.moving_mean, mean, self.momentum))
                self.moving_variance.assign(
                    moving_average(self.moving_variance, var, self.momentum))
            elif mode == "batch":
                self.moving_mean.assign(mean)
                self.moving_variance.assign(var)
            return y
        y, _, _ = tf.compat.v1.nn.fused_batch_norm(
            x, scale, offset, mean=self.moving_mean, variance=self.moving_variance,
            epsilon=self.epsilon, is_training=False)
        return y

    def get_config(self):
        return {**super().get_config(), "affine": self.affine, "momentum": self.momentum,
                "epsilon": self.epsilon}


class Conv(keras.layers.Layer):
    """A bias-free conv, optionally depthwise; explicit symmetric padding as PyTorch's.

    `groups` > 1 splits the channels into independent blocks (a grouped conv), which is how
    the supernet runs one primitive for several edges in a single op. Grouped convs are
    1x1 here and run as one batched matmul: TF's grouped Conv2D has no gradient on CPUs
    without oneDNN ("Gradients for grouped convolutions are not supported on CPU"). Where
    oneDNN is on, the matmul was as fast or faster (forward + backward, 16x16x16 images,
    8 groups: 2.7 vs 2.6 ms at 8 channels per group, 3.0 vs 6.8 ms at 16).
    """

    def __init__(self, filters: int, kernel_size: int, stride: int = 1, dilation: int = 1,
                 depthwise: bool = False, groups: int = 1, **kw):
        super().__init__(**kw)
        if groups > 1 and (kernel_size != 1 or stride != 1):
            raise ValueError(f"Grouped convs are 1x1 with stride 1 (the supernet's pointwise "
                             f"convs); got kernel_size={kernel_size}, stride={stride}.")
        self.filters, self.kernel_size, self.stride = filters, kernel_size, stride
        self.dilation, self.depthwise, self.groups = dilation, depthwise, groups

    def build(self, input_shape):
        c_in = int(input_shape[-1])
        k = self.kernel_size
        shape = (k, k, c_in, 1) if self.depthwise else (k, k, c_in // self.groups, self.filters)
        # PyTorch's init bound uses the fan-in of one group, as a grouped nn.Conv2d does.
        self.kernel = self.add_weight(shape=shape, initializer=torch_default_init(), name="kernel")

    def call(self, x):
        pad = self.dilation * (self.kernel_size - 1) // 2
        kernel = tf.cast(self.kernel, x.dtype)
        strides = [1, self.stride, self.stride, 1]
        if self.depthwise:
            if self.dilation > 1:  # tf.nn's dilated path needs "SAME"; stride is 1 here.
                return tf.nn.depthwise_conv2d(x, kernel, strides, "SAME",
                                              dilations=[self.dilation] * 2)
            # The raw op: tf.nn's wrapper adds shape and dilation constants at every call.
            return tf.raw_ops.DepthwiseConv2dNative(
                input=x, filter=kernel, strides=strides, padding="EXPLICIT",
                explicit_paddings=[0, 0, pad, pad, pad, pad, 0, 0])
        if self.kernel_size == 1 and self.stride == 1:
            if self.groups > 1:
                return self._grouped_pointwise(x, kernel)
            return tf.nn.conv2d(x, kernel, 1, "VALID")
        return tf.nn.conv2d(x, kernel, strides, _pads(pad), dilations=self.dilation)

    def _grouped_pointwise(self, x, kernel):
        """Conv2D(groups=G) with a 1x1 kernel as a batched matmul over the G blocks.

        Block g reads input channels [g*Ci, (g+1)*Ci) and writes output channels
        [g*Co, (g+1)*Co) with kernel[0, 0, :, g*Co:(g+1)*Co], as tf.nn.conv2d's groups do.
        """
        g = self.groups
        h, w, c_in = x.shape[1], x.shape[2], x.shape[3] // g
        c_out = self.filters // g
        # Shapes and the permutation as shared constants: a grouped conv runs in every mixed
        # op, twice per trace with recomputation (1,300 Const nodes otherwise).
        shape = lambda *dims: runtime.shared_constant(("shape", dims), lambda: tf.constant(dims))
        swap = runtime.shared_constant("swap_01", lambda: tf.constant([1, 0, 2]))
        blocks = tf.transpose(tf.reshape(x, shape(-1, g, c_in)), swap)          # (G, BHW, Ci)
        weights = tf.transpose(tf.reshape(kernel, shape(c_in, g, c_out)), swap)  # (G, Ci, Co)
        y = tf.transpose(tf.matmul(blocks, weights), swap)                       # (BHW, G, Co)
        return tf.reshape(y, shape(-1, h, w, g * c_out))

    def get_config(self):
        return {**super().get_config(), "filters": self.filters, "kernel_size": self.kernel_size,
                "stride": self.stride, "dilation": self.dilation, "depthwise": self.depthwise,
                "groups": self.groups}


class ReLUConvBN(Composite):
    """ReLU -> conv -> BN (DARTS's ReLUConvBN: cell preprocessing and the like)."""

    def __init__(self, filters: int, kernel_size: int = 1, stride: int = 1,
                 affine: bool = True, **kw):
        super().__init__(**kw)
        self.conv = Conv(filters, kernel_size, stride)
        self.bn = BatchNorm(affine)

    def call(self, x, training=False):
        return self.bn(self.conv(self.activation(x)), training=training)


class DilConv(Composite):
    """ReLU -> depthwise conv (dilated) -> 1x1 conv -> BN."""

    def __init__(self, filters: int, kernel_size: int, stride: int, dilation: int = 2,
                 affine: bool = True, groups: int = 1, **kw):
        super().__init__(**kw)
        self.stride = stride
        # With stride 2 the dilated taps land on even pixels only: subsample, then an undilated
        # conv of the same kernel size is the same function (see the module docstring).
        self.depthwise = Conv(0, kernel_size, 1, 1 if stride == 2 else dilation, depthwise=True)
        self.pointwise = Conv(filters, 1, groups=groups)
        self.bn = BatchNorm(affine)

    def call(self, x, training=False, activated=False):
        if not activated:
            x = self.activation(x)
        if self.stride == 2:
            x = x[:, ::2, ::2, :]
        return self.bn(self.pointwise(self.depthwise(x)), training=training)


class SepConv(Composite):
    """DARTS's separable conv: (ReLU -> depthwise -> 1x1 -> BN) twice, stride on the first."""

    def __init__(self, filters: int, kernel_size: int, stride: int, affine: bool = True,
                 groups: int = 1, **kw):
        super().__init__(**kw)
        self.dw1 = Conv(0, kernel_size, stride, depthwise=True)
        self.pw1 = Conv(filters, 1, groups=groups)
        self.bn1 = BatchNorm(affine)
        self.dw2 = Conv(0, kernel_size, 1, depthwise=True)
        self.pw2 = Conv(filters, 1, groups=groups)
        self.bn2 = BatchNorm(affine)

    def call(self, x, training=False, activated=False):
        if not activated:
            x = self.activation(x)
        x = self.bn1(self.pw1(self.dw1(x)), training=training)
        return self.bn2(self.pw2(self.dw2(self.activation(x))), training=training)


class FactorizedReduce(Composite):
    """Halves the resolution with two 1x1 convs on even and odd pixels, concatenated.

    With `groups` = G the channels are G independent blocks, each reduced as above; each
    block's output is [its conv1 half, its conv2 half].
    """

    def __init__(self, filters: int, affine: bool = True, groups: int = 1, **kw):
        super().__init__(**kw)
        if filters % (2 * groups):
            raise ValueError(f"FactorizedReduce needs channels divisible by 2 x groups, got "
                             f"{filters} and {groups} groups.")
        self.groups = groups
        self.conv1 = Conv(filters // 2, 1, groups=groups)
        self.conv2 = Conv(filters // 2, 1, groups=groups)
        self.bn = BatchNorm(affine)

    def call(self, x, training=False, activated=False):
        if not activated:
            x = self.activation(x)
        a, b = self.conv1(x[:, ::2, ::2, :]), self.conv2(x[:, 1::2, 1::2, :])
        if self.groups == 1:
            y = tf.concat([a, b], axis=-1)
        else:  # Interleave per block: [a_1, b_1, a_2, b_2, ...].
            g, h, w, c = self.groups, a.shape[1], a.shape[2], a.shape[3] // self.groups
            y = tf.reshape(tf.concat([tf.reshape(a, [-1, h, w, g, c]),
                                      tf.reshape(b, [-1, h, w, g, c])], axis=-1),
                           [-1, h, w, 2 * g * c])
        return self.bn(y, training=training)


class Identity(Composite):
    def call(self, x, training=False):
        return x


class Zero(Composite):
    """DARTS's `none`. Mixed ops skip it (its output is zero whatever its weight)."""

    def __init__(self, stride: int = 1, **kw):
        super().__init__(**kw)
        self.stride = stride

    def call(self, x, training=False):
        return tf.zeros_like(x[:, :: self.stride, :: self.stride, :])


class Pool(Composite):
    """3x3 max or average pooling (DARTS's: pad 1, average over valid pixels only).

    In the supernet DARTS follows pooling with an affine-free BN (`bn=True`).
    """

    def __init__(self, kind: str, stride: int, bn: bool = False, **kw):
        super().__init__(**kw)
        if kind not in ("max", "avg"):
            raise ValueError(f"Pool kind must be 'max' or 'avg', got {kind!r}.")
        self.kind, self.stride = "avg" if _KINK_FREE[-1] else kind, stride
        self.bn = BatchNorm(affine=False) if bn else None

    def call(self, x, training=False):
        if self.stride == 1:  # "SAME" at stride 1 is PyTorch's symmetric pad of 1.
            pool = tf.nn.max_pool2d if self.kind == "max" else tf.nn.avg_pool2d
            y = pool(x, 3, 1, "SAME")
        elif self.kind == "max":  # Pad with the lowest value, then pool (XLA-compilable).
            y = tf.nn.max_pool2d(tf.pad(x, _pads(1), constant_values=x.dtype.min), 3, 2, "VALID")
        else:
            # Zero-padded sum over the window divided by the number of real pixels in it
            # (count_include_pad=False); the count map is a constant of the static shape.
            ones = tf.ones([1, x.shape[1], x.shape[2], 1], x.dtype)
            y = (tf.nn.avg_pool2d(tf.pad(x, _pads(1)), 3, 2, "VALID")
                 / tf.nn.avg_pool2d(tf.pad(ones, _pads(1)), 3, 2, "VALID"))
        return self.bn(y, training=training) if self.bn is not None else y


# name -> constructor(channels, stride, affine, supernet, groups). `groups` = G builds G
# independent copies working on G channel blocks of `channels` each (ops without weights
# ignore it: they are channel-wise anyway).
OPS: Dict[str, Callable[..., keras.layers.Layer]] = {
    "none": lambda c, stride, affine, supernet=False, g=1: Zero(stride),
    "max_pool_3x3": lambda c, stride, affine, supernet=False, g=1: Pool("max", stride, supernet),
    "avg_pool_3x3": lambda c, stride, affine, supernet=False, g=1: Pool("avg", stride, supernet),
    "skip_connect": lambda c, stride, affine, supernet=False, g=1: (
        Identity() if stride == 1 else FactorizedReduce(c * g, affine, g)),
    "sep_conv_3x3": lambda c, stride, affine, supernet=False, g=1: SepConv(c * g, 3, stride,
                                                                           affine, g),
    "sep_conv_5x5": lambda c, stride, affine, supernet=False, g=1: SepConv(c * g, 5, stride,
                                                                           affine, g),
    "dil_conv_3x3": lambda c, stride, affine, supernet=False, g=1: DilConv(c * g, 3, stride, 2,
                                                                           affine, g),
    "dil_conv_5x5": lambda c, stride, affine, supernet=False, g=1: DilConv(c * g, 5, stride, 2,
                                                                           affine, g),
}
assert tuple(OPS) == PRIMITIVES

# Ops whose output is the same for every edge that reads the same input in the supernet:
# no weights, and an affine-free BN in training mode normalises identical inputs identically
# (its moving averages see identical batches too).
SHARED_IN_SUPERNET = ("max_pool_3x3", "avg_pool_3x3")


def make_op(name: str, channels: int, stride: int, affine: bool, supernet: bool = False,
            groups: int = 1):
    """Builds primitive `name` (one of PRIMITIVES) with `channels` in and out (per group)."""
    if name not in OPS:
        raise ValueError(f"Unknown op {name!r}; known ops: {', '.join(PRIMITIVES)}.")
    return OPS[name](channels, stride, affine, supernet, groups)
