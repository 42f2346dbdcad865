"""The unknown-code shrink of `leader predict` (`predict.unknown_shrink`), kept apart so that it can move into
the run's `Scorer` with one call-site change (`streaming.score_chunks`).

Scores of a visit whose codes the model does not know lean towards the training drug frequencies:
p' = (1 − w)·p + w·prior, w = min(1, λ·u), u = unknown / all codes of the target visit (benchmarks/README.md,
cold start: the student alone falls below the popularity floor on unseen records).
"""

from __future__ import annotations

import torch

# the teacher reads the titles of unknown codes, the baselines read no codes
SHRUNK_KINDS = ("student", "distilled")


class Shrink:
    """The shrink for one scorer: a callable (probs, batch) → probs, the identity where it does not apply."""

    def __init__(self, scorer, lam: float) -> None:
        self.prior = scorer.prior() if lam > 0 and scorer.kind in SHRUNK_KINDS else None
        self.lam = lam

    def __call__(self, probs: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        if self.prior is None:
            return probs
        u = batch["n_unknown"].float() / batch["n_codes"].clamp(min=1).float()  # (B,)
        w = (self.lam * u).clamp(max=1.0).unsqueeze(1)  # (B, 1)
        return (1 - w) * probs + w * self.prior.unsqueeze(0)


def applied(scorer, lam: float) -> float:
    """The λ that the shrink applies to this scorer's scores (0.0 where it does not), for the sidecar."""
    return lam if scorer.kind in SHRUNK_KINDS else 0.0
