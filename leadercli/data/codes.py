"""The code rule: a diagnosis or procedure code carries its kind and ICD version (DESIGN §3).

`D9:4019`, `D10:I10`, `P9:3893`, `P10:0DTJ4ZZ`: the letter is the kind (D diagnoses, P procedures), the number
the ICD version, then the raw code cleaned (blanks at either end and dots removed, upper case: `401.9` →
`4019`, `i10` → `I10`). So ICD-9 and ICD-10 codes, and a diagnosis and a procedure with the same string,
never share an id (the reference's unified vocabulary lets them collide, leader-reference.md §7.8). A code
whose cleaned part is empty is not usable. Medications are bare ATC-3 codes (`N02B`) and carry no prefix.

This module is the rule's one home, in the three forms its callers need:

- one code string: `prefix_code`, `split_code`;
- polars expressions over a column of raw codes (the MIMIC tables, MEDS events): `clean_code`, `prefixed`,
  `usable`;
- list columns that may mix raw and prefixed codes (a prediction input): `is_prefixed`, `has_raw`,
  `prefix_lists`.
"""

from __future__ import annotations

import polars as pl

LETTERS = {"diagnoses": "D", "procedures": "P"}  # kind → the letter of its prefix
PREFIX = r"^[DP]\d+:"  # a code that already carries kind and version


# -- one code -------------------------------------------------------------------------------------------------
def prefix_code(kind: str, version: int | str, code: str) -> str:
    """`prefix_code("diagnoses", 9, "401.9") == "D9:4019"`; procedures use P."""
    return f"{LETTERS[kind]}{int(version)}:{code.strip().replace('.', '').upper()}"


def split_code(code: str) -> tuple[str, int | None, str]:
    """Inverse of `prefix_code`: `("diagnoses", 9, "4019")`; a medication → `("medications", None, code)`."""
    if len(code) > 2 and code[0] in "DP" and ":" in code:
        head, raw = code.split(":", 1)
        return ("diagnoses" if head[0] == "D" else "procedures", int(head[1:]), raw)
    return ("medications", None, code)


# -- columns of raw codes -------------------------------------------------------------------------------------
def clean_code(code: pl.Expr) -> pl.Expr:
    """The code part of the rule: blanks at either end and dots removed, upper case."""
    return code.str.strip_chars().str.replace_all(".", "", literal=True).str.to_uppercase()


def prefixed(kind: str | pl.Expr, version: pl.Expr, code: pl.Expr) -> pl.Expr:
    """Vectorised `prefix_code`. `kind` is one kind for the whole column, or an expression whose values are
    kinds (a row of another kind gets null); a null version or code gives null."""
    if isinstance(kind, str):
        letter = pl.lit(LETTERS[kind])
    else:
        letter = kind.replace_strict(LETTERS, default=None, return_dtype=pl.String)
    return pl.format("{}{}:{}", letter, version.cast(pl.Int64), clean_code(code))


def usable(code: pl.Expr) -> pl.Expr:
    """A prefixed code (`prefixed`'s result) that is not null and has a code after the colon."""
    return code.is_not_null() & code.str.contains(r":.+$")


# -- code lists of a prediction input -------------------------------------------------------------------------
def is_prefixed(code: pl.Expr) -> pl.Expr:
    """The code already carries kind and version (`D9:…`, `P10:…`)."""
    return code.str.contains(PREFIX)


def has_raw(lists: pl.Expr) -> pl.Expr:
    """One boolean over a list column: some code in it is raw (not prefixed)."""
    return lists.list.eval(~is_prefixed(pl.element())).list.any().any()


def prefix_lists(df: pl.DataFrame, column: str, kind: str, version: pl.Expr) -> pl.Series:
    """The list column `column` of `df` with each raw code prefixed with `kind` and the row's `version` (an
    expression over `df`, e.g. `pl.col("icd_version")`); prefixed codes are kept as they are, an empty list
    stays empty, and a code of a row whose version is null is dropped."""
    rows = df.select(pl.col(column).alias("c"), version.alias("v")).with_row_index("i")
    codes = rows.explode("c", empty_as_null=True).with_columns(  # an empty list keeps its row
        pl.when(is_prefixed(pl.col("c")))
        .then(pl.col("c"))
        .otherwise(prefixed(kind, pl.col("v"), pl.col("c")))
    )
    return codes.group_by("i", maintain_order=True).agg(pl.col("c").drop_nulls())["c"].alias(column)
