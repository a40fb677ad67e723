"""Ends a tool's process without Python's and TensorFlow's teardown.

When a tool (tools/*.py) has finished, everything it wrote is already on disk: checkpoints
are written synchronously, metrics.jsonl is fsynced per record, the TensorBoard writer is
closed by the run loop, pictures and genotypes are closed files. What is left is the
interpreter's finalisation (module teardown, the garbage of the traced graphs) and
TensorFlow's C++ destructors: about a second per process on a 2-core CPU
(docs/benchmarks.md), paid by every run, resume, error and test of a tool.
`exit_without_teardown` flushes standard output, standard error and the logging handlers
and ends the process with `os._exit`.

A process of a multi-worker cluster (`TF_CONFIG` naming more than one task) exits normally:
its peers may still be talking to its collective server. `IL_TF_FAST_EXIT=0` always exits
normally (e.g. to run atexit handlers of one's own).
"""
import json
import logging
import os
import sys

from il_tf.runtime import switches

ENV = "IL_TF_FAST_EXIT"


def cluster_size() -> int:
    """Tasks in the cluster that `TF_CONFIG` describes (0 without one); also how
    il_tf.distribute's "auto" tells a multi-worker run. Raises ValueError (bad JSON) or
    AttributeError (a cluster that is not a mapping) on a malformed `TF_CONFIG`."""
    cluster = json.loads(os.environ.get("TF_CONFIG", "{}")).get("cluster", {})
    return sum(len(tasks) for tasks in cluster.values())


def _in_cluster() -> bool:
    try:
        return cluster_size() > 1
    except (ValueError, AttributeError):
        return True  # Unreadable: TensorFlow will say so; do not guess.


def exit_without_teardown(status: int) -> None:
    """Flushes stdio and logging, then ends the process with `status` (see the module)."""
    if _in_cluster() or switches.turned_off(ENV):
        sys.exit(status)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    logging.shutdown()
    os._exit(status)  # pylint: disable=protected-access
