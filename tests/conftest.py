"""Fixtures shared by the test modules."""
import pytest


@pytest.fixture(scope="session", autouse=True)
def trace_cache(tmp_path_factory):
    """The session's own persistent trace cache (il_tf/runtime/trace_cache.py), for this
    process and the tools it starts: runs of the same configuration after the first load
    the stored passes (the resume tests compare such runs with ones that traced). One
    directory for both pytest-xdist workers (entries are written atomically), so that a
    configuration both use is traced once."""
    import os  # pylint: disable=g-import-not-at-top
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent  # This session's directory above the workers' own.
    path = base / "trace_cache"
    path.mkdir(exist_ok=True)
    os.environ["IL_TF_TRACE_CACHE"] = str(path)
    return str(path)


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


def tiny_supernet(channels: int, layers: int, size: int):
    """A built supernet with seeded weights and alphas drawn away from uniform (0.5 * N(0, 1)),
    so that the softmax's curvature is not a special case."""
    import keras  # pylint: disable=g-import-not-at-top
    import numpy as np  # pylint: disable=g-import-not-at-top
    from il_tf.models import supernet as supernet_lib  # pylint: disable=g-import-not-at-top

    keras.utils.set_random_seed(0)
    model = supernet_lib.Supernet(channels=channels, layers=layers, seed=0, name="supernet")
    supernet_lib.build(model, (size, size, 3))
    rng = np.random.RandomState(0)
    for v in model.architecture_variables:
        v.assign(0.5 * rng.randn(*v.shape).astype(np.float32))
    return model


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """Under pytest-xdist (`--dist loadgroup`, pytest.ini), the tests of a module that share a
    module-scoped fixture (a traced step, a finished run) go to one worker, so that the fixture
    is built once; every other test goes to whichever worker is free. First of the hooks:
    xdist reads the marks in its own `pytest_collection_modifyitems` (run after this one, the
    groups were ignored and both workers built each fixture)."""
    del config
    for item in items:
        info = getattr(item, "_fixtureinfo", None)
        shared = sorted(name for name, defs in (info.name2fixturedefs.items() if info else ())
                        if defs and defs[-1].scope == "module")
        if shared:
            item.add_marker(pytest.mark.xdist_group(item.module.__name__))
