"""The discrete networks built from a genotype: `NetworkCIFAR` and `NetworkImageNet`.

They follow quark0/darts `cnn/model.py` (the retraining networks of the DARTS paper), NHWC:
- a `Cell` preprocesses its two inputs (a factorized reduce of s0 after a reduction, else a
  1x1 ReLU-conv-BN) and applies the genotype's two ops per node with affine BN, stride 2 on
  the input nodes of a reduction cell, drop path on every op but the identity, and
  concatenates the genotype's concat nodes;
- reductions at layers // 3 and 2 * layers // 3, the auxiliary head after cell
  2 * layers // 3 (training only), global average pooling and a linear classifier.

Every weight is created by the constructor from the channel counts (no forward pass, no
symbolic build), so optimizers, checkpoints and `count_parameters` see the whole model,
auxiliary head included, before it has seen an image.

`drop_path_prob` lives in a non-trainable variable read inside `call`: the retraining loop
sets it every epoch (`model.drop_path_prob = p`) and a traced step sees the new value
without a retrace.
"""
from typing import Dict, List, Sequence, Union

import keras
import numpy as np
import tensorflow as tf

from il_tf import runtime
from il_tf.models.supernet import ClassifierHead
from il_tf.search_space import ops as ops_lib
from il_tf.search_space.genotypes import Genotype, get_genotype

GenotypeLike = Union[Genotype, str]


def _build_leaves(layer: keras.layers.Layer, c_in: int, c_out: int):
    """Creates the weights of a cell op or preprocessing layer without running it.

    In every such layer of ops.py each conv reads `c_in` channels and each BN normalises
    `c_out` (a primitive keeps its width; ReLUConvBN and FactorizedReduce map c_in to c_out),
    so the leaves' input shapes are known from the two widths alone.
    """
    for leaf in runtime.flatten_layers(layer, include_self=True, recursive=True):
        if isinstance(leaf, ops_lib.Conv):
            leaf.build((None, None, None, c_in))
        elif isinstance(leaf, ops_lib.BatchNorm):
            leaf.build((None, None, None, c_out))
        elif not leaf.built:
            leaf.build(None)  # Composites and weightless ops.


def drop_path(x, drop_prob, key):
    """DARTS's drop path: zeroes whole samples with probability `drop_prob`, scales the
    kept ones by 1 / keep_prob. At drop_prob = 0 it is exactly the identity.

    The mask is a function of `key` (an int64 [2] stateless RNG key) alone, so a resumed
    run draws the masks an uninterrupted one draws (see `_Network.drop_path_key`).
    """
    keep_prob = 1.0 - tf.cast(drop_prob, x.dtype)
    noise = tf.random.stateless_uniform([tf.shape(x)[0], 1, 1, 1], seed=key, dtype=x.dtype)
    mask = tf.floor(keep_prob + noise)
    return x * (mask / keep_prob)


class Cell(ops_lib.Composite):
    """A discrete DARTS cell: node i = op_a(h_a) + op_b(h_b) over the genotype's two edges.

    Args:
      genotype: the cell pair; `reduction` picks which one this is.
      c_prev_prev: channels of s0 (the output of the cell before the previous one).
      c_prev: channels of s1 (the previous cell's output).
      channels: C, the width of every node in this cell.
      reduction: halve the resolution (stride 2 on the edges from the input nodes).
      reduction_prev: the previous cell halved the resolution, so s0 is reduced too.
    """

    def __init__(self, genotype: Genotype, c_prev_prev: int, c_prev: int, channels: int,
                 reduction: bool, reduction_prev: bool, **kw):
        super().__init__(**kw)
        self.reduction = reduction
        self.preprocess0 = (ops_lib.FactorizedReduce(channels) if reduction_prev
                            else ops_lib.ReLUConvBN(channels, 1, 1))
        self.preprocess1 = ops_lib.ReLUConvBN(channels, 1, 1)
        _build_leaves(self.preprocess0, c_prev_prev, channels)
        _build_leaves(self.preprocess1, c_prev, channels)
        edges = genotype.reduce if reduction else genotype.normal
        self.concat = tuple(genotype.reduce_concat if reduction else genotype.normal_concat)
        self.indices = tuple(index for _, index in edges)
        self.ops = []
        for name, index in edges:
            op = ops_lib.make_op(name, channels, 2 if reduction and index < 2 else 1, affine=True)
            _build_leaves(op, channels, channels)
            self.ops.append(op)
        # DARTS drops every op's output except the identity's (a reducing skip_connect is a
        # FactorizedReduce and is dropped).
        self.droppable = tuple(not isinstance(op, ops_lib.Identity) for op in self.ops)
        self.out_channels = len(self.concat) * channels
        self.built = True

    def call(self, s0, s1, drop_prob=None, drop_key=None, training=False):
        """`drop_prob` (a scalar tensor or None) is applied only when training, with masks
        drawn from `drop_key` (an int64 [2] key), one fold per edge."""
        states = [self.preprocess0(s0, training=training),
                  self.preprocess1(s1, training=training)]
        for node in range(len(self.ops) // 2):
            terms = []
            for e in (2 * node, 2 * node + 1):
                h = self.ops[e](states[self.indices[e]], training=training)
                if training and drop_prob is not None and self.droppable[e]:
                    h = drop_path(h, drop_prob,
                                  tf.random.experimental.stateless_fold_in(drop_key, e))
                terms.append(h)
            states.append(terms[0] + terms[1])
        return tf.concat([states[i] for i in self.concat], axis=-1)


class AuxiliaryHead(ops_lib.Composite):
    """DARTS's auxiliary classifier on the features after the second reduction.

    ReLU, 5x5 average pooling (no padding) at `pool_stride`, 1x1 conv to 128, BN, ReLU, 2x2
    conv to 768, [BN,] ReLU, linear. CIFAR (8x8 input): pool stride 3, BN after the 768 conv.
    ImageNet (7x7 input at 224): pool stride 2 and no BN after the 768 conv: DARTS's
    repository leaves it out "for consistency with the experiments in the paper". Both
    pool to 2x2, so the 2x2 conv leaves 1x1 and the classifier sees 768 features.
    """

    def __init__(self, in_channels: int, num_classes: int, pool_stride: int, last_bn: bool,
                 **kw):
        super().__init__(**kw)
        self.pool_stride = pool_stride
        self.conv1 = ops_lib.Conv(128, 1)
        self.bn1 = ops_lib.BatchNorm()
        self.conv2 = ops_lib.Conv(768, 2)
        self.bn2 = ops_lib.BatchNorm() if last_bn else None
        self.classifier = ClassifierHead(num_classes)
        self.conv1.build((None, None, None, in_channels))
        self.bn1.build((None, None, None, 128))
        self.conv2.build((None, None, None, 128))
        if self.bn2 is not None:
            self.bn2.build((None, None, None, 768))
        self.classifier.build((None, 768))
        self.built = True

    def call(self, x, training=False):
        x = tf.nn.avg_pool2d(tf.nn.relu(x), 5, self.pool_stride, "VALID")
        x = tf.nn.relu(self.bn1(self.conv1(x), training=training))
        x = self.conv2(x)
        if self.bn2 is not None:
            x = self.bn2(x, training=training)
        x = tf.nn.relu(x)
        if x.shape[1] != 1 or x.shape[2] != 1:
            raise ValueError(f"The auxiliary head expects its input to pool to 2x2; got "
                             f"{x.shape[1]}x{x.shape[2]} after its 2x2 conv. Use the "
                             f"networks' native image sizes (32 for CIFAR, 224 for ImageNet).")
        return self.classifier(tf.reshape(x, [-1, 768]))


def AuxiliaryHeadCIFAR(in_channels: int, num_classes: int, **kw) -> AuxiliaryHead:  # pylint: disable=invalid-name
    """The auxiliary head of `NetworkCIFAR` (8x8 input)."""
    return AuxiliaryHead(in_channels, num_classes, pool_stride=3, last_bn=True, **kw)


def AuxiliaryHeadImageNet(in_channels: int, num_classes: int, **kw) -> AuxiliaryHead:  # pylint: disable=invalid-name
    """The auxiliary head of `NetworkImageNet` (7x7 input at 224x224 images)."""
    return AuxiliaryHead(in_channels, num_classes, pool_stride=2, last_bn=False, **kw)


class _Network(keras.Model):
    """What NetworkCIFAR and NetworkImageNet share: cells, drop path, heads, the contract.

    `call(images, training)` returns the logits, float32 of shape (batch, num_classes);
    when `training` is true and the network has an auxiliary head it returns the pair
    `(logits, aux_logits)` instead, both of that shape (the loss is
    `ce(logits) + auxiliary_weight * ce(aux_logits)` as DARTS trains). Drop path acts only
    when `training` is true.
    """

    def _init_common(self, genotype: GenotypeLike, channels: int, layers: int, num_classes: int,
                     auxiliary: bool, drop_path_prob: float):
        self.genotype = get_genotype(genotype)
        self.num_classes, self.auxiliary, self.layers_ = num_classes, auxiliary, layers
        self.auxiliary_index = 2 * layers // 3
        self._drop_path_prob = self.add_weight(
            shape=(), initializer=keras.initializers.Constant(float(drop_path_prob)),
            trainable=False, name="drop_path_prob", autocast=False, dtype="float32")
        self.drop_path_prob = drop_path_prob  # Validates.
        self._drop_path_key = self.add_weight(
            shape=(2,), initializer="zeros", trainable=False, name="drop_path_key",
            autocast=False, dtype="int64")

    def _make_cells(self, c_prev_prev: int, c_prev: int, channels: int,
                    reduction_prev: bool) -> int:
        """Builds the cells and returns the auxiliary head's input channels."""
        self.cells = []
        c_curr, c_aux = channels, None
        for i in range(self.layers_):
            reduction = i in (self.layers_ // 3, 2 * self.layers_ // 3)
            if reduction:
                c_curr *= 2
            cell = Cell(self.genotype, c_prev_prev, c_prev, c_curr, reduction, reduction_prev,
                        name=f"cell_{i}")
            self.cells.append(cell)
            reduction_prev = reduction
            c_prev_prev, c_prev = c_prev, cell.out_channels
            if i == self.auxiliary_index:
                c_aux = c_prev
        self.classifier = ClassifierHead(self.num_classes, name="classifier")
        self.classifier.build((None, c_prev))
        self.feature_dim = c_prev
        return c_aux

    def build(self, input_shape=None):
        self.built = True  # Every weight exists already (see the module docstring).

    @property
    def drop_path_prob(self) -> float:
        """The current drop path probability (settable; read by traced steps at run time)."""
        return float(self._drop_path_prob.numpy())

    @drop_path_prob.setter
    def drop_path_prob(self, value: float):
        value = float(value)
        if not 0.0 <= value < 1.0:
            raise ValueError(f"drop_path_prob must be in [0, 1), got {value}.")
        self._drop_path_prob.assign(value)

    @property
    def drop_path_variable(self) -> keras.Variable:
        """The scalar variable behind `drop_path_prob` (e.g. to assign inside a tf.function)."""
        return self._drop_path_prob

    @property
    def drop_path_key(self) -> keras.Variable:
        """The int64 [2] stateless RNG key of the drop-path masks of the next training call.

        The training step sets it to (seed, step) before each step, so masks are a function
        of seed and step, never of how often the process drew random numbers; each cell,
        edge and replica folds its own index in.
        """
        return self._drop_path_key

    def _stem(self, images, training):
        raise NotImplementedError

    def call(self, images, training=False):
        s0, s1 = self._stem(images, training)
        drop_prob = key = None
        if training:
            drop_prob = tf.convert_to_tensor(self._drop_path_prob)
            key = tf.convert_to_tensor(self._drop_path_key)
            replica = tf.distribute.get_replica_context()
            if replica is not None and replica.num_replicas_in_sync > 1:
                key = tf.random.experimental.stateless_fold_in(
                    key, replica.replica_id_in_sync_group)
        aux_logits = None
        for i, cell in enumerate(self.cells):
            cell_key = None if key is None else tf.random.experimental.stateless_fold_in(key, i)
            s0, s1 = s1, cell(s0, s1, drop_prob, cell_key, training=training)
            if i == self.auxiliary_index and self.auxiliary and training:
                aux_logits = self.auxiliary_head(s1, training=training)
        logits = self.classifier(tf.reduce_mean(s1, axis=[1, 2]))
        return (logits, aux_logits) if aux_logits is not None else logits

    # Variable groups (never found by name): see DESIGN.md's invariants.
    @property
    def auxiliary_variables(self) -> List[keras.Variable]:
        """Trainable weights of the auxiliary head (empty without one)."""
        return list(self.auxiliary_head.trainable_variables) if self.auxiliary else []

    @property
    def main_variables(self) -> List[keras.Variable]:
        """Trainable weights of the network proper (stem, cells, classifier)."""
        aux = {id(v) for v in self.auxiliary_variables}
        return [v for v in self.trainable_variables if id(v) not in aux]

    def get_config(self) -> Dict:
        return {"genotype": self.genotype.to_dict(), "channels": self.channels,
                "layers": self.layers_, "num_classes": self.num_classes,
                "auxiliary": self.auxiliary, "drop_path_prob": self.drop_path_prob,
                "name": self.name}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        if isinstance(config["genotype"], dict):
            config["genotype"] = Genotype.from_dict(config["genotype"])
        return cls(**config)


class NetworkCIFAR(_Network):
    """The DARTS CIFAR network built from a genotype (32x32 images).

    Stem: 3x3 conv to 3C + BN; `layers` cells, reductions at layers // 3 and 2 * layers // 3;
    an auxiliary head after cell 2 * layers // 3 when `auxiliary`; global average pooling and
    a linear classifier. DARTS evaluates at C=36, 20 layers (DARTS_V2: 3.3M parameters).

    Args:
      genotype: a `Genotype`, a published genotype's name or a genotype.json path.
      channels: C, the width of a node in the first stage.
      layers: number of cells.
      num_classes: classifier outputs.
      auxiliary: add the auxiliary head (its logits are returned only when training).
      drop_path_prob: initial drop path probability; change it with `model.drop_path_prob`.
      stem_multiplier: stem width in units of C (3).

    Call contract: see `_Network`: logits, or (logits, aux_logits) when training with an
    auxiliary head.
    """

    def __init__(self, genotype: GenotypeLike, channels: int = 36, layers: int = 20,
                 num_classes: int = 10, auxiliary: bool = False, drop_path_prob: float = 0.0,
                 stem_multiplier: int = 3, **kw):
        super().__init__(**kw)
        self._init_common(genotype, channels, layers, num_classes, auxiliary, drop_path_prob)
        self.channels, self.stem_multiplier = channels, stem_multiplier
        c_stem = stem_multiplier * channels
        self.stem_conv = ops_lib.Conv(c_stem, 3)
        self.stem_bn = ops_lib.BatchNorm()
        self.stem_conv.build((None, None, None, 3))
        self.stem_bn.build((None, None, None, c_stem))
        c_aux = self._make_cells(c_stem, c_stem, channels, reduction_prev=False)
        if auxiliary:
            self.auxiliary_head = AuxiliaryHeadCIFAR(c_aux, num_classes, name="auxiliary_head")

    def _stem(self, images, training):
        s = self.stem_bn(self.stem_conv(images), training=training)
        return s, s

    def get_config(self):
        return {**super().get_config(), "stem_multiplier": self.stem_multiplier}


class NetworkImageNet(_Network):
    """The DARTS ImageNet network built from a genotype (224x224 images, mobile setting).

    stem0: 3x3 conv stride 2 to C/2, BN, ReLU, 3x3 conv stride 2 to C, BN (1/4 resolution);
    stem1: ReLU, 3x3 conv stride 2 to C, BN (1/8); the first cell reduces s0 as after a
    reduction. Then as `NetworkCIFAR`, with the ImageNet auxiliary head. DARTS pools the
    final 7x7 map with a 7x7 average pool; global average pooling is the same there and
    also serves smaller images (e.g. 64x64 for quick checks; the auxiliary head needs 224).
    DARTS evaluates at C=48, 14 layers, 1000 classes (DARTS_V2: 4.7M parameters, 574M
    multiply-adds).

    Args: as `NetworkCIFAR` (no stem multiplier).
    """

    def __init__(self, genotype: GenotypeLike, channels: int = 48, layers: int = 14,
                 num_classes: int = 1000, auxiliary: bool = False, drop_path_prob: float = 0.0,
                 **kw):
        super().__init__(**kw)
        self._init_common(genotype, channels, layers, num_classes, auxiliary, drop_path_prob)
        self.channels = channels
        if channels % 2:
            raise ValueError(f"NetworkImageNet needs an even channel count, got {channels}.")
        half = channels // 2
        self.stem0_conv1 = ops_lib.Conv(half, 3, 2)
        self.stem0_bn1 = ops_lib.BatchNorm()
        self.stem0_conv2 = ops_lib.Conv(channels, 3, 2)
        self.stem0_bn2 = ops_lib.BatchNorm()
        self.stem1_conv = ops_lib.Conv(channels, 3, 2)
        self.stem1_bn = ops_lib.BatchNorm()
        for layer, c_in in ((self.stem0_conv1, 3), (self.stem0_conv2, half),
                            (self.stem1_conv, channels)):
            layer.build((None, None, None, c_in))
        for layer, c in ((self.stem0_bn1, half), (self.stem0_bn2, channels),
                         (self.stem1_bn, channels)):
            layer.build((None, None, None, c))
        c_aux = self._make_cells(channels, channels, channels, reduction_prev=True)
        if auxiliary:
            self.auxiliary_head = AuxiliaryHeadImageNet(c_aux, num_classes,
                                                        name="auxiliary_head")

    def _stem(self, images, training):
        x = tf.nn.relu(self.stem0_bn1(self.stem0_conv1(images), training=training))
        s0 = self.stem0_bn2(self.stem0_conv2(x), training=training)
        s1 = self.stem1_bn(self.stem1_conv(tf.nn.relu(s0)), training=training)
        return s0, s1


# ---------------------------------------------------------------------------------------------
# Counting, as the papers count.


def count_parameters(model: keras.layers.Layer, exclude_auxiliary: bool = True) -> int:
    """Trainable parameters of `model`, as the NAS papers report them.

    BN moving statistics (non-trainable) and the drop path variable are not parameters; the
    auxiliary head, used only in training, is left out unless `exclude_auxiliary` is False
    (DARTS's `count_parameters_in_MB` skips it too).
    """
    variables = model.trainable_variables
    if exclude_auxiliary and getattr(model, "auxiliary", False):
        aux = {id(v) for v in model.auxiliary_variables}
        variables = [v for v in variables if id(v) not in aux]
    return int(sum(np.prod(v.shape) for v in variables))


def _static_size(shape) -> int:
    dims = shape.as_list()
    if any(d is None for d in dims):
        raise ValueError(f"multiply-adds need static shapes; got {shape}.")
    return int(np.prod(dims))


def count_multiply_adds(model: keras.layers.Layer, image_shape: Sequence[int]) -> int:
    """Multiply-adds of one inference forward pass on one image of `image_shape` (H, W, C).

    Counts convolutions (dense and depthwise) and matrix products, the convention of the
    mobile-setting papers (DARTS_V2 ImageNet: 574M); BN, ReLU, pooling and additions are
    not counted. The model is traced once at batch 1 and the graph's ops are read with their
    static shapes. The auxiliary head is not run in inference, so it is not counted.
    """
    fn = tf.function(lambda x: model(x, training=False))
    graph = fn.get_concrete_function(
        tf.TensorSpec([1, *image_shape], tf.float32)).graph
    total = 0
    for op in graph.get_operations():
        if op.type == "Conv2D":
            k = op.inputs[1].shape.as_list()  # (kh, kw, c_in, c_out)
            total += _static_size(op.outputs[0].shape) * k[0] * k[1] * k[2]
        elif op.type == "DepthwiseConv2dNative":
            k = op.inputs[1].shape.as_list()  # (kh, kw, c, multiplier)
            out = op.outputs[0]
            # A dilated depthwise conv runs between SpaceToBatchND and BatchToSpaceND, which
            # may pad; the cropped output of BatchToSpaceND is the real one.
            for consumer in out.consumers():
                if consumer.type == "BatchToSpaceND":
                    out = consumer.outputs[0]
            total += _static_size(out.shape) * k[0] * k[1]
        elif op.type in ("MatMul", "BatchMatMulV2"):
            a, b = op.inputs[0].shape.as_list(), op.inputs[1].shape.as_list()
            transpose_a = op.get_attr("transpose_a") if op.type == "MatMul" else False
            inner = a[0] if transpose_a else a[-1]
            total += _static_size(op.outputs[0].shape) * int(inner)
            del b
    return int(total)
