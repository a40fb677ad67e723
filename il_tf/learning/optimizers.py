"""PyTorch-semantics updates on flat vectors: the search's SGD and the alphas' Adam.

The references (DARTS, IL-DARTS) are PyTorch; their momentum buffer and Adam differ from
Keras's in ways that matter here: DARTS's virtual step reads the SGD momentum buffer
(buf = mu * buf + g, independent of the learning rate; Keras stores -lr * buf), and
PyTorch's Adam adds its `weight_decay` as L2 to the gradient (Keras's is decoupled) and
puts eps outside the bias correction.
"""
import math

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
