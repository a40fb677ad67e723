"""il_tf: differentiable architecture search with interleaving learning in Keras/TensorFlow.

The public API lives here; see README.md for the pipeline (search -> train -> export).
"""
# First: the process defaults (malloc arenas, oneDNN, a quiet TensorFlow import) must be set
# before TensorFlow starts; see il_tf/runtime/__init__.py.
from il_tf import runtime  # pylint: disable=unused-import

# pylint: disable=g-import-not-at-top,wrong-import-position
from il_tf.version import __version__
from il_tf.search_space.genotypes import Genotype
from il_tf.search_space.genotypes import GenotypeError
from il_tf.search_space.genotypes import derive_genotype
from il_tf.search_space.genotypes import get_genotype
from il_tf.search_space.ops import PRIMITIVES
from il_tf.models.supernet import Architecture
from il_tf.models.supernet import ClassifierHead
from il_tf.models.supernet import Supernet
from il_tf.models.network import NetworkCIFAR
from il_tf.models.network import NetworkImageNet
from il_tf.models.network import count_multiply_adds
from il_tf.models.network import count_parameters
from il_tf.data import DatasetUnavailableError
from il_tf.data import Task
from il_tf.data import distribute_dataset
from il_tf.data import get_task
