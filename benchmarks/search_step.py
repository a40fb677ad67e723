"""Times search iterations on random 32x32 data; prints one JSON object as its last line.

    python benchmarks/search_step.py --channels=8 --layers=5 --batch=16 --order=2 --learners=1
    python benchmarks/search_step.py --learners=2 --hessian=exact --chained   # vs without
    python benchmarks/search_step.py --learners=2 --strategy=multitask
    python benchmarks/search_step.py --order=1 --partial_channels=4   # PC-DARTS vs =1

startup_s is process start to the end of the first iteration (imports, building, tracing,
graph optimisation); seconds_per_iter is the median over --iters timed iterations after
--warmup; peak_rss_mib is the process's peak resident memory (before the FLOP count).
gflop_per_iter is one gradient pass's FLOPs times the passes per iteration
(`benchmarks/step_flops.py`; null for --hessian=exact, which runs no such pass; passes_traced
is the pass's call sites counted while the iteration is traced), achieved_gflops is
gflop_per_iter / seconds_per_iter: read it against `benchmarks/matmul_peak.py`.
"""
import time

_START = time.time()

# pylint: disable=g-import-not-at-top,wrong-import-position
import json
import resource
import statistics

from absl import app
from absl import flags

import il_tf  # noqa: F401  (quiet TF import)
import numpy as np
import step_flops  # benchmarks/ (the script's folder is on sys.path)
import tensorflow as tf

from il_tf import runtime
from il_tf.learning import interleaving
from il_tf.models import supernet as supernet_lib

flags.DEFINE_integer("channels", 8, "Supernet C.")
flags.DEFINE_integer("layers", 5, "Supernet cells.")
flags.DEFINE_integer("batch", 16, "Batch per learner (train and val each).")
flags.DEFINE_integer("order", 2, "1 = first order, 2 = second order.")
flags.DEFINE_string("hessian", "joint", "joint, split or exact.")
flags.DEFINE_integer("learners", 1, "K learners (10 classes each).")
flags.DEFINE_integer("image_size", 32, "Image height and width.")
flags.DEFINE_bool("sequential_passes", True, "Run the passes strictly one at a time.")
flags.DEFINE_enum("strategy", "interleaved", ["interleaved", "blocked", "multitask", "single"],
                  "The learning strategy (il_tf/learning/strategies.py).")
flags.DEFINE_bool("chained", False, "Chained hypergradient (needs --hessian=exact).")
flags.DEFINE_enum("recompute", "edges", supernet_lib.RECOMPUTE_MODES,
                  "What the backward pass recomputes (Supernet.recompute; the search's default).")
flags.DEFINE_integer("partial_channels", 1,
                     "PC-DARTS's k (with edge normalisation when > 1); 1 = full channels.")
flags.DEFINE_integer("warmup", 2, "Untimed iterations after the first.")
flags.DEFINE_integer("iters", 5, "Timed iterations.")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    strategy = tf.distribute.get_strategy()
    shape = (FLAGS.image_size, FLAGS.image_size, 3)
    net = supernet_lib.Supernet(FLAGS.channels, FLAGS.layers, seed=0,
                                recompute=FLAGS.recompute,
                                partial_channels=FLAGS.partial_channels)
    supernet_lib.build(net, shape)
    opt = interleaving.InterleavingOptimizer(
        net, [10] * FLAGS.learners, strategy, steps_per_epoch=1000, epochs=50,
        order=FLAGS.order, hessian=FLAGS.hessian, sequential_passes=FLAGS.sequential_passes,
        learning_strategy=FLAGS.strategy, chained=FLAGS.chained)
    rng = np.random.default_rng(0)

    def batch():
        return (tf.constant(rng.normal(size=(FLAGS.batch, *shape)), tf.float32),
                tf.constant(rng.integers(0, 10, FLAGS.batch), tf.int32))

    batches = [([batch() for _ in range(opt.train_batches_per_learner)], batch())
               for _ in range(FLAGS.learners)]

    @runtime.step_function
    def iteration(batches):
        return strategy.run(opt.replica_iteration, args=(batches,))

    with step_flops.PassCounter(opt.fn) as traced:
        iteration(batches)["train_loss"].numpy()
    startup = time.time() - _START
    for _ in range(FLAGS.warmup):
        iteration(batches)["train_loss"].numpy()
    times = []
    for _ in range(FLAGS.iters):
        t = time.time()
        iteration(batches)["train_loss"].numpy()
        times.append(time.time() - t)
    sec = statistics.median(times)
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    gflop = None
    if not (FLAGS.order == 2 and FLAGS.hessian == "exact"):
        per_pass = step_flops.pass_flops(opt.fn, FLAGS.batch, FLAGS.image_size)["total"]
        gflop = per_pass * step_flops.passes_per_iteration(opt) / 1e9
    print(json.dumps({
        "channels": FLAGS.channels, "layers": FLAGS.layers, "batch": FLAGS.batch,
        "order": FLAGS.order, "hessian": FLAGS.hessian, "learners": FLAGS.learners,
        "sequential_passes": FLAGS.sequential_passes, "strategy": FLAGS.strategy,
        "chained": FLAGS.chained, "recompute": FLAGS.recompute,
        "partial_channels": FLAGS.partial_channels,
        "seconds_per_iter": round(sec, 4), "seconds_per_iter_all": [round(t, 4) for t in times],
        "images_per_sec": round(2 * FLAGS.batch * FLAGS.learners / sec, 2),
        "peak_rss_mib": round(peak_rss / 1024, 1),
        "startup_s": round(startup, 2),
        "passes_per_iter": None if gflop is None else step_flops.passes_per_iteration(opt),
        "passes_traced": traced.calls,
        "gflop_per_iter": None if gflop is None else round(gflop, 3),
        "achieved_gflops": None if gflop is None else round(gflop / sec, 3),
    }))


if __name__ == "__main__":
    app.run(main)
