"""Occluded copies of a student batch, scored set by set (issue 24: `leader predict --explain` for the LEADER
student, arXiv 2402.02803; the model is `models/student.py`, its eval path `models/student_eval.py`).

A copy is one patient with one code removed. Only that code's set — one (visit, kind) of the patient — differs
from the patient's own record, so the set vectors of the record are computed once per batch and each copy
re-encodes just its one set (the record's set without the code); the visit encoder then runs per copy on
that set's stream only (it reads the three streams separately; the other two are the record's), and the head
per copy, as in `StudentModel.forward`. For a patient with V visits of about 20 codes each this saves about V of
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
    """The record's set vectors: diagnoses (B, V, d), procedures (B, V, d), history drugs (B, V-1, d), the
    profile vector (B, d), and the visit encoder's output of each stream (B, 3, d)."""
    vmask = batch["visit_mask"].bool()  # (B, V)
    diag = student_eval.encode_sets(model, batch["diag"], model.diag_enc, model.onednn)  # (B, V, d)
    proc = student_eval.encode_sets(model, batch["proc"], model.proc_enc, model.onednn)  # (B, V, d)
    hist = batch["med"][:, :-1] * vmask[:, 1:].unsqueeze(-1)  # (B, V-1, Sm) the history drugs
    med = student_eval.encode_sets(model, hist, model.med_enc, model.onednn)  # (B, V-1, d)
    pe = model.profile_enc  # as student_eval.forward
    parts = [emb(batch["profile"][:, i]) for i, emb in enumerate(pe.embeds)]  # F × (B, d)
    prof = eval_linear(torch.cat(parts, dim=-1), pe.proj.weight, pe.proj.bias, onednn=model.onednn)  # (B, d)
    streams = torch.stack([diag, proc, torch.cat([prof.unsqueeze(1), med], dim=1)], dim=1)  # (B, 3, V, d)
    r = model.recency_term(vmask)  # as StudentModel.forward
    if r is not None:
        streams = streams + r.unsqueeze(1)
    u = student_eval.encode_visits(model, streams, vmask, model.onednn)  # (B, 3d)
    return diag, proc, med, prof, u.view(len(u), 3, -1)


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
    (visit[j], slot[j]) of kind[j] (0 diagnoses, 1 procedures, 2 history drugs). The visit encoder reads each
    stream on its own, so a copy re-runs it on the one stream its code is in; the other two streams' outputs
    are the record's."""
    diag, proc, med, prof, u_rec = sets
    u = u_rec[patient].clone()  # (N, 3, d)
    vmask = batch["visit_mask"].bool()
    keys, encoders = ("diag", "proc", "med"), (model.diag_enc, model.proc_enc, model.med_enc)
    for k, stream in enumerate((diag, proc, med)):
        rows = (kind == k).nonzero().squeeze(1)  # (n,)
        if not rows.numel():
            continue
        p, v, n = patient[rows], visit[rows], len(rows)
        ids = batch[keys[k]][p, v].clone()  # (n, S) the sets the codes are in
        ids[torch.arange(n), slot[rows]] = 0
        x = stream[p].clone()  # (n, V, d), history drugs (n, V-1, d)
        x[torch.arange(n), v] = student_eval.encode_sets(model, ids, encoders[k], model.onednn)
        if k == 2:  # the profile first, as forward
            x = torch.cat([prof[p].unsqueeze(1), x], dim=1)  # (n, V, d)
        vm = vmask[p]  # (n, V)
        r = model.recency_term(vm)
        if r is not None:
            x = x + r
        u[rows, k] = student_eval.encode_visits(model, x.unsqueeze(1), vm, model.onednn)  # (n, d)
    u = u.view(len(u), -1)  # (N, 3d), streams in order
    z = eval_linear(F.relu(u), model.fc1.weight, model.fc1.bias, onednn=model.onednn)  # (N, head_hidden)
    return eval_linear(F.relu(z), model.fc2.weight, model.fc2.bias, onednn=model.onednn)  # (N, M)
