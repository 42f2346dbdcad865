"""Samples → tensors for the student (the batch contract of `leadercli.models.student`).

Unified code vocabulary (one shared embedding; kinds never collide because codes are prefixed):
`0 = PAD`, `1 = UNK diagnosis`, `2 = UNK procedure`, `3 = UNK medication`, then the diagnosis codes, the
procedure codes and the medication (label) codes of the artifact's vocab, in vocab order. Label i has unified
id `med_offset + i`. Profile values: per field, `0 = UNK`, then the field's values in vocab order.

A batch (padding sizes come from the batch, not a global maximum):
    diag (B, V, Sd), proc (B, V, Sp), med (B, V, Sm) int64 — visits left-aligned, chronological; the target
        visit's medication row is all PAD (its drugs are the label, never an input)
    visit_mask (B, V) bool, profile (B, F) int64, labels (B, M) float32, target_meds (B, St) int64,
    n_visits (B,) int64, subject_id (B,) int64, hadm_id (B,) int64
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from leadercli.data.artifact import Vocab
from leadercli.data.samples import Sample

PAD, UNK_DIAG, UNK_PROC, UNK_MED = 0, 1, 2, 3
N_SPECIAL = 4


@dataclass
class Encoded:
    diag: list[list[int]]
    proc: list[list[int]]
    med: list[list[int]]
    profile: list[int]
    labels: list[int]  # label indices of the target visit's drugs
    n_visits: int
    subject_id: int
    hadm_id: int


@dataclass
class UnknownCounter:
    codes: dict[str, int] = field(default_factory=lambda: {"diagnoses": 0, "procedures": 0, "medications": 0})
    profile: int = 0
    label_out_of_vocab: int = 0

    def total(self) -> int:
        return sum(self.codes.values())


class Encoder:
    """Maps codes and profile values to ids; counts what it does not know."""

    def __init__(self, vocab: Vocab, profile_fields: tuple[str, ...] | list[str] | None = None) -> None:
        self.vocab = vocab
        self.profile_fields = tuple(profile_fields if profile_fields is not None else vocab.profile.keys())
        nd, np_, nm = len(vocab.diagnoses), len(vocab.procedures), len(vocab.medications)
        self.diag_ids = {c: N_SPECIAL + i for i, c in enumerate(vocab.diagnoses.codes)}
        self.proc_ids = {c: N_SPECIAL + nd + i for i, c in enumerate(vocab.procedures.codes)}
        self.med_offset = N_SPECIAL + nd + np_
        self.med_ids = {c: self.med_offset + i for i, c in enumerate(vocab.medications.codes)}
        self.label_index = vocab.medications.index
        self.vocab_size = self.med_offset + nm
        self.n_labels = nm
        self.profile_maps = [
            {v: i + 1 for i, v in enumerate(vocab.profile.get(f, []))} for f in self.profile_fields
        ]
        self.profile_sizes = [len(m) + 1 for m in self.profile_maps]
        self.unknown = UnknownCounter()

    def _ids(self, codes: list[str], table: dict[str, int], unk: int, kind: str) -> list[int]:
        out = []
        for c in codes:
            i = table.get(c)
            if i is None:
                self.unknown.codes[kind] += 1
                i = unk
            out.append(i)
        return out

    def encode(self, s: Sample) -> Encoded:
        diag = [self._ids(v.diagnoses, self.diag_ids, UNK_DIAG, "diagnoses") for v in s.visits]
        proc = [self._ids(v.procedures, self.proc_ids, UNK_PROC, "procedures") for v in s.visits]
        # history drugs only: the target visit's drugs are the label
        med = [self._ids(v.medications, self.med_ids, UNK_MED, "medications") for v in s.visits[:-1]] + [[]]
        prof = []
        for f, m in zip(self.profile_fields, self.profile_maps, strict=True):
            i = m.get(s.profile.get(f, ""), 0)
            self.unknown.profile += i == 0
            prof.append(i)
        labels = []
        for c in s.target.medications:
            i = self.label_index.get(c)
            if i is None:
                self.unknown.label_out_of_vocab += 1
            else:
                labels.append(i)
        return Encoded(diag, proc, med, prof, sorted(set(labels)), s.n_visits, s.subject_id, s.hadm_id)

    def encode_all(self, samples: list[Sample]) -> list[Encoded]:
        return [self.encode(s) for s in samples]

    def collate(self, batch: list[Encoded]) -> dict[str, torch.Tensor]:
        return collate(batch, self.n_labels, self.med_offset)


def _pad3(seqs: list[list[list[int]]], V: int) -> np.ndarray:
    S = max((len(codes) for visits in seqs for codes in visits), default=0) or 1
    out = np.zeros((len(seqs), V, S), dtype=np.int64)
    for b, visits in enumerate(seqs):
        for v, codes in enumerate(visits):
            if codes:
                out[b, v, : len(codes)] = codes
    return out


def collate(batch: list[Encoded], n_labels: int, med_offset: int) -> dict[str, torch.Tensor]:
    B = len(batch)
    V = max(len(e.diag) for e in batch)
    mask = np.zeros((B, V), dtype=bool)
    labels = np.zeros((B, n_labels), dtype=np.float32)
    St = max((len(e.labels) for e in batch), default=0) or 1
    target = np.zeros((B, St), dtype=np.int64)
    for b, e in enumerate(batch):
        mask[b, : len(e.diag)] = True
        if e.labels:
            labels[b, e.labels] = 1.0
            target[b, : len(e.labels)] = np.asarray(e.labels) + med_offset
    return {
        "diag": torch.from_numpy(_pad3([e.diag for e in batch], V)),
        "proc": torch.from_numpy(_pad3([e.proc for e in batch], V)),
        "med": torch.from_numpy(_pad3([e.med for e in batch], V)),
        "visit_mask": torch.from_numpy(mask),
        "profile": torch.tensor([e.profile for e in batch], dtype=torch.int64).reshape(B, -1),
        "labels": torch.from_numpy(labels),
        "target_meds": torch.from_numpy(target),
        "n_visits": torch.tensor([e.n_visits for e in batch], dtype=torch.int64),
        "subject_id": torch.tensor([e.subject_id for e in batch], dtype=torch.int64),
        "hadm_id": torch.tensor([e.hadm_id for e in batch], dtype=torch.int64),
    }


def batches(encoded: list[Encoded], batch_size: int, collate_fn, order: np.ndarray | None = None):
    """Yield collated batches in `order` (indices), default sequential."""
    idx = np.arange(len(encoded)) if order is None else order
    for i in range(0, len(idx), batch_size):
        yield collate_fn([encoded[j] for j in idx[i : i + batch_size]])
