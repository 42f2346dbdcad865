"""`SelfAttention` in eval mode (fused `scaled_dot_product_attention`, additive −1e9 key mask) equals the
explicit training path (masked_fill(−1e9) → softmax → dropout) when dropout is off."""

from __future__ import annotations

import pytest
import torch

from leadercli.models.student import SelfAttention, StudentConfig, StudentModel


def test_eval_attention_equals_explicit_path():
    torch.manual_seed(0)
    att = SelfAttention(16, 4, attn_dropout=0.0)
    x = torch.randn(6, 5, 16)  # (N, S, d)
    mask = torch.tensor(
        [[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 0, 0, 0, 0], [0, 0, 0, 0, 0]] + [[1, 0, 1, 0, 1]] * 2
    )
    mask = mask.bool()
    explicit = att.train()(x, mask)  # dropout p=0: the explicit path, exactly
    fused = att.eval()(x, mask)
    assert torch.isfinite(fused).all()  # the all-masked row (3) stays finite
    torch.testing.assert_close(fused, explicit, rtol=0, atol=1e-5)
    # all-masked row: uniform attention over the 5 (masked) keys, as masked_fill(-1e9) gives
    v = att.v(x[3]).view(5, 4, 4).mean(0).reshape(16)  # (d,)
    torch.testing.assert_close(fused[3], att.out(v).expand(5, 16), rtol=0, atol=1e-5)


def _config(**kw) -> StudentConfig:
    """A tiny student without dropout (train and eval paths must then give the same logits)."""
    base = dict(vocab_size=30, n_labels=7, med_offset=23, profile_sizes=[3, 4], hidden=16, ff=24)
    return StudentConfig(**base, dropout=0.0, attn_dropout=0.0, **kw)


def test_eval_model_equals_explicit_path():
    torch.manual_seed(0)
    model = StudentModel(_config())
    B, V, S = 5, 3, 4
    ids = torch.randint(0, 30, (B, V, S))  # (B, V, S) some sets all PAD
    batch = {
        "diag": ids,
        "proc": torch.randint(0, 30, (B, V, 2)),
        "med": torch.randint(0, 30, (B, V, 3)),
        "visit_mask": torch.tensor([[1, 1, 1], [1, 0, 0], [1, 1, 0], [1, 0, 0], [1, 1, 1]]).bool(),
        "profile": torch.randint(0, 3, (B, 2)),
    }
    with torch.no_grad():
        explicit = model.train()(batch).logits
        fused = model.eval()(batch).logits
    torch.testing.assert_close(fused, explicit, rtol=0, atol=1e-5)


def test_eval_attention_single_key():
    torch.manual_seed(1)
    att = SelfAttention(8, 2, attn_dropout=0.0)
    x = torch.randn(3, 1, 8)  # (N, 1, d)
    mask = torch.tensor([[True], [False], [True]])
    torch.testing.assert_close(att.eval()(x, mask), att.train()(x, mask), rtol=0, atol=1e-6)


def _batch(g: torch.Generator, B: int, V: int, vocab: int, holes: bool) -> dict[str, torch.Tensor]:
    """Random batch: left-aligned visits (1..V per patient), sets of 0..5 codes (left-aligned, or with PAD
    holes), some sets of one code, some patients with one visit."""
    n_visits = torch.randint(1, V + 1, (B,), generator=g)
    n_visits[: B // 3] = 1
    vmask = torch.arange(V)[None] < n_visits[:, None]  # (B, V)

    def sets(S: int) -> torch.Tensor:
        lens = torch.randint(0, S + 1, (B, V), generator=g)
        lens[: B // 4, :, ...] = 1  # sets of one code
        ids = torch.randint(1, vocab, (B, V, S), generator=g)
        keep = torch.arange(S) < lens[..., None]  # (B, V, S) left-aligned
        if holes:
            keep = keep[..., torch.randperm(S, generator=g)]
        return ids * keep * vmask[..., None]

    return {
        "diag": sets(5),
        "proc": sets(3),
        "med": sets(4),
        "visit_mask": vmask,
        "profile": torch.randint(0, 3, (B, 2), generator=g),
    }


@pytest.mark.parametrize("layers,recency,holes", [(1, 0, False), (1, 0, True), (2, 3, False)])
def test_packed_eval_equals_explicit_path(layers, recency, holes):
    """The packed eval path (`_Packed`: sets end to end, attention per length without mask, sets of one code
    and the last feed-forward pooled) gives the explicit training path's logits, dropout off."""
    torch.manual_seed(0)
    model = StudentModel(_config(layers=layers, recency=recency))
    batch = _batch(torch.Generator().manual_seed(1), 300, 4, 30, holes)
    with torch.no_grad():
        explicit = model.train()(batch).logits
        packed = model.eval()(batch).logits
    torch.testing.assert_close(packed, explicit, rtol=0, atol=1e-5)
