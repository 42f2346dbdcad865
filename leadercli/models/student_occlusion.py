"""Occluded copies of a student batch, scored set by set (issue 24: `leader predict --explain` for the LEADER
student, arXiv 2402.02803; the model is `models/student.py`, its eval path `models/student_eval.py`).

A copy is one patient with one code removed. Only that code's set — one (visit, kind) of the patient — differs
from the patient's own record, so the set vectors of the record are computed once per batch and each copy
re-encodes just its one set (the record's set without the code); the visit encoder and the head then run per
copy, as in `StudentModel.forward`. For a patient with V visits of about 20 codes each this saves about V of
every V + 1 set encodings against scoring whole copies; the logits are those of the whole copies (to float
rounding, `tests/test_explain.py`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from leadercli.models import student_eval
from leadercli.models.onednn import eval_linear
from leadercli.models.student import StudentModel


def supports(module) -> bool:
    """True for the LEADER student (student and distilled runs), whose copies this module scores."""
    return isinstance(module, StudentModel)


@torch.inference_mode()
def record_sets(model: StudentModel, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
    """The record's set vectors: diagnoses (B, V, d), procedures (B, V, d), history drugs (B, V-1, d), and
    the profile vector (B, d)."""
    vmask = batch["visit_mask"].bool()  # (B, V)
    diag = student_eval.encode_sets(model, batch["diag"], model.diag_enc, model.onednn)  # (B, V, d)
    proc = student_eval.encode_sets(model, batch["proc"], model.proc_enc, model.onednn)  # (B, V, d)
    hist = batch["med"][:, :-1] * vmask[:, 1:].unsqueeze(-1)  # (B, V-1, Sm) the history drugs
    med = student_eval.encode_sets(model, hist, model.med_enc, model.onednn)  # (B, V-1, d)
    pe = model.profile_enc  # as student_eval.forward
    parts = [emb(batch["profile"][:, i]) for i, emb in enumerate(pe.embeds)]  # F × (B, d)
    prof = eval_linear(torch.cat(parts, dim=-1), pe.proj.weight, pe.proj.bias, onednn=model.onednn)  # (B, d)
    return diag, proc, med, prof


@torch.inference_mode()
def occluded_logits(
    model: StudentModel,
    batch: dict[str, torch.Tensor],
    sets: tuple[torch.Tensor, ...],
    patient: torch.Tensor,
    kind: torch.Tensor,
    visit: torch.Tensor,
    slot: torch.Tensor,
) -> torch.Tensor:
    """Logits (N, M) of N copies: copy j is patient[j] (its `record_sets` `sets`) without the code at
    (visit[j], slot[j]) of kind[j] (0 diagnoses, 1 procedures, 2 history drugs)."""
    diag, proc, med, prof = sets
    streams = [
        diag[patient].clone(),
        proc[patient].clone(),
        med[patient].clone(),
    ]  # (N, V, d) ×2, (N, V-1, d)
    keys, encoders = ("diag", "proc", "med"), (model.diag_enc, model.proc_enc, model.med_enc)
    for k in range(3):
        rows = (kind == k).nonzero().squeeze(1)  # (n,)
        if not rows.numel():
            continue
        ids = batch[keys[k]][patient[rows], visit[rows]].clone()  # (n, S) the sets the codes are in
        ids[torch.arange(len(rows)), slot[rows]] = 0
        streams[k][rows, visit[rows]] = student_eval.encode_sets(model, ids, encoders[k], model.onednn)
    vmask = batch["visit_mask"].bool()[patient]  # (N, V)
    d_v, p_v = streams[0], streams[1]
    m_v = torch.cat([prof[patient].unsqueeze(1), streams[2]], dim=1)  # (N, V, d) profile first, as forward
    if model.recency is not None:  # as StudentModel.forward
        pos = torch.arange(vmask.shape[1], device=vmask.device)  # (V,)
        back = (vmask.sum(1, keepdim=True) - 1 - pos).clamp(0, model.config.recency - 1)  # (N, V)
        r = model.recency(back) * vmask.unsqueeze(-1)  # (N, V, d)
        d_v, p_v, m_v = d_v + r, p_v + r, m_v + r
    u = student_eval.encode_visits(model, torch.stack([d_v, p_v, m_v], dim=1), vmask, model.onednn)  # (N, 3d)
    z = eval_linear(F.relu(u), model.fc1.weight, model.fc1.bias, onednn=model.onednn)  # (N, head_hidden)
    return eval_linear(F.relu(z), model.fc2.weight, model.fc2.bias, onednn=model.onednn)  # (N, M)
