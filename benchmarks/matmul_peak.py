"""This machine's matmul peak in TensorFlow; prints one JSON line.

    python benchmarks/matmul_peak.py
    python benchmarks/matmul_peak.py --size=2048 --threads=2 --repeats=10 --dtypes=float32,bfloat16

One (size x size) @ (size x size) matmul counts 2 * size^3 floating-point operations.
For each dtype, one untimed matmul, then --repeats timed ones; `gflops` is the median
(`gflops_all` lists every repeat). TF runs with --threads intra-op threads and one inter-op
thread; il_tf is imported first, so oneDNN is on as in the search (`il_tf/runtime/onednn.py`).
The search step's `achieved_gflops` (`benchmarks/search_step.py`) is meant to be read
against this figure.
"""
# pylint: disable=g-import-not-at-top,wrong-import-position
import json
import os
import statistics
import time

from absl import app
from absl import flags

import il_tf  # noqa: F401  (quiet TF import, oneDNN on)
import tensorflow as tf

flags.DEFINE_integer("size", 2048, "Square matrix size n (n x n @ n x n).")
flags.DEFINE_integer("threads", 2, "Intra-op threads.")
flags.DEFINE_integer("repeats", 10, "Timed matmuls per dtype.")
flags.DEFINE_list("dtypes", ["float32", "bfloat16"], "Dtypes to time.")
FLAGS = flags.FLAGS


def time_matmul(n: int, dtype: str, repeats: int):
    """Seconds of each of `repeats` n x n matmuls (after one untimed)."""
    rng = tf.random.Generator.from_seed(0)
    a = tf.cast(rng.normal([n, n]), dtype)
    b = tf.cast(rng.normal([n, n]), dtype)
    tf.linalg.matmul(a, b).numpy()  # first call: kernel selection, allocation
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        c = tf.linalg.matmul(a, b)
        c[0, 0].numpy()  # CPU eager ops are synchronous; this also waits for the result
        times.append(time.perf_counter() - t)
    return times


def main(argv):
    del argv
    tf.config.threading.set_intra_op_parallelism_threads(FLAGS.threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    n = FLAGS.size
    gflop = 2 * n ** 3 / 1e9
    out = {"size": n, "threads": FLAGS.threads, "repeats": FLAGS.repeats,
           "gflop_per_matmul": round(gflop, 3)}
    for dtype in FLAGS.dtypes:
        rates = [gflop / t for t in time_matmul(n, dtype, FLAGS.repeats)]
        out[dtype] = {"gflops": round(statistics.median(rates), 2),
                      "gflops_max": round(max(rates), 2),
                      "gflops_all": [round(r, 1) for r in rates]}
    out["loadavg_1min"] = round(os.getloadavg()[0], 2)
    print(json.dumps(out))


if __name__ == "__main__":
    app.run(main)
