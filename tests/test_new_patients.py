"""New patients (issue 9): raw tables of patients whose latest admission has no prescriptions yet →
`leader preprocess --for-run` → `leader predict` (any run kind) and the Python API, on the bundled MIMIC-IV
demo."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
from typer.testing import CliRunner

from leadercli.cli.main import app

runner = CliRunner()
DEMO = Path(__file__).resolve().parents[1] / "sample_data" / "mimic-iv-demo" / "hosp"
TOML = """
[data]
source = "mimic4"
[student]
epochs = 2
batch_size = 16
hidden = 16
ff = 32
"""


def _invoke(args: list[str]):
    return runner.invoke(app, args)


def make_new_cohort(dst: Path, n_subjects: int = 25) -> pl.DataFrame:
    """The raw demo tables of the first `n_subjects` subjects with the prescriptions of each subject's latest
    admission removed (that admission is the one to prescribe for). Returns those latest admissions."""
    (dst / "hosp").mkdir(parents=True)
    adm = pl.read_csv(DEMO / "admissions.csv.gz", infer_schema=False)
    subjects = sorted(set(adm["subject_id"].to_list()))[:n_subjects]
    dx = pl.read_csv(DEMO / "diagnoses_icd.csv.gz", infer_schema=False)
    px = pl.read_csv(DEMO / "procedures_icd.csv.gz", infer_schema=False)
    coded = pl.concat([dx.select("subject_id", "hadm_id"), px.select("subject_id", "hadm_id")]).unique()
    latest = (
        adm.filter(pl.col("subject_id").is_in(subjects))
        .join(coded, on=["subject_id", "hadm_id"], how="semi")
        .sort(["admittime", "hadm_id"])
        .group_by("subject_id")
        .agg(pl.col("hadm_id").last())
    )
    for f in DEMO.iterdir():
        df = pl.read_csv(f, infer_schema=False)
        if "subject_id" in df.columns:
            df = df.filter(pl.col("subject_id").is_in(subjects))
        if f.name.startswith("prescriptions"):
            df = df.join(latest, on=["subject_id", "hadm_id"], how="anti")
        df.write_csv(dst / "hosp" / f.name.removesuffix(".gz"))
    return latest.with_columns(pl.col("subject_id").cast(pl.Int64), pl.col("hadm_id").cast(pl.Int64))


@pytest.fixture(scope="module")
def wd(tmp_path_factory) -> Path:
    wd = tmp_path_factory.mktemp("newpatients")
    (wd / "leader.toml").write_text(TOML)
    latest = make_new_cohort(wd / "new")
    latest.write_parquet(wd / "latest.parquet")
    cwd = os.getcwd()
    os.chdir(wd)
    try:
        assert _invoke(["preprocess", "-q"]).exit_code == 0
        r = _invoke(["train", "student", "-q"])
        assert r.exit_code == 0, r.output
        r = _invoke(["train", "student", "-q", "--model", "popularity", "--out", "runs/popularity"])
        assert r.exit_code == 0, r.output
        r = _invoke(["preprocess", "--for-run", "runs/student", "--raw", "new", "--out", "data/new", "-q"])
        assert r.exit_code == 0, r.output
    finally:
        os.chdir(cwd)
    return wd


def test_every_new_subject_gets_drugs_for_its_latest_admission(wd, monkeypatch):
    monkeypatch.chdir(wd)
    latest = pl.read_parquet("latest.parquet")
    visits = pl.read_parquet("data/new/visits.parquet")
    m = json.loads(Path("data/new/manifest.json").read_text())
    assert (
        m["kind"] == "prediction-input" and m["patients"] == latest.height == visits["subject_id"].n_unique()
    )
    assert (
        m["run"]["labels_hash"] == json.loads(Path("runs/student/manifest.json").read_text())["labels_hash"]
    )
    assert m["target_visits_with_prescriptions"] == 0  # their prescriptions were removed
    # codes keep their prefixed form; codes unknown to the run are kept, counted and titled
    assert visits["diagnoses"].explode().drop_nulls().str.contains(r"^D(9|10):").all()
    codes = pl.read_parquet("data/new/codes.parquet")
    unknown_dx = codes.filter((pl.col("kind") == "diagnoses") & ~pl.col("known"))
    assert unknown_dx.height == m["unknown"]["diagnoses"]["unknown_codes"] > 0
    assert (unknown_dx["title"] != "").mean() > 0.9
    r = _invoke(["predict", "data/new", "-o", "recs.csv", "--top-k", "5"])
    assert r.exit_code == 0, r.output
    recs = pl.read_csv("recs.csv")
    got = recs.filter(pl.col("rank") == 1).select("subject_id", "hadm_id").sort("subject_id")
    assert got.equals(latest.sort("subject_id").select("subject_id", "hadm_id"))
    assert (recs.group_by("subject_id").len()["len"] >= 5).all()
    meta = json.loads(Path("recs.csv.meta.json").read_text())
    assert meta["model"]["kind"] == "student" and meta["counts"]["patients"] == latest.height
    assert meta["input"]["sha256"] and len(meta["input"]["sha256"]) == 64
    assert meta["model"]["labels_hash"] == m["run"]["labels_hash"]


def test_for_run_folder_follows_the_input_contract(wd):
    """What `preprocess --for-run` writes is what `predict` reads: one contract (`data/contract.py`)."""
    import pyarrow.parquet as pq

    from leadercli.data import contract
    from leadercli.predict import read_input
    from leadercli.predict.input import check_schema

    folder = wd / "data" / "new"
    assert sorted(f.name for f in folder.iterdir()) == sorted(contract.FILES)
    check_schema(folder / contract.VISITS, pq.read_schema(folder / contract.VISITS))  # raises on a break
    src = read_input(folder)
    assert src.manifest["kind"] == contract.KIND and src.titles
    assert set(contract.REQUIRED) | set(contract.ORDER_COLUMNS) <= set(src.columns)
    assert tuple(pl.read_parquet(folder / contract.CODES).columns) == contract.CODES_COLUMNS


def test_n_unknown_codes_hand_count(wd):
    from leadercli import Recommender

    rec = Recommender.load(wd / "runs" / "student")
    voc = rec.scorer.vocab
    d0, d1 = voc.diagnoses.codes[:2]
    p0 = voc.procedures.codes[0]
    frame = pl.DataFrame(
        {
            "subject_id": [1, 1, 2],
            "hadm_id": [10, 11, 20],
            "visit_no": [0, 1, 0],
            # patient 1: history visit with 2 unknown codes (not counted), target with 2 of 4 unknown
            "diagnoses": [["D9:XXXX1", d0], [d0, d1, "D10:ZZZ99"], ["D10:ZZZ98", "D10:ZZZ97"]],
            "procedures": [["P9:0000"], [p0, "P10:ZZZZZZZ"], []],
        },
        schema_overrides={"visit_no": pl.Int32},
    )
    out = rec.predict(frame, top_k=3)
    per = dict(out.group_by("subject_id").agg(pl.col("n_unknown_codes").first()).iter_rows())
    assert per == {1: 2, 2: 2}
    assert out.filter(pl.col("subject_id") == 1)["hadm_id"].unique().to_list() == [11]


def test_api_equals_cli(wd, monkeypatch):
    from leadercli import Recommender

    monkeypatch.chdir(wd)
    assert _invoke(["predict", "data/new/visits.parquet", "-o", "cli.parquet", "-q"]).exit_code == 0
    cli = pl.read_parquet("cli.parquet")
    rec = Recommender.load("runs/student")
    api = rec.predict(pl.read_parquet("data/new/visits.parquet"))
    assert api.columns == cli.columns
    assert api.drop("score").equals(cli.drop("score"))
    assert np.abs(api["score"].to_numpy() - cli["score"].to_numpy()).max() < 1e-5
    raw = rec.predict_raw(wd / "new", source="mimic4")
    assert raw.drop("score").equals(cli.drop("score"))


def test_max_ddi_pairs_zero_leaves_no_interacting_pair(wd, monkeypatch):
    from leadercli.runs import load_run

    monkeypatch.chdir(wd)
    r = _invoke(["predict", "data/new", "-o", "ddi.csv", "--threshold", "0.05", "--max-ddi-pairs", "0"])
    assert r.exit_code == 0, r.output
    out = pl.read_csv("ddi.csv")
    pairs = {frozenset(p) for p in pl.read_parquet("runs/student/ddi.parquet").iter_rows()}
    assert pairs
    assert out["ddi_dropped"].any()
    for _, g in out.filter(pl.col("selected")).group_by("subject_id"):
        drugs = g["atc3"].to_list()
        assert not any(frozenset((a, b)) in pairs for i, a in enumerate(drugs) for b in drugs[i + 1 :])
    # without the cap the same drugs are selected or dropped, and some selections interact
    assert _invoke(["predict", "data/new", "-o", "free.csv", "--threshold", "0.05", "-q"]).exit_code == 0
    free = pl.read_csv("free.csv")
    assert (
        free.filter(pl.col("selected")).height
        == out.filter(pl.col("selected") | pl.col("ddi_dropped")).height
    )
    scorer = load_run("runs/student")
    assert len(scorer.ddi_pairs()) == len(pairs)


def test_csv_input_and_baseline_runs(wd, monkeypatch):
    monkeypatch.chdir(wd)
    v = pl.read_parquet("data/new/visits.parquet")
    v.with_columns(pl.col(c).list.join(";") for c in ("diagnoses", "procedures", "medications")).write_csv(
        "v.csv"
    )
    assert _invoke(["predict", "v.csv", "-o", "a.parquet", "-q"]).exit_code == 0
    assert _invoke(["predict", "data/new/visits.parquet", "-o", "b.parquet", "-q"]).exit_code == 0
    a, b = pl.read_parquet("a.parquet"), pl.read_parquet("b.parquet")
    assert a.drop("score").equals(b.drop("score"))
    assert np.abs(a["score"].to_numpy() - b["score"].to_numpy()).max() < 1e-6
    r = _invoke(["predict", "data/new", "-o", "pop.csv", "--model", "runs/popularity", "--top-k", "3", "-q"])
    assert r.exit_code == 0, r.output
    pop = pl.read_csv("pop.csv")
    firsts = pop.filter(pl.col("rank") == 1)["atc3"].unique()
    assert firsts.len() == 1  # the same most frequent drug for everyone


@pytest.mark.parametrize(
    "args, needle",
    [
        (["predict", "data/new", "-o", "x.csv", "--model", "data/new"], "prediction-input"),
        (["predict", "data/new", "-o", "x.csv", "--model", "nowhere"], "not a finished run folder"),
        (["predict", "data/new/visits.parquet", "-o", "data/new/visits.parquet"], "is the input file"),
        (["predict", "data/new", "-o", "x.txt"], "must end in .csv or .parquet"),
        (["preprocess", "--for-run", "runs/student", "--out", "data/x"], "--for-run needs --raw"),
        (["preprocess", "--for-run", "data/new", "--raw", "new", "--out", "data/x"], "not a leadercli run"),
        (
            ["preprocess", "--for-run", "runs/student", "--raw", "new", "--out", "runs/student"],
            "not a prediction",
        ),
    ],
)
def test_bad_new_patient_inputs_are_one_line(wd, monkeypatch, args, needle):
    monkeypatch.chdir(wd)
    before = {p: p.stat().st_mtime_ns for p in Path(".").rglob("*") if p.is_file()}
    r = _invoke(args)
    assert r.exit_code == 2, r.output
    assert needle in r.output and "Traceback" not in r.output
    assert not Path("x.csv").exists() and not Path("data/x").exists()
    after = {p: p.stat().st_mtime_ns for p in Path(".").rglob("*") if p.is_file()}
    assert {p: t for p, t in after.items() if p in before} == before  # nothing modified


def test_teacher_run_predicts(wd, tmp_path, monkeypatch):
    """A (tiny, randomly initialised LLaMA-style) teacher run predicts through its prompts, titles of codes
    it has never seen included."""
    from tiny_llama import make_tiny_llama

    from leadercli import Recommender

    monkeypatch.chdir(wd)
    make_tiny_llama(tmp_path / "llama")
    toml = Path("leader.toml").read_text() + (
        f'[teacher]\nbase_model = "{tmp_path / "llama"}"\nmax_steps = 2\neval_every = 2\nbatch_size = 4\n'
    )
    Path("teacher.toml").write_text(toml)
    r = _invoke(["train", "teacher", "-q", "--config", "teacher.toml", "--out", str(tmp_path / "teacher")])
    assert r.exit_code == 0, r.output
    r = _invoke(["predict", "data/new", "-o", "t.csv", "--model", str(tmp_path / "teacher"), "--top-k", "4"])
    assert r.exit_code == 0, r.output
    out = pl.read_csv("t.csv")
    assert out["subject_id"].n_unique() == pl.read_parquet("latest.parquet").height
    rec = Recommender.load(tmp_path / "teacher")
    api = rec.predict(pl.read_parquet("data/new/visits.parquet"), top_k=4)
    # the CLI names unseen codes from codes.parquet; so does the API when given the same titles
    from leadercli.predict import read_titles

    titled = rec.predict(
        pl.read_parquet("data/new/visits.parquet"),
        top_k=4,
        titles=read_titles(Path("data/new/codes.parquet")),
    )
    assert np.abs(titled["score"].to_numpy() - out["score"].to_numpy()).max() < 1e-4
    assert titled.height == out.height
    assert api["subject_id"].n_unique() == out["subject_id"].n_unique()
    # a target visit whose own drugs include a class outside the label list, named in the titles (real new
    # admissions do this): scoring builds no labels, so it scores instead of failing on the unknown index
    titles = read_titles(Path("data/new/codes.parquet")) or {}
    titles["medications"] = {**titles.get("medications", {}), "Z9Z": "a drug class the run never saw"}
    frame = pl.read_parquet("data/new/visits.parquet")
    frame = frame.with_columns(pl.concat_list([pl.col("medications"), pl.lit("Z9Z")]).alias("medications"))
    odd = rec.predict(frame, top_k=4, titles=titles)
    assert odd["subject_id"].n_unique() == out["subject_id"].n_unique() and odd["score"].is_finite().all()
    assert "Z9Z" not in set(odd["atc3"].to_list())  # only trained labels are ranked
    torch.set_num_threads(torch.get_num_threads())  # (the predict pool restores the thread count)


def test_unknown_shrink_leans_on_the_training_prior(wd):
    """A target visit of unknown codes only is scored with the training drug frequencies (λ·u ≥ 1); a visit of
    known codes is not changed; λ = 0 switches it off."""
    from leadercli import Recommender

    rec = Recommender.load(wd / "runs" / "student")
    voc = rec.scorer.vocab
    frame = pl.DataFrame(
        {
            "subject_id": [1, 2],
            "hadm_id": [10, 20],
            "visit_no": [0, 0],
            "diagnoses": [["D10:ZZZ01", "D10:ZZZ02"], list(voc.diagnoses.codes[:3])],
            "procedures": [["P10:ZZZZZZZ"], list(voc.procedures.codes[:1])],
        },
        schema_overrides={"visit_no": pl.Int32},
    )
    M = len(rec.labels)
    on = rec.predict(frame, top_k=M).sort(["subject_id", "rank"])
    off = rec.predict(frame, top_k=M, unknown_shrink=0.0).sort(["subject_id", "rank"])
    prior = dict(zip(rec.labels, rec.scorer.prior().tolist(), strict=True))
    unknown = on.filter(pl.col("subject_id") == 1)
    assert np.allclose(unknown["score"].to_numpy(), [prior[a] for a in unknown["atc3"]], atol=1e-6)
    known_on, known_off = on.filter(pl.col("subject_id") == 2), off.filter(pl.col("subject_id") == 2)
    assert known_on.equals(known_off)
    assert not off.filter(pl.col("subject_id") == 1)["score"].equals(unknown["score"])
    cwd = os.getcwd()
    os.chdir(wd)
    try:
        assert _invoke(["predict", "data/new", "-o", "shrink.csv", "-q"]).exit_code == 0
    finally:
        os.chdir(cwd)
    assert json.loads((wd / "shrink.csv.meta.json").read_text())["unknown_shrink"] == 3.0
