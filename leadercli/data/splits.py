"""Patient-level train/val/test split and the optional patient sample (reference §1.8 and §1.4).

Sizes follow the reference: with N patients, train = int(r_train·N), val = int(r_val·N), test = the rest.
`random` (default): the patients, sorted by subject id, are shuffled with `numpy.random.default_rng(seed)`;
`sequential`: ascending subject id, the reference's unshuffled rule. The sample (the reference keeps 15 % of
MIMIC-IV patients, seed 42) draws round(fraction·N) patients (at least 1) without replacement from its own
seeded generator, before the split. Same seed and patients → same split on every machine.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import polars as pl

from leadercli.data.artifact import SPLITS

_SAMPLE_STREAM, _SPLIT_STREAM = 1, 2  # independent generator streams derived from the one seed


def sample_patients(subject_ids: Sequence[int], fraction: float | None, seed: int) -> list[int]:
    """A seeded sample of `fraction` of the patients (sorted); all of them when fraction is None or 1."""
    ids = sorted(int(s) for s in subject_ids)
    if fraction is None or fraction >= 1 or not ids:
        return ids
    k = max(1, round(fraction * len(ids)))
    rng = np.random.default_rng([seed, _SAMPLE_STREAM])
    chosen = rng.choice(len(ids), size=k, replace=False)
    return sorted(ids[i] for i in chosen)


def split_sizes(n: int, ratios: Sequence[float]) -> tuple[int, int, int]:
    n_train = int(ratios[0] * n + 1e-9)
    n_val = int(ratios[1] * n + 1e-9)
    return n_train, n_val, n - n_train - n_val


def split_patients(
    subject_ids: Sequence[int],
    ratios: Sequence[float] = (0.8, 0.1, 0.1),
    mode: str = "random",
    seed: int = 42,
) -> pl.DataFrame:
    """(subject_id i64, split str) for every patient, sorted by subject_id."""
    ids = np.asarray(sorted(int(s) for s in subject_ids), dtype=np.int64)
    if mode == "random":
        ids = ids[np.random.default_rng([seed, _SPLIT_STREAM]).permutation(len(ids))]
    elif mode != "sequential":
        raise ValueError(f"unknown split mode {mode!r}")
    n_train, n_val, _ = split_sizes(len(ids), ratios)
    labels = np.empty(len(ids), dtype=object)
    labels[:n_train] = SPLITS[0]
    labels[n_train : n_train + n_val] = SPLITS[1]
    labels[n_train + n_val :] = SPLITS[2]
    df = pl.DataFrame(
        {"subject_id": ids, "split": labels.tolist()}, schema={"subject_id": pl.Int64, "split": pl.String}
    )
    return df.sort("subject_id")
