"""The one run loop that search and retraining both drive; it knows nothing about NAS.

A `Program` (the search, or the retraining) supplies its state, its steps, its evaluation
and its outputs; `RunLoop` does everything around them, the same way for both (compare TF
Model Garden's orbit `Controller`):

- the run directory: held by one process (`RunDir`), `config.gin` after the first step;
- checkpoints (`checkpoints.Keeper`): every `checkpoint_every_steps` steps and at each
  epoch's end, of the program's state plus the loop's own (the step, and the epoch's running
  sums, so that a resumed epoch's metrics cover the whole epoch); restored on start with
  fall-back to the newest readable one;
- exact resume: the program rebuilds its input streams from (seed, epoch) and skips the
  steps already done (`Program.start_epoch`), and draws random numbers from seed and step,
  so a run killed at any point and restarted ends bit-identical to an uninterrupted one;
- the order of an epoch's end, which makes every kill safe: evaluate; check that the state
  and the record are finite; write the program's outputs; append the record to
  metrics.jsonl; save the checkpoint. A kill before the save redoes the epoch's tail, and
  the records after the restored step are trimmed on resume;
- the non-finite guard: a non-finite loss, state or evaluation stops the run with
  `TrainingDivergedError` (one line) before anything of it is written;
- SIGINT/SIGTERM: a checkpoint at the next step boundary, then `RunInterrupted`;
- progress (`Progress`), metrics and TensorBoard (`MetricsLog`), written by the chief only;
- a finished run started again does no work and returns its result.
"""
import math
import os
import shutil
import signal
import tempfile
import threading
import time
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf

from il_tf import runtime
from il_tf.errors import RunInterrupted, TrainingDivergedError, WorkerLostError
from il_tf.runs import checkpoints
from il_tf.runs.metrics import MetricsLog
from il_tf.runs.progress import Progress
from il_tf.runs.run_dir import RunDir

# Test-only fault injection: "step:N", "save:N" or "eval:E" SIGKILLs the process after step
# N, between writing checkpoint N and listing it, or while evaluating epoch E.
FAULT_ENV = "IL_TF_TEST_KILL_AT"


class Program:
    """What a run does; `RunLoop` calls these. Search and retraining each subclass it."""

    #: Names of the per-step sums `run_steps` returns (e.g. loss sum, correct, count).
    stats: Sequence[str] = ()
    epochs: int = 1
    steps_per_epoch: int = 1
    #: The most steps one `run_steps` call may take.
    steps_per_call: int = 1

    def checkpoint_objects(self) -> Dict[str, Any]:
        """The trackables (variables, modules) that hold the program's state."""
        raise NotImplementedError

    def initial_record(self) -> Optional[Dict]:
        """A record before the first step (epoch 0), or None."""
        return None

    def start_epoch(self, epoch: int, step: int) -> None:
        """Prepares epoch `epoch` (0-based) to run from its step `step` (> 0 when resumed):
        learning rates, and input streams that skip the `step` steps already done."""
        raise NotImplementedError

    def run_steps(self, step: int, count: int) -> np.ndarray:
        """Runs `count` steps from global step `step`; returns the sums named by `stats`.
        Raises `TrainingDivergedError` on a non-finite loss, naming where it happened."""
        raise NotImplementedError

    def progress_values(self, totals: np.ndarray, images_per_second: float) -> Dict:
        """What the progress display shows, from the epoch's running sums."""
        raise NotImplementedError

    def images_per_step(self) -> int:
        raise NotImplementedError

    def end_epoch(self, epoch: int, totals: np.ndarray) -> Dict:
        """The epoch's record (the loop adds epoch, step and timing): train statistics from
        `totals` and the evaluation. Writes nothing."""
        raise NotImplementedError

    def epoch_line(self, record: Mapping) -> str:
        raise NotImplementedError

    def summaries(self, record: Mapping, records: Sequence[Mapping]
                  ) -> Tuple[Dict[str, float], Dict[str, np.ndarray]]:
        """TensorBoard scalars and images (tag -> value) of an epoch's record."""
        return {}, {}

    def write_outputs(self, record: Mapping, records: Sequence[Mapping]) -> None:
        """Writes the epoch's outputs into the run directory (chief only)."""

    def finish(self, records: Sequence[Mapping]) -> Dict:
        """The run's result once every epoch is done (also when started again then)."""
        return dict(records[-1]) if records else {}

    def summary_lines(self, result: Mapping) -> List[str]:
        """The closing summary printed at the end of the run."""
        return []

    def divergence_hint(self) -> str:
        """What to change before resuming a diverged run (a gin binding)."""
        return "lower the learning rate"


class _LoopState(tf.Module):
    """The loop's own part of the checkpoint: the global step and the epoch's sums."""

    def __init__(self, num_stats: int):
        super().__init__(name="run_loop")
        sync = tf.VariableAggregation.ONLY_FIRST_REPLICA
        self.step = tf.Variable(0, dtype=tf.int64, trainable=False, aggregation=sync,
                                name="step")
        self.epoch_totals = tf.Variable(np.zeros(num_stats), dtype=tf.float64,
                                        trainable=False, aggregation=sync, name="epoch_totals")


def _fault(point: str, number: int) -> None:
    if os.environ.get(FAULT_ENV) == f"{point}:{number}":
        os.kill(os.getpid(), signal.SIGKILL)


def first_nonfinite(record: Any, path: str = "") -> Optional[str]:
    """The key path of the first NaN or infinite number in a (nested) record, or None."""
    if isinstance(record, Mapping):
        items = record.items()
    elif isinstance(record, (list, tuple)):
        items = ((f"[{i}]", v) for i, v in enumerate(record))
    else:
        if isinstance(record, float) and not math.isfinite(record):
            return path
        return None
    for key, value in items:
        found = first_nonfinite(value, f"{path}.{key}" if path and not str(key).startswith("[")
                                else f"{path}{key}")
        if found:
            return found
    return None


class RunLoop:
    """Runs a `Program` to its end in a run directory (see the module docstring).

    Args:
      run_dir: the held run directory.
      program: what to run.
      strategy: the tf.distribute strategy the program's state lives under.
      checkpoint_every_steps: a checkpoint also every this many steps within epochs.
      keep_checkpoints: how many checkpoints to keep.
      progress: the display (None: one built from the terminal).
      stop_after_epochs: end (resumably) after this many epochs in this process.
    """

    def __init__(self, run_dir: RunDir, program: Program, strategy, *,
                 checkpoint_every_steps: int = 1000, keep_checkpoints: int = 3,
                 progress: Optional[Progress] = None, stop_after_epochs: Optional[int] = None):
        self.run_dir, self.program, self.strategy = run_dir, program, strategy
        self.every = max(1, int(checkpoint_every_steps))
        self.stop_after_epochs = stop_after_epochs
        self.progress = progress or Progress(program.steps_per_epoch, program.epochs,
                                             enabled=run_dir.chief)
        self.progress.enabled = self.progress.enabled and run_dir.chief
        with strategy.scope():
            self.state = _LoopState(len(program.stats))
        objects = dict(program.checkpoint_objects(), run_loop=self.state)
        checkpoint = tf.train.Checkpoint(**objects)
        variables = [v for obj in objects.values() for v in _variables_of(obj)]
        # Non-chief workers of a multi-worker run restore the chief's checkpoints and save
        # too (the save is collective), into a directory of their own removed at the end.
        self._scratch = None if run_dir.chief else tempfile.mkdtemp(prefix="il_tf_worker_")
        self.keeper = checkpoints.Keeper(
            checkpoint, variables, run_dir.join(checkpoints.DIRECTORY), keep_checkpoints,
            on_write=lambda n: _fault("save", n), write_directory=self._scratch)
        self.metrics = MetricsLog(run_dir.path, enabled=run_dir.chief)
        self._signal: Optional[int] = None

    @property
    def total_steps(self) -> int:
        return self.program.epochs * self.program.steps_per_epoch

    def run(self) -> Dict:
        """Restores, runs the remaining epochs, and returns the program's result."""
        try:
            with self._signals():
                return self._run()
        finally:
            self.metrics.close()
            if self._scratch:
                shutil.rmtree(self._scratch, ignore_errors=True)

    def _run(self) -> Dict:
        program = self.program
        restored = self.keeper.restore()
        start = int(self.state.step.numpy())
        if restored:
            self.progress.line(f"resuming from {os.path.basename(restored)} (step {start} of "
                               f"{self.total_steps})")
        self.metrics.trim(start)
        records = self.metrics.records()
        if start >= self.total_steps:
            self.progress.line(f"{self.run_dir.path} finished all {program.epochs} epochs "
                               f"before; nothing to do.")
            return self._finish(records)
        if start == 0:
            initial = program.initial_record()
            if initial is not None:
                record = {"epoch": 0, "step": 0, **initial}
                self._check_record(record, 0)
                records = [record]
                if self.run_dir.chief:
                    if os.path.exists(self.metrics.path):
                        os.remove(self.metrics.path)  # Records of a run never checkpointed.
                    self.metrics.write(record, *program.summaries(record, records))
        spe = program.steps_per_epoch
        first_epoch = start // spe
        last_epoch = program.epochs if self.stop_after_epochs is None else min(
            program.epochs, first_epoch + self.stop_after_epochs)
        config_saved = False
        for epoch in range(first_epoch, last_epoch):
            step = start - epoch * spe if epoch == first_epoch else 0
            if step == 0:
                self.state.epoch_totals.assign(np.zeros(len(program.stats)))
            program.start_epoch(epoch, step)
            self.progress.start_epoch(epoch, step)
            began, trained = time.perf_counter(), 0
            while step < spe:
                now = epoch * spe + step
                count = min(program.steps_per_call, spe - step, self.every - now % self.every)
                sums = self._guarded(lambda: program.run_steps(now, count))
                step += count
                trained += count
                self.state.step.assign(now + count)
                self.state.epoch_totals.assign_add(np.asarray(sums, np.float64))
                _fault("step", now + count)
                if not config_saved:
                    self.run_dir.save_config()
                    config_saved = True
                rate = trained * program.images_per_step() / max(time.perf_counter() - began,
                                                                 1e-9)
                self.progress.update(step, program.progress_values(
                    self.state.epoch_totals.numpy(), rate))
                if self._signal is not None:
                    self._save(now + count)
                    self._interrupted(now + count)
                if (now + count) % self.every == 0 and step < spe:
                    self._save(now + count)
            _fault("eval", epoch + 1)
            seconds = time.perf_counter() - began
            record = {"epoch": epoch + 1, "step": (epoch + 1) * spe,
                      **self._guarded(lambda: program.end_epoch(
                          epoch, self.state.epoch_totals.numpy()))}
            record.update(seconds=seconds,
                          images_per_second=trained * program.images_per_step() / seconds)
            self._check_record(record, (epoch + 1) * spe)
            self._check_state((epoch + 1) * spe)
            records.append(record)
            if self.run_dir.chief:
                program.write_outputs(record, records)
                self.metrics.write(record, *program.summaries(record, records))
            self._save((epoch + 1) * spe)
            self.progress.end_epoch(program.epoch_line(record))
            if self._signal is not None:
                self._interrupted((epoch + 1) * spe)
        if int(self.state.step.numpy()) < self.total_steps:
            return records[-1] if records else {}
        return self._finish(records)

    def _finish(self, records) -> Dict:
        result = self.program.finish(records)
        for line in self.program.summary_lines(result):
            self.progress.line(line)
        return result

    # ------------------------------------------------------------------ guards
    def _guarded(self, fn):
        try:
            return fn()
        except TrainingDivergedError as error:
            raise self._diverged(str(error), type(error)) from None
        except (tf.errors.UnavailableError, tf.errors.DeadlineExceededError) as error:
            if runtime.num_workers(self.strategy) <= 1:
                raise
            raise WorkerLostError(
                f"another worker stopped or cannot be reached ({type(error).__name__}); "
                f"start every worker again with its same command to resume from "
                f"{os.path.basename(self.keeper.latest or 'the start')}") from None

    def _diverged(self, what: str, kind=TrainingDivergedError) -> TrainingDivergedError:
        """`kind` keeps the program's own error class (e.g. the search's)."""
        kept = self.keeper.latest
        where = (f"the last good checkpoint {os.path.basename(kept)} and the metrics up to it "
                 f"are kept" if kept else "no checkpoint had been saved yet")
        return kind(
            f"{what}; stopped without saving ({where}). To resume, {self.program.divergence_hint()}"
            f" and run the same command again.")

    def _check_state(self, step: int) -> None:
        bad = checkpoints.nonfinite_variables(self.keeper.variables)
        if bad:
            raise self._diverged(f"the state became non-finite by step {step} ({len(bad)} "
                                 f"variables, e.g. {bad[0]})")

    def _check_record(self, record: Mapping, step: int) -> None:
        bad = first_nonfinite(record)
        if bad:
            raise self._diverged(f"non-finite {bad} at step {step} (epoch {record['epoch']})")

    def _save(self, step: int) -> None:
        self._check_state(step)
        self.keeper.save(step)

    # ------------------------------------------------------------------ signals
    def _interrupted(self, step: int) -> None:
        name = signal.Signals(self._signal).name
        raise RunInterrupted(
            f"stopped by {name} at step {step} of {self.total_steps}; checkpoint "
            f"{os.path.basename(self.keeper.latest)} saved in {self.run_dir.path}",
            self._signal)

    def _signals(self):
        loop = self

        class _Handlers:
            def __enter__(self):
                self.saved = {}
                if threading.current_thread() is not threading.main_thread():
                    return self
                for sig in (signal.SIGINT, signal.SIGTERM):
                    self.saved[sig] = signal.signal(sig, self.handle)
                return self

            @staticmethod
            def handle(signum, frame):
                del frame
                if loop._signal is not None:  # A second signal: stop now.
                    raise KeyboardInterrupt
                loop._signal = signum
                loop.progress.line(f"{signal.Signals(signum).name} received: saving a "
                                   f"checkpoint after the current step...")

            def __exit__(self, *exc_info):
                for sig, handler in self.saved.items():
                    signal.signal(sig, handler)

        return _Handlers()


def _variables_of(obj) -> list:
    """The variables (TF or Keras) held by a checkpointed object."""
    if isinstance(obj, tf.Variable):
        return [obj]
    if isinstance(obj, (list, tuple)):
        return [v for o in obj for v in _variables_of(o)]
    return list(getattr(obj, "variables", None) or [])
