"""Device, threads and seeds: the hardware settings applied to torch (used by recipes, `predict`, `report`)."""

from __future__ import annotations

import os
import random

import numpy as np
import torch

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
    hardware, cores: int | None = None, load: float | None = None, pool: bool = False
) -> tuple[int, str]:
    """The CPU thread policy → (threads, why); measured in benchmarks/README.md, "CPU threads".

    `hardware.threads` when set. Otherwise the cores this process may use (its affinity, not the machine's
    count that torch's default takes), and for work that runs *inside* torch ops (training, `report`, the
    teacher) 1 when the machine is busy — the 1-minute load average at or above those cores: the student's
    many small ops then make its threads wait for each other at every op (10× slower training with 2 threads
    than with 1 on a 2-core machine at load 5). `pool=True` is `leader predict`'s pool of one-thread workers
    scoring separate batches: they never wait for each other, so they keep every core under load too
    (1.7× faster with 2 than with 1 beside a busy loop per core)."""
    if hardware.threads:
        return int(hardware.threads), "hardware.threads"
    cores = available_cores() if cores is None else cores
    load = load_1m() if load is None else load
    if not pool and cores > 1 and load is not None and load >= cores:
        return 1, f"load {load:.1f} >= {cores} cores"
    return cores, f"{cores} available cores" + (f", load {load:.1f}" if load is not None else "")


def apply_threads(hardware, pool: bool = False) -> int:
    """Set torch's intra-op threads by `cpu_threads` (logged at debug level); returns the count."""
    from leadercli import console

    n, why = cpu_threads(hardware, pool=pool)
    torch.set_num_threads(n)
    console.log.debug(f"torch threads: {n} ({why})")
    return n


def resolve_device(hardware) -> torch.device:
    """`hardware.device` (auto/cpu/cuda/mps) → a torch device; torch's CPU threads by `cpu_threads`."""
    apply_threads(hardware)
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
