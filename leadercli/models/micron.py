"""MICRON (Yang et al., "Change Matters: Medication Change Prediction with Recurrent Residual Networks",
IJCAI 2021). Reference code: ycq091044/MICRON `src/models.py::MICRON`, `src/MICRON.py` (training and evaluation).

Per visit t: health representation h_t = Linear([Σ diag embeddings; Σ proc embeddings]) (d, dropout on the code
embeddings); prescription net P = Linear(d → 4d), ReLU, Linear(4d → M). The current visit predicts P(h_t); the
change from the previous visit is the residual P(h_t − h_{t−1}).

Scoring the target visit t, as the authors' evaluation does: the logits start from the first visit of the window,
P(h_0), and add every residual up to the target, P(h_0) + Σ_{k=1..t} P(h_k − h_{k−1}). The authors then update the
previous visit's drug set: a drug is added when p ≥ 0.8 (`add_threshold`) and a previous drug is removed when
p < 0.2 (`remove_threshold`). With one decision threshold for every model, that rule is kept by adding
δ = logit(add) − logit(remove) to the logits of the previous visit's drugs: at threshold `add` a new drug is then
chosen iff p ≥ add and a previous drug kept iff p ≥ remove, exactly the authors' rule; the threshold tuned on
validation moves both together (the authors tune both on validation too).

A patient without history (a first visit) is scored from the current visit's representation alone: logits =
P(h_t), with no previous set and no residual.

Training (authors' `MICRON.py`, their loss weights 0.25 each, the adaptive weights being dead code): for target t
with a previous visit, BCE and margin on P(h_t) (×0.75) and on P(h_{t−1}) against the previous visit's drugs
(×0.25); DDI loss Σ σσᵀ ⊙ A / M when the predicted set's DDI rate exceeds 0.08; reconstruction
Σ (σ(P(h_t)) − σ(P(h_{t−1}) + P(h_t − h_{t−1})))² / M. In training, `.logits` is P(h_t) (the authors' `result`,
what their BCE fits); `extra_loss` gives the other terms divided by the BCE weight 0.25·0.75.

Where it differs from the authors' code, and why:
- Single-visit patients are trained and scored (the authors skip patients with one visit in training and
  evaluation): their loss is the terms on P(h_t) alone (no previous visit, no reconstruction).
- The previous visit's drugs are the known prescription (the protocol's input, as for every model); the authors
  carry their own earlier predictions forward from the second visit on.
- One sample per patient (the target visit) and the shared loop (batches, early stopping on validation PRAUC,
  the authors' RMSprop: `optimizer = "rmsprop"`) instead of one step per patient over all its visits.
- An empty code set sums to zeros; unknown codes have their own embeddings; one table for diagnoses and
  procedures (disjoint ids, equal to the authors' two tables).

Hyper-parameters (`[micron]` in settings, the authors' values): emb_dim 64, dropout 0.5, lr 2e-4, weight_decay
1e-5, target_ddi 0.08, add_threshold 0.8, remove_threshold 0.2, current_weight 0.75, margin_weight 0.05.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from leadercli.config_checks import check_order
from leadercli.models.field import (
    FieldModel,
    FieldOutput,
    at_target,
    margin_loss,
    multi_hot,
    pool_codes,
    predicted_ddi_rate,
    soft_ddi,
    target_index,
)


@dataclass
class MicronConfig:
    med_offset: int  # unified id of drug 0 (ids below it: PAD, UNKs, diagnoses, procedures)
    n_labels: int  # M, drugs
    emb_dim: int = 64  # d: code embeddings and health representation (prescription net hidden 4d)
    dropout: float = 0.5  # dropout on the code embeddings
    target_ddi: float = 0.08  # the DDI loss applies when the predicted set's DDI rate is above this
    add_threshold: float = 0.8  # a drug not in the previous visit is added when p ≥ this
    remove_threshold: float = 0.2  # a drug of the previous visit is removed when p < this
    current_weight: float = 0.75  # share of the current visit in BCE and margin (1 − it: the previous visit)
    margin_weight: float = 0.05  # weight of the multilabel margin loss relative to BCE

    def __post_init__(self) -> None:
        check_order(self.remove_threshold, self.add_threshold, "remove_threshold", "add_threshold")


def _logit(p: float) -> float:
    return math.log(p / (1 - p))


class Micron(FieldModel):
    kind = "micron"
    no_history = "the current visit's representation alone (no previous set, no residual)"
    optimizer = "rmsprop"

    def __init__(self, config: MicronConfig, ddi_adj: torch.Tensor) -> None:
        """ddi_adj (M, M) 0/1: the run's DDI graph (a buffer, saved with the weights)."""
        super().__init__()
        self.config = c = config
        d = c.emb_dim
        self.embed = nn.Embedding(c.med_offset, d, padding_idx=0)
        nn.init.uniform_(self.embed.weight, -0.1, 0.1)  # the authors' init
        self.drop = nn.Dropout(c.dropout)
        self.health = nn.Linear(2 * d, d)
        self.prescription = nn.Sequential(nn.Linear(d, 4 * d), nn.ReLU(), nn.Linear(4 * d, c.n_labels))
        self.keep_bonus = _logit(c.add_threshold) - _logit(c.remove_threshold)  # δ
        self.register_buffer("ddi_adj", ddi_adj.float())  # (M, M)

    def forward(self, batch: dict[str, torch.Tensor]) -> FieldOutput:
        c = self.config
        vmask = batch["visit_mask"].bool()  # (B, V)
        last = target_index(vmask)  # (B,)
        diag = pool_codes(self.drop(self.embed(batch["diag"])), batch["diag"])  # (B, V, d)
        proc = pool_codes(self.drop(self.embed(batch["proc"])), batch["proc"])  # (B, V, d)
        h = self.health(torch.cat([diag, proc], dim=-1))  # (B, V, d)
        has_prev = last > 0  # (B,)
        prev_idx = (last - 1).clamp(min=0)
        h_t, h_prev = at_target(h, last), at_target(h, prev_idx)  # (B, d)
        if self.training:
            current = self.prescription(h_t)  # (B, M)
            previous = self.prescription(h_prev)  # (B, M)
            residual = self.prescription(h_t - h_prev)  # (B, M)
            prev_drugs = multi_hot(at_target(batch["med"], prev_idx), c.med_offset, c.n_labels)  # (B, M)
            parts = {
                "previous": previous,
                "residual": residual,
                "prev_drugs": prev_drugs,
                "has_prev": has_prev,
            }
            return FieldOutput(current, parts)
        # evaluation: P(h_0) + Σ_{k ≤ t} P(h_k − h_{k−1}) over the real visits of the window
        steps = torch.cat([h[:, :1], h[:, 1:] - h[:, :-1]], dim=1)  # (B, V, d)
        pos = torch.arange(vmask.shape[1], device=vmask.device)
        upto = (pos.unsqueeze(0) <= last.unsqueeze(1)).unsqueeze(-1)  # (B, V, 1)
        logits = (self.prescription(steps) * upto).sum(1)  # (B, M)
        prev = multi_hot(at_target(batch["med"], prev_idx), c.med_offset, c.n_labels)  # (B, M)
        return FieldOutput(logits + self.keep_bonus * prev * has_prev.unsqueeze(1))

    def extra_loss(self, output: FieldOutput, batch: dict[str, torch.Tensor]) -> dict:
        c, p = self.config, output.parts
        w_cur, w_prev = c.current_weight, 1.0 - c.current_weight
        prev_w = p["has_prev"].float() * (w_prev / w_cur)  # (B,) relative weight of the previous-visit terms
        probs = torch.sigmoid(output.logits)  # (B, M)
        prev_probs = torch.sigmoid(p["previous"])
        bce_prev = F.binary_cross_entropy_with_logits(p["previous"], p["prev_drugs"], reduction="none").mean(
            1
        )
        margin = margin_loss(probs, batch["labels"], reduction="none") + prev_w * margin_loss(
            prev_probs, p["prev_drugs"], reduction="none"
        )  # (B,)
        with torch.no_grad():
            on = predicted_ddi_rate(probs, self.ddi_adj) > c.target_ddi  # (B,)
        ddi = soft_ddi(probs, self.ddi_adj) / c.n_labels * on  # (B,)
        rec = (probs - torch.sigmoid(p["previous"] + p["residual"])).pow(2).sum(1) / c.n_labels  # (B,)
        rec = rec * p["has_prev"]
        w = 0.25 * w_cur  # the authors' BCE weight on the current visit (λ = 0.25 times 0.75)
        return {
            "bce_prev": (1.0, (prev_w * bce_prev).mean()),
            "margin": (c.margin_weight, margin.mean()),
            "ddi": (0.25 / w, ddi.mean()),
            "rec": (0.25 / w, rec.mean()),
        }
