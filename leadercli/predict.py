"""`leader predict`: checkpoint → batched inference → ranked table.

Input: a parquet file in the artifact's `visits.parquet` schema — `subject_id`, `hadm_id`, `diagnoses`,
`procedures` (list[str]), `admittime` and/or `visit_no` for the order, optional `medications` (history
drugs; the latest visit's own drugs are ignored) and optional profile columns. Codes may be prefixed
(`D9:4019`, `P10:0DTJ4ZZ`) or raw ICD codes with an `icd_version` column (9/10) per visit. Rows of one subject
must be contiguous (as in the artifact, sorted by subject); the file is streamed in record batches so memory
stays bounded whatever its size.

Pipeline (issue 3, "Speed"): a thread reads a record batch, carries its last subject over to the next one and
encodes the whole subjects straight from the frame to padded id tensors (`Encoder.encode_frame`: the same
tensors as `samples_from_frame` → `Encoder.encode` → `collate`, patients batched by visit count so that most
batches pad to one visit); meanwhile as many threads as torch would use (`torch.get_num_threads()`: the cores
or OMP_NUM_THREADS) run the model, one intra-op thread each, on the batches of the chunks before, and the main
thread writes each chunk's rows back in subject order.

Output: one row per (subject, drug) for the top-k drugs of the subject's latest visit: `subject_id`,
`hadm_id`, `rank` (1 = best), `atc3`, `drug_name`, `score`, `selected` (score ≥ threshold). CSV or parquet by
extension, written to a temporary file and renamed into place.
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from leadercli import console
from leadercli.data.batching import Encoder
from leadercli.errors import InputError, SettingsError

T = TypeVar("T")

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
    ex = tmp.explode("c", empty_as_null=True).with_columns(  # an empty list keeps its row
        pl.when(pl.col("c").str.contains(r"^[DP]\d+:"))
        .then(pl.col("c"))
        .otherwise(pl.col("p") + pl.col("c").str.replace_all(".", "", literal=True).str.to_uppercase())
        .alias("c")
    )
    res = ex.group_by("i", maintain_order=True).agg(pl.col("c").drop_nulls())
    return res["c"]


def predict_file(settings, input_path: Path, output: Path) -> PredictSummary:
    from leadercli.runs import load_run

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
    scorer = load_run(model_dir)
    model, encoder, manifest = scorer, scorer.encoder, scorer.manifest
    threshold = cfg.threshold if cfg.threshold is not None else scorer.threshold
    top_k = min(cfg.top_k, encoder.n_labels)
    labels = pa.array(encoder.vocab.medications.codes, pa.string())
    names = pa.array(encoder.vocab.medications.titles, pa.string())
    default_version = 9 if manifest.get("artifact", {}).get("source") == "mimic3" else None
    max_visits = scorer.max_visits
    wanted = [
        c
        for c in pf.schema_arrow.names
        if c
        in set(REQUIRED) | {"admittime", "visit_no", "medications", "icd_version", *encoder.profile_fields}
    ]

    def encoded_chunks() -> Iterator[tuple[int, list[dict[str, torch.Tensor]]]]:
        seen = _SeenSubjects()
        for nrows, df in _subject_chunks(pf, input_path, wanted, max(cfg.batch_size * 2, 1024)):
            yield (
                nrows,
                _encode_chunk(df, input_path, encoder, seen, default_version, max_visits, cfg.batch_size),
            )

    def score(batch: dict[str, torch.Tensor]) -> tuple[pa.Table, np.ndarray]:
        return _score_batch(model, batch, top_k, threshold, labels, names), batch["sample"].numpy()

    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(f".{output.name}.tmp")
    writer = None
    n_patients = n_rows = 0
    threads = torch.get_num_threads()
    try:
        writer = _open_writer(tmp, output.suffix.lower())
        # three stages overlap: a thread reads and encodes the next chunk while `threads` threads run the model
        # on the batches of the current one (torch and polars release the GIL), one intra-op thread each
        # (many small ops: threads in parallel beat parallel ops); chunks are written in order
        torch.set_num_threads(1)
        with (
            console.progress("predicting", total=pf.metadata.num_rows) as advance,
            _in_background(encoded_chunks()) as chunks,
            ThreadPoolExecutor(max(1, threads), initializer=torch.set_num_threads, initargs=(1,)) as pool,
        ):
            pending: deque = deque()  # chunks being scored: ([future (table, samples)], input rows)
            for nrows, batches in chunks:
                pending.append(([pool.submit(score, b) for b in batches], nrows))
                while len(pending) > max(1, threads // 2):  # the next chunks keep the scorers busy meanwhile
                    n_patients, n_rows = _write(pending.popleft(), writer, advance, top_k, n_patients, n_rows)
            while pending:
                n_patients, n_rows = _write(pending.popleft(), writer, advance, top_k, n_patients, n_rows)
        writer.close()
        writer = None
        os.replace(tmp, output)
    finally:
        torch.set_num_threads(threads)
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


def _open_writer(path: Path, suffix: str):
    if suffix == ".parquet":
        return pq.ParquetWriter(path, OUT_SCHEMA)
    import pyarrow.csv as pacsv

    return pacsv.CSVWriter(path, OUT_SCHEMA)


def _subject_chunks(
    pf: pq.ParquetFile, path: Path, columns: list[str], rows: int
) -> Iterator[tuple[int, pl.DataFrame]]:
    """Record batches of `rows` rows → (rows read, frame of whole subjects): the last subject of a batch is
    carried over to the next one, as its visits may continue there."""
    carry: pl.DataFrame | None = None
    for rb in pf.iter_batches(batch_size=rows, columns=columns):
        for col in ("subject_id", "hadm_id"):
            if rb.column(col).null_count:
                raise InputError(
                    f"{path}: column '{col}' has {rb.column(col).null_count:,} empty values",
                    "Every visit needs a subject_id and a hadm_id",
                )
        df = pl.from_arrow(rb)
        nrows = df.height
        if carry is not None:
            df = pl.concat([carry, df], how="vertical_relaxed")
        if df.height == 0:
            continue
        last = df["subject_id"][-1]
        carry = df.filter(pl.col("subject_id") == last)
        yield nrows, df.filter(pl.col("subject_id") != last)
    if carry is not None and carry.height:
        yield 0, carry


class _SeenSubjects:
    """The subjects of the chunks encoded so far (sorted int64 arrays, 8 bytes a subject)."""

    def __init__(self) -> None:
        self.parts: list[np.ndarray] = []
        self.max: int | None = None

    def add(self, subjects: np.ndarray) -> bool:
        """Record a chunk's subjects; False when one was seen in an earlier chunk."""
        u = np.unique(subjects)  # (n,) sorted
        if self.max is not None and u[0] <= self.max:  # not in ascending order: look each one up
            for part in self.parts:
                i = np.searchsorted(part, u).clip(max=len(part) - 1)
                if (part[i] == u).any():
                    return False
        self.parts.append(u)
        self.max = int(u[-1]) if self.max is None else max(self.max, int(u[-1]))
        return True


def _encode_chunk(
    df: pl.DataFrame,
    path: Path,
    encoder: Encoder,
    seen: _SeenSubjects,
    default_version: int | None,
    max_visits: int,
    batch_size: int,
) -> list[dict[str, torch.Tensor]]:
    """Whole subjects → collated batches (`Encoder.encode_frame`: same tensors as samples + collate)."""
    if df.height == 0:
        return []
    if not seen.add(df["subject_id"].to_numpy()):
        raise InputError(
            f"{path}: rows of a subject are not contiguous",
            "Sort the file by subject_id (and admittime) first",
        )
    if "medications" not in df.columns:
        df = df.with_columns(pl.lit([], dtype=pl.List(pl.Utf8)).alias("medications"))
    df = _prefix_raw(df, path, default_version)
    return encoder.encode_frame(df, max_visits, batch_size, labels=False, by_length=True)


def _score_batch(
    model, batch: dict[str, torch.Tensor], top_k: int, threshold: float, labels: pa.Array, names: pa.Array
) -> pa.Table:
    """One batch → its output rows: the top-k drugs of each patient, best first."""
    with torch.inference_mode():  # thread-local: entered in the scoring thread
        probs = model.score_batch(batch)  # (B, M)
        top = torch.topk(probs, top_k, dim=1)  # (B, k)
    sc = top.values.numpy().astype(np.float32).ravel()  # (B·k,)
    ix = pa.array(top.indices.numpy().ravel())  # (B·k,)
    B = top.values.shape[0]
    return pa.table(
        {
            "subject_id": np.repeat(batch["subject_id"].numpy(), top_k),
            "hadm_id": np.repeat(batch["hadm_id"].numpy(), top_k),
            "rank": np.tile(np.arange(1, top_k + 1, dtype=np.int32), B),
            "atc3": labels.take(ix),
            "drug_name": names.take(ix),
            "score": sc,
            "selected": sc >= threshold,
        },
        schema=OUT_SCHEMA,
    )


def _write(
    chunk: tuple[list[Future], int], writer, advance, top_k: int, n_patients: int, n_rows: int
) -> tuple[int, int]:
    """Wait for the batches of one chunk and write their rows in sample (subject) order: the batches are in
    visit-count order (`by_length`), each patient's `top_k` rows together. Advances the progress bar by the
    chunk's input rows."""
    futures, nrows = chunk
    if futures:
        tables, samples = zip(*(f.result() for f in futures), strict=True)
        order = np.argsort(np.concatenate(samples))  # (P,) batch position of each sample, in sample order
        rows = (order[:, None] * top_k + np.arange(top_k)).ravel()  # (P·k,)
        table = pa.concat_tables(tables).take(rows)
        writer.write_table(table)
        n_patients, n_rows = n_patients + len(order), n_rows + table.num_rows
    advance(nrows, status=f"{n_patients:,} patients")
    return n_patients, n_rows


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
