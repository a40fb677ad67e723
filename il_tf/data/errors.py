"""The one error the data layer raises when a dataset cannot be read."""


class DatasetUnavailableError(ValueError):
    """A dataset is neither prepared on disk nor obtainable from here.

    Its `str` is a single line naming the dataset, the directory looked in and how to provide
    the data, so tools can print it instead of a traceback.
    """

    def __init__(self, dataset: str, directory: str, remedy: str, cause: str = ""):
        self.dataset = dataset
        self.directory = directory
        self.remedy = remedy
        self.cause = cause
        because = f" ({cause})" if cause else ""
        self.message = f"{dataset}: no prepared data in {directory}{because}; {remedy}".replace(
            "\n", " "
        )
        super().__init__(self.message)

    def __str__(self) -> str:
        return self.message

    def __init_subclass__(cls, **kwargs):
        # gin re-raises errors from configurables as a subclass whose __str__ appends the
        # configurable's name on new lines; keep the one line that tools print.
        super().__init_subclass__(**kwargs)
        cls.__str__ = DatasetUnavailableError.__str__
