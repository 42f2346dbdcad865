"""The LEADER student, LEADER(S) (arXiv 2402.02803; reference code liuqidong07/LEADER-pytorch
`models/LEADER.py` and `models/bert_models.py::TransformerBlock`), as described in leader-reference.md §4.2,
with the §7 fixes:

- one profile head (the reference computed three and fed the diagnosis head to the medication stream, §7.4);
- the medication stream is shifted by one visit, so the target visit's drugs can never be inputs;
- key masks use `masked_fill(-1e9)`, so an all-PAD set stays finite; empty sets pool to a zero vector;
- the distillation projectors live in `DistillHeads`, outside the model, so a plain student consumes exactly
  the same random numbers whether or not distillation is configured (and unused modules never count in
  #params).

Batch contract (built by `leadercli.data.batching`; other keys are ignored):
    diag (B, V, Sd), proc (B, V, Sp), med (B, V, Sm) int64 unified code ids, 0 = PAD; visits left-aligned and
        chronological, the target visit is the last real one and its `med` row is all PAD
    visit_mask (B, V) bool, True = real visit
    profile (B, F) int64 per-field value ids, 0 = UNK
    target_meds (B, St) int64 unified ids of the target visit's drugs (alignment only)
    labels (B, M) float multi-hot (losses only)

This file is the reference computation. Two speed paths for CPU give the same forward values, each called once
from `StudentModel.forward`: `models/student_train.py` (training, on batches its `prepare` packed) and
`models/student_eval.py` (eval mode, `fast_eval`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from leadercli.config_checks import check_heads
from leadercli.models import student_eval, student_train
from leadercli.models.code_text import MODES as CODE_TEXT_MODES
from leadercli.models.code_text import CodeEmbedding

NEG_INF = -1e9  # finite "minus infinity" for masked attention scores
SET_CHUNK = 1024  # sets encoded together at most (the reference path)


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of x (..., S, d) over the positions where mask (..., S) is True; zeros when none is."""
    m = mask.unsqueeze(-1).to(x.dtype)  # (..., S, 1)
    return (x * m).sum(-2) / m.sum(-2).clamp(min=1.0)  # (..., d)


class SelfAttention(nn.Module):
    """Multi-head self-attention; Q/K/V without bias, output projection with bias (reference)."""

    def __init__(self, d: int, heads: int, attn_dropout: float) -> None:
        super().__init__()
        check_heads(d, heads)
        self.heads = heads
        self.q = nn.Linear(d, d, bias=False)
        self.k = nn.Linear(d, d, bias=False)
        self.v = nn.Linear(d, d, bias=False)
        self.out = nn.Linear(d, d)
        self.drop = nn.Dropout(attn_dropout)

    def qkv_weight_parts(self) -> tuple[torch.Tensor, ...]:
        return self.q.weight, self.k.weight, self.v.weight

    def qkv_weight(self) -> torch.Tensor:
        return torch.cat(self.qkv_weight_parts())  # (3d, d)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
        n, s, d = x.shape  # (N, S, d)
        h, dk = self.heads, d // self.heads
        q, k, v = (
            lin(x).view(n, s, h, dk).transpose(1, 2) for lin in (self.q, self.k, self.v)
        )  # (N, h, S, dk)
        scores = q @ k.transpose(-2, -1) / math.sqrt(dk)  # (N, h, S, S)
        scores = scores.masked_fill(~key_mask[:, None, None, :], NEG_INF)  # (N, h, S, S)
        att = self.drop(scores.softmax(-1))  # (N, h, S, S)
        y = (att @ v).transpose(1, 2).reshape(n, s, d)  # (N, S, d)
        return self.out(y)


class FeedForward(nn.Module):
    """Linear(d→ff) → tanh-GELU → Dropout → Linear(ff→d)."""

    def __init__(self, d: int, ff: int, dropout: float) -> None:
        super().__init__()
        self.w1 = nn.Linear(d, ff)
        self.w2 = nn.Linear(ff, d)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(self.drop(F.gelu(self.w1(x), approximate="tanh")))


class TransformerBlock(nn.Module):
    """Pre-LN block: x + Drop(Attn(LN x)); x + Drop(FFN(LN x)); then Dropout on the output (reference).

    Accepts x (..., S, d) with key_mask (..., S): every leading index is one independent set (e.g. the codes
    of one visit for x (B, V, S, d)), so attention never crosses sets."""

    def __init__(self, d: int, heads: int, ff: int, dropout: float, attn_dropout: float) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(d, eps=1e-12)  # reference: TF-style LayerNorm, eps 1e-12
        self.attn = SelfAttention(d, heads, attn_dropout)
        self.ln2 = nn.LayerNorm(d, eps=1e-12)
        self.ffn = FeedForward(d, ff, dropout)
        self.drop1 = nn.Dropout(dropout)
        self.drop2 = nn.Dropout(dropout)
        self.drop_out = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
        shape = x.shape  # (..., S, d)
        x = x.reshape(-1, shape[-2], shape[-1])  # (N, S, d)
        m = key_mask.reshape(-1, shape[-2])  # (N, S)
        x = x + self.drop1(self.attn(self.ln1(x), m))  # (N, S, d)
        # the feed-forward runs on real positions only (padding outputs are never read: keys are masked and
        # pooling is masked), which saves most of the work on padded batches
        real = x[m]  # (n_real, d)
        x = x.index_put((m,), real + self.drop2(self.ffn(self.ln2(real))))  # (N, S, d)
        return self.drop_out(x).reshape(shape)  # (..., S, d)


class Stack(nn.Module):
    """`layers` TransformerBlocks applied in turn with the same key mask."""

    def __init__(self, layers: int, *args) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(TransformerBlock(*args) for _ in range(layers))

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x, key_mask)
        return x


class ProfileEncoder(nn.Module):
    """One embedding per profile field → concat (B, F·d) → ONE Linear(F·d → d)."""

    def __init__(self, sizes: list[int], d: int) -> None:
        super().__init__()
        self.embeds = nn.ModuleList(nn.Embedding(n, d) for n in sizes)
        self.proj = nn.Linear(len(sizes) * d, d)

    def forward(self, profile: torch.Tensor) -> torch.Tensor:
        parts = [emb(profile[:, i]) for i, emb in enumerate(self.embeds)]  # F × (B, d)
        return self.proj(torch.cat(parts, dim=-1))  # (B, d)


@dataclass
class StudentConfig:
    vocab_size: int  # unified code vocabulary size, PAD (0) and UNK ids included
    n_labels: int  # M, number of drugs (labels)
    med_offset: int  # unified id of label 0: label i ↔ unified id med_offset + i
    profile_sizes: list[int] = field(default_factory=list)  # vocab size per profile field, each incl. UNK 0
    hidden: int = 64  # d: code embedding and transformer width
    heads: int = 4  # attention heads (d must be divisible by heads)
    ff: int = 300  # feed-forward width (reference: fixed 300)
    dropout: float = 0.4  # hidden dropout (sublayers, feed-forward, block output)
    attn_dropout: float = 0.1  # dropout on attention probabilities
    head_hidden: int = 128  # width of the head's hidden layer z (the distillation feature)
    layers: int = 1  # transformer blocks per encoder (each set encoder and the visit encoder)
    # learned embedding of each visit's distance to the target visit (0 = target, clipped at recency - 1),
    # added to the three visit streams before the visit encoder; 0 = none (the reference: no position or time
    # encoding, §7.21, so the target visit's codes are indistinguishable from history in the mean over visits)
    recency: int = 0
    # code titles (issue 25, `models/code_text.py`): none = id embeddings only (the reference); both = id
    # embedding + a learned projection of the title's sentence embedding; text = that projection alone for codes
    # with a title
    code_text: str = "none"
    text_dim: int = 0  # D, width of the title embeddings (the title encoder's); 0 with code_text none

    def __post_init__(self) -> None:
        if not self.profile_sizes:
            raise ValueError("profile_sizes needs at least one field")
        check_heads(self.hidden, self.heads)
        if self.code_text not in CODE_TEXT_MODES or (self.code_text != "none") != (self.text_dim > 0):
            raise ValueError(f"code_text {self.code_text!r} with text_dim {self.text_dim} is not a student")


@dataclass
class StudentOutput:
    logits: torch.Tensor  # (B, M)
    z: torch.Tensor  # (B, head_hidden) Linear1(ReLU(u)), before the head's second ReLU
    profile: torch.Tensor  # (B, d) the profile pseudo-visit vector


class StudentModel(nn.Module):
    NEG_INF = NEG_INF  # for the speed paths, which do not import this module
    SET_CHUNK = SET_CHUNK

    def __init__(self, config: StudentConfig, fast_eval: bool = True, onednn: bool = True) -> None:
        """`fast_eval`: eval mode takes the packed path (`models/student_eval.py`), else this module's own;
        `onednn`: its linear layers through oneDNN (`hardware.onednn`)."""
        super().__init__()
        self.fast_eval, self.onednn = fast_eval, onednn
        self.config = c = config
        blk = (c.layers, c.hidden, c.heads, c.ff, c.dropout, c.attn_dropout)
        self.embed = nn.Embedding(c.vocab_size, c.hidden, padding_idx=0)  # shared by all code kinds
        self.diag_enc = Stack(*blk)
        self.proc_enc = Stack(*blk)
        self.med_enc = Stack(*blk)
        self.profile_enc = ProfileEncoder(c.profile_sizes, c.hidden)
        self.visit_enc = Stack(*blk)  # shared by the diagnosis, procedure and medication streams
        self.fc1 = nn.Linear(3 * c.hidden, c.head_hidden)
        self.fc2 = nn.Linear(c.head_hidden, c.n_labels)
        # created last, and only when used, so runs without it draw exactly the random numbers they always did
        self.recency = nn.Embedding(c.recency, c.hidden) if c.recency else None
        if c.code_text != "none":  # after recency, for the same reason: the id rows are the id-only student's
            self.embed = CodeEmbedding(self.embed, c.text_dim, c.code_text)  # its table: `embed.set_text`

    def encode_sets(self, ids: torch.Tensor, enc: Stack) -> torch.Tensor:
        """Code sets (..., S) → one vector each (..., d): embed, set block, masked mean over codes.

        Only non-empty sets are encoded (padding visits cost nothing; an empty set is the zero vector, as the
        masked mean of an all-PAD set would be), and large inputs are encoded in chunks of similar length,
        each cut to its own longest set, so one long set does not pad thousands of short ones."""
        lead, S = ids.shape[:-1], ids.shape[-1]
        flat = ids.reshape(-1, S)  # (N, S)
        mask = flat > 0  # (N, S)
        extent = (mask * torch.arange(1, S + 1, device=ids.device)).amax(-1)  # (N,) last real position + 1
        out = torch.zeros(flat.shape[0], self.config.hidden, device=ids.device, dtype=self.fc1.weight.dtype)
        rows = extent.nonzero().squeeze(1)  # (n,) non-empty sets
        if rows.numel() > SET_CHUNK:
            rows = rows[extent[rows].argsort(stable=True)]  # similar lengths together
        for chunk in rows.split(SET_CHUNK) if rows.numel() else ():
            L = int(extent[chunk].max())
            sub, m = flat[chunk, :L], mask[chunk, :L]  # (n, L)
            out[chunk] = masked_mean(enc(self.embed(sub), m), m)  # (n, d)
        return out.reshape(*lead, self.config.hidden)  # (..., d)

    def encode_med_set(self, ids: torch.Tensor) -> torch.Tensor:
        """One medication set per sample (B, S) → (B, d) with the medication set encoder (alignment)."""
        return self.encode_sets(ids, self.med_enc)

    def recency_term(self, vmask: torch.Tensor) -> torch.Tensor | None:
        """The visit-recency term added to each visit stream (B, V, d), zero on padding visits; None without the
        embedding. Visits are left-aligned: real position t is n − 1 − t visits back from the target."""
        if self.recency is None:
            return None
        pos = torch.arange(vmask.shape[1], device=vmask.device)  # (V,)
        back = (vmask.sum(1, keepdim=True) - 1 - pos).clamp(0, self.config.recency - 1)  # (B, V)
        return self.recency(back) * vmask.unsqueeze(-1)  # (B, V, d)

    def forward(self, batch: dict[str, torch.Tensor]) -> StudentOutput:
        # the speed paths (CPU), each one call: packed by the batch thread (training), packed here (eval)
        if self.training and student_train.PACKED in batch:
            return StudentOutput(*student_train.forward(self, batch))
        if not self.training and self.fast_eval:
            return StudentOutput(*student_eval.forward(self, batch, self.onednn))
        vmask = batch["visit_mask"].bool()  # (B, V)
        diag_v = self.encode_sets(batch["diag"], self.diag_enc)  # (B, V, d)
        proc_v = self.encode_sets(batch["proc"], self.proc_enc)  # (B, V, d)
        # only drugs of visits that have a later real visit are history: the target's drugs never enter
        hist = batch["med"][:, :-1] * vmask[:, 1:].unsqueeze(-1)  # (B, V-1, Sm)
        med_v = self.encode_sets(hist, self.med_enc)  # (B, V-1, d)
        prof = self.profile_enc(batch["profile"])  # (B, d)
        # position 0 = profile pseudo-visit, position t = meds of visit t-1
        med_v = torch.cat([prof.unsqueeze(1), med_v], dim=1)  # (B, V, d)
        r = self.recency_term(vmask)
        if r is not None:
            diag_v, proc_v, med_v = diag_v + r, proc_v + r, med_v + r
        pooled = [masked_mean(self.visit_enc(s, vmask), vmask) for s in (diag_v, proc_v, med_v)]  # 3 × (B, d)
        u = torch.cat(pooled, dim=-1)  # (B, 3d)
        z = self.fc1(F.relu(u))  # (B, head_hidden)
        logits = self.fc2(F.relu(z))  # (B, M)
        return StudentOutput(logits=logits, z=z, profile=prof)

    def probs(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Drug probabilities (B, M): the scoring interface shared with the baselines."""
        return torch.sigmoid(self(batch).logits)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


class DistillHeads(nn.Module):
    """Trainable parts of the distillation losses, kept outside `StudentModel` (reference §4.3):
    `kd_projector` Linear(head_hidden → teacher_dim) when teacher_dim is given; `x_proj` (target-medication
    set) and `y_proj` (profile) Linear(d → d) when align is True."""

    def __init__(self, config: StudentConfig, teacher_dim: int | None = None, align: bool = False) -> None:
        super().__init__()
        d = config.hidden
        self.kd_projector = nn.Linear(config.head_hidden, teacher_dim) if teacher_dim else None
        self.x_proj = nn.Linear(d, d) if align else None
        self.y_proj = nn.Linear(d, d) if align else None
