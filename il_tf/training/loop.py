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
- the run loop (`il_tf.runs`) checkpoints the model, optimizer and loss scale and resumes
  exactly: the epoch's data stream is rebuilt from `(seed, epoch)` and skips the steps
  already trained, and drop-path masks are keyed on `(seed, step)`;
- after each epoch an evaluation on the `test` split (top-1; top-5 with `top5`), a line in
  `metrics.jsonl` and TensorBoard scalars.

**The reported test error is the last epoch's**, as DARTS reports it. Picking the best epoch
by its test error would select on the test set and leak it into the result; whoever wants
early stopping must hold a validation split out of the training data (a task's `splits`).
"""
import json
import math
import os
from typing import Dict, List, Optional, Union

from absl import logging
import gin
import keras
import numpy as np
import tensorflow as tf

from il_tf import config as config_lib
from il_tf import data
from il_tf import distribute
from il_tf import runs
from il_tf.errors import CheckpointError, TrainingDivergedError
from il_tf.models import network as network_lib
from il_tf.runs import checkpoints
from il_tf.search_space.genotypes import Genotype, get_genotype
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
    if schedule == "cosine":  # In float64; il_tf.optimizers has a float32 twin.
        return minimum + 0.5 * (base - minimum) * (1.0 + math.cos(math.pi * epoch / epochs))
    if schedule == "step":
        return float(base * decay ** epoch)
    raise ValueError(f"unknown learning rate schedule {schedule!r}; use 'cosine' or 'step'.")


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

    def _train_loop(self, iterator, steps, first_step, seed):
        """`steps` steps from global step `first_step`; drop-path masks keyed on (seed, step)."""
        totals = tf.zeros([4])
        key = getattr(self.model, "drop_path_key", None)
        for i in tf.range(steps):
            if key is not None:
                key.assign(tf.stack([seed, first_step + tf.cast(i, tf.int64)]))
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
    `il_tf.training.network()`, the strategy `il_tf.get_strategy()`; the run loop is
    `il_tf.runs.RunLoop` (checkpoints, exact resume, metrics, progress, signals).

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
      seed: seeds the initial weights, every epoch's data order and augmentation, and the
        drop-path masks.
      steps_per_epoch: None for one pass over the training split (full batches only).
      steps_per_loop: training steps per call of the traced loop (and progress update).
      checkpoint_every_steps: also checkpoint within epochs, every this many steps.
      keep_checkpoints: checkpoints kept (older ones are deleted).
      eval_batch_size: global batch of the test pass.
      top5: report top-5 too; None means when the task has at least 100 classes.
      mixed_precision: None, "mixed_float16" (with dynamic loss scaling) or "mixed_bfloat16".
      jit_compile: compile the forward and backward pass with XLA.
      deterministic: `tf.config.experimental.enable_op_determinism()` (slower). For
        bit-identical reruns in separate processes also set `TF_ENABLE_ONEDNN_OPTS=0`:
        oneDNN kernels were seen to differ at float rounding between two processes.
      interactive: progress bar (True) or log lines (False); None asks the terminal.
      log_every_steps: log line interval without a terminal.
      stop_after_epochs: stop (resumably) after this many epochs in this process; None
        trains to `epochs`.

    Returns:
      The last epoch's metrics record, with `params` and `multiply_adds` when training
      finished (results.json).

    Raises:
      CheckpointError: no readable checkpoint in a run directory that has some, or a run dir
        of another genotype.
      TrainingDivergedError: the loss or the state became NaN or infinite (nothing of it is
        saved).
      DatasetUnavailableError: the task's data cannot be read.
    """
    config_lib.check_arguments(train, locals(), "il_tf.training.train")
    if deterministic:
        tf.config.experimental.enable_op_determinism()
    if mixed_precision not in (None, "mixed_float16", "mixed_bfloat16"):
        raise ValueError(f"mixed_precision must be None, 'mixed_float16' or 'mixed_bfloat16'; "
                         f"got {mixed_precision!r}.")
    genotype = get_genotype(genotype)
    strategy = distribute.get_strategy()
    task = data.get_task()
    if batch_size % strategy.num_replicas_in_sync:
        raise ValueError(f"train.batch_size={batch_size} is not divisible by the "
                         f"{strategy.num_replicas_in_sync} replicas.")
    with runs.RunDir(model_dir, chief=runs.is_chief(strategy)) as run_dir:
        task.prepare()
        steps_per_epoch = steps_per_epoch or task.num_examples("train") // batch_size
        if steps_per_epoch < 1:
            raise ValueError(f"{task.name}: {task.num_examples('train')} training examples "
                             f"give no full batch of {batch_size}; lower train.batch_size.")
        top5 = task.num_classes >= 100 if top5 is None else top5
        if run_dir.chief:
            _save_genotype(model_dir, genotype)
        previous_policy = keras.mixed_precision.global_policy()
        keras.mixed_precision.set_global_policy(mixed_precision or "float32")
        try:
            keras.utils.set_random_seed(seed)
            with strategy.scope():
                model = network(genotype, task.num_classes)
            trainer = Trainer(strategy, model, global_batch_size=batch_size,
                              num_classes=task.num_classes, learning_rate=learning_rate,
                              momentum=momentum, weight_decay=weight_decay,
                              grad_clip=grad_clip, auxiliary_weight=auxiliary_weight,
                              label_smoothing=label_smoothing,
                              loss_scaling=mixed_precision == "mixed_float16",
                              jit_compile=jit_compile)
            logging.info("%s on %s: %d parameters (auxiliary head excluded), %d replica(s), "
                         "%d steps per epoch", type(model).__name__, task.name,
                         network_lib.count_parameters(model), strategy.num_replicas_in_sync,
                         steps_per_epoch)
            program = TrainingProgram(
                run_dir, genotype, task, strategy, trainer, epochs=epochs,
                batch_size=batch_size, steps_per_epoch=steps_per_epoch,
                steps_per_loop=steps_per_loop, learning_rate=learning_rate,
                lr_schedule=lr_schedule, lr_decay=lr_decay,
                min_learning_rate=min_learning_rate, drop_path_prob=drop_path_prob,
                cutout=cutout, seed=seed, eval_batch_size=eval_batch_size, top5=top5)
            progress = runs.Progress(steps_per_epoch, epochs, interactive=interactive,
                                     log_every_steps=log_every_steps)
            return runs.RunLoop(run_dir, program, strategy,
                                checkpoint_every_steps=checkpoint_every_steps,
                                keep_checkpoints=keep_checkpoints, progress=progress,
                                stop_after_epochs=stop_after_epochs).run()
        finally:
            keras.mixed_precision.set_global_policy(previous_policy)


class TrainingProgram(runs.Program):
    """Retraining as the run loop's program: SGD steps, the epoch's test evaluation,
    results.json at the end (see the module docstring)."""

    stats = ("loss_sum", "correct", "count", "skipped")

    def __init__(self, run_dir, genotype, task, strategy, trainer, *, epochs, batch_size,
                 steps_per_epoch, steps_per_loop, learning_rate, lr_schedule, lr_decay,
                 min_learning_rate, drop_path_prob, cutout, seed, eval_batch_size, top5):
        self.run_dir, self.genotype, self.task = run_dir, genotype, task
        self.strategy, self.trainer, self.model = strategy, trainer, trainer.model
        self.epochs, self.batch_size = epochs, batch_size
        self.steps_per_epoch, self.steps_per_call = steps_per_epoch, max(1, steps_per_loop)
        self.schedule = dict(schedule=lr_schedule, base=learning_rate, epochs=epochs,
                             decay=lr_decay, minimum=min_learning_rate)
        self.final_drop_path_prob, self.cutout, self.seed = drop_path_prob, cutout, seed
        self.top5 = top5
        self._test_data = distribute.dataset(strategy, task, "test",
                                             _eval_batch(strategy, eval_batch_size),
                                             training=False)
        self._evaluate_pass = make_eval_function(strategy, self.model, task.num_classes, top5)
        self._iterator = None
        self._lr = self._drop = 0.0

    def checkpoint_objects(self):
        return {"model": self.model, "model_variables": list(self.model.variables),
                "optimizer": self.trainer.optimizer, "loss_scale": self.trainer.loss_scale_state}

    def start_epoch(self, epoch: int, step: int) -> None:
        self._lr = learning_rate_at(epoch, **self.schedule)
        self.trainer.optimizer.learning_rate.assign(self._lr)
        self._drop = self.final_drop_path_prob * epoch / self.epochs  # DARTS's linear ramp.
        self.model.drop_path_prob = self._drop
        # Every epoch's stream is a function of (seed, epoch) alone; a resumed epoch skips
        # the batches trained before the checkpoint.
        self._iterator = iter(distribute.dataset(
            self.strategy, self.task, "train", self.batch_size, training=True,
            seed=self.seed * 100_003 + epoch, cutout=self.cutout, skip_batches=step))

    def images_per_step(self) -> int:
        return self.batch_size

    def run_steps(self, step: int, count: int) -> np.ndarray:
        totals = self.trainer.train_loop(self._iterator, tf.constant(count),
                                         tf.constant(step, tf.int64),
                                         tf.constant(self.seed, tf.int64)).numpy()
        scale = self.trainer.loss_scale
        if ((totals[3] > 0 and scale is None) or not math.isfinite(totals[0])
                or (scale is not None and float(scale.scale.numpy()) < 1.0)):
            raise TrainingDivergedError(
                f"the loss became NaN or infinite in epoch {step // self.steps_per_epoch + 1} "
                f"(steps {step + 1}-{step + count})")
        return totals

    def divergence_hint(self) -> str:
        lr = self.schedule["base"] / 2
        return (f"lower the learning rate, e.g. --gin_bindings='il_tf.training.train."
                f"learning_rate = {lr:g}', or check the input data")

    def progress_values(self, totals, images_per_second) -> Dict:
        seen = max(totals[2], 1)
        return {"loss": float(totals[0] / seen), "acc": float(totals[1] / seen),
                "img/s": round(images_per_second)}

    def end_epoch(self, epoch: int, totals: np.ndarray) -> Dict:
        seen = max(totals[2], 1)
        record = {"learning_rate": float(self._lr), "drop_path_prob": float(self._drop),
                  "train_loss": float(totals[0] / seen),
                  "train_accuracy": float(totals[1] / seen)}
        record.update(_eval_record(self._evaluate_pass(self._test_data), self.top5))
        return record

    def epoch_line(self, record) -> str:
        top5 = (f"  top-5 err {100 * record['test_top5_error']:.2f}%"
                if "test_top5_error" in record else "")
        return (f"train loss {record['train_loss']:.4f} acc "
                f"{100 * record['train_accuracy']:.2f}%  test loss {record['test_loss']:.4f} "
                f"err {100 * record['test_error']:.2f}%{top5}  ({record['seconds']:.0f} s, "
                f"{record['images_per_second']:.0f} img/s)")

    def summaries(self, record, records):
        return ({f"{'test' if k.startswith('test_') else 'train'}/{k}": v
                 for k, v in record.items()
                 if k not in ("epoch", "step") and isinstance(v, (int, float))}, {})

    def finish(self, records) -> Dict:
        existing = _load_results(self.run_dir.path)
        if existing is not None:
            return existing
        record = dict(records[-1]) if records else {}
        if not self.run_dir.chief:
            return record
        return _write_results(self.run_dir.path, self.genotype, self.model, self.task, record,
                              self.epochs)

    def summary_lines(self, result) -> List[str]:
        if "test_error" not in result:
            return []
        return [f"{self.run_dir.path}: test error {100 * result['test_error']:.2f}% after "
                f"{result.get('epochs', result.get('epoch'))} epochs"
                + (f", {result['params']} parameters" if "params" in result else "")]


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
      {"checkpoint", "epoch" (None for a checkpoint inside an epoch), "test_loss", "test_accuracy", "test_error", ["test_top5_*"],
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
    checkpoints.read(checkpoints.model_checkpoint(model), path, partial=True)
    record = runs.metrics.record_at_step(model_dir, checkpoints.saved_step(path))
    test_data = distribute.dataset(strategy, task, "test", _eval_batch(strategy, batch_size),
                                   training=False)
    totals = make_eval_function(strategy, model, task.num_classes, top5)(test_data)
    result = {"checkpoint": path, "epoch": record["epoch"] if record else None}
    result.update(_eval_record(totals, top5))
    result.update(num_examples=int(totals[3]), params=network_lib.count_parameters(model),
                  multiply_adds=network_lib.count_multiply_adds(model, task.image_shape))
    return result
