"""Keras's import of matplotlib deferred until something draws.

Keras 3 imports `matplotlib.pyplot` and `matplotlib.patches` (for `keras.visualization`)
whenever matplotlib is installed, in every process that imports it, although a search, a
retraining or an export never calls them: about 0.4 s of each process's start on a 2-core
machine (docs/benchmarks.md). il_tf itself draws with matplotlib's Agg backend only when it
writes pictures.

`defer` puts a stand-in module into `sys.modules` for each name that is installed but not yet
imported. An `import` of the name gets the stand-in without running the module; the first
attribute read on it imports the real module, which from then on is in `sys.modules` and
answers every read made through the stand-in. (Python 3.11's `importlib.util.LazyLoader` is
not enough: the import statement itself reads the module's `__spec__`, which loads it.)

`IL_TF_DEFER_IMPORTS=0` turns this off.
"""
import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
import types

from il_tf.runtime import switches

ENV = "IL_TF_DEFER_IMPORTS"
# Packages first: a submodule's stand-in hangs on its package's stand-in.
# Not IPython (which Keras imports too, when installed): libraries take its presence in
# `sys.modules` as the sign of a notebook (tensorflow_datasets, tqdm).
NAMES = ("matplotlib", "matplotlib.pyplot", "matplotlib.patches")


class _StandIn(types.ModuleType):
    """A module that imports the real one on the first read of an attribute it lacks."""

    def __init__(self, spec):
        super().__init__(spec.name)
        self.__spec__ = spec
        self.__file__ = spec.origin
        if spec.submodule_search_locations is not None:
            self.__path__ = list(spec.submodule_search_locations)

    def __getattr__(self, attr):
        return getattr(_real(self), attr)


def _real(stand_in: _StandIn) -> types.ModuleType:
    """The real module of a stand-in, imported now if it is not yet."""
    name = stand_in.__spec__.name
    module = sys.modules.get(name)
    if module is stand_in or module is None:
        sys.modules.pop(name, None)
        try:
            module = importlib.import_module(name)
        except BaseException:
            sys.modules.setdefault(name, stand_in)
            raise
        parent, _, child = name.rpartition(".")
        if parent and not hasattr(sys.modules[parent], child):
            # The import bound the submodule on the package's stand-in, if the package
            # was one then; `import a.b` followed by `a.b.f()` needs it on the real one.
            setattr(sys.modules[parent], child, module)
    return module


class _RealPackageFirst(importlib.abc.MetaPathFinder):
    """Imports a deferred package for real before another of its submodules is imported.

    Otherwise `import matplotlib.ticker` runs ticker.py under the package's stand-in: its
    first read of the package imports the real one, whose `__init__` imports ticker again and
    finds it half-run (an ImportError). This finder, first on `sys.meta_path`, imports the
    real package instead. Its `__init__` may import the submodule on the way; Python's import
    would then load that module a second time from its spec (modules would hold two
    `ticker`s), so the module's spec is swapped for one whose loader returns the module as it
    is and puts its own spec back.
    """

    def find_spec(self, name, path=None, target=None):
        del path
        parent = sys.modules.get(name.rpartition(".")[0])
        if target is not None or not isinstance(parent, _StandIn):
            return None  # A reload, or not under a stand-in: the usual finders.
        _real(parent)
        module = sys.modules.get(name)
        if module is None or isinstance(module, _StandIn):
            return None  # Not imported on the way: the usual finders import it.
        spec = importlib.machinery.ModuleSpec(name, _Imported(module))
        module.__spec__ = spec  # What the import machinery loads a present module by.
        return spec


class _Imported(importlib.abc.Loader):
    """Loads a module that is already imported: returns it, with its own spec put back."""

    def __init__(self, module: types.ModuleType):
        self.module = module
        self.spec = module.__spec__

    def create_module(self, spec):
        return self.module

    def exec_module(self, module):
        module.__spec__ = self.spec


def _spec(name):
    parent, _, child = name.rpartition(".")
    if not parent:
        return importlib.util.find_spec(name)
    # A submodule's spec without importing its package (find_spec would).
    package = sys.modules.get(parent)
    if not isinstance(package, _StandIn):
        return None
    path = os.path.join(package.__path__[0], child + ".py")
    if not os.path.isfile(path):
        return None
    return importlib.util.spec_from_file_location(name, path)


def defer(names=NAMES) -> None:
    """Puts a stand-in for each installed, not yet imported module of `names` (see above)."""
    if switches.turned_off(ENV):
        return
    for name in names:
        if name in sys.modules:
            continue
        try:
            spec = _spec(name)
        except (ImportError, ValueError):
            spec = None
        if spec is None:
            continue
        stand_in = _StandIn(spec)
        sys.modules[name] = stand_in
        parent, _, child = name.rpartition(".")
        if parent:
            setattr(sys.modules[parent], child, stand_in)
        if not any(isinstance(f, _RealPackageFirst) for f in sys.meta_path):
            sys.meta_path.insert(0, _RealPackageFirst())
