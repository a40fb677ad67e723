"""The interleaving multi-level optimiser (PAPER.md eqs. 1-4, Ban & Xie 2021).

K learners share one architecture A (the alphas). Learner k owns a head H_k, an SGD momentum
buffer for (W, H_k), a copy W_k of the encoder as it left learner k's last stage (weights and
BN statistics), and an anchor: the encoder it received at that stage's hand-over. One
iteration is
  1. the architecture step (eq. 4): every learner's DARTS hypergradient through its own
     regularised momentum virtual step, summed, plus L2, one Adam step on A;
  2. the interleaved weight stages (eqs. 2-3): learner 1 receives the current encoder, takes
     `steps_per_stage` SGD steps on its loss + the regulariser, passes it to learner 2, ...,
     learner K's encoder goes back to learner 1 next iteration (round).
With K = 1 there is never an anchor and the iteration is second-order DARTS.

All state is flat float32 vectors (see `functional.py`); every update below runs inside
`strategy.run`, with gradients all-reduced so that every replica holds identical state.
"""
from typing import List, Sequence

import gin
import tensorflow as tf

from il_tf.learning import functional
from il_tf.learning import optimizers
from il_tf.models import supernet as supernet_lib

HESSIAN_MODES = ("joint", "split", "exact")
_SYNC = tf.VariableAggregation.ONLY_FIRST_REPLICA  # identical on every replica by construction


def _state(value, name):
    return tf.Variable(value, trainable=False, aggregation=_SYNC, name=name)


class Learner(tf.Module):
    """One learner's own state: head H_k, momentum buffers, encoder copy W_k, anchor."""

    def __init__(self, index: int, num_classes: int, head_init, weights_init, stats_init):
        super().__init__(name=f"learner_{index}")
        self.index, self.num_classes = index, num_classes
        self.head = _state(head_init, "head")                    # H_k
        self.encoder = _state(weights_init, "encoder")           # W_k (last stage's end)
        self.stats = _state(stats_init, "bn_statistics")         # W_k's BN moving statistics
        self.anchor = _state(tf.zeros_like(weights_init), "anchor")
        self.has_anchor = _state(0.0, "has_anchor")              # 1.0 once a hand-over happened
        self.encoder_momentum = _state(tf.zeros_like(weights_init), "encoder_momentum")
        self.head_momentum = _state(tf.zeros_like(head_init), "head_momentum")


@gin.configurable(module="il_tf.learning", denylist=["supernet", "num_classes", "strategy",
                                                     "steps_per_epoch"])
class InterleavingOptimizer(tf.Module):
    """The multi-level optimiser: one architecture step and K interleaved weight stages.

    Args:
      supernet: a built `Supernet` (shared definition; its variables seed the state).
      num_classes: classes of each learner's task, in interleaving order.
      strategy: the tf.distribute strategy the state lives under.
      steps_per_epoch: iterations per epoch (for the per-epoch cosine schedule).
      epochs: schedule length in epochs.
      order: 2 = DARTS second order (eq. 4 with the virtual step), 1 = first order (xi = 0).
      hessian: "joint" (two finite-difference passes, DARTS), "split" (encoder and head apart,
        the IL code's, four passes) or "exact" (double backprop; single replica only).
      weight_lr, weight_lr_min: SGD learning rate, cosine-annealed per epoch to the minimum.
      momentum: SGD momentum (also used in the virtual step).
      weight_decay: L2 coefficient on weights without an anchor (heads; encoder before the
        first hand-over); its gradient is weight_decay * p, as PyTorch SGD's.
      proximity: lam of eq. 3, lam * ||W - anchor||^2 on the encoder once anchored.
      grad_clip: gradient-norm clip over the learner's weights in the real steps.
      regularizer_in_clip: True (the IL code) clips grad(L + r); False (DARTS) clips grad(L)
        and adds the weight decay after clipping, as torch SGD's weight_decay does.
      steps_per_stage: SGD steps each learner takes per stage (the IL code: 1).
      arch_lr, arch_beta_1, arch_beta_2, arch_weight_decay: Adam on A (PyTorch's, L2 added to
        the gradient).
      sequential_passes: run the forward/backward passes strictly one at a time (lower peak
        memory; False lets independent passes overlap).
    """

    def __init__(self, supernet: supernet_lib.Supernet, num_classes: Sequence[int], strategy,
                 steps_per_epoch: int, epochs: int = 50, order: int = 2, hessian: str = "joint",
                 weight_lr: float = 0.025, weight_lr_min: float = 0.001, momentum: float = 0.9,
                 weight_decay: float = 3e-4, proximity: float = 1.5e-4, grad_clip: float = 5.0,
                 regularizer_in_clip: bool = True, steps_per_stage: int = 1,
                 arch_lr: float = 3e-5, arch_beta_1: float = 0.5, arch_beta_2: float = 0.999,
                 arch_weight_decay: float = 1e-4, sequential_passes: bool = True):
        super().__init__(name="interleaving")
        self.sequential_passes = sequential_passes
        self._previous_pass = []
        if order not in (1, 2):
            raise ValueError(f"order must be 1 or 2, got {order}.")
        if hessian not in HESSIAN_MODES:
            raise ValueError(f"hessian must be one of {HESSIAN_MODES}, got {hessian!r}.")
        if hessian == "exact" and strategy.num_replicas_in_sync > 1:
            raise ValueError("hessian='exact' runs on one replica; use 'joint' or 'split' "
                             "under a multi-replica strategy.")
        self.strategy = strategy
        self.fn = functional.SupernetFunctions(supernet)
        self.order, self.hessian = order, hessian
        self.steps_per_epoch, self.epochs = int(steps_per_epoch), int(epochs)
        self.weight_lr, self.weight_lr_min, self.momentum = weight_lr, weight_lr_min, momentum
        self.weight_decay, self.proximity, self.grad_clip = weight_decay, proximity, grad_clip
        self.regularizer_in_clip, self.steps_per_stage = regularizer_in_clip, steps_per_stage
        with strategy.scope():
            w0 = self.fn.weights_layout.initial_value(supernet.encoder_variables)
            s0 = self.fn.stats_layout.initial_value(supernet.non_trainable_variables)
            self.encoder = _state(w0, "current_encoder")            # the encoder being passed
            self.stats = _state(s0, "current_bn_statistics")
            self.learners: List[Learner] = []
            for k, n in enumerate(num_classes):
                head = supernet_lib.ClassifierHead(n)
                head.build((None, self.fn.feature_dim))
                h0 = self.fn.head_layout(n).initial_value(head.trainable_variables)
                self.learners.append(Learner(k, n, h0, w0, s0))
            self.alphas = [v.value for v in supernet.architecture_variables]  # A
            self.arch_optimizer = optimizers.TorchAdam(
                self.alphas, arch_lr, arch_beta_1, arch_beta_2, 1e-8, arch_weight_decay)
            self.iteration = _state(tf.constant(0, tf.int64), "iteration")
            self.stages_done = _state(tf.constant(0, tf.int64), "stages_done")

    # ---------------------------------------------------------------- helpers
    @property
    def num_learners(self) -> int:
        return len(self.learners)

    def learning_rate(self):
        """xi and the real steps' lr: cosine annealing per epoch (DARTS's scheduler)."""
        epoch = self.iteration // self.steps_per_epoch
        return optimizers.cosine_learning_rate(epoch, self.weight_lr, self.weight_lr_min,
                                               self.epochs)

    def _regularizer_grads(self, learner: Learner, w, h):
        """Gradient of r (PAPER.md "The regulariser"): 2*lam*(W - anchor) on an anchored
        encoder, weight_decay * p otherwise (eq. 3's proximity term / plain weight decay)."""
        anchored = 2.0 * self.proximity * (w - learner.anchor)
        decayed = self.weight_decay * w
        rw = learner.has_anchor * anchored + (1.0 - learner.has_anchor) * decayed
        return rw, self.weight_decay * h

    def _all_reduce(self, *values, op=tf.distribute.ReduceOp.SUM):
        ctx = tf.distribute.get_replica_context()
        if ctx is None or self.strategy.num_replicas_in_sync == 1:
            return values
        return ctx.all_reduce(op, values)

    def _loss_scale(self, labels):
        """1 / global batch: replicas' summed losses and gradients add up to the global mean."""
        return 1.0 / tf.cast(tf.shape(labels)[0] * self.strategy.num_replicas_in_sync, tf.float32)

    def _alpha_values(self):
        return [tf.convert_to_tensor(a) for a in self.alphas]

    def _grads(self, w, h, stats, x, y):
        """One traced pass: (loss, correct, dw, dh, dA list, new BN stats), all tensors in.

        Passes run one after another (each waits for the previous one's loss): independent
        passes (the two finite differences, different learners) would otherwise run at the
        same time and hold their activations together, for little speed on a few cores.
        """
        t = tf.convert_to_tensor
        with tf.control_dependencies(self._previous_pass):
            x = tf.identity(x)
        out = self.fn.gradients(t(w), t(h), t(stats), self._alpha_values(), x, y,
                                self._loss_scale(y))
        self._previous_pass = [out[0]] if self.sequential_passes else []
        return out

    # ---------------------------------------------------------------- eq. 4
    def learner_hypergradient(self, learner: Learner, train_batch, val_batch):
        """Learner k's architecture gradient g_k (eq. 4); returns (g_k list, val loss)."""
        (x_tr, y_tr), (x_val, y_val) = train_batch, val_batch
        w, h, stats = learner.encoder.read_value(), learner.head.read_value(), learner.stats
        if self.order == 1:  # First order: xi = 0, the validation gradient at W_k itself.
            loss, _, _, _, ga, _ = self._grads(w, h, stats, x_val, y_val)
            ga = list(self._all_reduce(*ga))
            (loss,) = self._all_reduce(loss)
            return ga, loss
        xi = self.learning_rate()
        rw, rh = self._regularizer_grads(learner, w, h)
        if self.hessian == "exact":
            return self._exact_hypergradient(learner, w, h, rw, rh, xi, train_batch, val_batch)
        # The virtual step theta' = theta - xi * (mu * buf + grad(L_train + r)).
        _, _, gw, gh, _, _ = self._grads(w, h, stats, x_tr, y_tr)
        gw, gh = self._all_reduce(gw, gh)
        w1 = w - xi * (self.momentum * learner.encoder_momentum + gw + rw)
        h1 = h - xi * (self.momentum * learner.head_momentum + gh + rh)
        loss, _, vw, vh, ga, _ = self._grads(w1, h1, stats, x_val, y_val)
        loss, vw, vh, *ga = self._all_reduce(loss, vw, vh, *ga)
        # Hv = d/dA [grad_theta L_train . v] by central differences at theta +- eps * v.
        if self.hessian == "joint":
            parts = [(vw, vh)]
        else:  # "split": the encoder and head parts, each with its own eps.
            parts = [(vw, tf.zeros_like(vh)), (tf.zeros_like(vw), vh)]
        hv = [tf.zeros_like(a) for a in ga]
        for dw, dh in parts:
            eps = 0.01 / tf.sqrt(tf.reduce_sum(tf.square(dw)) + tf.reduce_sum(tf.square(dh)))
            gp = self._grads(w + eps * dw, h + eps * dh, stats, x_tr, y_tr)[4]
            gm = self._grads(w - eps * dw, h - eps * dh, stats, x_tr, y_tr)[4]
            diff = self._all_reduce(*[p - m for p, m in zip(gp, gm)])
            hv = [acc + d / (2.0 * eps) for acc, d in zip(hv, diff)]
        return [g - xi * v for g, v in zip(ga, hv)], loss

    def _exact_hypergradient(self, learner, w, h, rw, rh, xi, train_batch, val_batch):
        """The same g_k by double backprop through the virtual step (nested tapes)."""
        (x_tr, y_tr), (x_val, y_val) = train_batch, val_batch
        alphas = self._alpha_values()
        scale = self._loss_scale(y_tr)
        with tf.GradientTape() as outer:
            outer.watch(alphas)
            with tf.GradientTape() as inner:
                inner.watch([w, h])
                train_loss = self.fn.training_loss(w, h, alphas, x_tr, y_tr, scale)
            gw, gh = inner.gradient(train_loss, [w, h])
            w1 = w - xi * (self.momentum * learner.encoder_momentum + gw + rw)
            h1 = h - xi * (self.momentum * learner.head_momentum + gh + rh)
            val_loss = self.fn.training_loss(w1, h1, alphas, x_val, y_val,
                                             self._loss_scale(y_val))
        return outer.gradient(val_loss, alphas,
                              unconnected_gradients=tf.UnconnectedGradients.ZERO), val_loss

    def architecture_step(self, batches):
        """Eq. 4 summed over learners, then one Adam step on A (eq. 1's upper level)."""
        total, losses = None, []
        for learner, (train_batch, val_batch) in zip(self.learners, batches):
            g, loss = self.learner_hypergradient(learner, train_batch, val_batch)
            total = g if total is None else [t + gi for t, gi in zip(total, g)]
            losses.append(loss)
        self.arch_optimizer.apply(total, self.alphas)
        return losses

    # ---------------------------------------------------------------- eqs. 2-3
    def weight_stage(self, learner: Learner, train_batches):
        """Learner k receives the current encoder and trains it (eq. 2 at the first stage,
        eq. 3 after), then keeps W_k and passes the encoder on. Returns (loss, correct, n)."""
        received = self.stages_done > 0
        if self.num_learners > 1:  # The hand-over: anchor = the encoder received.
            learner.anchor.assign(tf.where(received, self.encoder, learner.anchor))
            learner.has_anchor.assign(tf.where(received, 1.0, learner.has_anchor))
        lr = self.learning_rate()
        loss_sum = correct_sum = count = 0.0
        for x, y in train_batches:
            w, h = self.encoder.read_value(), learner.head.read_value()
            loss, correct, gw, gh, _, new_stats = self._grads(w, h, self.stats, x, y)
            (new_stats,) = self._all_reduce(new_stats, op=tf.distribute.ReduceOp.MEAN)
            loss, correct, gw, gh = self._all_reduce(loss, correct, gw, gh)
            rw, rh = self._regularizer_grads(learner, w, h)
            if self.regularizer_in_clip:
                gw, gh = gw + rw, gh + rh
            norm = tf.sqrt(tf.reduce_sum(tf.square(gw)) + tf.reduce_sum(tf.square(gh)))
            clip = tf.minimum(1.0, self.grad_clip / (norm + 1e-6))  # torch's clip_grad_norm_
            gw, gh = gw * clip, gh * clip
            if not self.regularizer_in_clip:
                gw, gh = gw + rw, gh + rh
            optimizers.sgd_momentum_update(self.encoder, learner.encoder_momentum, gw, lr,
                                           self.momentum)
            optimizers.sgd_momentum_update(learner.head, learner.head_momentum, gh, lr,
                                           self.momentum)
            self.stats.assign(new_stats)
            loss_sum += loss
            correct_sum += correct
            count += tf.cast(tf.shape(y)[0] * self.strategy.num_replicas_in_sync, tf.float32)
        learner.encoder.assign(self.encoder)
        learner.stats.assign(self.stats)
        self.stages_done.assign_add(1)
        return loss_sum / self.steps_per_stage, correct_sum, count

    # ---------------------------------------------------------------- one iteration
    def replica_iteration(self, batches):
        """Architecture step, then the K weight stages in order. Runs in replica context.

        Args:
          batches: per learner (train batches, val batch): `steps_per_stage` (x, y) training
            batches, the first also used by the architecture step (as DARTS reuses it).
        Returns:
          dict of per-learner tensors: search val loss, train loss, train correct, count.
        """
        self._previous_pass = []  # a new trace: no pass to wait for yet
        val_losses = self.architecture_step([(tr[0], val) for tr, val in batches])
        out = {"search_val_loss": [], "train_loss": [], "train_correct": [], "train_count": []}
        for k, learner in enumerate(self.learners):
            loss, correct, count = self.weight_stage(learner, batches[k][0])
            out["train_loss"].append(loss)
            out["train_correct"].append(correct)
            out["train_count"].append(count)
        out["search_val_loss"] = val_losses
        self.iteration.assign_add(1)
        return {key: tf.stack(v) for key, v in out.items()}

    # ---------------------------------------------------------------- model selection
    def evaluate_batch(self, learner: Learner, x, y):
        """Learner k's summed loss and correct count in inference mode on one batch."""
        t = tf.convert_to_tensor
        return self.fn.evaluate(t(learner.encoder), t(learner.head), t(learner.stats),
                                self._alpha_values(), x, y)

    def numpy_alphas(self):
        return self.fn.supernet.architecture.numpy_alphas()
