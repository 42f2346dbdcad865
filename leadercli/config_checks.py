"""Model-config rules, one home each: the settings check them when leader.toml is read (before any work), the
model configs when a model is built or a run is loaded. No torch: the settings import this module.
"""

from __future__ import annotations


def check_heads(width: int, heads: int, width_name: str = "hidden", heads_name: str = "heads") -> None:
    """Multi-head attention splits a `width`-wide state into `heads` equal parts: ValueError unless it can."""
    if heads < 1 or width % heads:
        raise ValueError(f"{width_name} {width} is not divisible by {heads_name} {heads}")


def check_order(low: float, high: float, low_name: str, high_name: str) -> None:
    """Two thresholds where `low` must not exceed `high` (MICRON's remove and add thresholds): ValueError."""
    if low > high:
        raise ValueError(f"{low_name} {low} is above {high_name} {high}")
