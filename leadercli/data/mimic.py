"""The MIMIC layouts (`--source mimic3`, `--source mimic4`): CSV tables → `RawData` (reference §1.1-1.3).

One `TableLayout` per MIMIC version: a `TableSpec` per table role, the column that holds ICD codes and where
their version comes from (MIMIC-III: all ICD-9; MIMIC-IV: the `icd_version` column), the age rule and the
reference's defaults. The tables are found in the folder given and, for MIMIC-IV, in its `hosp/` and (v1.x)
`core/` sub-folders, and scanned with `data/tables.py` (names and headers in any case, `.csv` or `.csv.gz`,
explicit dtypes, every problem an `InputError` naming the file and column).

Diagnosis and procedure rows become one row per visit and code, prefixed by the rule of `data/codes.py`
(`D9:4019`, `P10:0DTJ4ZZ`): the rows are grouped by visit, ICD version and the code as written, and only the
few distinct (version, raw code) pairs are cleaned and prefixed. Raw spellings that clean to the same code
(`401.9`, `4019`) are merged; a row without a usable code or hadm_id is dropped; `seq` is the smallest
`seq_num` of the visit's rows with that code.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import polars as pl

from leadercli import console
from leadercli.data.codes import prefixed, usable
from leadercli.data.cohort import age_mimic3, age_mimic4
from leadercli.data.layouts import RawData, SourceLayout
from leadercli.data.tables import (
    DATETIME,
    INT,
    Column,
    TableSpec,
    by_subject_partition,
    collect,
    find_file,
    parse_datetimes,
    require_rows,
    scan_table,
)
from leadercli.errors import InputError

RAW_ROLES = (
    "admissions",
    "patients",
    "diagnoses",
    "procedures",
    "prescriptions",
    "d_diagnoses",
    "d_procedures",
)


@dataclass(frozen=True)
class MimicSpec:
    specs: dict[str, TableSpec]  # raw role → its table
    code_column: str  # the ICD code column of the diagnoses / procedures / d_icd tables
    subdirs: tuple[str, ...] = ()  # sub-folders also searched for the tables (MIMIC-IV hosp/, core/)
    patient_datetimes: tuple[str, ...] = ()  # PATIENTS columns parsed as dates (MIMIC-III dob)


class TableLayout(SourceLayout):
    """A layout of CSV tables (MIMIC-III, MIMIC-IV): one `TableSpec` per role, ICD codes in `code_column`
    with their version in `icd_version` (or one fixed version)."""

    def __init__(self, spec: MimicSpec) -> None:
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
        return locate_tables(Path(raw), self)

    def detect_version(self, scans: dict) -> str:
        raise NotImplementedError

    # -- reading ---------------------------------------------------------------------------------------------
    def read(self, files: dict[str, Path], allow_empty_prescriptions: bool = False) -> RawData:
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
        return age_mimic4(pl.col("admittime"), pl.col("anchor_age"), pl.col("anchor_year"))


def _ids(*names: str) -> tuple[Column, ...]:
    return tuple(Column(n, INT) for n in names)


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
    MimicSpec(
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
    MimicSpec(
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


# -- locating and reading the tables --------------------------------------------------------------------------
def locate_tables(raw: Path, layout: TableLayout) -> dict[str, Path]:
    """The CSV tables of a `TableLayout`; a missing folder or table is an InputError naming it."""
    if not raw.is_dir():
        raise InputError(
            f"raw data folder {raw} does not exist", "Pass the folder holding the MIMIC tables with --raw"
        )
    dirs = layout.search_dirs(raw)
    found: dict[str, Path] = {}
    for role in RAW_ROLES:
        spec = layout.table_spec(role)
        path = find_file(dirs, spec.stems, role)
        if path is None:
            sub = f" (or its {'/, '.join(layout.spec.subdirs)}/ folder)" if layout.spec.subdirs else ""
            raise InputError(
                f"{spec.stems[0]}.csv[.gz] not found in {raw}{sub}",
                f"Check --raw and --source ({layout.name}); file names may be any case, .csv or .csv.gz",
            )
        found[role] = path
    return found


def read_tables(
    layout: TableLayout, files: dict[str, Path], allow_empty_prescriptions: bool = False
) -> RawData:
    """Scan and collect the raw tables of a `TableLayout` into `RawData` (`allow_empty_prescriptions`: a new
    cohort may have none yet)."""
    scans = {role: scan_table(path, layout.table_spec(role)) for role, path in files.items()}
    counts: dict[str, dict] = {}

    with console.step("Reading admissions and patients"):
        adm = parse_datetimes(collect(scans["admissions"]), "admittime", scans["admissions"])
        pat = collect(scans["patients"])
        for col in layout.spec.patient_datetimes:
            pat = parse_datetimes(pat, col, scans["patients"])
    counts["admissions"] = {"rows": adm.height}
    counts["patients"] = {"rows": pat.height}

    events = {}
    for role in ("diagnoses", "procedures"):
        with console.step(f"Reading {role}"):
            rows = collect(scans[role], lambda lf: code_event_rows(lf, layout))
            pairs, merged = code_pairs(rows, role)
            ev = by_subject_partition(
                rows, lambda lf, p=pairs: prefix_query(group_code_events(lf), p, usable_only=True)
            )
            ev = usable_events(merge_spellings(ev) if merged else ev)
            n_rows, rows = rows.height, None
        require_rows(ev, files[role], "no row has an ICD code and a hadm_id")
        events[role] = ev
        counts[role] = {"rows": n_rows, "visit_codes": ev.height, "admissions": ev["hadm_id"].n_unique()}
        console.info(f"  {role}: {n_rows:,} rows, {ev.height:,} distinct (admission, code)")

    with console.step("Reading prescriptions"):
        # one row per prescription, the NDC as a categorical (integers); grouping and the NDC join happen in
        # `mapping.map_medications`, per subject partition, after the few distinct NDCs are mapped
        rx = collect(
            scans["prescriptions"],
            lambda lf: lf.select("subject_id", "hadm_id", pl.col("ndc").cast(pl.Categorical)),
            allow_empty=allow_empty_prescriptions,
        )
    with console.step("Reading ICD dictionaries"):
        d_dx = collect(scans["d_diagnoses"])
        d_px = collect(scans["d_procedures"])
    counts["d_diagnoses"] = {"rows": d_dx.height}
    counts["d_procedures"] = {"rows": d_px.height}
    titles = {
        "diagnoses": icd_titles(d_dx, "diagnoses", layout),
        "procedures": icd_titles(d_px, "procedures", layout),
    }
    return RawData(
        adm, pat, events["diagnoses"], events["procedures"], rx, titles, counts, layout.detect_version(scans)
    )


def icd_titles(d_table: pl.DataFrame, kind: str, layout: TableLayout) -> pl.DataFrame:
    """D_ICD_DIAGNOSES / D_ICD_PROCEDURES → (code [prefixed], title); short title when a long one is missing."""
    code_col, version = layout.spec.code_column, layout.icd_version()
    if "short_title" in d_table.columns:
        title = pl.coalesce([pl.col("long_title"), pl.col("short_title")])
    else:
        title = pl.col("long_title")
    return (
        d_table.filter(pl.col(code_col).is_not_null() & version.is_not_null())
        .select(prefixed(kind, version, pl.col(code_col)).alias("code"), title.fill_null("").alias("title"))
        .unique("code", keep="first", maintain_order=True)
    )


# -- diagnosis and procedure rows → prefixed visit codes ------------------------------------------------------
def code_event_rows(lf: pl.LazyFrame, layout: TableLayout) -> pl.LazyFrame:
    """Raw DIAGNOSES_ICD / PROCEDURES_ICD rows → (subject_id, hadm_id, version, raw, seq_num): the ICD version
    and the code as written (a Categorical, so that grouping hashes integers)."""
    return lf.select(
        "subject_id",
        "hadm_id",
        layout.icd_version().alias("version"),
        pl.col(layout.spec.code_column).cast(pl.Categorical).alias("raw"),
        "seq_num",
    )


def group_code_events(lf: pl.LazyFrame) -> pl.LazyFrame:
    """`code_event_rows` → (subject_id, hadm_id, version, raw, seq, n) grouped by visit, version and raw code;
    `seq` = the smallest seq_num, `n` = raw rows."""
    return lf.group_by(["subject_id", "hadm_id", "version", "raw"]).agg(
        pl.col("seq_num").min().alias("seq"), pl.len().alias("n")
    )


def code_pairs(rows: pl.DataFrame, kind: str) -> tuple[pl.DataFrame, bool]:
    """The distinct (version, raw) pairs of `code_event_rows` (or of its grouped form) with their prefixed
    `code` (null when unusable), and whether two raw spellings clean to the same code (`401.9`, `4019`)."""
    pairs = rows.select("version", "raw").unique()
    code = prefixed(kind, pl.col("version"), pl.col("raw").cast(pl.String))
    pairs = pairs.with_columns(pl.when(usable(code)).then(code).otherwise(None).alias("code"))
    merged = pairs.filter(pl.col("code").is_not_null()).group_by("code").len().filter(pl.col("len") > 1)
    return pairs, merged.height > 0


def prefix_query(lf: pl.LazyFrame, pairs: pl.DataFrame, usable_only: bool = False) -> pl.LazyFrame:
    """Grouped (subject_id, hadm_id, version, raw, seq, n) → (subject_id, hadm_id, code, seq, n) through the
    `code_pairs` table; rows without a usable code or hadm_id get code = null (`usable_only`: are dropped)."""
    out = lf.join(pairs.lazy(), on=["version", "raw"], how="left", nulls_equal=True).select(
        "subject_id",
        "hadm_id",
        pl.when(pl.col("hadm_id").is_not_null()).then(pl.col("code")).alias("code"),
        "seq",
        "n",
    )
    return out.filter(pl.col("code").is_not_null()) if usable_only else out


def merge_spellings(events: pl.DataFrame) -> pl.DataFrame:
    """One row per visit and code where two raw spellings gave the same prefixed code."""
    return events.group_by(["subject_id", "hadm_id", "code"]).agg(pl.col("seq").min(), pl.col("n").sum())


def usable_events(grouped: pl.DataFrame) -> pl.DataFrame:
    """The rows of `prefix_query`'s result that are visit codes: (subject_id, hadm_id, code, seq)."""
    return grouped.filter(pl.col("code").is_not_null()).select("subject_id", "hadm_id", "code", "seq")


def code_events(df: pl.DataFrame, kind: str, layout: TableLayout) -> pl.DataFrame:
    """The visit codes of a small raw DIAGNOSES_ICD / PROCEDURES_ICD frame, eagerly (`read_tables` streams the
    same steps): (subject_id, hadm_id, code, seq)."""
    rows = code_event_rows(df.lazy(), layout).collect()
    pairs, merged = code_pairs(rows, kind)
    out = prefix_query(group_code_events(rows.lazy()), pairs).collect()
    return usable_events(merge_spellings(out) if merged else out)
