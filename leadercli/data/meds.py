"""The MEDS layout (`--source meds`): the Medical Event Data Standard (the `meds` package, v0.4) → `RawData`.

A MEDS root holds `data/**/*.parquet` (events: `subject_id` int64, `time` timestamp[us] or null for static
events, `code` string, `numeric_value`, plus extra columns) and `metadata/` (`dataset.json` and `codes.parquet`:
`code`, `description`, `parent_codes`, both required; `subject_splits.parquet`: `subject_id`, `split` ∈ train /
tuning / held_out, optional). Codes are matched by the regular expressions of the `[meds]` settings (run by
polars' regex engine, which also checks them), whose defaults follow the public MIMIC-IV MEDS ETL
(`mimic-iv-meds` 0.2):

| leadercli concept | default code pattern | notes |
|---|---|---|
| diagnosis | `DIAGNOSIS//ICD//<version>//<code>` | → `D<version>:<code>` |
| procedure | `PROCEDURE//ICD//<version>//<code>` | → `P<version>:<code>` |
| drug (NDC) | `MEDICATION//…//<ndc>` (START and STOP events, emar) | any NDC spelling (`data/mapping.py`): 1–11 digits (zeros lost by an integer column restored), dashed 5-4-2; → ATC-3 by the same two routes as MIMIC |
| drug (ATC) | `MEDICATION//…//ATC//<atc>` | taken as it is (first 4 characters) |
| admission / discharge | `HOSPITAL_ADMISSION//<admission_type>//…` / `HOSPITAL_DISCHARGE//…` | a visit's window |
| profile | `GENDER//…`, `MEDS_BIRTH`, `INSURANCE//`, `LANGUAGE//`, `MARITAL_STATUS//`, `RACE//` | or the admission event's `insurance`, `language`, `marital_status`, `race` columns |

Visits (`data/meds_events.py`): events carrying the `visit_column` (`hadm_id`) keep it; the others (the ETL's
drug events) go to the visit whose admission → discharge window holds them; data without ids are cut into
admission → discharge windows. Events without a time are static and feed the profile. Titles of diagnosis and
procedure codes come from `metadata/codes.parquet` descriptions. With `data.split = "meds"` the split is
`metadata/subject_splits.parquet` (train → train, tuning → val, held_out → test).

The shards are read in two streamed passes per group of subjects (`meds_events`): memory holds one group's
matched events and the per-visit frames, and codes are matched once per distinct code string. Messages name a
shard by its path under the root (`data/train/0.parquet`).
"""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl

from leadercli import console
from leadercli.data.cohort import age_mimic3
from leadercli.data.layouts import RawData, SourceLayout
from leadercli.data.meds_events import PROFILE_CODES, Parts, check_shard, code_lookup, read_group, survey
from leadercli.errors import InputError
from leadercli.settings import MedsSettings

SPLIT_NAMES = {"train": "train", "tuning": "val", "held_out": "test"}
METADATA = ("dataset.json", "codes.parquet")  # required by MEDS; subject_splits.parquet is optional


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
        files = {f"data/{p.relative_to(data).as_posix()}": p for p in shards}
        for name in (*METADATA, "subject_splits.parquet"):
            p = raw / "metadata" / name
            if p.is_file():
                files[f"metadata/{name}"] = p
            elif name in METADATA:
                raise InputError(
                    f"MEDS root {raw} has no metadata/{name} (a MEDS dataset needs metadata/dataset.json and "
                    "metadata/codes.parquet)",
                    "Pass the whole MEDS root as the ETL wrote it, metadata/ included",
                )
        return files

    # -- reading --------------------------------------------------------------------------------------------
    def read(self, files: dict[str, Path], allow_empty_prescriptions: bool = False) -> RawData:
        """`allow_empty_prescriptions`: new patients (`--for-run`): drugs may be missing, the split file is
        not used."""
        pat = self._pat()
        shards = [check_shard(p, k, pat.visit_column) for k, p in files.items() if k.startswith("data/")]
        extra = tuple(c for c in (pat.visit_column, *PROFILE_CODES) if any(c in s.schema for s in shards))
        if pat.visit_column not in extra:
            console.info(
                f"  no shard has a '{pat.visit_column}' column (meds.visit_column): visits are the admission → "
                "discharge windows"
            )
        version = _dataset_version(files["metadata/dataset.json"])
        with console.step("Reading MEDS codes"):
            sv, codes = survey(shards, pat)
        parts, look = Parts(), code_lookup(codes)
        with console.step(f"Reading MEDS events ({len(sv.groups)} group(s) of subjects)"):
            for group in sv.groups:
                read_group(group, look, extra, pat, parts)
        ev = _concat(parts.small, {"subject_id": pl.Int64, "time": pl.Datetime("us"), "hadm_id": pl.Int64})
        parts.small = []
        adm, pat_frame = _admissions_and_patients(ev, set(extra))
        del ev  # the small events are released before the per-visit frames are built
        dx, px, rx, atc = parts.frames(look.values)
        c = parts.counts
        _check_events(files, pat, sv.events, c, adm.height, dx.height, allow_empty_prescriptions)
        counts: dict[str, dict] = {
            "events": {"rows": sv.events, "codes": sv.codes.height, "matched": int(codes["n"].sum())},
            "visits": {k: int(v) for k, v in sorted(c.items())},
        }
        for role, frame in (
            ("admissions", adm),
            ("patients", pat_frame),
            ("diagnoses", dx),
            ("procedures", px),
        ):
            counts[role] = {"rows": frame.height}
        counts["prescriptions"] = {"rows": int(rx["n"].sum()) if rx.height else 0, "atc_rows": atc.height}
        titles = _titles(files["metadata/codes.parquet"], codes)
        splits = (
            None
            if allow_empty_prescriptions
            else _splits(files.get("metadata/subject_splits.parquet"), sv.subjects)
        )
        console.info(
            f"  MEDS: {sv.events:,} events in {len(shards)} shard(s), {counts['events']['matched']:,} matched; "
            f"{adm.height:,} visits, {dx.height:,} diagnoses, {px.height:,} procedures; "
            f"{c.get('drug_events', 0):,} drug events, {c.get('drug_events_in_visits', 0):,} inside a visit"
        )
        return RawData(adm, pat_frame, dx, px, rx, titles, counts, version, atc_events=atc, splits=splits)


def _concat(frames: list[pl.DataFrame], types: dict | None = None) -> pl.DataFrame:
    out = pl.concat(frames, how="vertical_relaxed", rechunk=False)  # no copy of the parts
    return out.with_columns(pl.col(k).cast(v) for k, v in (types or {}).items())


def _check_events(files, pat, events: int, c: dict, visits: int, dx: int, allow_empty: bool) -> None:
    """The events' errors, each naming its cause and the settings behind it."""
    root = _root(files)
    drugs, inside = c.get("drug_events", 0), c.get("drug_events_in_visits", 0)
    if visits == 0:
        raise InputError(
            f"no visit in the MEDS data under {root}: no admission event (meds.admission) with a visit "
            f"({events:,} events read)",
            "Check meds.admission and meds.visit_column (`leader config` shows them)",
        )
    if dx == 0:
        raise InputError(
            f"no diagnosis event (meds.diagnosis) falls inside any of the {visits:,} visits in {root}",
            "Check meds.diagnosis and meds.visit_column",
        )
    if allow_empty:
        return
    if drugs == 0:
        raise InputError(
            f"no event in {root} matches meds.medication_ndc or meds.medication_atc ({events:,} events read)",
            "Check meds.medication_ndc / meds.medication_atc against the codes of the data (e.g. MEDICATION//…//<ndc>)",
        )
    if inside == 0:
        raise InputError(
            f"no drug event falls inside any visit: {drugs:,} drug events read under {root} "
            f"({c.get('drug_events_with_id', 0):,} with a '{pat.visit_column}'), {visits:,} visits",
            f"Check meds.visit_column ('{pat.visit_column}') and meds.medication_ndc, and the admission and "
            "discharge times of the visits",
        )


def _root(files: dict[str, Path]) -> Path:
    key, path = next((k, p) for k, p in files.items() if k.startswith("data/"))
    return path.parents[len(Path(key).parts) - 1]


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


def _titles(path: Path, codes: pl.DataFrame) -> dict[str, pl.DataFrame]:
    try:
        meta = pl.read_parquet(path, columns=["code", "description"])
        meta = meta.with_columns(pl.col("code").cast(pl.String), pl.col("description").cast(pl.String))
    except (pl.exceptions.PolarsError, OSError):
        raise InputError(
            "metadata/codes.parquet is unreadable or has no code/description columns",
            "Re-export the MEDS metadata",
        ) from None
    joined = codes.select("code", "kind", "value").join(meta, on="code", how="inner")
    return {
        k: joined.filter(pl.col("kind") == k)
        .select(pl.col("value").alias("code"), pl.col("description").fill_null("").alias("title"))
        .unique("code", keep="first")
        .sort("code")
        for k in ("diagnoses", "procedures")
    }


def _splits(path: Path | None, subjects: pl.DataFrame) -> pl.DataFrame | None:
    """metadata/subject_splits.parquet, checked: known split names, one split per subject, only subjects of
    the data (a split file of another dataset or export is refused, whether or not data.split uses it)."""
    if path is None:
        return None
    name = "metadata/subject_splits.parquet"
    try:
        df = pl.read_parquet(path, columns=["subject_id", "split"])
        df = df.with_columns(pl.col("subject_id").cast(pl.Int64), pl.col("split").cast(pl.String))
    except (pl.exceptions.PolarsError, OSError):
        raise InputError(
            f"{name} is unreadable or has no integer subject_id / text split columns",
            "Re-export the MEDS metadata",
        ) from None
    odd = df.filter(~pl.col("split").is_in(list(SPLIT_NAMES)) | pl.col("split").is_null())
    if odd.height:
        raise InputError(
            f"{name}: {odd.height:,} rows have a split other than train / tuning / held_out "
            f"(e.g. {odd['split'][0]!r})",
            "Fix the split file, or remove it and set data.split = random",
        )
    if df["subject_id"].null_count() or df["subject_id"].n_unique() < df.height:
        raise InputError(f"{name}: a subject_id is empty or listed twice", "Give each subject one split")
    unknown = df.join(subjects, on="subject_id", how="anti").height
    if unknown:
        raise InputError(
            f"{name} names {unknown:,} of {df.height:,} subjects that have no event under data/ (a split file "
            "of another dataset?)",
            "Use the split file written with these shards, or remove it (data.split = random)",
        )
    return df.with_columns(pl.col("split").replace_strict(SPLIT_NAMES))


def _dataset_version(path: Path) -> str:
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(
            f"metadata/dataset.json is not valid JSON ({type(exc).__name__})", "Re-export the MEDS metadata"
        ) from None
    if not isinstance(d, dict):
        raise InputError("metadata/dataset.json is not a JSON object", "Re-export the MEDS metadata")
    parts = [
        d.get("dataset_name"),
        d.get("dataset_version"),
        f"meds {d.get('meds_version')}" if d.get("meds_version") else None,
    ]
    return " ".join(str(p) for p in parts if p) or "MEDS"


MEDS = MedsLayout()
