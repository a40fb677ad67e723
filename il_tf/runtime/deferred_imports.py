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
import copy
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
        for other, sub in list(sys.modules.items()):
            # The package's submodules still deferred hang on the real package now.
            parent, _, child = other.rpartition(".")
            if parent == name and isinstance(sub, _StandIn) and not hasattr(module, child):
                setattr(module, child, sub)
    return module


class _RealPackageFirst(importlib.abc.MetaPathFinder):
    """Imports a deferred package for real before another of its submodules is loaded.

    Otherwise `import matplotlib.ticker` runs ticker.py under the package's stand-in: its
    first read of the package imports the real one, whose `__init__` imports ticker again and
    finds it half-run (an ImportError). This finder, first on `sys.meta_path`, only locates
    the submodule (finders run under Python's global import lock, where importing a package
    could deadlock with another thread's import); its loader (`_AfterPackage`) imports the
    real package first.
    """

    def find_spec(self, name, path=None, target=None):
        parent = sys.modules.get(name.rpartition(".")[0])
        if target is not None or not isinstance(parent, _StandIn):
            return None  # A reload, or not under a stand-in: the usual finders.
        spec = importlib.machinery.PathFinder.find_spec(name, path or parent.__path__)
        if spec is None or spec.loader is None:
            return spec
        wrapped = copy.copy(spec)  # origin, search locations, cached file: as found
        wrapped.loader = _AfterPackage(parent, spec)
        return wrapped


class _AfterPackage(importlib.abc.Loader):
    """Loads a submodule after its deferred package's real import, which may have imported
    the submodule on the way: then that module is the result, not run a second time. Either
    way the module ends with the usual finders' spec and loader."""

    def __init__(self, package: _StandIn, spec):
        self.package = package
        self.spec = spec
        self.imported = None  # (module, its spec) when the package's import made it

    def create_module(self, spec):
        _real(self.package)
        module = sys.modules.get(spec.name)
        if module is not None and not isinstance(module, _StandIn):
            self.imported = (module, module.__spec__)
            return module
        return self.spec.loader.create_module(self.spec)

    def exec_module(self, module):
        if self.imported is not None and module is self.imported[0]:
            module.__spec__ = self.imported[1]  # The import machinery set the wrapper's.
            return
        module.__spec__ = self.spec
        module.__loader__ = self.spec.loader
        self.spec.loader.exec_module(module)


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
