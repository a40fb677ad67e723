"""Input pipelines: tfds datasets, the learners' tasks and the search splits.

    from il_tf.data import tasks
    task = tasks.get_task("cifar10")
    stream = task.dataset("search_train", 64, training=True, seed=0)
"""
from il_tf.data import digits
from il_tf.data import preprocessing
from il_tf.data import sources
from il_tf.data import tasks
from il_tf.data.errors import DatasetUnavailableError
from il_tf.data.sources import tfds_config
from il_tf.data.tasks import DEFAULT_SPLITS
from il_tf.data.tasks import ROLES
from il_tf.data.tasks import Task
from il_tf.data.tasks import distribute_dataset
from il_tf.data.tasks import get_task
from il_tf.data.tasks import register_task
from il_tf.data.tasks import registered_tasks
