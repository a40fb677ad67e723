"""The search root that `tools/search.py` calls: the search as a program of the run loop.

`search()` builds the data, the supernet and the interleaving optimiser and hands
`SearchProgram` to `il_tf.runs.RunLoop`, which owns the run directory, checkpoints,
resume, metrics, progress and signals. What is the search's own:

- each iteration (`InterleavingOptimizer.replica_iteration`) reads its learners' batches
  from streams rebuilt every epoch from (seed, learner, role, epoch), skipping the
  iterations a resumed epoch already did, so a resumed run reads exactly the batches an
  uninterrupted one reads;
- at each epoch's end (PAPER.md's model selection) each learner's mean validation loss over
  its whole D_k^val in inference mode; `genotype.json` is the epoch's genotype and
  `genotype_best.json` the one at the lowest summed validation loss;
- the run directory also gets the alphas' course (`alpha_course.png`/`.svg`, every
  epoch, and in TensorBoard) and the final genotype's cells (`cells/`), unless
  `draw_pictures` is off.

metrics.jsonl records: `epoch`, `step` (iterations done), `learners`, `train_loss`,
`train_acc`, `val_loss`, `val_acc` (one entry per learner), `val_loss_sum`, `best`,
`alpha_entropy_normal`, `alpha_entropy_reduce`, `alphas` (raw, per cell type: edges x ops),
`genotype`, `seconds`, `images_per_second`. Epoch 0 holds the validation before any step.
"""
import os
from typing import Dict, List, Mapping, Optional, Sequence

import gin
import keras
import numpy as np
import tensorflow as tf

from il_tf import config as config_lib
from il_tf import distribute
from il_tf.data import tasks as tasks_lib
from il_tf.errors import TrainingDivergedError
from il_tf.learning import interleaving
from il_tf.learning import strategies
from il_tf.models import supernet as supernet_lib
from il_tf import runs
from il_tf import runtime
from il_tf.search_space import genotypes


class SearchDivergedError(TrainingDivergedError):
    """A non-finite search loss; the one-line message names learner, stage and iteration."""


def _default_tasks():
    return [tasks_lib.get_task("digits_low"), tasks_lib.get_task("digits_high")]


def alpha_entropy(alphas: np.ndarray) -> float:
    """Mean entropy (nats) of the rows' softmax: log(8) = 2.079 when uniform."""
    p = genotypes.softmax(alphas)
    return float(np.mean(-np.sum(p * np.log(p + 1e-12), axis=-1)))


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
           keep_checkpoints: int = 3,
           draw_pictures: bool = True,
           verbose: Optional[int] = None,
           log_every_steps: int = 50,
           fail_on_step: Optional[int] = None) -> dict:
    """Runs an interleaving-learning (K >= 2) or DARTS (K = 1) architecture search.

    Args:
      model_dir: the run directory (created; the same command resumes a run in it).
      tasks: the learners' tasks in interleaving order (`il_tf.data` tasks); default: the
        offline digits split into two learners (digits 0-4, 5-9).
      batch_size: global batch per task per iteration (PAPER.md: 64).
      epochs: search epochs (PAPER.md: 50); also the cosine schedule's length.
      channels, layers: supernet C and number of cells (PAPER.md: 16, 8).
      partial_channels: PC-DARTS's k (1 = off).
      recompute: what the backward pass recomputes instead of keeping: "edges" (each group
        of edges keeps only its inputs: at the paper's size 44% less peak memory than "ops"
        at the same speed), "ops" (each mixed op's conv ops), "cells" (each cell) or
        "none"; see `Supernet`.
      max_steps_per_epoch: caps iterations per epoch (quick runs); default the epoch of the
        smallest learner's search-train split.
      eval_batch_size, max_eval_batches: epoch-end validation (inference mode) batching.
      seed: seeds the alphas, weights and data order.
      checkpoint_every_steps: a checkpoint also every this many iterations (and each epoch).
      keep_checkpoints: how many checkpoints are kept.
      draw_pictures: draw the alphas' course after every epoch (PNG, SVG, TensorBoard;
        about 2 s an epoch) and the final genotype's cells (PNG, SVG); False for quick
        runs that only need the genotype and metrics.
      verbose: 1 = a progress bar, 0 = plain lines; None decides from the terminal.
      log_every_steps: without a progress bar, a line every this many iterations.
      fail_on_step: testing aid: make the loss NaN at this iteration.
    Returns:
      The result: the last epoch's metrics record, plus `best_epoch` and `best_val_loss_sum`.
    """
    config_lib.check_arguments(search, locals(), "il_tf.search")
    tasks = list(tasks) if tasks else _default_tasks()
    strategy = distribute.get_strategy()
    with runs.RunDir(model_dir, chief=runs.is_chief(strategy)) as run_dir:
        for task in tasks:
            task.prepare()
        program = SearchProgram(
            run_dir, tasks, strategy, batch_size=batch_size, epochs=epochs, channels=channels,
            layers=layers, partial_channels=partial_channels, recompute=recompute,
            max_steps_per_epoch=max_steps_per_epoch, eval_batch_size=eval_batch_size,
            max_eval_batches=max_eval_batches, seed=seed, draw_pictures=draw_pictures,
            fail_on_step=fail_on_step)
        progress = runs.Progress(program.steps_per_epoch, epochs,
                                 interactive=None if verbose is None else bool(verbose),
                                 log_every_steps=log_every_steps)
        return runs.RunLoop(run_dir, program, strategy,
                            checkpoint_every_steps=checkpoint_every_steps,
                            keep_checkpoints=keep_checkpoints, progress=progress).run()


class SearchProgram(runs.Program):
    """The search as the run loop's program (see the module docstring)."""

    def __init__(self, run_dir: runs.RunDir, tasks: Sequence, strategy, *, batch_size: int,
                 epochs: int, channels: int, layers: int, partial_channels: int,
                 recompute: str, max_steps_per_epoch: Optional[int], eval_batch_size: int,
                 max_eval_batches: Optional[int], seed: int, draw_pictures: bool,
                 fail_on_step: Optional[int]):
        self.run_dir, self.tasks, self.strategy = run_dir, list(tasks), strategy
        self.batch_size, self.epochs, self.seed = batch_size, epochs, seed
        self.eval_batch_size, self.max_eval_batches = eval_batch_size, max_eval_batches
        self.draw_pictures, self.fail_on_step = draw_pictures, fail_on_step
        self._course = (None, None, {})  # (records shown, the alphas' course, its encodings)
        steps = min(t.num_examples("search_train") // batch_size for t in self.tasks)
        if steps < 1:
            raise ValueError(f"batch_size {batch_size} is larger than a learner's "
                             "search-train split; lower il_tf.search.batch_size.")
        self.steps_per_epoch = min(steps, max_steps_per_epoch or steps)
        k = len(self.tasks)
        self.stats = ([f"train_loss_sum/{i}" for i in range(k)]
                      + [f"train_correct/{i}" for i in range(k)]
                      + [f"train_count/{i}" for i in range(k)])
        keras.utils.set_random_seed(seed)
        with strategy.scope():
            supernet = supernet_lib.Supernet(channels, layers, partial_channels=partial_channels,
                                             recompute=recompute, seed=seed, name="supernet")
            supernet_lib.build(supernet, self.tasks[0].image_shape)
            self.opt = interleaving.InterleavingOptimizer(
                supernet, [t.num_classes for t in self.tasks], strategy, self.steps_per_epoch,
                epochs=epochs)
            # The largest float32, not inf: a checkpoint holds finite values only.
            self.best_val = tf.Variable(np.finfo(np.float32).max, dtype=tf.float32,
                                        trainable=False,
                                        name="best_val",
                                        aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
        self._streams = None
        self._eval_sets = {}  # learner -> its validation pipeline (`_evaluate`)

        @runtime.step_function
        def iteration(train_its, val_its):
            batches = [([next(tr) for _ in range(self.opt.train_batches_per_learner)], next(va))
                       for tr, va in zip(train_its, val_its)]
            out = strategy.run(self.opt.replica_iteration, args=(batches,))
            return {key: strategy.experimental_local_results(v)[0] for key, v in out.items()}
        self._iteration = iteration

    def checkpoint_objects(self):
        return {"optimizer": self.opt, "best_val": self.best_val}

    # ------------------------------------------------------------------ data
    def _stream(self, k: int, role: str, epoch: int, skip: int):
        # One stream per (learner, role, epoch): a resumed epoch rebuilds it and skips what
        # was read, so every batch is a function of (seed, learner, role, epoch, step).
        seed = ((self.seed * 1009 + k) * 2 + (role == "search_val")) * 100_003 + epoch
        return iter(distribute.dataset(self.strategy, self.tasks[k], role, self.batch_size,
                                       training=True, seed=seed, skip_batches=skip))

    def start_epoch(self, epoch: int, step: int) -> None:
        per_step = self.opt.train_batches_per_learner
        self._streams = (
            [self._stream(k, "search_train", epoch, step * per_step)
             for k in range(len(self.tasks))],
            [self._stream(k, "search_val", epoch, step) for k in range(len(self.tasks))])

    def images_per_step(self) -> int:
        return 2 * self.batch_size * len(self.tasks)  # a train and a val batch per learner

    # ------------------------------------------------------------------ steps
    def run_steps(self, step: int, count: int) -> np.ndarray:
        sums = np.zeros(len(self.stats))
        for it in range(step, step + count):
            out = {key: v.numpy() for key, v in self._iteration(*self._streams).items()}
            if self.fail_on_step is not None and it == self.fail_on_step:
                out["train_loss"][-1] = np.nan
            self._check_finite(out, it)
            sums += np.concatenate([out["train_loss"] * out["train_count"],
                                    out["train_correct"], out["train_count"]])
        return sums

    def _check_finite(self, out, iteration: int) -> None:
        for key, stage in (("search_val_loss", "architecture step"),
                           ("train_loss", "weight stage")):
            bad = np.flatnonzero(~np.isfinite(out[key]))
            if bad.size:
                k = int(bad[0])
                raise SearchDivergedError(
                    f"non-finite loss for learner {k + 1} ({self.tasks[k].name}) in its "
                    f"{stage} at iteration {iteration} (epoch "
                    f"{iteration // self.steps_per_epoch + 1})")

    def divergence_hint(self) -> str:
        lr = self.opt.weight_lr / 2
        return (f"lower the weights' learning rate, e.g. --gin_bindings="
                f"'il_tf.learning.InterleavingOptimizer.weight_lr = {lr:g}' (or arch_lr)")

    def _split(self, totals: np.ndarray):
        k = len(self.tasks)
        loss, correct, count = totals[:k], totals[k:2 * k], np.maximum(totals[2 * k:], 1)
        return loss / count, correct / count

    def progress_values(self, totals, images_per_second) -> Dict:
        loss, _ = self._split(totals)
        values = {f"loss_{t.name}": float(l) for t, l in zip(self.tasks, loss)}
        values["img/s"] = round(images_per_second)
        return values

    # ------------------------------------------------------------------ epochs
    def _evaluate(self, k: int):
        total = correct = count = 0.0
        # One pipeline per learner for the whole run: every epoch's pass reads the same
        # examples in the same order, and a rebuilt pipeline would trace its functions and
        # read the split again (from the task's memory cache when it keeps one).
        ds = self._eval_sets.get(k)
        if ds is None:
            ds = self.tasks[k].dataset("search_val", self.eval_batch_size, training=False)
            if self.max_eval_batches:
                ds = ds.take(self.max_eval_batches)
            self._eval_sets[k] = ds
        for x, y in ds:
            loss, c = self.opt.evaluate_batch(self.opt.learners[k], x, y)
            total += float(loss)
            correct += float(c)
            count += int(y.shape[0])
        return total / max(count, 1), correct / max(count, 1)

    def _validation(self) -> Dict:
        val = [self._evaluate(k) for k in range(len(self.tasks))]
        a_n, a_r, _, _ = self.opt.numpy_alphas()
        return {"learners": [t.name for t in self.tasks],
                "val_loss": [v[0] for v in val], "val_acc": [v[1] for v in val],
                "alpha_entropy_normal": alpha_entropy(a_n),
                "alpha_entropy_reduce": alpha_entropy(a_r),
                "alphas": {"normal": a_n.tolist(), "reduce": a_r.tolist()}}

    def initial_record(self) -> Dict:
        return self._validation()

    def end_epoch(self, epoch: int, totals: np.ndarray) -> Dict:
        train_loss, train_acc = self._split(totals)
        record = {"train_loss": train_loss.tolist(), "train_acc": train_acc.tolist(),
                  **self._validation()}
        a_n, a_r, b_n, b_r = self.opt.numpy_alphas()
        genotype = genotypes.derive_genotype(a_n, a_r, betas_normal=b_n, betas_reduce=b_r)
        # The learners whose losses the architecture serves (all but under `single`).
        used = strategies.hypergradient_learners(self.opt.learning_strategy, len(self.tasks))
        summed = float(sum(record["val_loss"][k] for k in used))
        best = bool(summed < float(self.best_val.numpy()))
        if best:
            self.best_val.assign(summed)
        record.update(val_loss_sum=summed, best=best, genotype=genotype.to_dict())
        return record

    def epoch_line(self, record: Mapping) -> str:
        losses = ", ".join(f"{v:.4f}" for v in record["val_loss"])
        accs = ", ".join(f"{100 * v:.1f}%" for v in record["val_acc"])
        return (f"val loss {losses} (sum {record['val_loss_sum']:.4f}"
                f"{', best' if record['best'] else ''})  val acc {accs}  alpha entropy "
                f"{record['alpha_entropy_normal']:.3f}/{record['alpha_entropy_reduce']:.3f}  "
                f"{record['images_per_second']:.0f} img/s")

    def summaries(self, record, records):
        scalars = {}
        for k, name in enumerate(record["learners"]):
            for key in ("train_loss", "train_acc", "val_loss", "val_acc"):
                if key in record:
                    scalars[f"{name}/{key}"] = record[key][k]
        for key in ("val_loss_sum", "alpha_entropy_normal", "alpha_entropy_reduce"):
            if key in record:
                scalars[key.replace("alpha_entropy_", "alpha_entropy/")] = record[key]
        if not self.draw_pictures:
            return scalars, {}
        from il_tf import visualize  # pylint: disable=g-import-not-at-top  # matplotlib
        png = self._course_files(records, formats=("png",))["png"]
        return scalars, {"alpha_course": visualize.png_image(png)}

    def _course_files(self, records, formats=None) -> Dict[str, bytes]:
        """The alphas' course up to `records[-1]` as file contents by format (default PNG and
        SVG): one figure per record, each format encoded once for the run directory's files
        and TensorBoard (which shows the PNG)."""
        from il_tf import visualize  # pylint: disable=g-import-not-at-top  # matplotlib
        formats = visualize.FORMATS if formats is None else formats
        key = (len(records), records[-1].get("step"))
        if self._course[0] != key:
            self._course = (key, visualize.alpha_course_figure(records), {})
        _, figure, files = self._course
        missing = [fmt for fmt in formats if fmt not in files]
        if missing:
            files.update(visualize.encode_figure(figure, missing))
        return {fmt: files[fmt] for fmt in formats}

    def write_outputs(self, record, records) -> None:
        genotype = genotypes.Genotype.from_dict(record["genotype"])
        genotype.save(self.run_dir.join("genotype.json"))
        if record["best"]:
            genotype.save(self.run_dir.join("genotype_best.json"))
        if self.draw_pictures:
            from il_tf import visualize  # pylint: disable=g-import-not-at-top  # matplotlib
            visualize.write_pictures(self._course_files(records),
                                     self.run_dir.join(visualize.ALPHA_COURSE))

    def finish(self, records: Sequence[Mapping]) -> Dict:
        result = dict(records[-1]) if records else {}
        epochs = [r for r in records if r.get("epoch", 0) > 0]
        if epochs:
            best = min(epochs, key=lambda r: r["val_loss_sum"])
            result.update(best_epoch=best["epoch"], best_val_loss_sum=best["val_loss_sum"],
                          best_val_acc=best["val_acc"])
        if self.draw_pictures and epochs and self.run_dir.chief:
            from il_tf import visualize  # pylint: disable=g-import-not-at-top  # matplotlib
            final = genotypes.Genotype.load(self.run_dir.join("genotype.json"))
            visualize.draw_genotype(final, self.run_dir.join("cells"))
        return result

    def summary_lines(self, result: Mapping) -> List[str]:
        if "best_epoch" not in result:
            return []
        d = self.run_dir.path
        accs = ", ".join(f"{name} {100 * a:.1f}%" for name, a in
                         zip(result["learners"], result["best_val_acc"]))
        genotype = genotypes.Genotype.from_dict(result["genotype"])
        lines = [
            f"search done: best epoch {result['best_epoch']} of {self.epochs}, summed val "
            f"loss {result['best_val_loss_sum']:.4f}; val accuracy {accs}",
            f"alpha entropy normal {result['alpha_entropy_normal']:.3f}, reduce "
            f"{result['alpha_entropy_reduce']:.3f} nats (uniform: {np.log(8):.3f})",
            f"normal cell: {_ops(genotype.normal)}",
            f"reduce cell: {_ops(genotype.reduce)}",
            f"files: {os.path.join(d, 'genotype_best.json')}"
            + (f", the alphas' course in {os.path.join(d, 'alpha_course.png')}, the cells "
               f"in {os.path.join(d, 'cells')}/" if self.draw_pictures else ""),
            f"next: python tools/train.py --genotype={os.path.join(d, 'genotype_best.json')}",
        ]
        return lines


def _ops(edges) -> str:
    return ", ".join(f"{op}<-{index}" for op, index in edges)
