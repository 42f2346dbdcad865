"""The LEADER student: shapes, masking, the no-leak rule, profile use, gradients, learning, determinism."""

from __future__ import annotations

import pytest
import torch

from leadercli.models.losses import bce_loss
from leadercli.models.student import DistillHeads, StudentConfig, StudentModel

# unified ids: 0 PAD, 1..15 diagnoses, 16..23 procedures, 24..29 medications (label i = 24 + i)
CFG = dict(
    vocab_size=30, n_labels=6, med_offset=24, profile_sizes=[3, 4], hidden=16, heads=2, ff=20, head_hidden=12
)


def make(seed: int = 0, **kw) -> StudentModel:
    torch.manual_seed(seed)
    return StudentModel(StudentConfig(**{**CFG, **kw}))


def collate(samples: list[dict], V: int | None = None, S: int | None = None) -> dict[str, torch.Tensor]:
    """samples: {"diag": [[ids] per visit], "proc": ..., "med": ..., "profile": [..], "target": [labels]}.
    V, S: optional minimum padded sizes (extra PAD visits / PAD codes)."""
    B = len(samples)
    V = max([len(s["diag"]) for s in samples] + [V or 0])
    out = {}
    for key in ("diag", "proc", "med"):
        width = max([len(c) for s in samples for c in s[key]] + [S or 0, 1])
        t = torch.zeros(B, V, width, dtype=torch.int64)
        for b, s in enumerate(samples):
            for v, codes in enumerate(s[key]):
                t[b, v, : len(codes)] = torch.tensor(codes, dtype=torch.int64)
        out[key] = t
    out["visit_mask"] = torch.zeros(B, V, dtype=torch.bool)
    for b, s in enumerate(samples):
        out["visit_mask"][b, : len(s["diag"])] = True
    out["profile"] = torch.tensor([s["profile"] for s in samples], dtype=torch.int64)
    St = max(max(len(s["target"]) for s in samples), 1)
    out["target_meds"] = torch.zeros(B, St, dtype=torch.int64)
    out["labels"] = torch.zeros(B, CFG["n_labels"])
    for b, s in enumerate(samples):
        out["target_meds"][b, : len(s["target"])] = torch.tensor(s["target"], dtype=torch.int64) + 24
        out["labels"][b, s["target"]] = 1.0
    return out


# two history visits + target; the target's med row is empty (contract)
A = dict(
    diag=[[1, 2], [3], [4, 5, 6]],
    proc=[[16], [], [17, 18]],
    med=[[24, 25], [26], []],
    profile=[1, 2],
    target=[0, 3],
)
LONG = dict(
    diag=[[7]] * 5,
    proc=[[19, 20, 21, 22]] * 5,
    med=[[27, 28, 29, 24, 25]] * 4 + [[]],
    profile=[2, 3],
    target=[1],
)
SINGLE = {"diag": [[8, 9]], "proc": [[23]], "med": [[]], "profile": [0, 1], "target": [2]}


def logits(model: StudentModel, batch: dict) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(batch).logits


def test_shapes():
    model = make()
    out = model(collate([A, LONG, SINGLE]))
    assert out.logits.shape == (3, 6)
    assert out.z.shape == (3, 12)
    assert out.profile.shape == (3, 16)
    assert model.encode_med_set(torch.tensor([[24, 25, 0], [0, 0, 0]])).shape == (2, 16)


def test_num_parameters_hand_count():
    # d 16, ff 20: block = 2 LN 2·(2·16) 64 + QKV 3·256 768 + out 256+16 272 + w1 16·20+20 340
    #   + w2 20·16+16 336 = 1780; 4 blocks (diag, proc, med, visit) = 7120
    # embedding 30·16 = 480; profile (3+4)·16 + Linear(32→16) 32·16+16 = 112 + 528 = 640
    # head 48·12+12 = 588, 12·6+6 = 78 → total 7120 + 480 + 640 + 588 + 78 = 8906
    assert make().num_parameters() == 8906


def test_padding_invariance():
    model = make()
    alone = logits(model, collate([A]))
    padded = logits(model, collate([A], V=7, S=9))  # extra PAD visits and PAD codes
    batched = logits(model, collate([LONG, A, SINGLE]))[1:2]  # batched with a longer sample
    torch.testing.assert_close(padded, alone, atol=1e-6, rtol=0)
    torch.testing.assert_close(batched, alone, atol=1e-6, rtol=0)
    single = logits(model, collate([SINGLE]))
    torch.testing.assert_close(logits(model, collate([A, SINGLE], V=6, S=4))[1:], single, atol=1e-6, rtol=0)


def test_target_meds_never_leak():
    model = make()
    base = collate([A, SINGLE], V=5)
    ref = logits(model, base)
    leaky = {k: v.clone() for k, v in base.items()}
    leaky["med"][0, 2, :2] = torch.tensor([24, 27])  # the target visit's own drugs placed in its med row
    leaky["med"][1, 0, :1] = torch.tensor([26])
    leaky["target_meds"] = torch.randint(24, 30, leaky["target_meds"].shape)
    leaky["labels"] = 1 - leaky["labels"]
    torch.testing.assert_close(logits(model, leaky), ref, atol=0, rtol=0)
    # target at the last padded position: its med row is shifted out entirely
    full = collate([LONG])
    full_leak = {k: v.clone() for k, v in full.items()}
    full_leak["med"][0, -1, :3] = torch.tensor([25, 26, 29])
    torch.testing.assert_close(logits(model, full_leak), logits(model, full), atol=0, rtol=0)
    # a history visit's medications DO matter
    hist = {k: v.clone() for k, v in base.items()}
    hist["med"][0, 1, 0] = 29
    assert not torch.allclose(logits(model, hist)[0], ref[0])


def test_single_visit_depends_on_profile():
    model = make()
    one = collate([SINGLE])
    other = {k: v.clone() for k, v in one.items()}
    other["profile"] = torch.tensor([[2, 3]])
    assert (logits(model, other) - logits(model, one)).abs().max() > 1e-4


def test_empty_sets_are_finite():
    model = make()
    batch = collate([{"diag": [[]], "proc": [[]], "med": [[]], "profile": [0, 0], "target": [0]}])
    out = model(batch)
    assert torch.isfinite(out.logits).all()
    torch.testing.assert_close(model.encode_med_set(torch.zeros(1, 3, dtype=torch.int64)), torch.zeros(1, 16))


def test_encode_med_set_padding_invariance():
    model = make().eval()
    with torch.no_grad():
        a = model.encode_med_set(torch.tensor([[24, 27]]))
        b = model.encode_med_set(torch.tensor([[24, 27, 0, 0, 0], [25, 26, 28, 29, 24]]))[:1]
    torch.testing.assert_close(b, a, atol=1e-6, rtol=0)


def test_gradient_flows_to_every_parameter():
    model = make()
    model.train()
    batch = collate([A, LONG, SINGLE])
    bce_loss(model(batch).logits, batch["labels"]).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        if not name.startswith(("embed", "profile_enc.embeds")):  # lookups see only some rows
            assert p.grad.abs().sum() > 0, name


def test_loss_decreases():
    torch.manual_seed(1)
    samples = []
    for _ in range(8):
        n_vis = int(torch.randint(1, 4, ()).item())
        samples.append(
            {
                "diag": [torch.randint(1, 16, (3,)).tolist() for _ in range(n_vis)],
                "proc": [torch.randint(16, 24, (2,)).tolist() for _ in range(n_vis)],
                "med": [torch.randint(24, 30, (2,)).tolist() for _ in range(n_vis - 1)] + [[]],
                "profile": [int(torch.randint(0, 3, ())), int(torch.randint(0, 4, ()))],
                "target": sorted(set(torch.randint(0, 6, (2,)).tolist())),
            }
        )
    batch = collate(samples)
    model = make(dropout=0.1)
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    model.train()
    losses = []
    for _ in range(50):
        loss = bce_loss(model(batch).logits, batch["labels"])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], (losses[0], losses[-1])  # measured 0.70 → 0.07


def test_deterministic_given_seed():
    a, b, c = make(seed=3), make(seed=3), make(seed=4)
    for (k, v), w in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(v, w), k
    batch = collate([A, LONG])
    torch.testing.assert_close(logits(a, batch), logits(b, batch), atol=0, rtol=0)
    assert not torch.equal(logits(a, batch), logits(c, batch))


def test_distill_heads_are_separate():
    config = StudentConfig(**CFG)
    torch.manual_seed(0)
    plain = StudentModel(config)
    # no distillation module inside the model (its parameter count is checked by hand above)
    children = [name for name, _ in plain.named_children()]
    assert children == ["embed", "diag_enc", "proc_enc", "med_enc", "profile_enc", "visit_enc", "fc1", "fc2"]
    heads = DistillHeads(config, teacher_dim=10, align=True)
    assert heads.kd_projector.weight.shape == (10, 12)
    assert heads.x_proj.weight.shape == (16, 16) and heads.y_proj.weight.shape == (16, 16)
    kd_only = DistillHeads(config, teacher_dim=384)
    assert kd_only.kd_projector.weight.shape == (384, 12)
    assert kd_only.x_proj is None and kd_only.y_proj is None
    assert DistillHeads(config, align=True).kd_projector is None
    assert sum(p.numel() for p in DistillHeads(config).parameters()) == 0


def test_config_validation():
    with pytest.raises(ValueError):
        StudentConfig(**{**CFG, "heads": 3})
    with pytest.raises(ValueError):
        StudentConfig(**{**CFG, "profile_sizes": []})


def _swap_target_with_first(sample: dict) -> dict:
    """The same visits with the diagnoses/procedures of the target and of the first visit exchanged."""
    out = {k: (list(v) if isinstance(v, list) else v) for k, v in sample.items()}
    for key in ("diag", "proc"):
        out[key][0], out[key][-1] = sample[key][-1], sample[key][0]
    return out


def test_without_recency_the_target_visit_is_indistinguishable_from_history():
    """Reference behaviour (§7.21): no position encoding and a mean over visits, so moving the target visit's
    codes into the history changes nothing; `recency` makes the model see which visit it prescribes for."""
    batch, swapped = collate([A]), collate([_swap_target_with_first(A)])
    plain = make(0)
    assert torch.allclose(logits(plain, batch), logits(plain, swapped), atol=1e-6)
    rec = make(0, recency=4)
    assert not torch.allclose(logits(rec, batch), logits(rec, swapped), atol=1e-3)


def test_recency_is_padding_invariant_and_leaves_other_weights_alone():
    rec = make(0, recency=3)
    assert torch.allclose(logits(rec, collate([A])), logits(rec, collate([A], V=7, S=9)), atol=1e-5)
    # built last: every other parameter starts exactly as without it (same random numbers)
    plain = make(0).state_dict()
    rs = rec.state_dict()
    assert set(rs) - set(plain) == {"recency.weight"}
    assert all(torch.equal(plain[k], rs[k]) for k in plain)
    # distances beyond the table are clipped: 5 visits with a 3-row table still run
    assert torch.isfinite(logits(rec, collate([LONG]))).all()


def test_runs_saved_before_recency_load_as_reference_students():
    """A manifest's model_config from before `recency` existed has no such key: it builds the reference
    architecture, whose state dict is exactly what those runs saved."""
    from dataclasses import asdict

    old = {k: v for k, v in asdict(StudentConfig(**CFG)).items() if k != "recency"}
    model = StudentModel(StudentConfig(**old))
    assert model.config.recency == 0 and model.recency is None
    assert "recency.weight" not in model.state_dict()
