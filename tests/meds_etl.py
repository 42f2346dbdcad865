"""Write MEDS the way the public MIMIC-IV MEDS ETL writes it (test and benchmark helper; not shipped).

Written by hand to the conventions of `mimic-iv-meds` 0.2.0 (its `event_configs.yaml`, on `meds-extract` 0.7 /
`MEDS-transforms` 0.7), not by running that package: its spec needs tables the bundled demo lacks (`pharmacy`,
`emar`, `icu/*`, …), so only the hosp tables the demo has are converted, and drugs come from `prescriptions`
written as the spec's `pharmacy` block writes them. What matters for leadercli is kept exactly:

- `HOSPITAL_ADMISSION//<admission_type>//<admission_location ?? UNK>` at admittime and
  `HOSPITAL_DISCHARGE//<discharge_location ?? UNK>` at dischtime, with `hadm_id`; `INSURANCE//`, `LANGUAGE//`,
  `MARITAL_STATUS//`, `RACE//` events at admittime with `hadm_id` (a null value writes no event);
  `ED_REGISTRATION` / `ED_OUT` at edregtime / edouttime without `hadm_id`;
- `DIAGNOSIS//ICD//<version>//<code>` and `PROCEDURE//ICD//<version>//<code>` at dischtime with `hadm_id`; the
  shards are sorted by (subject_id, time, code), so codes of one visit are in code order, not `seq_num` order;
- `MEDICATION//START//<drug ?? UNK>//<ndc>` at starttime and `MEDICATION//STOP//…` at stoptime (rows without a
  stop time write no STOP event), *without* `hadm_id`; `ndc` is read as an integer, so leading zeros are lost,
  and `0` / null is written `UNK`;
- `GENDER//<gender>` static (null time), `MEDS_BIRTH` on 1 January of anchor_year − anchor_age, `MEDS_DEATH`;
- shards `data/{train,tuning,held_out}/<k>.parquet` of `n_subjects_per_shard` subjects (1000 by default, so the
  demo gives three files named `0.parquet`); `metadata/codes.parquet` (code, description, parent_codes),
  `metadata/subject_splits.parquet`, `metadata/dataset.json`.
"""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
from meds_from_mimic import _read, _ts, _write

DATA_SCHEMA = {
    "subject_id": pl.Int64,
    "time": pl.Datetime("us"),
    "code": pl.String,
    "numeric_value": pl.Float32,
    "hadm_id": pl.Int64,
}
SPLITS = ("train", "tuning", "held_out")


def _split_of(subject: pl.Expr) -> pl.Expr:
    """80 / 10 / 10 by a hash of the subject id (the ETL draws a seeded random split)."""
    h = subject.hash(seed=0) % 10
    return (
        pl.when(h < 8).then(pl.lit("train")).when(h == 8).then(pl.lit("tuning")).otherwise(pl.lit("held_out"))
    )


def etl_events(hosp: Path) -> pl.DataFrame:
    """Every event of the demo's hosp tables, in the ETL's codes, sorted by (subject_id, time, code)."""
    hosp = Path(hosp)
    adm = _read(hosp, "admissions")
    pat = _read(hosp, "patients")
    rx = _read(hosp, "prescriptions")
    unk = pl.lit("UNK")
    frames = [
        adm.select(
            "subject_id",
            _ts("admittime").alias("time"),
            pl.format(
                "HOSPITAL_ADMISSION//{}//{}", "admission_type", pl.col("admission_location").fill_null(unk)
            ).alias("code"),
            "hadm_id",
        ),
        adm.select(
            "subject_id",
            _ts("dischtime").alias("time"),
            pl.format("HOSPITAL_DISCHARGE//{}", pl.col("discharge_location").fill_null(unk)).alias("code"),
            "hadm_id",
        ),
        adm.select("subject_id", _ts("edregtime").alias("time"), pl.lit("ED_REGISTRATION").alias("code")),
        adm.select("subject_id", _ts("edouttime").alias("time"), pl.lit("ED_OUT").alias("code")),
    ]
    frames += [
        adm.filter(pl.col(col).is_not_null()).select(
            "subject_id",
            _ts("admittime").alias("time"),
            pl.format(head + "//{}", col).alias("code"),
            "hadm_id",
        )
        for col, head in (
            ("insurance", "INSURANCE"),
            ("language", "LANGUAGE"),
            ("marital_status", "MARITAL_STATUS"),
            ("race", "RACE"),
        )
    ]
    disch = adm.select("hadm_id", "dischtime")
    for stem, head in (("diagnoses_icd", "DIAGNOSIS"), ("procedures_icd", "PROCEDURE")):
        df = _read(hosp, stem).join(disch, on="hadm_id", how="left")
        frames.append(
            df.select(
                "subject_id",
                _ts("dischtime").alias("time"),
                pl.format(head + "//ICD//{}//{}", "icd_version", "icd_code").alias("code"),
                "hadm_id",
            )
        )
    ndc = pl.col("ndc").cast(pl.Int64, strict=False)  # the ETL reads ndc as an integer
    ndc_clean = pl.when(ndc.fill_null(0) == 0).then(unk).otherwise(ndc.cast(pl.String))
    drug = pl.col("drug").fill_null(unk)
    for what, col in (("START", "starttime"), ("STOP", "stoptime")):
        frames.append(
            rx.select(
                "subject_id",
                _ts(col).alias("time"),
                pl.format("MEDICATION//" + what + "//{}//{}", drug, ndc_clean).alias("code"),
            ).filter(pl.col("time").is_not_null())
        )
    birth_year = pl.col("anchor_year").cast(pl.Int64) - pl.col("anchor_age").cast(pl.Int64)
    death = adm.group_by("subject_id").agg(_ts("deathtime").min().alias("deathtime"))
    frames += [
        pat.select(
            "subject_id",
            pl.lit(None, dtype=pl.Datetime("us")).alias("time"),
            pl.format("GENDER//{}", "gender").alias("code"),
        ),
        pat.select(
            "subject_id",
            pl.datetime(birth_year, 1, 1, time_unit="us").alias("time"),
            pl.lit("MEDS_BIRTH").alias("code"),
        ),
        pat.join(death, on="subject_id", how="left")
        .select(
            "subject_id",
            pl.coalesce(
                "deathtime", pl.col("dod").str.to_datetime("%Y-%m-%d", strict=False, time_unit="us")
            ).alias("time"),
            pl.lit("MEDS_DEATH").alias("code"),
        )
        .filter(pl.col("time").is_not_null()),
    ]
    cols = list(DATA_SCHEMA)
    events = pl.concat(
        [
            f.with_columns(pl.lit(None).alias(c) for c in cols if c not in f.columns).select(cols)
            for f in frames
        ],
        how="vertical_relaxed",
    ).with_columns(pl.col(c).cast(t) for c, t in DATA_SCHEMA.items())
    events = events.filter(pl.col("time").is_not_null() | pl.col("code").str.starts_with("GENDER//"))
    return events.sort(["subject_id", "time", "code"], nulls_last=False, maintain_order=True)


def write_etl_meds(hosp: Path, root: Path, n_subjects_per_shard: int = 1000) -> Path:
    """The MEDS root `root` from the MIMIC-IV tables in `hosp` (see the module docstring)."""
    hosp, root = Path(hosp), Path(root)
    events = etl_events(hosp)
    subjects = events.select(pl.col("subject_id").unique().sort()).with_columns(
        _split_of(pl.col("subject_id")).alias("split")
    )
    for split in SPLITS:
        ids = subjects.filter(pl.col("split") == split)["subject_id"]
        (root / "data" / split).mkdir(parents=True, exist_ok=True)
        for k, start in enumerate(range(0, len(ids), n_subjects_per_shard)):
            part = ids.slice(start, n_subjects_per_shard).implode()
            _write(events.filter(pl.col("subject_id").is_in(part)), root / "data" / split / f"{k}.parquet")
    meta = root / "metadata"
    meta.mkdir(exist_ok=True)
    titles = []
    for stem, head in (("d_icd_diagnoses", "DIAGNOSIS"), ("d_icd_procedures", "PROCEDURE")):
        d = _read(hosp, stem)
        titles.append(
            d.select(
                pl.format(head + "//ICD//{}//{}", "icd_version", "icd_code").alias("code"),
                pl.col("long_title").alias("description"),
            )
        )
    codes = (
        pl.concat(titles)
        .unique("code", keep="first")
        .join(events.select("code").unique(), on="code", how="semi")
    )
    codes = codes.with_columns(pl.lit(None, dtype=pl.List(pl.String)).alias("parent_codes")).sort("code")
    _write(codes, meta / "codes.parquet")
    _write(subjects, meta / "subject_splits.parquet")
    (meta / "dataset.json").write_text(
        json.dumps(
            {
                "dataset_name": "MIMIC-IV",
                "dataset_version": "2.2 demo (ETL conventions, test fixture)",
                "etl_name": "MIMIC_IV_MEDS",
                "etl_version": "0.2.0",
                "meds_version": "0.4.1",
            }
        )
    )
    return root
