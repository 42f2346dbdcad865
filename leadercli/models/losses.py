"""Training losses of the LEADER student and its distillation (leader-reference.md §4.3): tensors in, scalar
tensors out.

    L = bce_loss + α · feature_kd_loss(kd_projector(z), teacher feature)
                 + β · contrastive_loss(x_proj(target-medication set), y_proj(profile))
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def bce_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """BCE with logits, mean over B×M (logits, labels (B, M))."""
    return F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))


def feature_kd_loss(
    student_proj: torch.Tensor,
    teacher: torch.Tensor,
    mean: torch.Tensor | None = None,
    std: torch.Tensor | None = None,
) -> torch.Tensor:
    """MSE between the projected student feature and the teacher feature (B, D), mean over B×D.

    With `mean` and `std` (D,) the teacher features are standardised per dimension first,
    (t − mean) / max(std, 1e-6); the reference uses raw features (§4.3, §7.20)."""
    t = teacher.detach().to(student_proj.dtype)  # (B, D)
    if mean is not None or std is not None:
        if mean is None or std is None:
            raise ValueError("standardisation needs both mean and std")
        t = (t - mean.to(t)) / std.to(t).clamp(min=1e-6)  # (B, D)
    return F.mse_loss(student_proj, t)


def _one_way(sim: torch.Tensor, tau: float) -> torch.Tensor:
    """Reference `compute_cl` for S (B, B) with S_ij = cos(x_i, y_j): for each column j,
    −log(exp(S_jj/τ) / Σ_{i≠j} exp(S_ij/τ)) = −S_jj/τ + logsumexp_{i≠j}(S_ij/τ); mean over j."""
    logits = sim / tau  # (B, B)
    eye = torch.eye(len(sim), dtype=torch.bool, device=sim.device)  # (B, B)
    neg = torch.logsumexp(logits.masked_fill(eye, float("-inf")), dim=0)  # (B,) over i ≠ j
    return (neg - logits.diagonal()).mean()


def contrastive_loss(x: torch.Tensor, y: torch.Tensor, tau: float = 1.0) -> torch.Tensor:
    """Symmetric contrastive term of the reference (§4.3) for x, y (B, d): cl(x, y) + cl(y, x), with the
    positive pair EXCLUDED from the denominator (unlike InfoNCE), computed in log space.

    With B == 1 there is no negative: returns 0 (a zero tensor connected to x and y, so backward works)."""
    if x.shape != y.shape or x.dim() != 2:
        raise ValueError(
            f"expected two (B, d) tensors of the same shape, got {tuple(x.shape)}, {tuple(y.shape)}"
        )
    if x.shape[0] < 2:
        return (x.sum() + y.sum()) * 0.0
    sim = F.cosine_similarity(x.unsqueeze(1), y.unsqueeze(0), dim=-1)  # (B, B) S_ij = cos(x_i, y_j)
    return _one_way(sim, tau) + _one_way(sim.T, tau)
