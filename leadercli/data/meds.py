"""The MEDS layout (`--source meds`): the Medical Event Data Standard (the `meds` package, v0.4) → `RawData`.

A MEDS root holds `data/**/*.parquet` (events: `subject_id` int64, `time` timestamp[us] or null for static
events, `code` string, `numeric_value`, plus extra columns) and `metadata/` (`codes.parquet`: `code`,
`description`, `parent_codes`; `subject_splits.parquet`: `subject_id`, `split` ∈ train / tuning / held_out;
`dataset.json`). Codes are matched by the regular expressions of the `[meds]` settings, whose defaults follow
the public MIMIC-IV MEDS ETL:

| leadercli concept | default code pattern | notes |
|---|---|---|
| diagnosis | `DIAGNOSIS//ICD//<version>//<code>` | → `D<version>:<code>` |
| procedure | `PROCEDURE//ICD//<version>//<code>` | → `P<version>:<code>` |
| drug (NDC) | `MEDICATION//…//<ndc>` | NDC → ATC-3 by the same two routes as MIMIC |
| drug (ATC) | `MEDICATION//…//ATC//<atc>` | taken as it is (first 4 characters) |
| admission / discharge | `HOSPITAL_ADMISSION//<admission_type>//…` / `HOSPITAL_DISCHARGE//…` | admit time; window end |
| profile | `GENDER//…`, `MEDS_BIRTH`, `INSURANCE//`, `LANGUAGE//`, `MARITAL_STATUS//`, `RACE//` | or the admission event's `insurance`, `language`, `marital_status`, `race` columns (as the MIMIC-IV ETL writes them) |

A visit is the value of the `visit_column` extra column (`hadm_id`) where the data has one; otherwise the window
from an admission event to the next discharge event of the subject (inclusive; events after the last
discharge belong to an open last visit). Events without a time are static and feed the profile. Titles of
diagnosis and procedure codes come from `metadata/codes.parquet` descriptions. With `data.split = "meds"` the
split is `metadata/subject_splits.parquet` (train → train, tuning → val, held_out → test).

The events are scanned lazily (polars, streaming): only the columns used are read, and codes are matched once
per distinct code string, not once per event.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import polars as pl

from leadercli import console
from leadercli.data.codes import clean_code, prefixed
from leadercli.data.cohort import age_mimic3
from leadercli.data.layouts import RawData, SourceLayout
from leadercli.errors import InputError
from leadercli.settings import MedsSettings

PROFILE_CODES = ("insurance", "language", "marital_status", "race")
SPLIT_NAMES = {"train": "train", "tuning": "val", "held_out": "test"}


class MedsLayout(SourceLayout):
    name = "meds"
    title = "MEDS v0.4 (Medical Event Data Standard)"
    admission_profile = ("insurance", "language", "admission_type", "marital_status", "race")
    default_top_procedures = (
        1000  # the MIMIC-IV reference filter (MEDS datasets are typically MIMIC-IV-sized)
    )
    distill_weights = (0.8, 0.01)
    default_icd_version = None

    def __init__(self, patterns=None) -> None:
        self.patterns = patterns

    def configure(self, settings) -> MedsLayout:
        return MedsLayout(settings.meds if settings is not None else None)

    def _pat(self):
        if self.patterns is None:
            self.patterns = MedsSettings()
        return self.patterns

    def age_years(self) -> pl.Expr:
        return age_mimic3(pl.col("admittime"), pl.col("dob"))

    # -- files ----------------------------------------------------------------------------------------------
    def locate(self, raw: Path, settings=None) -> dict[str, Path]:
        if settings is not None:
            self.patterns = settings.meds
        raw = Path(raw)
        if not raw.is_dir():
            raise InputError(
                f"MEDS root {raw} does not exist", "Pass the folder holding data/ and metadata/ with --raw"
            )
        data = raw / "data"
        shards = sorted(p for p in data.rglob("*.parquet") if p.is_file()) if data.is_dir() else []
        if not shards:
            raise InputError(
                f"{raw} has no data/*.parquet files (not a MEDS root)",
                "Pass the MEDS root (the folder with data/ and metadata/), or choose another --source",
            )
        files = {f"data/{p.relative_to(data)}": p for p in shards}
        for name in ("codes.parquet", "subject_splits.parquet", "dataset.json"):
            p = raw / "metadata" / name
            if p.is_file():
                files[f"metadata/{name}"] = p
        return files

    # -- reading --------------------------------------------------------------------------------------------
    def read(self, files: dict[str, Path], allow_empty_prescriptions: bool = False) -> RawData:
        pat = self._pat()
        shards = [p for k, p in files.items() if k.startswith("data/")]
        events, extra = _scan_events(shards, pat.visit_column)
        with console.step("Reading MEDS codes"):
            codes = _classify_codes(events, pat)
        counts: dict[str, dict] = {"events": {"rows": int(codes["n"].sum()), "codes": codes.height}}
        wanted = events.join(codes.lazy().select("code", "kind", "value", "version"), on="code", how="inner")
        with console.step("Reading MEDS events"):
            if pat.visit_column in extra:  # visits named by a column: aggregate while streaming the shards
                ev, dx, px, rx, atc = _read_keyed(wanted, shards[0].parent)
            else:  # visits are admission → discharge windows: every timed event needs its window
                ev = _assign_visits(_collect(wanted, shards[0].parent))
                dx, px, rx, atc = _aggregate(ev.lazy(), shards[0].parent)
        adm, pat_frame = _admissions_and_patients(ev, extra)
        root = shards[0].parent
        if dx.height == 0:
            raise InputError(
                f"no event in {root} matches the diagnosis pattern inside a visit",
                "Check meds.diagnosis (and meds.visit_column / the admission and discharge patterns)",
            )
        for role, frame in (
            ("admissions", adm),
            ("patients", pat_frame),
            ("diagnoses", dx),
            ("procedures", px),
        ):
            counts[role] = {"rows": frame.height}
        counts["prescriptions"] = {"rows": int(rx["n"].sum()) if rx.height else 0, "atc_rows": atc.height}
        titles = _titles(files.get("metadata/codes.parquet"), codes)
        splits = _splits(files.get("metadata/subject_splits.parquet"))
        version = _dataset_version(files.get("metadata/dataset.json"))
        console.info(
            f"  MEDS: {counts['events']['rows']:,} events matched, {adm.height:,} visits, {dx.height:,} diagnoses, "
            f"{px.height:,} procedures, {counts['prescriptions']['rows']:,} NDC and {atc.height:,} ATC drug events"
        )
        return RawData(adm, pat_frame, dx, px, rx, titles, counts, version, atc_events=atc, splits=splits)


def _scan_events(shards: list[Path], visit_column: str) -> tuple[pl.LazyFrame, set[str]]:
    try:
        schema = pl.scan_parquet(shards[0]).collect_schema()
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise InputError(
            f"{shards[0]} is not a readable parquet file ({type(exc).__name__})", "Re-export the MEDS data"
        ) from None
    for col in ("subject_id", "time", "code"):
        if col not in schema:
            raise InputError(
                f"{shards[0]}: column '{col}' is missing", "MEDS data needs subject_id, time and code"
            )
    if not schema["subject_id"].is_integer():
        raise InputError(
            f"{shards[0]}: column 'subject_id' has type {schema['subject_id']}, expected int64",
            "Fix the export",
        )
    extra = {c for c in (visit_column, *PROFILE_CODES) if c in schema}
    cols = ["subject_id", "time", "code", *sorted(extra)]
    lf = pl.scan_parquet(shards, missing_columns="insert", extra_columns="ignore").select(cols)
    lf = lf.with_columns(pl.col("time").cast(pl.Datetime("us")), pl.col("code").cast(pl.String))
    if visit_column in extra:
        lf = lf.with_columns(pl.col(visit_column).cast(pl.Int64).alias("hadm_id"))
        if visit_column != "hadm_id":
            lf = lf.drop(visit_column)
    return lf.with_row_index("row"), extra


def _collect(lf: pl.LazyFrame, where: Path) -> pl.DataFrame:
    try:
        return lf.collect(engine="streaming")
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise _read_error(where, exc) from None


def _classify_codes(events: pl.LazyFrame, pat) -> pl.DataFrame:
    """Each distinct code → (kind, value, version): diagnoses/procedures get the prefixed code as value."""
    codes = _collect(events.group_by("code").agg(pl.len().alias("n")), Path("."))
    c = pl.col("code")
    rules = [
        ("diagnoses", pat.diagnosis, "code", "version"),
        ("procedures", pat.procedure, "code", "version"),
        ("atc", pat.medication_atc, "atc", None),
        ("ndc", pat.medication_ndc, "ndc", None),
        ("admission", pat.admission, "admission_type", None),
        ("discharge", pat.discharge, None, None),
        ("gender", pat.gender, "value", None),
        ("birth", pat.birth, None, None),
        *[(f, getattr(pat, f), "value", None) for f in PROFILE_CODES],
    ]
    kind = pl.lit(None, dtype=pl.String)
    value = pl.lit(None, dtype=pl.String)
    version = pl.lit(None, dtype=pl.Int64)
    # first matching rule wins: build the when-chains from the last rule to the first
    for name, regex, group, vgroup in reversed(rules):
        hit = c.str.contains(regex)
        kind = pl.when(hit).then(pl.lit(name)).otherwise(kind)
        v = c.str.extract(regex, 0) if group is None else _group(c, regex, group)
        value = pl.when(hit).then(v).otherwise(value)
        if vgroup is not None:
            version = (
                pl.when(hit).then(_group(c, regex, vgroup).cast(pl.Int64, strict=False)).otherwise(version)
            )
    out = codes.with_columns(kind.alias("kind"), value.alias("value"), version.alias("version"))
    out = out.filter(pl.col("kind").is_not_null())
    code = prefixed(pl.col("kind"), pl.col("version"), pl.col("value"))
    is_icd = pl.col("kind").is_in(["diagnoses", "procedures"])
    out = out.with_columns(
        pl.when(is_icd).then(code).otherwise(pl.col("value")).alias("value"),
        pl.col("code").alias("meds_code"),
    )
    bad = out.filter(is_icd & (pl.col("version").is_null() | (clean_code(pl.col("code")) == "")))
    return out.join(bad.select("code"), on="code", how="anti")


def _group(c: pl.Expr, regex: str, name: str) -> pl.Expr:
    idx = re.compile(regex).groupindex.get(name)
    if idx is None:
        return pl.lit(None, dtype=pl.String)
    return c.str.extract(regex, idx)


def _assign_visits(ev: pl.DataFrame) -> pl.DataFrame:
    """`hadm_id` for every timed event of data without a visit column: the admission → discharge window it
    falls in (numbered per subject in time order: subject_id · 1000 + k)."""
    adm = (
        ev.filter(pl.col("kind") == "admission")
        .select("subject_id", pl.col("time").alias("start"))
        .drop_nulls()
    )
    adm = adm.sort(["subject_id", "start"]).with_columns(
        (pl.col("subject_id") * 1000 + pl.int_range(pl.len()).over("subject_id")).alias("hadm_id")
    )
    dis = (
        ev.filter(pl.col("kind") == "discharge")
        .select("subject_id", pl.col("time").alias("end"))
        .drop_nulls()
    )
    # each admission's window ends at the first discharge at or after it (frames sorted by time: join_asof
    # with `by` cannot check it and would warn)
    win = adm.sort("start").join_asof(
        dis.sort("end"),
        left_on="start",
        right_on="end",
        by="subject_id",
        strategy="forward",
        check_sortedness=False,
    )
    timed = ev.filter(pl.col("time").is_not_null()).sort("time")
    got = timed.join_asof(
        win.select("subject_id", "start", "end", "hadm_id").sort("start"),
        left_on="time",
        right_on="start",
        by="subject_id",
        strategy="backward",
        check_sortedness=False,
    )
    inside = pl.col("end").is_null() | (pl.col("time") <= pl.col("end"))
    got = got.with_columns(pl.when(inside).then(pl.col("hadm_id")).otherwise(None).alias("hadm_id"))
    got = got.drop("start", "end")
    static = ev.filter(pl.col("time").is_null()).with_columns(pl.lit(None, dtype=pl.Int64).alias("hadm_id"))
    return pl.concat([got, static.select(got.columns)], how="vertical_relaxed").sort("row")


def _admissions_and_patients(ev: pl.DataFrame, extra: set[str]) -> tuple[pl.DataFrame, pl.DataFrame]:
    adm_ev = ev.filter((pl.col("kind") == "admission") & pl.col("hadm_id").is_not_null())
    cols = [pl.col("time").min().alias("admittime"), pl.col("value").first().alias("admission_type")]
    cols += [pl.col(f).drop_nulls().first().cast(pl.String).alias(f) for f in PROFILE_CODES if f in extra]
    adm = adm_ev.sort("time").group_by(["subject_id", "hadm_id"]).agg(cols)
    # profile codes (INSURANCE//…): the visit's own value, else the subject's static (or latest) value
    for f in PROFILE_CODES:
        code_ev = ev.filter(pl.col("kind") == f)
        per_visit = (
            code_ev.filter(pl.col("hadm_id").is_not_null())
            .group_by(["subject_id", "hadm_id"])
            .agg(pl.col("value").last().alias(f"_{f}_v"))
        )
        per_subject = (
            code_ev.sort("time", nulls_last=False)
            .group_by("subject_id")
            .agg(pl.col("value").last().alias(f"_{f}_s"))
        )
        adm = adm.join(per_visit, on=["subject_id", "hadm_id"], how="left").join(
            per_subject, on="subject_id", how="left"
        )
        base = [pl.col(f)] if f in adm.columns else []
        adm = adm.with_columns(pl.coalesce([*base, pl.col(f"_{f}_v"), pl.col(f"_{f}_s")]).alias(f)).drop(
            f"_{f}_v", f"_{f}_s"
        )
    adm = adm.select(
        pl.col("subject_id").cast(pl.Int64),
        pl.col("hadm_id").cast(pl.Int64),
        pl.col("admittime").cast(pl.Datetime("us")),
        *[pl.col(f).cast(pl.String) for f in MedsLayout.admission_profile],
    )
    gender = (
        ev.filter(pl.col("kind") == "gender")
        .group_by("subject_id")
        .agg(pl.col("value").last().alias("gender"))
    )
    birth = ev.filter(pl.col("kind") == "birth").group_by("subject_id").agg(pl.col("time").min().alias("dob"))
    subjects = ev.select("subject_id").unique()
    pat = subjects.join(gender, on="subject_id", how="left").join(birth, on="subject_id", how="left")
    return adm, pat.select("subject_id", "gender", pl.col("dob").cast(pl.Datetime("us"))).sort("subject_id")


SMALL_KINDS = ("admission", "discharge", "gender", "birth", *PROFILE_CODES)


def _queries(lf: pl.LazyFrame) -> list[pl.LazyFrame]:
    """The four aggregates of the visit events: diagnoses, procedures (subject_id, hadm_id, code, seq), NDC
    drugs (subject_id, hadm_id, ndc, n) and ATC drugs (subject_id, hadm_id, atc3)."""
    keyed = lf.filter(pl.col("hadm_id").is_not_null())

    def codes(kind: str) -> pl.LazyFrame:
        return (
            keyed.filter(pl.col("kind") == kind)
            .group_by(["subject_id", "hadm_id", pl.col("value").alias("code")])
            .agg(pl.col("row").min().cast(pl.Int64).alias("seq"))
            .select(pl.col("subject_id").cast(pl.Int64), pl.col("hadm_id").cast(pl.Int64), "code", "seq")
        )

    rx = (
        keyed.filter(pl.col("kind") == "ndc")
        .group_by(["subject_id", "hadm_id", pl.col("value").alias("ndc")])
        .agg(pl.len().cast(pl.UInt32).alias("n"))
    )
    atc = (
        keyed.filter(pl.col("kind") == "atc")
        .select("subject_id", "hadm_id", pl.col("value").str.slice(0, 4).alias("atc3"))
        .unique()
    )
    return [codes("diagnoses"), codes("procedures"), rx, atc]


def _aggregate(lf: pl.LazyFrame, where: Path) -> list[pl.DataFrame]:
    try:
        return pl.collect_all(_queries(lf), engine="streaming")
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise _read_error(where, exc) from None


def _read_keyed(lf: pl.LazyFrame, where: Path):
    """Events with a visit column, streamed once: the few admission / discharge / profile events in full, the
    many code and drug events aggregated per visit (memory grows with visits × codes, not with events)."""
    small = lf.filter(pl.col("kind").is_in(list(SMALL_KINDS)))
    try:
        small_df, *aggs = pl.collect_all([small, *_queries(lf)], engine="streaming")
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise _read_error(where, exc) from None
    return (small_df, *aggs)


def _read_error(where: Path, exc: BaseException) -> InputError:
    return InputError(
        f"MEDS data under {where} cannot be read ({type(exc).__name__}: {str(exc).splitlines()[0][:100]})",
        "Check the parquet files (types: subject_id int64, time timestamp, code string)",
    )


def _titles(path: Path | None, codes: pl.DataFrame) -> dict[str, pl.DataFrame]:
    empty = pl.DataFrame(schema={"code": pl.String, "title": pl.String})
    if path is None:
        return {"diagnoses": empty, "procedures": empty}
    try:
        meta = pl.read_parquet(path, columns=["code", "description"])
    except (pl.exceptions.PolarsError, OSError):
        raise InputError(
            f"{path} is unreadable or has no code/description columns", "Re-export the MEDS metadata"
        ) from None
    joined = codes.select("code", "kind", "value").join(meta, on="code", how="inner")
    return {
        k: joined.filter(pl.col("kind") == k)
        .select(pl.col("value").alias("code"), pl.col("description").fill_null("").alias("title"))
        .unique("code", keep="first")
        .sort("code")
        for k in ("diagnoses", "procedures")
    }


def _splits(path: Path | None) -> pl.DataFrame | None:
    if path is None:
        return None
    try:
        df = pl.read_parquet(path, columns=["subject_id", "split"])
    except (pl.exceptions.PolarsError, OSError):
        raise InputError(
            f"{path} is unreadable or has no subject_id/split columns", "Re-export the MEDS metadata"
        ) from None
    return df.with_columns(
        pl.col("subject_id").cast(pl.Int64), pl.col("split").replace_strict(SPLIT_NAMES, default=None)
    )


def _dataset_version(path: Path | None) -> str:
    if path is None:
        return "MEDS"
    try:
        d = json.loads(path.read_text())
    except (OSError, ValueError):
        return "MEDS"
    parts = [
        d.get("dataset_name"),
        d.get("dataset_version"),
        f"meds {d.get('meds_version')}" if d.get("meds_version") else None,
    ]
    return " ".join(str(p) for p in parts if p) or "MEDS"


MEDS = MedsLayout()
