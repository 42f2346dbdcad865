"""The student's training forward with fewer, larger tensor ops (CPU speed; issue 21): the same model, the same
dropout masks and the same forward values as `StudentModel.forward` in training mode, to float rounding.

A training step of 16 patients costs about 1,500 small tensor ops, and on CPU the time goes on per-op overhead,
not arithmetic. Here:
- the batch thread (`training/batches.py`) packs each code kind once (`prepare`): the real codes of the
  non-empty sets in row-major order, their slots in the padded (sets, length) layout, the key masks and counts,
  and draws the step's dropout masks (torch's own, `models/torch_masks.py`) already cut to what is used;
- all codes are embedded in one lookup; layer norms, projections and the feed-forward run on real codes only
  (one Q/K/V matmul); attention alone runs padded (one batched matmul, masked keys, as the reference);
- the visit encoder runs once on the three streams stacked, not three times (GELU per stream: its vector
  kernel and its scalar tail round differently).

Every value is computed by the same formula from the same inputs; what can differ is rounding: MKL's matmul
gives a row the same result whatever the other rows for most row counts, not all (small ones take other
kernels), and the weight gradients sum the same terms in another order (over real codes only, over the three
visit streams at once). On the 21k set's batches the forward values were bit-identical; on tiny test shapes
they differ by about 1e-7 (`tests/models/test_fast_training.py`). The pinned demo run is unchanged.

`StudentModel.forward` calls `forward` here when the batch holds the packed keys (`PACKED`), so deleting this
module means deleting that call site and the batch thread's call of `prepare`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

KINDS = ("diag", "proc", "med")  # the three code streams, in the reference's order
PACKED = "packed.visit.pos"  # a batch with this key was packed by `prepare`
_PACK_KEYS = ("rows", "pos", "keyoff", "count", "codes")  # per kind, as `_pack` returns them
_DROPS = ("attn", "drop1", "ffn", "drop2", "out")  # a block's dropouts, in the reference's draw order
Plan = list[tuple[tuple[int, ...], float]]  # (mask shape, dropout rate), in draw order


def prepare(model, batch: dict[str, torch.Tensor], stream, align: bool = False) -> list[torch.Tensor]:
    """Add the packed inputs and the masks of `forward` to `batch` (CPU), drawing the masks from `stream`
    (`TorchStream`) in the reference's order. Returns the masks that the dropout modules take after the forward
    (the alignment's `encode_med_set` when `align`). A batch with more than `model.SET_CHUNK` sets of one kind is left
    as it is, and its masks are all returned for the reference forward. `model`: a `StudentModel` (its config
    and chunk size; nothing is computed with it)."""
    c = model.config
    vmask = batch["visit_mask"].bool()  # (B, V)
    hist = batch["med"][:, :-1] * vmask[:, 1:].unsqueeze(-1)  # (B, V-1, Sm), the history drugs
    packs = {k: _pack(ids) for k, ids in zip(KINDS, (batch["diag"], batch["proc"], hist), strict=True)}
    if any(p is not None and p[0].numel() > model.SET_CHUNK for p in packs.values()):
        return [stream.noise(shape, p) for shape, p in dropout_plan(model, batch, align)]
    for k, pk in packs.items():
        if pk is None:
            continue
        rows, pos, keyoff, count, codes = pk
        batch.update({f"packed.{k}.{n}": t for n, t in zip(_PACK_KEYS, pk, strict=True)})
        N, L, T = len(rows), keyoff.shape[-1], len(codes)
        for layer in range(c.layers):
            _masks(batch, f"{k}.{layer}", [_draw(c, stream, N, L, T)], pos)
    B, V = vmask.shape
    real = vmask.reshape(1, B * V).expand(3, B * V).reshape(-1)  # (3·B·V,) the streams stacked
    pos = real.nonzero().squeeze(1)  # (3n,)
    batch["packed.visit.keyoff"] = ~vmask.repeat(3, 1)[:, None, None, :]  # (3B, 1, 1, V)
    batch["packed.visit.count"] = vmask.sum(1, keepdim=True).to(torch.float32).clamp(min=1.0).repeat(3, 1)
    n = int(vmask.sum())
    draws = [[_draw(c, stream, B, V, n) for _ in range(c.layers)] for _ in KINDS]  # stream after stream
    for layer in range(c.layers):
        _masks(batch, f"visit.{layer}", [draws[s][layer] for s in range(3)], pos)
    batch[PACKED] = pos
    return (
        [stream.noise(shape, p) for shape, p in _drawn(_sets(model, batch["target_meds"]))] if align else []
    )


def _pack(ids: torch.Tensor) -> tuple[torch.Tensor, ...] | None:
    """Code sets (..., S), left-aligned → (rows (N,) of the non-empty sets, pos (T,) slots of their real codes in
    the (N, L) layout, keyoff (N, 1, 1, L) padding keys, count (N, 1) codes per set, codes (T,)), as
    `StudentModel.encode_sets` cuts them (L: the longest set); None without any code."""
    S = ids.shape[-1]
    flat = ids.reshape(-1, S)  # (N_all, S)
    mask = flat > 0
    extent = (mask * torch.arange(1, S + 1)).amax(-1)  # (N_all,) last real position + 1
    rows = extent.nonzero().squeeze(1)  # (N,)
    if not rows.numel():
        return None
    L = int(extent[rows].max())
    sub = flat[rows, :L]  # (N, L)
    m = sub > 0
    count = m.sum(-1, keepdim=True).to(torch.float32).clamp(min=1.0)  # (N, 1)
    return rows, m.reshape(-1).nonzero().squeeze(1), ~m[:, None, None, :], count, sub[m]


def _draw(c, stream, N: int, L: int, T: int) -> list[torch.Tensor | None]:
    """One block's masks in draw order (None where the rate is 0: torch draws nothing)."""
    shapes = ((N, c.heads, L, L), (N, L, c.hidden), (T, c.ff), (T, c.hidden), (N, L, c.hidden))
    rates = (c.attn_dropout, c.dropout, c.dropout, c.dropout, c.dropout)
    return [stream.noise(s, p) if p > 0 else None for s, p in zip(shapes, rates, strict=True)]


def _masks(batch: dict, prefix: str, draws: list[list[torch.Tensor | None]], pos: torch.Tensor) -> None:
    """Store one block's masks (of one or more stacked calls), cut to the real positions where `forward`
    works on real positions only."""
    for i, name in enumerate(_DROPS):
        if draws[0][i] is None:
            continue
        m = torch.cat([d[i] for d in draws]) if len(draws) > 1 else draws[0][i]
        if name in ("drop1", "out"):
            m = m.reshape(-1, m.shape[-1])[pos]  # (T, d)
        batch[f"packed.mask.{prefix}.{name}"] = m


def _block(
    blk, x: torch.Tensor, batch: dict, key: str, prefix: str, neg_inf: float, streams: int
) -> torch.Tensor:
    """One `TransformerBlock` in training mode on the real positions x (T, d) of N sets padded to L (`streams`
    equal parts stacked, each one call of the reference)."""
    pos, keyoff = batch[f"packed.{key}.pos"], batch[f"packed.{key}.keyoff"]
    N, L = keyoff.shape[0], keyoff.shape[-1]
    d = x.shape[-1]
    h = blk.attn.heads
    dk = d // h

    def drop(t: torch.Tensor, name: str) -> torch.Tensor:
        m = batch.get(f"packed.mask.{prefix}.{name}")
        return t if m is None else t * m

    qkv = F.linear(blk.ln1(x), blk.attn.qkv_weight())  # (T, 3d)
    padded = qkv.new_zeros(N * L, 3 * d).index_copy(0, pos, qkv)  # (N·L, 3d), zeros on padding
    q, k, v = padded.view(N, L, 3, h, dk).permute(2, 0, 3, 1, 4)  # 3 × (N, h, L, dk)
    scores = (q @ k.transpose(-2, -1) / math.sqrt(dk)).masked_fill(keyoff, neg_inf)  # (N, h, L, L)
    y = drop(scores.softmax(-1), "attn") @ v  # (N, h, L, dk)
    y = y.transpose(1, 2).reshape(N * L, d)[pos]  # (T, d)
    x = x + drop(blk.attn.out(y), "drop1")  # (T, d)
    ffn = blk.ffn
    hidden = ffn.w1(blk.ln2(x))  # (T, ff)
    # GELU per stream: its vector kernel and its scalar tail round differently, so each stream's elements must
    # sit where they sit in the reference's own call
    hidden = (
        torch.cat([F.gelu(t, approximate="tanh") for t in hidden.chunk(streams)])
        if streams > 1
        else (F.gelu(hidden, approximate="tanh"))
    )
    f = ffn.w2(drop(hidden, "ffn"))  # (T, d)
    return drop(x + drop(f, "drop2"), "out")  # (T, d)


def _means(enc, x: torch.Tensor, batch: dict, key: str, neg_inf: float, streams: int = 1) -> torch.Tensor:
    """The `Stack` enc on real positions x (T, d), then the mean over each set's codes (N, d), as
    `masked_mean`."""
    for layer, blk in enumerate(enc.blocks):
        x = _block(blk, x, batch, key, f"{key}.{layer}", neg_inf, streams)
    keyoff = batch[f"packed.{key}.keyoff"]
    N, L = keyoff.shape[0], keyoff.shape[-1]
    padded = x.new_zeros(N * L, x.shape[-1]).index_copy(0, batch[f"packed.{key}.pos"], x)  # (N·L, d)
    return padded.view(N, L, -1).sum(1) / batch[f"packed.{key}.count"]  # (N, d)


def forward(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`StudentModel.forward` in training mode on a batch packed by `prepare` → (logits (B, M), z (B, h),
    profile (B, d)), the fields of `StudentOutput`."""
    neg_inf = model.NEG_INF
    c = model.config
    vmask = batch["visit_mask"].bool()  # (B, V)
    B, V = vmask.shape
    present = [k for k in KINDS if f"packed.{k}.codes" in batch]
    codes = [batch[f"packed.{k}.codes"] for k in present]
    emb = {}
    if codes:  # one lookup for every code of the batch
        emb = dict(zip(present, model.embed(torch.cat(codes)).split([len(t) for t in codes]), strict=True))
    encs = {"diag": model.diag_enc, "proc": model.proc_enc, "med": model.med_enc}
    streams = []
    for k, n_visits in zip(KINDS, (V, V, V - 1), strict=True):
        out = model.fc1.weight.new_zeros(B * n_visits, c.hidden)  # (B·V, d); an empty set is zeros
        if k in emb:
            out = out.index_copy(0, batch[f"packed.{k}.rows"], _means(encs[k], emb[k], batch, k, neg_inf))
        streams.append(out.view(B, n_visits, c.hidden))
    diag_v, proc_v, med_v = streams
    prof = model.profile_enc(batch["profile"])  # (B, d)
    med_v = torch.cat([prof.unsqueeze(1), med_v], dim=1)  # (B, V, d)
    r = model.recency_term(vmask)  # as StudentModel.forward
    if r is not None:
        diag_v, proc_v, med_v = diag_v + r, proc_v + r, med_v + r
    x = torch.stack([diag_v, proc_v, med_v]).view(3 * B * V, c.hidden)[batch[PACKED]]  # (3n, d)
    u = _means(model.visit_enc, x, batch, "visit", neg_inf, streams=3).view(3, B, c.hidden)  # (3, B, d)
    u = u.transpose(0, 1).reshape(B, 3 * c.hidden)  # (B, 3d), streams in order
    z = model.fc1(F.relu(u))  # (B, head_hidden)
    logits = model.fc2(F.relu(z))  # (B, M)
    return logits, z, prof


# -- the reference forward's masks (a batch `forward` does not take, and the alignment's) --------------
def _block_plan(c, n: int, s: int, real: int) -> Plan:
    """One `TransformerBlock` on n sets of s positions, `real` of them real: attention, drop1, the feed-forward's
    dropout and drop2 (real positions only), the output dropout."""
    return [
        ((n, c.heads, s, s), c.attn_dropout),
        ((n, s, c.hidden), c.dropout),
        ((real, c.ff), c.dropout),
        ((real, c.hidden), c.dropout),
        ((n, s, c.hidden), c.dropout),
    ] * c.layers


def _sets(model, ids: torch.Tensor) -> Plan:
    """`StudentModel.encode_sets` on code sets (..., S) in training mode."""
    c = model.config
    S = ids.shape[-1]
    mask = ids.reshape(-1, S) > 0  # (N, S)
    extent = (mask * torch.arange(1, S + 1)).amax(-1)  # (N,)
    rows = extent.nonzero().squeeze(1)
    if rows.numel() > model.SET_CHUNK:
        rows = rows[extent[rows].argsort(stable=True)]
    out: Plan = []
    for chunk in rows.split(model.SET_CHUNK) if rows.numel() else ():
        L = int(extent[chunk].max())
        out += _block_plan(c, len(chunk), L, int(mask[chunk, :L].sum()))
    return out


def dropout_plan(model, batch: dict[str, torch.Tensor], align: bool = False) -> Plan:
    """The masks of one training step on `batch` (CPU tensors), in draw order; `align`: the step also encodes
    the target drugs (`encode_med_set(batch["target_meds"])`, distillation's alignment) after the forward."""
    c = model.config
    vmask = batch["visit_mask"].bool()  # (B, V)
    hist = batch["med"][:, :-1] * vmask[:, 1:].unsqueeze(-1)  # (B, V-1, Sm), as the forward builds it
    plan = _sets(model, batch["diag"]) + _sets(model, batch["proc"]) + _sets(model, hist)
    B, V = vmask.shape
    plan += _block_plan(c, B, V, int(vmask.sum())) * 3  # the visit encoder on the three streams
    if align:
        plan += _sets(model, batch["target_meds"])
    return _drawn(plan)


def _drawn(plan: Plan) -> Plan:
    """The masks torch draws: none at rate 0 or for an empty input."""
    return [(shape, p) for shape, p in plan if p > 0 and all(shape)]
