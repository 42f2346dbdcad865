"""`leader predict`: checkpoint → batched inference → ranked table.

Input: a parquet file in the artifact's `visits.parquet` schema — `subject_id`, `hadm_id`, `diagnoses`,
`procedures` (list[str]), `admittime` and/or `visit_no` for the order, optional `medications` (history
drugs; the latest visit's own drugs are ignored) and optional profile columns. Codes may be prefixed
(`D9:4019`, `P10:0DTJ4ZZ`) or raw ICD codes with an `icd_version` column (9/10) per visit. Rows of one subject
must be contiguous (as in the artifact, sorted by subject); the file is streamed in record batches so memory
stays bounded whatever its size.

Output: one row per (subject, drug) for the top-k drugs of the subject's latest visit: `subject_id`,
`hadm_id`, `rank` (1 = best), `atc3`, `drug_name`, `score`, `selected` (score ≥ threshold). CSV or parquet by
extension, written to a temporary file and renamed into place.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from leadercli import console
from leadercli.data.batching import batches
from leadercli.data.samples import samples_from_frame
from leadercli.errors import InputError, SettingsError

REQUIRED = {
    "subject_id": "integer",
    "hadm_id": "integer",
    "diagnoses": "list of strings",
    "procedures": "list of strings",
}
OUT_SCHEMA = pa.schema(
    [
        ("subject_id", pa.int64()),
        ("hadm_id", pa.int64()),
        ("rank", pa.int32()),
        ("atc3", pa.string()),
        ("drug_name", pa.string()),
        ("score", pa.float32()),
        ("selected", pa.bool_()),
    ]
)


@dataclass
class PredictSummary:
    patients: int
    rows: int
    unknown: dict
    output: Path
    threshold: float
    model: Path


def default_model(settings) -> Path:
    for p in (settings.paths.distilled, settings.paths.student):
        if (Path(p) / "manifest.json").is_file():
            return Path(p)
    raise SettingsError(
        f"no trained model found (looked in {settings.paths.distilled} and {settings.paths.student})",
        "Train one with `leader train student` or `leader distill`, or pass --model RUN_DIR",
    )


def _check_schema(path: Path, schema: pa.Schema) -> None:
    names = set(schema.names)
    for col, kind in REQUIRED.items():
        if col not in names:
            raise InputError(
                f"{path}: column '{col}' is missing",
                f"Provide '{col}' ({kind}); see the README's visits schema",
            )
        t = schema.field(col).type
        ok = (
            pa.types.is_integer(t)
            if kind == "integer"
            else (pa.types.is_list(t) or pa.types.is_large_list(t))
        )
        if ok and kind != "integer":
            ok = (
                pa.types.is_string(t.value_type)
                or pa.types.is_large_string(t.value_type)
                or pa.types.is_null(t.value_type)
            )
        if not ok:
            raise InputError(
                f"{path}: column '{col}' has type {t}, expected {kind}", "Fix the column type and retry"
            )
    if "admittime" not in names and "visit_no" not in names:
        raise InputError(
            f"{path}: needs an 'admittime' or 'visit_no' column to order visits", "Add one and retry"
        )


def _prefix_raw(df: pl.DataFrame, path: Path, default_version: int | None) -> pl.DataFrame:
    """Raw ICD codes (no `D9:` prefix) → prefixed, using the row's `icd_version` (or the model's source)."""
    ver = None
    if "icd_version" in df.columns:
        ver = pl.col("icd_version").cast(pl.Int64)
    elif default_version is not None:
        ver = pl.lit(default_version)
    out = []
    for col, letter in (("diagnoses", "D"), ("procedures", "P")):
        needs = df.select(
            pl.col(col).list.eval(~pl.element().str.contains(r"^[DP]\d+:")).list.any().any()
        ).item()
        if not needs:
            continue
        if ver is None:
            raise InputError(
                f"{path}: column '{col}' holds raw ICD codes but there is no 'icd_version' column",
                "Add icd_version (9 or 10) per visit, or prefix codes as D9:4019 / P10:0DTJ4ZZ",
            )
        prefix = pl.lit(letter) + ver.cast(pl.Utf8) + pl.lit(":")
        out.append(
            pl.struct(pl.col(col), prefix.alias("_p"))
            .map_batches(lambda s, c=col: _apply_prefix(s, c), return_dtype=pl.List(pl.Utf8))
            .alias(col)
        )
    return df.with_columns(out) if out else df


def _apply_prefix(s: pl.Series, col: str) -> pl.Series:
    codes = s.struct.field(col)
    pref = s.struct.field("_p")
    tmp = pl.DataFrame({"c": codes, "p": pref}).with_row_index("i")
    ex = tmp.explode("c").with_columns(
        pl.when(pl.col("c").str.contains(r"^[DP]\d+:"))
        .then(pl.col("c"))
        .otherwise(pl.col("p") + pl.col("c").str.replace_all(".", "", literal=True).str.to_uppercase())
        .alias("c")
    )
    res = ex.group_by("i", maintain_order=True).agg(pl.col("c").drop_nulls())
    return res["c"]


def predict_file(settings, input_path: Path, output: Path) -> PredictSummary:
    from leadercli.training.student import load_scorer

    cfg = settings.predict
    input_path, output = Path(input_path), Path(output)
    if output.suffix.lower() not in (".csv", ".parquet"):
        raise InputError(f"output {output} must end in .csv or .parquet", "Choose e.g. -o recs.csv")
    if not input_path.is_file():
        raise InputError(
            f"input file {input_path} does not exist",
            "Pass a visits parquet (e.g. data/mimic3/visits.parquet)",
        )
    try:
        pf = pq.ParquetFile(input_path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise InputError(
            f"{input_path} is not a readable parquet file ({str(exc).splitlines()[0]})",
            "Write it with pyarrow/polars",
        ) from None
    _check_schema(input_path, pf.schema_arrow)
    if pf.metadata.num_rows == 0:
        raise InputError(f"{input_path} has no rows", "Pass a file with at least one visit")

    model_dir = Path(cfg.model) if cfg.model else default_model(settings)
    model, encoder, manifest = load_scorer(model_dir)
    threshold = cfg.threshold if cfg.threshold is not None else manifest["threshold"]["value"]
    top_k = min(cfg.top_k, encoder.n_labels)
    labels = np.asarray(encoder.vocab.medications.codes, dtype=object)
    names = np.asarray(encoder.vocab.medications.titles, dtype=object)
    default_version = 9 if manifest.get("artifact", {}).get("source") == "mimic3" else None
    max_visits = int(_settings_value(model_dir, "samples", "max_visits", settings.samples.max_visits))
    wanted = [
        c
        for c in pf.schema_arrow.names
        if c
        in set(REQUIRED) | {"admittime", "visit_no", "medications", "icd_version", *encoder.profile_fields}
    ]

    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(f".{output.name}.tmp")
    writer = None
    n_patients = n_rows = 0
    seen: set[int] = set()
    carry: pl.DataFrame | None = None
    try:
        writer = _open_writer(tmp, output.suffix.lower())
        with console.progress("predicting", total=pf.metadata.num_rows) as advance:
            for rb in pf.iter_batches(batch_size=max(cfg.batch_size * 2, 1024), columns=wanted):
                df = pl.from_arrow(rb)
                nrows = df.height
                if carry is not None:
                    df = pl.concat([carry, df], how="vertical_relaxed")
                last = df["subject_id"][-1]
                carry = df.filter(pl.col("subject_id") == last)
                df = df.filter(pl.col("subject_id") != last)
                n_patients, n_rows = _score_chunk(
                    df,
                    input_path,
                    model,
                    encoder,
                    seen,
                    writer,
                    labels,
                    names,
                    top_k,
                    threshold,
                    default_version,
                    max_visits,
                    cfg.batch_size,
                    n_patients,
                    n_rows,
                )
                advance(nrows, status=f"{n_patients:,} patients")
            if carry is not None and carry.height:
                n_patients, n_rows = _score_chunk(
                    carry,
                    input_path,
                    model,
                    encoder,
                    seen,
                    writer,
                    labels,
                    names,
                    top_k,
                    threshold,
                    default_version,
                    max_visits,
                    cfg.batch_size,
                    n_patients,
                    n_rows,
                )
        writer.close()
        writer = None
        os.replace(tmp, output)
    finally:
        if writer is not None:
            writer.close()
        if tmp.exists():
            tmp.unlink()
    unk = encoder.unknown
    console.info(
        f"unknown codes: {unk.codes['diagnoses']:,} diagnoses, {unk.codes['procedures']:,} procedures, "
        f"{unk.codes['medications']:,} history drugs, {unk.profile:,} profile values (mapped to UNK)"
    )
    console.out.print(
        f"wrote {n_rows:,} rows for {n_patients:,} patients to {output} (model {model_dir}, threshold {threshold:.2f})",
        highlight=False,
    )
    return PredictSummary(
        n_patients, n_rows, {"codes": dict(unk.codes), "profile": unk.profile}, output, threshold, model_dir
    )


def _settings_value(run_dir: Path, section: str, key: str, default):
    import tomllib

    try:
        return tomllib.loads((run_dir / "settings.toml").read_text())[section][key]
    except (OSError, KeyError, tomllib.TOMLDecodeError):
        return default


def _open_writer(path: Path, suffix: str):
    if suffix == ".parquet":
        return pq.ParquetWriter(path, OUT_SCHEMA)
    import pyarrow.csv as pacsv

    return pacsv.CSVWriter(path, OUT_SCHEMA)


def _score_chunk(
    df,
    path,
    model,
    encoder,
    seen,
    writer,
    labels,
    names,
    top_k,
    threshold,
    default_version,
    max_visits,
    batch_size,
    n_patients,
    n_rows,
):
    if df.height == 0:
        return n_patients, n_rows
    subjects = df["subject_id"].unique()
    if seen and any(s in seen for s in subjects.to_list()):
        raise InputError(
            f"{path}: rows of a subject are not contiguous",
            "Sort the file by subject_id (and admittime) first",
        )
    seen.update(subjects.to_list())
    if "medications" not in df.columns:
        df = df.with_columns(pl.lit([], dtype=pl.List(pl.Utf8)).alias("medications"))
    df = _prefix_raw(df, path, default_version)
    samples = samples_from_frame(df, encoder.profile_fields, max_visits=max_visits)
    encoded = encoder.encode_all(samples)
    with torch.inference_mode():
        for i, batch in enumerate(batches(encoded, batch_size, encoder.collate)):
            probs = model.score(batch) if hasattr(model, "score") else torch.sigmoid(model(batch).logits)
            top = torch.topk(probs, top_k, dim=1)
            sc = top.values.numpy().astype(np.float32)
            ix = top.indices.numpy()
            B = sc.shape[0]
            table = pa.table(
                {
                    "subject_id": np.repeat(batch["subject_id"].numpy(), top_k),
                    "hadm_id": np.repeat(batch["hadm_id"].numpy(), top_k),
                    "rank": np.tile(np.arange(1, top_k + 1, dtype=np.int32), B),
                    "atc3": labels[ix.ravel()].tolist(),
                    "drug_name": names[ix.ravel()].tolist(),
                    "score": sc.ravel(),
                    "selected": sc.ravel() >= threshold,
                },
                schema=OUT_SCHEMA,
            )
            writer.write_table(table)
            n_patients += B
            n_rows += table.num_rows
    return n_patients, n_rows
