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
from il_tf import runtime
from il_tf.search_space import ops as ops_lib

NUM_INPUT_NODES = 2

# What the backward pass recomputes instead of keeping (`Supernet`'s `recompute`).
RECOMPUTE_MODES = ("none", "ops", "edges", "cells")


def num_edges(steps: int = 4) -> int:
    """Edges of a cell with `steps` intermediate nodes: node i has i + 2 inputs (14 for 4)."""
    return sum(NUM_INPUT_NODES + i for i in range(steps))


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
        """Returns {normal, reduce}: (op weights (E, num_ops), edge weights (E,) or None)."""
        result = {}
        for kind in ("normal", "reduce"):
            alphas = getattr(self, f"alphas_{kind}")
            op_w = tf.cast(tf.nn.softmax(alphas, axis=-1), dtype)
            edge_w = None
            if self.edge_normalization:
                edge_w = tf.cast(self._edge_weights(getattr(self, f"betas_{kind}")), dtype)
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


def edge_index(node: int, source: int) -> int:
    """DARTS's edge order: input `source` of intermediate node `node`."""
    return sum(NUM_INPUT_NODES + i for i in range(node)) + source


def channel_shuffle(x, groups: int):
    """PC-DARTS's channel shuffle (interleaves `groups` channel groups) on the last axis."""
    shape = tf.shape(x)
    c = x.shape[-1]
    y = tf.reshape(x, tf.concat([shape[:-1], [groups, c // groups]], 0))
    y = tf.linalg.matrix_transpose(y)
    return tf.reshape(y, tf.concat([shape[:-1], [c]], 0))


class MixedOp(ops_lib.Composite):
    """The mixed ops of every edge that leaves a set of states (DARTS eq. 2, batched).

    DARTS computes each of a cell's 14 edges on its own: 8 ops x 14 edges of small tensors,
    a graph of tens of thousands of nodes per pass. The edges that read the same states are
    independent, so this layer runs them together: each primitive with weights runs once,
    as a grouped op over the input tiled once per edge (`ops.make_op(..., groups=E)`); the
    weight-free ops (pooling + affine-free BN, identity) give the same output for every edge
    and run once per source. The result is the exact DARTS mixture for every edge.

    `sources` states (same shape) each feed `num_edges` edges; with `partial_channels` = k
    (PC-DARTS) only the first C/k channels go through the ops, the rest bypass them
    (max-pooled on stride 2) and each edge's result is channel-shuffled.
    `none` is not computed: its output is zero whatever its weight.
    With `recompute`, each grouped op keeps only its input and output for the backward pass
    and recomputes its inside there (`runtime.call_recomputed`); see `Supernet`.

    Call: (states list, op weights (sources, edges, num_ops)) -> (B, H, W, sources, edges, C).
    """

    def __init__(self, channels: int, stride: int, sources: int, num_edges: int,
                 partial_channels: int = 1, recompute: bool = False, **kw):
        super().__init__(**kw)
        self.recompute = recompute
        if channels % partial_channels:
            raise ValueError(f"channels ({channels}) must be divisible by partial_channels "
                             f"({partial_channels}).")
        self.stride, self.k = stride, partial_channels
        self.sources, self.num_edges = sources, num_edges
        c = channels // partial_channels
        self.per_edge, self.shared = [], []  # (primitive index, layer)
        for i, name in enumerate(ops_lib.PRIMITIVES):
            if name == "none":
                continue
            if name in ops_lib.SHARED_IN_SUPERNET or (name == "skip_connect" and stride == 1):
                self.shared.append((i, ops_lib.make_op(name, c, stride, False, True)))
            else:
                self.per_edge.append((i, ops_lib.make_op(name, c, stride, False, True,
                                                         groups=sources * num_edges)))

    def call(self, states, op_weights, training=False):
        s, e = self.sources, self.num_edges
        if self.k > 1:
            c = states[0].shape[-1] // self.k
            rest = [x[..., c:] for x in states]
            states = [x[..., :c] for x in states]
        x = states[0] if s == 1 else tf.concat(states, axis=-1)          # (B, H, W, S*C)
        h, w, c = x.shape[1], x.shape[2], x.shape[3] // s
        # Every op with weights starts with the ReLU: applied once, before the tiling, so the
        # backward pass keeps one tiled tensor for all those ops instead of one each.
        # Each source's channels repeated once per edge: (B, H, W, S*E*C), source-major.
        tiled = tf.reshape(tf.tile(tf.reshape(self.activation(x), [-1, h, w, s, 1, c]),
                                   [1, 1, 1, 1, e, 1]), [-1, h, w, s * e * c])
        columns = tf.unstack(op_weights[:, :, None, :], axis=-1)          # num_ops x (S, E, 1)
        terms = []
        for i, op in self.per_edge:
            if self.recompute:
                y = runtime.call_recomputed(op, [tiled], training=training, activated=True)
            else:
                y = op(tiled, training=training, activated=True)
            y = tf.reshape(y, [-1, *y.shape[1:3], s, e, y.shape[-1] // (s * e)])
            terms.append(columns[i] * y)
        for i, op in self.shared:
            y = op(x, training=training)
            y = tf.reshape(y, [-1, *y.shape[1:3], s, 1, y.shape[-1] // s])
            terms.append(columns[i] * y)
        out = tf.add_n(terms)                                             # (B, H', W', S, E, C)
        if self.k > 1:
            r = tf.concat(rest, axis=-1) if s > 1 else rest[0]
            if self.stride == 2:
                r = tf.nn.max_pool2d(r, 2, 2, "VALID")
            r = tf.reshape(r, [-1, *r.shape[1:3], s, 1, r.shape[-1] // s])
            r = tf.broadcast_to(r, [tf.shape(out)[0], *out.shape[1:5], r.shape[-1]])
            out = channel_shuffle(tf.concat([out, r], axis=-1), self.k)
        return out


class SearchCell(ops_lib.Composite):
    """A DARTS search cell: 2 input nodes, `steps` intermediate nodes, concat of the last
    `multiplier` nodes. Input j of node i is edge number `edge_index(i, j)`.

    Edges are computed grouped by the state they read: the two input states together (all
    their 2 x steps edges at once), then each intermediate node as soon as it exists.
    """

    def __init__(self, steps: int, multiplier: int, channels: int, reduction: bool,
                 reduction_prev: bool, partial_channels: int = 1, recompute: str = "none",
                 **kw):
        super().__init__(**kw)
        self.steps, self.multiplier, self.reduction = steps, multiplier, reduction
        self.recompute = recompute  # "ops" and "edges" act here; "cells" in Supernet
        recompute_ops = recompute == "ops"
        self.preprocess0 = (ops_lib.FactorizedReduce(channels, affine=False) if reduction_prev
                            else ops_lib.ReLUConvBN(channels, 1, 1, affine=False))
        self.preprocess1 = ops_lib.ReLUConvBN(channels, 1, 1, affine=False)
        # Group 0: the input states (stride 2 in a reduction cell) -> every node.
        self.input_edges = MixedOp(channels, 2 if reduction else 1, NUM_INPUT_NODES, steps,
                                   partial_channels, recompute_ops, name="input_edges")
        # Group j: intermediate node j -> the nodes after it.
        self.node_edges = [MixedOp(channels, 1, 1, steps - 1 - j, partial_channels,
                                   recompute_ops, name=f"node{j}_edges")
                           for j in range(steps - 1)]
        self._rows = [[[edge_index(i, j) for i in range(steps)] for j in range(NUM_INPUT_NODES)]]
        self._rows += [[[edge_index(i, NUM_INPUT_NODES + j) for i in range(j + 1, steps)]]
                       for j in range(steps - 1)]

    def call(self, s0, s1, op_weights, edge_weights=None, training=False):
        """op_weights: (E, num_ops) softmax weights; edge_weights: (E,) or None."""
        states = [self.preprocess0(s0, training=training),
                  self.preprocess1(s1, training=training)]
        groups = [self.input_edges] + self.node_edges
        incoming = [[] for _ in range(self.steps)]  # per node, its summed inputs so far
        for g, (layer, rows) in enumerate(zip(groups, self._rows)):
            w = tf.gather(op_weights, rows)                                  # (S, E, ops)
            sources = states if g == 0 else [states[-1]]
            if self.recompute == "edges":  # keeps only the sources and the mixture's weights
                out = runtime.call_recomputed(
                    layer, [w, *sources], training=training,
                    call=lambda w, *xs, layer=layer, **kw: layer(list(xs), w, **kw))
            else:
                out = layer(sources, w, training=training)
            if edge_weights is not None:
                out = tf.gather(edge_weights, rows)[:, :, None] * out
            out = tf.reduce_sum(out, axis=-3) if out.shape[-3] > 1 else out[..., 0, :, :]
            first = 0 if g == 0 else g   # destination of this group's first edge
            for e, y in enumerate(tf.unstack(out, axis=-2)):
                incoming[first + e].append(y)
            states.append(tf.add_n(incoming[len(states) - NUM_INPUT_NODES]))
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
      recompute: what the backward pass recomputes instead of keeping
        (`runtime.recompute_in_backward`), one of RECOMPUTE_MODES. "none" keeps every activation.
        "ops": each grouped conv op of a mixed op (separable and dilated convs, the bulk of
        the activations) keeps only its input and output and recomputes its inside (the
        depthwise and pointwise convs and the inner BN) in the backward pass (measured at
        C=8, 5 cells, batch 16: 200 MiB less peak, no time difference beyond the noise;
        README, Measurements). "edges": each group of edges (a `MixedOp` call) keeps only
        its input states and mixture weights, not every op's output, and recomputes its
        forward in the backward pass, one group at a time; the search's default (measured
        at the same setting, first order: 1,071 against 1,131 MiB with "ops" at the same
        time per iteration; at C=16, 8 cells, batch 64, second order: 2,003 against
        3,555 MiB, 34.9 against 35.9 s per iteration). "cells": each cell
        keeps only its inputs and recomputes its whole forward, for one more forward pass
        per gradient; while a cell is recomputed all its ops' outputs are alive, so at C=8
        its peak was no lower than "ops". Passes that are
        differentiated twice (hessian="exact") run inside `runtime.recompute_disabled` and keep
        everything.
    """

    def __init__(self, channels: int = 16, layers: int = 8, steps: int = 4, multiplier: int = 4,
                 stem_multiplier: int = 3, partial_channels: int = 1,
                 edge_normalization: Optional[bool] = None,
                 architecture: Optional[Architecture] = None, seed: Optional[int] = None,
                 recompute: str = "none", **kw):
        super().__init__(**kw)
        if recompute not in RECOMPUTE_MODES:
            raise ValueError(f"recompute must be one of {RECOMPUTE_MODES}, got {recompute!r}.")
        self.recompute = recompute
        if edge_normalization is None:
            edge_normalization = partial_channels > 1
        self.config_ = dict(channels=channels, layers=layers, steps=steps, multiplier=multiplier,
                            stem_multiplier=stem_multiplier, partial_channels=partial_channels,
                            edge_normalization=edge_normalization,
                            recompute=recompute)
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
                                         partial_channels, recompute, name=f"cell_{i}"))
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
            s0, s1 = s1, self._run_cell(cell, s0, s1, op_w, edge_w, training)
        return tf.reduce_mean(s1, axis=[1, 2])

    def _run_cell(self, cell, s0, s1, op_w, edge_w, training):
        if self.recompute != "cells":
            return cell(s0, s1, op_w, edge_w, training=training)
        weights = [op_w] + ([edge_w] if edge_w is not None else [])
        return runtime.call_recomputed(cell, [s0, s1, *weights], training=training)

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
    """Creates a model's variables by calling it once on zeros of `image_shape` (H, W, C).

    Plainly: a recomputed layer (`runtime.call_recomputed`) takes its variables' values as inputs,
    so they must exist before its first recomputed call."""
    with runtime.recompute_disabled():
        model(tf.zeros([1, *image_shape]), training=False)
    return model
