"""Which ranked drugs a patient is recommended: threshold, then an optional cap on drug–drug interactions.

`select(probs, threshold)` marks every drug with score ≥ threshold. `limit_ddi(probs, selected, ddi, N)`
then drops, patient by patient, the lowest-scored selected drug that takes part in an interacting pair among
the selected drugs, until at most N interacting pairs remain (N = 0: no interacting pair is left). The DDI
pairs are the run's (the artifact's GAMENet/SafeDrug TOP-40 rule), as label-index pairs. Used by
`leader predict --max-ddi-pairs N` and by `leader report` (the accuracy–DDI trade-off).

Greedy by score: the drug dropped first is the one the model is least sure of, so the most confident
recommendations survive; it is not an optimal subset search (that is NP-hard in general), and it never adds
drugs. Everything is vectorised over the batch: at most one drug per patient and iteration is dropped, and
the loop ends when no patient exceeds N (at most M iterations).
"""

from __future__ import annotations

import numpy as np
import torch


def ddi_matrix(pairs: np.ndarray, n_labels: int) -> torch.Tensor:
    """(K, 2) label-index pairs → symmetric (M, M) float32 adjacency with a zero diagonal."""
    a = torch.zeros(n_labels, n_labels)
    if len(pairs):
        p = torch.as_tensor(np.asarray(pairs, dtype=np.int64))
        a[p[:, 0], p[:, 1]] = 1.0
        a[p[:, 1], p[:, 0]] = 1.0
    a.fill_diagonal_(0.0)
    return a


def select(probs: torch.Tensor, threshold: float) -> torch.Tensor:
    """(B, M) probabilities → (B, M) bool: score ≥ threshold."""
    return probs >= threshold


def interacting_pairs(selected: torch.Tensor, adj: torch.Tensor) -> torch.Tensor:
    """(B, M) bool selection, (M, M) adjacency → (B,) number of interacting pairs among the selected drugs."""
    s = selected.float()
    return ((s @ adj) * s).sum(1).div(2).round().long()  # each pair counted from both ends


def limit_ddi(
    probs: torch.Tensor, selected: torch.Tensor, adj: torch.Tensor, max_pairs: int | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Drop lowest-scored interacting drugs until each patient has ≤ `max_pairs` interacting pairs.

    Returns (kept (B, M) bool, dropped (B, M) bool); `max_pairs=None` keeps everything."""
    kept = selected.clone()
    dropped = torch.zeros_like(selected)
    if max_pairs is None or adj.sum() == 0:
        return kept, dropped
    rows = torch.arange(probs.shape[0])
    for _ in range(probs.shape[1]):
        over = interacting_pairs(kept, adj) > max_pairs  # (B,)
        if not bool(over.any()):
            break
        involved = kept & ((kept.float() @ adj) > 0)  # (B, M) selected drugs with a selected partner
        score = torch.where(involved, probs, torch.full_like(probs, float("inf")))
        worst = score.argmin(1)  # (B,)
        r = rows[over]
        kept[r, worst[over]] = False
        dropped[r, worst[over]] = True
    return kept, dropped
