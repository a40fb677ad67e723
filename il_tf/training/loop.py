"""Retraining a derived network from scratch (the DARTS protocol), and evaluating it.

`train(model_dir, genotype)` is the gin-configured root of `tools/train.py`:

- one SGD step per global batch, run per replica with `strategy.run`: the loss is the
  cross-entropy (label-smoothed for ImageNet) plus `auxiliary_weight` times the auxiliary
  head's, summed over the replica's examples and divided by the *global* batch, so that the
  all-reduced gradient is the full batch's mean gradient on any number of replicas;
- that gradient is clipped to global norm `grad_clip`, then DARTS's coupled weight decay and
  momentum are applied by `TorchSGD` (see optimizer.py for why not a Keras optimizer);
- `steps_per_loop` steps per call of one `tf.function` (a `tf.range` loop); the learning rate
  (cosine to 0, or step decay) and the drop path probability (`drop_path_prob * epoch /
  epochs`, as DARTS ramps it) are variables assigned once per epoch, never retraced;
- a checkpoint every `checkpoint_every_steps` steps and at each epoch end (model,
  optimizer, loss scale, epoch and step in the epoch); restarting the same command resumes:
  the epoch's data stream is rebuilt from `(seed, epoch)` and fast-forwarded to the saved
  step, so a resumed run sees the same batches as an uninterrupted one;
- after each epoch an evaluation on the `test` split (top-1; top-5 with `top5`), a line in
  `metrics.jsonl` and TensorBoard scalars (reporting.py).

**The reported test error is the last epoch's**, as DARTS reports it. Picking the best epoch
by its test error would select on the test set and leak it into the result; whoever wants
early stopping must hold a validation split out of the training data (a task's `splits`).
"""
import json
import math
import os
import tempfile
from typing import Dict, Optional, Union

from absl import logging
import gin
import keras
import numpy as np
import tensorflow as tf

from il_tf import config as config_lib
from il_tf import data
from il_tf import distribute
from il_tf.models import network as network_lib
from il_tf.search_space.genotypes import Genotype, get_genotype
from il_tf.training import checkpoints
from il_tf.training import reporting
from il_tf.training.errors import CheckpointError, TrainingDivergedError
from il_tf.optimizers import DynamicLossScale, TorchSGD

GENOTYPE_FILE = "genotype.json"
RESULTS_FILE = "results.json"

NETWORKS = {"cifar": network_lib.NetworkCIFAR, "imagenet": network_lib.NetworkImageNet}


@gin.configurable(module="il_tf.training")
def network(genotype: Union[str, Genotype], num_classes: int, *, family: str = "cifar",
            channels: int = 36, layers: int = 20, auxiliary: bool = True) -> keras.Model:
    """The discrete network to retrain (the same builder for training and evaluation).

    Args:
      genotype: a `Genotype`, a published name or a genotype.json path.
      num_classes: classifier outputs (from the task).
      family: "cifar" (`NetworkCIFAR`, 32x32 images) or "imagenet" (`NetworkImageNet`).
      channels: C, the first stage's node width.
      layers: number of cells.
      auxiliary: build the auxiliary head (its loss is used only in training).
    """
    if family not in NETWORKS:
        raise ValueError(f"unknown network family {family!r}; choose from {sorted(NETWORKS)}.")
    return NETWORKS[family](genotype, channels=channels, layers=layers,
                            num_classes=num_classes, auxiliary=auxiliary)


def learning_rate_at(epoch: int, *, schedule: str, base: float, epochs: int,
                     decay: float = 0.97, minimum: float = 0.0) -> float:
    """The learning rate of an epoch (0-based), constant within it, as DARTS's schedulers.

    "cosine": `CosineAnnealingLR(T_max=epochs, eta_min=minimum)` (CIFAR); "step":
    `StepLR(step_size=1, gamma=decay)`, i.e. `base * decay ** epoch` (ImageNet).
    """
    if schedule == "cosine":  # In float64; il_tf.learning.optimizers has a float32 twin.
        return minimum + 0.5 * (base - minimum) * (1.0 + math.cos(math.pi * epoch / epochs))
    if schedule == "step":
        return float(base * decay ** epoch)
    raise ValueError(f"unknown learning rate schedule {schedule!r}; use 'cosine' or 'step'.")


def _is_chief(strategy: tf.distribute.Strategy) -> bool:
    resolver = getattr(strategy, "cluster_resolver", None)
    task_type = getattr(resolver, "task_type", None)
    if task_type is None:
        return True
    if task_type == "chief":
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return task_type == "worker" and resolver.task_id == 0 and not has_chief


def _cross_entropy(labels, logits, num_classes: int, label_smoothing: float = 0.0):
    """Per-example cross-entropy in float32 (DARTS's CrossEntropyLabelSmooth when > 0)."""
    logits = tf.cast(logits, tf.float32)
    if label_smoothing:
        targets = tf.one_hot(labels, num_classes) * (1.0 - label_smoothing)
        targets += label_smoothing / num_classes
        return tf.nn.softmax_cross_entropy_with_logits(targets, logits)
    return tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits)


def _split_outputs(outputs):
    return outputs if isinstance(outputs, tuple) else (outputs, None)


def make_eval_function(strategy: tf.distribute.Strategy, model: keras.Model, num_classes: int,
                       top5: bool):
    """A tf.function: one pass over a (distributed) test dataset -> [loss_sum, top1, top5, n].

    Sums over all replicas' examples (a last partial batch included): the means are exact.
    """

    def replica_eval(images, labels):
        logits = tf.cast(model(images, training=False), tf.float32)
        loss = tf.reduce_sum(_cross_entropy(labels, logits, num_classes))
        top1 = tf.reduce_sum(tf.cast(tf.equal(tf.argmax(logits, -1, output_type=tf.int32),
                                              labels), tf.float32))
        k5 = tf.reduce_sum(tf.cast(tf.math.in_top_k(labels, logits, min(5, num_classes)),
                                   tf.float32)) if top5 else tf.constant(0.0)
        return tf.stack([loss, top1, k5, tf.cast(tf.size(labels), tf.float32)])

    @tf.function
    def evaluate_pass(dataset):
        totals = tf.zeros([4])
        for images, labels in dataset:
            per_replica = strategy.run(replica_eval, args=(images, labels))
            totals += strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)
        return totals

    return evaluate_pass


def _eval_batch(strategy, batch_size: int) -> int:
    """`batch_size` rounded up to a multiple of the replicas (each gets an equal share)."""
    replicas = strategy.num_replicas_in_sync
    return -(-batch_size // replicas) * replicas


def _eval_record(totals, top5: bool) -> Dict[str, float]:
    loss, top1, k5, count = (float(t) for t in totals.numpy())
    count = max(count, 1.0)
    record = {"test_loss": loss / count, "test_accuracy": top1 / count,
              "test_error": 1.0 - top1 / count}
    if top5:
        record.update(test_top5_accuracy=k5 / count, test_top5_error=1.0 - k5 / count)
    return record


class Trainer:
    """The model, its optimizer and the traced training step, built inside the strategy.

    `train()` drives it; tests use it for one step. See the module docstring for the step.
    """

    def __init__(self, strategy, model, *, global_batch_size: int, num_classes: int,
                 learning_rate: float, momentum: float, weight_decay: float,
                 grad_clip: Optional[float], auxiliary_weight: float, label_smoothing: float,
                 loss_scaling: bool, jit_compile: bool):
        self.strategy, self.model = strategy, model
        self.global_batch_size, self.num_classes = global_batch_size, num_classes
        self.grad_clip, self.auxiliary_weight = grad_clip, auxiliary_weight
        self.label_smoothing = label_smoothing
        with strategy.scope():
            self.variables = [v.value if isinstance(v, keras.Variable) else v
                              for v in model.trainable_variables]
            self.optimizer = TorchSGD(self.variables, learning_rate, momentum, weight_decay)
            # Always created (scale 1 unused in float32), so that checkpoints of either
            # precision have the same structure and a run may resume in the other.
            self.loss_scale = DynamicLossScale() if loss_scaling else None
            self.loss_scale_state = self.loss_scale or DynamicLossScale(1.0)
        forward_backward = self._forward_backward
        if jit_compile:  # XLA on the compute only: all-reduce and updates stay outside.
            forward_backward = tf.function(forward_backward, jit_compile=True)
        self._compute = forward_backward
        self.train_loop = tf.function(self._train_loop)

    def _forward_backward(self, images, labels, scale):
        with tf.GradientTape() as tape:
            logits, aux_logits = _split_outputs(self.model(images, training=True))
            per_example = _cross_entropy(labels, logits, self.num_classes,
                                         self.label_smoothing)
            if aux_logits is not None and self.auxiliary_weight:
                per_example += self.auxiliary_weight * _cross_entropy(
                    labels, aux_logits, self.num_classes, self.label_smoothing)
            # Sum over this replica's examples / global batch: the replicas' sum is the mean.
            loss = tf.nn.compute_average_loss(per_example,
                                              global_batch_size=self.global_batch_size)
            scaled = loss * scale
        grads = tape.gradient(scaled, self.variables)
        grads = [tf.zeros_like(v) if g is None else g for g, v in zip(grads, self.variables)]
        correct = tf.reduce_sum(tf.cast(
            tf.equal(tf.argmax(logits, -1, output_type=tf.int32), labels), tf.float32))
        return grads, tf.reduce_sum(per_example), correct

    def replica_step(self, images, labels):
        """One training step on this replica's batch; returns [loss_sum, correct, n, bad]."""
        scale = self.loss_scale.scale if self.loss_scale else tf.constant(1.0)
        grads, loss_sum, correct = self._compute(images, labels, tf.identity(scale))
        ctx = tf.distribute.get_replica_context()
        grads = ctx.all_reduce(tf.distribute.ReduceOp.SUM, grads)
        if self.loss_scale:
            grads = [g / scale for g in grads]
        norm = tf.linalg.global_norm(grads)
        finite = tf.math.is_finite(norm)
        if self.grad_clip:
            grads, _ = tf.clip_by_global_norm(grads, self.grad_clip, use_norm=norm)
        self.optimizer.apply(grads, finite)
        if self.loss_scale:
            self.loss_scale.update(finite)
        # Statistics of applied steps only: a skipped (non-finite) step is counted in `bad`.
        ok = tf.cast(finite, tf.float32)
        count = tf.cast(tf.size(labels), tf.float32)
        loss_sum = tf.where(finite, loss_sum, 0.0)
        return tf.stack([loss_sum, correct * ok, count * ok, 1.0 - ok])

    def _train_loop(self, iterator, steps):
        totals = tf.zeros([4])
        for _ in tf.range(steps):
            images, labels = next(iterator)
            per_replica = self.strategy.run(self.replica_step, args=(images, labels))
            totals += self.strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)
        return totals


def _save_genotype(model_dir: str, genotype: Genotype) -> None:
    path = os.path.join(model_dir, GENOTYPE_FILE)
    if os.path.exists(path):
        if Genotype.load(path) != genotype:
            raise CheckpointError(f"{model_dir} holds a run of another genotype ({path}); "
                                  f"use a new --model_dir for this one.")
        return
    genotype.save(path)


@gin.configurable(module="il_tf.training", denylist=["model_dir"])
def train(
    model_dir: str,
    genotype: Union[str, Genotype] = "DARTS_V2",
    *,
    epochs: int = 600,
    batch_size: int = 96,
    learning_rate: float = 0.025,
    lr_schedule: str = "cosine",
    lr_decay: float = 0.97,
    min_learning_rate: float = 0.0,
    momentum: float = 0.9,
    weight_decay: float = 3e-4,
    grad_clip: Optional[float] = 5.0,
    auxiliary_weight: float = 0.4,
    label_smoothing: float = 0.0,
    drop_path_prob: float = 0.2,
    cutout: int = 16,
    seed: int = 0,
    steps_per_epoch: Optional[int] = None,
    steps_per_loop: int = 50,
    checkpoint_every_steps: int = 1000,
    keep_checkpoints: int = 3,
    eval_batch_size: int = 256,
    top5: Optional[bool] = None,
    mixed_precision: Optional[str] = None,
    jit_compile: bool = False,
    deterministic: bool = False,
    interactive: Optional[bool] = None,
    log_every_steps: int = 100,
    stop_after_epochs: Optional[int] = None,
) -> Dict:
    """Retrains `genotype` from scratch on the gin-configured task; resumes in `model_dir`.

    The task is `il_tf.data.task()` (bind `il_tf.data.task.name`), the network
    `il_tf.training.network()`, the strategy `il_tf.get_strategy()`.

    Args:
      model_dir: the run directory (checkpoints, config.gin, metrics.jsonl, genotype.json,
        TensorBoard events, results.json).
      genotype: a published name, a genotype.json path or a search run's directory.
      epochs: passes over the training split.
      batch_size: the global batch (split over replicas).
      learning_rate: initial SGD learning rate.
      lr_schedule: "cosine" (to `min_learning_rate` over `epochs`) or "step" (times
        `lr_decay` each epoch).
      lr_decay: the step schedule's factor per epoch.
      min_learning_rate: the cosine schedule's floor.
      momentum: SGD momentum.
      weight_decay: coupled L2 coefficient (added to every trainable weight's gradient).
      grad_clip: global-norm clip of the batch gradient; None or 0 disables it.
      auxiliary_weight: weight of the auxiliary head's loss (if the network has one).
      label_smoothing: epsilon of the smoothed targets (0 = plain cross-entropy).
      drop_path_prob: the final drop path probability; epoch e uses `p * e / epochs`.
      cutout: cutout side in pixels (0 = off).
      seed: seeds the initial weights and every epoch's data order and augmentation.
      steps_per_epoch: None for one pass over the training split (full batches only).
      steps_per_loop: training steps per call of the traced loop (and progress update).
      checkpoint_every_steps: also checkpoint within epochs, every this many steps.
      keep_checkpoints: checkpoints kept (older ones are deleted).
      eval_batch_size: global batch of the test pass.
      top5: report top-5 too; None means when the task has at least 100 classes.
      mixed_precision: None, "mixed_float16" (with dynamic loss scaling) or "mixed_bfloat16".
      jit_compile: compile the forward and backward pass with XLA.
      deterministic: `tf.config.experimental.enable_op_determinism()` (slower).
      interactive: progress bar (True) or log lines (False); None asks the terminal.
      log_every_steps: log line interval without a terminal.
      stop_after_epochs: stop (resumable) after this many epochs in this process; None
        trains to `epochs`.

    Returns:
      The last epoch's metrics record (see reporting.py), with `params` and
      `multiply_adds` when training finished.

    Raises:
      CheckpointError: an unreadable or mismatching checkpoint, or a run dir of another
        genotype.
      TrainingDivergedError: the loss became NaN or infinite (nothing is overwritten).
      DatasetUnavailableError: the task's data cannot be read.
    """
    if deterministic:
        tf.config.experimental.enable_op_determinism()
    if mixed_precision not in (None, "mixed_float16", "mixed_bfloat16"):
        raise ValueError(f"mixed_precision must be None, 'mixed_float16' or 'mixed_bfloat16'; "
                         f"got {mixed_precision!r}.")
    genotype = get_genotype(genotype)
    strategy = distribute.get_strategy()
    chief = _is_chief(strategy)
    task = data.get_task()
    task.prepare()
    steps_per_epoch = steps_per_epoch or task.num_examples("train") // batch_size
    if steps_per_epoch < 1:
        raise ValueError(f"{task.name}: {task.num_examples('train')} training examples give "
                         f"no full batch of {batch_size}; lower train.batch_size.")
    if batch_size % strategy.num_replicas_in_sync:
        raise ValueError(f"train.batch_size={batch_size} is not divisible by the "
                         f"{strategy.num_replicas_in_sync} replicas.")
    top5 = task.num_classes >= 100 if top5 is None else top5
    os.makedirs(model_dir, exist_ok=True)
    if chief:
        _save_genotype(model_dir, genotype)

    previous_policy = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(mixed_precision or "float32")
    try:
        keras.utils.set_random_seed(seed)
        with strategy.scope():
            model = network(genotype, task.num_classes)
            epoch_var = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
            step_var = tf.Variable(0, dtype=tf.int64, trainable=False, name="step_in_epoch")
        trainer = Trainer(strategy, model, global_batch_size=batch_size,
                          num_classes=task.num_classes, learning_rate=learning_rate,
                          momentum=momentum, weight_decay=weight_decay, grad_clip=grad_clip,
                          auxiliary_weight=auxiliary_weight, label_smoothing=label_smoothing,
                          loss_scaling=mixed_precision == "mixed_float16",
                          jit_compile=jit_compile)
        checkpoint = checkpoints.model_checkpoint(
            model, optimizer=trainer.optimizer, loss_scale=trainer.loss_scale_state,
            epoch=epoch_var, step_in_epoch=step_var)
        # Non-chief workers of a multi-worker run must save too, into a throwaway directory.
        checkpoint_dir = model_dir if chief else tempfile.mkdtemp(prefix="il_tf_worker_")
        manager = tf.train.CheckpointManager(checkpoint, checkpoint_dir,
                                             max_to_keep=keep_checkpoints)
        if tf.train.latest_checkpoint(model_dir):
            latest = tf.train.latest_checkpoint(model_dir)
            checkpoints.read(checkpoint, latest)
            logging.info("resumed from %s (epoch %d, step %d of the epoch)", latest,
                         int(epoch_var.numpy()), int(step_var.numpy()))

        logging.info("%s on %s: %d parameters (auxiliary head excluded), %d replica(s), "
                     "%d steps per epoch", type(model).__name__, task.name,
                     network_lib.count_parameters(model), strategy.num_replicas_in_sync,
                     steps_per_epoch)
        return _run_epochs(**locals())
    finally:
        keras.mixed_precision.set_global_policy(previous_policy)


def _run_epochs(*, model_dir, genotype, epochs, batch_size, learning_rate, lr_schedule,
                lr_decay, min_learning_rate, drop_path_prob, cutout, seed, steps_per_epoch,
                steps_per_loop, checkpoint_every_steps, eval_batch_size, top5, strategy, chief,
                task, model, epoch_var, step_var, trainer, manager, interactive,
                log_every_steps, stop_after_epochs, **_):
    """The epoch loop of `train` (its locals passed by name)."""
    start_epoch = int(epoch_var.numpy())
    metrics = reporting.MetricsLog(model_dir, resume_epoch=start_epoch, enabled=chief)
    if start_epoch >= epochs:
        logging.info("%s already finished its %d epochs; nothing to do.", model_dir, epochs)
        records = reporting.read_metrics(model_dir)
        return _load_results(model_dir) or (records[-1] if records else {})
    progress = reporting.Progress(steps_per_epoch, interactive, log_every_steps)
    test_data = distribute.dataset(strategy, task, "test", _eval_batch(strategy, eval_batch_size),
                                   training=False)
    evaluate_pass = make_eval_function(strategy, model, task.num_classes, top5)
    config_saved = False
    record = {}
    last_epoch = epochs if stop_after_epochs is None else min(epochs,
                                                                start_epoch + stop_after_epochs)
    try:
        for epoch in range(start_epoch, last_epoch):
            lr = learning_rate_at(epoch, schedule=lr_schedule, base=learning_rate,
                                  epochs=epochs, decay=lr_decay, minimum=min_learning_rate)
            trainer.optimizer.learning_rate.assign(lr)
            drop_prob = drop_path_prob * epoch / epochs  # DARTS's linear ramp.
            model.drop_path_prob = drop_prob
            step = int(step_var.numpy())
            # Every epoch's stream is a function of (seed, epoch) alone; a resumed epoch
            # skips the batches trained before the checkpoint.
            stream = distribute.dataset(strategy, task, "train", batch_size, training=True,
                                        seed=seed * 100_003 + epoch, cutout=cutout)
            iterator = iter(stream)
            for _ in range(step):
                next(iterator)
            progress.start_epoch(epoch, epochs, step, lr)
            timer = reporting.Timer()
            totals = np.zeros(4)
            trained = 0
            while step < steps_per_epoch:
                global_step = epoch * steps_per_epoch + step
                n = min(steps_per_loop, steps_per_epoch - step,
                        checkpoint_every_steps - global_step % checkpoint_every_steps)
                totals += trainer.train_loop(iterator, tf.constant(n)).numpy()
                step += n
                trained += n
                _check_finite(totals, trainer, manager, epoch, step)
                step_var.assign(step)
                if chief and not config_saved:
                    config_lib.save_operative_config(model_dir)
                    config_saved = True
                seconds = timer.seconds()
                seen = max(totals[2], 1)
                progress.update(step, totals[0] / seen, totals[1] / seen,
                                trained * batch_size / max(seconds, 1e-9))
                if (epoch * steps_per_epoch + step) % checkpoint_every_steps == 0 and \
                        step < steps_per_epoch:
                    manager.save(checkpoint_number=epoch * steps_per_epoch + step)
            train_seconds = timer.seconds()
            record = {"epoch": epoch + 1, "step": (epoch + 1) * steps_per_epoch,
                      "learning_rate": lr, "drop_path_prob": drop_prob,
                      "train_loss": totals[0] / max(totals[2], 1),
                      "train_accuracy": totals[1] / max(totals[2], 1)}
            record.update(_eval_record(evaluate_pass(test_data), top5))
            record.update(images_per_second=trained * batch_size / max(train_seconds, 1e-9),
                          seconds=timer.seconds())
            record = {k: (float(v) if isinstance(v, (np.floating, float)) else v)
                      for k, v in record.items()}
            metrics.write(record)
            epoch_var.assign(epoch + 1)
            step_var.assign(0)
            manager.save(checkpoint_number=(epoch + 1) * steps_per_epoch)
            progress.end_epoch(record)
    finally:
        metrics.close()
    if int(epoch_var.numpy()) >= epochs and chief:
        record = _write_results(model_dir, genotype, model, task, record, epochs)
    return record


def _check_finite(totals, trainer, manager, epoch, step):
    bad = totals[3] > 0 and trainer.loss_scale is None
    if trainer.loss_scale is not None and float(trainer.loss_scale.scale.numpy()) < 1.0:
        bad = True
    if bad or not math.isfinite(totals[0]):
        raise TrainingDivergedError(
            f"the loss became NaN or infinite in epoch {epoch + 1} (by step {step}); stopped "
            f"without saving: the last good checkpoint "
            f"({manager.latest_checkpoint or 'none'}) and metrics.jsonl are kept. Lower "
            f"train.learning_rate or check the input data.")


def _write_results(model_dir, genotype, model, task, record, epochs) -> Dict:
    """results.json: the final epoch's test error (no selection on the test split)."""
    results = dict(record)
    results.update(
        genotype=genotype.to_dict(), epochs=epochs, task=task.name,
        params=network_lib.count_parameters(model),
        multiply_adds=network_lib.count_multiply_adds(model, task.image_shape),
        note="test_error is the last epoch's; no epoch is chosen by its test error.")
    path = os.path.join(model_dir, RESULTS_FILE)
    with open(path + ".tmp", "w") as f:
        json.dump(results, f, indent=1)
    os.replace(path + ".tmp", path)
    logging.info("final test error %.2f%% after %d epochs (%d params, %.1fM multiply-adds)",
                 100 * results["test_error"], epochs, results["params"],
                 results["multiply_adds"] / 1e6)
    return results


def _load_results(model_dir: str) -> Optional[Dict]:
    path = os.path.join(model_dir, RESULTS_FILE)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def evaluate(model_dir: str, checkpoint: Optional[str] = None, batch_size: int = 256,
             top5: Optional[bool] = None) -> Dict:
    """Evaluates a run's checkpoint on the test split (the run's config.gin must be parsed).

    Args:
      model_dir: the training run's directory (its genotype.json defines the cell).
      checkpoint: None for the latest; else a prefix or a name like "ckpt-120".
      batch_size: global evaluation batch.
      top5: report top-5 too; None means when the task has at least 100 classes.

    Returns:
      {"checkpoint", "epoch", "test_loss", "test_accuracy", "test_error", ["test_top5_*"],
       "num_examples", "params" (auxiliary head excluded), "multiply_adds" (per image)}.
    """
    path = checkpoints.resolve(model_dir, checkpoint)
    genotype_path = os.path.join(model_dir, GENOTYPE_FILE)
    if not os.path.exists(genotype_path):
        raise CheckpointError(f"{model_dir} has no {GENOTYPE_FILE}; is it a tools/train.py "
                              f"run directory?")
    genotype = get_genotype(genotype_path)
    strategy = distribute.get_strategy()
    task = data.get_task()
    top5 = task.num_classes >= 100 if top5 is None else top5
    with strategy.scope():
        model = network(genotype, task.num_classes)
        epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
    checkpoints.read(checkpoints.model_checkpoint(model, epoch=epoch), path, partial=True)
    test_data = distribute.dataset(strategy, task, "test", _eval_batch(strategy, batch_size),
                                   training=False)
    totals = make_eval_function(strategy, model, task.num_classes, top5)(test_data)
    result = {"checkpoint": path, "epoch": int(epoch.numpy())}
    result.update(_eval_record(totals, top5))
    result.update(num_examples=int(totals[3]), params=network_lib.count_parameters(model),
                  multiply_adds=network_lib.count_multiply_adds(model, task.image_shape))
    return result
