"""Why each drug: occlusion explanations of a run's scores (issue 24 item 1), for every run kind.

The contribution of one code of a patient's record to one drug is the drop of that drug's score when the code
is removed (occlusion, Zeiler & Fergus, "Visualizing and Understanding Convolutional Networks", ECCV 2014; the
reference method of perturbation-based attribution): contribution = score(record) − score(record without the
code), both through the run's `Scorer`, so with the run's output rules (calibration, unknown-code shrink). The
codes are the diagnoses and procedures of every visit the run reads (target and history) and the drugs of the
history visits; the profile is not a code. For each output row (patient, drug) the K codes with the largest
positive contribution are kept, largest first (ties in record order); a code whose removal does not lower the
score is never listed, so a row may have fewer than K (a popularity run, which reads no code, has none).

How the copies are built:
- tensor kinds (`Scorer.score_batch`): each patient's padded rows are repeated once per present code with that
  one position set to PAD (`diag`/`proc`/`med`, (B, V, S)), the target visit's code counts adjusted for the
  unknown-code shrink, and scored in chunks of `CHUNK` copies — no Python loop per patient or code; the LEADER
  student scores the same copies set by set (`models/student_occlusion.py`: only the one changed set is
  re-encoded, then the visit encoder and head);
- the teacher (`Scorer.score_samples`): one `Sample` per code with that code removed, scored through its
  prompts (with a progress bar and ETA).

Codes the run does not know are one UNK id per kind in the tensors: their code strings are read back from the
record (`samples_from_frame`, the one sample rule) and their titles from the prediction input's
`codes.parquet` (`leadercli.predict.read_titles`). A gradient method (input × gradient on the code
embeddings) was not added: it only applies to the tensor kinds, and agreement with occlusion was not measured.

Cost: one extra scoring pass per code of the record (about 20 for a MIMIC-IV admission); `benchmarks/
bench_explain.py` measures it and the faithfulness (top-K codes removed vs K random codes of the same visit).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import polars as pl
import pyarrow as pa
import torch

from leadercli.data.batching import UNK_DIAG, UNK_PROC
from leadercli.data.samples import samples_from_frame
from leadercli.models import student_occlusion
from leadercli.scorer import batch_unknown

KINDS = ("diagnosis", "procedure", "medication")  # explain_kinds values, in the order of KEYS
KEYS = ("diag", "proc", "med")  # the batch tensors of each kind
LISTS = ("diagnoses", "procedures", "medications")  # the Visit / visits-frame columns of each kind
CHUNK = 8192  # occluded copies scored together at most
BATCH = 512  # patients per batch when explaining (about 10k copies; progress shown every 1,024 input rows)
ROW_BLOCK = 1 << 22  # (output rows × codes) compared at once when choosing the top codes

FIELDS = (
    pa.field("explain_codes", pa.list_(pa.string())),
    pa.field("explain_kinds", pa.list_(pa.string())),
    pa.field("explain_titles", pa.list_(pa.string())),
    pa.field("explain_visits", pa.list_(pa.string())),  # "target" or "history"
    pa.field("explain_contributions", pa.list_(pa.float32())),
)


@dataclass
class Positions:
    """The codes of a batch's patients that can be occluded, flat and patient after patient (ascending)."""

    patient: np.ndarray  # (N,) the patient's row in the batch
    kind: np.ndarray  # (N,) index into KINDS
    visit: np.ndarray  # (N,) visit slot in the patient's window (0 = oldest kept)
    slot: np.ndarray  # (N,) position in the visit's code list
    history: np.ndarray  # (N,) bool: a visit before the target (every drug is)
    ids: np.ndarray | None = None  # (N,) unified ids (tensor kinds)
    codes: np.ndarray | None = None  # (N,) object: the code strings (sample kinds)

    def __len__(self) -> int:
        return len(self.patient)


def tensor_positions(batch: dict) -> Positions:
    """Every present code of a collated batch (`Encoder.encode_frame` / `collate`), patient after patient."""
    target = batch["visit_mask"].sum(1) - 1  # (B,) the target visit's slot
    parts = []
    for k, key in enumerate(KEYS):
        nz = (batch[key] != 0).nonzero()  # (n, 3) (patient, visit, slot), row-major
        ids = batch[key][nz[:, 0], nz[:, 1], nz[:, 2]]  # (n,)
        parts.append((nz, torch.full_like(ids, k), ids))
    nz = torch.cat([p[0] for p in parts]).numpy()  # (N, 3)
    kind = torch.cat([p[1] for p in parts]).numpy()
    ids = torch.cat([p[2] for p in parts]).numpy()
    order = np.argsort(nz[:, 0], kind="stable")  # patient after patient; diagnoses, procedures, drugs
    nz, kind, ids = nz[order], kind[order], ids[order]
    history = (nz[:, 1] < target.numpy()[nz[:, 0]]) | (kind == 2)
    return Positions(nz[:, 0], kind, nz[:, 1], nz[:, 2], history, ids=ids)


def sample_positions(samples: list) -> Positions:
    """Every code of `Sample`s (the teacher's input), sample after sample, as `tensor_positions` orders them."""
    rows = []
    for b, s in enumerate(samples):
        last = len(s.visits) - 1
        for k, name in enumerate(LISTS):
            for v, visit in enumerate(s.visits):
                if name == "medications" and v == last:
                    continue  # the target's drugs are the label, never an input
                rows.extend((b, k, v, i, v < last or k == 2, c) for i, c in enumerate(getattr(visit, name)))
    if not rows:
        z = np.zeros(0, np.int64)
        return Positions(z, z, z, z, np.zeros(0, bool), codes=np.zeros(0, object))
    b, k, v, i, h, c = zip(*rows, strict=True)
    return Positions(
        np.asarray(b), np.asarray(k), np.asarray(v), np.asarray(i), np.asarray(h), codes=np.asarray(c, object)
    )


def copy_counts(batch: dict, pos: Positions, lo: int, hi: int):
    """(n_unknown, n_codes) of copies lo:hi, each (n,): the patient's target-visit code counts (read by the
    unknown-code shrink, `scorer.batch_unknown`) without the removed code when it is a target diagnosis or
    procedure."""
    n_unknown, n_codes = batch_unknown(batch)  # (B,)
    p = torch.from_numpy(pos.patient[lo:hi])
    in_target = torch.from_numpy(~pos.history[lo:hi])  # (n,) a target diagnosis or procedure
    ids = torch.from_numpy(pos.ids[lo:hi])
    unknown = in_target & ((ids == UNK_DIAG) | (ids == UNK_PROC))
    return n_unknown[p] - unknown.long(), n_codes[p] - in_target.long()


def occlude_tensors(batch: dict, pos: Positions, lo: int, hi: int) -> dict:
    """Copies lo:hi of the batch: position j's patient with its code j set to PAD; the target visit's code
    counts (`n_codes`, `n_unknown`: the unknown-code shrink reads them) follow the removal."""
    p = torch.from_numpy(pos.patient[lo:hi])
    B = batch["visit_mask"].shape[0]
    out = {k: v[p] for k, v in batch.items() if isinstance(v, torch.Tensor) and v.dim() and v.shape[0] == B}
    kind, visit, slot = pos.kind[lo:hi], pos.visit[lo:hi], pos.slot[lo:hi]
    for k, key in enumerate(KEYS):
        r = np.flatnonzero(kind == k)
        if len(r):
            out[key][torch.from_numpy(r), torch.from_numpy(visit[r]), torch.from_numpy(slot[r])] = 0
    if "n_codes" in out:
        out["n_unknown"], out["n_codes"] = copy_counts(batch, pos, lo, hi)
    return out


def occluded_scores_tensors(scorer, batch: dict, pos: Positions, chunk: int = CHUNK) -> np.ndarray:
    """(N, M) float32: the scores of every occluded copy (`occlude_tensors`), `chunk` copies at a time. The
    LEADER student re-encodes only the one set each copy changes (`models/student_occlusion.py`); other
    kinds score whole copies through `Scorer.score_batch`."""
    out = np.zeros((len(pos), len(scorer.labels)), np.float32)
    model = getattr(scorer, "module", None)
    fast = student_occlusion.supports(model)
    if fast:
        b = {k: v.to(scorer.device) for k, v in batch.items() if isinstance(v, torch.Tensor)}
        sets = student_occlusion.record_sets(model, b)
    for lo in range(0, len(pos), chunk):
        hi = min(lo + chunk, len(pos))
        if not fast:
            out[lo:hi] = scorer.score_batch(occlude_tensors(batch, pos, lo, hi)).numpy()
            continue
        where = [
            torch.from_numpy(a[lo:hi]).to(scorer.device) for a in (pos.patient, pos.kind, pos.visit, pos.slot)
        ]
        logits = student_occlusion.occluded_logits(model, b, sets, *where)  # (n, M)
        probs = torch.sigmoid(logits).float().cpu()
        out[lo:hi] = scorer.output(probs, *copy_counts(batch, pos, lo, hi)).numpy()
    return out


def occlude_samples(samples: list, pos: Positions) -> list:
    """One copy of each position's sample without that code (the teacher's occlusion)."""
    out = []
    for b, k, v, i in zip(pos.patient, pos.kind, pos.visit, pos.slot, strict=True):
        s = samples[b]
        visit = s.visits[v]
        codes = list(getattr(visit, LISTS[k]))
        del codes[i]
        visits = list(s.visits)
        visits[v] = replace(visit, **{LISTS[k]: codes})
        out.append(replace(s, visits=visits))
    return out


def top_codes(
    base: np.ndarray, occluded: np.ndarray, pos: Positions, n_patients: int, row_patient, row_drug, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """For output rows (patient `row_patient`, drug `row_drug`), each (R,): the positions (R, w) of the k codes
    whose removal lowers the drug's score most (−1 where fewer codes lower it) and their contributions (R, w);
    w = min(k, the most codes of one patient), so batches may differ in width (`pad_width`).

    `base` (B, M): the patients' scores; `occluded` (N, M): the copies' scores."""
    R = len(row_patient)
    counts = np.bincount(pos.patient, minlength=n_patients)  # (B,)
    P = int(counts.max(initial=0))
    # no wider than the most codes a patient has: `--explain 10000` must not allocate (R, 10000) arrays
    sel = np.full((R, min(k, P)), -1, np.int64)
    val = np.zeros((R, min(k, P)), np.float32)
    if P == 0 or R == 0 or k == 0:
        return sel, val
    start = np.cumsum(counts) - counts
    grid = np.full((n_patients, P), -1, np.int64)  # (B, P) each patient's positions, −1 = none
    grid[pos.patient, np.arange(len(pos)) - start[pos.patient]] = np.arange(len(pos))
    kk = min(k, P)
    step = max(1, ROW_BLOCK // P)
    for r0 in range(0, R, step):
        r1 = min(R, r0 + step)
        b, m = row_patient[r0:r1], row_drug[r0:r1]
        idx = grid[b]  # (r, P)
        drop = base[b, m][:, None] - occluded[np.maximum(idx, 0), m[:, None]]  # (r, P)
        drop[idx < 0] = -np.inf
        order = np.argsort(-drop, axis=1, kind="stable")[
            :, :kk
        ]  # (r, kk) largest first, ties in record order
        v = np.take_along_axis(drop, order, 1)
        s = np.take_along_axis(idx, order, 1)
        keep = v > 0
        sel[r0:r1, :kk] = np.where(keep, s, -1)
        val[r0:r1, :kk] = np.where(keep, v, 0.0)
    return sel, val


class Names:
    """Code strings and titles of positions: the run's vocab for the codes it knows, the record itself and the
    prediction input's titles (`titles`: kind list name → {code: title}) for the others."""

    def __init__(self, encoder, titles: dict[str, dict[str, str]] | None = None) -> None:
        v = encoder.vocab
        n = encoder.n_ids  # the vocab's ids, and the codes a title-reading run reads by their titles
        self.code = np.full(n, None, object)  # unified id → code string (None: PAD / UNK / read by title)
        self.title = np.full(n, None, object)
        for name, table in zip(LISTS, (encoder.diag_ids, encoder.proc_ids, encoder.med_ids), strict=True):
            cl = getattr(v, name)
            ids = np.fromiter((table[c] for c in cl.codes), np.int64, len(cl.codes))
            self.code[ids] = np.asarray(cl.codes, object)
            self.title[ids] = np.asarray(cl.titles, object)
        self.known = {
            name: dict(zip(getattr(v, name).codes, getattr(v, name).titles, strict=True)) for name in LISTS
        }
        self.extra = titles or {}

    def title_of(self, kind: int, code: str) -> str:
        """The title of a code string: the run's vocab, else the input's titles, else ""."""
        name = LISTS[kind]
        return self.known[name].get(code) or self.extra.get(name, {}).get(code) or ""


def columns(
    pos: Positions, sel: np.ndarray, val: np.ndarray, names: Names, unknown_codes=None
) -> dict[str, np.ndarray]:
    """The explanation columns of the output rows as (R, k) arrays (None / NaN where a row has fewer codes):
    `unknown_codes(positions) → [str]` reads the strings of codes the run does not know (tensor kinds)."""
    ok = sel >= 0
    j = sel[ok]
    kind = pos.kind[j]
    if pos.codes is not None:
        code = pos.codes[j]
        title = np.asarray([names.title_of(k, c) for k, c in zip(kind, code, strict=True)], object)
    else:
        ids = pos.ids[j]
        code, title = names.code[ids], names.title[ids]  # copies (fancy indexing)
        unk = np.flatnonzero(np.equal(code, None))
        if len(unk):
            code[unk] = unknown_codes(j[unk]) if unknown_codes is not None else "UNK"
            title[unk] = [names.title_of(int(k), c) for k, c in zip(kind[unk], code[unk], strict=True)]
    out = {name: np.full(sel.shape, None, object) for name in ("codes", "kinds", "titles", "visits")}
    out["codes"][ok] = code
    out["kinds"][ok] = np.asarray(KINDS, object)[kind]
    out["titles"][ok] = np.where(np.equal(title, None), "", title)
    out["visits"][ok] = np.where(pos.history[j], "history", "target")
    contrib = np.full(sel.shape, np.nan, np.float32)
    contrib[ok] = val[ok]
    return {f"explain_{k}": v for k, v in out.items()} | {"explain_contributions": contrib}


def arrow_columns(cols: dict[str, np.ndarray]) -> dict[str, pa.Array]:
    """(R, k) arrays of `columns` → list arrays (each row's entries up to its first missing one)."""
    codes = cols["explain_codes"]
    ok = np.not_equal(codes, None)  # (R, k)
    offsets = pa.array(np.r_[0, np.cumsum(ok.sum(1))].astype(np.int32))
    out = {}
    for f in FIELDS:
        values = cols[f.name][ok]
        arr = pa.array(values, f.type.value_type) if len(values) else pa.array([], f.type.value_type)
        out[f.name] = pa.ListArray.from_arrays(offsets, arr)
    return out


def pad_width(parts: list[np.ndarray]) -> list[np.ndarray]:
    """(R_i, w_i) explanation columns of several batches → all as wide as the widest (None / NaN added)."""
    w = max(p.shape[1] for p in parts)
    out = []
    for p in parts:
        if p.shape[1] < w:
            fill = np.nan if p.dtype.kind == "f" else None
            p = np.concatenate([p, np.full((p.shape[0], w - p.shape[1]), fill, p.dtype)], axis=1)
        out.append(p)
    return out


def empty_columns(R: int, k: int) -> dict[str, np.ndarray]:
    """The explanation columns of R rows without any code."""
    out = {f"explain_{n}": np.full((R, k), None, object) for n in ("codes", "kinds", "titles", "visits")}
    return out | {"explain_contributions": np.full((R, k), np.nan, np.float32)}


class Explainer:
    """`explain=K` of `leader predict` / `Recommender.predict`: the explanation columns of a batch's output rows
    (patient `row_patient`, drug `row_drug`, each (R,)), from the run's scores `probs` (B, M) of that batch."""

    def __init__(self, scorer, k: int, titles: dict[str, dict[str, str]] | None = None) -> None:
        self.scorer, self.k = scorer, int(k)
        self.names = Names(scorer.encoder, titles)

    def tensors(self, probs, batch: dict, frame, row_patient, row_drug) -> dict[str, np.ndarray]:
        """A tensor kind: occluded copies of the batch; `frame` (the prefixed visits the batch was encoded
        from) gives back the strings of codes the run does not know."""
        pos = tensor_positions(batch)
        occ = occluded_scores_tensors(self.scorer, batch, pos)
        B = batch["visit_mask"].shape[0]
        sel, val = top_codes(probs.numpy(), occ, pos, B, row_patient, row_drug, self.k)

        def unknown(js: np.ndarray) -> list[str]:
            subjects = batch["subject_id"].numpy()[pos.patient[js]]
            by_id = self._records(frame, subjects)
            return [
                getattr(by_id[s].visits[v], LISTS[k])[i]
                for s, k, v, i in zip(subjects, pos.kind[js], pos.visit[js], pos.slot[js], strict=True)
            ]

        return columns(pos, sel, val, self.names, unknown)

    def samples(self, probs, samples: list, vocab, row_patient, row_drug) -> dict[str, np.ndarray]:
        """A sample kind (the teacher): one copy per code, scored through the run's prompts (`vocab`: the run's
        vocab with the input's titles)."""
        pos = sample_positions(samples)
        occ = np.zeros((0, len(self.scorer.labels)), np.float32)
        if len(pos):
            copies = occlude_samples(samples, pos)
            occ = np.asarray(
                self.scorer.score_samples(copies, vocab=vocab, progress="explaining"), np.float32
            )
        sel, val = top_codes(probs.numpy(), occ, pos, len(samples), row_patient, row_drug, self.k)
        return columns(pos, sel, val, self.names)

    def _records(self, frame, subjects: np.ndarray) -> dict:
        """The samples (windowed visits, `samples_from_frame`) of `subjects`, by subject id."""
        sub = frame.filter(pl.col("subject_id").is_in(np.unique(subjects).tolist()))
        got = samples_from_frame(sub, self.scorer.encoder.profile_fields, self.scorer.max_visits)
        return {s.subject_id: s for s in got}
