"""The search root that `tools/search.py` calls: data, supernet, optimiser, loop, outputs.

A run directory holds config.gin, checkpoints/ (everything needed to resume), TensorBoard
events (tb/), genotype.json after every epoch, genotype_best.json at the lowest summed
validation loss (PAPER.md's model selection), metrics.jsonl and the final cells' pictures.
A killed run restarted with the same command continues from its last checkpoint.
"""
import json
import os
import time
from typing import Optional, Sequence

import gin
import keras
import numpy as np
import tensorflow as tf

from il_tf import config as config_lib
from il_tf import distribute
from il_tf.data import tasks as tasks_lib
from il_tf.learning import interleaving
from il_tf.learning import strategies
from il_tf.models import supernet as supernet_lib
from il_tf.search_space import genotypes
from il_tf.training import checkpoints
from il_tf.errors import TrainingDivergedError


class SearchDivergedError(TrainingDivergedError):
    """A non-finite search loss; the one-line message names learner, stage and iteration."""


def _default_tasks():
    return [tasks_lib.get_task("digits_low"), tasks_lib.get_task("digits_high")]


def alpha_entropy(alphas: np.ndarray) -> float:
    """Mean entropy (nats) of the rows' softmax: log(8) = 2.079 when uniform."""
    p = genotypes.softmax(alphas)
    return float(np.mean(-np.sum(p * np.log(p + 1e-12), axis=-1)))


def _softmax_image(alphas: np.ndarray) -> np.ndarray:
    p = genotypes.softmax(alphas)
    img = np.kron(p / max(p.max(), 1e-12), np.ones((8, 8)))  # 8x8 pixels per entry
    return img[None, :, :, None].astype(np.float32)


@gin.configurable("search", module="il_tf", denylist=["model_dir"])
def search(model_dir: str,
           tasks: Optional[Sequence] = None,
           batch_size: int = 64,
           epochs: int = 50,
           channels: int = 16,
           layers: int = 8,
           partial_channels: int = 1,
           recompute: str = "edges",
           max_steps_per_epoch: Optional[int] = None,
           eval_batch_size: int = 256,
           max_eval_batches: Optional[int] = None,
           seed: int = 0,
           checkpoint_every_steps: int = 200,
           draw_cells: bool = True,
           verbose: int = 1,
           fail_on_step: Optional[int] = None) -> dict:
    """Runs an interleaving-learning (K >= 2) or DARTS (K = 1) architecture search.

    Args:
      model_dir: the run directory (created; reused to resume).
      tasks: the learners' tasks in interleaving order (`il_tf.data` tasks); default: the
        offline digits split into two learners (digits 0-4, 5-9).
      batch_size: global batch per task per iteration (PAPER.md: 64).
      epochs: search epochs (PAPER.md: 50); also the cosine schedule's length.
      channels, layers: supernet C and number of cells (PAPER.md: 16, 8).
      partial_channels: PC-DARTS's k (1 = off).
      recompute: what the backward pass recomputes instead of keeping: "edges" (each group
        of edges keeps only its inputs: at the paper's size 44% less peak memory than "ops"
        at the same speed, measured), "ops" (each mixed op's conv ops), "cells" (each cell)
        or "none"; see `Supernet`.
      max_steps_per_epoch: caps iterations per epoch (quick runs); default the epoch of the
        smallest learner's search-train split.
      eval_batch_size, max_eval_batches: epoch-end validation (inference mode) batching.
      seed: seeds the alphas, weights and data order.
      checkpoint_every_steps: a checkpoint also every this many iterations (and each epoch).
      draw_cells: draw the final genotype's cells (PNG, SVG).
      verbose: 1 = progress bar, 0 = one line per epoch.
      fail_on_step: testing aid: make the loss NaN at this iteration.
    Returns:
      The last epoch's metrics record.
    """
    os.makedirs(model_dir, exist_ok=True)
    tasks = list(tasks) if tasks else _default_tasks()
    for task in tasks:
        task.prepare()
    strategy = distribute.get_strategy()
    keras.utils.set_random_seed(seed)
    image_shape = tasks[0].image_shape
    steps_per_epoch = min(t.num_examples("search_train") // batch_size for t in tasks)
    if steps_per_epoch < 1:
        raise ValueError(f"batch_size {batch_size} is larger than a learner's search-train "
                         "split; lower il_tf.search.batch_size.")
    if max_steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, max_steps_per_epoch)

    with strategy.scope():
        supernet = supernet_lib.Supernet(channels, layers, partial_channels=partial_channels,
                                         recompute=recompute, seed=seed,
                                         name="supernet")
        supernet_lib.build(supernet, image_shape)
        opt = interleaving.InterleavingOptimizer(
            supernet, [t.num_classes for t in tasks], strategy, steps_per_epoch, epochs=epochs)
        best_val = tf.Variable(np.inf, dtype=tf.float32, trainable=False, name="best_val",
                               aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
    checkpoint = tf.train.Checkpoint(optimizer=opt, best_val=best_val)
    manager = tf.train.CheckpointManager(checkpoint, os.path.join(model_dir, "checkpoints"),
                                         max_to_keep=3)
    _restore(checkpoint, manager)
    start = int(opt.iteration.numpy())

    # Streams are seeded by the resume point so a restarted run does not replay its batches.
    def stream(task, role, k):
        return distribute.dataset(strategy, task, role, batch_size, training=True,
                                  seed=seed + 1000 * k + start + (role == "search_val") * 7)
    train_its = [iter(stream(t, "search_train", k)) for k, t in enumerate(tasks)]
    val_its = [iter(stream(t, "search_val", k)) for k, t in enumerate(tasks)]

    @interleaving.step_function
    def iteration():
        batches = [([next(tr) for _ in range(opt.train_batches_per_learner)], next(va))
                   for tr, va in zip(train_its, val_its)]
        out = strategy.run(opt.replica_iteration, args=(batches,))
        return {k: strategy.experimental_local_results(v)[0] for k, v in out.items()}

    writer = tf.summary.create_file_writer(os.path.join(model_dir, "tb"))
    metrics_path = os.path.join(model_dir, "metrics.jsonl")
    record = {}
    if start and os.path.exists(metrics_path):  # Forget epochs after the restored checkpoint.
        with open(metrics_path) as f:
            kept = [l for l in f if l.strip() and json.loads(l)["iteration"] <= start]
        with open(metrics_path, "w") as f:
            f.writelines(kept)
    if start == 0:  # Epoch 0: the learners' validation losses before any search step.
        val = [_evaluate(opt, k, t, eval_batch_size, max_eval_batches) for k, t in enumerate(tasks)]
        with open(metrics_path, "w") as f:
            f.write(json.dumps({"epoch": 0, "iteration": 0, "learners": [t.name for t in tasks],
                                "val_loss": [v[0] for v in val],
                                "val_acc": [v[1] for v in val]}) + "\n")
    wrote_config = False
    for epoch in range(start // steps_per_epoch, epochs):
        first = start - epoch * steps_per_epoch if epoch == start // steps_per_epoch else 0
        bar = keras.utils.Progbar(steps_per_epoch, verbose=verbose,
                                  stateful_metrics=["img/s"] + [f"loss_{k}" for k in range(len(tasks))])
        if verbose:
            print(f"Epoch {epoch + 1}/{epochs}", flush=True)
        sums = np.zeros((3, len(tasks)))  # train loss, correct, count
        t0, images = time.time(), 0
        for step in range(first, steps_per_epoch):
            it = epoch * steps_per_epoch + step
            out = {k: v.numpy() for k, v in iteration().items()}
            if fail_on_step is not None and it == fail_on_step:
                out["train_loss"][-1] = np.nan
            _check_finite(out, tasks, it, epoch, manager)
            sums += np.stack([out["train_loss"], out["train_correct"], out["train_count"]])
            images += int(out["train_count"].sum()) * 2  # train + val images per iteration
            if not wrote_config:
                config_lib.save_operative_config(model_dir)
                wrote_config = True
            if verbose:
                bar.update(step + 1, [(f"loss_{k}", float(l)) for k, l in
                                      enumerate(out["train_loss"])]
                           + [("img/s", images / max(time.time() - t0, 1e-9))])
            if (it + 1) % checkpoint_every_steps == 0 and step + 1 < steps_per_epoch:
                manager.save(checkpoint_number=it + 1)
        done = max(steps_per_epoch - first, 1)
        # Model selection (PAPER.md step 3): each learner's mean validation loss over its whole
        # D_k^val in inference mode; the genotype at the lowest sum is kept.
        val = [_evaluate(opt, k, t, eval_batch_size, max_eval_batches) for k, t in enumerate(tasks)]
        a_n, a_r, b_n, b_r = opt.numpy_alphas()
        genotype = genotypes.derive_genotype(a_n, a_r, betas_normal=b_n, betas_reduce=b_r)
        genotype.save(os.path.join(model_dir, "genotype.json"))
        # The learners whose losses the architecture serves (all but under `single`).
        used = strategies.hypergradient_learners(opt.learning_strategy, len(tasks))
        summed = float(sum(val[k][0] for k in used))
        is_best = summed < float(best_val.numpy())
        if is_best:
            best_val.assign(summed)
            genotype.save(os.path.join(model_dir, "genotype_best.json"))
        record = {
            "epoch": epoch + 1, "iteration": (epoch + 1) * steps_per_epoch,
            "learners": [t.name for t in tasks],
            "train_loss": (sums[0] / done).tolist(),
            "train_acc": (sums[1] / np.maximum(sums[2], 1)).tolist(),
            "val_loss": [v[0] for v in val], "val_acc": [v[1] for v in val],
            "val_loss_sum": summed, "best": is_best,
            "alpha_entropy_normal": alpha_entropy(a_n), "alpha_entropy_reduce": alpha_entropy(a_r),
            "seconds": time.time() - t0, "images_per_sec": images / max(time.time() - t0, 1e-9),
            "genotype": genotype.to_dict(),
        }
        # Checkpoint first: an epoch's metrics line means it can be resumed from.
        manager.save(checkpoint_number=(epoch + 1) * steps_per_epoch)
        with open(metrics_path, "a") as f:
            f.write(json.dumps(record) + "\n")
        _summaries(writer, record, a_n, a_r, tasks)
        if not verbose:
            print(f"epoch {epoch + 1}/{epochs} val_loss {record['val_loss']} "
                  f"val_acc {record['val_acc']} {record['images_per_sec']:.0f} img/s", flush=True)
    if draw_cells and record:
        from il_tf import visualize  # matplotlib only when drawing
        final = genotypes.Genotype.load(os.path.join(model_dir, "genotype.json"))
        visualize.draw_genotype(final, os.path.join(model_dir, "cells"))
    return record


def _restore(checkpoint, manager):
    """Restores the latest checkpoint, or raises a one-line CheckpointError naming it."""
    if manager.latest_checkpoint:
        checkpoints.read(checkpoint, manager.latest_checkpoint)


def _check_finite(out, tasks, iteration, epoch, manager):
    for key, stage in (("search_val_loss", "architecture step"), ("train_loss", "weight stage")):
        bad = np.flatnonzero(~np.isfinite(out[key]))
        if bad.size:
            k = int(bad[0])
            kept = manager.latest_checkpoint or "none yet"
            raise SearchDivergedError(
                f"non-finite loss for learner {k + 1} ({tasks[k].name}) in its {stage} at "
                f"iteration {iteration} (epoch {epoch + 1}); stopped without saving, last good "
                f"checkpoint: {kept}. Lower il_tf.learning.InterleavingOptimizer.weight_lr or "
                f"arch_lr and restart.")


def _evaluate(opt, k, task, batch_size, max_batches):
    total = correct = count = 0.0
    ds = task.dataset("search_val", batch_size, training=False)
    if max_batches:
        ds = ds.take(max_batches)
    for x, y in ds:
        loss, c = opt.evaluate_batch(opt.learners[k], x, y)
        total += float(loss)
        correct += float(c)
        count += int(y.shape[0])
    return total / max(count, 1), correct / max(count, 1)


def _summaries(writer, record, a_n, a_r, tasks):
    step = record["iteration"]
    with writer.as_default(step=step):
        for k, task in enumerate(tasks):
            for key in ("train_loss", "train_acc", "val_loss", "val_acc"):
                tf.summary.scalar(f"{task.name}/{key}", record[key][k])
        tf.summary.scalar("val_loss_sum", record["val_loss_sum"])
        tf.summary.scalar("alpha_entropy/normal", record["alpha_entropy_normal"])
        tf.summary.scalar("alpha_entropy/reduce", record["alpha_entropy_reduce"])
        tf.summary.image("softmax_alpha/normal", _softmax_image(a_n))
        tf.summary.image("softmax_alpha/reduce", _softmax_image(a_r))
    writer.flush()
