"""Loss terms on hand-made tensors (leader-reference.md §4.3)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from leadercli.models.losses import bce_loss, contrastive_loss, feature_kd_loss


def test_bce_hand():
    logits = torch.tensor([[0.0, math.log(3.0)]])
    labels = torch.tensor([[1.0, 0.0]])
    # BCE(0, 1) = −log σ(0) = ln 2; BCE(ln 3, 0) = −log(1 − 3/4) = ln 4 → mean = 1.5 ln 2
    assert bce_loss(logits, labels).item() == pytest.approx(1.5 * math.log(2.0))


def test_feature_kd_hand():
    s = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    t = torch.tensor([[0.0, 2.0], [3.0, 6.0]])
    # raw: differences 1, 0, 0, −2 → (1 + 0 + 0 + 4) / 4 = 1.25
    assert feature_kd_loss(s, t).item() == pytest.approx(1.25)
    # standardised with mean (1, 4), std (2, 2): t' = [[−0.5, −1], [1, 1]]
    s2 = torch.tensor([[-0.5, 0.0], [1.0, 2.0]])
    # differences 0, 1, 0, 1 → 2 / 4 = 0.5
    out = feature_kd_loss(s2, t, mean=torch.tensor([1.0, 4.0]), std=torch.tensor([2.0, 2.0]))
    assert out.item() == pytest.approx(0.5)
    # std 0 is clamped to 1e-6: a constant teacher dimension equal to its mean standardises to 0, not NaN
    t3 = torch.tensor([[5.0], [5.0]])
    out = feature_kd_loss(
        torch.tensor([[1.0], [-1.0]]), t3, mean=torch.tensor([5.0]), std=torch.tensor([0.0])
    )
    assert out.item() == pytest.approx(1.0)
    with pytest.raises(ValueError):
        feature_kd_loss(s, t, mean=torch.tensor([0.0, 0.0]))


def test_feature_kd_gradient_reaches_student_only():
    s = torch.zeros(2, 3, requires_grad=True)
    t = torch.ones(2, 3, requires_grad=True)
    feature_kd_loss(s, t).backward()
    # d/ds mean((s − t)^2) = 2(s − t)/6 = −1/3
    torch.testing.assert_close(s.grad, torch.full((2, 3), -1 / 3))
    assert t.grad is None


def test_contrastive_hand_identity():
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    # S = I. cl(x, y), column j: pos = e^{1}, neg = Σ_i e^{S_ij} − pos = e^{0} = 1 → −log(e / 1) = −1
    # both directions: −1 + −1 = −2 (the positive is excluded from the denominator, so it can go below 0)
    assert contrastive_loss(x, x.clone()).item() == pytest.approx(-2.0)


def test_contrastive_hand_2x2():
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    y = torch.tensor([[1.0, 0.0], [1.0, 1.0]])  # cosines are scale-free: y_1 ~ (1, 1)/√2
    # S_ij = cos(x_i, y_j): S00 = 1, S01 = r, S10 = 0, S11 = r   (r = 1/√2)
    # cl(x, y), column j (negatives over i ≠ j): j=0: −S00 + S10 = −1; j=1: −S11 + S01 = 0 → mean −0.5
    # cl(y, x) uses Sᵀ, i.e. rows of S: j=0: −S00 + S01 = r − 1; j=1: −S11 + S10 = −r → mean −0.5
    # total −1.0; with τ = 0.5 every log-term doubles → −2.0
    assert contrastive_loss(x, y).item() == pytest.approx(-1.0)
    assert contrastive_loss(x, y, tau=0.5).item() == pytest.approx(-2.0)


def _reference(x: torch.Tensor, y: torch.Tensor, tau: float) -> torch.Tensor:
    """The reference `Contrastive_Loss.compute_cl` in exp form, both directions, mean over the batch."""

    def cl(a, b):
        sim = F.cosine_similarity(a.unsqueeze(1), b.unsqueeze(0), dim=2)
        pos = torch.exp(torch.diag(sim) / tau)
        neg = torch.sum(torch.exp(sim / tau), dim=0) - pos
        return -torch.log(pos / neg)

    return (cl(x, y) + cl(y, x)).mean()


def test_contrastive_matches_reference_formula():
    torch.manual_seed(0)
    x, y = torch.randn(5, 8, dtype=torch.float64), torch.randn(5, 8, dtype=torch.float64)
    for tau in (1.0, 0.3):
        torch.testing.assert_close(contrastive_loss(x, y, tau), _reference(x, y, tau))
        torch.testing.assert_close(contrastive_loss(y, x, tau), contrastive_loss(x, y, tau))


def test_contrastive_batch_of_one_is_zero_with_grad():
    x = torch.randn(1, 4, requires_grad=True)
    y = torch.randn(1, 4, requires_grad=True)
    loss = contrastive_loss(x, y)
    assert loss.item() == 0.0 and loss.dtype == x.dtype
    loss.backward()
    torch.testing.assert_close(x.grad, torch.zeros(1, 4))


def test_contrastive_gradient_is_finite_and_shape_checked():
    x = torch.randn(4, 6, requires_grad=True)
    contrastive_loss(x, torch.randn(4, 6)).backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    with pytest.raises(ValueError):
        contrastive_loss(torch.randn(3, 4), torch.randn(2, 4))
