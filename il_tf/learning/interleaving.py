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
`learning_strategy` swaps step 2 for a baseline with the same budget (blocked, multitask,
single; see `strategies.py`); `chained` lets eq. 4's gradient flow through the anchor.

All state is flat float32 vectors (see `functional.py`); every update below runs inside
`strategy.run`, with gradients all-reduced so that every replica holds identical state.
"""
import functools
import threading
from typing import List, Sequence

import gin
import tensorflow as tf

from il_tf import optimizers
from il_tf.learning import functional
from il_tf.learning import strategies
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
      learning_strategy: "interleaved" (the paper), or a baseline with the same learners,
        data and budget: "blocked", "multitask", "single" (`strategies.py`).
      chained: second order with hessian="exact" only: learner k's virtual step also
        differentiates its anchor, taken as learner k-1's one-step update from W_{k-1} on
        its training batch (value: the real anchor; derivative in A: that of the step), where
        the paper's note treats the anchor as a constant. One extra double-backprop pass per
        anchored learner. Interleaved only.
      arch_warmup_epochs: epochs of weight stages alone before the first architecture step
        (PC-DARTS: 15 of 50). Decided from the checkpointed iteration counter, so a resumed
        run warms up exactly as an uninterrupted one; the warm-up's search val losses are
        reported as 0 (no hypergradient is computed).
    """

    def __init__(self, supernet: supernet_lib.Supernet, num_classes: Sequence[int], strategy,
                 steps_per_epoch: int, epochs: int = 50, order: int = 2, hessian: str = "joint",
                 weight_lr: float = 0.025, weight_lr_min: float = 0.001, momentum: float = 0.9,
                 weight_decay: float = 3e-4, proximity: float = 1.5e-4, grad_clip: float = 5.0,
                 regularizer_in_clip: bool = True, steps_per_stage: int = 1,
                 arch_lr: float = 3e-5, arch_beta_1: float = 0.5, arch_beta_2: float = 0.999,
                 arch_weight_decay: float = 1e-4, sequential_passes: bool = True,
                 learning_strategy: str = "interleaved", chained: bool = False,
                 arch_warmup_epochs: int = 0):
        super().__init__(name="interleaving")
        self.sequential_passes = sequential_passes
        # Per thread: MirroredStrategy traces each replica's function in its own thread.
        self._passes = threading.local()
        if order not in (1, 2):
            raise ValueError(f"order must be 1 or 2, got {order}.")
        if hessian not in HESSIAN_MODES:
            raise ValueError(f"hessian must be one of {HESSIAN_MODES}, got {hessian!r}.")
        if hessian == "exact" and strategy.num_replicas_in_sync > 1:
            raise ValueError("hessian='exact' runs on one replica; use 'joint' or 'split' "
                             "under a multi-replica strategy.")
        self.learning_strategy = strategies.check(learning_strategy)
        if chained and (order != 2 or hessian != "exact"):
            raise ValueError("chained=True needs order=2 and hessian='exact' (it differentiates "
                             "through the anchor with nested tapes).")
        if chained and learning_strategy != "interleaved":
            raise ValueError("chained=True is defined for learning_strategy='interleaved' only.")
        self.chained = chained
        if arch_warmup_epochs < 0:
            raise ValueError(f"arch_warmup_epochs must be >= 0, got {arch_warmup_epochs}.")
        self.arch_warmup_epochs = int(arch_warmup_epochs)
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

    @property
    def total_iterations(self) -> int:
        return self.steps_per_epoch * self.epochs

    @property
    def train_batches_per_learner(self) -> int:
        """Distinct training batches per learner per iteration the strategy can use."""
        return strategies.train_batches_per_learner(self.learning_strategy, self.num_learners,
                                                    self.steps_per_stage)

    @property
    def arch_warmup_iterations(self) -> int:
        return self.arch_warmup_epochs * self.steps_per_epoch

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
        previous = getattr(self._passes, "last", [])  # this replica's (thread's) last pass
        with tf.control_dependencies(previous):
            x = tf.identity(x)
        out = self.fn.gradients(t(w), t(h), t(stats), self._alpha_values(), x, y,
                                self._loss_scale(y))
        self._passes.last = [out[0]] if self.sequential_passes else []
        return out

    # ---------------------------------------------------------------- eq. 4
    def learner_hypergradient(self, learner: Learner, train_batch, val_batch, previous=None):
        """Learner k's architecture gradient g_k (eq. 4); returns (g_k list, val loss).

        `previous`: (learner k-1, its training batch) when `chained` (see the class)."""
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
            return self._exact_hypergradient(learner, w, h, rw, rh, xi, train_batch, val_batch,
                                             previous if self.chained else None)
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

    def _exact_hypergradient(self, learner, w, h, rw, rh, xi, train_batch, val_batch,
                             previous=None):
        """The same g_k by double backprop through the virtual step (nested tapes).

        With `previous` = (learner k-1, its batch), the chained gradient: the anchor becomes
        anchor + s(A) - stop_gradient(s(A)), s(A) = -xi grad_W L_{k-1}(W_{k-1}, H_{k-1}, A),
        the A-dependent part of learner k-1's one-step update (the same lr as the real step),
        so the value is unchanged and d anchor / dA = -xi d/dA grad_W L_{k-1}.
        """
        (x_tr, y_tr), (x_val, y_val) = train_batch, val_batch
        alphas = self._alpha_values()
        scale = self._loss_scale(y_tr)
        with tf.GradientTape() as outer:
            outer.watch(alphas)
            if previous is not None:
                prev, (x_p, y_p) = previous
                w_p = prev.encoder.read_value()
                with tf.GradientTape() as prev_tape:
                    prev_tape.watch(w_p)
                    prev_loss = self.fn.training_loss(w_p, prev.head.read_value(), alphas,
                                                      x_p, y_p, self._loss_scale(y_p))
                step = -xi * prev_tape.gradient(prev_loss, w_p)
                shift = step - tf.stop_gradient(step)  # zero, with the step's derivative
                rw = rw - learner.has_anchor * 2.0 * self.proximity * shift
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
        """Eq. 4 summed over learners, then one Adam step on A (eq. 1's upper level).

        Strategy "single" sums learner 1's alone (the others' val losses are reported 0)."""
        total, losses = None, []
        used = strategies.hypergradient_learners(self.learning_strategy, self.num_learners)
        for k, (learner, (train_batch, val_batch)) in enumerate(zip(self.learners, batches)):
            if k not in used:
                losses.append(tf.constant(0.0))
                continue
            previous = None
            if self.chained and self.num_learners > 1:  # learner k's anchor came from k-1
                previous = (self.learners[k - 1], batches[k - 1][0])
            g, loss = self.learner_hypergradient(learner, train_batch, val_batch, previous)
            total = g if total is None else [t + gi for t, gi in zip(total, g)]
            losses.append(loss)
        self.arch_optimizer.apply(total, self.alphas)
        return losses

    def _architecture_step_after_warmup(self, batches):
        """`architecture_step`, or nothing (val losses 0) in the first `arch_warmup_epochs`.

        The decision is a tensor of the iteration counter: the step function is traced once
        for the whole run, warm-up or not, and a resumed run decides alike. On one replica a
        `tf.cond` skips the step's passes. Under several replicas the all-reduces inside the
        step cannot sit in a `tf.cond` (MirroredStrategy's merge_call refuses control flow
        around them), so the step is computed and its result discarded: A and Adam's state
        are put back during the warm-up (correct, but no faster than searching)."""
        if not self.arch_warmup_iterations:
            return self.architecture_step(batches)
        active = self.iteration >= self.arch_warmup_iterations
        if self.strategy.num_replicas_in_sync == 1:
            def step():
                losses = tf.stack(self.architecture_step(batches))
                self._passes.last = []  # the branch's passes cannot be waited on outside it
                return losses

            losses = tf.cond(active, step, lambda: tf.zeros([self.num_learners]))
            self._passes.last = [losses] if self.sequential_passes else []
            return tf.unstack(losses)
        adam = self.arch_optimizer
        state = list(self.alphas) + list(adam.m) + list(adam.v) + [adam.step]
        saved = [v.read_value() for v in state]
        with tf.control_dependencies(saved):
            losses = self.architecture_step(batches)
        with tf.control_dependencies(losses):
            for v, old in zip(state, saved):
                v.assign(tf.where(active, v.read_value(), old))
        return [tf.where(active, loss, 0.0) for loss in losses]

    # ---------------------------------------------------------------- eqs. 2-3
    def weight_stage(self, learner, train_batches, handover=None):
        """Learner k receives the current encoder and trains it (eq. 2 at the first stage,
        eq. 3 after), then keeps W_k and passes the encoder on. Returns (loss, correct, n).

        Generalised for the baselines (`strategies.py`): `learner` may be a list of learners
        (multitask: each step's loss is the sum of theirs at the one encoder, `train_batches`
        then one list per learner, and the results are per-learner lists); `handover` (a
        bool tensor) overrides the interleaved rule "every stage but the run's first"."""
        group = list(learner) if isinstance(learner, (list, tuple)) else [learner]
        batches = list(train_batches) if len(group) > 1 else [train_batches]
        received = self.stages_done > 0 if handover is None else handover
        if self.num_learners > 1 and len(group) == 1:  # Hand-over: anchor = encoder received.
            group[0].anchor.assign(tf.where(received, self.encoder, group[0].anchor))
            group[0].has_anchor.assign(tf.where(received, 1.0, group[0].has_anchor))
        lr = self.learning_rate()
        sums = [[0.0, 0.0, 0.0] for _ in group]  # loss, correct, count per learner
        for step_batches in zip(*batches):
            for acc, (loss, correct, count) in zip(sums, self._weight_step(group, step_batches,
                                                                           lr)):
                acc[0] += loss
                acc[1] += correct
                acc[2] += count
        for member in group:  # W_k := the encoder it passes on (multitask: the shared one)
            member.encoder.assign(self.encoder)
            member.stats.assign(self.stats)
        self.stages_done.assign_add(1)
        out = [(l / len(batches[0]), c, n) for l, c, n in sums]
        return out[0] if len(group) == 1 else [list(v) for v in zip(*out)]

    def _weight_step(self, group, step_batches, lr):
        """One SGD step of the encoder on the group's summed loss, each head on its own.

        The encoder's momentum buffer is group[0]'s (multitask: copied to the others, so that
        every learner's virtual step in eq. 4 sees the shared buffer); the regulariser on the
        encoder is group[0]'s (multitask learners are never anchored: weight decay)."""
        w = self.encoder.read_value()
        stats, gw, heads, out = self.stats, None, [], []
        for member, (x, y) in zip(group, step_batches):
            h = member.head.read_value()
            loss, correct, gw_k, gh, _, stats = self._grads(w, h, stats, x, y)
            (stats,) = self._all_reduce(stats, op=tf.distribute.ReduceOp.MEAN)
            loss, correct, gw_k, gh = self._all_reduce(loss, correct, gw_k, gh)
            gw = gw_k if gw is None else gw + gw_k
            heads.append((h, gh))
            out.append((loss, correct,
                        tf.cast(tf.shape(y)[0] * self.strategy.num_replicas_in_sync, tf.float32)))
        rw, _ = self._regularizer_grads(group[0], w, heads[0][0])
        ghs = [gh for _, gh in heads]
        rhs = [self.weight_decay * h for h, _ in heads]
        if self.regularizer_in_clip:
            gw, ghs = gw + rw, [gh + rh for gh, rh in zip(ghs, rhs)]
        squares = tf.reduce_sum(tf.square(gw))
        for gh in ghs:
            squares = squares + tf.reduce_sum(tf.square(gh))
        norm = tf.sqrt(squares)
        clip = tf.minimum(1.0, self.grad_clip / (norm + 1e-6))  # torch's clip_grad_norm_
        gw, ghs = gw * clip, [gh * clip for gh in ghs]
        if not self.regularizer_in_clip:
            gw, ghs = gw + rw, [gh + rh for gh, rh in zip(ghs, rhs)]
        optimizers.sgd_momentum_update(self.encoder, group[0].encoder_momentum, gw, lr,
                                       self.momentum)
        for member, gh in zip(group, ghs):
            if member is not group[0]:
                member.encoder_momentum.assign(group[0].encoder_momentum)
            optimizers.sgd_momentum_update(member.head, member.head_momentum, gh, lr,
                                           self.momentum)
        self.stats.assign(stats)
        return out

    # ---------------------------------------------------------------- one iteration
    def replica_iteration(self, batches):
        """Architecture step, then the K weight stages in order. Runs in replica context.

        Args:
          batches: per learner (train batches, val batch): `steps_per_stage` (x, y) training
            batches, the first also used by the architecture step (as DARTS reuses it).
        Returns:
          dict of per-learner tensors: search val loss, train loss, train correct, count.
        """
        self._passes.last = []  # a new trace: no pass to wait for yet
        val_losses = self._architecture_step_after_warmup(
            [(tr[0], val) for tr, val in batches])
        if self.learning_strategy != "interleaved":
            return self._baseline_stages(batches, val_losses)
        out = {"search_val_loss": [], "train_loss": [], "train_correct": [], "train_count": []}
        for k, learner in enumerate(self.learners):
            loss, correct, count = self.weight_stage(learner, batches[k][0])
            out["train_loss"].append(loss)
            out["train_correct"].append(correct)
            out["train_count"].append(count)
        out["search_val_loss"] = val_losses
        self.iteration.assign_add(1)
        return {key: tf.stack(v) for key, v in out.items()}

    def _stage_batches(self, train_batches, stage):
        """Stage `stage`'s `steps_per_stage` batches out of a learner's list (cycled)."""
        n = self.steps_per_stage
        return [train_batches[(stage * n + i) % len(train_batches)] for i in range(n)]

    def _baseline_stages(self, batches, val_losses):
        """The K weight stages of "blocked", "multitask" or "single" (`strategies.py`).

        Per learner: train loss = mean over the stages it trained in (0 if none), correct and
        count summed over them."""
        num = self.num_learners
        loss, correct, count = (tf.zeros([num]) for _ in range(3))
        if self.learning_strategy == "blocked":
            active = strategies.block_learner(self.iteration, num, self.total_iterations)
            first = strategies.blocked_handover(self.iteration, num, self.total_iterations)
            for s in range(num):
                handover = tf.logical_and(first, s == 0)

                def stage(k=None, s=s, handover=handover):
                    return tf.stack(self.weight_stage(
                        self.learners[k], self._stage_batches(batches[k][0], s), handover))

                result = tf.switch_case(tf.cast(active, tf.int32),
                                        [functools.partial(stage, k) for k in range(num)])
                mask = tf.one_hot(active, num)
                loss += mask * result[0] / num
                correct += mask * result[1]
                count += mask * result[2]
        elif self.learning_strategy == "multitask":
            for s in range(num):
                stage = [self._stage_batches(tr, s) for tr, _ in batches]
                l, c, n = self.weight_stage(self.learners, stage, tf.constant(False))
                loss += tf.stack(l) / num
                correct += tf.stack(c)
                count += tf.stack(n)
        else:  # single: learner 1 takes every stage, never anchored.
            mask = tf.one_hot(0, num)
            for s in range(num):
                l, c, n = self.weight_stage(self.learners[0],
                                            self._stage_batches(batches[0][0], s),
                                            tf.constant(False))
                loss, correct, count = loss + mask * l / num, correct + mask * c, count + mask * n
        self.iteration.assign_add(1)
        return {"search_val_loss": tf.stack(val_losses), "train_loss": loss,
                "train_correct": correct, "train_count": count}

    # ---------------------------------------------------------------- model selection
    def evaluate_batch(self, learner: Learner, x, y):
        """Learner k's summed loss and correct count in inference mode on one batch."""
        t = tf.convert_to_tensor
        return self.fn.evaluate(t(learner.encoder), t(learner.head), t(learner.stats),
                                self._alpha_values(), x, y)

    def numpy_alphas(self):
        return self.fn.supernet.architecture.numpy_alphas()
