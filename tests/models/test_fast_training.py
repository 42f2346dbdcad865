"""Training kernels on CPU. The student (issue 21): torch's dropout masks drawn ahead, the packed training forward.
The teacher (issue 14 item 3): the fast dropout masks (`models/dropout.py`) and the fused
LoRA layer (`models/lora_fused.py`). Masks: the nominal rate, seeded by one draw from torch's generator, the
same on every call with the same seed; the attention path equals the math it replaces; LoRA: the same loss,
gradients and random stream as peft's own layers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

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


# -- the student's training on CPU (issue 21): torch's masks drawn ahead, the packed training forward ----------
def _student_batch(g: torch.Generator, B: int, V: int, history: bool = True) -> dict[str, torch.Tensor]:
    """Random padded batch (the `data/batching.py` layout): left-aligned visits and codes, some single-visit
    patients, some empty sets; `history=False`: nobody has a second visit (no medication history)."""
    n_visits = torch.randint(1, V + 1, (B,), generator=g) if history else torch.ones(B, dtype=torch.int64)
    n_visits[: B // 3] = 1
    vmask = torch.arange(V)[None] < n_visits[:, None]  # (B, V)

    def sets(S: int, lo: int, hi: int, target_empty: bool = False) -> torch.Tensor:
        lens = torch.randint(0, S + 1, (B, V), generator=g)
        ids = torch.randint(lo, hi, (B, V, S), generator=g) * (torch.arange(S) < lens[..., None])
        ids = ids * vmask[..., None]
        if target_empty:  # the target visit's drugs are the label, never an input
            ids[torch.arange(B), n_visits - 1] = 0
        return ids

    return {
        "diag": sets(6, 4, 20),
        "proc": sets(3, 20, 26),
        "med": sets(4, 26, 32, target_empty=True),
        "visit_mask": vmask,
        "profile": torch.randint(0, 3, (B, 2), generator=g),
        "target_meds": torch.randint(26, 32, (B, 3), generator=g),
        "labels": (torch.rand(B, 6, generator=g) > 0.5).float(),
    }


def _student(**kw):
    from leadercli.models.student import StudentConfig, StudentModel

    torch.manual_seed(0)
    base = dict(vocab_size=32, n_labels=6, med_offset=26, profile_sizes=[3, 3], hidden=16, heads=2, ff=20)
    return StudentModel(StudentConfig(**{**base, **kw})).train()


def test_torch_stream_draws_torchs_masks_and_state():
    from leadercli.models.torch_masks import TorchStream, available

    if not available():
        pytest.skip("torch's CPU masks are not the default kernel's here (MKL's on Intel)")
    for seed, skip in ((0, 0), (3, 623), (42, 1000)):
        torch.manual_seed(seed)
        torch.rand(skip)  # a state anywhere in the generator's block of 624 words
        start = torch.get_rng_state()
        xs = [torch.randn(13, 4, 7, 7), torch.randn(13, 7, 16), torch.randn(2000)]
        torch.set_rng_state(start)
        want = [F.dropout(x, p, True) for x, p in zip(xs, (0.1, 0.4, 0.4), strict=True)]
        after = torch.get_rng_state()
        stream = TorchStream(start)
        got = [x * stream.noise(tuple(x.shape), p) for x, p in zip(xs, (0.1, 0.4, 0.4), strict=True)]
        assert all(torch.equal(a, b) for a, b in zip(want, got, strict=True))
        assert torch.equal(stream.torch_state(), after)  # checkpoints see the state torch would have


@pytest.mark.parametrize(
    "kw,history", [({}, True), ({"recency": 3}, True), ({"layers": 2, "recency": 3}, True), ({}, False)]
)
def test_packed_training_forward_equals_reference(kw, history):
    """`student_train.prepare` + the packed forward: the reference's forward values (same masks; to float
    rounding: MKL's small-row kernels), and torch's generator exactly where the reference leaves it."""
    from leadercli.models import student_train
    from leadercli.models.torch_masks import MaskTape, TorchStream, available

    if not available():
        pytest.skip("torch's CPU masks are not the default kernel's here")
    model = _student(**kw)
    g = torch.Generator().manual_seed(1)
    batches = [_student_batch(g, 9, 4, history) for _ in range(4)]
    torch.manual_seed(5)
    start = torch.get_rng_state()
    want = [model(b) for b in batches]
    after = torch.get_rng_state()
    stream, tape = TorchStream(start), MaskTape()
    tape.install(model)
    for b, w in zip(batches, want, strict=True):
        b = dict(b)
        tape.load(student_train.prepare(model, b, stream))
        assert student_train.PACKED in b
        got = model(b)
        assert not tape.masks
        for name in ("logits", "z", "profile"):
            torch.testing.assert_close(getattr(got, name), getattr(w, name), rtol=1e-6, atol=1e-6, msg=name)
    assert torch.equal(stream.torch_state(), after)


def test_reference_masks_fallback_and_alignment(monkeypatch):
    """Batches with more sets than `SET_CHUNK` keep the reference forward with its own masks in order (the
    plan); the alignment's `encode_med_set` after the forward takes its masks from the tape."""
    from leadercli.models import student_train
    from leadercli.models.student import StudentModel
    from leadercli.models.torch_masks import MaskTape, TorchStream, available

    if not available():
        pytest.skip("torch's CPU masks are not the default kernel's here")
    model = _student()
    b = _student_batch(torch.Generator().manual_seed(2), 12, 3)
    tape = MaskTape()
    tape.install(model)
    for chunk in (4, StudentModel.SET_CHUNK):  # 4: every kind has more sets, the reference runs
        monkeypatch.setattr(StudentModel, "SET_CHUNK", chunk)
        monkeypatch.setattr("leadercli.models.student.SET_CHUNK", chunk)
        torch.manual_seed(9)
        start = torch.get_rng_state()
        out = model(b)
        want = (out.logits, model.encode_med_set(b["target_meds"]))
        after = torch.get_rng_state()
        stream = TorchStream(start)
        packed = dict(b)
        tape.load(student_train.prepare(model, packed, stream, align=True))
        assert (student_train.PACKED in packed) == (chunk > 4)
        got = (model(packed).logits, model.encode_med_set(b["target_meds"]))
        assert not tape.masks and torch.equal(stream.torch_state(), after)
        for x, y in zip(got, want, strict=True):
            torch.testing.assert_close(x, y, rtol=1e-6, atol=1e-6)


def test_packed_training_gradients_match_reference():
    """The weight gradients sum the same terms in another order: equal to float rounding."""
    from leadercli.models import student_train
    from leadercli.models.losses import bce_loss
    from leadercli.models.torch_masks import TorchStream, available

    if not available():
        pytest.skip("torch's CPU masks are not the default kernel's here")
    b = _student_batch(torch.Generator().manual_seed(3), 10, 4)
    ref, fast = _student(recency=3), _student(recency=3)
    torch.manual_seed(4)
    start = torch.get_rng_state()
    bce_loss(ref(b).logits, b["labels"]).backward()
    packed = dict(b)
    student_train.prepare(fast, packed, TorchStream(start))
    bce_loss(fast(packed).logits, b["labels"]).backward()
    for (name, p), q in zip(ref.named_parameters(), fast.parameters(), strict=True):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-5, atol=1e-7, msg=name)


def test_epoch_batches_are_the_loops_batches_and_hand_back_the_generator():
    """The batch thread builds the batches `batches` would, in the epoch's order, and torch's generator ends
    where the steps' own draws would leave it."""
    from leadercli.data.batching import Encoded, batches, collate
    from leadercli.models.torch_masks import available
    from leadercli.training.batches import EpochBatches

    enc = [Encoded([[5 + i % 3], [7]], [[21]], [[27], []], [1, 2], [i % 6], 2, i, 100 + i) for i in range(23)]
    col = lambda b: collate(b, 6, 26)  # noqa: E731
    order = np.random.default_rng(0).permutation(len(enc))
    want = list(batches(enc, 5, col, order))
    torch.manual_seed(1)
    got = EpochBatches(enc, 5, col, order)
    pairs = list(zip(got, want, strict=True))
    assert all(m == [] and all(torch.equal(b[k], w[k]) for k in w) for (b, m), w in pairs)
    if not available():
        return
    torch.manual_seed(1)
    ahead = lambda b, stream: [stream.noise((len(b["labels"]), 3), 0.5)]  # noqa: E731
    eb = EpochBatches(enc, 5, col, order, ahead)
    masks = [m[0] for _, m in eb]
    eb.finish()
    after = torch.get_rng_state()
    torch.manual_seed(1)
    ones = [F.dropout(torch.ones(len(w["labels"]), 3), 0.5, True) for w in want]
    assert all(torch.equal(a, b) for a, b in zip(masks, ones, strict=True))
    assert torch.equal(after, torch.get_rng_state())
