"""The run directory: created once, held by one process, written by the chief alone.

A run directory is where days of GPU time end up, so it is guarded:

- it is created if missing; a path that exists and is not a directory is refused;
- one process at a time holds it, through an `fcntl` lock on `<run_dir>/.lock` that names
  the holder (pid, host, start time). The kernel drops the lock when its process dies, so a
  lock file left by a killed run is taken over, with a line saying whose it was;
- under MultiWorkerMirroredStrategy only the chief locks and writes; the other workers get
  `is_chief = False` and write nothing into the directory (TF's multi-worker guide).
"""
import datetime
import fcntl
import json
import os
import socket
from typing import Optional

import gin
from absl import logging

from il_tf.errors import RunDirError

LOCK_FILE = ".lock"
CONFIG_FILE = "config.gin"


def is_chief(strategy) -> bool:
    """Whether this process is the one that writes (always, outside a multi-worker cluster)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    task_type = getattr(resolver, "task_type", None)
    if task_type is None or task_type == "chief":
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return task_type == "worker" and resolver.task_id == 0 and not has_chief


class RunDir:
    """A run directory held for the life of a run (use as a context manager).

    Args:
      path: the directory (created if missing).
      chief: False on non-chief workers: nothing is created, locked or written.
    """

    def __init__(self, path: str, chief: bool = True):
        self.path = path
        self.chief = chief
        self._lock_fd: Optional[int] = None

    def join(self, *names: str) -> str:
        return os.path.join(self.path, *names)

    def __enter__(self) -> "RunDir":
        if not self.chief:
            return self
        if os.path.exists(self.path) and not os.path.isdir(self.path):
            raise RunDirError(f"--model_dir {self.path} is a file, not a directory; pass a "
                              f"directory (a new one starts a run, an existing one resumes it).")
        try:
            os.makedirs(self.path, exist_ok=True)
        except OSError as error:
            raise RunDirError(f"cannot create the run directory {self.path} "
                              f"({error.strerror}); pass a writable --model_dir.") from None
        self._lock()
        return self

    def __exit__(self, *exc_info) -> None:
        self.release()

    def _lock(self) -> None:
        path = self.join(LOCK_FILE)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise RunDirError(
                f"{self.path} is in use by another run (pid {holder.get('pid', '?')} on "
                f"{holder.get('host', '?')}, since {holder.get('started', '?')}); wait for it "
                f"to end, stop it, or pass another --model_dir.") from None
        previous = _read_holder(fd)
        if previous.get("pid"):
            logging.warning("%s was held by pid %s on %s, which is no longer running; taking "
                            "it over.", self.path, previous["pid"], previous.get("host", "?"))
        holder = {"pid": os.getpid(), "host": socket.gethostname(),
                  "started": datetime.datetime.now().isoformat(timespec="seconds")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(holder).encode(), 0)
        os.fsync(fd)
        self._lock_fd = fd

    def release(self) -> None:
        """Empties the lock file (a clean exit leaves no holder) and unlocks it."""
        if self._lock_fd is None:
            return
        os.ftruncate(self._lock_fd, 0)
        fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
        os.close(self._lock_fd)
        self._lock_fd = None

    def save_config(self) -> None:
        """Writes gin's operative config (the values actually used) to config.gin."""
        if self.chief:
            write_atomically(self.join(CONFIG_FILE), gin.operative_config_str())


def _read_holder(fd: int) -> dict:
    try:
        return json.loads(os.pread(fd, 4096, 0).decode() or "{}")
    except ValueError:
        return {}


def write_atomically(path: str, text: str) -> None:
    """Writes `text` to `path` so that a kill leaves either the old or the new file."""
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
