"""Evaluates a trained run on its test split: test error, parameters, multiply-adds.

    python tools/evaluate.py --model_dir=runs/c10                  # latest checkpoint
    python tools/evaluate.py --model_dir=runs/c10 --checkpoint=ckpt-5200
    python tools/evaluate.py --gin_file=train_cifar10.gin --genotype=DARTS_V2   # size only

The run's own config.gin (written by tools/train.py) rebuilds its task and network; further
--gin_file / --gin_bindings override it (e.g. another il_tf.data.tfds_config.data_dir).
Parameters exclude the auxiliary head (used only in training), as the papers count them;
multiply-adds are per image in inference. Without --model_dir it builds the configured
network for --genotype and prints only its size (no data, no training).
"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common  # pylint: disable=g-import-not-at-top,wrong-import-position

from absl import flags  # pylint: disable=g-import-not-at-top,wrong-import-position
import gin  # pylint: disable=g-import-not-at-top,wrong-import-position

from il_tf import training  # pylint: disable=g-import-not-at-top,wrong-import-position
from il_tf.models import network as network_lib  # pylint: disable=g-import-not-at-top,wrong-import-position

FLAGS = flags.FLAGS
_common.define_flags()
flags.DEFINE_string("checkpoint", None, "A checkpoint of --model_dir (e.g. ckpt-120 or a "
                    "path); default: the latest.")
flags.DEFINE_string("genotype", "DARTS_V2", "Without --model_dir: the genotype to size.")
flags.DEFINE_integer("batch_size", 256, "Evaluation batch size.")
flags.DEFINE_bool("json", False, "Print the result as one JSON object.")


def _size_only():
    _common.parse_gin()
    num_classes, image_shape = _FAMILY_DEFAULTS[_family()]
    model = training.network(FLAGS.genotype, num_classes)
    return {"genotype": FLAGS.genotype, "params": network_lib.count_parameters(model),
            "multiply_adds": network_lib.count_multiply_adds(model, image_shape),
            "image_shape": list(image_shape), "num_classes": num_classes}


def _bound(name):
    try:
        gin.query_parameter(name)
        return True
    except ValueError:
        return False


# Sizing needs no data: the class count and image size of the family's usual dataset.
_FAMILY_DEFAULTS = {"cifar": (10, (32, 32, 3)), "imagenet": (1000, (224, 224, 3))}


def _family():
    return gin.query_parameter("il_tf.training.network.family") \
        if _bound("il_tf.training.network.family") else "cifar"


def main(argv):
    del argv
    if FLAGS.model_dir is None:
        result = _size_only()
    else:
        config_file = os.path.join(FLAGS.model_dir, "config.gin")
        if not os.path.exists(config_file):
            _common.fail(f"{FLAGS.model_dir} has no config.gin; is it a tools/train.py run "
                         f"directory (written after its first step)?")
        _common.parse_gin(extra_files=[config_file])
        result = training.evaluate(FLAGS.model_dir, FLAGS.checkpoint, FLAGS.batch_size)
    if FLAGS.json:
        print(json.dumps(result))
        return
    lines = []
    if "test_error" in result:
        lines.append(f"checkpoint:     {result['checkpoint']} (epoch {result['epoch']})")
        lines.append(f"test error:     {100 * result['test_error']:.2f}% "
                     f"(accuracy {100 * result['test_accuracy']:.2f}% on "
                     f"{result['num_examples']} images)")
        if "test_top5_error" in result:
            lines.append(f"top-5 error:    {100 * result['test_top5_error']:.2f}%")
    else:
        lines.append(f"genotype:       {result['genotype']} ({result['num_classes']} classes, "
                     f"{'x'.join(map(str, result['image_shape']))} images)")
    lines.append(f"params:         {result['params']:,} ({result['params'] / 1e6:.2f}M, "
                 f"auxiliary head excluded)")
    lines.append(f"multiply-adds:  {result['multiply_adds']:,} per image "
                 f"({result['multiply_adds'] / 1e6:.1f}M)")
    print("\n".join(lines))


if __name__ == "__main__":
    _common.run(main)
