"""Images per second of the CIFAR training input pipeline, on mock data of the real shape.

    python benchmarks/input_pipeline.py [--batch_size=64] [--runs=5] [--batches=200]

`tfds.testing.mock_data` stands in for CIFAR-10 (32x32x3 uint8, random pixels); the stream is
`get_task("cifar10").dataset("search_train", batch, training=True)` exactly as the search reads
it (crop + flip + normalise, shuffle, repeat, batch, prefetch). Generating mock examples is slow
Python, so one pass fills the pipeline's in-memory cache before timing; what is timed is the
steady state of a search: cached examples -> shuffle -> augment -> batch. Prints one JSON line.
"""
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app
from absl import flags

import il_tf  # pylint: disable=unused-import,g-bad-import-order  # quiet TensorFlow import
import tensorflow_datasets as tfds

from il_tf import data

_BATCH = flags.DEFINE_integer("batch_size", 64, "Images per batch (DARTS search: 64).")
_RUNS = flags.DEFINE_integer("runs", 5, "Timed runs; the median is reported.")
_BATCHES = flags.DEFINE_integer("batches", 200, "Batches per timed run.")
_EXAMPLES = flags.DEFINE_integer("examples", 5000, "Mock examples in the split.")
_CUTOUT = flags.DEFINE_integer("cutout", 0, "Cutout length (16 = DARTS retraining).")


def main(argv):
    del argv
    with tfds.testing.mock_data(num_examples=_EXAMPLES.value):
        task = data.get_task("cifar10")
        stream = task.dataset(
            "search_train", _BATCH.value, training=True, seed=0, cutout=_CUTOUT.value
        )
        iterator = iter(stream)
        warmup = -(-_EXAMPLES.value // _BATCH.value) + 10  # One full pass fills the cache.
        for _ in range(warmup):
            next(iterator)
        rates = []
        for _ in range(_RUNS.value):
            start = time.perf_counter()
            for _ in range(_BATCHES.value):
                images, _ = next(iterator)
            images.numpy()
            rates.append(_BATCHES.value * _BATCH.value / (time.perf_counter() - start))
    print(json.dumps({
        "benchmark": "cifar10_train_input_pipeline",
        "images_per_second_median": round(statistics.median(rates), 1),
        "images_per_second_runs": [round(r, 1) for r in rates],
        "batch_size": _BATCH.value,
        "image_shape": list(task.image_shape),
        "cutout": _CUTOUT.value,
        "cpu_count": os.cpu_count(),
    }))


if __name__ == "__main__":
    app.run(main)
