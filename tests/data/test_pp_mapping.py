"""NDC → ATC-3: normalisation, both routes, coverage counted by hand (fixture table in conftest.py)."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from leadercli.data import mapping as M
from leadercli.data.mimic import MIMIC3
from leadercli.errors import InputError


def _norm(values: list[str | None]) -> list[str | None]:
    return (
        pl.DataFrame({"x": values}, schema={"x": pl.String})
        .select(M.normalise_ndc(pl.col("x")).alias("x"))["x"]
        .to_list()
    )


def test_normalise_ndc():
    assert _norm(
        ["0002-1407-01", "1-2-3", "00006494300", " 12345678 ", "0", "", "00000000000", None, "N/A"]
    ) == [
        "00002140701",  # 4-4-2 → 5-4-2
        "00001000203",
        "00006494300",
        "00012345678",  # lost leading zeros restored
        None,
        None,
        None,
        None,
        "N/A",  # not an NDC: kept, never maps
    ]


def test_dict_literal_parsed_safely(tmp_path: Path, tiny_aux: Path):
    df = M.load_ndc_rxcui(tiny_aux / "ndc2rxnorm_mapping.txt")
    assert sorted(df.rows()) == [
        ("00000000011", "100"),
        ("00000000022", "200"),
        ("00000000044", "400"),
    ]  # '' dropped
    evil = tmp_path / "ndc2rxnorm_mapping.txt"
    evil.write_text("__import__('os').system('echo hacked')")
    with pytest.raises(InputError, match="not a Python dict literal"):
        M.load_ndc_rxcui(evil)


def test_routes_first_atc_and_direct(tiny_aux: Path):
    routes = M.route_maps(
        M.load_ndc_rxcui(tiny_aux / "ndc2rxnorm_mapping.txt"),
        M.load_ndc_atc_table(tiny_aux / "ndc2atc_level4.csv"),
    )
    assert routes["rxnorm"].rows() == [("00000000011", "N02B"), ("00000000022", "B01A")]
    assert routes["direct"].rows() == [
        ("00000000011", "N02B"),  # first row of that NDC (A02BC comes later)
        ("00000000022", "B01A"),
        ("00000000044", "J01D"),
        ("00001000203", "C07A"),
    ]
    combined = M.combined_map(routes)
    assert combined.rows() == [
        ("00000000011", "N02B", "rxnorm"),
        ("00000000022", "B01A", "rxnorm"),
        ("00000000044", "J01D", "direct"),
        ("00001000203", "C07A", "direct"),
    ]


def test_map_medications_coverage(tiny_aux: Path):
    ndc_map = M.load_ndc_map(tiny_aux / "ndc2rxnorm_mapping.txt", tiny_aux / "ndc2atc_level4.csv")
    rx = pl.DataFrame(
        {
            "subject_id": [1, 1, 1, 1, 2, 2, 2, 2],
            "hadm_id": [10, 10, 10, 10, 20, 20, 20, 20],
            "ndc": [
                "00000000011",
                "00000000044",
                "0",
                None,
                "00000000011",
                "1-2-3",
                "00000000033",
                "99999999999",
            ],
            "n": [3, 2, 4, 1, 1, 1, 1, 1],
        }
    )
    meds, cov = M.map_medications(rx, ndc_map)
    # rows: 14; without NDC: 4 + 1 = 5; with NDC: 9; mapped: 3 + 2 + 1 + 1 = 7 of 9
    assert cov["rows"] == 14 and cov["rows_without_ndc"] == 5 and cov["rows_with_ndc"] == 9
    assert cov["rows_mapped"] == 7 and cov["row_coverage"] == pytest.approx(7 / 9, abs=1e-6)
    # distinct NDCs: …011, …044, 00001000203, …033, 999… = 5, mapped 3
    assert cov["ndcs"] == 5 and cov["ndcs_mapped"] == 3 and cov["ndc_coverage"] == pytest.approx(0.6)
    assert cov["routes"]["rxnorm"] == {
        "rows": 4,
        "ndcs": 1,
        "row_coverage": pytest.approx(4 / 9, abs=1e-6),
        "ndc_coverage": 0.2,
    }
    assert cov["routes"]["direct"] == {
        "rows": 3,
        "ndcs": 2,
        "row_coverage": pytest.approx(3 / 9, abs=1e-6),
        "ndc_coverage": 0.4,
    }
    assert sorted(meds.rows()) == [(1, 10, "J01D"), (1, 10, "N02B"), (2, 20, "C07A"), (2, 20, "N02B")]


def test_bundled_demo_route_one_matches_provenance():
    """PROVENANCE: the reference route maps 6789 of the MIMIC-III demo's prescription rows (715 NDCs)."""
    from leadercli.data import tables as T
    from leadercli.data.bundled import bundled_aux, bundled_raw

    aux = T.locate_aux(bundled_aux())
    files = MIMIC3.locate(bundled_raw("mimic3"))
    scan = T.scan_table(files["prescriptions"], MIMIC3.table_spec("prescriptions"))
    rx = T.collect(scan, lambda lf: lf.group_by(["subject_id", "hadm_id", "ndc"]).agg(pl.len().alias("n")))
    _, cov = M.map_medications(rx, M.load_ndc_map(aux["ndc_rxcui"], aux["ndc_atc"]))
    assert cov["rows"] == 10398 and cov["rows_without_ndc"] == 1478  # 1477 "0" + 1 empty
    assert cov["ndcs"] == 995
    assert (cov["routes"]["rxnorm"]["rows"], cov["routes"]["rxnorm"]["ndcs"]) == (6789, 715)
    assert cov["row_coverage"] >= 0.80
