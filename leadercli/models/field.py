"""What the field's medication-recommendation models share (RETAIN, GAMENet, MICRON, logistic regression,
RAREMed; issue 22): the output type, the training interface, and small tensor helpers over the student's batch.

Every model consumes the padded batch of `leadercli.data.batching` (visits left-aligned; the target visit is the
last real one, `visit_mask.sum(1) - 1`, and its `med` row is all PAD: its drugs are the label, never an input)
and answers the same four calls:

    forward(batch) -> FieldOutput      `.logits` (B, M); `.parts` holds what `extra_loss` needs in training
    probs(batch) -> (B, M)             sigmoid of the logits (the scorer interface of the student and baselines)
    extra_loss(output, batch) -> {name: (weight, scalar tensor)}
                                       the model's own training terms, ADDED to the loop's BCE on `.logits`
                                       (the `ExtraLoss` contract of `leadercli.training.loop.fit`); {} if none
    set_epoch(epoch)                   called with the 0-based epoch before each training epoch (GAMENet's
                                       annealed DDI-loss temperature); a no-op elsewhere
    optimizer                          class attribute, the optimizer the authors train with ("adam", "adamw"
                                       or "rmsprop"); `make_optimizer` builds it

A model's paper weighs its loss terms against a BCE weight that is not 1 (GAMENet 0.9, MICRON 0.1875, RAREMed
0.995); the weights returned here are the paper's divided by that BCE weight, so the ratios are the paper's
(Adam is invariant to the overall scale up to its epsilon).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class FieldOutput:
    logits: torch.Tensor  # (B, M)
    parts: dict[str, torch.Tensor] = field(default_factory=dict)  # training intermediates for extra_loss


class FieldModel(nn.Module):
    """Defaults of the shared interface; subclasses set `kind` and implement `forward`."""

    kind = ""
    optimizer = "adam"
    no_history = ""  # how a patient without history (a first visit) is scored, for the manifest and reports

    def probs(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.sigmoid(self(batch).logits)  # (B, M)

    def extra_loss(self, output: FieldOutput, batch: dict[str, torch.Tensor]) -> dict:
        return {}

    def set_epoch(self, epoch: int) -> None:
        return None

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def target_index(visit_mask: torch.Tensor) -> torch.Tensor:
    """(B, V) bool → (B,) index of each patient's target (last real) visit."""
    return (visit_mask.sum(1) - 1).clamp(min=0)


def at_target(x: torch.Tensor, last: torch.Tensor) -> torch.Tensor:
    """x (B, V, ...) → x[b, last[b]] (B, ...)."""
    return x[torch.arange(x.shape[0], device=x.device), last]


def multi_hot(ids: torch.Tensor, offset: int, size: int) -> torch.Tensor:
    """Unified ids (..., S) → multi-hot (..., size) float of the ids in [offset, offset + size); others ignored."""
    idx = ids - offset  # (..., S)
    ok = (idx >= 0) & (idx < size)
    out = torch.zeros(*ids.shape[:-1], size + 1, device=ids.device)  # last column collects the rest
    out.scatter_(-1, torch.where(ok, idx, size), 1.0)
    return out[..., :size]  # (..., size)


def pool_codes(emb: torch.Tensor, ids: torch.Tensor, how: str = "sum") -> torch.Tensor:
    """Code embeddings emb (..., S, d) of ids (..., S) → their sum or mean over the real codes (..., d); an
    empty set pools to zeros."""
    m = (ids > 0).unsqueeze(-1).to(emb.dtype)  # (..., S, 1)
    s = (emb * m).sum(-2)  # (..., d)
    return s / m.sum(-2).clamp(min=1.0) if how == "mean" else s


def margin_loss(probs: torch.Tensor, labels: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """`F.multilabel_margin_loss` on probabilities (the field's habit) with targets from a multi-hot (B, M):
    Σ_{j∈pos, i∉pos} max(0, 1 − (p_j − p_i)) / M per sample."""
    M = labels.shape[1]
    pos = labels > 0  # (B, M)
    order = pos.to(torch.int8).argsort(dim=1, descending=True, stable=True)  # positives first, in index order
    target = torch.where(torch.arange(M, device=labels.device) < pos.sum(1, keepdim=True), order, -1)
    return F.multilabel_margin_loss(probs, target, reduction=reduction)


def ddi_adjacency(pairs, n_labels: int) -> torch.Tensor:
    """DDI pairs (K, 2) of label indices → symmetric 0/1 matrix (M, M) float, zero diagonal."""
    adj = torch.zeros(n_labels, n_labels)
    p = torch.as_tensor(pairs, dtype=torch.int64).reshape(-1, 2)
    p = p[p[:, 0] != p[:, 1]]
    adj[p[:, 0], p[:, 1]] = 1.0
    adj[p[:, 1], p[:, 0]] = 1.0
    return adj


def soft_ddi(probs: torch.Tensor, adj: torch.Tensor) -> torch.Tensor:
    """Per-sample Σ_ij p_i p_j A_ij (B,) (both orders of a pair), the field's differentiable DDI term."""
    return ((probs @ adj) * probs).sum(1)


def predicted_ddi_rate(probs: torch.Tensor, adj: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """Per-sample DDI rate of the drugs with p ≥ threshold (B,): interacting pairs / pairs (0 if < 2 drugs),
    the rule GAMENet and MICRON switch their DDI loss on."""
    y = (probs >= threshold).to(probs.dtype)  # (B, M)
    k = y.sum(1)  # (B,)
    hits = ((y @ adj) * y).sum(1) / 2  # (B,) each pair once
    return hits / (k * (k - 1) / 2).clamp(min=1.0)


def make_optimizer(params, name: str, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """The optimizer a model's authors train with: Adam / RMSprop (weight decay as L2) or AdamW (decoupled);
    foreach kernels (one per step and state tensor, the same arithmetic as the per-parameter loop)."""
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, foreach=True)
    if name == "rmsprop":
        return torch.optim.RMSprop(params, lr=lr, weight_decay=weight_decay, foreach=True)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, foreach=True)
    raise ValueError(f"unknown optimizer {name!r} (adam, adamw, rmsprop)")
