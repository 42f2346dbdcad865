"""`leader predict`: a run of any kind → batched inference → ranked drugs per patient.

Input (`read_input`): a parquet or CSV file in the artifact's `visits.parquet` schema, or a prediction input
folder written by `leader preprocess --for-run` (its `visits.parquet`; its `codes.parquet` gives the teacher
the titles of codes the run has never seen). Columns: `subject_id`, `hadm_id`, `diagnoses`, `procedures`
(list[str]; in CSV `;`-separated codes), `admittime` and/or `visit_no` for the order, optional `medications`
(history drugs; the latest visit's own drugs are ignored), optional `icd_version` and profile columns. Codes
may be prefixed (`D9:4019`, `P10:0DTJ4ZZ`) or raw ICD codes with an `icd_version` column (9/10) per visit.
Rows of one subject must be contiguous (as in the artifact, sorted by subject); the file is streamed in
record batches so memory stays bounded whatever its size.

Pipeline (issue 3, "Speed"): a thread reads a record batch, carries its last subject over to the next one and
encodes the whole subjects straight from the frame to padded id tensors (`Encoder.encode_frame`: the same
tensors as `samples_from_frame` → `Encoder.encode` → `collate`, patients batched by visit count so that most
batches pad to one visit); meanwhile as many threads as torch would use (`torch.get_num_threads()`) run the
model, one intra-op thread each, on the batches of the chunks before, and the main thread writes each chunk's
rows back in subject order. A teacher run scores each chunk's samples through its prompts instead (slow on a
CPU: a progress bar with ETA).

Output: one row per (subject, drug) for the top-k drugs of the subject's latest visit, plus every drug with
score ≥ threshold ranked below k: `subject_id`, `hadm_id`, `rank` (1 = best), `atc3`, `drug_name`, `score`,
`selected`, `ddi_dropped` (selected by score but dropped by `--max-ddi-pairs`, `leadercli.selection`),
`n_unknown_codes` (codes of the target visit unknown to the model). CSV or parquet by extension, written to a
temporary file and renamed into place, with a sidecar `<output>.meta.json` (run, label hash, threshold,
version, input sha256, counts, time).
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import os
import queue
import threading
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from leadercli import __version__, console
from leadercli.data.batching import Encoder
from leadercli.errors import InputError, SettingsError

T = TypeVar("T")

INPUT_MANIFEST_KIND = "prediction-input"
INPUT_VISITS = "visits.parquet"
INPUT_CODES = "codes.parquet"
REQUIRED = {
    "subject_id": "integer",
    "hadm_id": "integer",
    "diagnoses": "list of strings",
    "procedures": "list of strings",
}
OPTIONAL = {"medications": "list of strings", "icd_version": "integer", "visit_no": "integer"}
LIST_COLUMNS = ("diagnoses", "procedures", "medications")
OUT_SCHEMA = pa.schema(
    [
        ("subject_id", pa.int64()),
        ("hadm_id", pa.int64()),
        ("rank", pa.int32()),
        ("atc3", pa.string()),
        ("drug_name", pa.string()),
        ("score", pa.float32()),
        ("selected", pa.bool_()),
        ("ddi_dropped", pa.bool_()),
        ("n_unknown_codes", pa.int32()),
    ]
)
# files of leadercli folders (artifact, run, prediction input) that an output must never replace
OWN_FILES = ("visits.parquet", "patients.parquet", "ddi.parquet", INPUT_CODES)
MOSTLY_UNKNOWN = 0.5  # a target visit with more than this share of unknown codes is "mostly unknown"


@dataclass
class PredictOptions:
    top_k: int = 20
    threshold: float | None = None  # None = the run's
    max_ddi_pairs: int | None = None  # None = no DDI cap
    batch_size: int = 4096
    unknown_shrink: float = 0.0  # λ: scores → (1 − w)·p + w·prior, w = min(1, λ·unknown share); 0 = off


@dataclass
class Counts:
    patients: int = 0
    rows: int = 0
    selected: int = 0
    beyond_top_k: int = 0  # selected drugs written although ranked below --top-k
    ddi_dropped: int = 0
    mostly_unknown: int = 0  # patients whose target visit has > MOSTLY_UNKNOWN unknown codes
    no_known_code: int = 0  # patients whose target visit has no code the model knows

    def add(self, other: Counts) -> None:
        for k in self.__dataclass_fields__:
            setattr(self, k, getattr(self, k) + getattr(other, k))


@dataclass
class PredictSummary:
    patients: int
    rows: int
    unknown: dict
    output: Path
    threshold: float
    model: Path
    counts: Counts = field(default_factory=Counts)
    meta: dict = field(default_factory=dict)


def default_model(settings) -> Path:
    for p in (settings.paths.distilled, settings.paths.student, settings.paths.teacher):
        if (Path(p) / "manifest.json").is_file():
            return Path(p)
    raise SettingsError(
        f"no trained model found (looked in {settings.paths.distilled}, {settings.paths.student} and "
        f"{settings.paths.teacher})",
        "Train one with `leader train student` or `leader distill`, or pass --model RUN_DIR",
    )


# -- input ----------------------------------------------------------------------------------------------------
@dataclass
class PredictInput:
    """A validated input: where its rows come from, how many there are and, for a prediction input folder,
    its manifest and the titles of every code (`titles`: kind → {code: title})."""

    path: Path  # the file that is read
    kind: str  # "parquet" or "csv"
    num_rows: int | None
    columns: list[str]
    manifest: dict | None = None
    titles: dict[str, dict[str, str]] | None = None

    def batches(self, columns: list[str], rows: int) -> Iterator[pl.DataFrame]:
        if self.kind == "parquet":
            pf = pq.ParquetFile(self.path)
            it = pf.iter_batches(batch_size=rows, columns=columns)
            while True:
                try:
                    rb = next(it)
                except StopIteration:
                    return
                except (OSError, pa.ArrowException) as exc:  # a damaged page or row group, found mid-stream
                    raise InputError(
                        f"{self.path} is damaged: a part of it cannot be read ({type(exc).__name__}); nothing was "
                        "written",
                        "Rewrite the file (pyarrow/polars) or rebuild it with `leader preprocess --for-run`",
                    ) from None
                yield _check_ids(self.path, pl.from_arrow(rb))
        else:
            yield from _csv_batches(self.path, columns, rows)


def read_input(path: Path) -> PredictInput:
    """Open and check an input file or prediction input folder (schema and types; nothing is read in full)."""
    path = Path(path)
    manifest = titles = None
    if path.is_dir():
        folder = path
        path = folder / INPUT_VISITS
        if not path.is_file():
            raise InputError(
                f"input folder {folder} has no {INPUT_VISITS}",
                "Pass a visits file, or a folder written by `leader preprocess --for-run`",
            )
    if not path.is_file():
        raise InputError(
            f"input file {path} does not exist",
            "Pass a visits parquet/CSV or a folder written by `leader preprocess --for-run`",
        )
    side = path.parent / "manifest.json"
    if path.name == INPUT_VISITS and side.is_file():
        import json

        try:
            m = json.loads(side.read_text())
        except (OSError, ValueError):
            m = None
        if isinstance(m, dict) and m.get("kind") == INPUT_MANIFEST_KIND:
            manifest = m
            titles = _read_titles(path.parent / INPUT_CODES)
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes[-1:] == [".parquet"]:
        try:
            pf = pq.ParquetFile(path)
        except (pa.ArrowInvalid, OSError) as exc:
            raise InputError(
                f"{path} is not a readable parquet file ({str(exc).splitlines()[0][:120]})",
                "Write it with pyarrow/polars, or rebuild it with `leader preprocess --for-run`",
            ) from None
        _check_schema(path, pf.schema_arrow)
        n = pf.metadata.num_rows
        if n == 0:
            raise InputError(f"{path} has no rows", "Pass a file with at least one visit")
        return PredictInput(path, "parquet", n, list(pf.schema_arrow.names), manifest, titles)
    if suffixes[-1:] == [".csv"] or suffixes[-2:] == [".csv", ".gz"]:
        from leadercli.data.tables import read_header

        header = [h.strip() for h in read_header(path)]
        _check_csv_header(path, header)
        return PredictInput(path, "csv", None, header, manifest, titles)
    raise InputError(f"input {path} must end in .parquet or .csv", "Convert it, e.g. with polars")


def _read_titles(path: Path) -> dict[str, dict[str, str]] | None:
    if not path.is_file():
        return None
    try:
        df = pl.read_parquet(path, columns=["kind", "code", "title"])
    except (pl.exceptions.PolarsError, OSError):
        raise InputError(
            f"{path} is unreadable", "Rebuild the input folder with `leader preprocess --for-run`"
        ) from None
    out: dict[str, dict[str, str]] = {}
    for kind, code, title in df.iter_rows():
        if title:
            out.setdefault(kind, {})[code] = title
    return out


def _check_schema(path: Path, schema: pa.Schema) -> None:
    names = set(schema.names)
    for col, kind in {**REQUIRED, **OPTIONAL}.items():
        if col not in names:
            if col in REQUIRED:
                raise InputError(
                    f"{path}: column '{col}' is missing",
                    f"Provide '{col}' ({kind}); see the README's visits schema",
                )
            continue
        t = schema.field(col).type
        if kind == "integer":
            ok = pa.types.is_integer(t)
        else:
            ok = (pa.types.is_list(t) or pa.types.is_large_list(t)) and (
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


def _check_csv_header(path: Path, header: list[str]) -> None:
    for col, kind in REQUIRED.items():
        if col not in header:
            hint = "`;`-separated codes" if kind.startswith("list") else kind
            raise InputError(
                f"{path}: column '{col}' is missing",
                f"Provide '{col}' ({hint}); see the README's visits schema",
            )
    if "admittime" not in header and "visit_no" not in header:
        raise InputError(
            f"{path}: needs an 'admittime' or 'visit_no' column to order visits", "Add one and retry"
        )


def _csv_batches(path: Path, columns: list[str], rows: int) -> Iterator[pl.DataFrame]:
    """CSV → frames of about `rows` rows with the parquet schema: ids and visit_no as integers, list columns
    split on `;`, admittime parsed; a value of the wrong type is an InputError naming the column."""
    import pyarrow.csv as pacsv

    from leadercli.data.tables import read_header

    header = [h.strip() for h in read_header(path)]
    try:
        reader = pacsv.open_csv(
            path,
            read_options=pacsv.ReadOptions(block_size=1 << 22),
            convert_options=pacsv.ConvertOptions(
                column_types={h: pa.string() for h in header}, include_columns=columns
            ),
        )
    except (pa.ArrowInvalid, OSError) as exc:
        raise InputError(
            f"{path} is not a readable CSV file ({str(exc).splitlines()[0][:120]})", "Check the file"
        ) from None
    buf: list[pl.DataFrame] = []
    n = 0
    while True:
        try:
            rb = reader.read_next_batch()
        except StopIteration:
            break
        except (pa.ArrowInvalid, OSError) as exc:
            raise InputError(
                f"{path} is not a readable CSV file ({str(exc).splitlines()[0][:120]})", "Check the file"
            ) from None
        buf.append(_typed_csv_frame(path, pl.from_arrow(rb)))
        n += rb.num_rows
        if n >= rows:
            yield pl.concat(buf)
            buf, n = [], 0
    if buf:
        yield pl.concat(buf)


def _typed_csv_frame(path: Path, df: pl.DataFrame) -> pl.DataFrame:
    exprs = []
    for col in df.columns:
        c = pl.col(col).str.strip_chars()
        if col in ("subject_id", "hadm_id", "visit_no", "icd_version"):
            bad = df.select(
                (c.is_not_null() & (c != "") & c.cast(pl.Int64, strict=False).is_null()).sum()
            ).item()
            if bad:
                raise InputError(
                    f"{path}: column '{col}' has {bad:,} values that are not whole numbers", "Fix the column"
                )
            exprs.append(c.cast(pl.Int64, strict=False).alias(col))
        elif col in LIST_COLUMNS:
            exprs.append(
                pl.when(c.is_null() | (c == ""))
                .then(pl.lit([], dtype=pl.List(pl.Utf8)))
                .otherwise(
                    c.str.split(";")
                    .list.eval(pl.element().str.strip_chars())
                    .list.eval(pl.element().filter(pl.element() != ""))
                )
                .alias(col)
            )
        elif col == "admittime":
            from leadercli.data.tables import _DATETIME_FORMATS

            parsed = pl.coalesce(
                [c.str.to_datetime(f, time_unit="us", strict=False) for f in _DATETIME_FORMATS]
            )
            bad = df.select((c.is_not_null() & (c != "") & parsed.is_null()).sum()).item()
            if bad:
                raise InputError(
                    f"{path}: column 'admittime' has {bad:,} values that are not dates (YYYY-MM-DD hh:mm:ss)",
                    "Fix the column",
                )
            exprs.append(parsed.alias(col))
        else:
            exprs.append(c.alias(col))
    return _check_ids(path, df.select(exprs))


def _check_ids(path: Path, df: pl.DataFrame) -> pl.DataFrame:
    for col in ("subject_id", "hadm_id"):
        nulls = df[col].null_count()
        if nulls:
            raise InputError(
                f"{path}: column '{col}' has {nulls:,} empty values",
                "Every visit needs a subject_id and a hadm_id",
            )
    return df


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
    ex = tmp.explode("c", empty_as_null=True).with_columns(  # an empty list keeps its row
        pl.when(pl.col("c").str.contains(r"^[DP]\d+:"))
        .then(pl.col("c"))
        .otherwise(pl.col("p") + pl.col("c").str.replace_all(".", "", literal=True).str.to_uppercase())
        .alias("c")
    )
    res = ex.group_by("i", maintain_order=True).agg(pl.col("c").drop_nulls())
    return res["c"]


# -- output checks --------------------------------------------------------------------------------------------
def check_output(output: Path, input_path: Path, top_k: int = 20) -> None:
    """Refuse an output that would replace the input or a file of a leadercli folder, that cannot be written
    or that would not fit on the disk (`estimate_output_bytes`), before any work is done."""
    from leadercli import paths

    if output.suffix.lower() not in (".csv", ".parquet"):
        raise InputError(f"output {output} must end in .csv or .parquet", "Choose e.g. -o recs.csv")
    src = Path(input_path)
    candidates = [src, src / INPUT_VISITS] if src.is_dir() else [src]
    if any(output.resolve() == c.resolve() for c in candidates):
        raise InputError(f"output {output} is the input file", "Choose another -o; inputs are never replaced")
    if output.is_dir():
        raise InputError(f"output {output} is a folder", "Pass a file name ending in .csv or .parquet")
    if output.name in OWN_FILES and (output.parent / "manifest.json").is_file():
        raise InputError(
            f"output {output} would replace {output.name} of {output.parent} (an artifact, a run or a "
            "prediction input folder)",
            "Choose another -o; inputs are never replaced",
        )
    paths.check_writable_dir(output.parent, "output folder", "Choose another -o")
    paths.check_free_space(
        output.parent,
        estimate_output_bytes(src, output, top_k),
        "output folder",
        "Free some space or choose another -o",
    )


def estimate_output_bytes(input_path: Path, output: Path, top_k: int) -> int:
    """A rough size of the output: top-k rows per patient (about 1.5 visits per patient, the input's row
    count from its parquet metadata or its file size) × bytes per row (80 in CSV, 20 in parquet)."""
    src = Path(input_path)
    if src.is_dir():
        src = src / INPUT_VISITS
    try:
        if src.suffix.lower() == ".parquet":
            rows = pq.ParquetFile(src).metadata.num_rows
        else:
            size = src.stat().st_size
            rows = size * (5 if src.suffix.lower() == ".gz" else 1) // 150
    except (OSError, pa.ArrowInvalid):
        return 0  # read_input names the problem
    per_row = 80 if output.suffix.lower() == ".csv" else 20
    return int(rows / 1.5 * top_k * per_row)


@contextlib.contextmanager
def _writing(output: Path) -> Iterator[None]:
    """An OSError while writing the output (disk full, folder made read-only meanwhile) → one line; the
    temporary file is removed by the caller, so nothing half-written is left."""
    try:
        yield
    except OSError as exc:
        why = exc.strerror or str(exc).splitlines()[0][:120] or type(exc).__name__
        raise InputError(
            f"cannot write {output} ({why}); nothing was written",
            f"Check the free space and permissions of {output.parent.resolve()} and retry",
        ) from None


def _clean_stale(output: Path) -> None:
    """Temporary files a killed `leader predict` left next to `output` (its data file and its sidecar's)."""
    stale = [output.with_name(f".{output.name}.tmp"), *output.parent.glob(f".{output.name}.meta.json.*.tmp")]
    for p in stale:
        if p.is_file():
            p.unlink()
            console.info(f"removed {p}, left by an interrupted run")


# -- the command ----------------------------------------------------------------------------------------------
def predict_file(
    settings, input_path: Path, output: Path, max_ddi_pairs: int | None = None
) -> PredictSummary:
    """`leader predict INPUT -o OUTPUT`: the whole command, output written atomically with its sidecar."""
    from leadercli.runs import load_run

    cfg = settings.predict
    input_path, output = Path(input_path), Path(output)
    check_output(output, input_path, cfg.top_k)
    src = read_input(input_path)
    _clean_stale(output)
    model_dir = Path(cfg.model) if cfg.model else _input_run(src) or default_model(settings)
    from leadercli.hardware import apply_threads

    apply_threads(settings.hardware, pool=True)  # the scoring pool has one worker per torch thread
    stop = threading.Event()
    hasher = ThreadPoolExecutor(1)
    digest = hasher.submit(_sha256, src.path, stop)
    try:
        scorer = load_run(model_dir)
        # the modules and the model stay for the whole command: the collector skips them until it ends (it
        # walked torch's objects on every full collection, about 4 % of predict's CPU time)
        gc.freeze()
        opts = PredictOptions(cfg.top_k, cfg.threshold, max_ddi_pairs, cfg.batch_size, cfg.unknown_shrink)
        _check_input_run(src, scorer)
        output.parent.mkdir(parents=True, exist_ok=True)
        tmp = output.with_name(f".{output.name}.tmp")
        writer = None
        try:
            with _writing(output):
                writer = _open_writer(tmp, output.suffix.lower())
            counts = Counts()
            with console.progress("predicting", total=src.num_rows) as advance:
                for table, nrows, c in predict_stream(scorer, src, opts):
                    with _writing(output):
                        writer.write_table(table)
                    counts.add(c)
                    advance(nrows, status=f"{counts.patients:,} patients")
            with _writing(output):
                writer.close()
            writer = None
            if counts.patients == 0:
                raise InputError(f"{src.path} has no visits", "Pass a file with at least one visit")
            meta = _meta(scorer, src, opts, counts, digest.result(), output)
            from leadercli.runs import write_json

            with _writing(output):
                os.replace(tmp, output)
                write_json(Path(f"{output}.meta.json"), meta)
        finally:
            if writer is not None:
                with contextlib.suppress(OSError):
                    writer.close()
            if tmp.exists():
                tmp.unlink()
    finally:
        gc.unfreeze()  # a caller that goes on (the Python API, tests) gets its collector back as it was
        stop.set()
        hasher.shutdown(wait=True)
    unk = scorer.encoder.unknown
    _report(counts, unk, opts, scorer)
    threshold = opts.threshold if opts.threshold is not None else scorer.threshold
    console.out.print(
        f"wrote {counts.rows:,} rows for {counts.patients:,} patients to {output} "
        f"(model {model_dir}, {scorer.kind}, threshold {threshold:.2f})",
        highlight=False,
    )
    return PredictSummary(
        counts.patients,
        counts.rows,
        {"codes": dict(unk.codes), "profile": unk.profile},
        output,
        threshold,
        model_dir,
        counts,
        meta,
    )


def _input_run(src: PredictInput) -> Path | None:
    """The run a `preprocess --for-run` folder was built for, when it still exists (the default --model)."""
    path = ((src.manifest or {}).get("run") or {}).get("path")
    return Path(path) if path and (Path(path) / "manifest.json").is_file() else None


def _check_input_run(src: PredictInput, scorer) -> None:
    if src.manifest is None:
        return
    want = (src.manifest.get("run") or {}).get("labels_hash")
    if want is not None and want != scorer.manifest.get("labels_hash"):
        console.info(
            f"note: {src.path.parent} was built for run {src.manifest['run'].get('path')}, not for "
            f"{scorer.path}: codes are counted against {scorer.path}'s vocabulary"
        )


def _report(counts: Counts, unk, opts: PredictOptions, scorer) -> None:
    console.info(
        f"unknown codes: {unk.codes['diagnoses']:,} diagnoses, {unk.codes['procedures']:,} procedures, "
        f"{unk.codes['medications']:,} history drugs, {unk.profile:,} profile values (mapped to UNK)"
    )
    if counts.mostly_unknown:
        console.info(
            f"warning: {counts.mostly_unknown:,} of {counts.patients:,} patients have a target visit whose codes "
            f"are mostly unknown to the model ({counts.no_known_code:,} with no known code): their ranking "
            "leans on the drug frequencies the model learned; check `n_unknown_codes`"
        )
    if counts.beyond_top_k:
        console.info(
            f"{counts.beyond_top_k:,} selected drugs ranked below --top-k {opts.top_k} were written too "
            "(every selected drug is in the output)"
        )
    if opts.max_ddi_pairs is not None:
        console.info(
            f"--max-ddi-pairs {opts.max_ddi_pairs}: {counts.ddi_dropped:,} selected drugs dropped "
            f"(column ddi_dropped), {len(scorer.ddi_pairs())} interacting pairs known to the run"
        )


def _meta(scorer, src: PredictInput, opts: PredictOptions, counts: Counts, sha: str, output: Path) -> dict:
    from leadercli.runs import now

    threshold = opts.threshold if opts.threshold is not None else scorer.threshold
    return {
        "format": 1,
        "output": output.name,
        "created_at": now(),
        "leadercli_version": __version__,
        "model": {
            "path": str(scorer.path.resolve()),
            "kind": scorer.kind,
            "labels_hash": scorer.manifest.get("labels_hash"),
            "vocab_hash": (scorer.manifest.get("artifact") or {}).get("vocab_hash"),
            "created_at": scorer.manifest.get("created_at"),
        },
        "threshold": {
            "value": threshold,
            "how": "--threshold" if opts.threshold is not None else scorer.manifest["threshold"].get("how"),
        },
        "top_k": opts.top_k,
        "max_ddi_pairs": opts.max_ddi_pairs,
        "unknown_shrink": opts.unknown_shrink if scorer.kind in ("student", "distilled") else 0.0,
        "input": {"path": str(src.path.resolve()), "sha256": sha, "format": src.kind},
        "counts": {
            "patients": counts.patients,
            "rows": counts.rows,
            "selected": counts.selected,
            "selected_beyond_top_k": counts.beyond_top_k,
            "ddi_dropped": counts.ddi_dropped,
            "patients_mostly_unknown": counts.mostly_unknown,
            "patients_without_known_code": counts.no_known_code,
            "unknown_codes": dict(scorer.encoder.unknown.codes),
            "unknown_profile_values": scorer.encoder.unknown.profile,
        },
    }


def _sha256(path: Path, stop: threading.Event) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 22):
            if stop.is_set():
                return ""
            h.update(chunk)
    return h.hexdigest()


def _open_writer(path: Path, suffix: str):
    if suffix == ".parquet":
        return pq.ParquetWriter(path, OUT_SCHEMA)
    import pyarrow.csv as pacsv

    # 64k rows converted at a time (the default 1,024 costs about 15 % more CPU, same bytes)
    return pacsv.CSVWriter(path, OUT_SCHEMA, write_options=pacsv.WriteOptions(batch_size=1 << 16))


# -- scoring --------------------------------------------------------------------------------------------------
def predict_stream(scorer, src: PredictInput, opts: PredictOptions) -> Iterator[tuple[pa.Table, int, Counts]]:
    """The input's subjects → output tables in subject order, with the input rows each one consumed."""
    encoder = scorer.encoder
    wanted = [
        c
        for c in src.columns
        if c
        in set(REQUIRED) | {"admittime", "visit_no", "medications", "icd_version", *encoder.profile_fields}
    ]
    chunk_rows = max(opts.batch_size * 2, 1024) if scorer.tensor_input else max(opts.batch_size, 64)
    chunks = _subject_chunks(src.batches(wanted, chunk_rows))
    yield from _score_chunks(scorer, chunks, src, opts)


def predict_frame(scorer, frame: pl.DataFrame, opts: PredictOptions, titles=None) -> pl.DataFrame:
    """One in-memory visits frame → the output table as a polars frame (the Python API's path; the same
    encoding and scoring as the file path)."""
    src = PredictInput(Path("<frame>"), "frame", frame.height, list(frame.columns), None, titles)
    _check_frame(frame)
    order = (
        ["subject_id", "visit_no"] if "visit_no" in frame.columns else ["subject_id", "admittime", "hadm_id"]
    )
    frame = frame.sort(order, maintain_order=True)
    tables = [t for t, _, _ in _score_chunks(scorer, iter([(frame.height, frame)]), src, opts)]
    table = pa.concat_tables(tables) if tables else OUT_SCHEMA.empty_table()
    return pl.from_arrow(table)


def _check_frame(frame: pl.DataFrame) -> None:
    schema = frame.head(0).to_arrow().schema
    _check_schema(Path("<frame>"), schema)
    _check_ids(Path("<frame>"), frame)


def _score_chunks(scorer, chunks, src: PredictInput, opts: PredictOptions):
    from leadercli.selection import ddi_matrix

    encoder = scorer.encoder
    threshold = opts.threshold if opts.threshold is not None else scorer.threshold
    top_k = min(opts.top_k, encoder.n_labels)
    labels = pa.array(encoder.vocab.medications.codes, pa.string())
    names = pa.array(encoder.vocab.medications.titles, pa.string())
    adj = ddi_matrix(scorer.ddi_pairs(), encoder.n_labels) if opts.max_ddi_pairs is not None else None
    default_version = _default_icd_version(scorer.manifest)
    seen = _SeenSubjects()
    rows_fn = _Rows(top_k, threshold, adj, opts.max_ddi_pairs, labels, names)

    def encoded() -> Iterator[tuple[int, pl.DataFrame, list[dict[str, torch.Tensor]]]]:
        for nrows, df in chunks:
            df, batches = _encode_chunk(
                df, src.path, encoder, seen, default_version, scorer.max_visits, opts.batch_size
            )
            yield nrows, df, batches

    if not scorer.tensor_input:
        vocab = _titled_vocab(encoder.vocab, src.titles)
        for nrows, df, batches in encoded():
            if not batches:
                yield OUT_SCHEMA.empty_table(), nrows, Counts()
                continue
            from leadercli.data.samples import samples_from_frame

            samples = samples_from_frame(df, encoder.profile_fields, scorer.max_visits)
            probs = torch.from_numpy(scorer.score_samples(samples, vocab=vocab))  # (P, M)
            table, counts = _ordered(rows_fn, [rows_fn(probs[b["sample"]], b) for b in batches])
            yield table, nrows, counts
        return

    shrink = _Shrink(scorer, opts.unknown_shrink)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        # three stages overlap: a thread reads and encodes the next chunk while `threads` threads run the model
        # on the batches of the current one (torch and polars release the GIL), one intra-op thread each
        # (many small ops: threads in parallel beat parallel ops); chunks are written in order
        with (
            _in_background(encoded()) as stream,
            ThreadPoolExecutor(max(1, threads), initializer=torch.set_num_threads, initargs=(1,)) as pool,
        ):
            pending: deque = deque()  # chunks being scored: ([future], input rows)
            for nrows, _df, batches in stream:
                pending.append(
                    (
                        [
                            pool.submit(lambda b: rows_fn(shrink(scorer.score_batch(b), b), b), b)
                            for b in batches
                        ],
                        nrows,
                    )
                )
                while len(pending) > max(1, threads // 2):  # the next chunks keep the scorers busy meanwhile
                    futures, n = pending.popleft()
                    table, counts = _ordered(rows_fn, [f.result() for f in futures])
                    yield table, n, counts
            while pending:
                futures, n = pending.popleft()
                table, counts = _ordered(rows_fn, [f.result() for f in futures])
                yield table, n, counts
    finally:
        torch.set_num_threads(threads)


def _default_icd_version(manifest: dict) -> int | None:
    """The ICD version of raw (unprefixed) codes for a run's layout (MIMIC-III: 9; None = needs icd_version)."""
    from leadercli.data.layouts import LAYOUTS

    layout = LAYOUTS.layouts.get((manifest.get("artifact") or {}).get("source"))
    return layout.default_icd_version if layout is not None else None


class _Shrink:
    """Scores of a visit whose codes the model does not know lean towards the training drug frequencies:
    p' = (1 − w)·p + w·prior, w = min(1, λ·u), u = unknown / all codes of the target visit (benchmarks/README.md,
    cold start: the student alone falls below the popularity floor on unseen records). Applied to the student
    and distilled runs only — the teacher reads the titles of unknown codes, the baselines read no codes."""

    def __init__(self, scorer, lam: float) -> None:
        self.prior = scorer.prior() if lam > 0 and scorer.kind in ("student", "distilled") else None
        self.lam = lam

    def __call__(self, probs: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        if self.prior is None:
            return probs
        u = batch["n_unknown"].float() / batch["n_codes"].clamp(min=1).float()  # (B,)
        w = (self.lam * u).clamp(max=1.0).unsqueeze(1)  # (B, 1)
        return (1 - w) * probs + w * self.prior.unsqueeze(0)


def _titled_vocab(vocab, titles: dict[str, dict[str, str]] | None):
    """The run's vocab, extended with the titles of codes it does not know (for the teacher's prompts)."""
    if not titles:
        return vocab
    from leadercli.data.artifact import CodeList, Vocab

    lists = {}
    for kind in ("diagnoses", "procedures", "medications"):
        cl = getattr(vocab, kind)
        extra = [(c, t) for c, t in sorted(titles.get(kind, {}).items()) if c not in cl.index]
        lists[kind] = CodeList(cl.codes + [c for c, _ in extra], cl.titles + [t for _, t in extra])
    return Vocab(**lists, profile=vocab.profile)


class _Rows:
    """Probabilities of one batch → its output rows (top-k plus every selected drug), in batch order, as
    columns (`_ordered` makes the table; the drug columns are the label index `ix`), and the counts; `sample`
    of each row keeps the patient's place in the chunk."""

    def __init__(self, top_k, threshold, adj, max_pairs, labels: pa.Array, names: pa.Array) -> None:
        self.top_k, self.threshold, self.adj, self.max_pairs = top_k, threshold, adj, max_pairs
        self.labels, self.names = labels, names

    def __call__(
        self, probs: torch.Tensor, batch: dict[str, torch.Tensor]
    ) -> tuple[dict[str, np.ndarray], np.ndarray, Counts]:
        from leadercli.selection import limit_ddi

        B, M = probs.shape
        sel = probs >= self.threshold  # (B, M)
        if self.adj is not None:
            kept, dropped = limit_ddi(probs, sel, self.adj, self.max_pairs)
        else:
            kept, dropped = sel, torch.zeros_like(sel)
        n_sel = sel.sum(1)  # (B,)
        k = int(min(M, max(self.top_k, int(n_sel.max()) if B else 0)))
        top_values, top_indices = _top(probs, k)  # (B, k)
        rank = torch.arange(1, k + 1).expand(B, k)
        sel_k = sel.gather(1, top_indices)
        keep = (rank <= self.top_k) | sel_k  # (B, k)
        kf = keep.numpy().ravel()
        n_unknown = batch["n_unknown"].numpy()
        n_codes = batch["n_codes"].numpy()
        per_patient = keep.sum(1).numpy()
        cols = {
            "subject_id": np.repeat(batch["subject_id"].numpy(), per_patient),
            "hadm_id": np.repeat(batch["hadm_id"].numpy(), per_patient),
            "rank": rank.numpy().ravel()[kf].astype(np.int32),
            "ix": top_indices.numpy().ravel()[kf],
            "score": top_values.numpy().astype(np.float32).ravel()[kf],
            "selected": kept.gather(1, top_indices).numpy().ravel()[kf],
            "ddi_dropped": dropped.gather(1, top_indices).numpy().ravel()[kf],
            "n_unknown_codes": np.repeat(n_unknown.astype(np.int32), per_patient),
        }
        counts = Counts(
            patients=B,
            rows=len(cols["ix"]),
            selected=int(kept.sum()),
            beyond_top_k=int((sel_k & (rank > self.top_k)).sum()),
            ddi_dropped=int(dropped.sum()),
            mostly_unknown=int((n_unknown > MOSTLY_UNKNOWN * n_codes).sum()),
            no_known_code=int(((n_unknown == n_codes) & (n_codes > 0)).sum()),
        )
        return cols, np.repeat(batch["sample"].numpy(), per_patient), counts

    def table(self, cols: dict[str, np.ndarray]) -> pa.Table:
        """Columns of `__call__` → the output table (drug codes and names looked up by label index)."""
        ix = pa.array(cols["ix"])
        named = {"atc3": self.labels.take(ix), "drug_name": self.names.take(ix)}
        return pa.table({f.name: named.get(f.name, cols.get(f.name)) for f in OUT_SCHEMA}, schema=OUT_SCHEMA)


def _top(probs: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The k largest scores of each row (B, M), largest first, and their columns: `torch.topk(probs, k)`
    where a row's k + 1 best scores are distinct, from numpy's vectorised sort (about 4× faster on these
    rows); a row with equal scores there is sorted stably (equal scores in column order, where topk's order
    is unspecified)."""
    p = probs.numpy()
    if probs.dtype != torch.float32 or np.isnan(p).any():  # NaN: topk ranks it first, the sort last
        top = torch.topk(probs, k, dim=1)
        return top.values, top.indices
    neg = -p  # (B, M) ascending = scores descending
    idx = np.argsort(neg, axis=1)  # (B, M)
    first = np.take_along_axis(neg, idx[:, : min(k + 1, p.shape[1])], 1)  # (B, ≤ k+1)
    tied = np.flatnonzero((first[:, 1:] == first[:, :-1]).any(1))  # (t,) rows with equal scores there
    if len(tied):
        idx[tied] = np.argsort(neg[tied], axis=1, kind="stable")
    idx = np.ascontiguousarray(idx[:, :k])  # (B, k)
    return torch.from_numpy(np.take_along_axis(p, idx, 1)), torch.from_numpy(idx)


def _ordered(rows_fn: _Rows, results: list[tuple[dict[str, np.ndarray], np.ndarray, Counts]]):
    """The batches of one chunk (in visit-count order) → (one table in sample (subject) order, each patient's
    rows together and by rank, the counts); the columns are put in order before the drug names are looked up."""
    counts = Counts()
    if not results:
        return OUT_SCHEMA.empty_table(), counts
    parts, samples, cs = zip(*results, strict=True)
    for c in cs:
        counts.add(c)
    order = np.argsort(np.concatenate(samples), kind="stable")  # rows of a patient keep their rank order
    cols = {name: np.concatenate([p[name] for p in parts])[order] for name in parts[0]}
    return rows_fn.table(cols), counts


def _subject_chunks(frames: Iterator[pl.DataFrame]) -> Iterator[tuple[int, pl.DataFrame]]:
    """Frames of rows → (rows read, frame of whole subjects): the last subject of a frame is carried over to
    the next one, as its visits may continue there."""
    carry: pl.DataFrame | None = None
    for df in frames:
        nrows = df.height
        if carry is not None:
            df = pl.concat([carry, df], how="vertical_relaxed")
        if df.height == 0:
            continue
        sid = df["subject_id"].to_numpy()
        last = sid[-1]
        start = len(sid) - int(np.argmax(sid[::-1] != last)) if (sid != last).any() else 0  # its last run
        if (sid[:start] == last).any():  # rows of it earlier in the frame too: all of them go on
            carry = df.filter(pl.col("subject_id") == last)
            yield nrows, df.filter(pl.col("subject_id") != last)
        else:  # the usual case: the last run is the subject's only one (slices, no copy)
            carry = df.slice(start)
            yield nrows, df.slice(0, start)
    if carry is not None and carry.height:
        yield 0, carry


class _SeenSubjects:
    """The subjects of the chunks encoded so far, to refuse a subject whose rows are not contiguous; linear in
    the number of subjects whatever their order.

    Ids in [0, DENSE_LIMIT) (MIMIC's are below 2 × 10^7) are marks in a bool array indexed by id (1 byte per
    id up to the largest one, grown by doubling): one lookup and one store per subject. Other ids switch to
    sorted int64 runs kept as a binary counter (a log-structured merge: a chunk's subjects become a run, two
    runs of similar size are merged, at most log2(n) runs, 8 bytes a subject) — O(n log n). Before issue 12
    every chunk was looked up in every earlier chunk: quadratic when ids are not ascending."""

    DENSE_LIMIT = 1 << 26  # ids below this use the bool array (at most 64 MiB)

    def __init__(self) -> None:
        self.dense: np.ndarray | None = np.zeros(0, dtype=bool)  # None once an id is out of range
        self.runs: list[np.ndarray] = []  # sorted, sizes decreasing from first to last
        self.max: int | None = None

    def add(self, subjects: np.ndarray) -> bool:
        """Record a chunk's subjects; False when one was seen in an earlier chunk."""
        u = np.unique(np.asarray(subjects, dtype=np.int64))  # (n,) sorted
        if len(u) == 0:
            return True
        ascending = self.max is None or u[0] > self.max  # ascending ids need no lookup
        if self.dense is not None and (u[0] < 0 or u[-1] >= self.DENSE_LIMIT):
            self.runs = [np.flatnonzero(self.dense).astype(np.int64)] if self.max is not None else []
            self.dense = None
        if self.dense is not None:
            if u[-1] >= len(self.dense):
                grown = np.zeros(min(max(int(u[-1]) + 1, 2 * len(self.dense)), self.DENSE_LIMIT), dtype=bool)
                grown[: len(self.dense)] = self.dense
                self.dense = grown
            if not ascending and self.dense[u].any():
                return False
            self.dense[u] = True
        else:
            if not ascending:
                for run in self.runs:
                    i = np.searchsorted(run, u).clip(max=len(run) - 1)
                    if (run[i] == u).any():
                        return False
            while self.runs and len(self.runs[-1]) <= 2 * len(u):
                u = _merge_sorted(self.runs.pop(), u)
            self.runs.append(u)
        self.max = int(u[-1]) if self.max is None else max(self.max, int(u[-1]))
        return True


def _merge_sorted(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Two sorted int64 arrays → one (numpy's stable sort for int64 is a timsort that merges the two runs in
    linear time)."""
    out = np.concatenate([a, b])
    out.sort(kind="stable")
    return out


def _encode_chunk(
    df: pl.DataFrame,
    path: Path,
    encoder: Encoder,
    seen: _SeenSubjects,
    default_version: int | None,
    max_visits: int,
    batch_size: int,
) -> tuple[pl.DataFrame, list[dict[str, torch.Tensor]]]:
    """Whole subjects → (the prefixed frame, its collated batches; `Encoder.encode_frame`)."""
    if df.height == 0:
        return df, []
    if not seen.add(df["subject_id"].to_numpy()):
        raise InputError(
            f"{path}: rows of a subject are not contiguous",
            "Sort the file by subject_id (and admittime) first",
        )
    dup = df.select(pl.struct("subject_id", "hadm_id").is_duplicated().sum()).item()
    if dup:
        raise InputError(
            f"{path}: {dup:,} rows repeat a (subject_id, hadm_id) pair (a visit must be one row)",
            "Merge the code lists of each visit into one row first",
        )
    if "medications" not in df.columns:
        df = df.with_columns(pl.lit([], dtype=pl.List(pl.Utf8)).alias("medications"))
    df = _prefix_raw(df, path, default_version)
    return df, encoder.encode_frame(df, max_visits, batch_size, labels=False, by_length=True)


@contextlib.contextmanager
def _in_background(items: Iterator[T], depth: int = 1) -> Iterator[Iterator[T]]:
    """Runs the iterator `items` in a thread, at most `depth` items ahead of the consumer (memory stays
    bounded); its exceptions are raised in the consumer, in order. Leaving the block stops the thread."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def put(entry) -> bool:
        while not stop.is_set():
            try:
                q.put(entry, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        try:
            for item in items:
                if not put((True, item)):
                    return
            put((True, done))
        except BaseException as exc:  # noqa: BLE001 — re-raised in the consumer
            put((False, exc))

    def consume() -> Iterator[T]:
        while True:
            ok, item = q.get()
            if not ok:
                raise item
            if item is done:
                return
            yield item

    thread = threading.Thread(target=work, name="leader-predict-encode", daemon=True)
    thread.start()
    try:
        yield consume()
    finally:
        stop.set()
        thread.join()
