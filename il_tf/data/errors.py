"""The one error the data layer raises when a dataset cannot be read."""
from il_tf.errors import OneLineError


class DatasetUnavailableError(OneLineError, ValueError):
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
        super().__init__(f"{dataset}: no prepared data in {directory}{because}; {remedy}")
