"""GAMENet (Shang et al., "GAMENet: Graph Augmented MEmory Networks for Recommending Medication Combination",
AAAI 2019). Reference code: sjy1203/GAMENet `code/models.py::GAMENet`, `code/layers.py`, `code/train_GAMENet.py`.

Dual RNN encoders: per visit, the mean embedding of its diagnoses and of its procedures (dropout on the code
embeddings); one GRU(d → 2d) per kind over the visits; query q_t = Linear(ReLU([o¹_t; o²_t])) (d).
Graph memory: M_b = GCN_ehr − γ·GCN_ddi (M, d), two-layer GCNs with identity node features over the row-normalised
(A + I) of the EHR co-occurrence graph (drug pairs prescribed in one training visit) and of the run's DDI graph;
γ (`inter`) learned. Read: fact1 = softmax(q·M_bᵀ) M_b; dynamic memory (keys q_1..q_{t−1}, values the history
visits' drug multi-hots): fact2 = softmax(q·keysᵀ) values M_b. logits = MLP(ReLU, 3d → 2d, ReLU, 2d → M) of
[q; fact1; fact2].

A patient without history has no dynamic memory: fact2 = fact1, as in the authors' code.

Training loss (paper §"Optimization", authors' `train_GAMENet.py`): 0.9·BCE + 0.01·multilabel margin; with the
DDI loss on (`ddi_loss`), a visit whose predicted set (p ≥ 0.5) has DDI rate r above `target_ddi` is trained on
the DDI loss mean(σσᵀ ⊙ A_ddi) instead, with probability exp((target_ddi − r)/T), T annealed by `decay` per epoch.

Where it differs from the authors' code, and why:
- Batched (the authors take one optimizer step per visit): the stochastic switch is replaced by its expectation
  per sample, (1 − π)·prediction loss + π·DDI loss with π = exp((target − r)/T) when r > target, else 0. The
  gradient is the expected gradient of the authors' rule, without its sampling noise (and without drawing random
  numbers, so runs stay reproducible); `extra_loss` returns it as "margin" and "ddi" (= π·(DDI loss/0.9 −
  BCE − margin term), what the swap changes), added to the loop's BCE.
- The EHR graph comes from the training split only (the authors build it from every patient, test included).
- An empty code set pools to zeros (the authors' mean of an empty set is NaN; their data never has one).
- Unknown codes have their own embeddings; one embedding table for diagnoses and procedures (their ids never
  collide, so it equals the authors' two tables).
- One sample per patient (the target visit) instead of every visit, and the shared loop's batch size,
  early stopping on validation PRAUC and threshold tuned on validation (the authors: batch 1, 40 epochs,
  threshold 0.5). `ddi_in_memory` and `ddi_loss` are separate settings (the authors' single `--ddi` flag sets both).

Hyper-parameters (`[gamenet]` in settings, the authors' values): emb_dim 64, dropout 0.4, gcn_dropout 0.3,
ddi_in_memory true, ddi_loss true, target_ddi 0.05, temperature 0.5, decay 0.85, margin_weight 0.01,
bce_weight 0.9, lr 2e-4.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from leadercli.models.field import (
    FieldModel,
    FieldOutput,
    at_target,
    margin_loss,
    multi_hot,
    pool_codes,
    predicted_ddi_rate,
    target_index,
)


@dataclass
class GAMENetConfig:
    med_offset: int  # unified id of drug 0 (ids below it: PAD, UNKs, diagnoses, procedures)
    n_labels: int  # M, drugs
    emb_dim: int = 64  # d: code embeddings, queries, memory (GRUs are 2d wide)
    dropout: float = 0.4  # dropout on the code embeddings
    gcn_dropout: float = 0.3  # dropout between the two GCN layers
    ddi_in_memory: bool = True  # memory bank = GCN_ehr − γ·GCN_ddi (false: GCN_ehr only)
    ddi_loss: bool = True  # the annealed DDI-loss switch in training
    target_ddi: float = 0.05  # DDI rate above which the DDI loss may replace the prediction loss
    temperature: float = 0.5  # initial T of the switch probability exp((target − r)/T)
    decay: float = 0.85  # T ← T·decay after every epoch
    margin_weight: float = 0.01  # weight of the multilabel margin loss
    bce_weight: float = (
        0.9  # weight of BCE (the loop adds BCE with weight 1: the other weights are divided by it)
    )


def normalize_rows(adj: torch.Tensor) -> torch.Tensor:
    """A (M, M) → D⁻¹(A + I), the authors' GCN normalisation."""
    a = adj + torch.eye(adj.shape[0], dtype=adj.dtype)
    return a / a.sum(1, keepdim=True)


def cooccurrence(drug_sets: Iterable[Iterable[int]], n_labels: int) -> torch.Tensor:
    """EHR graph: 1 where two drugs (label indices) were prescribed in one visit (M, M), zero diagonal."""
    adj = torch.zeros(n_labels, n_labels)
    for s in drug_sets:
        idx = torch.as_tensor(sorted(set(s)), dtype=torch.int64)
        if len(idx) > 1:
            adj[idx.unsqueeze(1), idx.unsqueeze(0)] = 1.0
    adj.fill_diagonal_(0.0)
    return adj


class GCN(nn.Module):
    """Two graph convolutions over a fixed normalised adjacency with identity node features (M nodes)."""

    def __init__(self, n: int, d: int, dropout: float) -> None:
        super().__init__()
        bound = 1.0 / math.sqrt(d)  # the authors' GraphConvolution init
        self.w1 = nn.Parameter(torch.empty(n, d).uniform_(-bound, bound))
        self.b1 = nn.Parameter(torch.empty(d).uniform_(-bound, bound))
        self.w2 = nn.Parameter(torch.empty(d, d).uniform_(-bound, bound))
        self.b2 = nn.Parameter(torch.empty(d).uniform_(-bound, bound))
        self.drop = nn.Dropout(dropout)

    def forward(self, adj: torch.Tensor) -> torch.Tensor:
        x = self.drop(F.relu(adj @ self.w1 + self.b1))  # (M, d): A·I·W1 = A·W1
        return adj @ (x @ self.w2) + self.b2  # (M, d)


class GAMENet(FieldModel):
    kind = "gamenet"
    no_history = "no dynamic memory: the graph-memory read stands in for it (as in the authors' code)"

    def __init__(self, config: GAMENetConfig, ehr_adj: torch.Tensor, ddi_adj: torch.Tensor) -> None:
        """ehr_adj, ddi_adj (M, M) 0/1: the training split's co-occurrence graph and the run's DDI graph (saved
        with the weights as buffers, so a loaded run needs neither)."""
        super().__init__()
        self.config = c = config
        d, M = c.emb_dim, c.n_labels
        self.embed = nn.Embedding(c.med_offset, d, padding_idx=0)
        nn.init.uniform_(self.embed.weight, -0.1, 0.1)  # the authors' init
        self.drop = nn.Dropout(c.dropout)
        self.diag_rnn = nn.GRU(d, 2 * d, batch_first=True)
        self.proc_rnn = nn.GRU(d, 2 * d, batch_first=True)
        self.query = nn.Sequential(nn.ReLU(), nn.Linear(4 * d, d))
        self.ehr_gcn = GCN(M, d, c.gcn_dropout)
        self.ddi_gcn = GCN(M, d, c.gcn_dropout)
        self.inter = nn.Parameter(torch.empty(1).uniform_(-0.1, 0.1))  # γ
        self.output = nn.Sequential(nn.ReLU(), nn.Linear(3 * d, 2 * d), nn.ReLU(), nn.Linear(2 * d, M))
        self.register_buffer("ehr_norm", normalize_rows(ehr_adj.float()))  # (M, M)
        self.register_buffer("ddi_norm", normalize_rows(ddi_adj.float()))  # (M, M)
        self.register_buffer("ddi_adj", ddi_adj.float())  # (M, M) 0/1
        self.temperature = c.temperature

    def set_epoch(self, epoch: int) -> None:
        self.temperature = self.config.temperature * self.config.decay**epoch  # annealed once per epoch

    def forward(self, batch: dict[str, torch.Tensor]) -> FieldOutput:
        c = self.config
        vmask = batch["visit_mask"].bool()  # (B, V)
        last = target_index(vmask)  # (B,)
        diag = pool_codes(self.drop(self.embed(batch["diag"])), batch["diag"], "mean")  # (B, V, d)
        proc = pool_codes(self.drop(self.embed(batch["proc"])), batch["proc"], "mean")  # (B, V, d)
        o = torch.cat([self.diag_rnn(diag)[0], self.proc_rnn(proc)[0]], dim=-1)  # (B, V, 4d), causal
        queries = self.query(o)  # (B, V, d)
        q = at_target(queries, last)  # (B, d)
        memory = self.ehr_gcn(self.ehr_norm)  # (M, d)
        if c.ddi_in_memory:
            memory = memory - self.inter * self.ddi_gcn(self.ddi_norm)  # (M, d)
        fact1 = torch.softmax(q @ memory.T, dim=-1) @ memory  # (B, d)
        pos = torch.arange(vmask.shape[1], device=vmask.device)  # (V,)
        hist = vmask & (pos.unsqueeze(0) < last.unsqueeze(1))  # (B, V) visits before the target
        values = multi_hot(batch["med"], c.med_offset, c.n_labels)  # (B, V, M) drugs of each visit
        w = torch.einsum("bd,bvd->bv", q, queries).masked_fill(~hist, float("-inf"))  # (B, V)
        w = torch.softmax(w, dim=1).nan_to_num(0.0)  # (B, V) zeros without history
        fact2 = torch.einsum("bv,bvm->bm", w, values) @ memory  # (B, d)
        fact2 = torch.where(hist.any(1, keepdim=True), fact2, fact1)  # no history: fact2 = fact1
        return FieldOutput(self.output(torch.cat([q, fact1, fact2], dim=-1)))  # (B, M)

    def extra_loss(self, output: FieldOutput, batch: dict[str, torch.Tensor]) -> dict:
        c = self.config
        probs = torch.sigmoid(output.logits)  # (B, M)
        margin = margin_loss(probs, batch["labels"], reduction="none")  # (B,)
        wm = c.margin_weight / c.bce_weight
        terms = {"margin": (wm, margin.mean())}
        if c.ddi_loss:
            with torch.no_grad():
                r = predicted_ddi_rate(probs, self.ddi_adj)  # (B,)
                pi = torch.where(r > c.target_ddi, torch.exp((c.target_ddi - r) / self.temperature), 0.0)
            bce = F.binary_cross_entropy_with_logits(output.logits, batch["labels"], reduction="none").mean(1)
            ddi = ((probs @ self.ddi_adj) * probs).sum(
                1
            ) / c.n_labels**2  # (B,) mean over M×M, as the authors
            terms["ddi"] = (1.0, (pi * (ddi / c.bce_weight - bce - wm * margin)).mean())
        return terms
