"""Drug-drug interactions as unordered ATC-3 pairs (reference §1.10, GAMENet/SafeDrug `get_ddi_matrix`).

- `drug-atc.csv` (no header; each row `CID, ATC, ATC, …`): every ATC code truncated to 4 characters gives
  the ATC-3 classes of a STITCH compound id.
- The pair list: `drug-DDI-TOP40.csv` (the STITCH pairs GAMENet/SafeDrug keep) by default. With a full
  TWOSIDES-style `drug-DDI.csv` (columns `STITCH 1, STITCH 2, Polypharmacy Side Effect, Side Effect Name`,
  set `data.ddi_file` or put it in the aux folder) the rule is applied here: count rows per side effect, keep
  the `topk` (40) *least* frequent side effects (ties: by side-effect id) and the pairs that have them. A pair
  file without side-effect columns is used as it is.
- Every ATC-3 of compound 1 × every ATC-3 of compound 2 is an interacting pair when the two classes differ;
  pairs are unordered (`atc3_a < atc3_b`), distinct, and restricted to the medication vocabulary (the label
  space), as the reference's M×M matrix is.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from leadercli.data.tables import Column, TableSpec, collect, scan_table
from leadercli.errors import InputError

PAIR_SPEC = TableSpec(
    "ddi",
    ("drug-DDI",),
    (
        Column("stitch 1"),
        Column("stitch 2"),
        Column("polypharmacy side effect", required=False),
        Column("side effect name", required=False),
    ),
)


def load_cid_atc3(path: Path) -> pl.DataFrame:
    """drug-atc.csv → unique (cid, atc3)."""
    lines = pl.scan_csv(
        path, has_header=False, separator="\x1f", quote_char=None, infer_schema=False, new_columns=["line"]
    )
    try:
        df = lines.collect()
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise InputError(
            f"{path.name} cannot be read ({type(exc).__name__})", "Use GAMENet's drug-atc.csv"
        ) from None
    parts = pl.col("line").str.split(",")
    out = (
        df.select(parts.list.first().str.strip_chars().alias("cid"), parts.list.slice(1).alias("atc"))
        .explode("atc")
        .with_columns(pl.col("atc").str.strip_chars().str.to_uppercase().str.slice(0, 4).alias("atc3"))
        .filter(pl.col("cid").is_not_null() & (pl.col("atc3").str.len_chars() == 4))
        .select("cid", "atc3")
        .unique()
        .sort("cid", "atc3")
    )
    if out.height == 0:
        raise InputError(
            f"{path.name} has no CID → ATC rows", "Use GAMENet's drug-atc.csv (no header, CID,ATC,…)"
        )
    return out


def load_cid_pairs(path: Path, topk: int = 40) -> tuple[pl.DataFrame, dict]:
    """STITCH pairs (cid_a, cid_b) and a description of the rule applied."""
    scan = scan_table(path, PAIR_SPEC)
    effect = scan.names["polypharmacy side effect"]
    df = collect(scan)
    info: dict = {"file": path.name, "rows": df.height}
    if effect is not None:
        keys = ["polypharmacy side effect", "side effect name"]
        df = df.filter(
            pl.col(keys[0]).is_not_null()
        )  # like pandas' groupby, rows without a side effect drop out
        counts = df.group_by(keys).agg(pl.len().alias("n")).sort(["n", *keys], nulls_last=True)
        kept = counts.head(topk)
        df = df.join(kept.select(keys[0]), on=keys[0], how="semi")
        info |= {
            "rule": f"{topk} least frequent side effects",
            "side_effects": counts.height,
            "kept_side_effects": kept.height,
        }
    else:
        info |= {"rule": "pairs as listed"}
    pairs = (
        df.select(pl.col("stitch 1").alias("cid_a"), pl.col("stitch 2").alias("cid_b"))
        .drop_nulls()
        .unique()
        .sort("cid_a", "cid_b")
    )
    info["cid_pairs"] = pairs.height
    return pairs, info


def atc3_pairs(
    pairs: pl.DataFrame, cid_atc3: pl.DataFrame, medications: list[str] | None = None
) -> pl.DataFrame:
    """CID pairs → unordered distinct ATC-3 pairs (atc3_a < atc3_b), optionally within `medications`."""
    cid = cid_atc3
    if medications is not None:
        cid = cid.filter(pl.col("atc3").is_in(medications))
    left = cid.rename({"cid": "cid_a", "atc3": "x"})
    right = cid.rename({"cid": "cid_b", "atc3": "y"})
    out = (
        pairs.join(left, on="cid_a", how="inner")
        .join(right, on="cid_b", how="inner")
        .filter(pl.col("x") != pl.col("y"))
        .select(
            pl.min_horizontal("x", "y").alias("atc3_a"),
            pl.max_horizontal("x", "y").alias("atc3_b"),
        )
        .unique()
        .sort("atc3_a", "atc3_b")
    )
    return out
