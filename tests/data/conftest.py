"""Fixtures for the preprocess tests: a tiny hand-made MIMIC-III-layout raw folder and aux folder whose right
answers are counted by hand in the tests, and helpers to run `leader preprocess` in-process.

The tiny cohort (see test_pp_preprocess.py for the expected numbers):

| subject | hadm | admittime  | dx (seq: code)        | px             | prescriptions (NDC)           |
|---|---|---|---|---|---|
| 1 | 10 | 2150-06-01 | 1:4019 2:25000        | 3893           | …011, …022                    |
| 1 | 20 | 2150-05-01 | 2:4019 1:0389         | 3893, 9904     | …011, 0                       |
| 2 | 30 | 2150-03-01 | 1:4019                | 3893           | …044, …011                    |
| 3 | 40 | 2150-02-01 | 1:V5861               | (none)         | …011                          |
| 3 | 41 | 2150-02-15 | 1:4280                | 0014           | …022, 00001000203             |
| 4 | 50 | 2150-01-10 | 1:4019 2:9999         | 3893           | …011, …033 (unmapped)         |
| 5 | 60 | 2150-01-01 | 1:4019 2:5849         | 3893           | …011, "" (empty)              |

NDC routes: …011 → RXCUI 100 → N02BE (first ATC of RXCUI 100; a later row says A02BC), …022 → 200 → B01AC;
…044 → RXCUI 400 (absent from the ATC table) → direct route J01DD; 00001000203 = dashed "1-2-3" → direct
C07AB; …033 has an empty RXCUI and no table row → unmapped.
"""

from __future__ import annotations

import csv
import gzip
import os
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from leadercli.data.bundled import bundled_aux, bundled_raw


def write_csv(path: Path, header: list[str], rows: list[list], gz: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    opener = gzip.open if gz else open
    with opener(path, "wt", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)
    return path


def n(ndc: str) -> str:
    return ndc.rjust(11, "0")


def make_tiny_raw(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    write_csv(
        root / "PATIENTS.csv",
        ["row_id", "subject_id", "gender", "dob"],
        [
            [1, 1, "M", "2100-07-15 00:00:00"],
            [2, 2, "F", "1850-01-01 00:00:00"],  # > 89: dob shifted 300 years
            [3, 3, "F", "2140-01-01 00:00:00"],
            [4, 4, "M", "2080-01-01 00:00:00"],
            [5, 5, "", "2120-01-01 00:00:00"],
        ],
    )
    write_csv(
        root / "ADMISSIONS.csv",
        [
            "row_id",
            "subject_id",
            "hadm_id",
            "admittime",
            "insurance",
            "language",
            "religion",
            "marital_status",
            "ethnicity",
        ],
        [
            [1, 1, 10, "2150-06-01 10:00:00", "Medicare", "ENGL", "CATHOLIC", "MARRIED", "WHITE"],
            [2, 1, 20, "2150-05-01 10:00:00", "Private", "", "CATHOLIC", "MARRIED", "WHITE"],
            [3, 2, 30, "2150-03-01 08:00:00", "Medicare", "ENGL", "", "WIDOWED", "BLACK"],
            [4, 3, 40, "2150-02-01 08:00:00", "Medicaid", "SPAN", "JEWISH", "SINGLE", "WHITE"],
            [5, 3, 41, "2150-02-15 08:00:00", "Private", "ENGL", "JEWISH", "SINGLE", "WHITE"],
            [6, 4, 50, "2150-01-10 08:00:00", "Medicare", "ENGL", "CATHOLIC", "MARRIED", "ASIAN"],
            [7, 5, 60, "2150-01-01 08:00:00", "Self Pay", "ENGL", "CATHOLIC", "SINGLE", "WHITE"],
        ],
    )
    write_csv(
        root / "DIAGNOSES_ICD.csv",
        ["row_id", "subject_id", "hadm_id", "seq_num", "icd9_code"],
        [
            [1, 1, 10, 1, "4019"],
            [2, 1, 10, 2, "25000"],
            [3, 1, 20, 2, "4019"],
            [4, 1, 20, 1, "0389"],
            [5, 2, 30, 1, "4019"],
            [6, 3, 40, 1, "V5861"],
            [7, 3, 41, 1, "4280"],
            [8, 4, 50, 1, "4019"],
            [9, 4, 50, 2, "9999"],
            [10, 5, 60, 1, "4019"],
            [11, 5, 60, 2, "5849"],
        ],
    )
    write_csv(
        root / "PROCEDURES_ICD.csv",
        ["row_id", "subject_id", "hadm_id", "seq_num", "icd9_code"],
        [
            [1, 1, 10, 1, "3893"],
            [2, 1, 20, 1, "3893"],
            [3, 1, 20, 2, "9904"],
            [4, 2, 30, 1, "3893"],
            [5, 3, 41, 1, "0014"],
            [6, 4, 50, 1, "3893"],
            [7, 5, 60, 1, "3893"],
        ],
    )
    write_csv(
        root / "PRESCRIPTIONS.csv",
        ["row_id", "subject_id", "hadm_id", "drug", "ndc"],
        [
            [1, 1, 10, "a", n("11")],
            [2, 1, 10, "b", n("22")],
            [3, 1, 20, "a", n("11")],
            [4, 1, 20, "z", "0"],
            [5, 2, 30, "d", n("44")],
            [6, 2, 30, "a", n("11")],
            [7, 3, 40, "a", n("11")],
            [8, 3, 41, "b", n("22")],
            [9, 3, 41, "c", "00001000203"],
            [10, 4, 50, "a", n("11")],
            [11, 4, 50, "u", n("33")],
            [12, 5, 60, "a", n("11")],
            [13, 5, 60, "e", ""],
        ],
    )
    write_csv(
        root / "D_ICD_DIAGNOSES.csv",
        ["row_id", "icd9_code", "short_title", "long_title"],
        [
            [1, "4019", "Hypertension NOS", "Unspecified essential hypertension"],
            [2, "0389", "Septicemia NOS", "Unspecified septicemia"],
            [3, "25000", "DMII wo cmp nt st uncntr", "Diabetes mellitus without mention of complication"],
            [4, "4280", "CHF NOS", ""],  # long title missing → short title
        ],
    )
    write_csv(
        root / "D_ICD_PROCEDURES.csv",
        ["row_id", "icd9_code", "short_title", "long_title"],
        [[1, "3893", "Venous cath NEC", "Venous catheterization, not elsewhere classified"]],
    )
    return root


def make_tiny_aux(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "ndc2rxnorm_mapping.txt").write_text(
        "{'"
        + n("11")
        + "': u'100', '"
        + n("22")
        + "': u'200', '"
        + n("33")
        + "': u'', '"
        + n("44")
        + "': u'400'}"
    )
    write_csv(
        root / "ndc2atc_level4.csv",
        ["YEAR", "MONTH", "NDC", "RXCUI", "ATC4"],
        [
            [2014, "01", "0000-0000-11", 100, "N02BE"],
            [2014, "02", "0000-0000-11", 100, "A02BC"],  # second ATC of RXCUI 100: ignored by route 1
            [2014, "01", "0000-0000-22", 200, "B01AC"],
            [2014, "01", "1-2-3", 300, "C07AB"],  # dashed → 00001000203
            [2014, "01", "0000-0000-44", 999, "J01DD"],
        ],
    )
    (root / "drug-atc.csv").write_text(
        "CID1,N02BE01,N02BA01\nCID2,B01AC06\nCID3,C07AB02,J01DD04\nCID4,A02BC01\n"
    )
    write_csv(
        root / "drug-DDI-TOP40.csv",
        ["STITCH 1", "STITCH 2"],
        [["CID1", "CID2"], ["CID3", "CID1"], ["CID1", "CID1"], ["CID4", "CID2"], ["CID2", "CID1"]],
    )
    write_csv(
        root / "WHO ATC-DDD 2021-12-03.csv",
        ["atc_code", "atc_name", "ddd", "uom", "adm_r", "note"],
        [
            ["N", "NERVOUS SYSTEM", "NA", "NA", "NA", "NA"],
            ["N02B", "OTHER ANALGESICS AND ANTIPYRETICS", "NA", "NA", "NA", "NA"],
            ["B01A", "ANTITHROMBOTIC AGENTS", "NA", "NA", "NA", "NA"],
            ["C07A", "BETA BLOCKING AGENTS", "NA", "NA", "NA", "NA"],
        ],
    )
    return root


TINY_TOML = """
[data]
split = "sequential"
split_ratios = [0.6, 0.2, 0.2]
top_medications = 3
"""


@pytest.fixture
def tiny_raw(tmp_path: Path) -> Path:
    return make_tiny_raw(tmp_path / "raw")


@pytest.fixture
def tiny_aux(tmp_path: Path) -> Path:
    return make_tiny_aux(tmp_path / "aux")


@pytest.fixture
def tiny_config(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.toml"
    path.write_text(TINY_TOML)
    return path


@pytest.fixture
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run in tmp_path with no LEADER_* variables, so no stray ./leader.toml or environment changes settings."""
    monkeypatch.chdir(tmp_path)
    for key in list(os.environ):
        if key.startswith("LEADER_"):
            monkeypatch.delenv(key)
    return tmp_path


@pytest.fixture(scope="session")
def mimic3_upper_gz(tmp_path_factory) -> Path:
    """The bundled MIMIC-III demo as full MIMIC-III v1.4 ships: UPPER-CASE headers, `.csv.gz`."""
    src = bundled_raw("mimic3")
    dst = tmp_path_factory.mktemp("mimic3-upper-gz")
    for path in sorted(src.glob("*.csv")):
        lines = path.read_bytes().split(b"\n", 1)
        body = lines[0].upper() + b"\n" + (lines[1] if len(lines) > 1 else b"")
        with gzip.open(dst / (path.name + ".gz"), "wb") as fh:
            fh.write(body)
    return dst


@pytest.fixture
def aux_copy(tmp_path: Path) -> Path:
    dst = tmp_path / "aux-copy"
    shutil.copytree(bundled_aux(), dst)
    return dst


def _run_cli(*args: str):
    from leadercli.cli.main import app

    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture
def cli():
    """`cli("preprocess", "--out", path)` runs `leader` in-process; returns the click Result."""
    return _run_cli


@pytest.fixture
def csv_writer():
    return write_csv
