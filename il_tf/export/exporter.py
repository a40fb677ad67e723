"""Writing a retrained run as a numbered SavedModel version, the layout TF Serving watches.

    <export_base>/<model_name>/<version>/saved_model.pb, variables/, assets.extra/

`export(model_dir)` (the run's config.gin must be parsed, as for `training.evaluate`)
restores a checkpoint into the same network `training.network()` builds for training and
evaluation, wraps it in a `serving.ServingModule`, and saves it with
`assets.extra/il_tf_metadata.json` (genotype, dataset, class names, input size,
normalisation, the checkpoint's test accuracy, versions), which TF Serving ignores.
The version is written to a hidden temporary directory and renamed at the end: a failed
export leaves nothing behind, and an existing version is never overwritten.
"""
import dataclasses
import datetime
import json
import os
import re
import shutil
import tempfile
from typing import Any, Dict, Optional, Tuple

import keras
import tensorflow as tf

from il_tf import data
from il_tf.errors import OneLineError
from il_tf.export import serving
from il_tf.models import network as network_lib
from il_tf.search_space.genotypes import Genotype, get_genotype
from il_tf.runs import checkpoints
from il_tf.runs import metrics as run_metrics
from il_tf.training import loop
from il_tf.errors import CheckpointError
from il_tf.version import __version__

METADATA_FILE = "il_tf_metadata.json"
METADATA_FORMAT_VERSION = 1


class ExportError(OneLineError, ValueError):
    """An export that cannot be written (e.g. the requested version exists)."""


@dataclasses.dataclass
class RestoredRun:
    """A run's network restored from one of its checkpoints, in inference form."""

    model: keras.Model
    task: data.Task
    genotype: Genotype
    checkpoint: str
    step: int
    #: The epoch the checkpoint ends (None for a checkpoint inside an epoch).
    epoch: Optional[int]


def restore(model_dir: str, checkpoint: Optional[str] = None) -> RestoredRun:
    """Restores a run's network as `training.evaluate` does (its config.gin must be parsed).

    Args:
      model_dir: a tools/train.py run directory (genotype.json, checkpoints).
      checkpoint: None for the latest; else a prefix or a name like "ckpt-120".

    Raises:
      CheckpointError: no such checkpoint, or it is unreadable or does not fit the network.
    """
    path = checkpoints.resolve(model_dir, checkpoint)
    genotype_path = os.path.join(model_dir, loop.GENOTYPE_FILE)
    if not os.path.exists(genotype_path):
        raise CheckpointError(f"{model_dir} has no {loop.GENOTYPE_FILE}; is it a tools/train.py "
                              f"run directory?")
    genotype = get_genotype(genotype_path)
    task = data.get_task()
    previous_policy = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("float32")  # Serve in float32 whatever trained.
    try:
        model = loop.network(genotype, task.num_classes)
    finally:
        keras.mixed_precision.set_global_policy(previous_policy)
    # `read` reports a corrupt or truncated file (IndexError, OSError included) in one line.
    checkpoints.read(checkpoints.model_checkpoint(model), path, partial=True)
    step = checkpoints.saved_step(path)
    record = run_metrics.record_at_step(model_dir, step)
    return RestoredRun(model, task, genotype, path, step, record["epoch"] if record else None)


def model_name_of(task_name: str) -> str:
    """A directory and URL friendly model name (TF Serving's `/v1/models/<name>`)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", task_name).strip("._") or "model"


def versions(model_base: str) -> Tuple[int, ...]:
    """The version numbers present under `<export_base>/<model_name>`, ascending."""
    if not tf.io.gfile.isdir(model_base):
        return ()
    return tuple(sorted(int(n.rstrip("/")) for n in tf.io.gfile.listdir(model_base)
                        if n.rstrip("/").isdigit()))


def _test_result(model_dir: str, restored: RestoredRun) -> Dict[str, Any]:
    """The checkpoint's test accuracy from the run's metrics (end-of-epoch checkpoints only:
    a checkpoint inside an epoch was never evaluated)."""
    if restored.epoch is None:
        return {"test_accuracy": None, "test_error": None,
                "test_source": f"none: the checkpoint (step {restored.step}) is inside an "
                               f"epoch or its epoch is not in {run_metrics.METRICS_FILE}"}
    for record in reversed(run_metrics.read_metrics(model_dir)):
        if record.get("epoch") == restored.epoch and "test_accuracy" in record:
            result = {k: record[k] for k in ("test_accuracy", "test_error",
                                              "test_top5_accuracy") if k in record}
            result["test_source"] = (f"{run_metrics.METRICS_FILE}, epoch {restored.epoch} "
                                     f"(the last epoch's test error is results.json's)")
            return result
    return {"test_accuracy": None, "test_error": None,
            "test_source": f"none: epoch {restored.epoch} is not in {run_metrics.METRICS_FILE}"}


def metadata(model_dir: str, restored: RestoredRun, module: serving.ServingModule,
             model_name: str, version: int) -> Dict[str, Any]:
    """The JSON written beside the model (assets.extra/il_tf_metadata.json)."""
    task, pre = restored.task, module.preprocessing
    mean, std = task.normalization
    transform = {"kind": type(pre).__name__, "image_size": pre.image_size,
                 "normalization": "(x / 255 - mean) / std", "mean": list(mean),
                 "std": list(std)}
    if isinstance(pre, data.preprocessing.InceptionCrop):
        transform.update(resize_size=pre.resize_size,
                         steps="shorter side to resize_size (bilinear), centre crop image_size")
    else:
        transform.update(steps="resize to image_size (antialiased) if the size differs")
    outputs = {"probabilities": f"float32 [batch, {module.num_classes}]",
               "classes": f"int32 [batch, {module.top_k}]",
               "scores": f"float32 [batch, {module.top_k}]"}
    if module.has_class_names:
        outputs["class_names"] = f"string [batch, {module.top_k}]"
    result = {
        "format_version": METADATA_FORMAT_VERSION,
        "model_name": model_name,
        "version": version,
        "il_tf_version": __version__,
        "tensorflow_version": tf.__version__,
        "exported_at": datetime.datetime.now(datetime.timezone.utc).isoformat(
            timespec="seconds"),
        "run_dir": os.path.abspath(model_dir),
        "checkpoint": os.path.basename(restored.checkpoint),
        "epoch": restored.epoch,
        "step": restored.step,
        "dataset": task.name,
        "num_classes": task.num_classes,
        "class_names": list(task.class_names) if task.class_names else None,
        "image_shape": list(module.image_shape),
        "preprocessing": transform,
        "network": type(restored.model).__name__,
        "params": network_lib.count_parameters(restored.model),
        "genotype": restored.genotype.to_dict(),
        "top_k": module.top_k,
        "signatures": {
            serving.IMAGES_SIGNATURE: {"inputs": {serving.IMAGES_INPUT:
                                                  "uint8 [batch, height, width, 3]"},
                                       "outputs": outputs},
            serving.BYTES_SIGNATURE: {"inputs": {serving.BYTES_INPUT: "string [batch]"},
                                      "outputs": outputs},
        },
    }
    result.update(_test_result(model_dir, restored))
    return result


def export(model_dir: str, export_dir: Optional[str] = None, *, version: Optional[int] = None,
           checkpoint: Optional[str] = None, model_name: Optional[str] = None,
           top_k: int = serving.DEFAULT_TOP_K) -> str:
    """Exports a retrained run as `<export_dir>/<model_name>/<version>/` and returns the path.

    Args:
      model_dir: the tools/train.py run directory (its config.gin must already be parsed).
      export_dir: the base directory TF Serving watches; None is `<model_dir>/export`.
      version: the version number (must not exist yet); None is one more than the highest.
      checkpoint: None for the latest checkpoint; else a prefix or a name like "ckpt-120".
      model_name: None is the dataset's name (e.g. "cifar10").
      top_k: classes per image in the `classes` / `scores` / `class_names` outputs.

    Raises:
      CheckpointError: a missing, unreadable or mismatching checkpoint (nothing is written).
      ExportError: `version` exists already, or is not a positive number.
    """
    if version is not None and version < 1:
        raise ExportError(f"--version must be a positive integer, got {version}.")
    restored = restore(model_dir, checkpoint)  # Before anything is written.
    name = model_name_of(model_name or restored.task.name)
    base = export_dir or os.path.join(model_dir, "export")
    for path in (model_dir, base):
        if os.path.exists(path) and not os.path.isdir(path):
            raise ExportError(f"{path} is a file, not a directory; pass a directory as "
                              f"--{'model_dir' if path == model_dir else 'export_dir'}.")
    model_base = os.path.join(base, name)
    if version is not None and version in versions(model_base):
        raise ExportError(f"{os.path.join(model_base, str(version))} exists; versions are never "
                          f"overwritten (omit --version to write version "
                          f"{max(versions(model_base)) + 1}).")
    task = restored.task
    module = serving.ServingModule(restored.model, task.preprocessing,
                                   class_names=task.class_names, top_k=top_k)
    created = _missing_parents(model_base)
    os.makedirs(model_base, exist_ok=True)
    # Hidden and not a number: TF Serving never loads a half-written version.
    tmp = tempfile.mkdtemp(prefix=".tmp-export-", dir=model_base)
    try:
        tf.saved_model.save(module, tmp, signatures=module.signatures())
        os.makedirs(os.path.join(tmp, "assets.extra"))
        while True:
            number = version or (max(versions(model_base), default=0) + 1)
            with open(os.path.join(tmp, "assets.extra", METADATA_FILE), "w") as f:
                json.dump(metadata(model_dir, restored, module, name, number), f, indent=1)
            target = os.path.join(model_base, str(number))
            if not os.path.exists(target):
                try:  # Fails if another export took the number meanwhile (never overwrites).
                    os.rename(tmp, target)
                    return target
                except OSError:
                    pass
            if version is not None:
                raise ExportError(f"{target} was written by another export meanwhile; "
                                  f"versions are never overwritten.")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        for directory in created:  # A failed export leaves no empty directories behind.
            if os.path.isdir(directory) and not os.listdir(directory):
                os.rmdir(directory)


def _missing_parents(path: str):
    """`path` and its ancestors that do not exist yet, deepest first."""
    missing = []
    path = os.path.abspath(path)
    while not os.path.exists(path):
        missing.append(path)
        path = os.path.dirname(path)
    return missing
