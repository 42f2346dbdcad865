"""`leader preprocess` end to end: the tiny hand-made cohort (conftest.py) counted by hand, the bundled demos,
the MIMIC-III demo as full MIMIC-III ships (UPPER-CASE headers, gzip), byte-identical reruns, bad inputs."""

from __future__ import annotations

import gzip
import json
from datetime import datetime
from pathlib import Path

import polars as pl
import pytest

from leadercli.data.artifact import Artifact
from leadercli.data.mimic import MIMIC3

pytestmark = pytest.mark.usefixtures("isolated")

PARQUETS = ("visits.parquet", "patients.parquet", "ddi.parquet")


def _ok(result) -> None:
    assert result.exit_code == 0, result.stderr + result.stdout


def _tiny(cli, tiny_raw: Path, tiny_aux: Path, config: Path, out: Path, *extra: str):
    return cli(
        "preprocess", "--raw", tiny_raw, "--aux", tiny_aux, "--out", out, "--config", config, "-q", *extra
    )


# -- the tiny cohort ------------------------------------------------------------------------------------------
def test_tiny_cohort_by_hand(cli, tiny_raw, tiny_aux, tiny_config, tmp_path):
    out = tmp_path / "art"
    res = _tiny(cli, tiny_raw, tiny_aux, tiny_config, out)
    _ok(res)
    assert "patients" in res.stdout and res.stderr == ""  # summary on stdout, nothing on stderr with -q
    art = Artifact(out)
    m = art.manifest
    v = art.visits()
    # hadm 40 has no procedure → 6 visits of 5 patients; subject 1: hadm 20 (May) before hadm 10 (June)
    assert v.select("subject_id", "hadm_id", "visit_no").rows() == [
        (1, 20, 0),
        (1, 10, 1),
        (2, 30, 0),
        (3, 41, 0),
        (4, 50, 0),
        (5, 60, 0),
    ]
    assert v.schema["admittime"] == pl.Datetime("us") and v.schema["visit_no"] == pl.Int32
    assert v["admittime"][0] == datetime(2150, 5, 1, 10)
    rows = {r["hadm_id"]: r for r in v.iter_rows(named=True)}
    assert rows[20]["diagnoses"] == ["D9:0389", "D9:4019"]  # by seq_num
    assert rows[20]["procedures"] == ["P9:3893", "P9:9904"]
    assert rows[10]["medications"] == ["B01A", "N02B"]
    assert rows[30]["medications"] == ["N02B"]  # J01D is outside the top-3 training drugs
    assert rows[41]["medications"] == ["B01A", "C07A"]  # C07A only through the dashed direct route
    assert rows[50]["diagnoses"] == ["D9:4019"]  # 9999 never seen in training (val patient)
    assert rows[60]["diagnoses"] == ["D9:4019"]  # 5849 likewise (test patient)
    assert v.columns[7:] == list(MIMIC3.profile_fields())

    p = art.patients()
    assert p.select("subject_id", "split", "n_visits").rows() == [
        (1, "train", 2),
        (2, "train", 1),
        (3, "train", 1),
        (4, "val", 1),
        (5, "test", 1),
    ]
    prof = {r["subject_id"]: r for r in p.iter_rows(named=True)}
    assert (prof[1]["insurance"], prof[1]["language"], prof[1]["age_group"]) == (
        "Private",
        "unknown",
        "40-49",
    )
    assert (prof[2]["religion"], prof[2]["age_group"]) == ("unknown", "90+")  # dob shifted 300 years
    assert (prof[3]["insurance"], prof[3]["language"], prof[3]["age_group"]) == (
        "Private",
        "ENGL",
        "0-17",
    )  # hadm 41
    assert (prof[4]["age_group"], prof[5]["gender"], prof[5]["age_group"]) == ("70-79", "unknown", "30-39")

    voc = art.vocab
    assert voc.diagnoses.codes == ["D9:4019", "D9:0389", "D9:25000", "D9:4280"]  # training visits: 3, 1, 1, 1
    assert voc.diagnoses.titles == [
        "Unspecified essential hypertension",
        "Unspecified septicemia",
        "Diabetes mellitus without mention of complication",
        "CHF NOS",
    ]
    assert voc.procedures.codes == ["P9:3893", "P9:0014", "P9:9904"]
    assert voc.procedures.titles == ["Venous catheterization, not elsewhere classified", "", ""]
    assert voc.medications.codes == ["N02B", "B01A", "C07A"]  # 3, 2, 1 (J01D: 1, loses the tie on code)
    assert voc.medications.titles == [
        "other analgesics and antipyretics",
        "antithrombotic agents",
        "beta blocking agents",
    ]
    assert voc.profile["insurance"] == ["Medicare", "Private"]  # training patients only
    assert voc.profile["age_group"] == ["0-17", "40-49", "90+"]
    assert art.ddi_pairs() == [("B01A", "N02B"), ("C07A", "N02B")]

    cov = m["ndc_mapping"]
    assert (cov["rows"], cov["rows_without_ndc"], cov["rows_mapped"]) == (13, 2, 10)
    assert cov["row_coverage"] == pytest.approx(10 / 11, abs=1e-6) and cov["ndc_coverage"] == pytest.approx(
        0.8
    )
    assert (cov["routes"]["rxnorm"]["rows"], cov["routes"]["rxnorm"]["ndcs"]) == (8, 2)
    assert (cov["routes"]["direct"]["rows"], cov["routes"]["direct"]["ndcs"]) == (2, 2)
    steps = {s["step"]: (s["visits"], s["patients"], s["multi_visit_patients"]) for s in m["cohort_steps"]}
    assert steps["dx_px_drug"] == (6, 5, 1) and steps["vocab_filter"] == (6, 5, 1)
    assert m["vocab_filter_removed_codes"]["diagnoses"] == {"train": 0, "val": 1, "test": 1}
    assert m["vocab_filter_removed_codes"]["medications"] == {"train": 1, "val": 0, "test": 0}
    assert (m["patients"], m["visits"], m["single_visit_patients"], m["multi_visit_patients"]) == (5, 6, 4, 1)
    assert m["splits"] == {"train": 3, "val": 1, "test": 1}
    assert m["split_visits"] == {"train": 4, "val": 1, "test": 1}
    assert m["vocab_sizes"]["medications"] == 3 and m["ddi"]["atc3_pairs"] == 2
    assert m["tables"]["diagnoses"]["rows"] == 11 and m["tables"]["procedures"]["rows"] == 7
    assert m["options"]["split"] == "sequential" and m["options"]["top_medications"] == 3
    files = m["inputs"]["files"]
    assert files["prescriptions"]["bytes"] == (tiny_raw / "PRESCRIPTIONS.csv").stat().st_size
    assert len(files["aux.ndc_atc"]["sha256"]) == 64
    assert m["leadercli_version"] and m["created_at"]


def test_tiny_min_visits_two(cli, tiny_raw, tiny_aux, tiny_config, tmp_path):
    cfg = tmp_path / "mv.toml"
    cfg.write_text("[data]\nmin_visits = 2\nsplit_ratios = [1.0, 0.0, 0.0]\n")
    out = tmp_path / "mv"
    _ok(_tiny(cli, tiny_raw, tiny_aux, cfg, out))
    art = Artifact(out)
    assert art.visits()["hadm_id"].to_list() == [20, 10]
    assert art.manifest["single_visit_patients"] == 0 and art.manifest["multi_visit_patients"] == 1


def test_full_ddi_file_setting(cli, tiny_raw, tiny_aux, tiny_config, tmp_path, csv_writer):
    full = csv_writer(
        tmp_path / "drug-DDI.csv",
        ["STITCH 1", "STITCH 2", "Polypharmacy Side Effect", "Side Effect Name"],
        [["CID1", "CID2", "C1", "a"], ["CID1", "CID3", "C1", "a"], ["CID3", "CID1", "C2", "b"]],
    )
    cfg = tmp_path / "ddi.toml"
    cfg.write_text(tiny_config.read_text() + f"ddi_file = '{full}'\nddi_topk = 1\n")
    out = tmp_path / "ddi"
    _ok(_tiny(cli, tiny_raw, tiny_aux, cfg, out))
    # least frequent side effect C2 (1 row) → CID3 × CID1 → (C07A, N02B); J01D is not a label
    assert Artifact(out).ddi_pairs() == [("C07A", "N02B")]
    assert Artifact(out).manifest["ddi"]["rule"] == "1 least frequent side effects"


def test_rerun_is_byte_identical_and_replaces(cli, tiny_raw, tiny_aux, tiny_config, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    _ok(_tiny(cli, tiny_raw, tiny_aux, tiny_config, a))
    _ok(_tiny(cli, tiny_raw, tiny_aux, tiny_config, b))
    for name in (*PARQUETS, "vocab.json"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    (a / "stale.txt").write_text("old")
    _ok(_tiny(cli, tiny_raw, tiny_aux, tiny_config, a))  # replaces the old artifact as a whole
    assert not (a / "stale.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_refuses_to_replace_a_foreign_folder(cli, tiny_raw, tiny_aux, tiny_config, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    res = _tiny(cli, tiny_raw, tiny_aux, tiny_config, out)
    assert res.exit_code == 2 and "is not a leadercli artifact" in res.stderr
    assert (out / "notes.txt").read_text() == "keep me"


# -- bad input: exit 2, one line naming file/column, nothing left behind -------------------------------------
def _rewrite(path: Path, fn) -> None:
    lines = path.read_text().splitlines()
    path.write_text("\n".join(fn(lines)) + "\n")


def _drop_column(lines: list[str], index: int) -> list[str]:
    return [",".join(c for i, c in enumerate(line.split(",")) if i != index) for line in lines]


def _gzip_truncated(path: Path) -> None:
    header, body = path.read_bytes().split(b"\n", 1)
    data = header + b"\n" + body * 400  # big enough that the cut falls inside the deflate stream
    gz = path.with_name(path.name + ".gz")
    packed = gzip.compress(data)
    gz.write_bytes(packed[: len(packed) // 2])
    path.unlink()


BAD_INPUTS = {
    "missing file": (lambda raw: (raw / "PROCEDURES_ICD.csv").unlink(), ["PROCEDURES_ICD.csv", "not found"]),
    "missing column": (
        lambda raw: _rewrite(raw / "DIAGNOSES_ICD.csv", lambda ls: _drop_column(ls, 4)),
        ["DIAGNOSES_ICD.csv", "'icd9_code'", "missing"],
    ),
    "empty table": (
        lambda raw: _rewrite(raw / "ADMISSIONS.csv", lambda ls: ls[:1]),
        ["ADMISSIONS.csv", "no data rows"],
    ),
    "empty file": (lambda raw: (raw / "PATIENTS.csv").write_text(""), ["PATIENTS.csv", "empty"]),
    "corrupt gzip": (
        lambda raw: _gzip_truncated(raw / "PRESCRIPTIONS.csv"),
        ["PRESCRIPTIONS.csv.gz", "cannot be read"],
    ),
    "wrong type": (
        lambda raw: _rewrite(raw / "PROCEDURES_ICD.csv", lambda ls: [*ls, "8,1,x10,1,3893"]),
        ["PROCEDURES_ICD.csv", "'hadm_id'", "whole numbers"],
    ),
    "bad date": (
        lambda raw: _rewrite(
            raw / "ADMISSIONS.csv",
            lambda ls: [ls[0], ls[1].replace("2150-06-01 10:00:00", "June 1st"), *ls[2:]],
        ),
        ["ADMISSIONS.csv", "'admittime'", "dates"],
    ),
    "nothing maps": (
        lambda raw: _rewrite(
            raw / "PRESCRIPTIONS.csv", lambda ls: [ls[0], *(line.rsplit(",", 1)[0] + ",0" for line in ls[1:])]
        ),
        ["PRESCRIPTIONS.csv", "no prescription NDC maps"],
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input(case, cli, tiny_raw, tiny_aux, tiny_config, tmp_path):
    breaker, expected = BAD_INPUTS[case]
    breaker(tiny_raw)
    out = tmp_path / "out" / "art"
    res = _tiny(cli, tiny_raw, tiny_aux, tiny_config, out)
    assert res.exit_code == 2, res.stderr + res.stdout
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    for word in expected:
        assert word in lines[0], (word, lines[0])
    assert "Traceback" not in res.stderr and res.stdout == ""
    assert not (tmp_path / "out").exists()  # no output folder, not even the parent


def test_bad_aux_and_settings(cli, tiny_raw, tiny_aux, tiny_config, tmp_path):
    (tiny_aux / "ndc2atc_level4.csv").unlink()
    res = _tiny(cli, tiny_raw, tiny_aux, tiny_config, tmp_path / "x")
    assert res.exit_code == 2 and "ndc2atc_level4.csv not found in aux folder" in res.stderr
    res = cli("preprocess", "--source", "mimic5", "--out", tmp_path / "x")
    assert res.exit_code == 2 and "--source 'mimic5'" in res.stderr
    bad = tmp_path / "bad.toml"
    bad.write_text("[data]\ntop_diagnoses = 'many'\n")
    res = cli("preprocess", "--config", bad, "--out", tmp_path / "x")
    assert (
        res.exit_code == 2
        and "data.top_diagnoses" in res.stderr
        and len(res.stderr.strip().splitlines()) == 1
    )
    res = cli("preprocess", "--raw", tmp_path / "nowhere", "--out", tmp_path / "x")
    assert res.exit_code == 2 and "nowhere does not exist" in res.stderr
    assert not (tmp_path / "x").exists()


# -- bundled demos --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def demo3(tmp_path_factory) -> Path:
    from leadercli.data.preprocess import preprocess
    from leadercli.settings import Settings

    out = tmp_path_factory.mktemp("demo3") / "mimic3"
    preprocess(Settings(paths={"artifact": out}))
    return out


def test_default_run_is_the_bundled_mimic3_demo(cli, tmp_path):
    """No options at all: the bundled MIMIC-III demo, written to ./data/mimic3."""
    res = cli("preprocess")
    _ok(res)
    art = Artifact(tmp_path / "data" / "mimic3")
    assert art.manifest["inputs"]["bundled_demo"] is True and art.source == "mimic3"


def test_mimic3_demo_counts(demo3: Path):
    m = Artifact(demo3).manifest
    steps = {s["step"]: s for s in m["cohort_steps"]}
    # PROVENANCE (reference route alone): 107 admissions of 82 patients, 11 with >= 2 — the direct route keeps them
    assert (steps["dx_px_drug"]["visits"], steps["dx_px_drug"]["patients"]) == (107, 82)
    assert steps["dx_px_drug"]["multi_visit_patients"] == 11
    cov = m["ndc_mapping"]
    assert cov["row_coverage"] >= 0.80 and cov["routes"]["rxnorm"]["row_coverage"] == pytest.approx(
        6789 / 8920, abs=1e-6
    )
    assert (cov["rows_mapped"], cov["ndcs_mapped"]) == (7284, 751)
    # measured once (seed 42, random split): train-only vocabularies drop one test/val visit
    assert (m["patients"], m["visits"], m["single_visit_patients"], m["multi_visit_patients"]) == (
        81,
        106,
        70,
        11,
    )
    assert m["splits"] == {"train": 65, "val": 7, "test": 9}
    assert {k: m["vocab_sizes"][k] for k in ("diagnoses", "procedures", "medications")} == {
        "diagnoses": 457,
        "procedures": 141,
        "medications": 107,
    }
    assert m["ddi"]["atc3_pairs"] == 383 and m["missing_titles"]["medications"] == 0
    assert m["source_version"] == "1.4"


def test_mimic4_demo_counts(cli, tmp_path):
    out = tmp_path / "m4"
    _ok(cli("preprocess", "--source", "mimic4", "--out", out, "-q"))
    art = Artifact(out)
    m = art.manifest
    steps = {s["step"]: s for s in m["cohort_steps"]}
    # PROVENANCE: 186 admissions of 92 patients, 38 with >= 2 (unchanged by the extra route)
    assert (steps["dx_px_drug"]["visits"], steps["dx_px_drug"]["patients"]) == (186, 92)
    assert steps["dx_px_drug"]["multi_visit_patients"] == 38
    cov = m["ndc_mapping"]
    assert cov["row_coverage"] >= 0.80 and (cov["routes"]["rxnorm"]["rows"], cov["rows_with_ndc"]) == (
        9380,
        15456,
    )
    assert (m["patients"], m["visits"], m["single_visit_patients"], m["multi_visit_patients"]) == (
        90,
        181,
        53,
        37,
    )
    assert m["splits"] == {"train": 73, "val": 9, "test": 8}
    assert {k: m["vocab_sizes"][k] for k in ("diagnoses", "procedures", "medications")} == {
        "diagnoses": 1090,
        "procedures": 288,
        "medications": 107,
    }
    codes = art.vocab.diagnoses.codes
    assert any(c.startswith("D10:") for c in codes) and any(c.startswith("D9:") for c in codes)
    assert art.vocab.profile["admission_type"] and "race" in art.patients().columns
    assert m["source_version"] == "2.x"


def test_upper_case_gzip_mimic3_equals_demo(cli, mimic3_upper_gz, demo3, tmp_path):
    out = tmp_path / "upper"
    _ok(cli("preprocess", "--raw", mimic3_upper_gz, "--out", out, "-q"))
    for name in (*PARQUETS, "vocab.json"):
        assert (out / name).read_bytes() == (demo3 / name).read_bytes(), name
    a, b = json.loads((out / "manifest.json").read_text()), json.loads((demo3 / "manifest.json").read_text())
    for key in ("ndc_mapping", "cohort_steps", "splits", "vocab_sizes", "patients", "visits"):
        assert a[key] == b[key], key
    assert a["inputs"]["files"]["admissions"]["path"].endswith("ADMISSIONS.csv.gz")
