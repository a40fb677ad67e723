"""Times retraining steps (`il_tf.training.Trainer`) on random data; prints one JSON line.

    python benchmarks/train_step.py --precision=float32
    python benchmarks/train_step.py --precision=mixed_bfloat16   # against the line above
    python benchmarks/train_step.py --precision=mixed_float16    # with dynamic loss scaling
    python benchmarks/train_step.py --jit_compile                # XLA on the forward/backward

Defaults: DARTS_V2 at C=16, 8 cells, no auxiliary head, batch 32, 32x32 images. Each timed
call of the traced loop runs --steps_per_loop SGD steps; seconds_per_step is the median over
--iters calls after one untimed call (which traces and compiles: startup_s). `cpu_bf16`
says whether the CPU has the AVX-512 BF16 or AMX-BF16 instructions that bfloat16 needs to be
fast; without them TensorFlow emulates bfloat16 arithmetic.
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
import keras
import tensorflow as tf

from il_tf import training

flags.DEFINE_enum("precision", "float32", ["float32", "mixed_bfloat16", "mixed_float16"],
                  "Keras dtype policy of the network.")
flags.DEFINE_string("genotype", "DARTS_V2", "A published genotype or a genotype.json.")
flags.DEFINE_integer("channels", 16, "Network C.")
flags.DEFINE_integer("layers", 8, "Cells.")
flags.DEFINE_integer("batch", 32, "Global batch.")
flags.DEFINE_integer("image_size", 32, "Image height and width.")
flags.DEFINE_bool("jit_compile", False, "XLA on the forward and backward pass.")
flags.DEFINE_integer("steps_per_loop", 5, "Steps per traced call.")
flags.DEFINE_integer("iters", 3, "Timed calls.")
FLAGS = flags.FLAGS


def _cpu_flags():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def main(argv):
    del argv
    keras.mixed_precision.set_global_policy(FLAGS.precision)
    strategy = tf.distribute.get_strategy()
    keras.utils.set_random_seed(0)
    model = training.network(FLAGS.genotype, 10, family="cifar", channels=FLAGS.channels,
                             layers=FLAGS.layers, auxiliary=False)
    trainer = training.Trainer(
        strategy, model, global_batch_size=FLAGS.batch, num_classes=10, learning_rate=0.025,
        momentum=0.9, weight_decay=3e-4, grad_clip=5.0, auxiliary_weight=0.0,
        label_smoothing=0.0, loss_scaling=FLAGS.precision == "mixed_float16",
        jit_compile=FLAGS.jit_compile)
    shape = (FLAGS.batch, FLAGS.image_size, FLAGS.image_size, 3)
    images = tf.random.stateless_normal(shape, seed=[0, 1])
    labels = tf.random.stateless_uniform([FLAGS.batch], seed=[0, 2], maxval=10,
                                         dtype=tf.int32)
    iterator = iter(tf.data.Dataset.from_tensors((images, labels)).repeat())
    steps = tf.constant(FLAGS.steps_per_loop)

    def call():
        return trainer.train_loop(iterator, steps, tf.constant(0, tf.int64),
                                  tf.constant(0, tf.int64)).numpy()

    totals = call()
    startup = time.time() - _START
    times = []
    for _ in range(FLAGS.iters):
        t = time.time()
        totals = call()
        times.append((time.time() - t) / FLAGS.steps_per_loop)
    sec = statistics.median(times)
    cpu = _cpu_flags()
    print(json.dumps({
        "precision": FLAGS.precision, "genotype": FLAGS.genotype, "channels": FLAGS.channels,
        "layers": FLAGS.layers, "batch": FLAGS.batch, "image_size": FLAGS.image_size,
        "jit_compile": FLAGS.jit_compile,
        "seconds_per_step": round(sec, 4), "seconds_per_step_all": [round(t, 4) for t in times],
        "images_per_sec": round(FLAGS.batch / sec, 1),
        "loss": round(float(totals[0] / max(totals[2], 1)), 4),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "startup_s": round(startup, 2),
        "cpu_bf16": bool({"avx512_bf16", "amx_bf16"} & cpu),
        "cpu_avx512": "avx512f" in cpu,
    }))


if __name__ == "__main__":
    app.run(main)
