"""Exports a retrained run as a SavedModel version for TF Serving (see docs/serving.md).

    python tools/export.py --model_dir=runs/c10                    # runs/c10/export/cifar10/1
    python tools/export.py --model_dir=runs/c10 --export_dir=/srv/models --checkpoint=ckpt-5200
    python tools/export.py --model_dir=runs/c10 --version=7 --top_k=3

Restores the latest (or --checkpoint) checkpoint of a tools/train.py run into the network its
config.gin describes and writes `<export_dir>/<model_name>/<version>/`: the next free version
unless --version is given; an existing version is never overwritten, and a failed export
writes nothing. Signatures: `serving_default` (uint8 images) and `serving_bytes` (encoded
JPEG/PNG), both with the evaluation preprocessing inside; metadata in
`assets.extra/il_tf_metadata.json`. --gin_file / --gin_bindings override the run's config
(e.g. another il_tf.data.tfds_config.data_dir).
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common  # pylint: disable=g-import-not-at-top,wrong-import-position

from absl import flags  # pylint: disable=g-import-not-at-top,wrong-import-position

from il_tf import export  # pylint: disable=g-import-not-at-top,wrong-import-position

FLAGS = flags.FLAGS
_common.define_flags(model_dir_required=True)
flags.DEFINE_string("export_dir", None, "The base directory TF Serving watches; the model "
                    "goes to <export_dir>/<model_name>/<version>/ (default: <model_dir>/export).")
flags.DEFINE_integer("version", None, "Version number to write (must not exist); default: "
                     "one more than the highest present.")
flags.DEFINE_string("checkpoint", None, "A checkpoint of --model_dir (e.g. ckpt-120 or a "
                    "path); default: the latest.")
flags.DEFINE_string("model_name", None, "The served model's name (default: the dataset's).")
flags.DEFINE_integer("top_k", 5, "Classes per image in the classes/scores/class_names "
                     "outputs (capped at the number of classes).")


def main(argv):
    del argv
    config_file = os.path.join(FLAGS.model_dir, "config.gin")
    if not os.path.exists(config_file):
        _common.fail(f"{FLAGS.model_dir} has no config.gin; is it a tools/train.py run "
                     f"directory (written after its first step)?")
    _common.parse_gin(extra_files=[config_file])
    path = export.export(FLAGS.model_dir, FLAGS.export_dir, version=FLAGS.version,
                         checkpoint=FLAGS.checkpoint, model_name=FLAGS.model_name,
                         top_k=FLAGS.top_k)
    print(path)


if __name__ == "__main__":
    _common.run(main)
