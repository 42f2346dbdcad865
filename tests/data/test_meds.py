"""`leader preprocess --source meds` (issue 15): a MEDS dataset written from the bundled MIMIC-IV demo with the
MIMIC-IV MEDS ETL's conventions gives the same artifact as `--source mimic4` on the raw demo."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import polars as pl
import pytest
from meds_from_mimic import write_meds
from typer.testing import CliRunner

from leadercli.cli.main import app

runner = CliRunner()
HOSP = Path(__file__).resolve().parents[2] / "sample_data" / "mimic-iv-demo" / "hosp"
SAME = ("visits.parquet", "patients.parquet", "ddi.parquet")


def _run(wd: Path, *args: str):
    cwd = os.getcwd()
    os.chdir(wd)
    try:
        return runner.invoke(app, list(args))
    finally:
        os.chdir(cwd)


@pytest.fixture(scope="module")
def wd(tmp_path_factory) -> Path:
    wd = tmp_path_factory.mktemp("meds")
    write_meds(HOSP, wd / "meds")
    write_meds(HOSP, wd / "meds_windows", with_hadm=False)
    for args in (
        ("preprocess", "-q", "--source", "mimic4", "--out", "data/m4"),
        ("preprocess", "-q", "--source", "meds", "--raw", "meds", "--out", "data/meds"),
    ):
        r = _run(wd, *args)
        assert r.exit_code == 0, r.output
    return wd


def test_written_dataset_is_valid_meds(wd):
    import meds
    import pyarrow.parquet as pq

    for shard in sorted((wd / "meds" / "data").glob("*.parquet")):
        meds.DataSchema.validate(pq.read_table(shard))
    meds.CodeMetadataSchema.validate(pq.read_table(wd / "meds/metadata/codes.parquet"))
    meds.SubjectSplitSchema.validate(pq.read_table(wd / "meds/metadata/subject_splits.parquet"))


def test_meds_gives_the_mimic4_artifact(wd):
    """Same patients, visits, codes, labels, profile, split and DDI pairs; same vocabulary and titles."""
    for name in SAME:
        a, b = pl.read_parquet(wd / "data/m4" / name), pl.read_parquet(wd / "data/meds" / name)
        assert a.equals(b), name
    va = json.loads((wd / "data/m4/vocab.json").read_text())
    vb = json.loads((wd / "data/meds/vocab.json").read_text())
    assert va == vb
    m = json.loads((wd / "data/meds/manifest.json").read_text())
    assert m["source"] == "meds" and "MIMIC-IV demo" in m["source_version"]
    assert m["patients"] == 90 and m["visits"] == 181
    assert all(k.startswith(("data/", "metadata/")) for k in m["inputs"]["files"] if not k.startswith("aux."))


def test_visit_windows_without_hadm_id(wd):
    """Without a visit column a visit is the admission → discharge window: the same visits, diagnoses and
    procedures; drugs prescribed outside the window (MIMIC starttimes before admittime) are not in it."""
    r = _run(wd, "preprocess", "-q", "--source", "meds", "--raw", "meds_windows", "--out", "data/win")
    assert r.exit_code == 0, r.output
    a, b = pl.read_parquet(wd / "data/m4/visits.parquet"), pl.read_parquet(wd / "data/win/visits.parquet")
    cols = ["subject_id", "admittime", "visit_no", "diagnoses", "procedures"]
    assert a.height == b.height and a.select(cols).equals(b.select(cols))
    lost = a.join(b, on=["subject_id", "visit_no"]).select(
        pl.col("medications").list.set_difference("medications_right").list.len().alias("lost"),
        pl.col("medications_right").list.set_difference("medications").list.len().alias("extra"),
    )
    assert lost["extra"].sum() == 0  # nothing invented
    assert lost["lost"].sum() < 0.2 * a["medications"].list.len().sum()


def test_meds_split_file(wd):
    toml = wd / "split.toml"
    toml.write_text('[data]\nsplit = "meds"\n')
    r = _run(
        wd, "preprocess", "-q", "--config", str(toml), "--source", "meds", "--raw", "meds", "--out", "data/ms"
    )
    assert r.exit_code == 0, r.output
    got = pl.read_parquet(wd / "data/ms/patients.parquet").select("subject_id", "split")
    want = {
        s: {"train": "train", "tuning": "val", "held_out": "test"}[t]
        for s, t in pl.read_parquet(wd / "meds/metadata/subject_splits.parquet").iter_rows()
    }
    assert all(want[s] == t for s, t in got.iter_rows())


def test_atc_coded_drugs_and_other_patterns(tmp_path):
    """Drugs already coded as ATC are taken as they are; patterns are settings (another ETL's vocabulary)."""
    t = pl.datetime(2150, 1, 1, time_unit="us")
    rows = [
        (1, None, "SEX//F"),
        (1, "2150-01-01 10:00:00", "ADMIT//EMERGENCY"),
        (1, "2150-01-02 10:00:00", "DX//10//I10"),
        (1, "2150-01-02 10:00:00", "PX//10//0DTJ4ZZ"),
        (1, "2150-01-02 11:00:00", "RX//ATC//N02BE01"),
        (1, "2150-01-03 10:00:00", "DISCHARGE//HOME"),
    ]
    df = pl.DataFrame(
        rows, schema={"subject_id": pl.Int64, "time": pl.String, "code": pl.String}, orient="row"
    )
    df = df.with_columns(pl.col("time").str.to_datetime(time_unit="us"))
    assert df["time"].drop_nulls().min() >= pl.select(t).item()
    (tmp_path / "root" / "data").mkdir(parents=True)
    df.write_parquet(tmp_path / "root/data/0.parquet")
    (tmp_path / "root/metadata").mkdir()
    (tmp_path / "root/metadata/dataset.json").write_text('{"dataset_name": "hand-made"}')
    pl.DataFrame({"code": ["DX//10//I10"], "description": ["Essential hypertension"]}).write_parquet(
        tmp_path / "root/metadata/codes.parquet"
    )
    from leadercli.data.meds import MEDS
    from leadercli.settings import load_settings

    (tmp_path / "leader.toml").write_text(
        "[meds]\n"
        "diagnosis = '^DX//(?P<version>\\d+)//(?P<code>.+)$'\n"
        "procedure = '^PX//(?P<version>\\d+)//(?P<code>.+)$'\n"
        "medication_atc = '^RX//ATC//(?P<atc>[A-Z]\\d\\d[A-Z]\\w*)$'\n"
        "admission = '^ADMIT//(?P<admission_type>[^/]*)'\n"
        "discharge = '^DISCHARGE//'\n"
        "gender = '^SEX//(?P<value>.+)$'\n"
    )
    settings = load_settings(tmp_path / "leader.toml")
    layout = MEDS.configure(settings)
    raw = layout.read(layout.locate(tmp_path / "root", settings))
    assert raw.diagnoses["code"].to_list() == ["D10:I10"]
    assert raw.procedures["code"].to_list() == ["P10:0DTJ4ZZ"]
    assert raw.atc_events["atc3"].to_list() == ["N02B"]
    assert raw.admissions["admission_type"].to_list() == ["EMERGENCY"]
    assert raw.patients["gender"].to_list() == ["F"]
    assert raw.diagnoses["hadm_id"].to_list() == raw.admissions["hadm_id"].to_list()  # the window's visit


def test_new_patients_from_meds(wd, tmp_path):
    """`preprocess --source meds --for-run` on a MEDS root of new patients → `leader predict`."""
    toml = wd / "student.toml"
    toml.write_text(
        '[data]\nsource = "meds"\n[paths]\nartifact = "data/meds"\n[student]\nepochs = 1\nhidden = 16\nff = 32\n'
    )
    r = _run(wd, "train", "student", "-q", "--config", str(toml), "--out", "runs/meds")
    assert r.exit_code == 0, r.output
    # new cohort: the MEDS events of 10 subjects without the drugs of their latest admission
    new = tmp_path / "new"
    (new / "data").mkdir(parents=True)
    ev = pl.concat([pl.read_parquet(p) for p in sorted((wd / "meds/data").glob("*.parquet"))])
    subjects = ev["subject_id"].unique().sort().head(10)
    ev = ev.filter(pl.col("subject_id").is_in(subjects.implode()))
    adm = ev.filter(pl.col("code").str.starts_with("HOSPITAL_ADMISSION//"))
    latest = adm.sort("time").group_by("subject_id").agg(pl.col("hadm_id").last())
    drugs_of_latest = pl.col("code").str.starts_with("MEDICATION//") & pl.col("hadm_id").is_in(
        latest["hadm_id"].implode()
    )
    ev.filter(~drugs_of_latest).write_parquet(new / "data/0.parquet")
    shutil.copytree(wd / "meds/metadata", new / "metadata", ignore=shutil.ignore_patterns("subject_splits*"))
    r = _run(
        wd,
        "preprocess",
        "-q",
        "--source",
        "meds",
        "--for-run",
        "runs/meds",
        "--raw",
        str(new),
        "--out",
        "data/newmeds",
    )
    assert r.exit_code == 0, r.output
    r = _run(wd, "predict", "data/newmeds", "-o", "newmeds.csv", "-q")
    assert r.exit_code == 0, r.output
    out = pl.read_csv(wd / "newmeds.csv")
    assert (
        out.filter(pl.col("rank") == 1).sort("subject_id")["hadm_id"].to_list()
        == latest.sort("subject_id")["hadm_id"].to_list()
    )


@pytest.mark.parametrize(
    "args, needle",
    [
        (["preprocess", "--source", "meds"], "--source meds needs --raw"),
        (["preprocess", "--source", "meds", "--raw", "data/m4", "--out", "data/x"], "not a MEDS root"),
        (["preprocess", "--source", "medz", "--raw", "meds", "--out", "data/x"], "is not known"),
    ],
)
def test_bad_meds_input_is_one_line(wd, args, needle):
    r = _run(wd, *args)
    assert r.exit_code == 2, r.output
    assert needle in r.output and "Traceback" not in r.output
    assert not (wd / "data/x").exists()


def test_bad_pattern_setting_is_one_line(wd):
    toml = wd / "bad.toml"
    toml.write_text("[meds]\ndiagnosis = '^DIAGNOSIS//(('\n")
    r = _run(wd, "preprocess", "--config", str(toml), "--source", "meds", "--raw", "meds", "--out", "data/x")
    assert r.exit_code == 2 and "meds.diagnosis" in r.output and "regular expression" in r.output
