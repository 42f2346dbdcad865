"""`SelfAttention` in eval mode (fused `scaled_dot_product_attention`, additive −1e9 key mask) equals the
explicit training path (masked_fill(−1e9) → softmax → dropout) when dropout is off."""

from __future__ import annotations

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


def test_eval_model_equals_explicit_path():
    torch.manual_seed(0)
    cfg = StudentConfig(
        vocab_size=30,
        n_labels=7,
        med_offset=23,
        profile_sizes=[3, 4],
        hidden=16,
        ff=24,
        dropout=0.0,
        attn_dropout=0.0,
    )
    model = StudentModel(cfg)
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
