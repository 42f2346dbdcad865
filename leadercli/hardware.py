"""Device, threads and seeds: the hardware settings applied to torch (used by recipes, `predict`, `report`)."""

from __future__ import annotations

import random

import numpy as np
import torch

from leadercli.errors import SettingsError


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resolve_device(hardware) -> torch.device:
    """`hardware.device` (auto/cpu/cuda/mps) → a torch device; `hardware.threads` sets torch's thread count."""
    if hardware.threads:
        torch.set_num_threads(hardware.threads)
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
