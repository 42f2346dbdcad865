"""The artifact contract (DESIGN §3): what `leader preprocess` writes and every later stage reads.

One folder per dataset, written to a temporary sibling and renamed into place when complete:

| file | content |
|---|---|
| `manifest.json` | source, options, input files (size, sha256), row counts per filter step, mapping coverage, vocab sizes, split sizes, version, created_at |
| `visits.parquet` | one row per kept admission: `subject_id` i64, `hadm_id` i64, `admittime` datetime[us], `visit_no` i32 (0-based, by admittime), `diagnoses`, `procedures`, `medications` (list[str], prefixed codes / ATC-3), then the profile columns of that admission (str) |
| `patients.parquet` | one row per patient: `subject_id` i64, `split` (train/val/test), `n_visits` i32, profile columns at the first kept visit (str) |
| `vocab.json` | `{"diagnoses": {"codes": [...], "titles": [...]}, "procedures": {...}, "medications": {...}, "profile": {field: [values]}}`; fit on the training patients; medication order = label order |
| `ddi.parquet` | `atc3_a`, `atc3_b` (str, a < b): unordered ATC-3 pairs that interact |

Codes carry kind and ICD version (`D9:4019`, `D10:I10`, `P9:3893`, `P10:0DTJ4ZZ`: the rule is
`data/codes.py`); medications are bare ATC-3 codes (`N02B`). Profile values are strings; missing values are
"unknown".

polars and numpy are imported inside the functions that read tables: `runs.py` reads run manifests and
vocabularies through this module in the argument checks, before any table is needed (polars alone takes
about 0.5 s to import).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from leadercli.errors import ArtifactError

MANIFEST = "manifest.json"
VISITS = "visits.parquet"
PATIENTS = "patients.parquet"
VOCAB = "vocab.json"
DDI = "ddi.parquet"
FILES = (MANIFEST, VISITS, PATIENTS, VOCAB, DDI)

CODE_KINDS = ("diagnoses", "procedures", "medications")
SPLITS = ("train", "val", "test")
UNKNOWN = "unknown"

PATIENT_PROFILE = ("gender", "age_group")  # after the layout's admission profile (`layouts.SourceLayout`)


def visits_table(frame, fields: tuple[str, ...] | list[str]):
    """A frame with the visit columns → the `visits.parquet` schema and order (shared by `leader preprocess`
    and `leader preprocess --for-run`)."""
    import polars as pl  # not at the top: see the module docstring

    return frame.select(
        pl.col("subject_id").cast(pl.Int64),
        pl.col("hadm_id").cast(pl.Int64),
        pl.col("admittime").cast(pl.Datetime("us")),
        pl.col("visit_no").cast(pl.Int32),
        "diagnoses",
        "procedures",
        "medications",
        *fields,
    ).sort(["subject_id", "visit_no"])


@dataclass(frozen=True)
class CodeList:
    codes: list[str]
    titles: list[str]

    @cached_property
    def index(self) -> dict[str, int]:
        return {c: i for i, c in enumerate(self.codes)}

    def title(self, code: str) -> str | None:
        i = self.index.get(code)
        return self.titles[i] if i is not None else None

    def __len__(self) -> int:
        return len(self.codes)


@dataclass(frozen=True)
class Vocab:
    diagnoses: CodeList
    procedures: CodeList
    medications: CodeList
    profile: dict[str, list[str]] = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: dict) -> Vocab:
        lists = {k: CodeList(list(data[k]["codes"]), list(data[k]["titles"])) for k in CODE_KINDS}
        return cls(**lists, profile={k: list(v) for k, v in data.get("profile", {}).items()})

    def to_json(self) -> dict:
        out = {k: {"codes": getattr(self, k).codes, "titles": getattr(self, k).titles} for k in CODE_KINDS}
        out["profile"] = self.profile
        return out

    def sizes(self) -> dict[str, int]:
        return {k: len(getattr(self, k)) for k in CODE_KINDS} | {
            f"profile.{k}": len(v) for k, v in self.profile.items()
        }


def vocab_hash(vocab: Vocab) -> str:
    """Stable hash of the label list and code vocabularies (checkpoints record it and check it on load)."""
    blob = json.dumps(vocab.to_json(), sort_keys=True, ensure_ascii=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def labels_hash(labels: list[str]) -> str:
    return hashlib.sha256("\n".join(labels).encode()).hexdigest()[:16]


class Artifact:
    """A complete artifact folder. Construction checks that every file is there."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        if not self.path.is_dir():
            raise ArtifactError(
                f"artifact folder {self.path} does not exist",
                "Run `leader preprocess` first or pass --data DIR",
            )
        missing = [f for f in FILES if not (self.path / f).is_file()]
        if missing:
            raise ArtifactError(
                f"artifact folder {self.path} is incomplete (missing {', '.join(missing)})",
                "Re-run `leader preprocess` to rebuild it",
            )

    @cached_property
    def manifest(self) -> dict:
        return _read_json(self.path / MANIFEST)

    @cached_property
    def vocab(self) -> Vocab:
        try:
            return Vocab.from_json(_read_json(self.path / VOCAB))
        except (KeyError, TypeError, ValueError, AttributeError):
            raise ArtifactError(
                f"{self.path / VOCAB} is not a leadercli vocab",
                f"Re-run `leader preprocess` to rebuild {self.path}",
            ) from None

    @property
    def source(self) -> str:
        return self.manifest["source"]

    @property
    def labels(self) -> list[str]:
        return self.vocab.medications.codes

    @cached_property
    def vocab_hash(self) -> str:
        return vocab_hash(self.vocab)

    @cached_property
    def content_hash(self) -> str:
        """sha256 over the data files (the parquet files are byte-identical when rebuilt from the same inputs
        and settings, so equal hashes mean the same cohort; the manifest's created_at does not count)."""
        h = hashlib.sha256()
        for name in (VISITS, PATIENTS, VOCAB, DDI):
            with open(self.path / name, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    h.update(block)
        return h.hexdigest()[:16]

    def profile_fields(self) -> tuple[str, ...]:
        return tuple(self.vocab.profile.keys())

    def visits(self):
        return self._read_parquet(VISITS)

    def patients(self):
        return self._read_parquet(PATIENTS)

    def _read_parquet(self, name: str, columns: list[str] | None = None):
        """One of the artifact's parquet files; a damaged one (truncated, not parquet, a column missing) is an
        ArtifactError naming it."""
        import polars as pl  # not at the top: see the module docstring

        path = self.path / name
        try:
            return pl.read_parquet(path, columns=columns)
        except (pl.exceptions.PolarsError, OSError, ValueError) as exc:
            raise ArtifactError(
                f"{path} is unreadable (damaged or not parquet; {type(exc).__name__})",
                f"Re-run `leader preprocess` to rebuild {self.path}",
            ) from None

    def ddi_pairs(self) -> list[tuple[str, str]]:
        df = self._read_parquet(DDI, ["atc3_a", "atc3_b"])
        return list(zip(df["atc3_a"].to_list(), df["atc3_b"].to_list(), strict=True))

    def ddi_index_pairs(self):
        """DDI pairs as label indices, (K, 2) int64 array, restricted to the label vocabulary."""
        import numpy as np  # not at the top: see the module docstring

        idx = self.vocab.medications.index
        pairs = [(idx[a], idx[b]) for a, b in self.ddi_pairs() if a in idx and b in idx]
        return np.asarray(pairs, dtype=np.int64).reshape(-1, 2)


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArtifactError(
            f"{path} is unreadable ({type(exc).__name__})",
            f"Re-run `leader preprocess` to rebuild {path.parent}",
        ) from None
