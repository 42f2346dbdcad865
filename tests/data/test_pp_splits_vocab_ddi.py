"""Patient split and sample, train-only vocabularies with titles, DDI pairs (GAMENet/SafeDrug rule)."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from leadercli.data import ddi as D
from leadercli.data import splits as S
from leadercli.data import vocab as V
from leadercli.data.mimic import MIMIC3, MIMIC4, icd_titles
from leadercli.errors import InputError


# -- splits ---------------------------------------------------------------------------------------------------
def test_split_sizes_disjoint_and_deterministic():
    ids = list(range(1000, 1037))  # 37 patients → 29 / 3 / 5
    a = S.split_patients(ids, (0.8, 0.1, 0.1), "random", seed=7)
    b = S.split_patients(list(reversed(ids)), (0.8, 0.1, 0.1), "random", seed=7)
    assert a.equals(b)  # input order does not matter
    counts = dict(a.group_by("split").len().iter_rows())
    assert counts == {"train": 29, "val": 3, "test": 5}
    assert a["subject_id"].n_unique() == 37 and sorted(a["subject_id"]) == ids
    c = S.split_patients(ids, (0.8, 0.1, 0.1), "random", seed=8)
    assert not a.equals(c)
    assert a.filter(pl.col("split") == "train")["subject_id"].to_list() != ids[:29]  # shuffled


def test_split_sequential_is_the_reference_rule():
    ids = [5, 3, 9, 1, 7, 2, 8, 4, 6, 10]
    df = S.split_patients(ids, (0.8, 0.1, 0.1), "sequential", seed=0)
    assert df["split"].to_list() == ["train"] * 8 + ["val", "test"]  # ascending subject id
    assert S.split_sizes(10, (0.7, 0.1, 0.2)) == (7, 1, 2)  # 0.7·10 is 7.000000000000001 in floating point


def test_sample_fraction_seeded():
    ids = list(range(100))
    a = S.sample_patients(ids, 0.15, seed=42)
    assert len(a) == 15 and a == sorted(a) and set(a) <= set(ids)
    assert a == S.sample_patients(ids, 0.15, seed=42)
    assert a != S.sample_patients(ids, 0.15, seed=43)
    assert S.sample_patients(ids, None, 42) == ids
    assert len(S.sample_patients(ids, 0.001, 42)) == 1


# -- vocab ----------------------------------------------------------------------------------------------------
def test_top_codes_count_training_visits_only():
    events = pl.DataFrame(
        {
            "subject_id": [1, 1, 2, 2, 3, 3, 3],
            "hadm_id": [10, 11, 20, 20, 30, 30, 31],
            "code": ["B", "B", "A", "C", "Z", "Z2", "Z"],
        }
    )
    train = pl.DataFrame({"subject_id": [1, 2]})  # patient 3 is not training: Z, Z2 never counted
    assert V.top_codes(events, train, None) == ["B", "A", "C"]  # B: 2 visits; A, C: 1 (ties by code)
    assert V.top_codes(events, train, 2) == ["B", "A"]


def test_icd_titles_by_code_and_version():
    d4 = pl.DataFrame(
        {
            "icd_code": ["0389", "0389", "I10"],
            "icd_version": [9, 10, 10],
            "long_title": ["sept9", "x10", "htn"],
        }
    )
    t = icd_titles(d4, "diagnoses", MIMIC4)
    cl = V.code_list(["D9:0389", "D10:0389", "D10:I10", "D10:ZZZ"], t)
    assert cl.titles == ["sept9", "x10", "htn", ""]
    d3 = pl.DataFrame(
        {"icd9_code": ["4280"], "short_title": ["CHF NOS"], "long_title": [None]},
        schema_overrides={"long_title": pl.String},
    )
    assert icd_titles(d3, "procedures", MIMIC3).rows() == [("P9:4280", "CHF NOS")]


def test_atc3_names_lowercase(tiny_aux: Path):
    names = V.atc3_names(tiny_aux / "WHO ATC-DDD 2021-12-03.csv")
    assert dict(names.rows())["N02B"] == "other analgesics and antipyretics"
    assert "N" not in set(names["code"])  # level 1 is not an ATC-3 code


def test_profile_values_sorted():
    pats = pl.DataFrame({"gender": ["M", "F", "M"], "age_group": ["90+", "0-17", "unknown"]})
    assert V.profile_values(pats, ("gender", "age_group")) == {
        "gender": ["F", "M"],
        "age_group": ["0-17", "90+", "unknown"],
    }


# -- ddi ------------------------------------------------------------------------------------------------------
def test_cid_atc3_truncates_and_dedupes(tiny_aux: Path):
    df = D.load_cid_atc3(tiny_aux / "drug-atc.csv")
    assert df.rows() == [
        ("CID1", "N02B"),
        ("CID2", "B01A"),
        ("CID3", "C07A"),
        ("CID3", "J01D"),
        ("CID4", "A02B"),
    ]


def test_atc3_pairs_rule(tiny_aux: Path):
    cid = D.load_cid_atc3(tiny_aux / "drug-atc.csv")
    pairs, info = D.load_cid_pairs(tiny_aux / "drug-DDI-TOP40.csv")
    assert info["rule"] == "pairs as listed" and info["cid_pairs"] == 5
    # CID1×CID2 → (B01A, N02B); CID3×CID1 → (C07A, N02B), (J01D, N02B); CID1×CID1 → same class, none;
    # CID4×CID2 → (A02B, B01A); CID2×CID1 repeats the first pair
    assert D.atc3_pairs(pairs, cid).rows() == [
        ("A02B", "B01A"),
        ("B01A", "N02B"),
        ("C07A", "N02B"),
        ("J01D", "N02B"),
    ]
    assert D.atc3_pairs(pairs, cid, ["N02B", "B01A", "C07A"]).rows() == [("B01A", "N02B"), ("C07A", "N02B")]


def test_full_twosides_least_frequent_side_effects(tmp_path: Path, csv_writer):
    header = ["STITCH 1", "STITCH 2", "Polypharmacy Side Effect", "Side Effect Name"]
    rows = [
        ["CID1", "CID2", "C001", "common"],
        ["CID3", "CID4", "C001", "common"],
        ["CID1", "CID4", "C001", "common"],
        ["CID1", "CID3", "C002", "rare"],
        ["CID2", "CID4", "C003", "medium"],
        ["CID2", "CID3", "C003", "medium"],
    ]
    path = csv_writer(tmp_path / "drug-DDI.csv", header, rows)
    pairs, info = D.load_cid_pairs(path, topk=2)  # keep the 2 least frequent: C002 (1 row), C003 (2 rows)
    assert pairs.rows() == [("CID1", "CID3"), ("CID2", "CID3"), ("CID2", "CID4")]
    assert info["side_effects"] == 3 and info["kept_side_effects"] == 2
    pairs1, _ = D.load_cid_pairs(path, topk=1)
    assert pairs1.rows() == [("CID1", "CID3")]


def test_bundled_top40_pairs():
    from leadercli.data.bundled import bundled_aux

    pairs, info = D.load_cid_pairs(bundled_aux() / "drug-DDI-TOP40.csv")
    assert info["cid_pairs"] == 460  # PROVENANCE: 460 unique pairs
    with pytest.raises(InputError, match="drug-atc.csv: column 'stitch 1' is missing"):
        D.load_cid_pairs(bundled_aux() / "drug-atc.csv")
