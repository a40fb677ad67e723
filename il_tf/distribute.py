"""Choosing the tf.distribute strategy, and the input streams that go with it.

"auto": MultiWorkerMirroredStrategy when TF_CONFIG describes a cluster, MirroredStrategy over
all local GPUs when there is more than one, otherwise the default (one device) strategy.
"mirrored" with `logical_cpus=N` on a machine without GPUs splits the CPU into N devices: the
same replicas and per-replica batches as N GPUs, to try a multi-replica run on a laptop or
to check a multi-worker run against one process (the streams are the same, see
`tasks.distribute_dataset`).

A process makes each kind of strategy once: MultiWorkerMirroredStrategy configures
TensorFlow's collective ops, which is possible only before TensorFlow runs its first op, so
the tools call `get_strategy()` right after parsing their configuration, before the tasks
are built, and the roots get the same object back.
"""
from typing import Optional

import gin
import tensorflow as tf

from il_tf import runtime

from il_tf.data import tasks as tasks_lib


_STRATEGIES = {}


@gin.configurable(module="il_tf")
def get_strategy(kind: str = "auto", collective_timeout: Optional[float] = 600.0,
                 logical_cpus: int = 0):
    """Returns the strategy of `kind`: auto, default, mirrored or multi_worker (made once).

    Args:
      kind: which strategy (see the module docstring).
      collective_timeout: multi-worker only: seconds a collective waits for the other
        workers before the run stops with one line (a worker died or the network broke);
        None waits forever.
      logical_cpus: mirrored only: mirror over this many logical devices of the CPU instead
        of the GPUs (0: the GPUs, or the one CPU). Must be set before TensorFlow starts.
    """
    if kind not in _STRATEGIES:
        _STRATEGIES[kind] = _make_strategy(kind, collective_timeout, logical_cpus)
    return _STRATEGIES[kind]


def _make_strategy(kind: str, collective_timeout: Optional[float], logical_cpus: int):
    if kind == "auto":
        if runtime.cluster_size() > 1:
            kind = "multi_worker"
        elif len(tf.config.list_logical_devices("GPU")) > 1:
            kind = "mirrored"
        else:
            kind = "default"
    if kind == "default":
        return tf.distribute.get_strategy()
    if kind == "mirrored":
        if logical_cpus:
            return tf.distribute.MirroredStrategy(_split_cpu(logical_cpus))
        return tf.distribute.MirroredStrategy()
    if kind == "multi_worker":
        options = tf.distribute.experimental.CommunicationOptions(
            timeout_seconds=collective_timeout)
        return tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
    raise ValueError(f"unknown strategy {kind!r}; use auto, default, mirrored or multi_worker.")


def _split_cpu(count: int):
    if count < 1:
        raise ValueError(f"il_tf.get_strategy.logical_cpus must be 0 or more, not {count}.")
    cpu = tf.config.list_physical_devices("CPU")[0]
    try:
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * count)
    except RuntimeError:
        raise ValueError(
            "il_tf.get_strategy.logical_cpus takes effect only before TensorFlow has started; "
            "call il_tf.get_strategy() first in a fresh process (the tools do).") from None
    return [f"/cpu:{i}" for i in range(count)]


def dataset(strategy, task, role, global_batch_size, *, training, seed=0, cutout=0,
            skip_batches=0):
    """A task's stream for `strategy`: a plain dataset on one replica, else distributed."""
    if strategy.num_replicas_in_sync == 1 and runtime.num_workers(strategy) <= 1:
        return task.dataset(role, global_batch_size, training=training, seed=seed, cutout=cutout,
                            skip_batches=skip_batches)
    return tasks_lib.distribute_dataset(strategy, task, role, global_batch_size,
                                        training=training, seed=seed, cutout=cutout,
                                        skip_batches=skip_batches)
