"""Reading and checking a prediction input (the contract is `leadercli.data.contract`).

`read_input` opens a parquet or CSV file, or a prediction input folder written by `leader preprocess
--for-run` (its `visits.parquet`; its `codes.parquet` gives the teacher the titles of codes the run has never
seen), and checks its schema without reading it in full. `PredictInput.batches` then streams it in record
batches of the parquet schema (CSV: ids as integers, list columns split on `;`, admittime parsed), so memory
stays bounded whatever its size. `prefix_raw` turns raw ICD codes into the artifact's prefixed codes.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from leadercli.data import codes, contract
from leadercli.data.tables import DATETIME_FORMATS, read_header
from leadercli.errors import InputError


@dataclass
class PredictInput:
    """A validated input: where its rows come from, how many there are and, for a prediction input folder,
    its manifest and the titles of every code (`titles`: kind → {code: title})."""

    path: Path  # the file that is read
    kind: str  # "parquet", "csv" or "frame" (the Python API's in-memory frame)
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
                yield check_ids(self.path, pl.from_arrow(rb))
        else:
            yield from _csv_batches(self.path, columns, rows)


def read_input(path: Path) -> PredictInput:
    """Open and check an input file or prediction input folder (schema and types; nothing is read in full)."""
    path = Path(path)
    manifest = titles = None
    if path.is_dir():
        folder = path
        path = folder / contract.VISITS
        if not path.is_file():
            raise InputError(
                f"input folder {folder} has no {contract.VISITS}",
                "Pass a visits file, or a folder written by `leader preprocess --for-run`",
            )
    if not path.is_file():
        raise InputError(
            f"input file {path} does not exist",
            "Pass a visits parquet/CSV or a folder written by `leader preprocess --for-run`",
        )
    side = path.parent / contract.MANIFEST
    if path.name == contract.VISITS and side.is_file():
        try:
            m = json.loads(side.read_text())
        except (OSError, ValueError):
            m = None
        if isinstance(m, dict) and m.get("kind") == contract.KIND:
            manifest = m
            titles = read_titles(path.parent / contract.CODES)
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes[-1:] == [".parquet"]:
        try:
            pf = pq.ParquetFile(path)
        except (pa.ArrowInvalid, OSError) as exc:
            raise InputError(
                f"{path} is not a readable parquet file ({str(exc).splitlines()[0][:120]})",
                "Write it with pyarrow/polars, or rebuild it with `leader preprocess --for-run`",
            ) from None
        check_schema(path, pf.schema_arrow)
        n = pf.metadata.num_rows
        if n == 0:
            raise InputError(f"{path} has no rows", "Pass a file with at least one visit")
        return PredictInput(path, "parquet", n, list(pf.schema_arrow.names), manifest, titles)
    if suffixes[-1:] == [".csv"] or suffixes[-2:] == [".csv", ".gz"]:
        header = [h.strip() for h in read_header(path)]
        _check_csv_header(path, header)
        return PredictInput(path, "csv", None, header, manifest, titles)
    raise InputError(f"input {path} must end in .parquet or .csv", "Convert it, e.g. with polars")


def read_titles(path: Path) -> dict[str, dict[str, str]] | None:
    """A prediction input folder's `codes.parquet` → kind → {code: title} (codes with a title); None when the
    file is absent."""
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


def check_schema(path: Path, schema: pa.Schema) -> None:
    """The columns and types of a parquet file or frame against the contract; an InputError names the first
    column that is missing or of the wrong type."""
    names = set(schema.names)
    for col, kind in {**contract.REQUIRED, **contract.OPTIONAL}.items():
        if col not in names:
            if col in contract.REQUIRED:
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
    _check_order(path, names)


def check_frame(frame: pl.DataFrame) -> None:
    """An in-memory visits frame (the Python API) against the contract: schema and ids."""
    schema = frame.head(0).to_arrow().schema
    check_schema(Path("<frame>"), schema)
    check_ids(Path("<frame>"), frame)


def _check_order(path: Path, names) -> None:
    if not any(c in names for c in contract.ORDER_COLUMNS):
        raise InputError(
            f"{path}: needs an 'admittime' or 'visit_no' column to order visits", "Add one and retry"
        )


def _check_csv_header(path: Path, header: list[str]) -> None:
    for col, kind in contract.REQUIRED.items():
        if col not in header:
            hint = "`;`-separated codes" if kind.startswith("list") else kind
            raise InputError(
                f"{path}: column '{col}' is missing",
                f"Provide '{col}' ({hint}); see the README's visits schema",
            )
    _check_order(path, header)


def _csv_batches(path: Path, columns: list[str], rows: int) -> Iterator[pl.DataFrame]:
    """CSV → frames of about `rows` rows with the parquet schema: ids and visit_no as integers, list columns
    split on `;`, admittime parsed; a value of the wrong type is an InputError naming the column."""
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
        if col in contract.INTEGER_COLUMNS:
            bad = df.select(
                (c.is_not_null() & (c != "") & c.cast(pl.Int64, strict=False).is_null()).sum()
            ).item()
            if bad:
                raise InputError(
                    f"{path}: column '{col}' has {bad:,} values that are not whole numbers", "Fix the column"
                )
            exprs.append(c.cast(pl.Int64, strict=False).alias(col))
        elif col in contract.LIST_COLUMNS:
            _check_separator(path, col, df[col])
            exprs.append(
                pl.when(c.is_null() | (c == ""))
                .then(pl.lit([], dtype=pl.List(pl.Utf8)))
                .otherwise(
                    c.str.split(contract.LIST_SEPARATOR)
                    .list.eval(pl.element().str.strip_chars())
                    .list.eval(pl.element().filter(pl.element() != ""))
                )
                .alias(col)
            )
        elif col == "admittime":
            parsed = pl.coalesce(
                [c.str.to_datetime(f, time_unit="us", strict=False) for f in DATETIME_FORMATS]
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
    return check_ids(path, df.select(exprs))


def _check_separator(path: Path, col: str, values: pl.Series) -> None:
    """Codes never hold `|`, `,` or blanks: a list written with another separator than `;` is an error, not a
    column of codes unknown to the model."""
    parts = values.str.split(contract.LIST_SEPARATOR).explode().str.strip_chars()
    odd = parts.filter(parts.str.contains(r"[|,\s]"))
    if odd.len():
        sep = {"|": "|", ",": ",", " ": "a blank", "\t": "a tab"}.get(
            next((ch for ch in odd[0] if ch in "|, \t"), " "), "a blank"
        )
        raise InputError(
            f"{path}: column '{col}' has {odd.len():,} codes holding {sep!r} between codes: the file is probably "
            f"malformed (lists must be '{contract.LIST_SEPARATOR}'-separated)",
            f"Write the lists as D10:I10{contract.LIST_SEPARATOR}D10:E119 (or use a parquet file with list columns)",
        )


def check_ids(path: Path, df: pl.DataFrame) -> pl.DataFrame:
    """`df` unchanged, or an InputError when a visit has no subject_id or hadm_id."""
    for col in contract.ID_COLUMNS:
        nulls = df[col].null_count()
        if nulls:
            raise InputError(
                f"{path}: column '{col}' has {nulls:,} empty values",
                "Every visit needs a subject_id and a hadm_id",
            )
    return df


def prefix_raw(df: pl.DataFrame, path: Path, default_version: int | None) -> pl.DataFrame:
    """Raw ICD codes (no `D9:` prefix) → prefixed (`leadercli.data.codes`), with the row's `icd_version` (or
    the ICD version of the model's source, `default_version`); a raw code without either is an InputError."""
    ver = None
    if "icd_version" in df.columns:
        ver = pl.col("icd_version").cast(pl.Int64)
    elif default_version is not None:
        ver = pl.lit(default_version)
    out = []
    for col in ("diagnoses", "procedures"):
        if not df.select(codes.has_raw(pl.col(col))).item():
            continue
        if ver is None:
            raise InputError(
                f"{path}: column '{col}' holds raw ICD codes but there is no 'icd_version' column",
                "Add icd_version (9 or 10) per visit, or prefix codes as D9:4019 / P10:0DTJ4ZZ",
            )
        out.append(codes.prefix_lists(df, col, col, ver))
    return df.with_columns(out) if out else df
