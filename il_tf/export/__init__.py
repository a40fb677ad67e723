"""Exporting a retrained network as a SavedModel for TF Serving (see docs/serving.md).

    from il_tf import export
    export.export("runs/c10")       # after parsing runs/c10/config.gin -> runs/c10/export/cifar10/1
"""
from il_tf.export.exporter import ExportError
from il_tf.export.exporter import METADATA_FILE
from il_tf.export.exporter import RestoredRun
from il_tf.export.exporter import export
from il_tf.export.exporter import restore
from il_tf.export.exporter import versions
from il_tf.export.serving import BYTES_INPUT
from il_tf.export.serving import BYTES_SIGNATURE
from il_tf.export.serving import IMAGES_INPUT
from il_tf.export.serving import IMAGES_SIGNATURE
from il_tf.export.serving import ServingModule
from il_tf.export.serving import evaluation_transform
