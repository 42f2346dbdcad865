"""The dropout masks one training step of the student draws, in order, from its batch alone: shapes and rates
of every `nn.Dropout` call of `StudentModel.forward` in training mode (and of the alignment's
`encode_med_set`), so that `models/torch_masks.py` can draw them ahead of the step. It follows the forward
exactly (`encode_sets`' non-empty sets and chunks, each `TransformerBlock`'s five dropouts); the tape checks
every shape as it is used, and `tests/models/test_student.py` checks the plan against torch's own draws.
"""

from __future__ import annotations

import torch

from leadercli.models.student import SET_CHUNK, StudentConfig

Plan = list[tuple[tuple[int, ...], float]]  # (mask shape, dropout rate), in draw order


def _block(c: StudentConfig, n: int, s: int, real: int) -> Plan:
    """One `TransformerBlock` on n sets of s positions, `real` of them real: attention, drop1, the feed-forward's
    dropout and drop2 (real positions only), the output dropout."""
    return [
        ((n, c.heads, s, s), c.attn_dropout),
        ((n, s, c.hidden), c.dropout),
        ((real, c.ff), c.dropout),
        ((real, c.hidden), c.dropout),
        ((n, s, c.hidden), c.dropout),
    ] * c.layers


def _sets(c: StudentConfig, ids: torch.Tensor) -> Plan:
    """`StudentModel.encode_sets` on code sets (..., S) in training mode."""
    S = ids.shape[-1]
    mask = ids.reshape(-1, S) > 0  # (N, S)
    extent = (mask * torch.arange(1, S + 1)).amax(-1)  # (N,)
    rows = extent.nonzero().squeeze(1)
    if rows.numel() > SET_CHUNK:
        rows = rows[extent[rows].argsort(stable=True)]
    out: Plan = []
    for chunk in rows.split(SET_CHUNK) if rows.numel() else ():
        L = int(extent[chunk].max())
        out += _block(c, len(chunk), L, int(mask[chunk, :L].sum()))
    return out


def dropout_plan(c: StudentConfig, batch: dict[str, torch.Tensor], align: bool = False) -> Plan:
    """The masks of one training step on `batch` (CPU tensors), in draw order; `align`: the step also encodes
    the target drugs (`encode_med_set(batch["target_meds"])`, distillation's alignment) after the forward."""
    vmask = batch["visit_mask"].bool()  # (B, V)
    hist = batch["med"][:, :-1] * vmask[:, 1:].unsqueeze(-1)  # (B, V-1, Sm), as the forward builds it
    plan = _sets(c, batch["diag"]) + _sets(c, batch["proc"]) + _sets(c, hist)
    B, V = vmask.shape
    plan += _block(c, B, V, int(vmask.sum())) * 3  # the visit encoder on the three streams
    if align:
        plan += _sets(c, batch["target_meds"])
    return [(shape, p) for shape, p in plan if p > 0 and all(shape)]
