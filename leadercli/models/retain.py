"""RETAIN (Choi et al., "RETAIN: An Interpretable Predictive Model for Healthcare using Reverse Time Attention
Mechanism", NeurIPS 2016) as a medication recommender. Reference code: mp2893/retain (`retain.py`, Theano) for
the architecture; the medication-recommendation papers' RETAIN baseline (sjy1203/GAMENet
`code/models.py::Retain`, reused by SafeDrug, MICRON, RAREMed and the DREAM benchmark) for the task's inputs and
hyper-parameters.

Per visit t: v_t = Σ embeddings of its diagnosis, procedure and (history) drug codes (B, V, d). Two GRUs read the
visits in reverse time order, target first: g (visit-level α) and h (variable-level β). e_t = w_α·g_t + b_α,
α = softmax_t(e) over the real visits, β_t = tanh(W_β h_t + b_β), c = Σ_t α_t β_t ⊙ v_t, logits = W c + b.
The target visit is the newest visit: its diagnoses and procedures are inputs, its drugs are the label.

A patient without history has one visit: α = 1 and c = β ⊙ v of the target visit's diagnoses and procedures.

Where it differs from the authors' code, and why:
- GAMENet's `Retain` (the field's baseline) takes the softmax over a size-1 axis (α ≡ 1, no visit attention) and
  runs its GRUs forward in time; here α is a real softmax over the visits and the GRUs run in reverse time, as
  in the paper and Choi's code. (PyHealth's RETAINLayer multiplies attention computed on the reversed sequence
  with the unreversed embeddings and lets padding into the softmax; here both are aligned and masked.)
- The field's baseline predicts visit t from visits < t only and skips single-visit patients; here the target
  visit's diagnoses and procedures are inputs, as for every model in this tool, so every patient is scored.
- Choi's code scales the GRU outputs by 0.5 (absorbed into w_α and W_β here), initialises every weight
  U(−0.1, 0.1) (torch's defaults here) and trains with Adadelta (the shared loop's Adam here).
- Unknown codes have their own embeddings (UNK per kind) rather than being dropped.
- One sample per patient (the target visit) instead of every visit, as for every model here.

Hyper-parameters (`[retain]` in settings; defaults = the field's RETAIN baseline, Choi's code values in the
comments): emb_dim 64 (Choi 128), alpha_hidden 64 and beta_hidden 64 (GAMENet: = emb_dim; Choi 128),
dropout_emb 0.3 (Choi 0.5), dropout_context 0.0 (Choi 0.5), l2 0.0 (Choi 0.001 on W_emb, w_α, W_β, W_out), lr 2e-4.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from leadercli.models.field import FieldModel, FieldOutput, pool_codes


@dataclass
class RetainConfig:
    vocab_size: int  # unified code ids (PAD, UNKs, diagnoses, procedures, drugs)
    n_labels: int  # M, drugs
    emb_dim: int = 64  # code / visit embedding size d (field baseline 64; Choi 128)
    alpha_hidden: int = 64  # GRU size for the visit-level attention α
    beta_hidden: int = 64  # GRU size for the variable-level attention β
    dropout_emb: float = 0.3  # dropout on the visit embeddings v (field baseline 0.3; Choi 0.5)
    dropout_context: float = 0.0  # dropout on the context vector c (Choi 0.5; the field baseline has none)
    l2: float = 0.0  # L2 weight on W_emb, w_α, W_β and W_out (Choi 0.001; the field baseline none)


def reverse_visits(x: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
    """Left-aligned visits x (B, V, ...) with n (B,) real ones → the real visits in reverse order, still
    left-aligned (padding stays where it is). Its own inverse."""
    V = x.shape[1]
    pos = torch.arange(V, device=x.device).unsqueeze(0)  # (1, V)
    idx = torch.where(pos < n.unsqueeze(1), n.unsqueeze(1) - 1 - pos, pos)  # (B, V)
    return x.gather(1, idx.view(*idx.shape, *([1] * (x.dim() - 2))).expand_as(x))


class Retain(FieldModel):
    kind = "retain"
    no_history = "one visit: attention 1 on the target visit's diagnoses and procedures"

    def __init__(self, config: RetainConfig) -> None:
        super().__init__()
        self.config = c = config
        self.embed = nn.Embedding(c.vocab_size, c.emb_dim, padding_idx=0)
        self.drop_emb = nn.Dropout(c.dropout_emb)
        self.alpha_gru = nn.GRU(c.emb_dim, c.alpha_hidden, batch_first=True)
        self.beta_gru = nn.GRU(c.emb_dim, c.beta_hidden, batch_first=True)
        self.alpha = nn.Linear(c.alpha_hidden, 1)
        self.beta = nn.Linear(c.beta_hidden, c.emb_dim)
        self.drop_context = nn.Dropout(c.dropout_context)
        self.out = nn.Linear(c.emb_dim, c.n_labels)

    def forward(self, batch: dict[str, torch.Tensor]) -> FieldOutput:
        vmask = batch["visit_mask"].bool()  # (B, V)
        n = vmask.sum(1)  # (B,)
        # history drugs only (the target's med row is PAD by contract; masked again for safety)
        hist = torch.zeros_like(vmask)
        hist[:, :-1] = vmask[:, 1:]
        codes = torch.cat(
            [batch["diag"], batch["proc"], batch["med"] * hist.unsqueeze(-1)], dim=-1
        )  # (B, V, S)
        v = self.drop_emb(pool_codes(self.embed(codes), codes))  # (B, V, d)
        rv = reverse_visits(v, n)  # (B, V, d) target first
        g = reverse_visits(self.alpha_gru(rv)[0], n)  # (B, V, ha), back in time order
        h = reverse_visits(self.beta_gru(rv)[0], n)  # (B, V, hb)
        e = self.alpha(g).squeeze(-1).masked_fill(~vmask, float("-inf"))  # (B, V)
        a = torch.softmax(e, dim=1).nan_to_num(0.0)  # (B, V) a patient without visits gets zeros
        b = torch.tanh(self.beta(h))  # (B, V, d)
        c = self.drop_context((a.unsqueeze(-1) * b * v).sum(1))  # (B, d)
        return FieldOutput(self.out(c), {"alpha": a})

    def extra_loss(self, output: FieldOutput, batch: dict[str, torch.Tensor]) -> dict:
        if not self.config.l2:
            return {}
        sq = sum(
            w.pow(2).sum() for w in (self.embed.weight, self.alpha.weight, self.beta.weight, self.out.weight)
        )
        return {"l2": (self.config.l2, sq)}
