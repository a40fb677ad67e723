"""Fixtures shared by the test modules."""
import pytest


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    """A tfds data_dir with the shipped digits (sklearn_digits) built from scratch, offline,
    once per test session."""
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    import il_tf  # pylint: disable=g-import-not-at-top,unused-import  # quiet TF import
    from il_tf.data import tasks  # pylint: disable=g-import-not-at-top

    path = str(tmp_path_factory.mktemp("tfds"))
    tfds.display_progress_bar(False)
    tasks.digits_task(data_dir=path).prepare()
    return path
