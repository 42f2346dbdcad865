"""Write a MEDS dataset from MIMIC-IV `hosp/` tables, following the code conventions of the public MIMIC-IV
MEDS ETL (test and benchmark helper; not shipped):

- `HOSPITAL_ADMISSION//<admission_type>//<admission_location>` at admittime, with the extra columns `hadm_id`,
  `insurance`, `language`, `marital_status`, `race`; `HOSPITAL_DISCHARGE//<discharge_location>` at dischtime;
- `DIAGNOSIS//ICD//<version>//<code>` and `PROCEDURE//ICD//<version>//<code>` at dischtime (rows in seq_num
  order), `MEDICATION//<drug>//<ndc>` at starttime, each with `hadm_id`;
- `GENDER//<gender>` (static, no time) and `MEDS_BIRTH` on 1 January of anchor_year − anchor_age;
- `metadata/codes.parquet` (code, description = D_ICD long title, parent_codes), `metadata/subject_splits.parquet`
  (train / tuning / held_out by subject id), `metadata/dataset.json`.

`with_hadm=False` leaves out the `hadm_id` column (visits are then admission → discharge windows).
"""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl

DATA_SCHEMA = {
    "subject_id": pl.Int64,
    "time": pl.Datetime("us"),
    "code": pl.String,
    "numeric_value": pl.Float32,
    "hadm_id": pl.Int64,
    "insurance": pl.String,
    "language": pl.String,
    "marital_status": pl.String,
    "race": pl.String,
}


def _read(hosp: Path, stem: str) -> pl.DataFrame:
    path = next(p for p in (hosp / f"{stem}.csv", hosp / f"{stem}.csv.gz") if p.exists())
    return pl.read_csv(path, infer_schema=False)


def _ts(col: str) -> pl.Expr:
    return pl.col(col).str.to_datetime("%Y-%m-%d %H:%M:%S", strict=False, time_unit="us")


def _write(df: pl.DataFrame, path: Path) -> None:
    """Parquet with the MEDS pyarrow types (polars writes large_string; MEDS wants string)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = df.to_arrow()
    fields = []
    for f in table.schema:
        t = f.type
        if pa.types.is_large_string(t):
            t = pa.string()
        elif pa.types.is_large_list(t) or pa.types.is_list(t):
            t = pa.list_(pa.string())
        fields.append(pa.field(f.name, t))
    pq.write_table(table.cast(pa.schema(fields)), path)


def write_meds(hosp: Path, root: Path, with_hadm: bool = True, shards: int = 2) -> Path:
    hosp, root = Path(hosp), Path(root)
    adm = _read(hosp, "admissions")
    pat = _read(hosp, "patients")
    dx = _read(hosp, "diagnoses_icd")
    px = _read(hosp, "procedures_icd")
    rx = _read(hosp, "prescriptions")
    disch = adm.select("hadm_id", "dischtime")
    unk = pl.lit("UNK")
    frames = [
        adm.select(
            "subject_id",
            _ts("admittime").alias("time"),
            pl.format(
                "HOSPITAL_ADMISSION//{}//{}",
                pl.col("admission_type").fill_null("UNK"),
                pl.col("admission_location").fill_null(unk),
            ).alias("code"),
            "hadm_id",
            "insurance",
            "language",
            "marital_status",
            "race",
        ),
        adm.select(
            "subject_id",
            _ts("dischtime").alias("time"),
            pl.format("HOSPITAL_DISCHARGE//{}", pl.col("discharge_location").fill_null(unk)).alias("code"),
            "hadm_id",
        ),
    ]
    for df, head in ((dx, "DIAGNOSIS"), (px, "PROCEDURE")):
        df = df.join(disch, on="hadm_id", how="left").sort(
            [
                pl.col("subject_id").cast(pl.Int64),
                pl.col("hadm_id").cast(pl.Int64),
                pl.col("seq_num").cast(pl.Int64),
            ]
        )
        frames.append(
            df.select(
                "subject_id",
                _ts("dischtime").alias("time"),
                pl.format(head + "//ICD//{}//{}", pl.col("icd_version"), pl.col("icd_code")).alias("code"),
                "hadm_id",
            )
        )
    frames.append(
        rx.filter(pl.col("ndc").is_not_null() & pl.col("hadm_id").is_not_null()).select(
            "subject_id",
            _ts("starttime").alias("time"),
            pl.format("MEDICATION//{}//{}", pl.col("drug").fill_null(unk), pl.col("ndc")).alias("code"),
            "hadm_id",
        )
    )
    birth_year = pl.col("anchor_year").cast(pl.Int64) - pl.col("anchor_age").cast(pl.Int64)
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
    ]
    cols = [c for c in DATA_SCHEMA if c != "hadm_id" or with_hadm]
    events = pl.concat(
        [
            f.with_columns(pl.lit(None).alias(c) for c in cols if c not in f.columns).select(cols)
            for f in frames
        ],
        how="vertical_relaxed",
    ).with_columns(pl.col(c).cast(DATA_SCHEMA[c]) for c in cols)
    # MEDS order: by subject, then time (static events first), stable within a time
    events = events.with_row_index("_i").sort(["subject_id", "time", "_i"], nulls_last=False).drop("_i")
    (root / "data").mkdir(parents=True, exist_ok=True)
    subjects = events["subject_id"].unique().sort()
    for k in range(shards):
        part = events.filter(pl.col("subject_id").is_in(subjects.gather_every(shards, k).implode()))
        _write(part, root / "data" / f"{k}.parquet")
    meta = root / "metadata"
    meta.mkdir(exist_ok=True)
    titles = []
    for stem, head in (("d_icd_diagnoses", "DIAGNOSIS"), ("d_icd_procedures", "PROCEDURE")):
        d = _read(hosp, stem)
        titles.append(
            d.select(
                pl.format(head + "//ICD//{}//{}", pl.col("icd_version"), pl.col("icd_code")).alias("code"),
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
    split = pl.DataFrame({"subject_id": subjects}).with_columns(
        pl.when(pl.col("subject_id") % 10 < 8)
        .then(pl.lit("train"))
        .when(pl.col("subject_id") % 10 == 8)
        .then(pl.lit("tuning"))
        .otherwise(pl.lit("held_out"))
        .alias("split")
    )
    _write(split, meta / "subject_splits.parquet")
    (meta / "dataset.json").write_text(
        json.dumps(
            {"dataset_name": "MIMIC-IV demo (test)", "dataset_version": "2.2", "meds_version": "0.4.1"}
        )
    )
    return root
