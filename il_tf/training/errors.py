"""The errors retraining raises for tools to print as one line."""


class _OneLineError(RuntimeError):
    """An error whose `str` is its one-line message, even when gin re-raises it.

    gin re-raises errors from configurables as a subclass whose `__str__` appends the
    configurable's name on new lines; the tools print only the message.
    """

    def __init__(self, message: str):
        self.message = " ".join(message.split("\n"))
        super().__init__(self.message)

    def __str__(self) -> str:
        return self.message

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        for base in cls.__mro__[1:]:
            if "__str__" in vars(base) and issubclass(base, _OneLineError):
                cls.__str__ = base.__str__
                break


class CheckpointError(_OneLineError):
    """A checkpoint that is missing, unreadable, or does not fit the model."""


class TrainingDivergedError(_OneLineError):
    """The loss became NaN or infinite; the last good checkpoint was kept."""
