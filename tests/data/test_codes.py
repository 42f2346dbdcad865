"""The code rule (data/codes.py): one code, columns of raw codes, and the mixed code lists of a prediction input."""

from __future__ import annotations

import typing

import polars as pl
import pytest

from leadercli.data import codes
from leadercli.data.registry import LAYOUTS, get_layout
from leadercli.errors import SettingsError
from leadercli.settings import DataSettings


def test_one_code_round_trip():
    assert codes.prefix_code("diagnoses", 9, " 401.9 ") == "D9:4019"
    assert codes.prefix_code("procedures", "10", "0dtj4zz") == "P10:0DTJ4ZZ"
    assert codes.split_code("D10:I10") == ("diagnoses", 10, "I10")
    assert codes.split_code("P9:3893") == ("procedures", 9, "3893")
    assert codes.split_code("N02B") == ("medications", None, "N02B")


def test_column_form_equals_the_string_form():
    df = pl.DataFrame({"v": [9, 10, 10, None], "c": [" 401.9 ", "i10", ".", "I10"]})
    got = df.select(codes.prefixed("diagnoses", pl.col("v"), pl.col("c")).alias("p"))["p"].to_list()
    assert got == ["D9:4019", "D10:I10", "D10:", None]
    assert got[:2] == [
        codes.prefix_code("diagnoses", 9, " 401.9 "),
        codes.prefix_code("diagnoses", 10, "i10"),
    ]
    usable = df.select(codes.usable(codes.prefixed("diagnoses", pl.col("v"), pl.col("c"))))
    assert usable.to_series().to_list() == [True, True, False, False]  # "D10:" has no code; null is unusable


def test_kind_per_row():
    df = pl.DataFrame(
        {"k": ["diagnoses", "procedures", "atc"], "v": [9, 10, 9], "c": ["4019", "0DTJ4ZZ", "x"]}
    )
    got = df.select(codes.prefixed(pl.col("k"), pl.col("v"), pl.col("c")).alias("p"))["p"].to_list()
    assert got == ["D9:4019", "P10:0DTJ4ZZ", None]


def test_mixed_lists_of_a_prediction_input():
    df = pl.DataFrame(
        {
            "diagnoses": [["401.9", "D9:250"], [], None, ["i10", None], ["x"]],
            "icd_version": [9, 10, 9, 10, None],
        }
    )
    assert df.select(codes.has_raw(pl.col("diagnoses"))).item() is True
    out = codes.prefix_lists(df, "diagnoses", "diagnoses", pl.col("icd_version"))
    assert out.name == "diagnoses"
    # prefixed codes kept, empty and null lists → [], a null code dropped, no version → the raw code dropped
    assert out.to_list() == [["D9:4019", "D9:250"], [], [], ["D10:I10"], []]
    fixed = codes.prefix_lists(df.head(1), "diagnoses", "procedures", pl.lit(9))
    assert fixed.to_list() == [["P9:4019", "D9:250"]]
    done = pl.DataFrame({"diagnoses": [["D9:4019"], []]})
    assert done.select(codes.has_raw(pl.col("diagnoses"))).item() is False


def test_registry_names_every_source_and_nothing_else():
    choices = typing.get_args(DataSettings.model_fields["source"].annotation)
    assert set(LAYOUTS) == set(choices)
    assert all(get_layout(name).name == name for name in choices)
    with pytest.raises(SettingsError, match="'mimic5' is not a known layout"):
        get_layout("mimic5")
