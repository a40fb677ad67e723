"""A persistent cache of `RuntimeFunction` definitions, so that a later process skips tracing.

Tracing the supernet's gradient pass (Keras layers called into a graph, then simplified) is
a fixed cost of every process that searches: a rerun, a resume after a kill, each test, the
demo. A `RuntimeFunction` given a `cache_key` stores its simplified FunctionDef here after
tracing, and a later process with the same key registers the stored definition instead of
tracing. The computation is the same definition, so the results are bit-identical (tests
check a cache-hit run against a traced one).

The key is what the definition depends on: the caller's key (the supernet's configuration and
any trace-time switch of its own), the function's name and input signature, the trace-time
switches of this package, Keras's dtype policy and image layout, the TensorFlow, Keras and
il_tf versions, and a hash of il_tf's source files and of the source files of every class
the caller names (a user's own operations), so that an edited checkout never reuses a stale
definition. What is not in the key must not change the trace: a caller whose function reads
other global state passes it in its key.

Where: `$IL_TF_TRACE_CACHE`, else `$XDG_CACHE_HOME/il_tf/traces` (default
`~/.cache/il_tf/traces`); `IL_TF_TRACE_CACHE=off` turns the cache off. Entries are written
atomically, the newest `MAX_ENTRIES` are kept, and an unreadable entry is traced again and
rewritten: the cache can always be deleted.
"""
import functools
import hashlib
import inspect
import json
import os
import tempfile
from typing import Iterable, Optional, Tuple

from google.protobuf import message
import keras
import tensorflow as tf

from il_tf import version
from il_tf.runtime import internals
from il_tf.runtime import recompute
from il_tf.runtime import switches
from il_tf.runtime import tracing

ENV = "IL_TF_TRACE_CACHE"
MAX_ENTRIES = 64
_FORMAT = 1  # bumped when an entry's layout changes


def directory() -> Optional[str]:
    """The cache directory, or None when the cache is off."""
    path = os.environ.get(ENV)
    if path is not None and (not path.strip() or switches.is_off(path)):
        return None
    if path:
        return path
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "il_tf", "traces")


@functools.lru_cache(maxsize=None)
def _source_hash(paths: Tuple[str, ...]) -> str:
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.encode())
        with open(path, "rb") as f:
            digest.update(f.read())
    return digest.hexdigest()


def _package_sources() -> Tuple[str, ...]:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # il_tf/
    paths = []
    for folder, _, names in os.walk(root):
        paths += [os.path.join(folder, n) for n in names if n.endswith(".py")]
    return tuple(sorted(paths))


def class_sources(classes: Iterable[type]) -> Tuple[str, ...]:
    """The source files defining `classes` (e.g. every layer of a model), for `key`."""
    paths = set()
    for cls in classes:
        try:
            paths.add(os.path.abspath(inspect.getsourcefile(cls)))
        except (TypeError, OSError):  # built-in or compiled: its version is in the key
            continue
    return tuple(sorted(paths))


def _describe(value):
    if isinstance(value, (bool, int, float, str, type(None))):
        return value
    if isinstance(value, (tuple, list)) and all(
            isinstance(v, (bool, int, float, str, type(None))) for v in value):
        return list(value)
    if callable(value) and hasattr(value, "__qualname__"):  # e.g. an activation function
        return f"{getattr(value, '__module__', '')}.{value.__qualname__}"
    return None


def layer_structure(layers: Iterable) -> str:
    """A description of layers for a cache key: each one's class and its public attributes
    of plain types or functions (e.g. an op's stride, kernel size and activation), in
    order. Layer names are left out: they depend on what else the process built."""
    described = []
    for layer in layers:
        cls = type(layer)
        attributes = {}
        for name, value in sorted(vars(layer).items()):
            if name.startswith("_") or name == "name":
                continue
            value = _describe(value)
            if value is not None:
                attributes[name] = value
        described.append([f"{cls.__module__}.{cls.__qualname__}", attributes])
    return json.dumps(described, sort_keys=True, default=str)


def key(caller_key: str, name: str, signature: str, shared: bool,
        sources: Tuple[str, ...] = ()) -> str:
    """The entry's name: a hash of everything the traced definition depends on."""
    parts = {
        "format": _FORMAT, "caller": caller_key, "name": name, "signature": signature,
        "shared": shared, "tf": tf.__version__, "keras": keras.__version__,
        "il_tf": version.__version__, "dtype_policy": keras.config.dtype_policy().name,
        "floatx": keras.config.floatx(), "image_data_format": keras.config.image_data_format(),
        "switches": [tracing.moving_statistics_mode(), recompute.recompute_enabled()],
        "il_tf_sources": _source_hash(_package_sources()),
        "caller_sources": _source_hash(tuple(sorted(set(sources)))),
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:32]


def load(entry: str):
    """(FunctionDef, metadata dict) stored under `entry`, or None (absent or unreadable)."""
    folder = directory()
    if folder is None:
        return None
    path = os.path.join(folder, entry)
    try:
        with open(path + ".json") as f:
            meta = json.load(f)
        with open(path + ".pb", "rb") as f:
            data = f.read()
        if hashlib.sha256(data).hexdigest() != meta.get("sha256"):
            return None
        definition = internals.FunctionDef.FromString(data)
    except (OSError, ValueError, message.DecodeError):
        return None
    try:
        os.utime(path + ".json")  # most recently used: kept longest
    except OSError:
        pass
    return definition, meta


def store(entry: str, definition, meta: dict) -> None:
    """Stores an entry atomically (best effort: a cache that cannot be written is skipped)."""
    folder = directory()
    if folder is None:
        return
    data = definition.SerializeToString(deterministic=True)
    meta = dict(meta, sha256=hashlib.sha256(data).hexdigest())
    try:
        os.makedirs(folder, exist_ok=True)
        # The definition first, its metadata (with the checksum) last: a reader that finds
        # the metadata finds a complete definition or a checksum mismatch.
        for suffix, payload in ((".pb", data), (".json", json.dumps(meta).encode())):
            fd, tmp = tempfile.mkstemp(prefix=".entry-", dir=folder)
            with os.fdopen(fd, "wb") as f:
                f.write(payload)
            os.replace(tmp, os.path.join(folder, entry + suffix))
        _prune(folder)
    except OSError:
        pass


def _prune(folder: str) -> None:
    metas = [os.path.join(folder, n) for n in os.listdir(folder) if n.endswith(".json")]
    if len(metas) <= MAX_ENTRIES:
        return
    metas.sort(key=os.path.getmtime, reverse=True)
    for old in metas[MAX_ENTRIES:]:
        for path in (old, old[:-len(".json")] + ".pb"):
            try:
                os.remove(path)
            except OSError:
                pass
