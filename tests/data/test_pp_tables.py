"""Raw table scanning: file lookup, case-insensitive headers, explicit dtypes, and one clear error per problem."""

from __future__ import annotations

import gzip
from pathlib import Path

import polars as pl
import pytest

from leadercli.data import tables as T
from leadercli.data.bundled import bundled_aux, bundled_raw
from leadercli.data.mimic import MIMIC3, MIMIC4
from leadercli.errors import InputError

DX3 = MIMIC3.table_spec("diagnoses")


def test_bundled_sample_data_is_found():
    assert (bundled_raw("mimic3") / "ADMISSIONS.csv").is_file()
    assert (bundled_raw("mimic4") / "hosp" / "admissions.csv.gz").is_file()
    assert (bundled_aux() / "drug-atc.csv").is_file()


def test_locate_raw_mimic4_root_or_hosp():
    root = bundled_raw("mimic4")
    a = MIMIC4.locate(root)
    b = MIMIC4.locate(root / "hosp")
    assert a == b
    assert a["prescriptions"].name == "prescriptions.csv.gz"


def test_file_names_any_case_and_gzip(tmp_path: Path, csv_writer):
    csv_writer(
        tmp_path / "Diagnoses_Icd.CSV.GZ",
        ["SUBJECT_ID", "HADM_ID", "SEQ_NUM", "ICD9_CODE"],
        [[1, 2, 1, "0389"]],
        gz=True,
    )
    path = T.find_file([tmp_path], DX3.stems, "diagnoses")
    assert path is not None and path.name == "Diagnoses_Icd.CSV.GZ"
    df = T.collect(T.scan_table(path, DX3))
    assert df.columns == ["subject_id", "hadm_id", "seq_num", "icd9_code"]
    assert df.row(0) == (1, 2, 1, "0389")  # leading zero kept, ids are Int64
    assert df.schema["hadm_id"] == pl.Int64


def test_optional_column_absent_is_null(tmp_path: Path, csv_writer):
    path = csv_writer(
        tmp_path / "DIAGNOSES_ICD.csv", ["subject_id", "hadm_id", "icd9_code"], [[1, 2, "V3000"]]
    )
    df = T.collect(T.scan_table(path, DX3))
    assert df["seq_num"].to_list() == [None]
    assert df["icd9_code"].to_list() == ["V3000"]


def test_missing_column(tmp_path: Path, csv_writer):
    path = csv_writer(tmp_path / "DIAGNOSES_ICD.csv", ["subject_id", "hadm_id", "seq_num"], [[1, 2, 1]])
    with pytest.raises(InputError, match=r"DIAGNOSES_ICD.csv: column 'icd9_code' is missing"):
        T.scan_table(path, DX3)


def test_empty_file_and_header_only(tmp_path: Path, csv_writer):
    empty = tmp_path / "DIAGNOSES_ICD.csv"
    empty.write_text("")
    with pytest.raises(InputError, match=r"DIAGNOSES_ICD.csv is empty"):
        T.scan_table(empty, DX3)
    header_only = csv_writer(tmp_path / "x" / "DIAGNOSES_ICD.csv", ["subject_id", "hadm_id", "icd9_code"], [])
    with pytest.raises(InputError, match=r"DIAGNOSES_ICD.csv has no data rows"):
        T.collect(T.scan_table(header_only, DX3))


def test_wrong_type_names_the_column(tmp_path: Path, csv_writer):
    path = csv_writer(
        tmp_path / "DIAGNOSES_ICD.csv",
        ["SUBJECT_ID", "HADM_ID", "ICD9_CODE"],
        [[1, 2, "4019"], [1, "12x", "4019"]],
    )
    with pytest.raises(InputError) as err:
        T.collect(T.scan_table(path, DX3))
    assert "DIAGNOSES_ICD.csv: column 'hadm_id' has values that are not whole numbers" in err.value.message
    assert "12x" not in err.value.one_line()  # never quote cell values


def test_bad_dates(tmp_path: Path, csv_writer):
    spec = MIMIC3.table_spec("patients")
    path = csv_writer(
        tmp_path / "PATIENTS.csv",
        ["subject_id", "gender", "dob"],
        [[1, "F", "2100-01-01 00:00:00"], [2, "M", "soon"]],
    )
    scan = T.scan_table(path, spec)
    with pytest.raises(InputError, match=r"PATIENTS.csv: column 'dob' has 1 values that are not dates"):
        T.parse_datetimes(T.collect(scan), "dob", scan)
    ok = T.parse_datetimes(T.collect(scan).head(1), "dob", scan)
    assert ok.schema["dob"] == pl.Datetime("us")


def test_corrupt_and_fake_gzip(tmp_path: Path):
    data = b"subject_id,hadm_id,icd9_code\n" + b"".join(b"%d,%d,4019\n" % (i, i) for i in range(20000))
    truncated = tmp_path / "DIAGNOSES_ICD.csv.gz"
    truncated.write_bytes(gzip.compress(data)[:3000])
    with pytest.raises(InputError, match=r"DIAGNOSES_ICD.csv.gz cannot be read"):
        T.collect(T.scan_table(truncated, DX3))
    fake = tmp_path / "f" / "DIAGNOSES_ICD.csv.gz"
    fake.parent.mkdir()
    fake.write_bytes(data)
    with pytest.raises(InputError, match=r"DIAGNOSES_ICD.csv.gz is not a gzip file"):
        T.scan_table(fake, DX3)


def test_missing_table_and_folder(tmp_path: Path):
    with pytest.raises(InputError, match=r"does not exist"):
        MIMIC3.locate(tmp_path / "nope")
    with pytest.raises(InputError, match=r"ADMISSIONS.csv\[.gz\] not found"):
        MIMIC3.locate(tmp_path)


def test_locate_aux_names_and_ddi_choice(tmp_path: Path, tiny_aux: Path):
    found = T.locate_aux(tiny_aux)
    assert found["ddi_top40"].name == "drug-DDI-TOP40.csv" and "ddi_full" not in found
    assert found["who_atc"].name.startswith("WHO ATC-DDD")
    full = tmp_path / "drug-DDI.csv"
    full.write_text("STITCH 1,STITCH 2,Polypharmacy Side Effect,Side Effect Name\n")
    chosen = T.locate_aux(tiny_aux, ddi_file=full)
    assert chosen["ddi_full"] == full and "ddi_top40" not in chosen
    (tiny_aux / "drug-atc.csv").unlink()
    with pytest.raises(InputError, match=r"drug-atc.csv not found in aux folder"):
        T.locate_aux(tiny_aux)
