"""The output rows of `leader predict`: scores of a batch → its ranked drugs per patient.

One row per (subject, drug) for the top-k drugs of the subject's latest visit, plus every drug with
score ≥ threshold ranked below k: `subject_id`, `hadm_id`, `rank` (1 = best), `atc3`, `drug_name`, `score`,
`selected`, `ddi_dropped` (selected by score but dropped by `--max-ddi-pairs`, `leadercli.selection`),
`n_unknown_codes` (codes of the target visit unknown to the model); with `explain=K` the codes that most raised
the drug's score (`leadercli.explain.FIELDS`, list columns). `Rows` makes them and counts them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import torch

from leadercli.explain import FIELDS, arrow_columns
from leadercli.selection import limit_ddi

OUT_SCHEMA = pa.schema(
    [
        ("subject_id", pa.int64()),
        ("hadm_id", pa.int64()),
        ("rank", pa.int32()),
        ("atc3", pa.string()),
        ("drug_name", pa.string()),
        ("score", pa.float32()),
        ("selected", pa.bool_()),
        ("ddi_dropped", pa.bool_()),
        ("n_unknown_codes", pa.int32()),
    ]
)
MOSTLY_UNKNOWN = 0.5  # a target visit with more than this share of unknown codes is "mostly unknown"


def out_schema(explain: int = 0) -> pa.Schema:
    """The output table's schema: `OUT_SCHEMA`, plus the explanation list columns when `explain` > 0."""
    if not explain:
        return OUT_SCHEMA
    return pa.schema([*OUT_SCHEMA, *FIELDS])


@dataclass
class PredictOptions:
    top_k: int = 20
    threshold: float | None = None  # None = the run's
    max_ddi_pairs: int | None = None  # None = no DDI cap
    batch_size: int = 4096
    explain: int = 0  # codes explaining each output row (occlusion, `leadercli.explain`); 0 = none
    code_titles: bool = True  # a title-reading run reads unknown codes by title (`leadercli.code_titles`)


@dataclass
class Counts:
    patients: int = 0
    rows: int = 0
    selected: int = 0
    beyond_top_k: int = 0  # selected drugs written although ranked below --top-k
    ddi_dropped: int = 0
    mostly_unknown: int = 0  # patients whose target visit has > MOSTLY_UNKNOWN unknown codes
    no_known_code: int = 0  # patients whose target visit has no code the model knows

    def add(self, other: Counts) -> None:
        for k in self.__dataclass_fields__:
            setattr(self, k, getattr(self, k) + getattr(other, k))


class Rows:
    """Probabilities of one batch → its output rows (top-k plus every selected drug), in batch order, as
    columns (`streaming.ordered` makes the table; the drug columns are the label index `ix`), and the counts;
    `sample` of each row keeps the patient's place in the chunk."""

    def __init__(
        self, top_k, threshold, adj, max_pairs, labels: pa.Array, names: pa.Array, explain: int = 0
    ) -> None:
        self.top_k, self.threshold, self.adj, self.max_pairs = top_k, threshold, adj, max_pairs
        self.labels, self.names = labels, names
        self.schema = out_schema(explain)

    def __call__(
        self, probs: torch.Tensor, batch: dict[str, torch.Tensor], explain=None
    ) -> tuple[dict[str, np.ndarray], np.ndarray, Counts]:
        """`explain(row_patient, row_drug)` → the explanation columns of the rows ((R, K) arrays)."""
        B, M = probs.shape
        sel = probs >= self.threshold  # (B, M)
        if self.adj is not None:
            kept, dropped = limit_ddi(probs, sel, self.adj, self.max_pairs)
        else:
            kept, dropped = sel, torch.zeros_like(sel)
        n_sel = sel.sum(1)  # (B,)
        k = int(min(M, max(self.top_k, int(n_sel.max()) if B else 0)))
        top_values, top_indices = top(probs, k)  # (B, k)
        rank = torch.arange(1, k + 1).expand(B, k)
        sel_k = sel.gather(1, top_indices)
        keep = (rank <= self.top_k) | sel_k  # (B, k)
        kf = keep.numpy().ravel()
        n_unknown = batch["n_unknown"].numpy()
        n_codes = batch["n_codes"].numpy()
        per_patient = keep.sum(1).numpy()
        cols = {
            "subject_id": np.repeat(batch["subject_id"].numpy(), per_patient),
            "hadm_id": np.repeat(batch["hadm_id"].numpy(), per_patient),
            "rank": rank.numpy().ravel()[kf].astype(np.int32),
            "ix": top_indices.numpy().ravel()[kf],
            "score": top_values.numpy().astype(np.float32).ravel()[kf],
            "selected": kept.gather(1, top_indices).numpy().ravel()[kf],
            "ddi_dropped": dropped.gather(1, top_indices).numpy().ravel()[kf],
            "n_unknown_codes": np.repeat(n_unknown.astype(np.int32), per_patient),
        }
        if explain is not None:
            cols.update(explain(np.repeat(np.arange(B), per_patient), cols["ix"]))
        counts = Counts(
            patients=B,
            rows=len(cols["ix"]),
            selected=int(kept.sum()),
            beyond_top_k=int((sel_k & (rank > self.top_k)).sum()),
            ddi_dropped=int(dropped.sum()),
            mostly_unknown=int((n_unknown > MOSTLY_UNKNOWN * n_codes).sum()),
            no_known_code=int(((n_unknown == n_codes) & (n_codes > 0)).sum()),
        )
        return cols, np.repeat(batch["sample"].numpy(), per_patient), counts

    def table(self, cols: dict[str, np.ndarray]) -> pa.Table:
        """Columns of `__call__` → the output table (drug codes and names looked up by label index)."""
        ix = pa.array(cols["ix"])
        named = {"atc3": self.labels.take(ix), "drug_name": self.names.take(ix)}
        if "explain_codes" in cols:
            named.update(arrow_columns(cols))
        return pa.table(
            {f.name: named.get(f.name, cols.get(f.name)) for f in self.schema}, schema=self.schema
        )


def top(probs: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The k largest scores of each row (B, M), largest first, and their columns: `torch.topk(probs, k)`
    where a row's k + 1 best scores are distinct, from numpy's vectorised sort (about 4× faster on these
    rows); a row with equal scores there is sorted stably (equal scores in column order, where topk's order
    is unspecified)."""
    p = probs.numpy()
    if probs.dtype != torch.float32 or np.isnan(p).any():  # NaN: topk ranks it first, the sort last
        t = torch.topk(probs, k, dim=1)
        return t.values, t.indices
    neg = -p  # (B, M) ascending = scores descending
    idx = np.argsort(neg, axis=1)  # (B, M)
    first = np.take_along_axis(neg, idx[:, : min(k + 1, p.shape[1])], 1)  # (B, ≤ k+1)
    tied = np.flatnonzero((first[:, 1:] == first[:, :-1]).any(1))  # (t,) rows with equal scores there
    if len(tied):
        idx[tied] = np.argsort(neg[tied], axis=1, kind="stable")
    idx = np.ascontiguousarray(idx[:, :k])  # (B, k)
    return torch.from_numpy(np.take_along_axis(p, idx, 1)), torch.from_numpy(idx)
