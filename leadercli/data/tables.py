"""CSV tables: finding the files, scanning them lazily with explicit dtypes, and schema checks.

Owns the *reading* half of `leader preprocess` (reference §1.1, with its inputs made robust) for the raw MIMIC
tables (their layouts are `data/mimic.py`) and the aux mapping files:

- file names are matched case-insensitively, `.csv` or `.csv.gz` (MIMIC-III v1.4 as distributed has UPPER-CASE
  names and headers and is gzipped; the demo has lower-case headers and plain `.csv`);
- headers are matched case-insensitively and every column is renamed to its lower-case canonical name;
- dtypes are explicit: ids are Int64, codes, NDCs and profile values are strings (leading zeros kept), dates
  are read as strings and parsed here;
- every problem a user can cause is an `InputError` naming the file and column: a missing file or column, an
  empty file or table, an unreadable gzip, a value of the wrong type. Messages never quote cell values.

Tables are scanned with `polars.scan_csv` and collected one at a time with the streaming engine, so that an
error is always attributed to the file it comes from and the big tables never sit in memory as text.
"""

from __future__ import annotations

import csv
import gzip
import io
import re
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from leadercli.errors import InputError

INT, STR, DATETIME = "int", "str", "datetime"
DTYPES = {INT: pl.Int64, STR: pl.String, DATETIME: pl.String}  # datetimes are parsed after reading
DATETIME_FORMATS = (
    "%Y-%m-%d %H:%M:%S",
    "%Y-%m-%d %H:%M:%S%.f",
    "%Y-%m-%dT%H:%M:%S",
    "%Y-%m-%dT%H:%M:%S%.f",
    "%Y-%m-%d %H:%M",
    "%Y-%m-%d",
)
_TYPE_WORDS = {INT: "whole numbers", STR: "text", DATETIME: "dates (YYYY-MM-DD hh:mm:ss)"}


@dataclass(frozen=True)
class Column:
    name: str  # canonical lower-case name
    kind: str = STR  # INT, STR or DATETIME
    required: bool = True
    aliases: tuple[str, ...] = ()  # other header names accepted (e.g. MIMIC-IV v1 `ethnicity` for `race`)


@dataclass(frozen=True)
class TableSpec:
    role: str  # what the table is for, e.g. "admissions"
    stems: tuple[str, ...]  # file names without extension, any case
    columns: tuple[Column, ...]

    def column(self, name: str) -> Column:
        return next(c for c in self.columns if c.name == name)


# -- locating files -------------------------------------------------------------------------------------------
def find_file(dirs: list[Path], stems: tuple[str, ...], what: str) -> Path | None:
    """The first `<stem>.csv` or `<stem>.csv.gz` (any case) in `dirs`; `.csv` wins over `.csv.gz`."""
    wanted = [f"{s.lower()}{ext}" for ext in (".csv", ".csv.gz") for s in stems]
    for folder in dirs:
        if not folder.is_dir():
            continue
        by_name = {p.name.lower(): p for p in sorted(folder.iterdir()) if p.is_file()}
        for name in wanted:
            if name in by_name:
                return by_name[name]
    return None


# -- headers --------------------------------------------------------------------------------------------------
def is_gzip(path: Path) -> bool:
    return path.name.lower().endswith(".gz")


def read_header(path: Path) -> list[str]:
    """Column names of a CSV (first line), gzip-aware. Empty or unreadable files raise InputError."""
    try:
        if is_gzip(path):
            with open(path, "rb") as raw:
                magic = raw.read(2)
            if magic != b"\x1f\x8b":
                raise InputError(
                    f"{path.name} is not a gzip file", f"Re-download it or decompress it to {path.stem}"
                )
            with gzip.open(path, "rb") as fh:
                line = fh.readline(1 << 20)
        else:
            with open(path, "rb") as fh:
                line = fh.readline(1 << 20)
    except (OSError, EOFError, zlib.error) as exc:
        raise InputError(
            f"{path.name} cannot be read ({_reason(exc)})", "Re-download the file; it may be truncated"
        ) from None
    text = line.decode("utf-8-sig", errors="replace").strip("\r\n")
    if b"\x00" in line or text.count("\ufffd") > max(2, len(text) // 20):
        raise InputError(
            f"{path.name} is not a text (CSV) file: its first line is binary data",
            "Pass the CSV table itself (.csv or .csv.gz), not another file under that name",
        )
    if not text.strip():
        raise InputError(f"{path.name} is empty (no header line)", "Re-download or re-export the table")
    try:
        return [c.strip() for c in next(csv.reader(io.StringIO(text)))]
    except csv.Error as exc:
        raise InputError(f"{path.name}: the header line is not CSV ({exc})", "Re-export the table") from None


def _reason(exc: BaseException) -> str:
    msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return msg[:120]


def match_columns(path: Path, header: list[str], spec: TableSpec) -> dict[str, str | None]:
    """canonical name → header name as written (None for an absent optional column)."""
    lower = {}
    for h in header:
        lower.setdefault(h.strip().lower(), h)
    out: dict[str, str | None] = {}
    for col in spec.columns:
        hit = next((lower[n] for n in (col.name, *col.aliases) if n in lower), None)
        if hit is None and col.required:
            raise InputError(
                f"{path.name}: column '{col.name}' is missing",
                f"Is this the {spec.role} table of the right source? Columns are matched case-insensitively",
            )
        out[col.name] = hit
    return out


# -- scanning and collecting ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Scan:
    """A table ready to query: the lazy frame has the canonical column names and dtypes (dates as strings)."""

    path: Path
    spec: TableSpec
    names: dict[str, str | None]
    frame: pl.LazyFrame


def scan_table(path: Path, spec: TableSpec) -> Scan:
    header = read_header(path)
    names = match_columns(path, header, spec)
    overrides = {names[c.name]: DTYPES[c.kind] for c in spec.columns if names[c.name] is not None}
    lf = pl.scan_csv(path, infer_schema=False, schema_overrides=overrides, raise_if_empty=False)
    exprs = []
    for col in spec.columns:
        actual = names[col.name]
        if actual is None:
            exprs.append(pl.lit(None, dtype=DTYPES[col.kind]).alias(col.name))
        elif col.kind == INT:
            exprs.append(pl.col(actual).alias(col.name))
        else:
            exprs.append(pl.col(actual).str.strip_chars().alias(col.name))
    return Scan(path, spec, names, lf.select(exprs))


def collect(
    scan: Scan, query: Callable[[pl.LazyFrame], pl.LazyFrame] | None = None, *, allow_empty: bool = False
) -> pl.DataFrame:
    """Run `query(scan.frame)` with the streaming engine; polars/IO failures become InputError naming the file.

    The result being empty means the table has no rows (queries here never filter everything away), which is
    an error unless `allow_empty`."""
    lf = query(scan.frame) if query is not None else scan.frame
    try:
        df = lf.collect(engine="streaming")
    except (pl.exceptions.PolarsError, OSError, EOFError, zlib.error) as exc:
        raise _collect_error(scan, exc) from None
    if df.height == 0 and not allow_empty:
        raise InputError(
            f"{scan.path.name} has no data rows", f"The {scan.spec.role} table must not be empty"
        )
    return df


def _unterminated_quote(path: Path) -> int | None:
    """The line (1-based) whose quote is never closed, or None (read only after a failed scan)."""
    opened, at = False, None
    try:
        with gzip.open(path, "rb") if is_gzip(path) else open(path, "rb") as fh:
            for n, line in enumerate(fh, 1):
                if line.count(b'"') % 2:
                    opened, at = not opened, n
    except (OSError, EOFError, zlib.error):
        return None
    return at if opened else None


def _collect_error(scan: Scan, exc: BaseException) -> InputError:
    text = str(exc)
    m = re.search(r"column ['\"]([^'\"]+)['\"]", text)
    if isinstance(exc, pl.exceptions.PolarsError) and (line := _unterminated_quote(scan.path)) is not None:
        return InputError(
            f'{scan.path.name}: a quote (") opened on line {line:,} is never closed, so the rest of the file '
            "reads as one field",
            'Close or remove that quote (a quote inside a quoted field is written twice: "")',
        )
    if m and isinstance(exc, pl.exceptions.PolarsError) and ("parse" in text or "conversion" in text):
        actual = m.group(1)
        canon = next((k for k, v in scan.names.items() if v == actual), actual.lower())
        kind = next((c.kind for c in scan.spec.columns if c.name == canon), STR)
        return InputError(
            f"{scan.path.name}: column '{canon}' has values that are not {_TYPE_WORDS[kind]}",
            "Use the table as distributed by PhysioNet (ids must be whole numbers)",
        )
    if (
        isinstance(exc, (OSError, EOFError, zlib.error))
        or "decompress" in text.lower()
        or "gzip" in text.lower()
    ):
        return InputError(
            f"{scan.path.name} cannot be read ({_reason(exc)})",
            "The file looks corrupt or truncated; re-download it (gzip -t checks a .gz file)",
        )
    return InputError(
        f"{scan.path.name} is not a readable CSV table ({type(exc).__name__})",
        "Check the file is a comma-separated MIMIC table with a header line",
    )


def parse_datetimes(df: pl.DataFrame, column: str, scan: Scan) -> pl.DataFrame:
    """Parse a string column of `df` into Datetime[us]; a non-empty value that is not a date is an InputError."""
    raw = pl.col(column)
    parsed = pl.coalesce([raw.str.to_datetime(f, time_unit="us", strict=False) for f in DATETIME_FORMATS])
    out = df.with_columns(parsed.alias(column), raw.is_not_null().alias("__had"))
    bad = out.filter(pl.col("__had") & pl.col(column).is_null()).height
    if bad:
        raise InputError(
            f"{scan.path.name}: column '{column}' has {bad} values that are not {_TYPE_WORDS[DATETIME]}",
            "Use the table as distributed by PhysioNet",
        )
    return out.drop("__had")


def require_rows(df: pl.DataFrame, path: Path, what: str) -> None:
    if df.height == 0:
        raise InputError(
            f"{path.name} has no usable rows ({what})", "Check that the table is the right one and not empty"
        )


# -- auxiliary files ------------------------------------------------------------------------------------------
AUX_NAMES: dict[str, tuple[str, ...]] = {
    "ndc_rxcui": ("ndc2rxnorm_mapping.txt", "ndc2RXCUI.txt"),  # GAMENet name, LEADER name
    "ndc_atc": ("ndc2atc_level4.csv", "RXCUI2atc4.csv"),
    "cid_atc": ("drug-atc.csv",),
    "ddi_top40": ("drug-DDI-TOP40.csv",),
    "ddi_full": ("drug-DDI.csv",),
}
AUX_REQUIRED = ("ndc_rxcui", "ndc_atc", "cid_atc", "who_atc")


def locate_aux(aux: Path, ddi_file: Path | None = None) -> dict[str, Path]:
    """Map each aux role to its file (any case, optionally .gz). DDI: `ddi_file` if given, else
    drug-DDI-TOP40.csv, else a full drug-DDI.csv (role `ddi_full`, filtered by the TOP-K rule)."""
    if not aux.is_dir():
        raise InputError(
            f"aux folder {aux} does not exist", "Pass the folder with the mapping files with --aux"
        )
    by_name = {p.name.lower(): p for p in sorted(aux.iterdir()) if p.is_file()}
    found: dict[str, Path] = {}
    for role, names in AUX_NAMES.items():
        for n in names:
            hit = by_name.get(n.lower()) or by_name.get(n.lower() + ".gz")
            if hit is not None:
                found[role] = hit
                break
    who = sorted(
        p for n, p in by_name.items() if n.startswith("who atc-ddd") and n.endswith((".csv", ".csv.gz"))
    )
    if who:
        found["who_atc"] = who[-1]  # the newest by its date-stamped name
    for role in AUX_REQUIRED:
        if role not in found:
            name = AUX_NAMES.get(role, ("WHO ATC-DDD <date>.csv",))[0]
            raise InputError(
                f"{name} not found in aux folder {aux}", "Point --aux at a folder with the mapping files"
            )
    if ddi_file is not None:
        if not Path(ddi_file).is_file():
            raise InputError(
                f"DDI file {ddi_file} does not exist",
                "Fix data.ddi_file or unset it to use drug-DDI-TOP40.csv",
            )
        found.pop("ddi_top40", None)
        found["ddi_full"] = Path(ddi_file)
    elif "ddi_top40" in found:
        found.pop("ddi_full", None)
    if "ddi_top40" not in found and "ddi_full" not in found:
        raise InputError(
            f"drug-DDI-TOP40.csv not found in aux folder {aux}",
            "Add it, or set data.ddi_file to a drug-DDI.csv",
        )
    return found


# -- partitions -----------------------------------------------------------------------------------------------
PARTITION_ROWS = 4_000_000  # rows per subject partition in the large group-bys and joins (bounds peak memory)


def by_subject_partition(
    frame: pl.DataFrame, query: Callable[[pl.LazyFrame], pl.LazyFrame], rows: int = PARTITION_ROWS
) -> pl.DataFrame:
    """`query` (a group-by or unique that keeps every subject's rows together) run on partitions of subjects of
    about `rows` rows each, with the streaming engine, concatenated: the same rows as one run on the whole
    frame (in another order), with hash tables of one partition at a time."""
    k = max(1, -(-frame.height // rows))
    if k == 1:
        return query(frame.lazy()).collect(engine="streaming")
    part = pl.col("subject_id").hash() % k  # evaluated batch by batch in each query: no copy of a partition
    return pl.concat([query(frame.lazy().filter(part == i)).collect(engine="streaming") for i in range(k)])
