"""Cohort: prefixed codes, visit rule, admit-time order, code-list order, profile and age groups."""

from __future__ import annotations

from datetime import datetime

import polars as pl

from leadercli.data import cohort as C
from leadercli.data.codes import prefix_code, split_code
from leadercli.data.mimic import MIMIC3, MIMIC4, code_events


def test_prefixes_match_artifact_and_never_collide():
    df = pl.DataFrame(
        {
            "subject_id": [1, 1, 1, 1],
            "hadm_id": [5, 5, 5, 5],
            "seq_num": [1, 2, 3, 4],
            "icd_code": ["I10", "0389", " 038.9 ", "i10"],
            "icd_version": [10, 9, 10, 10],
        }
    )
    dx = code_events(df, "diagnoses", MIMIC4)
    assert sorted(dx["code"].to_list()) == [
        "D10:0389",
        "D10:I10",
        "D9:0389",
    ]  # " 038.9 " → 0389; "i10" = "I10"
    px = code_events(df.head(2), "procedures", MIMIC4)
    assert sorted(px["code"].to_list()) == ["P10:I10", "P9:0389"]
    assert set(dx["code"]).isdisjoint(set(px["code"]))
    for code, version in (("I10", 10), ("038.9", 9)):
        assert prefix_code("diagnoses", version, code) in set(dx["code"])
    assert split_code("D10:I10") == ("diagnoses", 10, "I10")


def test_mimic3_codes_are_icd9_and_missing_codes_dropped():
    df = pl.DataFrame(
        {
            "subject_id": [1, 1, 1],
            "hadm_id": [5, None, 5],
            "seq_num": [2, 1, None],
            "icd9_code": ["4019", "4280", None],
        },
        schema_overrides={"hadm_id": pl.Int64, "seq_num": pl.Int64},
    )
    assert code_events(df, "procedures", MIMIC3).select("hadm_id", "code", "seq").rows() == [
        (5, "P9:4019", 2)
    ]


def test_visits_ordered_by_admittime_not_hadm():
    keys = pl.DataFrame({"subject_id": [7, 7, 7, 8], "hadm_id": [300, 100, 200, 50]})
    adm = pl.DataFrame(
        {
            "subject_id": [7, 7, 7, 8, 9],
            "hadm_id": [100, 200, 300, 50, 60],
            "admittime": [
                datetime(2150, 3, 1),
                datetime(2150, 1, 1),
                datetime(2150, 2, 1),
                datetime(2100, 1, 1),
                datetime(2100, 1, 1),
            ],
        }
    )
    out = C.order_visits(keys, adm)
    assert out.select("subject_id", "hadm_id", "visit_no").rows() == [
        (7, 200, 0),
        (7, 300, 1),
        (7, 100, 2),
        (8, 50, 0),
    ]


def test_visit_keys_need_all_three_kinds():
    dx = pl.DataFrame({"subject_id": [1, 1, 2], "hadm_id": [10, 11, 20], "code": ["a", "b", "c"]})
    px = pl.DataFrame({"subject_id": [1, 2], "hadm_id": [10, 20], "code": ["p", "q"]})
    md = pl.DataFrame({"subject_id": [1, 1], "hadm_id": [10, 11], "atc3": ["N02B", "A02B"]})
    assert C.visit_keys(dx, px, md).rows() == [(1, 10)]


def test_code_lists_follow_seq_num_then_code():
    ev = pl.DataFrame(
        {
            "subject_id": [1, 1, 1, 1],
            "hadm_id": [10, 10, 10, 10],
            "code": ["D9:b", "D9:a", "D9:c", "D9:d"],
            "seq": [2, 2, 1, None],
        },
        schema_overrides={"seq": pl.Int64},
    )
    assert C.code_lists(ev, "diagnoses", by_seq=True)["diagnoses"].to_list() == [
        ["D9:c", "D9:a", "D9:b", "D9:d"]
    ]
    assert C.code_lists(ev, "x", by_seq=False)["x"].to_list() == [["D9:a", "D9:b", "D9:c", "D9:d"]]


def _ages3(pairs: list[tuple[datetime, datetime]]) -> list[int]:
    df = pl.DataFrame({"admit": [a for a, _ in pairs], "dob": [d for _, d in pairs]})
    return df.select(C.age_mimic3(pl.col("admit"), pl.col("dob")).alias("a"))["a"].to_list()


def test_age_mimic3_birthday_and_shift():
    ages = _ages3(
        [
            (datetime(2150, 7, 14), datetime(2100, 7, 15)),  # the day before the 50th birthday
            (datetime(2150, 7, 15), datetime(2100, 7, 15)),  # the birthday
            (datetime(2150, 3, 1), datetime(1850, 1, 1)),  # > 89: dob shifted 300 years back
        ]
    )
    assert ages == [49, 50, 300]


def test_age_groups_edges():
    ages = [None, -1, 0, 17, 18, 29, 30, 49, 50, 89, 90, 91, 300]
    df = pl.DataFrame({"age": ages}, schema={"age": pl.Int64})
    got = df.select(C.age_group(pl.col("age")).alias("g"))["g"].to_list()
    assert got == [
        "unknown",
        "unknown",
        "0-17",
        "0-17",
        "18-29",
        "18-29",
        "30-39",
        "40-49",
        "50-59",
        "80-89",
        "90+",
        "90+",
        "90+",
    ]


def test_age_mimic4_anchor():
    df = pl.DataFrame(
        {
            "admit": [datetime(2155, 1, 1), datetime(2150, 1, 1), datetime(2151, 6, 1)],
            "anchor_age": [60, 91, 89],
            "anchor_year": [2150, 2150, 2150],
        }
    )
    ages = df.select(C.age_mimic4(pl.col("admit"), pl.col("anchor_age"), pl.col("anchor_year")).alias("a"))[
        "a"
    ].to_list()
    assert ages == [65, 91, 90]


def test_visit_profile_unknown_fill_and_patient_fields():
    visits = pl.DataFrame(
        {
            "subject_id": [1, 1, 2],
            "hadm_id": [10, 11, 20],
            "admittime": [datetime(2150, 1, 1), datetime(2151, 1, 1), datetime(2150, 1, 1)],
            "visit_no": [0, 1, 0],
        }
    )
    adm = pl.DataFrame(
        {
            "subject_id": [1, 1, 2],
            "hadm_id": [10, 11, 20],
            "admittime": [datetime(2150, 1, 1), datetime(2151, 1, 1), datetime(2150, 1, 1)],
            "insurance": ["Medicare", "Private", None],
            "language": ["", "ENGLISH", "?"],
            "admission_type": ["URGENT", "EW EMER.", "ELECTIVE"],
            "marital_status": [None, "MARRIED", "SINGLE"],
            "race": ["WHITE", "WHITE", "  "],
        }
    )
    pats = pl.DataFrame({"subject_id": [1], "gender": ["F"], "anchor_age": [89], "anchor_year": [2150]})
    out = C.visit_profile(visits, adm, pats, MIMIC4)
    assert out.columns[-7:] == [
        "insurance",
        "language",
        "admission_type",
        "marital_status",
        "race",
        "gender",
        "age_group",
    ]
    assert out.row(0)[4:] == ("Medicare", "unknown", "URGENT", "unknown", "WHITE", "F", "80-89")
    assert out.row(1)[4:] == ("Private", "ENGLISH", "EW EMER.", "MARRIED", "WHITE", "F", "90+")
    assert out.row(2)[4:] == (
        "unknown",
        "?",
        "ELECTIVE",
        "SINGLE",
        "unknown",
        "unknown",
        "unknown",
    )  # no PATIENTS row
