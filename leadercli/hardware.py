"""Device, threads and seeds: the hardware settings applied to torch (used by recipes, `predict`, `report`)."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import random
import sys

import numpy as np
import torch

from leadercli import console
from leadercli.errors import SettingsError


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity, e.g. a container's or `taskset`'s limit)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def load_1m() -> float | None:
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def cpu_threads(
    hardware, cores: int | None = None, load: float | None = None, pool: bool = False, small_ops: bool = False
) -> tuple[int, str]:
    """The CPU thread policy → (threads, why); measured in benchmarks/README.md, "CPU threads".

    `hardware.threads` when set. Otherwise it depends only on the machine, never on its load, so that the same
    seed and settings give the same numbers on a quiet and on a busy machine (torch's reductions can differ
    in the last bits between thread counts):
    - `small_ops=True` (the student's training and evaluation: many small ops, whose threads wait for each
      other at every op — 2.5–10× slower with 2 threads than with 1 on a busy 2-core machine, and no faster
      on a quiet one): 1 thread;
    - `pool=True` (`leader predict`'s one-thread workers scoring separate batches) and the teacher (large
      matmuls): every core this process may use (its affinity, not the machine's count torch's default takes).
    `load` is accepted for the record (logged), not used."""
    if hardware.threads:
        return int(hardware.threads), "hardware.threads"
    cores = available_cores() if cores is None else cores
    if small_ops and not pool:
        return 1, "student: one thread (small ops)"
    return cores, f"{cores} available cores"


def apply_threads(hardware, pool: bool = False, small_ops: bool = False) -> int:
    """Set torch's intra-op threads by `cpu_threads` (logged at debug level); returns the thread count.
    (`hardware.onednn` is passed to the models that use it, not set here.)"""
    n, why = cpu_threads(hardware, pool=pool, small_ops=small_ops)
    torch.set_num_threads(n)
    console.log.debug(f"torch threads: {n} ({why})")
    return n


def resolve_device(hardware, small_ops: bool = False) -> torch.device:
    """`hardware.device` (auto/cpu/cuda/mps) → a torch device; torch's CPU threads by `cpu_threads`."""
    apply_threads(hardware, small_ops=small_ops)
    want = hardware.device
    if want == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if want == "cuda" and not torch.cuda.is_available():
        raise SettingsError(
            "hardware.device = cuda but no CUDA device is available", "Set hardware.device = cpu or auto"
        )
    if want == "mps" and not torch.backends.mps.is_available():
        raise SettingsError(
            "hardware.device = mps but MPS is not available", "Set hardware.device = cpu or auto"
        )
    return torch.device(want)


def keep_freed_memory() -> None:
    """For a command's own process only (it changes the allocator for the rest of the process; the CLI calls it
    for predict, train teacher, report and demo): glibc: blocks of up to 64 MiB come from the heap, which grows
    by at least 64 MiB and keeps up to 256 MiB freed (M_MMAP_THRESHOLD, M_TOP_PAD, M_TRIM_THRESHOLD). By default
    batch tensors of a few MiB are mapped and unmapped one by one, and every page of the next batch is faulted
    in and zeroed by the kernel again: about 7 % of predict's CPU time, and 20 % of the teacher's frozen pass
    (19 of 98 CPU-s as system time on 2,398 patients, 2.2 with it; `benchmarks/README.md`). Memory stays
    bounded by the largest batches (+30–60 MiB peak). Numbers do not change. Nothing happens off glibc."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc
        return
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3
    mallopt(M_MMAP_THRESHOLD, 64 << 20)
    mallopt(M_TOP_PAD, 64 << 20)
    mallopt(M_TRIM_THRESHOLD, 256 << 20)
