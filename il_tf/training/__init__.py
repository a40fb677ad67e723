"""Retraining a derived network from scratch and evaluating it (the DARTS protocol).

    from il_tf import training
    training.train("runs/x", "DARTS_V2")      # gin-configured: task, network, schedule
    training.evaluate("runs/x")               # after parsing runs/x/config.gin
"""
from il_tf.errors import CheckpointError
from il_tf.errors import TrainingDivergedError
from il_tf.runs.checkpoints import read as read_checkpoint
from il_tf.runs.checkpoints import resolve as resolve_checkpoint
from il_tf.runs.metrics import read_metrics
from il_tf.training.loop import Trainer
from il_tf.training.loop import evaluate
from il_tf.training.loop import learning_rate_at
from il_tf.training.loop import network
from il_tf.training.loop import train
from il_tf.optimizers import DynamicLossScale
from il_tf.optimizers import TorchSGD
