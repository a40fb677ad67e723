"""The errors retraining raises (defined with the others in `il_tf.errors`)."""
from il_tf.errors import CheckpointError  # pylint: disable=unused-import
from il_tf.errors import TrainingDivergedError  # pylint: disable=unused-import
