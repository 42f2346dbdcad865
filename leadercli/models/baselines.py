"""Two baselines that make the student's numbers mean something (issue 3):
popularity — the training split's most frequent drugs for everyone; previous — the drugs of the patient's
previous visit, falling back to popularity for first visits. Both score a student batch: `probs(batch)` →
(B, M) in [0, 1], as `StudentModel.probs`. `fit_popularity` is the one popularity fit: the recipe
(`leader train student --model popularity|previous`) and the reports' floor (`report/floor.py`) call it."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch


class PopularityModel(torch.nn.Module):
    kind = "popularity"

    def __init__(self, freq: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("freq", freq.float())  # (M,) share of training target visits with the drug

    def probs(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        B = batch["visit_mask"].shape[0]
        return self.freq.unsqueeze(0).expand(B, -1)  # (B, M)


class PreviousVisitModel(PopularityModel):
    kind = "previous"

    def __init__(self, freq: torch.Tensor, med_offset: int) -> None:
        super().__init__(freq)
        self.med_offset = med_offset

    def probs(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        B, M = batch["visit_mask"].shape[0], self.freq.shape[0]
        n = batch["visit_mask"].sum(1)  # (B,)
        prev_row = (n - 2).clamp(min=0)  # the visit before the target
        prev = batch["med"][torch.arange(B), prev_row]  # (B, Sm) unified ids
        lab = prev - self.med_offset
        ok = (lab >= 0) & (lab < M) & (n >= 2).unsqueeze(1)
        hit = torch.zeros(B, M, device=self.freq.device)
        hit[torch.arange(B).unsqueeze(1).expand_as(lab)[ok], lab[ok]] = 1.0
        # previous drugs rank first (0.5..1], ordered by popularity; the rest keep popularity/2
        return torch.where(hit > 0, 0.5 + 0.5 * self.freq, 0.5 * self.freq)


def fit_popularity(labels: Sequence[Iterable[int]], n_labels: int) -> torch.Tensor:
    """The training samples' target drugs (label indices per sample) → (M,) float32 share of samples whose
    target visit has each drug; zeros without samples."""
    y = torch.zeros(len(labels), n_labels)  # (N, M) multi-hot
    for i, lab in enumerate(labels):
        y[i, list(lab)] = 1.0
    return y.mean(0) if len(labels) else torch.zeros(n_labels)
