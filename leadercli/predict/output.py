"""The output file of `leader predict`: checks before any work, the writer, and the `<output>.meta.json` sidecar.

The table (`ranking.out_schema`) is CSV or parquet by the output's extension (the explanation list columns
become `;`-joined text in CSV, `csv_table`), written to a hidden temporary
file beside it and renamed into place; the sidecar records the run, label hash, threshold, version, input
sha256 and counts. An output never replaces the input or a file of a leadercli folder.
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from leadercli import __version__, console, paths
from leadercli.data import contract
from leadercli.data.artifact import DDI, PATIENTS, VISITS
from leadercli.errors import InputError
from leadercli.explain import FIELDS
from leadercli.predict.input import PredictInput
from leadercli.predict.ranking import Counts, PredictOptions, out_schema
from leadercli.runs import now

# files of leadercli folders (artifact, run, prediction input) that an output must never replace
OWN_FILES = (VISITS, PATIENTS, DDI, contract.CODES)


def check_output(output: Path, input_path: Path, top_k: int = 20) -> None:
    """Refuse an output that would replace the input or a file of a leadercli folder, that cannot be written
    or that would not fit on the disk (`estimate_output_bytes`), before any work is done."""
    if output.suffix.lower() not in contract.OUTPUT_SUFFIXES:
        raise InputError(f"output {output} must end in .csv or .parquet", "Choose e.g. -o recs.csv")
    src = Path(input_path)
    candidates = [src, src / contract.VISITS] if src.is_dir() else [src]
    if any(output.resolve() == c.resolve() for c in candidates):
        raise InputError(f"output {output} is the input file", "Choose another -o; inputs are never replaced")
    if output.is_dir():
        raise InputError(f"output {output} is a folder", "Pass a file name ending in .csv or .parquet")
    if output.name in OWN_FILES and (output.parent / contract.MANIFEST).is_file():
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
        src = src / contract.VISITS
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
def writing(output: Path) -> Iterator[None]:
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


def temporary(output: Path) -> Path:
    """The hidden file the output is written to before it is renamed into place."""
    return output.with_name(f".{output.name}.tmp")


def clean_stale(output: Path) -> None:
    """Temporary files a killed `leader predict` left next to `output` (its data file and its sidecar's)."""
    stale = [temporary(output), *output.parent.glob(f".{output.name}.meta.json.*.tmp")]
    for p in stale:
        if p.is_file():
            p.unlink()
            console.info(f"removed {p}, left by an interrupted run")


def open_writer(path: Path, suffix: str, explain: int = 0):
    """A writer of the output tables (`write_table`, `close`): parquet, or CSV for any other `suffix`."""
    schema = out_schema(explain)
    if suffix == ".parquet":
        return pq.ParquetWriter(path, schema)
    # 64k rows converted at a time (the default 1,024 costs about 15 % more CPU, same bytes)
    options = pacsv.WriteOptions(batch_size=1 << 16)
    if not explain:
        return pacsv.CSVWriter(path, schema, write_options=options)
    return _FlatCSV(pacsv.CSVWriter(path, csv_table(schema.empty_table()).schema, write_options=options))


def csv_table(table: pa.Table) -> pa.Table:
    """List columns → text, entries joined by `;` (codes never hold one; a `;` in a title becomes `,`), numbers
    with 4 decimals: what a spreadsheet, pandas and polars read as plain text columns."""
    cols = {}
    for name, col in zip(table.column_names, table.columns, strict=True):
        if pa.types.is_list(col.type):
            arr = col.combine_chunks() if col.num_chunks else pa.array([], col.type)
            values = arr.values
            if pa.types.is_floating(values.type):
                values = pc.cast(pc.round(values, 4), pa.string())
            else:
                values = pc.replace_substring(values, ";", ",")
            offsets = arr.offsets
            col = pc.binary_join(pa.ListArray.from_arrays(offsets, values), ";")
        cols[name] = col
    return pa.table(cols)


class _FlatCSV:
    """A CSV writer of tables with list columns (`csv_table`)."""

    def __init__(self, writer) -> None:
        self.writer = writer

    def write_table(self, table: pa.Table) -> None:
        self.writer.write_table(csv_table(table))

    def close(self) -> None:
        self.writer.close()


def sha256(path: Path, stop: threading.Event) -> str:
    """The file's sha256 (hex), or "" once `stop` is set."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 22):
            if stop.is_set():
                return ""
            h.update(chunk)
    return h.hexdigest()


def sidecar(scorer, src: PredictInput, opts: PredictOptions, counts: Counts, sha: str, output: Path) -> dict:
    """The content of `<output>.meta.json`: what was run on what, and the counts (never patient rows)."""
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
        "explain": {"k": opts.explain, "method": "occlusion", "columns": [f.name for f in FIELDS]}
        if opts.explain
        else None,
        "unknown_shrink": scorer.unknown_shrink if scorer.shrinks else 0.0,  # λ applied by the run's Scorer
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
