"""The supernet as a pure function of flat weight vectors, traced once.

Interleaving learning needs the same forward/backward pass at many points of weight space:
each learner's copy W_k, the virtual weights theta', theta +- eps*v. Tracing the Keras model
again for each point (and each learner) is what made a plain prototype spend minutes in
tracing and Grappler before its first iteration. Here the search state is a handful of flat
float32 vectors (encoder weights, BN statistics, each head), and one `tf.function` maps
(weights, alphas, batch) to (loss, all gradients, new BN statistics). Every pass of every
learner calls that one traced function; the Keras `Supernet` defines the computation and
the layout of the vectors, and its own variables are only the template (initial values).
The traced function is kept only as its definition in the runtime (`runtime.RuntimeFunction`):
its Python graph, about 140 MiB at C=8 and 5 cells, is let go after tracing.
"""
import dataclasses
import json
from typing import List, Sequence

import keras
import numpy as np
import tensorflow as tf

from il_tf import runtime
from il_tf.models import supernet as supernet_lib
from il_tf.search_space import ops as ops_lib


@dataclasses.dataclass(frozen=True)
class FlatLayout:
    """How a list of variables is laid out in one flat vector."""
    shapes: tuple

    @classmethod
    def of(cls, variables: Sequence[keras.Variable]) -> "FlatLayout":
        return cls(tuple(tuple(int(d) for d in v.shape) for v in variables))

    @property
    def sizes(self) -> List[int]:
        return [int(np.prod(s)) for s in self.shapes]

    @property
    def size(self) -> int:
        return sum(self.sizes)

    # Both leave out the reshapes that would not change a shape (a BN statistic is a vector
    # already): a node per variable, 700 of the supernet pass's at C=8, 5 cells.
    def flatten(self, tensors) -> tf.Tensor:
        return tf.concat([_reshaped(tf.cast(t, tf.float32), [-1]) for t in tensors], axis=0)

    def unflatten(self, flat) -> List[tf.Tensor]:
        return [_reshaped(p, s) for p, s in zip(tf.split(flat, self.sizes), self.shapes)]

    def initial_value(self, variables) -> np.ndarray:
        return np.concatenate([np.asarray(v.numpy(), np.float32).ravel() for v in variables])


def _reshaped(tensor, shape):
    """tf.reshape(tensor, shape), or the tensor itself where that is its static shape."""
    if tensor.shape.rank == len(shape) and (
            list(tensor.shape) == list(shape) or (len(shape) == 1 and shape[0] == -1)):
        return tensor
    return tf.reshape(tensor, shape)


def cross_entropy(logits, labels):
    """Per-example softmax cross-entropy, float32."""
    return tf.nn.sparse_softmax_cross_entropy_with_logits(tf.cast(labels, tf.int32), logits)


class SupernetFunctions:
    """The traced passes of one supernet definition, shared by every learner.

    Args:
      supernet: a built `Supernet` (its variables are the template).
    """

    def __init__(self, supernet: supernet_lib.Supernet):
        self.supernet = supernet
        self.weights_layout = FlatLayout.of(supernet.encoder_variables)
        self.stats_layout = FlatLayout.of(supernet.non_trainable_variables)
        # Each BN statistic's momentum, laid out as the statistics are: `gradients` averages
        # the pass's batch statistics into the moving ones on the flat vector. (Momentum 0
        # would take the pass's value as it is: any other non-trainable state, none today.)
        momentum = {id(v): layer.momentum for layer in runtime.flatten_layers(supernet)
                    if isinstance(layer, ops_lib.BatchNorm)
                    for v in (layer.moving_mean, layer.moving_variance)}
        self.stats_momentum = np.concatenate(
            [np.full(size, momentum.get(id(v), 0.0), np.float64)
             for v, size in zip(supernet.non_trainable_variables, self.stats_layout.sizes)])
        self.arch_variables = supernet.architecture_variables
        self.feature_dim = supernet.feature_dim
        self._grad_fn = None
        self._eval_fn = None
        # The passes depend on the supernet's configuration and the structure of its layers
        # (and on il_tf's code and the versions, which the cache adds): the persistent trace
        # cache's key, so that a later process with the same supernet skips tracing.
        layers = list(runtime.flatten_layers(supernet))
        self._cache_key = json.dumps([supernet.get_config(), runtime.layer_structure(layers),
                                      self.weights_layout.shapes, self.stats_layout.shapes,
                                      [tuple(v.shape) for v in self.arch_variables],
                                      supernet.compute_dtype], default=str)
        self._cache_sources = runtime.class_sources(type(l) for l in layers)

    def head_layout(self, num_classes: int) -> FlatLayout:
        return FlatLayout(((self.feature_dim, num_classes), (num_classes,)))

    def _logits(self, w, h, stats, alphas, images, training):
        """Forward pass at the given flat weights (the template's variables substituted)."""
        mapping = list(zip(self.supernet.encoder_variables, self.weights_layout.unflatten(w)))
        mapping += list(zip(self.supernet.non_trainable_variables,
                            self.stats_layout.unflatten(stats)))
        mapping += list(zip(self.arch_variables, alphas))
        with keras.StatelessScope(state_mapping=mapping) as scope:
            features = self.supernet(images, training=training)
            new_stats = [scope.get_current_value(v) for v in self.supernet.non_trainable_variables]
        # A head of n classes is [kernel (feature_dim * n), bias (n)]: one trace serves heads
        # of any size.
        n = tf.size(h) // (self.feature_dim + 1)
        kernel = tf.reshape(h[: tf.size(h) - n], [self.feature_dim, n])
        bias = h[tf.size(h) - n:]
        logits = supernet_lib.ClassifierHead.apply_weights(features, kernel, bias)
        new_stats = self.stats_layout.flatten(
            [s if s is not None else v for s, v in zip(new_stats, self.supernet.non_trainable_variables)])
        return logits, new_stats

    def gradients(self, w, h, stats, alphas, images, labels, loss_scale):
        """(mean loss, correct count, dL/dw, dL/dh, [dL/dalpha], new BN statistics).

        The loss is the batch's summed cross-entropy times `loss_scale` (1/global batch, so
        that replicas' gradients add up to the global mean's). BN uses batch statistics;
        `new_stats` are the moving averages after this batch (used by the real steps only):
        the pass returns the batch statistics, averaged in here on the flat vector.

        Every call site (the virtual step, the finite differences, the weight steps) runs
        the one traced definition and gets every output (`RuntimeFunction`'s `shared`).
        """
        if self._grad_fn is None:
            # Heads (argument 1) traced at any size: one trace serves every learner.
            self._grad_fn = runtime.RuntimeFunction(
                self._gradients, "supernet_gradients", relaxed=(1,), shared=True,
                cache_key=self._cache_key, cache_sources=self._cache_sources)
        loss, correct, gw, gh, *rest = self._grad_fn(w, h, stats, list(alphas), images,
                                                     labels, loss_scale)
        new_stats = ops_lib.moving_average(stats, rest[-1], self.stats_momentum)
        return loss, correct, gw, gh, rest[:-1], new_stats

    def _gradients(self, w, h, stats, alphas, images, labels, loss_scale):
        with tf.GradientTape() as tape:
            tape.watch([w, h, alphas])
            with runtime.moving_statistics_deferred():  # `gradients` averages them in
                logits, batch_stats = self._logits(w, h, stats, alphas, images, training=True)
            per_example = cross_entropy(logits, labels)
            loss = tf.reduce_sum(per_example) * loss_scale
        # An alpha no cell uses (e.g. alphas_normal with layers <= 2) gets a zero gradient.
        gw, gh, ga = tape.gradient(loss, [w, h, alphas],
                                   unconnected_gradients=tf.UnconnectedGradients.ZERO)
        correct = tf.reduce_sum(tf.cast(tf.equal(tf.argmax(logits, -1, output_type=tf.int32),
                                                 tf.cast(labels, tf.int32)), tf.float32))
        return loss, correct, gw, gh, ga, batch_stats

    def evaluate(self, w, h, stats, alphas, images, labels):
        """(summed loss, correct count) in inference mode (BN moving statistics)."""
        if self._eval_fn is None:
            self._eval_fn = runtime.RuntimeFunction(
                self._evaluate, "supernet_evaluate", relaxed=(1,),
                cache_key=self._cache_key, cache_sources=self._cache_sources)
        loss, correct = self._eval_fn(w, h, stats, list(alphas), images, labels)
        return loss, correct

    def _evaluate(self, w, h, stats, alphas, images, labels):
        logits, _ = self._logits(w, h, stats, alphas, images, training=False)
        correct = tf.reduce_sum(tf.cast(tf.equal(tf.argmax(logits, -1, output_type=tf.int32),
                                                 tf.cast(labels, tf.int32)), tf.float32))
        return tf.reduce_sum(cross_entropy(logits, labels)), correct

    def training_loss(self, w, h, alphas, images, labels, loss_scale):
        """The training-mode loss as a differentiable function (for nested tapes)."""
        stats = tf.zeros([self.stats_layout.size])
        # Differentiated twice (nested tapes): no recomputing backward pass.
        with runtime.moving_statistics_frozen(), runtime.recompute_disabled():
            logits, _ = self._logits(w, h, stats, alphas, images, training=True)
        return tf.reduce_sum(cross_entropy(logits, labels)) * loss_scale
