"""Finding and reading checkpoints, with one-line errors instead of TensorFlow tracebacks."""
import os
from typing import Optional

import tensorflow as tf
from tensorflow.core.protobuf import trackable_object_graph_pb2

from il_tf.training.errors import CheckpointError


def _first_line(error: BaseException) -> str:
    lines = [l.strip() for l in str(error).splitlines() if l.strip()]
    return f"{type(error).__name__}: {lines[0] if lines else ''}"[:240]


def resolve(model_dir: str, checkpoint: Optional[str] = None) -> str:
    """The checkpoint prefix to read.

    Args:
      model_dir: the run directory.
      checkpoint: None for the latest checkpoint of `model_dir`; else a prefix (a path, or a
        name such as "ckpt-120" inside `model_dir`).

    Raises:
      CheckpointError: no such checkpoint.
    """
    if checkpoint is None:
        path = tf.train.latest_checkpoint(model_dir) if os.path.isdir(model_dir) else None
        if path is None:
            raise CheckpointError(f"no checkpoint in {model_dir} (train there first with "
                                  f"tools/train.py --model_dir={model_dir}).")
        return path
    for path in (checkpoint, os.path.join(model_dir, checkpoint)):
        if tf.io.gfile.exists(path + ".index"):
            return path
    found = tf.train.get_checkpoint_state(model_dir) if os.path.isdir(model_dir) else None
    names = [os.path.basename(p) for p in found.all_model_checkpoint_paths] if found else []
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
    graph = trackable_object_graph_pb2.TrackableObjectGraph()
    graph.ParseFromString(tf.train.load_checkpoint(path).get_tensor("_CHECKPOINTABLE_OBJECT_GRAPH"))
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
    hint = (f"delete {path}.* to resume from the previous checkpoint, or pass "
            f"--checkpoint=<an earlier ckpt-N>")
    mismatch = "was it written with another genotype, network size or configuration?"
    _ = checkpoint.save_counter  # Created lazily; make it exist so that it is matched.
    try:
        status = checkpoint.read(path)
        variables = getattr(checkpoint, "model_variables", None)
        saved = _saved_list_length(path, "model_variables") if variables is not None else 0
    except (tf.errors.OpError, ValueError, KeyError, TypeError, IndexError) as error:
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
