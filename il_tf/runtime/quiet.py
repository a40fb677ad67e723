"""Keeps TensorFlow's start-up chatter out of users' faces without hiding real errors.

TF 2.21 prints INFO lines (oneDNN, CPU features, "could not find cuda drivers") from C++
static initialisers before absl logging is configured, so `TF_CPP_MIN_LOG_LEVEL` cannot
silence them. We capture file descriptor 2 while TensorFlow is imported and its devices
are listed, then replay every line that is not known start-up noise. Errors and warnings
that are not on the list still reach the user. On a machine without a GPU, TF 2.23 follows
the cuInit error with a source location trace (a header line and the `cuda_status.cc`
line); those two are dropped only right after a dropped cuInit line.
"""
import contextlib
import os
import re
import sys
import tempfile

# Lines that are pure start-up information on a correctly working install.
_NOISE = re.compile(
    r"^(I\d{4} |WARNING: All log messages before absl::InitializeLog|"
    r"To enable the following instructions|"
    r"E\d{4} .*(cuInit|cuda_platform|Unable to register cu|computation placer already)|"
    r"W\d{4} .*(TF-TRT|Could not find TensorRT|cuda_executor))"
)
_CUINIT = re.compile(r"^E\d{4} .*cuInit")
# What TF 2.23 prints after the cuInit error: a trace header, then the source location.
_CUINIT_TRACE = re.compile(r"^\s*(=== Source Location Trace: ===|.*cuda_status\.cc\b)")


def without_noise(lines):
    """The lines that are not start-up noise, in order."""
    kept, after_cuinit = [], False
    for line in lines:
        if after_cuinit and _CUINIT_TRACE.match(line):
            continue
        after_cuinit = bool(_CUINIT.match(line))
        if not _NOISE.match(line):
            kept.append(line)
    return kept


@contextlib.contextmanager
def filtered_stderr():
    """Captures fd 2 for the duration and replays the lines that are not start-up noise."""
    if os.environ.get("IL_TF_VERBOSE_STARTUP"):
        yield
        return
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # No real fd 2 (some notebooks): nothing to filter.
        yield
        return
    with tempfile.TemporaryFile(mode="w+b") as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            for line in without_noise(capture.read().decode("utf-8", "replace").splitlines()):
                print(line, file=sys.stderr)


def import_tensorflow_quietly():
    """Imports TensorFlow (and initialises its devices) with start-up noise filtered."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
    with filtered_stderr():
        import tensorflow as tf  # pylint: disable=g-import-not-at-top

        tf.config.list_physical_devices()
    tf.get_logger().setLevel("ERROR")
    return tf
