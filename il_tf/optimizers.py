"""PyTorch-semantics optimisers, shared by search and retraining.

The references (DARTS, IL-DARTS) are PyTorch; their momentum buffer and Adam differ from
Keras's in ways that matter here: DARTS's virtual step reads the SGD momentum buffer
(buf = mu * buf + g, independent of the learning rate; Keras stores -lr * buf), and
PyTorch's Adam adds its `weight_decay` as L2 to the gradient (Keras's is decoupled) and
puts eps outside the bias correction. The search updates flat vectors with
`sgd_momentum_update` and `TorchAdam`; retraining uses `TorchSGD` and `DynamicLossScale`.

Retraining (`TorchSGD`, under tf.distribute): DARTS retrains with
`torch.optim.SGD(params, lr, momentum=0.9, weight_decay=wd)` after
`clip_grad_norm_(params, 5)`. Three details differ from a Keras optimizer, and each is kept:
- `weight_decay` is L2 *added to the gradient* (coupled), after clipping and before the
  momentum buffer, for every trainable weight (BN's and the auxiliary head's included);
  Keras's `weight_decay` is decoupled (AdamW-style) and would not reproduce DARTS.
- the momentum buffer is `buf = mu * buf + g` and the step `lr * buf`, independent of the
  learning rate (Keras stores `-lr`-scaled velocities; they differ when lr changes);
- the gradient is clipped by the global norm of the *whole batch's* gradient. Under several
  replicas that is the norm of the all-reduced gradient; Keras's `global_clipnorm` clips
  each replica's partial gradient before its own all-reduce.

So the step all-reduces once, clips, and updates every replica's copy with
`strategy.extended.update` (the Keras optimizers' own cross-replica pattern).
"""
import math
from typing import Optional, Sequence

import keras
import tensorflow as tf


def cosine_learning_rate(epoch, base: float, minimum: float, epochs: int):
    """PyTorch's CosineAnnealingLR(T_max=epochs, eta_min=minimum) at an integer epoch."""
    epoch = tf.cast(epoch, tf.float32)
    return minimum + 0.5 * (base - minimum) * (1.0 + tf.cos(math.pi * epoch / float(epochs)))


def sgd_momentum_update(variable, buffer, gradient, learning_rate, momentum: float):
    """PyTorch SGD with momentum: buf = mu * buf + g; w -= lr * buf (first buf = g)."""
    buffer.assign(momentum * buffer + gradient)
    variable.assign_sub(learning_rate * buffer)


class TorchAdam(tf.Module):
    """PyTorch's Adam (with L2 `weight_decay` added to the gradient) over a few variables.

    Args:
      variables: the variables it updates (the alphas).
      learning_rate, beta_1, beta_2, epsilon: as torch.optim.Adam's.
      weight_decay: L2 coefficient added to the gradient (torch's Adam weight_decay).
      aggregation: the slots' aggregation under a tf.distribute strategy.
    """

    def __init__(self, variables, learning_rate: float, beta_1: float = 0.9,
                 beta_2: float = 0.999, epsilon: float = 1e-8, weight_decay: float = 0.0,
                 aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA, name="torch_adam"):
        super().__init__(name=name)
        self.learning_rate, self.beta_1, self.beta_2 = learning_rate, beta_1, beta_2
        self.epsilon, self.weight_decay = epsilon, weight_decay
        self.step = tf.Variable(0, dtype=tf.int64, trainable=False, aggregation=aggregation,
                                name="step")
        self.m = [tf.Variable(tf.zeros(v.shape), trainable=False, aggregation=aggregation,
                              name="m") for v in variables]
        self.v = [tf.Variable(tf.zeros(v.shape), trainable=False, aggregation=aggregation,
                              name="v") for v in variables]

    def apply(self, gradients, variables):
        step = self.step.assign_add(1)
        t = tf.cast(step, tf.float32)
        bias_1 = 1.0 - tf.pow(self.beta_1, t)
        bias_2 = 1.0 - tf.pow(self.beta_2, t)
        for g, var, m, v in zip(gradients, variables, self.m, self.v):
            g = g + self.weight_decay * var
            m.assign(self.beta_1 * m + (1.0 - self.beta_1) * g)
            v.assign(self.beta_2 * v + (1.0 - self.beta_2) * tf.square(g))
            denom = tf.sqrt(v) / tf.sqrt(bias_2) + self.epsilon
            var.assign_sub(self.learning_rate / bias_1 * m / denom)


def _tf_variable(variable):
    """The tf.Variable (possibly distributed) behind a Keras variable."""
    return variable.value if isinstance(variable, keras.Variable) else variable


class TorchSGD(tf.Module):
    """PyTorch's SGD with momentum and coupled L2 weight decay, for a fixed variable list.

    Create it inside `strategy.scope()` so the momentum buffers are mirrored like the
    weights. Checkpoint it as a whole (`tf.train.Checkpoint(optimizer=sgd)`): learning rate,
    step counter and every momentum buffer are variables.

    Args:
      variables: the trainable variables it updates, in the order gradients are passed.
      learning_rate: initial learning rate; the loop assigns `learning_rate` every epoch.
      momentum: torch's `momentum` (DARTS: 0.9).
      weight_decay: torch's `weight_decay`: `wd * w` is added to each (clipped) gradient.
      name: module name.
    """

    def __init__(self, variables: Sequence, learning_rate: float, momentum: float = 0.9,
                 weight_decay: float = 0.0, name: str = "torch_sgd"):
        super().__init__(name=name)
        self.momentum, self.weight_decay = float(momentum), float(weight_decay)
        self._variables = [_tf_variable(v) for v in variables]
        self.learning_rate = tf.Variable(float(learning_rate), trainable=False,
                                         dtype=tf.float32, name="learning_rate")
        self.iterations = tf.Variable(0, trainable=False, dtype=tf.int64, name="iterations")
        strategy = tf.distribute.get_strategy()
        self.buffers = []
        for i, var in enumerate(self._variables):
            with strategy.extended.colocate_vars_with(var):
                self.buffers.append(tf.Variable(tf.zeros(var.shape, var.dtype), trainable=False,
                                                name=f"momentum_{i}"))

    def apply(self, gradients: Sequence[tf.Tensor], apply: Optional[tf.Tensor] = None):
        """Updates every variable from its gradient, in a replica context.

        Args:
          gradients: one per variable, *identical on every replica* (already all-reduced
            and clipped).
          apply: optional scalar bool, the same on every replica; False skips the update
            (a non-finite gradient): weights, buffers and the step counter stay unchanged.
        """
        if apply is None:
            apply = tf.constant(True)
        ctx = tf.distribute.get_replica_context()
        ctx.merge_call(self._apply_cross_replica, args=(list(gradients), apply))

    def _apply_cross_replica(self, strategy, gradients, apply):
        for i, (var, grad) in enumerate(zip(self._variables, gradients)):
            strategy.extended.update(var, self._update_one, args=(grad, apply, i), group=False)
        strategy.extended.update(
            self.iterations, lambda it, ok: it.assign_add(tf.cast(ok, tf.int64)),
            args=(apply,), group=False)

    def _update_one(self, var, grad, apply, index):
        def step():
            g = tf.cast(grad, var.dtype)
            if self.weight_decay:
                g = g + self.weight_decay * var
            sgd_momentum_update(var, self.buffers[index], g,
                                tf.cast(self.learning_rate, var.dtype), self.momentum)
            return tf.constant(True)

        return tf.cond(apply, step, lambda: tf.constant(False))


class DynamicLossScale(tf.Module):
    """Dynamic loss scaling for `mixed_float16` (as Keras's LossScaleOptimizer does it).

    The loss is multiplied by `scale` before the backward pass and the gradients divided by
    it; a step with non-finite gradients is skipped and halves the scale, `growth_steps`
    finite steps in a row double it.

    Why not `keras.mixed_precision.LossScaleOptimizer`: it wraps a Keras optimizer, and the
    step here is `TorchSGD` (module docstring: coupled weight decay, PyTorch's momentum
    buffer, one clip by the norm of the all-reduced batch gradient), which is not one. The
    scaler must also sit between the all-reduce and the clip: unscale, test the global norm
    for finiteness, clip, then update or skip; LossScaleOptimizer unscales and tests inside
    its own `apply`, after any clipping a caller did on the scaled gradients.
    """

    def __init__(self, initial_scale: float = 2.0 ** 15, growth_steps: int = 2000,
                 name: str = "loss_scale"):
        super().__init__(name=name)
        self.growth_steps = int(growth_steps)
        self.scale = tf.Variable(float(initial_scale), trainable=False, dtype=tf.float32,
                                 name="scale")
        with tf.distribute.get_strategy().extended.colocate_vars_with(self.scale):
            self.good_steps = tf.Variable(0, trainable=False, dtype=tf.int64,
                                          name="good_steps")

    def update(self, finite: tf.Tensor):
        """Adjusts the scale after a step (replica context; `finite` equal on replicas)."""
        tf.distribute.get_replica_context().merge_call(self._update, args=(finite,))

    def _update(self, strategy, finite):
        def grow_or_shrink(scale, ok):
            good = tf.where(ok, self.good_steps + 1, 0)
            grow = good >= self.growth_steps
            self.good_steps.assign(tf.where(grow, tf.zeros_like(good), good))
            new = tf.where(ok, tf.where(grow, scale * 2.0, scale), scale / 2.0)
            return scale.assign(new)

        strategy.extended.update(self.scale, grow_or_shrink, args=(finite,), group=False)
