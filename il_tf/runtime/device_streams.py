"""Distributed input streams whose per-device stage runs without tf.data's autotuning.

A distributed iterator (MirroredStrategy over several devices, MultiWorkerMirroredStrategy)
ends each device's stream in a small pipeline of its own: a generator that takes the
device's elements from the worker's input pipeline, then a prefetch buffer of fixed size.
That stage gets tf.data's default options, autotuning included, although it has nothing to
tune. The autotuning model's thread re-optimises at periods that double up to a minute, and
destroying the iterator waits for the current period to run out. The search ends its
training streams every epoch and its validation passes end theirs, so each epoch waited
for several such periods in turn: 5, 10, then 20 s in a tiny 2-replica search on 2 cores
(docs/benchmarks.md), and up to a minute per stream in a long one. il_tf's own pipelines
already run without the model (`il_tf.data.tasks`, `_stream_options`); this gives the
per-device stage the same option, which changes no element and no order.

A process default (set when il_tf is imported; see the package docstring):
`IL_TF_UNTUNE_DEVICE_STREAMS=0` keeps TensorFlow's own.
"""
import tensorflow as tf

from il_tf.runtime import internals
from il_tf.runtime import switches

ENV = "IL_TF_UNTUNE_DEVICE_STREAMS"


def untune() -> None:
    """Turns autotuning off in every per-device stage built from now on (see above)."""
    if switches.turned_off(ENV):
        return
    options = tf.data.Options()
    options.autotune.enabled = False
    internals.set_per_device_stream_options(options)
