"""Where retraining reports: metrics.jsonl, TensorBoard, and the console.

`metrics.jsonl` holds one JSON object per finished epoch. Keys (fractions in [0, 1], not
percent): `epoch` (1-based count of finished epochs), `step` (global training steps),
`learning_rate`, `drop_path_prob`, `train_loss` (with the auxiliary term, without weight
decay, as DARTS logs it), `train_accuracy`, `test_loss`, `test_accuracy`, `test_error`,
optionally `test_top5_accuracy` / `test_top5_error`, `images_per_second`, `seconds`.
"""
import json
import os
import sys
import time
from typing import Dict, Optional

from absl import logging
import tensorflow as tf
from tensorflow.core.framework import summary_pb2

METRICS_FILE = "metrics.jsonl"


def _scalar_metadata() -> bytes:
    metadata = summary_pb2.SummaryMetadata()
    metadata.plugin_data.plugin_name = "scalars"
    return metadata.SerializeToString()


def write_scalar(tag: str, value: float, step: int) -> None:
    """A TensorBoard scalar in the default writer.

    `tf.summary.write` with the scalars plugin's metadata is what `tf.summary.scalar` writes,
    without needing the tensorboard package installed (il_tf does not depend on it).
    """
    tf.summary.write(tag, tf.constant(float(value), tf.float32), step=step,
                     metadata=_scalar_metadata())


class MetricsLog:
    """Appends one JSON line per epoch and writes the same scalars to TensorBoard.

    Args:
      model_dir: the run directory (TensorBoard events go to `model_dir/tensorboard`).
      resume_epoch: epochs already finished and checkpointed; lines for later epochs (written
        before a crash, before their checkpoint) are dropped, since they are trained again.
      enabled: False on non-chief workers (nothing is written).
    """

    def __init__(self, model_dir: str, resume_epoch: int = 0, enabled: bool = True):
        self.path = os.path.join(model_dir, METRICS_FILE)
        self.enabled = enabled
        self._writer = None
        if not enabled:
            return
        kept = [r for r in read_metrics(model_dir) if r.get("epoch", 0) <= resume_epoch]
        if os.path.exists(self.path) and len(kept) != len(read_metrics(model_dir)):
            tmp = self.path + ".tmp"
            with open(tmp, "w") as f:
                f.writelines(json.dumps(r) + "\n" for r in kept)
            os.replace(tmp, self.path)
        self._writer = tf.summary.create_file_writer(os.path.join(model_dir, "tensorboard"))

    def write(self, record: Dict) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        with self._writer.as_default(step=int(record["step"])):
            for key, value in record.items():
                if key not in ("epoch", "step") and isinstance(value, (int, float)):
                    group = "test" if key.startswith("test_") else "train"
                    write_scalar(f"{group}/{key}", value, int(record["step"]))
        self._writer.flush()

    def close(self):
        if self._writer is not None:
            self._writer.close()


def read_metrics(model_dir: str):
    """The records of `model_dir/metrics.jsonl` (an empty list when there are none)."""
    path = os.path.join(model_dir, METRICS_FILE)
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


class Progress:
    """A progress bar on an interactive terminal, plain log lines otherwise.

    Args:
      steps_per_epoch: training steps in an epoch.
      interactive: None decides from `sys.stderr.isatty()`.
      log_every_steps: without a terminal, a log line at most this often (and at epoch end).
    """

    def __init__(self, steps_per_epoch: int, interactive: Optional[bool] = None,
                 log_every_steps: int = 100):
        self.steps_per_epoch = steps_per_epoch
        self.interactive = sys.stderr.isatty() if interactive is None else interactive
        self.log_every_steps = max(1, log_every_steps)
        self._epoch, self._epochs, self._last_logged = 0, 0, 0

    def start_epoch(self, epoch: int, epochs: int, step: int, learning_rate: float) -> None:
        self._epoch, self._epochs, self._last_logged = epoch, epochs, step
        logging.info("epoch %d/%d  lr %.3e", epoch + 1, epochs, learning_rate)

    def update(self, step: int, loss: float, accuracy: float, images_per_second: float) -> None:
        """`step` is the position in the epoch; loss/accuracy are the epoch's running means."""
        text = (f"loss {loss:.4f}  acc {100 * accuracy:.2f}%  {images_per_second:.0f} img/s")
        if self.interactive:
            width = 30
            done = int(width * step / max(1, self.steps_per_epoch))
            bar = "=" * done + "." * (width - done)
            sys.stderr.write(f"\rEpoch {self._epoch + 1}/{self._epochs} [{bar}] "
                             f"{step}/{self.steps_per_epoch}  {text}\033[K")
            sys.stderr.flush()
        elif (step - self._last_logged >= self.log_every_steps
              or step == self.steps_per_epoch):
            self._last_logged = step
            logging.info("epoch %d step %d/%d  %s", self._epoch + 1, step,
                         self.steps_per_epoch, text)

    def end_epoch(self, record: Dict) -> None:
        if self.interactive:
            sys.stderr.write("\n")
        top5 = (f"  top-5 err {100 * record['test_top5_error']:.2f}%"
                if "test_top5_error" in record else "")
        logging.info("epoch %d/%d  train loss %.4f acc %.2f%%  test loss %.4f err %.2f%%%s  "
                     "(%.0f s, %.0f img/s)", record["epoch"], self._epochs,
                     record["train_loss"], 100 * record["train_accuracy"], record["test_loss"],
                     100 * record["test_error"], top5, record["seconds"],
                     record["images_per_second"])


class Timer:
    def __init__(self):
        self.start = time.perf_counter()

    def seconds(self) -> float:
        return time.perf_counter() - self.start
