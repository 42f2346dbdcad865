"""The field's models (RETAIN, GAMENet, MICRON, logistic regression, RAREMed) on the tiny artifact: shapes,
learning (below the popularity BCE after a few steps), single-visit patients, determinism, and each model's
own rules (MICRON's add/remove rule, GAMENet's graphs and DDI switch, RETAIN's reversal)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from leadercli.data.artifact import Artifact
from leadercli.data.batching import Encoder
from leadercli.data.samples import load_samples
from leadercli.models import field
from leadercli.models.gamenet import GAMENet, GAMENetConfig, cooccurrence
from leadercli.models.logreg import LogReg, LogRegConfig
from leadercli.models.micron import Micron, MicronConfig
from leadercli.models.raremed import RAREMed, RAREMedConfig, pretrain
from leadercli.models.retain import Retain, RetainConfig, reverse_visits

KINDS = ("retain", "gamenet", "micron", "logreg", "raremed")


@pytest.fixture(scope="module")
def data(tiny_artifact):
    art = Artifact(tiny_artifact)
    enc = Encoder(art.vocab)
    train = enc.encode_all(load_samples(art, "train", 10))
    batch = enc.collate(train)
    ddi = field.ddi_adjacency(art.ddi_index_pairs(), enc.n_labels)
    ehr = cooccurrence(
        [[i - enc.med_offset for i in visit] for e in train for visit in e.med] + [e.labels for e in train],
        enc.n_labels,
    )
    return enc, batch, ddi, ehr, len(train)


def build(kind: str, data, seed: int = 0) -> field.FieldModel:
    enc, _, ddi, ehr, n_train = data
    torch.manual_seed(seed)
    M, off = enc.n_labels, enc.med_offset
    if kind == "retain":
        return Retain(RetainConfig(enc.vocab_size, M, emb_dim=16, alpha_hidden=16, beta_hidden=16))
    if kind == "gamenet":
        return GAMENet(GAMENetConfig(off, M, emb_dim=16), ehr, ddi)
    if kind == "micron":
        return Micron(MicronConfig(off, M, emb_dim=16), ddi)
    if kind == "logreg":
        return LogReg(LogRegConfig(off, M, n_train=n_train))
    return RAREMed(RAREMedConfig(off, M, emb_dim=16, layers=1, heads=2, ff=32), ddi)


def single_visit_rows(batch) -> torch.Tensor:
    return (batch["visit_mask"].sum(1) == 1).nonzero().squeeze(1)


def train_steps(model: field.FieldModel, batch: dict, steps: int, lr: float = 1e-2) -> list[float]:
    opt = field.make_optimizer(model.parameters(), model.optimizer, lr, 0.0)
    losses = []
    for step in range(steps):
        model.train()
        model.set_epoch(step)
        out = model(batch)
        loss = F.binary_cross_entropy_with_logits(out.logits, batch["labels"])
        for _, (w, t) in model.extra_loss(out, batch).items():
            loss = loss + w * t
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return losses


@pytest.mark.parametrize("kind", KINDS)
def test_shapes_and_single_visit(kind, data):
    enc, batch, *_ = data
    model = build(kind, data).eval()
    with torch.no_grad():
        out = model(batch)
        p = model.probs(batch)
    B = batch["visit_mask"].shape[0]
    assert out.logits.shape == (B, enc.n_labels)
    assert p.shape == (B, enc.n_labels) and bool(((p >= 0) & (p <= 1)).all())
    single = single_visit_rows(batch)
    assert len(single) > 0 and len(single) < B  # the tiny set has both kinds of patients
    assert torch.isfinite(out.logits).all()
    # a single-visit patient scored alone gets the score it gets inside the batch
    i = int(single[0])
    one = {k: v[i : i + 1] for k, v in batch.items()}
    with torch.no_grad():
        alone = model(one).logits
    torch.testing.assert_close(alone, out.logits[i : i + 1], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_learns_below_popularity(kind, data):
    _, batch, *_ = data
    labels = batch["labels"]
    freq = labels.mean(0).clamp(1e-4, 1 - 1e-4)
    popularity = float(F.binary_cross_entropy(freq.expand_as(labels), labels))
    model = build(kind, data)
    lr = 3e-3 if kind == "raremed" else 2e-2
    train_steps(model, batch, 60, lr=lr)
    model.eval()
    with torch.no_grad():
        bce = float(F.binary_cross_entropy(model.probs(batch).clamp(1e-6, 1 - 1e-6), labels))
    assert bce < popularity, (kind, bce, popularity)


@pytest.mark.parametrize("kind", KINDS)
def test_same_seed_same_numbers(kind, data):
    _, batch, *_ = data
    runs = []
    for _ in range(2):
        torch.manual_seed(123)
        model = build(kind, data, seed=7)
        losses = train_steps(model, batch, 3)
        model.eval()
        with torch.no_grad():
            runs.append((losses, model.probs(batch)))
    assert runs[0][0] == runs[1][0]
    assert torch.equal(runs[0][1], runs[1][1])


@pytest.mark.parametrize("kind", KINDS)
def test_target_drugs_never_read(kind, data):
    """Writing drugs into the target visit's (PAD) med row changes nothing: the label is never an input."""
    enc, batch, *_ = data
    model = build(kind, data).eval()
    leaked = {k: v.clone() for k, v in batch.items()}
    last = field.target_index(leaked["visit_mask"])
    rows = torch.arange(len(last))
    leaked["med"][rows, last, 0] = enc.med_offset + leaked["labels"].argmax(1)
    with torch.no_grad():
        torch.testing.assert_close(model(leaked).logits, model(batch).logits)


def test_reverse_visits_is_its_own_inverse():
    x = torch.arange(2 * 4).view(2, 4, 1).float()
    n = torch.tensor([3, 1])
    r = reverse_visits(x, n)
    assert r[0, :, 0].tolist() == [2.0, 1.0, 0.0, 3.0] and r[1, :, 0].tolist() == [4.0, 5.0, 6.0, 7.0]
    assert torch.equal(reverse_visits(r, n), x)


def test_retain_attention_is_over_real_visits(data):
    _, batch, *_ = data
    model = build("retain", data).eval()
    with torch.no_grad():
        a = model(batch).parts["alpha"]
    torch.testing.assert_close(a.sum(1), torch.ones(len(a)))
    assert bool((a[~batch["visit_mask"]] == 0).all())


def test_micron_keeps_the_authors_add_remove_rule(data):
    """At threshold add_threshold, a previous drug is chosen iff p ≥ remove_threshold, a new drug iff p ≥ add."""
    enc, batch, *_ = data
    model = build("micron", data).eval()
    c = model.config
    with torch.no_grad():
        scored = torch.sigmoid(model(batch).logits)
        model.keep_bonus = 0.0
        raw = torch.sigmoid(model(batch).logits)
    last = field.target_index(batch["visit_mask"])
    prev = field.multi_hot(
        field.at_target(batch["med"], (last - 1).clamp(min=0)), enc.med_offset, enc.n_labels
    )
    prev = prev * (last > 0).unsqueeze(1)
    chosen = scored >= c.add_threshold
    rule = torch.where(prev > 0, raw >= c.remove_threshold, raw >= c.add_threshold)
    close = (raw - c.remove_threshold).abs().lt(1e-5) | (raw - c.add_threshold).abs().lt(1e-5)
    assert bool((chosen == rule)[~close].all())
    single = single_visit_rows(batch)
    torch.testing.assert_close(scored[single], raw[single])  # no previous set: the current visit alone


def test_gamenet_graphs_and_ddi_switch(data):
    enc, batch, ddi, ehr, _ = data
    assert torch.equal(ehr, ehr.T) and float(ehr.diagonal().abs().sum()) == 0.0
    model = build("gamenet", data)
    torch.testing.assert_close(model.ehr_norm.sum(1), torch.ones(enc.n_labels))
    model.train()
    out = model(batch)
    terms = model.extra_loss(out, batch)
    assert set(terms) == {"margin", "ddi"}
    model.set_epoch(3)
    assert math.isclose(model.temperature, 0.5 * 0.85**3)
    # with a DDI graph where every pair interacts and a target of 0, every sample with ≥ 2 predicted drugs is
    # trained on the DDI loss with probability exp(−r/T) > 0
    full = torch.ones_like(ddi) - torch.eye(enc.n_labels)
    model.ddi_adj.copy_(full)
    model.config.target_ddi = 0.0
    with torch.no_grad():
        out.logits.fill_(5.0)
    assert float(model.extra_loss(out, batch)["ddi"][1].detach()) != 0.0
    model.config.ddi_loss = False
    assert set(model.extra_loss(out, batch)) == {"margin"}


def test_margin_loss_matches_torch():
    probs = torch.tensor([[0.9, 0.1, 0.4], [0.2, 0.3, 0.8]])
    labels = torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 0.0]])
    target = torch.tensor([[0, 2, -1], [-1, -1, -1]])
    torch.testing.assert_close(field.margin_loss(probs, labels), F.multilabel_margin_loss(probs, target))


def test_logreg_l2_is_sklearn_objective(data):
    model = build("logreg", data)
    with torch.no_grad():
        model.weight.weight.fill_(0.5)
    c = model.config
    w, t = model.extra_loss(None, {})["l2"]
    expect = 0.25 * c.med_offset * c.n_labels / (2 * c.C * c.n_train * c.n_labels)
    assert math.isclose(w * float(t.detach()), expect, rel_tol=1e-5)


def test_raremed_pretraining_lowers_both_losses(data):
    _, batch, *_ = data
    model = build("raremed", data)
    log = pretrain(model, lambda i: [batch], epochs=15, lr=3e-3, weight_decay=0.0, seed=0, device="cpu")
    smp = [r["loss"] for r in log if r["pretrain"] == "smp"]
    sr = [r["loss"] for r in log if r["pretrain"] == "sr"]
    assert len(smp) == len(sr) == 15
    assert sr[-1] < sr[0] and smp[-1] < smp[0]


def test_every_field_kind_has_a_config():
    from leadercli import kinds
    from leadercli.models.field_build import CONFIGS

    assert set(CONFIGS) == set(kinds.FIELD_MODELS) == set(KINDS)
    assert set(kinds.FIELD_MODELS) <= set(kinds.STUDENT_MODELS) and set(kinds.FIELD_MODELS) <= set(
        kinds.LEARNED
    )


def _one(batch: dict, i: int) -> dict:
    """Patient i alone, cut to its real visits (what the authors' per-patient code sees)."""
    n = int(batch["visit_mask"][i].sum())
    return {
        k: (v[i : i + 1, :n] if v.dim() >= 2 and k in ("diag", "proc", "med", "visit_mask") else v[i : i + 1])
        for k, v in batch.items()
    }


def test_retain_reads_visits_in_reverse_time(data):
    """The batched model equals RETAIN written per patient: GRUs over the reversed real visits."""
    _, batch, *_ = data
    model = build("retain", data).eval()
    i = int((batch["visit_mask"].sum(1) >= 3).nonzero()[0])
    p = _one(batch, i)
    with torch.no_grad():
        n = p["diag"].shape[1]
        med = p["med"].clone()
        med[:, -1] = 0
        codes = torch.cat([p["diag"], p["proc"], med], dim=-1)[0]  # (n, S)
        v = (model.embed(codes) * (codes > 0).unsqueeze(-1)).sum(1)  # (n, d)
        rev = v.flip(0).unsqueeze(0)  # target first
        g = model.alpha_gru(rev)[0][0].flip(0)  # (n, h) back in time order
        h = model.beta_gru(rev)[0][0].flip(0)
        a = torch.softmax(model.alpha(g).squeeze(-1), 0)  # (n,)
        c = (a.unsqueeze(-1) * torch.tanh(model.beta(h)) * v).sum(0)
        want = model.out(c)
        got = model(batch).logits[i]
    assert n >= 3
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_micron_scores_the_authors_residual_chain(data):
    """Evaluation = the authors' representation_base: P(h_0) + Σ_k P(h_k − h_{k−1}), plus the previous-drug bonus."""
    enc, batch, *_ = data
    model = build("micron", data).eval()
    i = int((batch["visit_mask"].sum(1) >= 3).nonzero()[0])
    p = _one(batch, i)
    with torch.no_grad():
        d = (model.embed(p["diag"][0]) * (p["diag"][0] > 0).unsqueeze(-1)).sum(1)  # (n, d)
        r = (model.embed(p["proc"][0]) * (p["proc"][0] > 0).unsqueeze(-1)).sum(1)
        h = model.health(torch.cat([d, r], -1))  # (n, d)
        base = model.prescription(h[0])
        for k in range(1, len(h)):
            base = base + model.prescription(h[k] - h[k - 1])
        prev = field.multi_hot(p["med"][0, -2], enc.med_offset, enc.n_labels)
        want = base + model.keep_bonus * prev
        got = model(batch).logits[i]
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_gamenet_reads_the_history_memory(data):
    """GAMENet written per patient (the authors' forward): fact2 from the earlier visits' queries and drugs."""
    enc, batch, *_ = data
    model = build("gamenet", data).eval()
    i = int((batch["visit_mask"].sum(1) >= 3).nonzero()[0])
    p = _one(batch, i)
    with torch.no_grad():

        def mean_emb(ids):
            m = (ids > 0).unsqueeze(-1).float()
            return (model.embed(ids) * m).sum(1) / m.sum(1).clamp(min=1)

        o1 = model.diag_rnn(mean_emb(p["diag"][0]).unsqueeze(0))[0][0]
        o2 = model.proc_rnn(mean_emb(p["proc"][0]).unsqueeze(0))[0][0]
        queries = model.query(torch.cat([o1, o2], -1))  # (n, d)
        q = queries[-1:]
        memory = model.ehr_gcn(model.ehr_norm) - model.inter * model.ddi_gcn(model.ddi_norm)
        fact1 = torch.softmax(q @ memory.T, -1) @ memory
        values = field.multi_hot(p["med"][0, :-1], enc.med_offset, enc.n_labels)  # (n-1, M)
        fact2 = torch.softmax(q @ queries[:-1].T, -1) @ values @ memory
        want = model.output(torch.cat([q, fact1, fact2], -1))[0]
        got = model(batch).logits[i]
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
