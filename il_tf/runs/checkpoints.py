"""Checkpoints a run can trust: saved only when finite, verified on restore, with fall-back.

`Keeper` is the run loop's one checkpoint path:
- `save` refuses a state holding a non-finite value (weights, BN statistics, optimizer
  slots, alphas): such a state is never on disk to be resumed from;
- a checkpoint is written under its final name by TF (temporary files, then renamed), and
  only then listed in the `checkpoint` index file, itself replaced atomically;
- `restore` does not trust the index file: it tries the `ckpt-N` files present, newest
  first, reads each completely (TF checks every tensor's checksum) and checks it is finite,
  and falls back to the next one, saying so in one line. It rewrites the index file (so a
  missing or garbled one is rebuilt). A directory holding checkpoints none of which can be
  read is an error, never a silent fresh start.

`resolve` and `read` serve the tools that read a finished run (evaluate, export).
"""
import glob
import os
import re
from typing import Dict, List, Optional, Sequence

from absl import logging
import numpy as np
import tensorflow as tf

from il_tf import runtime
from il_tf.errors import CheckpointError, TrainingDivergedError
from il_tf.runs.run_dir import write_atomically

PREFIX = "ckpt"
DIRECTORY = "checkpoints"  # inside the run directory


def _first_line(error: BaseException) -> str:
    lines = [l.strip() for l in str(error).splitlines() if l.strip()]
    return f"{type(error).__name__}: {lines[0] if lines else ''}"[:240]


def resolve(model_dir: str, checkpoint: Optional[str] = None) -> str:
    """The checkpoint prefix to read.

    Args:
      model_dir: the run directory.
      checkpoint: None for the newest checkpoint of `model_dir`; else a prefix (a path, or
        a name such as "ckpt-120" in `model_dir/checkpoints`).

    Raises:
      CheckpointError: no such checkpoint.
    """
    directory = os.path.join(model_dir, DIRECTORY)
    if checkpoint is None:
        found = numbered(directory)
        if not found:
            raise CheckpointError(f"no checkpoint in {model_dir} (train there first with "
                                  f"tools/train.py --model_dir={model_dir}).")
        return found[-1]
    for path in (checkpoint, os.path.join(directory, checkpoint),
                 os.path.join(model_dir, checkpoint)):
        if tf.io.gfile.exists(path + ".index"):
            return path
    names = [os.path.basename(p) for p in numbered(directory)]
    raise CheckpointError(f"checkpoint {checkpoint!r} not found in {model_dir}; available: "
                          f"{', '.join(names) or 'none'}.")


def model_checkpoint(model, **others) -> tf.train.Checkpoint:
    """A checkpoint of `model` (plus `others`) that holds every one of its variables.

    Keras 3 tracks layers kept in Python lists (a network's cells, a cell's ops) for Keras
    but not for `tf.train.Checkpoint`, which then silently leaves out, e.g., the cells' BN
    moving statistics. So the model's variables are also tracked as one list, in the
    model's own (construction) order, which equal configurations share.
    """
    return tf.train.Checkpoint(model=model, model_variables=list(model.variables), **others)


def _saved_list_length(path: str, name: str) -> int:
    """Elements saved for the list tracked as `name` at the checkpoint's root (-1: none)."""
    graph = runtime.checkpoint_object_graph(
        tf.train.load_checkpoint(path).get_tensor("_CHECKPOINTABLE_OBJECT_GRAPH"))
    for child in graph.nodes[0].children:
        if child.local_name == name:
            return len(graph.nodes[child.node_id].children)
    return -1


def read(checkpoint: tf.train.Checkpoint, path: str, *, partial: bool = False) -> None:
    """Restores `checkpoint`'s objects from `path`, checking that they fit.

    Args:
      checkpoint: what to restore into (every variable must already exist), usually from
        `model_checkpoint`, whose model must have exactly as many variables as were saved.
      path: a checkpoint prefix (see `resolve`).
      partial: the file may hold more than `checkpoint` tracks (e.g. the optimizer when only
        the model is restored for evaluation); else everything in it must be used.

    Raises:
      CheckpointError: the files are unreadable (corrupt or truncated) or were written by a
        different model (another genotype, width or depth).
    """
    hint = ("pass --checkpoint=<an earlier ckpt-N> to the tool that reads it; a run resumed "
            "with its own command falls back to the newest readable checkpoint by itself")
    mismatch = "was it written with another genotype, network size or configuration?"
    _ = checkpoint.save_counter  # Created lazily; make it exist so that it is matched.
    try:
        status = checkpoint.read(path)
        variables = getattr(checkpoint, "model_variables", None)
        saved = _saved_list_length(path, "model_variables") if variables is not None else 0
    except (tf.errors.OpError, ValueError, KeyError, TypeError, IndexError, OSError) as error:
        # IndexError: a truncated data file ("Read less bytes than requested").
        if isinstance(error, ValueError) and "shape" in str(error).lower():
            raise CheckpointError(f"checkpoint {path} does not fit this model "
                                  f"({_first_line(error)}); {mismatch}") from None
        raise CheckpointError(f"checkpoint {path} cannot be read, it is corrupt or "
                              f"incomplete ({_first_line(error)}); {hint}.") from None
    try:
        if variables is not None and saved != len(variables):
            raise AssertionError(f"{saved} model variables saved, the model has "
                                 f"{len(variables)}")
        if partial:
            status.assert_existing_objects_matched()
        else:
            status.assert_consumed()
    except AssertionError as error:
        raise CheckpointError(f"checkpoint {path} does not fit this model "
                              f"({_first_line(error)}); {mismatch}") from None
    if partial:
        status.expect_partial()


def numbered(directory: str) -> List[str]:
    """The `ckpt-N` prefixes whose index file exists in `directory`, oldest first."""
    found = []
    for index in glob.glob(os.path.join(glob.escape(directory), f"{PREFIX}-*.index")):
        match = re.fullmatch(rf"{PREFIX}-(\d+)\.index", os.path.basename(index))
        if match:
            found.append((int(match.group(1)), index[:-len(".index")]))
    return [path for _, path in sorted(found)]


def number_of(path: str) -> int:
    """N of a `ckpt-N` prefix."""
    return int(path.rsplit("-", 1)[1])


def nonfinite_variables(variables: Sequence) -> List[str]:
    """Names of the floating-point variables (TF or Keras) holding a NaN or an infinity."""
    bad = []
    for variable in variables:
        value = np.asarray(variable.numpy())
        if value.dtype.kind == "f" or value.dtype.name == "bfloat16":
            if not np.all(np.isfinite(value.astype(np.float32))):
                bad.append(getattr(variable, "path", None) or variable.name)
    return bad


class Keeper:
    """Saves and restores one run's checkpoints (see the module docstring).

    Args:
      checkpoint: the `tf.train.Checkpoint` of everything a run needs to resume.
      variables: every variable of `checkpoint`'s state, checked to be finite before a save
        and after a restore.
      directory: where the `ckpt-N` files and the index live.
      max_to_keep: older checkpoints are deleted once a newer one is saved.
      write_directory: where `save` writes, if not `directory`: a non-chief worker restores
        the chief's checkpoints but writes its own into a scratch directory.
      on_write: called between writing a checkpoint and listing it in the index (a
        fault-injection point for the tests of a save killed half-way).
    """

    def __init__(self, checkpoint: tf.train.Checkpoint, variables: Sequence[tf.Variable],
                 directory: str, max_to_keep: int = 3, on_write=None,
                 write_directory: Optional[str] = None):
        self.checkpoint = checkpoint
        _ = checkpoint.save_counter  # Created lazily; saved so that `read` matches it.
        self.variables = list(variables)
        self.directory = directory
        self.write_directory = write_directory or directory
        self.max_to_keep = max(1, max_to_keep)
        self._on_write = on_write
        self.latest: Optional[str] = None

    def save(self, number: int) -> str:
        """Writes `ckpt-<number>`; raises `TrainingDivergedError` if the state is not finite."""
        bad = nonfinite_variables(self.variables)
        if bad:
            raise TrainingDivergedError(
                f"the state at step {number} holds non-finite values ({len(bad)} variables, "
                f"e.g. {bad[0]}); it was not saved")
        os.makedirs(self.write_directory, exist_ok=True)
        path = self.checkpoint.write(os.path.join(self.write_directory, f"{PREFIX}-{number}"))
        if self._on_write:
            self._on_write(number)
        kept = [p for p in numbered(self.write_directory) if number_of(p) <= number]
        for old in kept[:-self.max_to_keep]:
            for name in glob.glob(glob.escape(old) + ".*"):
                os.remove(name)
        self._write_index(self.write_directory, kept[-self.max_to_keep:])
        self.latest = path
        return path

    def _write_index(self, directory: str, paths: Sequence[str]) -> None:
        # The `checkpoint` index TF's own tools read (tf.train.latest_checkpoint): a
        # CheckpointState text proto with paths relative to the directory.
        names = [os.path.basename(p) for p in paths]
        text = f'model_checkpoint_path: "{names[-1]}"\n' + "".join(
            f'all_model_checkpoint_paths: "{n}"\n' for n in names)
        write_atomically(os.path.join(directory, "checkpoint"), text)

    def restore(self) -> Optional[str]:
        """Restores the newest readable, finite checkpoint; None when there is none at all.

        Raises:
          CheckpointError: checkpoints exist but none can be read (or fits the run).
        """
        candidates = numbered(self.directory)
        failures: Dict[str, str] = {}
        for path in reversed(candidates):
            try:
                read(self.checkpoint, path)
                bad = nonfinite_variables(self.variables)
                if bad:
                    raise CheckpointError(f"it holds non-finite values ({bad[0]})")
            except CheckpointError as error:
                failures[os.path.basename(path)] = str(error)
                if "does not fit this model" in str(error):
                    raise  # Every checkpoint of the run would fail alike: a wrong config.
                continue
            if failures:
                logging.warning("%s: %s cannot be used (%s); resuming from %s instead.",
                                self.directory, ", ".join(failures),
                                next(iter(failures.values())), os.path.basename(path))
            if self.write_directory == self.directory:
                kept = [p for p in candidates if p not in
                        {os.path.join(self.directory, n) for n in failures}]
                self._write_index(self.directory, kept)
            self.latest = path
            return path
        if failures:
            names = ", ".join(failures)
            raise CheckpointError(
                f"no readable checkpoint in {self.directory} ({names}: "
                f"{next(iter(failures.values()))}); nothing was changed. To start this run "
                f"over, move the directory aside first (mv {os.path.dirname(self.directory)} "
                f"{os.path.dirname(self.directory)}.broken).")
        return None


def saved_step(path: str) -> int:
    """The run loop's step stored in checkpoint `path` (0 if it holds none)."""
    try:
        return int(tf.train.load_checkpoint(path).get_tensor(
            "run_loop/step/.ATTRIBUTES/VARIABLE_VALUE"))
    except (tf.errors.OpError, ValueError, KeyError) as error:
        if isinstance(error, (tf.errors.NotFoundError, KeyError)) or "not found" in str(error):
            return 0
        raise CheckpointError(f"checkpoint {path} cannot be read ({_first_line(error)}).") \
            from None
