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
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from leadercli.models import student_train
from leadercli.models.config_checks import check_heads
from leadercli.models.onednn import eval_linear, eval_linear_sums

NEG_INF = -1e9  # finite "minus infinity" for masked attention scores
SET_CHUNK = 1024  # sets encoded together at most (training, and eval of sets given as a padded tensor)
TOKEN_CHUNK = 16384  # eval: positions (codes or visits) of the sets encoded together, about (see `_Packed`)


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of x (..., S, d) over the positions where mask (..., S) is True; zeros when none is."""
    m = mask.unsqueeze(-1).to(x.dtype)  # (..., S, 1)
    return (x * m).sum(-2) / m.sum(-2).clamp(min=1.0)  # (..., d)


@dataclass
class _Packed:
    """Eval: the non-empty sets of a padded (N, S) mask laid end to end, shortest first.

    Positions inside a set do not matter (no position encoding; attention, the feed-forward and the mean
    treat a set as a multiset), so only the real positions are kept, in row-major order: set i of `rows`
    holds positions `index[starts[i] : starts[i] + lens[i]]` of the flat (N·S) layout. Sets of one length
    are contiguous, so attention runs per length without any mask or padding (`groups`)."""

    rows: torch.Tensor  # (n,) int64 the non-empty sets, by length (stable)
    lens: torch.Tensor  # (n,) int64 their real positions
    index: torch.Tensor  # (T,) int64 flat position (row · S + slot) of every real position, set after set

    @staticmethod
    def of(mask: torch.Tensor) -> _Packed:
        """mask (N, S) bool → the packing of its non-empty rows."""
        S = mask.shape[-1]
        count = mask.sum(-1)  # (N,)
        rows = count.nonzero().squeeze(1)  # (n,)
        lens = count[rows]
        if rows.numel() > 1:
            order = lens.argsort(stable=True)
            rows, lens = rows[order], lens[order]
        slot = mask[rows].nonzero()  # (T, 2) (set, slot), row-major: set after set
        return _Packed(rows, lens, rows[slot[:, 0]] * S + slot[:, 1])

    def chunks(self, budget: int = TOKEN_CHUNK) -> list[tuple[int, int, int, int, list[tuple[int, int]]]]:
        """(first set, end set, first position, end position, [(length, sets)]) of consecutive sets holding
        about `budget` positions each (sets starting in the same window of `budget` positions)."""
        if not self.rows.numel():
            return []
        ends = self.lens.cumsum(0)  # (n,)
        window = (ends - self.lens) // budget  # (n,) chunk of each set
        _, per_chunk = torch.unique_consecutive(window, return_counts=True)
        out = []
        s0 = t0 = 0
        for n in per_chunk.tolist():
            s1 = s0 + n
            t1 = int(ends[s1 - 1])
            length, count = torch.unique_consecutive(self.lens[s0:s1], return_counts=True)
            out.append((s0, s1, t0, t1, list(zip(length.tolist(), count.tolist(), strict=True))))
            s0, t0 = s1, t1
        return out


def pooled_sum(x: torch.Tensor, groups: list[tuple[int, int]]) -> torch.Tensor:
    """Packed positions x (T, d) of sets grouped by length [(L, n)] → the sum over each set's positions."""
    out = x.new_empty(sum(n for _, n in groups), x.shape[-1])  # (sets, d)
    i = t = 0
    for L, n in groups:
        torch.sum(x[t : t + n * L].view(n, L, -1), 1, out=out[i : i + n])
        i, t = i + n, t + n * L
    return out


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

    def forward(
        self, x: torch.Tensor, key_mask: torch.Tensor, qkv: torch.Tensor | None = None
    ) -> torch.Tensor:
        n, s, d = x.shape  # (N, S, d)
        h, dk = self.heads, d // self.heads
        if not self.training:
            # inference: one Q/K/V matmul (or `qkv` looked up per code, see StudentModel.encode_sets), the
            # fused attention kernel and oneDNN linears (`eval_linear`); the additive −1e9 on masked keys
            # equals masked_fill(−1e9) (an all-masked row stays finite, uniform); no dropout in eval
            if s == 1:  # one key: its softmax weight is exactly 1, masked or not
                v = eval_linear(x, self.v.weight, None) if qkv is None else qkv[..., 2 * d :]
                return eval_linear(v, self.out.weight, self.out.bias)  # (N, 1, d)
            if qkv is None:
                qkv = eval_linear(x, self.qkv_weight(), None)  # (N, S, 3d)
            q, k, v = qkv.view(n, s, 3, h, dk).permute(2, 0, 3, 1, 4)  # 3 × (N, h, S, dk), views
            bias = torch.zeros(n, 1, 1, s, dtype=q.dtype, device=x.device)  # (N, 1, 1, S)
            bias.masked_fill_(~key_mask[:, None, None, :], max(NEG_INF, torch.finfo(q.dtype).min))
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)  # (N, h, S, dk)
            y = y.transpose(1, 2).reshape(n, s, d)  # (N, S, d)
            return eval_linear(y, self.out.weight, self.out.bias)  # (N, S, d)
        q, k, v = (
            lin(x).view(n, s, h, dk).transpose(1, 2) for lin in (self.q, self.k, self.v)
        )  # (N, h, S, dk)
        scores = q @ k.transpose(-2, -1) / math.sqrt(dk)  # (N, h, S, S)
        scores = scores.masked_fill(~key_mask[:, None, None, :], NEG_INF)  # (N, h, S, S)
        att = self.drop(scores.softmax(-1))  # (N, h, S, S)
        y = (att @ v).transpose(1, 2).reshape(n, s, d)  # (N, S, d)
        return self.out(y)

    def packed(
        self, x: torch.Tensor | None, groups: list[tuple[int, int]], qkv: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Eval: attention over packed sets (`_Packed`): x (T, d) their positions end to end, `groups` [(L, n)]
        n sets of L positions each, in that order, or `qkv` (T, 3d) given (then x is not read). Each length
        runs the fused kernel without a mask (no padding); a set of one position attends to itself alone, so
        its output is its value (no Q/K computed for it). → (T, d)"""
        d = self.q.weight.shape[0]
        h, dk = self.heads, d // self.heads
        one = groups[0][1] if groups[0][0] == 1 else 0  # sets of one position come first
        if qkv is None:
            qkv = eval_linear(x[one:], self.qkv_weight(), None)  # (T - one, 3d), of the longer sets
            y = qkv.new_empty(one + qkv.shape[0], d)  # (T, d)
            y[:one] = eval_linear(x[:one], self.v.weight, None)
            t = 0  # positions of the longer sets in qkv
        else:
            y = qkv.new_empty(qkv.shape[0], d)  # (T, d)
            y[:one] = qkv[:one, 2 * d :]
            t = one
        u = one  # positions in y
        for L, n in groups[1 if one else 0 :]:
            q, k, v = qkv[t : t + n * L].view(n, L, 3, h, dk).permute(2, 0, 3, 1, 4)  # 3 × (n, h, L, dk)
            o = F.scaled_dot_product_attention(q, k, v)  # (n, h, L, dk)
            y[u : u + n * L].view(n, L, h, dk).copy_(o.transpose(1, 2))
            t, u = t + n * L, u + n * L
        return eval_linear(y, self.out.weight, self.out.bias)  # (T, d)


class FeedForward(nn.Module):
    """Linear(d→ff) → tanh-GELU → Dropout → Linear(ff→d)."""

    def __init__(self, d: int, ff: int, dropout: float) -> None:
        super().__init__()
        self.w1 = nn.Linear(d, ff)
        self.w2 = nn.Linear(ff, d)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:  # no dropout; Linear + GELU as one oneDNN call where there is one
            return eval_linear(
                eval_linear(x, self.w1.weight, self.w1.bias, gelu=True), self.w2.weight, self.w2.bias
            )
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

    def forward(
        self, x: torch.Tensor, key_mask: torch.Tensor, qkv: torch.Tensor | None = None
    ) -> torch.Tensor:
        """`qkv` (eval only): the attention's Q/K/V of `ln1(x)`, when the caller has them already."""
        shape = x.shape  # (..., S, d)
        x = x.reshape(-1, shape[-2], shape[-1])  # (N, S, d)
        m = key_mask.reshape(-1, shape[-2])  # (N, S)
        a = self.attn(self.ln1(x), m) if qkv is None else self.attn(x, m, qkv.reshape(*x.shape[:2], -1))
        x = x + self.drop1(a)  # (N, S, d)
        # the feed-forward runs on real positions only (padding outputs are never read: keys are masked and
        # pooling is masked), which saves most of the work on padded batches
        real = x[m]  # (n_real, d)
        x = x.index_put((m,), real + self.drop2(self.ffn(self.ln2(real))))  # (N, S, d)
        return self.drop_out(x).reshape(shape)  # (..., S, d)

    def packed(
        self, x: torch.Tensor, groups: list[tuple[int, int]], qkv: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Eval: `forward` on packed sets (`_Packed`, `SelfAttention.packed`): x (T, d) → (T, d); every position
        is real, so the feed-forward runs on all of them (no dropout in eval)."""
        x = x + self.attn.packed(self.ln1(x) if qkv is None else None, groups, qkv)  # (T, d)
        return x + self.ffn(self.ln2(x))  # (T, d)

    def packed_means(
        self, x: torch.Tensor, groups: list[tuple[int, int]], qkv: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Eval: `packed` followed by the mean over each set's positions (n, d), with the feed-forward's second
        linear applied to the mean of its input (the mean of a linear map is the map of the mean): its hidden
        layer is summed per set as it is computed (`eval_linear_sums`), never kept for every position."""
        x = x + self.attn.packed(self.ln1(x) if qkv is None else None, groups, qkv)  # (T, d)
        z = self.ln2(x)  # (T, d)
        ffn, n_sets = self.ffn, sum(n for _, n in groups)
        hidden = z.new_empty(n_sets, ffn.w1.weight.shape[0])  # (n, ff) sums over each set
        i = t = 0
        for L, n in groups:
            eval_linear_sums(
                z[t : t + n * L], ffn.w1.weight, ffn.w1.bias, L, gelu=True, out=hidden[i : i + n]
            )
            i, t = i + n, t + n * L
        lens = torch.tensor([float(L) for L, _ in groups], dtype=x.dtype, device=x.device).repeat_interleave(
            torch.tensor([n for _, n in groups], device=x.device)
        )  # (n,) positions of each set
        sums = pooled_sum(x, groups).add_(eval_linear(hidden, ffn.w2.weight, None))  # (n, d)
        return sums.div_(lens[:, None]).add_(ffn.w2.bias)  # (n, d) means


class Stack(nn.Module):
    """`layers` TransformerBlocks applied in turn with the same key mask."""

    def __init__(self, layers: int, *args) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(TransformerBlock(*args) for _ in range(layers))

    def forward(
        self, x: torch.Tensor, key_mask: torch.Tensor, qkv: torch.Tensor | None = None
    ) -> torch.Tensor:
        """`qkv`: the first block's attention Q/K/V (eval only, `TransformerBlock.forward`)."""
        for i, block in enumerate(self.blocks):
            x = block(x, key_mask, qkv if i == 0 else None)
        return x

    def packed(
        self, x: torch.Tensor, groups: list[tuple[int, int]], qkv: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Eval: `forward` on packed sets (`TransformerBlock.packed`): x (T, d) → (T, d)."""
        for i, block in enumerate(self.blocks):
            x = block.packed(x, groups, qkv if i == 0 else None)
        return x

    def packed_means(
        self, x: torch.Tensor, groups: list[tuple[int, int]], qkv: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Eval: `packed`, then the mean over each set's positions (n, d) (`TransformerBlock.packed_means`)."""
        *head, last = self.blocks
        for i, block in enumerate(head):
            x = block.packed(x, groups, qkv if i == 0 else None)
        return last.packed_means(x, groups, qkv if not head else None)


class ProfileEncoder(nn.Module):
    """One embedding per profile field → concat (B, F·d) → ONE Linear(F·d → d)."""

    def __init__(self, sizes: list[int], d: int) -> None:
        super().__init__()
        self.embeds = nn.ModuleList(nn.Embedding(n, d) for n in sizes)
        self.proj = nn.Linear(len(sizes) * d, d)

    def forward(self, profile: torch.Tensor) -> torch.Tensor:
        parts = [emb(profile[:, i]) for i, emb in enumerate(self.embeds)]  # F × (B, d)
        if not self.training:
            return eval_linear(torch.cat(parts, dim=-1), self.proj.weight, self.proj.bias)  # (B, d)
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

    def __post_init__(self) -> None:
        if not self.profile_sizes:
            raise ValueError("profile_sizes needs at least one field")
        check_heads(self.hidden, self.heads)


@dataclass
class StudentOutput:
    logits: torch.Tensor  # (B, M)
    z: torch.Tensor  # (B, head_hidden) Linear1(ReLU(u)), before the head's second ReLU
    profile: torch.Tensor  # (B, d) the profile pseudo-visit vector


class StudentModel(nn.Module):
    NEG_INF = NEG_INF  # for the speed paths, which do not import this module
    SET_CHUNK = SET_CHUNK

    def __init__(self, config: StudentConfig) -> None:
        super().__init__()
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

    def encode_sets(self, ids: torch.Tensor, enc: Stack) -> torch.Tensor:
        """Code sets (..., S) → one vector each (..., d): embed, set block, masked mean over codes.

        Only non-empty sets are encoded (padding visits cost nothing; an empty set is the zero vector, as the
        masked mean of an all-PAD set would be), and large inputs are encoded in chunks of similar length,
        each cut to its own longest set, so one long set does not pad thousands of short ones. In eval the sets
        are packed instead (`_encode_packed`)."""
        if not self.training:
            return self._encode_packed(ids, enc)
        lead, S = ids.shape[:-1], ids.shape[-1]
        flat = ids.reshape(-1, S)  # (N, S)
        mask = flat > 0  # (N, S)
        extent = (mask * torch.arange(1, S + 1, device=ids.device)).amax(-1)  # (N,) last real position + 1
        out = torch.zeros(flat.shape[0], self.config.hidden, device=ids.device, dtype=self.embed.weight.dtype)
        rows = extent.nonzero().squeeze(1)  # (n,) non-empty sets
        if rows.numel() > SET_CHUNK:
            rows = rows[extent[rows].argsort(stable=True)]  # similar lengths together
        for chunk in rows.split(SET_CHUNK) if rows.numel() else ():
            L = int(extent[chunk].max())
            sub, m = flat[chunk, :L], mask[chunk, :L]  # (n, L)
            out[chunk] = masked_mean(enc(self.embed(sub), m), m)  # (n, d)
        return out.reshape(*lead, self.config.hidden)  # (..., d)

    def _encode_packed(self, ids: torch.Tensor, enc: Stack) -> torch.Tensor:
        """Eval: `encode_sets` with the sets packed (`_Packed`): only real codes are computed, each length's
        attention without a mask, the first block's Q/K/V looked up per code (`_qkv_table`) and a set of one
        code looked up whole (`_single_table`)."""
        lead, S = ids.shape[:-1], ids.shape[-1]
        flat = ids.reshape(-1, S)  # (N, S)
        pk = _Packed.of(flat > 0)
        codes = flat.reshape(-1)[pk.index]  # (T,) the real codes, set after set
        out = self.embed.weight.new_zeros(flat.shape[0], self.config.hidden)  # (N, d), the model's device
        table, single = self._qkv_table(enc), self._single_table(enc)  # (vocab, 3d), (vocab, d)
        for s0, s1, t0, t1, groups in pk.chunks():
            if groups[0][0] == 1:  # sets of one code: the encoder's output is the code's own
                n = groups[0][1]
                out[pk.rows[s0 : s0 + n]] = single[codes[t0 : t0 + n]]
                s0, t0, groups = s0 + n, t0 + n, groups[1:]
            if not groups:
                continue
            c = codes[t0:t1]  # (t,)
            out[pk.rows[s0:s1]] = enc.packed_means(self.embed(c), groups, F.embedding(c, table))  # (n, d)
        return out.reshape(*lead, self.config.hidden)  # (..., d)

    def _cached(self, name: str, enc: Stack, params: tuple[torch.Tensor, ...], make) -> torch.Tensor:
        """`make()` for `enc`, cached until one of `params` changes (every in-place update bumps a tensor's
        version)."""
        key = tuple((p.data_ptr(), p._version) for p in params)
        cache = self.__dict__.setdefault(name, {})
        hit = cache.get(id(enc))
        if hit is None or hit[0] != key:
            with torch.no_grad():
                table = make()
            cache[id(enc)] = hit = (key, table)
        return hit[1]

    def _single_table(self, enc: Stack) -> torch.Tensor:
        """Eval: the encoding of the set {code} for every code (vocab, d): the stack on one position depends on
        the code alone (its attention output is its value), so sets of one code are looked up."""
        params = (self.embed.weight, *enc.parameters())
        table = self._qkv_table(enc)
        n = self.embed.weight.shape[0]
        return self._cached(
            "_single_cache", enc, params, lambda: enc.packed(self.embed.weight, [(1, n)], table)
        )

    def _qkv_table(self, enc: Stack) -> torch.Tensor:
        """Eval: the first block's attention Q/K/V of every code, `q/k/v(ln1(embed(code)))` (vocab, 3d).

        The first block's input is the code embedding, so its layer norm and Q/K/V projection depend on the
        code alone: looked up per position instead of computed per position (a quarter of the set encoder's
        multiply-adds). Cached until a weight changes."""
        block = enc.blocks[0]
        params = (self.embed.weight, block.ln1.weight, block.ln1.bias, *block.attn.qkv_weight_parts())
        return self._cached(
            "_qkv_cache",
            enc,
            params,
            lambda: F.linear(block.ln1(self.embed.weight), block.attn.qkv_weight()),  # (vocab, 3d)
        )

    def encode_med_set(self, ids: torch.Tensor) -> torch.Tensor:
        """One medication set per sample (B, S) → (B, d) with the medication set encoder (alignment)."""
        return self.encode_sets(ids, self.med_enc)

    def forward(self, batch: dict[str, torch.Tensor]) -> StudentOutput:
        if self.training and student_train.PACKED in batch:  # packed by the batch thread: fewer, larger ops
            return StudentOutput(*student_train.forward(self, batch))
        vmask = batch["visit_mask"].bool()  # (B, V)
        diag_v = self.encode_sets(batch["diag"], self.diag_enc)  # (B, V, d)
        proc_v = self.encode_sets(batch["proc"], self.proc_enc)  # (B, V, d)
        # only drugs of visits that have a later real visit are history: the target's drugs never enter
        hist = batch["med"][:, :-1] * vmask[:, 1:].unsqueeze(-1)  # (B, V-1, Sm)
        med_v = self.encode_sets(hist, self.med_enc)  # (B, V-1, d)
        prof = self.profile_enc(batch["profile"])  # (B, d)
        # position 0 = profile pseudo-visit, position t = meds of visit t-1
        med_v = torch.cat([prof.unsqueeze(1), med_v], dim=1)  # (B, V, d)
        if self.recency is not None:  # visits are left-aligned: real position t is n − 1 − t visits back
            pos = torch.arange(vmask.shape[1], device=vmask.device)  # (V,)
            back = (vmask.sum(1, keepdim=True) - 1 - pos).clamp(0, self.config.recency - 1)  # (B, V)
            r = self.recency(back) * vmask.unsqueeze(-1)  # (B, V, d), zero on padding visits
            diag_v, proc_v, med_v = diag_v + r, proc_v + r, med_v + r
        if not self.training:
            u = self._encode_visits(torch.stack([diag_v, proc_v, med_v], dim=1), vmask)  # (B, 3d)
            z = eval_linear(F.relu(u), self.fc1.weight, self.fc1.bias)  # (B, head_hidden)
            logits = eval_linear(F.relu(z), self.fc2.weight, self.fc2.bias)  # (B, M)
            return StudentOutput(logits=logits, z=z, profile=prof)
        pooled = [masked_mean(self.visit_enc(s, vmask), vmask) for s in (diag_v, proc_v, med_v)]  # 3 × (B, d)
        u = torch.cat(pooled, dim=-1)  # (B, 3d)
        z = self.fc1(F.relu(u))  # (B, head_hidden)
        logits = self.fc2(F.relu(z))  # (B, M)
        return StudentOutput(logits=logits, z=z, profile=prof)

    def _encode_visits(self, streams: torch.Tensor, vmask: torch.Tensor) -> torch.Tensor:
        """Eval: the visit encoder on the three streams (B, 3, V, d) of visit vectors, packed (`_Packed`; all
        streams share the encoder and the visit mask (B, V)) → the masked means (B, 3d), streams in order."""
        B, K, V, d = streams.shape
        pk = _Packed.of(vmask[:, None, :].expand(B, K, V).reshape(B * K, V))
        x = streams.reshape(-1, d)  # (B·K·V, d)
        out = x.new_zeros(B * K, d)  # a patient without visits pools to zeros, as masked_mean gives
        for s0, s1, t0, t1, groups in pk.chunks():
            out[pk.rows[s0:s1]] = self.visit_enc.packed_means(x[pk.index[t0:t1]], groups)  # (n, d)
        return out.view(B, K * d)

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
