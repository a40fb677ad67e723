"""Gin plumbing shared by every tool: finding gin files, parsing strictly, saving the config.

Library code never reads flags; the tools in `tools/` pass their `--gin_file` and
`--gin_bindings` flags here (dopamine/trax style).
"""
import collections.abc
import contextlib
import inspect
import logging
import os
import pathlib
import typing
from typing import Optional, Sequence

import gin

from il_tf.errors import OneLineError

# gin_configs/ at the repository root (an editable install) or beside the package.
_PACKAGE_DIR = pathlib.Path(__file__).resolve().parent
GIN_CONFIG_DIRS = (_PACKAGE_DIR.parent / "gin_configs", _PACKAGE_DIR / "gin_configs")


class ConfigError(OneLineError, ValueError):
    """A gin file or binding that cannot be used; its message is one line with the fix."""


def find_gin_file(name: str) -> str:
    """Resolves `name`: an existing path, else a file in gin_configs/ (".gin" optional)."""
    candidates = [pathlib.Path(name)]
    for directory in GIN_CONFIG_DIRS:
        candidates += [directory / name, directory / f"{name}.gin"]
    for path in candidates:
        if path.is_file():
            return str(path)
    shipped = sorted(p.relative_to(d).as_posix() for d in GIN_CONFIG_DIRS if d.is_dir()
                     for p in d.rglob("*.gin"))
    raise ConfigError(f"gin file {name!r} not found (looked in the current directory and "
                      f"gin_configs/); shipped configs: {', '.join(shipped) or 'none'}.")


# The directories already added to gin's search path (it appends, duplicates included).
_SEARCHED = set()


class _GinMissFilter(logging.Filter):
    """Drops the lines gin's resource reader logs while it looks for an included file.

    gin tries its search path in order, the working directory first; for each place it
    does not find the file, its Python-package reader logs an INFO line and an ERROR line
    ("Path not found"), though the file is then found in gin_configs/. A file found nowhere
    still fails, with gin's own error naming the places searched.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.pathname.endswith(os.path.join("gin", "resource_reader.py"))
                    and str(record.msg).startswith(("system_path_file_exists:",
                                                    "Path not found:")))


@contextlib.contextmanager
def _gin_misses_unlogged():
    root = logging.getLogger()  # gin logs through the logging module's root logger
    miss_filter = _GinMissFilter()
    root.addFilter(miss_filter)
    try:
        yield
    finally:
        root.removeFilter(miss_filter)


def _one_line(error: Exception) -> str:
    lines = [l.strip() for l in str(error).splitlines() if l.strip()]
    return " ".join(lines[:2]) if lines else type(error).__name__


# Every module that declares gin configurables. A run's config.gin holds the operative values
# of everything its process used (a notebook's search() and then train() write both), so each
# tool parses any il_tf config.gin only when all of them are known.
CONFIGURABLE_MODULES = ("il_tf.learning.search", "il_tf.training")


def parse(gin_files: Optional[Sequence[str]] = (),
          gin_bindings: Optional[Sequence[str]] = ()) -> None:
    """Parses gin files and bindings strictly: an unknown configurable or parameter raises a
    `ConfigError` naming it, before any work starts."""
    for module in CONFIGURABLE_MODULES:
        __import__(module)
    # `include 'cifar10.gin'` resolves from any working directory.
    for directory in GIN_CONFIG_DIRS:
        if directory.is_dir() and directory not in _SEARCHED:
            gin.add_config_file_search_path(str(directory))
            _SEARCHED.add(directory)
    files = [find_gin_file(f) for f in (gin_files or [])]
    try:
        with _gin_misses_unlogged():
            gin.parse_config_files_and_bindings(files, list(gin_bindings or []),
                                                skip_unknown=False, finalize_config=False)
    except (ValueError, KeyError, TypeError, ImportError, SyntaxError) as error:
        raise ConfigError(f"bad gin configuration: {_one_line(error)} (check the spelling of "
                          f"the binding against the shipped gin files and README).") from error


def save_operative_config(model_dir: str) -> str:
    """Writes the operative config (only the values actually used) to model_dir/config.gin."""
    path = os.path.join(model_dir, "config.gin")
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(gin.operative_config_str())
    os.replace(tmp, path)
    return path


def _fits(value, annotation) -> bool:
    origin = typing.get_origin(annotation)
    if annotation is inspect.Parameter.empty or annotation is typing.Any:
        return True
    if origin is typing.Union:
        return any(_fits(value, a) for a in typing.get_args(annotation))
    if annotation is type(None):
        return value is None
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation in (str, bool):
        return isinstance(value, annotation)
    if origin in (list, tuple, collections.abc.Sequence):
        return isinstance(value, (list, tuple))
    return True  # Classes and callables: checked where they are used.


def check_arguments(function, values: dict, name: str) -> None:
    """Raises a one-line `ConfigError` for an argument whose type is not its annotation's.

    `name` is the configurable's gin name (e.g. "il_tf.search"), for the message.

    Gin passes bound values through unchecked, so `il_tf.search.epochs = 'two'` would fail
    deep inside a run; roots check their arguments first.
    """
    signature = inspect.signature(inspect.unwrap(function))
    hints = typing.get_type_hints(inspect.unwrap(function))
    for parameter in signature.parameters.values():
        if parameter.name not in values or parameter.name not in hints:
            continue
        value = values[parameter.name]
        if not _fits(value, hints[parameter.name]):
            expected = getattr(hints[parameter.name], "__name__", None) or str(
                hints[parameter.name]).replace("typing.", "")
            raise ConfigError(f"{name}.{parameter.name} = {value!r} is not a valid value "
                              f"(expected {expected}); fix the gin binding or file.")
