"""Architecture search with interleaving learning (or DARTS with one learner).

    python tools/search.py                                   # quick IL search, offline digits
    python tools/search.py --gin_file=cifar10.gin --model_dir=runs/il_c10
    python tools/search.py --gin_file=darts.gin --gin_bindings='il_tf.search.epochs = 2'

Writes config.gin, checkpoints/, tb/, metrics.jsonl, genotype.json (every epoch),
genotype_best.json (lowest summed validation loss) and cells/ into --model_dir. Restarting
the same command resumes from the latest checkpoint.
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
    _common.parse_gin(imports=["il_tf.learning.search"])
    config = os.path.splitext(os.path.basename(_common.gin_files()[-1]))[0]
    model_dir = FLAGS.model_dir or os.path.join("runs", f"search-{config}")
    record = search.search(model_dir)
    print(f"{model_dir}: genotype.json after epoch {record.get('epoch')}, summed val loss "
          f"{record.get('val_loss_sum', float('nan')):.4f}; best in genotype_best.json")


if __name__ == "__main__":
    _common.run(main)
