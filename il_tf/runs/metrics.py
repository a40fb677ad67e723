"""What a run reports: `metrics.jsonl` (one JSON object per epoch) and TensorBoard events.

Every record carries `epoch` (finished epochs, 1-based; search also writes an epoch-0 record
before its first step) and `step` (steps done when it was written); the rest is the
program's (see `il_tf.learning.search` and `il_tf.training.loop` for their keys).
TensorBoard events go to `<run_dir>/tensorboard`, scalars and images tagged by the program.
"""
import json
import os
from typing import Dict, List, Mapping

import numpy as np
import tensorflow as tf

from il_tf.errors import MetricsError
from il_tf.runs.run_dir import write_atomically

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"


def read_metrics(run_dir: str, required: bool = False) -> List[Dict]:
    """The records of `run_dir/metrics.jsonl` (or of that file, if given its path).

    A last line cut short by a kill is ignored: it was written before its checkpoint and is
    written again when the run resumes.

    Args:
      run_dir: a run directory, or the path of a metrics.jsonl.
      required: a missing file is an error (else: no records).

    Raises:
      MetricsError: a missing file (when required) or a line that is not JSON.
    """
    path = run_dir if run_dir.endswith(".jsonl") else os.path.join(run_dir, METRICS_FILE)
    if not os.path.isfile(path):
        if required:
            raise MetricsError(f"{path} not found: is {os.path.dirname(path) or '.'} a run "
                               f"directory (tools/search.py or tools/train.py --model_dir=...)?")
        return []
    records = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except ValueError as error:
                if line.endswith("\n"):
                    raise MetricsError(f"{path} line {number} is not JSON ({error}); the file "
                                       f"is corrupt.") from None
    return records


class MetricsLog:
    """Appends records to metrics.jsonl and writes their summaries (chief only).

    Args:
      run_dir: the run directory.
      enabled: False on non-chief workers (nothing is written).
    """

    def __init__(self, run_dir: str, enabled: bool = True):
        self.run_dir = run_dir
        self.path = os.path.join(run_dir, METRICS_FILE)
        self.enabled = enabled
        self._writer = None

    def records(self) -> List[Dict]:
        return read_metrics(self.run_dir)

    def trim(self, step: int) -> None:
        """Drops the records of steps after `step` (atomically): they were written before a
        checkpoint that was never saved, and are written again as the run redoes them."""
        if not self.enabled or not os.path.exists(self.path):
            return
        records = read_metrics(self.run_dir)
        kept = [r for r in records if r["step"] <= step]
        with open(self.path) as f:
            intact = f.read().endswith("\n") or not f.tell()
        if len(kept) != len(records) or not intact:
            write_atomically(self.path, "".join(json.dumps(r) + "\n" for r in kept))

    def write(self, record: Mapping, scalars: Mapping[str, float] = None,
              images: Mapping[str, np.ndarray] = None) -> None:
        """Appends `record`; `scalars` and `images` (tag -> value) go to TensorBoard."""
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())
        if self._writer is None:
            self._writer = tf.summary.create_file_writer(os.path.join(self.run_dir,
                                                                      TENSORBOARD_DIR))
        with self._writer.as_default(step=int(record["step"])):
            for tag, value in (scalars or {}).items():
                tf.summary.scalar(tag, float(value))
            for tag, image in (images or {}).items():
                tf.summary.image(tag, image[None] if image.ndim == 3 else image)
        self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def record_at_step(run_dir: str, step: int):
    """The record written at `step` (an epoch's end), or None (e.g. a step inside an epoch)."""
    for record in reversed(read_metrics(run_dir)):
        if record.get("step") == step:
            return record
    return None
