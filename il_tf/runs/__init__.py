"""Runs: the one loop that search and retraining drive, and the run directory it owns.

    from il_tf.runs import RunDir, RunLoop, Program

See `loop.py` for the guarantees (exact resume, trustworthy checkpoints, one writer,
one-line errors, signals) and DESIGN.md's "Runs" for the contract every tool keeps.
"""
from il_tf.runs.checkpoints import Keeper
from il_tf.runs.loop import Program
from il_tf.runs.loop import RunLoop
from il_tf.runs.metrics import MetricsLog
from il_tf.runs.metrics import read_metrics
from il_tf.runs.progress import Progress
from il_tf.runs.run_dir import RunDir
from il_tf.runs.run_dir import is_chief
