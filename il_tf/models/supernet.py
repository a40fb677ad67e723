"""The DARTS supernet as the shared encoder of interleaving learning.

`MixedOp` -> `SearchCell` -> `Supernet`, as quark0/darts `model_search.py` splits them: the
supernet owns no alphas itself but holds an `Architecture` layer (the alphas, and PC-DARTS's
edge betas); it computes the softmax weights once per call and hands them to the cells, which
hold no architecture state. Several supernets (one per learner) can share one `Architecture`,
which is how the K learners of interleaving learning share A while keeping their own W_k.

The supernet ends in global average pooling and returns features; classification heads are
separate layers (`ClassifierHead`), one per learner.
"""
from typing import List, Optional, Sequence

import keras
import numpy as np
import tensorflow as tf

from il_tf.search_space import ops as ops_lib

NUM_INPUT_NODES = 2


def num_edges(steps: int = 4) -> int:
    """Edges of a cell with `steps` intermediate nodes: node i has i + 2 inputs (14 for 4)."""
    return sum(NUM_INPUT_NODES + i for i in range(steps))


def channel_shuffle(x, groups: int):
    """PC-DARTS's channel shuffle in NHWC: interleaves `groups` channel groups."""
    h, w, c = x.shape[1], x.shape[2], x.shape[3]
    x = tf.reshape(x, [-1, h, w, groups, c // groups])
    x = tf.transpose(x, [0, 1, 2, 4, 3])
    return tf.reshape(x, [-1, h, w, c])


class Architecture(keras.layers.Layer):
    """The architecture parameters A: alphas (and PC-DARTS betas) of normal and reduce cells.

    Initialised as 1e-3 * N(0, 1), as DARTS does. `edge_normalization` adds the betas.
    """

    def __init__(self, steps: int = 4, num_ops: int = len(ops_lib.PRIMITIVES),
                 edge_normalization: bool = False, seed: Optional[int] = None, **kw):
        super().__init__(**kw)
        self.steps, self.num_ops, self.edge_normalization = steps, num_ops, edge_normalization
        e = num_edges(steps)
        init = keras.initializers.RandomNormal(stddev=1e-3, seed=seed)
        # A is updated identically on every replica (from all-reduced gradients).
        kw = dict(initializer=init, autocast=False, aggregation="only_first_replica")
        self.alphas_normal = self.add_weight(shape=(e, num_ops), name="alphas_normal", **kw)
        self.alphas_reduce = self.add_weight(shape=(e, num_ops), name="alphas_reduce", **kw)
        if edge_normalization:
            self.betas_normal = self.add_weight(shape=(e,), name="betas_normal", **kw)
            self.betas_reduce = self.add_weight(shape=(e,), name="betas_reduce", **kw)
        self.built = True

    def _edge_weights(self, betas):
        """Per node, softmax of the betas over that node's incoming edges (PC-DARTS)."""
        out, start = [], 0
        for i in range(self.steps):
            n = NUM_INPUT_NODES + i
            out.append(tf.nn.softmax(betas[start:start + n]))
            start += n
        return tf.concat(out, axis=0)

    def call(self, dtype=tf.float32):
        """Returns {normal, reduce}: (op weights as E lists of num_ops scalars, edge weights as
        a list of E scalars or None)."""
        result = {}
        for kind in ("normal", "reduce"):
            alphas = getattr(self, f"alphas_{kind}")
            # Unstacked once here so that the cells index Python lists, not tensors: one op
            # per row instead of a strided slice per use.
            op_w = [tf.unstack(row) for row in
                    tf.unstack(tf.cast(tf.nn.softmax(alphas, axis=-1), dtype))]
            edge_w = None
            if self.edge_normalization:
                edge_w = tf.unstack(
                    tf.cast(self._edge_weights(getattr(self, f"betas_{kind}")), dtype))
            result[kind] = (op_w, edge_w)
        return result

    def numpy_alphas(self):
        """(alphas_normal, alphas_reduce, betas_normal or None, betas_reduce or None) as numpy."""
        betas = ((self.betas_normal.numpy(), self.betas_reduce.numpy())
                 if self.edge_normalization else (None, None))
        return (self.alphas_normal.numpy(), self.alphas_reduce.numpy()) + betas

    def get_config(self):
        return {**super().get_config(), "steps": self.steps, "num_ops": self.num_ops,
                "edge_normalization": self.edge_normalization}


class MixedOp(ops_lib.Composite):
    """One edge: the weighted sum of every primitive applied to the input (DARTS eq. 2).

    With `partial_channels` = k > 1 (PC-DARTS) only the first C/k channels go through the
    ops; the rest bypass them (max-pooled on stride 2) and the result is channel-shuffled.
    `none` is not computed: its output is zero whatever its weight.
    """

    def __init__(self, channels: int, stride: int, partial_channels: int = 1, **kw):
        super().__init__(**kw)
        self.stride, self.k = stride, partial_channels
        if channels % partial_channels:
            raise ValueError(f"channels ({channels}) must be divisible by partial_channels "
                             f"({partial_channels}).")
        c = channels // partial_channels
        self.op_indices = [i for i, name in enumerate(ops_lib.PRIMITIVES) if name != "none"]
        self.ops = [ops_lib.make_op(ops_lib.PRIMITIVES[i], c, stride, affine=False, supernet=True)
                    for i in self.op_indices]

    def call(self, x, op_weights, training=False):
        if self.k > 1:
            c = x.shape[-1] // self.k
            x, rest = x[..., :c], x[..., c:]
        y = tf.add_n([op_weights[i] * op(x, training=training)
                      for i, op in zip(self.op_indices, self.ops)])
        if self.k > 1:
            if self.stride == 2:
                rest = tf.nn.max_pool2d(rest, 2, 2, "VALID")
            y = channel_shuffle(tf.concat([y, rest], axis=-1), self.k)
        return y


class SearchCell(ops_lib.Composite):
    """A DARTS search cell: 2 input nodes, `steps` intermediate nodes, concat of the last
    `multiplier` nodes. Input i of node j is edge number sum_{j'<j}(j'+2) + i."""

    def __init__(self, steps: int, multiplier: int, channels: int, reduction: bool,
                 reduction_prev: bool, partial_channels: int = 1, **kw):
        super().__init__(**kw)
        self.steps, self.multiplier, self.reduction = steps, multiplier, reduction
        self.preprocess0 = (ops_lib.FactorizedReduce(channels, affine=False) if reduction_prev
                            else ops_lib.ReLUConvBN(channels, 1, 1, affine=False))
        self.preprocess1 = ops_lib.ReLUConvBN(channels, 1, 1, affine=False)
        self.edges = []
        for i in range(steps):
            for j in range(NUM_INPUT_NODES + i):
                stride = 2 if reduction and j < NUM_INPUT_NODES else 1
                self.edges.append(MixedOp(channels, stride, partial_channels))

    def call(self, s0, s1, op_weights, edge_weights=None, training=False):
        states = [self.preprocess0(s0, training=training),
                  self.preprocess1(s1, training=training)]
        offset = 0
        for _ in range(self.steps):
            terms = []
            for j, h in enumerate(states):
                e = offset + j
                out = self.edges[e](h, op_weights[e], training=training)
                terms.append(out if edge_weights is None else edge_weights[e] * out)
            offset += len(states)
            states.append(tf.add_n(terms))
        return tf.concat(states[-self.multiplier:], axis=-1)


class Supernet(keras.Model):
    """The shared encoder: stem, `layers` search cells (reductions at 1/3 and 2/3), pooling.

    Args:
      channels: C, the first stage's channels per node (DARTS search: 16).
      layers: number of cells (DARTS search: 8).
      steps: intermediate nodes per cell (4).
      multiplier: nodes concatenated into the cell output (4).
      stem_multiplier: stem width in units of C (3).
      partial_channels: PC-DARTS's k; 1 disables partial-channel sampling.
      edge_normalization: PC-DARTS's edge betas; default follows `partial_channels > 1`.
      architecture: an `Architecture` to share with other supernets; a new one by default.
      seed: initialisation seed for the alphas.
    """

    def __init__(self, channels: int = 16, layers: int = 8, steps: int = 4, multiplier: int = 4,
                 stem_multiplier: int = 3, partial_channels: int = 1,
                 edge_normalization: Optional[bool] = None,
                 architecture: Optional[Architecture] = None, seed: Optional[int] = None,
                 **kw):
        super().__init__(**kw)
        if edge_normalization is None:
            edge_normalization = partial_channels > 1
        self.config_ = dict(channels=channels, layers=layers, steps=steps, multiplier=multiplier,
                            stem_multiplier=stem_multiplier, partial_channels=partial_channels,
                            edge_normalization=edge_normalization)
        self.architecture = architecture or Architecture(
            steps, edge_normalization=edge_normalization, seed=seed, name="architecture")
        if self.architecture.edge_normalization != edge_normalization:
            raise ValueError("The shared Architecture's edge_normalization does not match.")
        c_curr = stem_multiplier * channels
        self.stem_conv = ops_lib.Conv(c_curr, 3)
        self.stem_bn = ops_lib.BatchNorm(affine=True)
        c_p, c_curr = c_curr, channels
        self.cells = []
        reduction_prev = False
        for i in range(layers):
            reduction = i in (layers // 3, 2 * layers // 3)
            if reduction:
                c_curr *= 2
            self.cells.append(SearchCell(steps, multiplier, c_curr, reduction, reduction_prev,
                                         partial_channels, name=f"cell_{i}"))
            reduction_prev = reduction
            c_p = multiplier * c_curr
        self.feature_dim = c_p

    def build(self, input_shape=None):
        self.built = True  # See ops_lib.Composite: the layers build on their first call.

    def call(self, images, training=False):
        weights = self.architecture(dtype=self.compute_dtype)
        s0 = s1 = self.stem_bn(self.stem_conv(images), training=training)
        for cell in self.cells:
            op_w, edge_w = weights["reduce" if cell.reduction else "normal"]
            s0, s1 = s1, cell(s0, s1, op_w, edge_w, training=training)
        return tf.reduce_mean(s1, axis=[1, 2])

    # Variable groups (never found by name): see DESIGN.md's invariants.
    @property
    def architecture_variables(self) -> List[keras.Variable]:
        return list(self.architecture.trainable_variables)

    @property
    def encoder_variables(self) -> List[keras.Variable]:
        """Trainable encoder weights W (stem, preprocessing, mixed ops); alphas excluded."""
        arch = {id(v) for v in self.architecture_variables}
        return [v for v in self.trainable_variables if id(v) not in arch]

    @property
    def encoder_state(self) -> List[keras.Variable]:
        """Everything handed over between learners: W and the BN moving statistics."""
        return self.encoder_variables + list(self.non_trainable_variables)

    def get_config(self):
        return dict(self.config_)


class ClassifierHead(keras.layers.Layer):
    """A learner's head H_k: the dense layer after global pooling (DARTS's `classifier`)."""

    def __init__(self, num_classes: int, **kw):
        super().__init__(**kw)
        self.num_classes = num_classes

    def build(self, input_shape):
        fan_in = int(input_shape[-1])
        self.kernel = self.add_weight(shape=(fan_in, self.num_classes),
                                      initializer=ops_lib.torch_default_init(), name="kernel")
        bound = 1.0 / np.sqrt(fan_in)
        self.bias = self.add_weight(shape=(self.num_classes,), name="bias",
                                    initializer=keras.initializers.RandomUniform(-bound, bound))

    def call(self, features):
        return self.apply_weights(features, self.kernel, self.bias)

    @staticmethod
    def apply_weights(features, kernel, bias):
        """The head as a function of explicit weights (used by traced gradient passes)."""
        logits = tf.matmul(features, tf.cast(kernel, features.dtype)) + tf.cast(bias, features.dtype)
        return tf.cast(logits, tf.float32)

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes}


def build(model: keras.layers.Layer, image_shape: Sequence[int]):
    """Creates a model's variables by calling it once on zeros of `image_shape` (H, W, C)."""
    model(tf.zeros([1, *image_shape]), training=False)
    return model
