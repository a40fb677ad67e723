"""il_tf: differentiable architecture search with interleaving learning in Keras/TensorFlow.

The public API lives here; see README.md for the pipeline (search -> train -> export).
"""
from il_tf import _quiet

_quiet.import_tensorflow_quietly()

# pylint: disable=g-import-not-at-top,wrong-import-position
from il_tf.version import __version__
