"""The cohort: which admissions are visits, their order, their code lists and the patient profile.

Reference §1.3-1.5, with the fixes of §7.7-8 and §7.11:

- codes carry kind and ICD version (`D9:4019`, `D10:I10`, `P9:3893`, `P10:0DTJ4ZZ`; the rule is
  `data/codes.py`, each layout applies it when it reads its codes);
- a visit is an admission with ≥ 1 diagnosis, ≥ 1 procedure and ≥ 1 mapped medication that is in ADMISSIONS;
- visits are ordered by admit time (ties by hadm_id), not by hadm_id; `visit_no` is 0-based;
- code lists: diagnoses and procedures by their `seq_num` (then code), medications alphabetically; unique;
- profile of an admission: the ADMISSIONS fields (MIMIC-III insurance, language, religion, marital_status,
  ethnicity; MIMIC-IV insurance, language, admission_type, marital_status, race), missing/blank → "unknown"
  (the reference's fillna), plus `gender` and `age_group` from PATIENTS (the reference reads neither).

Age at admission: MIMIC-III from `dob` and `admittime` in whole years (patients older than 89 have their dob
shifted 300 years back, so their computed age is ≈ 300: every age ≥ 90 is "90+"); MIMIC-IV from
`anchor_age + (year(admittime) − anchor_year)` (anchor ages above 89 are stored as 91). Age groups:
0-17, 18-29, 30-39, 40-49, 50-59, 60-69, 70-79, 80-89, 90+ ("unknown" when the patient or a date is missing).
"""

from __future__ import annotations

import polars as pl

from leadercli.data.artifact import PATIENT_PROFILE, UNKNOWN
from leadercli.data.tables import by_subject_partition

AGE_GROUPS = ("0-17", "18-29", "30-39", "40-49", "50-59", "60-69", "70-79", "80-89", "90+")
KEYS = ["subject_id", "hadm_id"]


# -- visits ---------------------------------------------------------------------------------------------------
def visit_keys(*events: pl.DataFrame) -> pl.DataFrame:
    """(subject_id, hadm_id) present in every events frame."""
    keys = events[0].lazy().select(KEYS).unique()
    for ev in events[1:]:
        keys = keys.join(ev.lazy().select(KEYS).unique(), on=KEYS, how="semi")
    return keys.collect(engine="streaming").sort(KEYS)  # streaming: hash tables of the visits, not the rows


def order_visits(keys: pl.DataFrame, admissions: pl.DataFrame) -> pl.DataFrame:
    """Attach admittime from ADMISSIONS (inner: visits without an admission row or admit time are dropped) and
    number each patient's visits 0, 1, … by admit time, ties broken by hadm_id."""
    adm = (
        admissions.select([*KEYS, "admittime"])
        .filter(pl.col("admittime").is_not_null())
        .unique(KEYS, keep="first")
    )
    out = keys.join(adm, on=KEYS, how="inner").sort(["subject_id", "admittime", "hadm_id"])
    return out.with_columns(pl.int_range(pl.len()).over("subject_id").cast(pl.Int32).alias("visit_no"))


def code_lists(events: pl.DataFrame, name: str, by_seq: bool) -> pl.DataFrame:
    """Long (subject_id, hadm_id, code[, seq]) → (subject_id, hadm_id, name: list[str]) in a fixed order."""
    # one global sort, then an order-keeping group-by: 2.2x cheaper than sorting inside every group
    by = [*KEYS, "seq", "code"] if by_seq else [*KEYS, "code"]

    # (nulls as before: by_seq puts a missing seq or code last, the plain code sort puts a missing code first)
    # per subject partition (`tables.by_subject_partition`): a visit's codes are never split, and each sort
    # holds one partition's copy
    def lists(lf: pl.LazyFrame) -> pl.LazyFrame:
        ordered = lf.select([*KEYS, "code", *(["seq"] if by_seq else [])]).sort(by, nulls_last=by_seq)
        return ordered.group_by(KEYS, maintain_order=True).agg(pl.col("code").alias(name))

    return by_subject_partition(events, lists)


def assemble(ordered: pl.DataFrame, dx: pl.DataFrame, px: pl.DataFrame, meds: pl.DataFrame) -> pl.DataFrame:
    """Ordered visit keys + long code frames → one row per visit with the three code lists."""
    med_long = meds.rename({"atc3": "code"})
    out = (
        ordered.join(code_lists(dx, "diagnoses", True), on=KEYS, how="inner")
        .join(code_lists(px, "procedures", True), on=KEYS, how="inner")
        .join(code_lists(med_long, "medications", False), on=KEYS, how="inner")
    )
    return out.sort(["subject_id", "visit_no"])


# -- profile --------------------------------------------------------------------------------------------------
def fill_unknown(expr: pl.Expr) -> pl.Expr:
    s = expr.cast(pl.String).str.strip_chars()
    return pl.when(s.is_null() | (s == "")).then(pl.lit(UNKNOWN)).otherwise(s)


def age_group(age: pl.Expr) -> pl.Expr:
    """Whole-year age → group label; null or negative ages → "unknown"."""
    expr = pl.when(age.is_null() | (age < 0)).then(pl.lit(UNKNOWN))
    for upper, label in zip((18, 30, 40, 50, 60, 70, 80, 90), AGE_GROUPS[:-1], strict=True):
        expr = expr.when(age < upper).then(pl.lit(label))
    return expr.otherwise(pl.lit("90+"))


def age_mimic3(admittime: pl.Expr, dob: pl.Expr) -> pl.Expr:
    """Completed years between dob and admittime (the >89 shift gives ≈ 300, which groups as 90+)."""
    before_birthday = (admittime.dt.month() < dob.dt.month()) | (
        (admittime.dt.month() == dob.dt.month()) & (admittime.dt.day() < dob.dt.day())
    )
    return admittime.dt.year().cast(pl.Int64) - dob.dt.year().cast(pl.Int64) - before_birthday.cast(pl.Int64)


def age_mimic4(admittime: pl.Expr, anchor_age: pl.Expr, anchor_year: pl.Expr) -> pl.Expr:
    return anchor_age + (admittime.dt.year().cast(pl.Int64) - anchor_year)


def visit_profile(
    visits: pl.DataFrame, admissions: pl.DataFrame, patients: pl.DataFrame, layout
) -> pl.DataFrame:
    """Add the profile columns (the `layout`'s admission profile + gender, age_group) to each visit row;
    `layout` is a `layouts.SourceLayout` (its `admission_profile` and `age_years()`)."""
    fields = list(layout.admission_profile)
    adm = admissions.select([*KEYS, *fields]).unique(KEYS, keep="first")
    pat = patients.unique("subject_id", keep="first")
    out = visits.join(adm, on=KEYS, how="left").join(pat, on="subject_id", how="left")
    age = layout.age_years()
    out = out.with_columns(
        *[fill_unknown(pl.col(f)).alias(f) for f in fields],
        fill_unknown(pl.col("gender")).alias("gender"),
        age_group(age).alias("age_group"),
    )
    base = [c for c in visits.columns]
    return out.select([*base, *fields, *PATIENT_PROFILE])


def patient_table(visits: pl.DataFrame, splits: pl.DataFrame, fields: tuple[str, ...]) -> pl.DataFrame:
    """One row per patient: subject_id, split, n_visits, profile at the first kept visit."""
    first = visits.filter(pl.col("visit_no") == 0).select(["subject_id", *fields])
    counts = visits.group_by("subject_id").agg(pl.len().cast(pl.Int32).alias("n_visits"))
    out = splits.join(counts, on="subject_id", how="inner").join(first, on="subject_id", how="inner")
    return out.select(["subject_id", "split", "n_visits", *fields]).sort("subject_id")
