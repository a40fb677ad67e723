"""Retrains a genotype from scratch (the DARTS protocol) and reports its test error.

    python tools/train.py                                    # DARTS_V2 on the offline digits
    python tools/train.py --gin_file=train_cifar10.gin --genotype=runs/search/genotype.json \
        --model_dir=runs/c10
    python tools/train.py --gin_file=train_cifar10.gin --gin_bindings='train.epochs = 20'

Restarting the same command resumes from the run's latest checkpoint. Without --gin_file it
uses gin_configs/train_digits.gin: a tiny network on the dataset that ships with il_tf, a
few CPU minutes. Without --model_dir the run goes to runs/<config>-<genotype>.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common  # pylint: disable=g-import-not-at-top,wrong-import-position

from absl import flags  # pylint: disable=g-import-not-at-top,wrong-import-position

from il_tf import training  # pylint: disable=g-import-not-at-top,wrong-import-position

FLAGS = flags.FLAGS
_common.define_flags(default_gin_file="train_digits.gin")
flags.DEFINE_string("genotype", None,
                    "A published genotype (e.g. DARTS_V2, PC_DARTS), a genotype.json or a "
                    "search run directory; default: the gin config's train.genotype.")


def _default_model_dir() -> str:
    config = os.path.splitext(os.path.basename(_common.gin_files()[-1]))[0]
    genotype = FLAGS.genotype or "default"
    genotype = os.path.basename(os.path.normpath(genotype))
    return os.path.join("runs", f"{config}-{os.path.splitext(genotype)[0]}")


def main(argv):
    del argv
    # The genotype as a binding, so config.gin records it.
    bindings = [f"il_tf.training.train.genotype = {FLAGS.genotype!r}"] if FLAGS.genotype else []
    _common.parse_gin(extra_bindings=bindings)
    model_dir = FLAGS.model_dir or _default_model_dir()
    training.train(model_dir)  # Prints progress and, at the end, the test error.


if __name__ == "__main__":
    _common.run(main)
