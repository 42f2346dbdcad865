"""Source layouts: everything leadercli knows about one raw EHR layout, in one object per layout.

`leader preprocess` (artifacts) and `leader preprocess --for-run` (new patients) work on `RawData`, the same
frames whatever the source; a layout's job is to find its files and produce that `RawData`. The MIMIC
layouts are CSV tables (`TableLayout`); MEDS (`leadercli.data.meds`) is parquet events.

What a new layout must provide (subclass `SourceLayout`, register it in `LAYOUTS`, and add its name to
`settings.SOURCES` — about two files):

- `name`, `title`; `admission_profile` — the admission-level profile fields, in order (the artifact's profile
  columns are these, then `PATIENT_PROFILE`: gender and age group);
- `locate(raw_dir, settings) -> dict[role, Path]` — the input files (each one hashed into the manifest), a
  missing file or folder an `InputError` naming it;
- `read(files, allow_empty_prescriptions) -> RawData` — the frames below, every user-caused problem an
  `InputError` naming the file and column;
- `default_top_procedures` (the reference's procedure filter), `distill_weights` (the reference's α, β),
  `default_icd_version` (for raw, unprefixed ICD codes in a prediction input, None = needs `icd_version`).

`RawData` (the contract): `admissions` (subject_id, hadm_id, admittime datetime[us], the admission profile
fields as strings), `patients` (subject_id, gender, and whatever `age_years` reads), `diagnoses` /
`procedures` (subject_id, hadm_id, code prefixed `D10:I10`, seq), `prescriptions` (subject_id, hadm_id, ndc
raw string; one row per prescription, or grouped with an `n` column) for NDC mapping, `atc_events` (subject_id, hadm_id, atc3) for drugs already coded as ATC
(none for MIMIC), `titles` (kind → frame code, title, prefixed), `counts` (per input, rows read),
`source_version`; and `age_years(frame)` — an expression for the age in whole years at `admittime` over the
admissions ⋈ patients frame.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from leadercli.data.artifact import PATIENT_PROFILE
from leadercli.data.tables import DATETIME, INT, Column, TableSpec

RAW_ROLES = (
    "admissions",
    "patients",
    "diagnoses",
    "procedures",
    "prescriptions",
    "d_diagnoses",
    "d_procedures",
)


@dataclass
class RawData:
    admissions: pl.DataFrame
    patients: pl.DataFrame
    diagnoses: pl.DataFrame  # long, prefixed codes
    procedures: pl.DataFrame
    prescriptions: (
        pl.DataFrame
    )  # (subject_id, hadm_id, ndc): one row per prescription, or grouped with n rows
    titles: dict[str, pl.DataFrame]  # diagnoses / procedures → (code, title)
    counts: dict
    source_version: str
    atc_events: pl.DataFrame | None = None  # drugs coded as ATC already (subject_id, hadm_id, atc3)
    splits: pl.DataFrame | None = None  # the data's own patient split (subject_id, split), e.g. MEDS


class SourceLayout:
    """Base class: what every layout provides (see the module docstring)."""

    name: str = ""
    title: str = ""
    admission_profile: tuple[str, ...] = ()
    default_top_procedures: int | None = None
    distill_weights: tuple[float, float] = (0.4, 0.005)
    default_icd_version: int | None = None

    def profile_fields(self) -> tuple[str, ...]:
        return self.admission_profile + PATIENT_PROFILE

    def configure(self, settings) -> SourceLayout:
        """The layout with the settings it reads (MEDS: its code patterns); the MIMIC layouts read none."""
        return self

    def locate(self, raw: Path, settings=None) -> dict[str, Path]:
        raise NotImplementedError

    def read(self, files: dict[str, Path], allow_empty_prescriptions: bool = False) -> RawData:
        raise NotImplementedError

    def age_years(self) -> pl.Expr:
        raise NotImplementedError


def _ids(*names: str) -> tuple[Column, ...]:
    return tuple(Column(n, INT) for n in names)


@dataclass(frozen=True)
class _MimicSpec:
    specs: dict[str, TableSpec]
    code_column: str
    subdirs: tuple[str, ...] = ()
    patient_datetimes: tuple[str, ...] = ()


class TableLayout(SourceLayout):
    """A layout of CSV tables (MIMIC-III, MIMIC-IV): one `TableSpec` per role, ICD codes in `code_column`
    with their version in `icd_version` (or one fixed version)."""

    def __init__(self, spec: _MimicSpec) -> None:
        self.spec = spec

    # -- what the tables look like --------------------------------------------------------------------------
    def icd_version(self) -> pl.Expr:
        return pl.col("icd_version")

    def table_spec(self, role: str) -> TableSpec:
        return self.spec.specs[role]

    def search_dirs(self, raw: Path) -> list[Path]:
        """Folders searched for the raw tables: the folder itself and its known sub-folders (MIMIC-IV hosp/)."""
        dirs = [raw]
        if self.spec.subdirs and raw.is_dir():
            dirs += [s for s in sorted(raw.iterdir()) if s.is_dir() and s.name.lower() in self.spec.subdirs]
        return dirs

    def locate(self, raw: Path, settings=None) -> dict[str, Path]:
        from leadercli.data.tables import locate_tables

        return locate_tables(raw, self)

    def detect_version(self, scans: dict) -> str:
        raise NotImplementedError

    # -- reading ---------------------------------------------------------------------------------------------
    def read(self, files: dict[str, Path], allow_empty_prescriptions: bool = False) -> RawData:
        from leadercli.data.tables import read_tables

        return read_tables(self, files, allow_empty_prescriptions)


class Mimic3(TableLayout):
    name = "mimic3"
    title = "MIMIC-III v1.4"
    admission_profile = ("insurance", "language", "religion", "marital_status", "ethnicity")
    default_top_procedures = None  # the reference keeps every procedure code on MIMIC-III
    distill_weights = (0.4, 0.005)  # reference scripts
    default_icd_version = 9

    def icd_version(self) -> pl.Expr:
        return pl.lit(9)

    def detect_version(self, scans: dict) -> str:
        return "1.4"

    def age_years(self) -> pl.Expr:
        """Completed years between dob and admittime (the >89 shift gives ≈ 300, which groups as 90+)."""
        from leadercli.data.cohort import age_mimic3

        return age_mimic3(pl.col("admittime"), pl.col("dob"))


class Mimic4(TableLayout):
    name = "mimic4"
    title = "MIMIC-IV v1.x / v2.x"
    admission_profile = ("insurance", "language", "admission_type", "marital_status", "race")
    default_top_procedures = 1000
    distill_weights = (0.8, 0.01)
    default_icd_version = None  # ICD-9 and ICD-10 mixed: raw codes need icd_version

    def detect_version(self, scans: dict) -> str:
        race_header = scans["admissions"].names.get("race") or ""
        return "1.x" if race_header.lower() == "ethnicity" else "2.x"

    def age_years(self) -> pl.Expr:
        from leadercli.data.cohort import age_mimic4

        return age_mimic4(pl.col("admittime"), pl.col("anchor_age"), pl.col("anchor_year"))


_PROFILE3 = tuple(Column(n) for n in Mimic3.admission_profile)
_PROFILE4 = (
    Column("insurance"),
    Column("language"),
    Column("admission_type"),
    Column("marital_status"),
    Column("race", aliases=("ethnicity",)),
)
_D_ICD3 = (Column("icd9_code"), Column("long_title", required=False), Column("short_title", required=False))
_D_ICD4 = (Column("icd_code"), Column("icd_version", INT), Column("long_title"))
_CODES3 = (*_ids("subject_id", "hadm_id"), Column("seq_num", INT, required=False), Column("icd9_code"))
_CODES4 = (
    *_ids("subject_id", "hadm_id"),
    Column("seq_num", INT, required=False),
    Column("icd_code"),
    Column("icd_version", INT),
)

MIMIC3 = Mimic3(
    _MimicSpec(
        specs={
            "admissions": TableSpec(
                "admissions",
                ("ADMISSIONS",),
                (*_ids("subject_id", "hadm_id"), Column("admittime", DATETIME), *_PROFILE3),
            ),
            "patients": TableSpec(
                "patients", ("PATIENTS",), (*_ids("subject_id"), Column("gender"), Column("dob", DATETIME))
            ),
            "diagnoses": TableSpec("diagnoses", ("DIAGNOSES_ICD",), _CODES3),
            "procedures": TableSpec("procedures", ("PROCEDURES_ICD",), _CODES3),
            "prescriptions": TableSpec(
                "prescriptions", ("PRESCRIPTIONS",), (*_ids("subject_id", "hadm_id"), Column("ndc"))
            ),
            "d_diagnoses": TableSpec("d_diagnoses", ("D_ICD_DIAGNOSES",), _D_ICD3),
            "d_procedures": TableSpec("d_procedures", ("D_ICD_PROCEDURES",), _D_ICD3),
        },
        code_column="icd9_code",
        patient_datetimes=("dob",),
    )
)
MIMIC4 = Mimic4(
    _MimicSpec(
        specs={
            "admissions": TableSpec(
                "admissions",
                ("admissions",),
                (*_ids("subject_id", "hadm_id"), Column("admittime", DATETIME), *_PROFILE4),
            ),
            "patients": TableSpec(
                "patients",
                ("patients",),
                (*_ids("subject_id"), Column("gender"), *_ids("anchor_age", "anchor_year")),
            ),
            "diagnoses": TableSpec("diagnoses", ("diagnoses_icd",), _CODES4),
            "procedures": TableSpec("procedures", ("procedures_icd",), _CODES4),
            "prescriptions": TableSpec(
                "prescriptions", ("prescriptions",), (*_ids("subject_id", "hadm_id"), Column("ndc"))
            ),
            "d_diagnoses": TableSpec("d_diagnoses", ("d_icd_diagnoses",), _D_ICD4),
            "d_procedures": TableSpec("d_procedures", ("d_icd_procedures",), _D_ICD4),
        },
        code_column="icd_code",
        subdirs=("hosp", "core"),
    )
)


@dataclass
class _Registry:
    layouts: dict[str, SourceLayout] = field(default_factory=dict)

    def get(self, name: str | SourceLayout) -> SourceLayout:
        if isinstance(name, SourceLayout):
            return name
        if name not in self.layouts:
            from leadercli.errors import SettingsError

            raise SettingsError(
                f"source {name!r} is not a known layout", f"Use one of {', '.join(sorted(self.layouts))}"
            )
        return self.layouts[name]


LAYOUTS = _Registry({"mimic3": MIMIC3, "mimic4": MIMIC4})


def get_layout(name: str | SourceLayout) -> SourceLayout:
    """The layout object of a source name (`data.source`, an artifact's `source`)."""
    if name == "meds" and "meds" not in LAYOUTS.layouts:
        from leadercli.data.meds import MEDS  # noqa: F401 - registers itself

    return LAYOUTS.get(name)
