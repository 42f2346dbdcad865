"""Vocabularies: frequency filters and ordered code lists with titles, fit on the training patients only.

Reference §1.3, §1.6 and §1.9, with the leakage fix of §7.13 and the collision fix of §7.8:

- a code's frequency is the number of *training* visits that carry it (the reference counts rows of the
  deduplicated tables over all splits); the `top` most frequent are kept (diagnoses 2000, ATC-3 300,
  procedures all on MIMIC-III / 1000 on MIMIC-IV by default; the reference's MIMIC-IV `loc[:1000]` kept 1001);
- order: frequency descending, ties by code; the medication order is the label order;
- titles: ICD titles as the layout reads them (`RawData.titles`; MIMIC: the D_ICD tables by (code, version)
  through the prefixed code, `mimic.icd_titles`); ATC level-3 names from the WHO ATC-DDD list, lower-cased
  like the reference. A code without a title gets "" (the reference
  silently drops such codes from prompts);
- profile value lists: the sorted distinct values of each field over the training patients.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from leadercli.data.artifact import CodeList, Vocab
from leadercli.data.tables import Column, TableSpec, collect, scan_table

WHO_SPEC = TableSpec("who_atc", ("WHO ATC-DDD",), (Column("atc_code"), Column("atc_name")))


def top_codes(
    events: pl.DataFrame | pl.LazyFrame, train_ids: pl.DataFrame, top: int | None, code_col: str = "code"
) -> list[str]:
    """Codes of `events` (unique per visit and code) ranked by the number of training visits carrying them."""
    counts = (
        events.lazy()
        .join(train_ids.lazy().select("subject_id"), on="subject_id", how="semi")
        .group_by(code_col)
        .agg(pl.len().alias("n"))
        .collect(engine="streaming")
        .sort(["n", code_col], descending=[True, False])
    )
    if top is not None:
        counts = counts.head(top)
    return counts[code_col].to_list()


def atc3_names(who_path: Path) -> pl.DataFrame:
    """WHO ATC-DDD csv → (code, title) for the 4-character (level 3) codes, names lower-cased."""
    df = collect(scan_table(who_path, WHO_SPEC))
    return (
        df.with_columns(pl.col("atc_code").str.to_uppercase())
        .filter(pl.col("atc_code").str.len_chars() == 4)
        .select(
            pl.col("atc_code").alias("code"),
            pl.col("atc_name").str.to_lowercase().fill_null("").alias("title"),
        )
        .unique("code", keep="first", maintain_order=True)
    )


def code_list(codes: list[str], titles: pl.DataFrame) -> CodeList:
    lookup = dict(zip(titles["code"].to_list(), titles["title"].to_list(), strict=True))
    return CodeList(list(codes), [lookup.get(c) or "" for c in codes])


def profile_values(patients: pl.DataFrame, fields: tuple[str, ...]) -> dict[str, list[str]]:
    """Sorted distinct values of each profile field among `patients` (pass the training patients)."""
    return {f: sorted(patients[f].unique().drop_nulls().to_list()) for f in fields}


def missing_titles(codes: CodeList) -> int:
    return sum(1 for t in codes.titles if not t)


def build_vocab(
    diagnoses: list[str],
    procedures: list[str],
    medications: list[str],
    titles: dict[str, pl.DataFrame],
    profile: dict[str, list[str]],
) -> Vocab:
    return Vocab(
        diagnoses=code_list(diagnoses, titles["diagnoses"]),
        procedures=code_list(procedures, titles["procedures"]),
        medications=code_list(medications, titles["medications"]),
        profile=profile,
    )
