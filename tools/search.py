"""Architecture search with interleaving learning (or DARTS with one learner).

    python tools/search.py                                   # quick IL search, offline digits
    python tools/search.py --gin_file=cifar10.gin --model_dir=runs/il_c10
    python tools/search.py --gin_file=darts.gin --gin_bindings='il_tf.search.epochs = 2'

Writes config.gin, checkpoints/, tensorboard/, metrics.jsonl, genotype.json (every epoch),
genotype_best.json (lowest summed validation loss), the alphas' course and cells/ into
--model_dir. Restarting the same command resumes exactly where the run stopped.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common  # pylint: disable=g-import-not-at-top,wrong-import-position

from absl import flags  # pylint: disable=g-import-not-at-top,wrong-import-position

from il_tf.learning import search  # pylint: disable=g-import-not-at-top,wrong-import-position

FLAGS = flags.FLAGS
_common.define_flags(default_gin_file="search_digits.gin")


def main(argv):
    del argv
    _common.parse_gin()
    config = os.path.splitext(os.path.basename(_common.gin_files()[-1]))[0]
    model_dir = FLAGS.model_dir or os.path.join("runs", f"search-{config}")
    search.search(model_dir)  # Prints progress and, at the end, what it found.


if __name__ == "__main__":
    _common.run(main)
