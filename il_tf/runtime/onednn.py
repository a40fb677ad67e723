"""Turns on TensorFlow's oneDNN CPU kernels on x86-64 Linux unless the user chose.

TensorFlow 2.21 enables oneDNN by default only on CPUs with AVX-512 VNNI, BF16 or AMX; on
an AVX2-only CPU it falls back to its Eigen kernels. The search step is thousands of small
convolutions, where oneDNN's kernels are much faster: on a 2-core AMD EPYC with AVX2 (C=8,
5 cells, batch 16), a first-order search iteration took 1.08 s with oneDNN against 1.52 s
without, a second-order one 2.92 s against 3.86 s, at the same peak memory; at the paper's
size (C=16, 8 cells, batch 64, second order) 34.9 s against 66.4 s and 2,003 against
2,689 MiB (README, Measurements). Results agree with the Eigen kernels' to float32
rounding; oneDNN's rounding depends on the batch size, which is why the test comparing two
replicas with one pins Eigen (tests/_two_replicas.py).

`TF_ENABLE_ONEDNN_OPTS` in the environment wins (TensorFlow reads it itself, `0` turns
oneDNN off). TensorFlow reads it once per process, when it first needs it; importing il_tf
before TensorFlow, as every il_tf tool does, is always early enough. Elsewhere (other CPUs,
other systems) TensorFlow's own default stays.
"""
import os
import platform
import sys


def enable_by_default() -> None:
    if sys.platform.startswith("linux") and platform.machine() == "x86_64":
        os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
