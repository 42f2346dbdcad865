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

Two ways to build batches, which give identical tensors: `Encoder.encode` per `Sample` + `collate` (training),
and `Encoder.encode_frame`, which goes straight from a visits frame to the batches of the samples
`samples_from_frame(frame, encoder.profile_fields, max_visits)` would give, with numpy/polars instead of a
Python loop per code (`leader predict`, issue 3 "Speed"; it counts unknown codes the same way).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import polars as pl
import torch

from leadercli.data.artifact import UNKNOWN, Vocab
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
        self.n_ids = self.vocab_size  # ids in use: more when a title-reading run adds codes (code_titles)
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

    def encode_frame(
        self,
        visits: pl.DataFrame,
        max_visits: int,
        batch_size: int,
        labels: bool = True,
        by_length: bool = False,
    ) -> list[dict[str, torch.Tensor]]:
        """Visits frame (artifact schema, codes prefixed) → the collated batches of its samples.

        Equal to `batches(encode_all(samples_from_frame(visits, profile_fields, max_visits)), batch_size,
        collate)` (one sample per patient, profile from the patient's first visit in the frame), and counts
        unknown codes and profile values the same way. `labels=False` leaves out `labels` and `target_meds`
        (the target visit's drugs; prediction never reads them). `by_length=True` batches the patients in
        ascending number of kept visits (stable), as `batches(..., order=...)` would, so that most batches pad
        to few visits; each batch then also holds `sample` (B,) int64, the index of each patient among the
        samples (frame order). With `labels=False` each batch also holds `n_unknown` (B,) int64, the codes of
        the target visit (diagnoses + procedures) that the vocabulary does not know, and `n_codes` (B,) int64,
        all codes of the target visit."""
        order = (
            ["subject_id", "visit_no"]
            if "visit_no" in visits.columns
            else ["subject_id", "admittime", "hadm_id"]
        )  # the order rule of samples_from_frame
        df = visits.sort(order)
        if "medications" not in df.columns:
            df = df.with_columns(pl.lit([], dtype=pl.List(pl.Utf8)).alias("medications"))
        w = _window(df["subject_id"].to_numpy(), max_visits, by_length)
        P = len(w.starts)
        if P == 0:
            return []
        hist = ~w.is_target  # the rows whose drugs are history (the target's drugs are the label)
        diag = self._codes(df["diagnoses"], w.rows, self.diag_ids, UNK_DIAG)
        proc = self._codes(df["procedures"], w.rows, self.proc_ids, UNK_PROC)
        med = self._codes(df["medications"], w.rows[hist], self.med_ids, UNK_MED)
        for kind, codes, unk in (
            ("diagnoses", diag, UNK_DIAG),
            ("procedures", proc, UNK_PROC),
            ("medications", med, UNK_MED),
        ):
            self.unknown.codes[kind] += int((codes.ids == unk).sum())
        diag.place(w.patient, w.visit)
        proc.place(w.patient, w.visit)
        med.place(w.patient[hist], w.visit[hist])
        prof = self._profile_ids(df, w.starts)  # (P, F)
        sid = df["subject_id"].to_numpy()[w.starts].astype(np.int64)  # (P,)
        hadm = df["hadm_id"].to_numpy()[w.last].astype(np.int64)  # (P,)
        n_visits = w.counts.astype(np.int64)  # (P,)
        if labels:
            lab_p, lab_i = self._target_labels(df["medications"], w.last)
        else:
            target_row = np.cumsum(w.length) - 1  # (P,) the target's index among the window rows
            R = len(w.rows)
            unk = np.bincount(diag.row[diag.ids == UNK_DIAG], minlength=R) + np.bincount(
                proc.row[proc.ids == UNK_PROC], minlength=R
            )  # (R,)
            n_unknown = unk[target_row].astype(np.int64)  # (P,)
            n_codes = (diag.lens + proc.lens)[target_row].astype(np.int64)  # (P,)
        out = []
        for p0 in range(0, P, batch_size):
            p1 = min(p0 + batch_size, P)
            V = int(w.length[p0:p1].max())
            batch = {
                "diag": torch.from_numpy(diag.pad(p0, p1, V)),
                "proc": torch.from_numpy(proc.pad(p0, p1, V)),
                "med": torch.from_numpy(med.pad(p0, p1, V)),
                "visit_mask": torch.from_numpy(np.arange(V)[None, :] < w.length[p0:p1, None]),  # (B, V)
                "profile": torch.from_numpy(prof[p0:p1]),
            }
            if labels:
                batch.update(self._label_tensors(lab_p, lab_i, p0, p1))
            else:
                batch["n_unknown"] = torch.from_numpy(n_unknown[p0:p1])
                batch["n_codes"] = torch.from_numpy(n_codes[p0:p1])
            batch["n_visits"] = torch.from_numpy(n_visits[p0:p1])
            batch["subject_id"] = torch.from_numpy(sid[p0:p1])
            batch["hadm_id"] = torch.from_numpy(hadm[p0:p1])
            if by_length:
                batch["sample"] = torch.from_numpy(w.sample[p0:p1].astype(np.int64))
            out.append(batch)
        return out

    @staticmethod
    def _codes(lists: pl.Series, rows: np.ndarray, table: dict[str, int], unk: int) -> _FlatCodes:
        """The code lists of `rows` → ids (a null or unseen code → `unk`), flat, with each code's row and slot."""
        sel = lists.gather(pl.Series(rows, dtype=pl.Int64))
        lens = sel.list.len().fill_null(0).to_numpy().astype(np.int64)  # (R,) a null list has no code
        flat = sel.list.explode(empty_as_null=False, keep_nulls=False)  # (N,)
        ids = flat.replace_strict(list(table), list(table.values()), default=unk, return_dtype=pl.Int64)
        row = np.repeat(np.arange(len(lens)), lens)  # (N,)
        slot = np.arange(len(row)) - np.repeat(np.cumsum(lens) - lens, lens)  # (N,) position in its list
        return _FlatCodes(ids.to_numpy(), row, slot, lens)

    def _profile_ids(self, df: pl.DataFrame, first_rows: np.ndarray) -> np.ndarray:
        """Per patient and profile field, the value id of the patient's first visit (0 = UNK); counts UNKs."""
        out = np.zeros((len(first_rows), len(self.profile_fields)), dtype=np.int64)  # (P, F)
        idx = pl.Series(first_rows)
        for j, (f, m) in enumerate(zip(self.profile_fields, self.profile_maps, strict=True)):
            unknown_id = m.get(UNKNOWN, 0)
            if f not in df.columns:
                out[:, j] = unknown_id
            else:
                col = df[f].gather(idx)
                if isinstance(col.dtype, pl.Categorical | pl.Enum):
                    col = col.cast(pl.Utf8)
                if col.dtype == pl.Utf8:
                    col = pl.select(
                        pl.when(col.is_null() | (col == "")).then(pl.lit(UNKNOWN)).otherwise(col)
                    ).to_series()
                    out[:, j] = col.replace_strict(
                        list(m), list(m.values()), default=0, return_dtype=pl.Int64
                    ).to_numpy()
                else:  # a non-string value never matches a (string) vocab value; null reads as unknown
                    out[:, j] = np.where(col.is_null().to_numpy(), unknown_id, 0)
        self.unknown.profile += int((out == 0).sum())
        return out

    def _target_labels(self, meds: pl.Series, last: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Target visits' drugs → (patient, label index) pairs, unique and sorted per patient."""
        codes = self._codes(meds, last, self.label_index, -1)
        ok = codes.ids >= 0
        self.unknown.label_out_of_vocab += int((~ok).sum())
        key = np.unique(codes.row[ok] * self.n_labels + codes.ids[ok])  # sorted (patient, label)
        return key // self.n_labels, key % self.n_labels

    def _label_tensors(
        self, lab_p: np.ndarray, lab_i: np.ndarray, p0: int, p1: int
    ) -> dict[str, torch.Tensor]:
        a, b = np.searchsorted(lab_p, [p0, p1])
        p, i = lab_p[a:b] - p0, lab_i[a:b]
        n = np.bincount(p, minlength=p1 - p0)  # (B,) labels per patient
        slot = np.arange(len(p)) - np.repeat(np.cumsum(n) - n, n)
        labels = np.zeros((p1 - p0, self.n_labels), dtype=np.float32)  # (B, M)
        labels[p, i] = 1.0
        target = np.zeros((p1 - p0, int(n.max(initial=0)) or 1), dtype=np.int64)  # (B, St)
        target[p, slot] = i + self.med_offset
        return {"labels": torch.from_numpy(labels), "target_meds": torch.from_numpy(target)}


@dataclass
class _Window:
    """The visits of each patient (runs of rows of a frame sorted by patient) that its sample uses, the
    patients in batching order."""

    sample: np.ndarray  # (P,) index of each patient's sample (its run of rows, in frame order)
    starts: np.ndarray  # (P,) first row of each patient
    counts: np.ndarray  # (P,) visits of each patient (n_visits, uncapped)
    last: np.ndarray  # (P,) row of the target visit
    length: np.ndarray  # (P,) visits in the window, min(counts, max_visits)
    rows: np.ndarray  # (R,) window rows, patient after patient, oldest first
    patient: np.ndarray  # (R,) patient of each window row (ascending)
    visit: np.ndarray  # (R,) position of each window row in its patient's window (0 = oldest kept)
    is_target: np.ndarray  # (R,) bool, the row is its patient's target visit


def _window(subject: np.ndarray, max_visits: int, by_length: bool = False) -> _Window:
    """Runs of equal subject ids → the most recent `max_visits` visits of each, the last one the target;
    patients in frame order, or in ascending window length (stable) when `by_length`."""
    n = len(subject)
    starts = np.flatnonzero(np.r_[True, subject[1:] != subject[:-1]]) if n else np.zeros(0, np.int64)
    counts = np.diff(np.r_[starts, n])  # (P,)
    length = np.minimum(counts, max_visits)  # (P,)
    order = np.argsort(length, kind="stable") if by_length else np.arange(len(starts))
    starts, counts, length = starts[order], counts[order], length[order]
    last = starts + counts - 1
    patient = np.repeat(np.arange(len(starts)), length)  # (R,)
    visit = np.arange(len(patient)) - np.repeat(np.cumsum(length) - length, length)  # (R,)
    rows = (last + 1 - length)[patient] + visit  # (R,)
    return _Window(order, starts, counts, last, length, rows, patient, visit, rows == last[patient])


@dataclass
class _FlatCodes:
    """The codes of selected visit rows, flat and row after row, placed in (patient, visit, slot)."""

    ids: np.ndarray  # (N,) unified ids
    row: np.ndarray  # (N,) index of each code's row among the selected rows
    slot: np.ndarray  # (N,) position of each code in its row's list
    lens: np.ndarray  # (R,) codes per selected row
    patient: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # (R,) patient of each row
    visit: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # (R,) visit slot of each row

    def place(self, patient: np.ndarray, visit: np.ndarray) -> None:
        self.patient, self.visit = patient, visit

    def pad(self, p0: int, p1: int, V: int) -> np.ndarray:
        """Patients p0:p1 (one batch) → (B, V, S) ids, S = the batch's longest list (at least 1), 0 = PAD."""
        r0, r1 = np.searchsorted(self.patient, [p0, p1])  # the batch's rows (patients ascend)
        S = int(self.lens[r0:r1].max(initial=0)) or 1
        out = np.zeros((p1 - p0, V, S), dtype=np.int64)  # (B, V, S)
        c0, c1 = np.searchsorted(self.row, [r0, r1])  # the batch's codes
        r = self.row[c0:c1]
        out[self.patient[r] - p0, self.visit[r], self.slot[c0:c1]] = self.ids[c0:c1]
        return out


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
