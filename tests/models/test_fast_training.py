"""Teacher training kernels on CPU (issue 14 item 3): the fast dropout masks (`models/dropout.py`) and the fused
LoRA layer (`models/lora_fused.py`). Masks: the nominal rate, seeded by one draw from torch's generator, the
same on every call with the same seed; the attention path equals the math it replaces; LoRA: the same loss,
gradients and random stream as peft's own layers."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from leadercli.models import dropout as D
from leadercli.models import lora_fused, onednn


def _tiny_bert(p: float = 0.1):
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        max_position_embeddings=64, hidden_dropout_prob=p, attention_probs_dropout_prob=p,
        attn_implementation="sdpa",
    )  # fmt: skip
    return BertModel(cfg, add_pooling_layer=False)


def test_mask_rate_values_and_expectation():
    assert abs(D.drop_rate(0.1) - 0.1) < 1e-5 and abs(D.drop_rate(0.4) - 0.4) < 1e-5
    torch.manual_seed(0)
    k = D.keep_scale((1000, 1000), 0.1)
    assert k.dtype == torch.float32 and k.shape == (1000, 1000)
    values = torch.unique(k)
    assert len(values) == 2 and values[0] == 0.0
    assert values[1].item() == pytest.approx(1 / (1 - D.drop_rate(0.1)), rel=1e-7)
    assert (k == 0).float().mean().item() == pytest.approx(0.1, abs=2e-3)  # 1e6 draws: std 3e-4
    assert k.mean().item() == pytest.approx(1.0, abs=3e-3)


def test_masks_follow_torch_seed_and_take_one_draw():
    torch.manual_seed(7)
    a = D.keep_scale((33, 17), 0.3)
    after = torch.rand(3)
    torch.manual_seed(7)
    b = D.keep_scale((33, 17), 0.3)
    c = D.keep_scale((33, 17), 0.3)  # the next draw: another mask
    assert torch.equal(a, b) and not torch.equal(b, c)
    torch.manual_seed(7)
    torch.randint(0, 2**63 - 1, (1,), dtype=torch.int64)  # what one mask consumes
    assert torch.equal(torch.rand(3), after)  # so a checkpoint's RNG state resumes the same masks


def test_fast_dropout_eval_identity_and_gradient_is_the_mask():
    x = torch.randn(6, 40, requires_grad=True)
    assert D.fast_dropout(x, 0.5, training=False) is x and D.fast_dropout(x, 0.0) is x
    torch.manual_seed(1)
    y = D.fast_dropout(x, 0.5)
    torch.manual_seed(1)
    k = D.keep_scale(x.shape, 0.5)
    torch.testing.assert_close(y, x * k, rtol=0, atol=0)
    y.sum().backward()
    torch.testing.assert_close(x.grad, k, rtol=0, atol=0)


def test_swap_keeps_eval_outputs_and_routes_attention():
    ref, fast = _tiny_bert(), _tiny_bert()
    fast.load_state_dict(ref.state_dict())
    n = D.use_fast_dropout(fast)
    assert n == sum(type(m) is nn.Dropout for m in ref.modules()) == 7  # embeddings + 3 per layer
    assert fast.config._attn_implementation == D.ATTENTION
    ids = torch.tensor([[2, 5, 7, 9, 11, 0], [3, 4, 6, 0, 0, 0]])
    mask = (ids > 0).long()
    ref.eval(), fast.eval()
    with torch.no_grad():
        a = ref(input_ids=ids, attention_mask=mask).last_hidden_state
        b = fast(input_ids=ids, attention_mask=mask).last_hidden_state
    torch.testing.assert_close(b, a, rtol=0, atol=1e-5)
    fast.train()
    torch.manual_seed(0)
    t1 = fast(input_ids=ids, attention_mask=mask).last_hidden_state
    torch.manual_seed(0)
    t2 = fast(input_ids=ids, attention_mask=mask).last_hidden_state
    assert torch.equal(t1, t2) and not torch.allclose(t1, b)


@pytest.mark.parametrize("mask_kind", ["none", "bool", "causal"])
def test_attention_math_path_equals_reference(mask_kind):
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 5, 8) for _ in range(3))
    module = nn.Module()
    module.is_causal = mask_kind == "causal"
    mask = None
    allowed = torch.ones(2, 1, 5, 5, dtype=torch.bool)
    if mask_kind == "bool":
        allowed[1, :, :, 3:] = False  # the second sequence has 3 tokens
        mask = allowed
    if mask_kind == "causal":
        allowed = allowed & torch.ones(5, 5, dtype=torch.bool).tril()
    torch.manual_seed(11)
    out, _ = D.attention(module, q, k, v, mask, dropout=0.25, scaling=0.3)
    torch.manual_seed(11)
    keep = D.keep_scale((2, 3, 5, 5), 0.25)
    scores = (q @ k.transpose(-1, -2) * 0.3).masked_fill(~allowed, float("-inf"))
    expect = ((torch.softmax(scores, -1) * keep) @ v).transpose(1, 2)
    torch.testing.assert_close(out, expect, rtol=1e-5, atol=1e-6)
    # no dropout: transformers' SDPA itself
    plain, _ = D.attention(module, q, k, v, mask, dropout=0.0, scaling=0.3)
    torch.testing.assert_close(plain, (torch.softmax(scores, -1) @ v).transpose(1, 2), rtol=1e-5, atol=1e-6)


def _lora_bert(fast: bool):
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(
        _tiny_bert(0.0),
        LoraConfig(r=4, lora_alpha=8, lora_dropout=0.2, target_modules=["query", "value", "dense"]),
    )
    for m in model.modules():  # B starts at zero; give the adapters something to carry
        if hasattr(m, "lora_B"):
            nn.init.normal_(m.lora_B["default"].weight, std=0.1)
    onednn.use_for_frozen(model)
    if fast:
        D.use_fast_dropout(model)
    return model


@pytest.mark.skipif(not onednn.available(), reason="oneDNN linear not available in this build")
@pytest.mark.parametrize("fast", [False, True])
def test_fused_lora_equals_peft(fast):
    model = _lora_bert(fast)
    ids = torch.tensor([[2, 5, 7, 9, 11, 13, 0], [3, 4, 6, 8, 0, 0, 0]])
    mask = (ids > 0).long()
    model.train()

    def step(fused: bool):
        model.zero_grad()
        torch.manual_seed(5)
        loss = model(input_ids=ids, attention_mask=mask).last_hidden_state.square().mean()
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
        return loss.item(), grads, torch.rand(2)

    loss0, g0, r0 = step(False)
    assert lora_fused.use_for_lora(model) == 2 * 5  # query, value and the three dense layers, per layer
    assert lora_fused.use_for_lora(model) == 0  # routed once
    loss1, g1, r1 = step(True)
    assert torch.equal(r0, r1)  # the same random stream: the masks were drawn as peft's modules draw them
    assert loss1 == pytest.approx(loss0, rel=1e-6)
    assert set(g1) == set(g0) and len(g0) == 20
    for name in g0:
        torch.testing.assert_close(g1[name], g0[name], rtol=1e-4, atol=1e-6, msg=name)
    model.eval()  # inference: oneDNN as well, peft's numbers to float rounding
    with torch.no_grad():
        a = model(input_ids=ids, attention_mask=mask).last_hidden_state
        routed = [m for m in model.modules() if "_peft_forward" in m.__dict__]
        for m in routed:
            m.forward, m.__dict__["_fused"] = m._peft_forward, m.forward
        b = model(input_ids=ids, attention_mask=mask).last_hidden_state
        for m in routed:
            m.forward = m.__dict__.pop("_fused")
        for m in routed:  # B = 0: the adapter is skipped, exactly the base model
            nn.init.zeros_(m.lora_B["default"].weight)
        c = model(input_ids=ids, attention_mask=mask).last_hidden_state
        with model.disable_adapter():
            base = model(input_ids=ids, attention_mask=mask).last_hidden_state
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(a, base, atol=1e-3) and torch.equal(c, base)


@pytest.mark.skipif(not onednn.available(), reason="oneDNN linear not available in this build")
def test_transposed_weight_is_rebuilt_when_the_weight_changes():
    lin = nn.Linear(6, 4).requires_grad_(False)
    t1 = onednn.transposed(lin)
    assert onednn.transposed(lin) is t1 and torch.equal(t1, lin.weight.t())
    with torch.no_grad():
        lin.weight.mul_(2.0)
    t2 = onednn.transposed(lin)
    assert t2 is not t1 and torch.equal(t2, lin.weight.t())
