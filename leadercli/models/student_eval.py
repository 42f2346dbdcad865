"""The student's inference path (CPU speed; `leader predict`, validation, reports): `StudentModel.forward` in
eval mode with the sets packed, the same logits as the reference path to float rounding (about 1e-7).

- Sets are packed (`Packed`): only real codes are computed, sets of one length run attention together without
  a mask or padding; positions inside a set do not matter (no position encoding; attention, the feed-forward and
  the mean treat a set as a multiset).
- The first block's layer norm and Q/K/V projection depend on the code alone, so they are looked up per code
  (`_qkv_table`), and a set of one code is looked up whole (`_single_table`); both cached until a weight changes.
- The last feed-forward's second linear is applied to the mean of its input (`_block_means`).
- Linear layers go through oneDNN when `onednn` is on (`models/onednn.py`: 2-5× MKL's speed on AMD CPUs).

`StudentModel.forward` calls `forward` here in eval mode, once; deleting this module means deleting that call
site (the reference path then runs in eval mode too, dropout off).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from leadercli.models.onednn import eval_linear, eval_linear_sums

TOKEN_CHUNK = 16384  # positions (codes or visits) of the sets encoded together, about (see `Packed.chunks`)
Groups = list[tuple[int, int]]  # [(set length L, number of sets n)], in packing order


@dataclass
class Packed:
    """The non-empty sets of a padded (N, S) mask laid end to end, shortest first.

    Only the real positions are kept, in row-major order: set i of `rows` holds positions
    `index[starts[i] : starts[i] + lens[i]]` of the flat (N·S) layout. Sets of one length are contiguous, so
    attention runs per length without any mask or padding (`groups`)."""

    rows: torch.Tensor  # (n,) int64 the non-empty sets, by length (stable)
    lens: torch.Tensor  # (n,) int64 their real positions
    index: torch.Tensor  # (T,) int64 flat position (row · S + slot) of every real position, set after set

    @staticmethod
    def of(mask: torch.Tensor) -> Packed:
        """mask (N, S) bool → the packing of its non-empty rows."""
        S = mask.shape[-1]
        count = mask.sum(-1)  # (N,)
        rows = count.nonzero().squeeze(1)  # (n,)
        lens = count[rows]
        if rows.numel() > 1:
            order = lens.argsort(stable=True)
            rows, lens = rows[order], lens[order]
        slot = mask[rows].nonzero()  # (T, 2) (set, slot), row-major: set after set
        return Packed(rows, lens, rows[slot[:, 0]] * S + slot[:, 1])

    def chunks(self, budget: int = TOKEN_CHUNK) -> list[tuple[int, int, int, int, Groups]]:
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


def pooled_sum(x: torch.Tensor, groups: Groups) -> torch.Tensor:
    """Packed positions x (T, d) of sets grouped by length [(L, n)] → the sum over each set's positions."""
    out = x.new_empty(sum(n for _, n in groups), x.shape[-1])  # (sets, d)
    i = t = 0
    for L, n in groups:
        torch.sum(x[t : t + n * L].view(n, L, -1), 1, out=out[i : i + n])
        i, t = i + n, t + n * L
    return out


def _attention(
    att, x: torch.Tensor | None, groups: Groups, qkv: torch.Tensor | None, onednn: bool
) -> torch.Tensor:
    """`SelfAttention` att over packed sets: x (T, d) their positions end to end, or `qkv` (T, 3d) given (then x is
    not read). Each length runs the fused kernel without a mask (no padding); a set of one position attends to
    itself alone, so its output is its value (no Q/K computed for it). → (T, d)"""
    d = att.q.weight.shape[0]
    h, dk = att.heads, d // att.heads
    one = groups[0][1] if groups[0][0] == 1 else 0  # sets of one position come first
    if qkv is None:
        qkv = eval_linear(x[one:], att.qkv_weight(), None, onednn=onednn)  # (T - one, 3d), the longer sets
        y = qkv.new_empty(one + qkv.shape[0], d)  # (T, d)
        y[:one] = eval_linear(x[:one], att.v.weight, None, onednn=onednn)
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
    return eval_linear(y, att.out.weight, att.out.bias, onednn=onednn)  # (T, d)


def _ffn(ffn, x: torch.Tensor, onednn: bool) -> torch.Tensor:
    """`FeedForward` without dropout; Linear + GELU as one oneDNN call where there is one."""
    hidden = eval_linear(x, ffn.w1.weight, ffn.w1.bias, gelu=True, onednn=onednn)
    return eval_linear(hidden, ffn.w2.weight, ffn.w2.bias, onednn=onednn)


def _block(blk, x: torch.Tensor, groups: Groups, qkv: torch.Tensor | None, onednn: bool) -> torch.Tensor:
    """`TransformerBlock` blk on packed sets: x (T, d) → (T, d); every position is real, so the feed-forward
    runs on all of them. `qkv`: the attention's Q/K/V of `ln1(x)`, when known already."""
    x = x + _attention(blk.attn, blk.ln1(x) if qkv is None else None, groups, qkv, onednn)  # (T, d)
    return x + _ffn(blk.ffn, blk.ln2(x), onednn)  # (T, d)


def _block_means(
    blk, x: torch.Tensor, groups: Groups, qkv: torch.Tensor | None, onednn: bool
) -> torch.Tensor:
    """`_block` followed by the mean over each set's positions (n, d), with the feed-forward's second linear
    applied to the mean of its input (the mean of a linear map is the map of the mean): its hidden layer is
    summed per set as it is computed (`eval_linear_sums`), never kept for every position."""
    x = x + _attention(blk.attn, blk.ln1(x) if qkv is None else None, groups, qkv, onednn)  # (T, d)
    z = blk.ln2(x)  # (T, d)
    ffn, n_sets = blk.ffn, sum(n for _, n in groups)
    hidden = z.new_empty(n_sets, ffn.w1.weight.shape[0])  # (n, ff) sums over each set
    i = t = 0
    for L, n in groups:
        eval_linear_sums(
            z[t : t + n * L], ffn.w1.weight, ffn.w1.bias, L, gelu=True, out=hidden[i : i + n], onednn=onednn
        )
        i, t = i + n, t + n * L
    lens = torch.tensor([float(L) for L, _ in groups], dtype=x.dtype, device=x.device).repeat_interleave(
        torch.tensor([n for _, n in groups], device=x.device)
    )  # (n,) positions of each set
    sums = pooled_sum(x, groups).add_(eval_linear(hidden, ffn.w2.weight, None, onednn=onednn))  # (n, d)
    return sums.div_(lens[:, None]).add_(ffn.w2.bias)  # (n, d) means


def _stack(enc, x: torch.Tensor, groups: Groups, qkv: torch.Tensor | None, onednn: bool) -> torch.Tensor:
    """`Stack` enc on packed sets: x (T, d) → (T, d); `qkv`: the first block's Q/K/V."""
    for i, block in enumerate(enc.blocks):
        x = _block(block, x, groups, qkv if i == 0 else None, onednn)
    return x


def _stack_means(
    enc, x: torch.Tensor, groups: Groups, qkv: torch.Tensor | None, onednn: bool
) -> torch.Tensor:
    """`_stack`, then the mean over each set's positions (n, d) (`_block_means`)."""
    *head, last = enc.blocks
    for i, block in enumerate(head):
        x = _block(block, x, groups, qkv if i == 0 else None, onednn)
    return _block_means(last, x, groups, qkv if not head else None, onednn)


def encode_sets(model, ids: torch.Tensor, enc, onednn: bool = True) -> torch.Tensor:
    """`StudentModel.encode_sets` in eval mode with the sets packed: code sets (..., S) → (..., d)."""
    lead, S = ids.shape[:-1], ids.shape[-1]
    flat = ids.reshape(-1, S)  # (N, S)
    pk = Packed.of(flat > 0)
    codes = flat.reshape(-1)[pk.index]  # (T,) the real codes, set after set
    out = model.fc1.weight.new_zeros(flat.shape[0], model.config.hidden)  # (N, d), the model's device
    table, single = _qkv_table(model, enc), _single_table(model, enc, onednn)  # (vocab, 3d), (vocab, d)
    for s0, s1, t0, t1, groups in pk.chunks():
        if groups[0][0] == 1:  # sets of one code: the encoder's output is the code's own
            n = groups[0][1]
            out[pk.rows[s0 : s0 + n]] = single[codes[t0 : t0 + n]]
            s0, t0, groups = s0 + n, t0 + n, groups[1:]
        if not groups:
            continue
        c = codes[t0:t1]  # (t,)
        out[pk.rows[s0:s1]] = _stack_means(
            enc, model.embed(c), groups, F.embedding(c, table), onednn
        )  # (n, d)
    return out.reshape(*lead, model.config.hidden)  # (..., d)


def _cached(model, name: str, enc, params: tuple[torch.Tensor, ...], make, extra=()) -> torch.Tensor:
    """`make()` for `enc`, kept on the model until one of `params` changes (every in-place update bumps a
    tensor's version) or `extra` does."""
    key = (tuple((p.data_ptr(), p._version) for p in params), extra)
    cache = model.__dict__.setdefault(name, {})
    hit = cache.get(id(enc))
    if hit is None or hit[0] != key:
        with torch.no_grad():
            table = make()
        cache[id(enc)] = hit = (key, table)
    return hit[1]


def _code_sources(model) -> tuple[tuple[torch.Tensor, ...], tuple]:
    """What the code table `model.embed.weight` is made of, for the caches: the `nn.Embedding`'s weight, or a
    title-reading embedding's sources and growth key (`models/code_text.py`: its table is computed, with rows
    added at prediction)."""
    e = model.embed
    return (e.sources(), (e.grown,)) if hasattr(e, "sources") else ((e.weight,), ())


def _single_table(model, enc, onednn: bool) -> torch.Tensor:
    """The encoding of the set {code} for every code (vocab, d): the stack on one position depends on the code
    alone (its attention output is its value), so sets of one code are looked up."""
    src, grown = _code_sources(model)
    params = (*src, *enc.parameters())
    table = _qkv_table(model, enc)

    def make() -> torch.Tensor:
        w = model.embed.weight  # (vocab, d)
        return _stack(enc, w, [(1, w.shape[0])], table, onednn)

    return _cached(model, "_single_cache", enc, params, make, extra=(onednn, *grown))


def _qkv_table(model, enc) -> torch.Tensor:
    """The first block's attention Q/K/V of every code, `q/k/v(ln1(embed(code)))` (vocab, 3d): the first block's
    input is the code embedding, so its layer norm and Q/K/V projection depend on the code alone (a quarter of
    the set encoder's multiply-adds)."""
    block = enc.blocks[0]
    src, grown = _code_sources(model)
    params = (*src, block.ln1.weight, block.ln1.bias, *block.attn.qkv_weight_parts())
    make = lambda: F.linear(block.ln1(model.embed.weight), block.attn.qkv_weight())  # noqa: E731
    return _cached(model, "_qkv_cache", enc, params, make, extra=grown)


def encode_visits(model, streams: torch.Tensor, vmask: torch.Tensor, onednn: bool) -> torch.Tensor:
    """The visit encoder on the three streams (B, 3, V, d) of visit vectors, packed (all streams share the
    encoder and the visit mask (B, V)) → the masked means (B, 3d), streams in order (also used by
    `models/student_occlusion.py`)."""
    B, K, V, d = streams.shape
    pk = Packed.of(vmask[:, None, :].expand(B, K, V).reshape(B * K, V))
    x = streams.reshape(-1, d)  # (B·K·V, d)
    out = x.new_zeros(B * K, d)  # a patient without visits pools to zeros, as masked_mean gives
    for s0, s1, t0, t1, groups in pk.chunks():
        out[pk.rows[s0:s1]] = _stack_means(
            model.visit_enc, x[pk.index[t0:t1]], groups, None, onednn
        )  # (n, d)
    return out.view(B, K * d)


def forward(model, batch: dict[str, torch.Tensor], onednn: bool = True) -> tuple[torch.Tensor, ...]:
    """`StudentModel.forward` in eval mode → (logits (B, M), z (B, h), profile (B, d)), the fields of
    `StudentOutput`."""
    vmask = batch["visit_mask"].bool()  # (B, V)
    diag_v = encode_sets(model, batch["diag"], model.diag_enc, onednn)  # (B, V, d)
    proc_v = encode_sets(model, batch["proc"], model.proc_enc, onednn)  # (B, V, d)
    hist = batch["med"][:, :-1] * vmask[:, 1:].unsqueeze(-1)  # (B, V-1, Sm), the history drugs
    med_v = encode_sets(model, hist, model.med_enc, onednn)  # (B, V-1, d)
    pe = model.profile_enc
    parts = [emb(batch["profile"][:, i]) for i, emb in enumerate(pe.embeds)]  # F × (B, d)
    prof = eval_linear(torch.cat(parts, dim=-1), pe.proj.weight, pe.proj.bias, onednn=onednn)  # (B, d)
    med_v = torch.cat([prof.unsqueeze(1), med_v], dim=1)  # (B, V, d)
    r = model.recency_term(vmask)  # as StudentModel.forward
    if r is not None:
        diag_v, proc_v, med_v = diag_v + r, proc_v + r, med_v + r
    u = encode_visits(model, torch.stack([diag_v, proc_v, med_v], dim=1), vmask, onednn)  # (B, 3d)
    z = eval_linear(F.relu(u), model.fc1.weight, model.fc1.bias, onednn=onednn)  # (B, head_hidden)
    logits = eval_linear(F.relu(z), model.fc2.weight, model.fc2.bias, onednn=onednn)  # (B, M)
    return logits, z, prof
