"""Caps glibc's malloc arenas before TensorFlow starts its threads.

glibc gives threads that allocate at the same time arenas of their own (up to 8 per core)
and hands little of a freed arena back to the system. In a search, Grappler optimises the
step's graph in one thread and the graph then runs in others, so the memory the optimiser
frees is not reused by the activations: at the benchmark's small setting (C=8, 5 cells,
batch 16, second order) the peak was 1,483 MiB with glibc's default and 1,343 MiB with one
arena, for no speed difference beyond the machine's noise (README, Measurements).

`IL_TF_MALLOC_ARENAS=N` sets another cap, `0` keeps glibc's default; a `MALLOC_ARENA_MAX`
in the environment wins (glibc reads that one itself). It takes full effect only when il_tf
is imported before TensorFlow; it does nothing off Linux/glibc.
"""
import ctypes
import os
import sys

_M_ARENA_MAX = -8  # <malloc.h>


def _glibc(function: str):
    """The C library's `function`, or None off Linux/glibc."""
    if not sys.platform.startswith("linux"):
        return None
    return getattr(ctypes.CDLL(None), function, None)


def limit_arenas() -> None:
    if not sys.platform.startswith("linux") or "MALLOC_ARENA_MAX" in os.environ:
        return
    value = os.environ.get("IL_TF_MALLOC_ARENAS", "1")
    try:
        arenas = int(value)
    except ValueError:
        raise ValueError(f"IL_TF_MALLOC_ARENAS must be a whole number (0 keeps glibc's "
                         f"default), got {value!r}.") from None
    mallopt = _glibc("mallopt")
    if arenas > 0 and mallopt is not None:
        mallopt(_M_ARENA_MAX, arenas)


def release_free_memory() -> None:
    """Hands the free pages inside glibc's heap back to the system (malloc_trim).

    Called after a large trace is dropped (functions.py, `RuntimeFunction`): the freed
    graph sits in the heap, which the step's large tensors (mmap'd by glibc) cannot reuse,
    so without this it only adds to the peak. Does nothing off Linux/glibc.
    """
    malloc_trim = _glibc("malloc_trim")
    if malloc_trim is not None:
        malloc_trim(0)
