"""The errors il_tf raises for users: each `str` is one line naming the problem and the fix.

Tools print that line instead of a traceback (`tools/_common.run`).
"""


class OneLineError(Exception):
    """An error whose `str` is its one-line message, even when gin re-raises it.

    gin re-raises errors from configurables as a dynamically made subclass whose `__str__`
    appends the configurable's name on new lines; subclasses keep the plain message.
    """

    def __init__(self, message: str):
        self.message = " ".join(str(message).split("\n"))
        super().__init__(self.message)

    def __str__(self) -> str:
        return self.message

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        cls.__str__ = OneLineError.__str__


class CheckpointError(OneLineError, RuntimeError):
    """A checkpoint that is missing, unreadable, or does not fit the model."""


class TrainingDivergedError(OneLineError, RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint was kept."""


class RunDirError(OneLineError, RuntimeError):
    """A run directory that cannot be used: a file, unwritable, or held by another run."""


class RunInterrupted(OneLineError, RuntimeError):
    """SIGINT or SIGTERM stopped a run at a step boundary after saving a checkpoint.

    Attributes:
      signal_number: the signal received; tools exit with 128 + it (130, 143).
    """

    def __init__(self, message: str, signal_number: int):
        super().__init__(message)
        self.signal_number = signal_number


class MetricsError(OneLineError, ValueError):
    """A run's metrics.jsonl that is missing (where required) or corrupt."""


class WorkerLostError(OneLineError, RuntimeError):
    """A multi-worker run lost a peer (it stopped or the network failed)."""
