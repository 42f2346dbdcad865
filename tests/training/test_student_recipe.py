"""`leader train student` / baselines / `leader predict` end to end on a tiny synthetic artifact."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import polars as pl
import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from leadercli import runs
from leadercli.cli.main import app

runner = CliRunner()


def _workdir(tmp_path: Path, tiny_artifact: Path, epochs: int = 4) -> Path:
    shutil.copytree(tiny_artifact, tmp_path / "data" / "mimic3")
    (tmp_path / "leader.toml").write_text(
        f"[student]\nepochs = {epochs}\nbatch_size = 8\nhidden = 16\nff = 32\n"
    )
    return tmp_path


def _invoke(args: list[str]):
    result = runner.invoke(app, args)
    return result


@pytest.fixture()
def trained(tmp_path, tiny_artifact, monkeypatch):
    wd = _workdir(tmp_path, tiny_artifact)
    monkeypatch.chdir(wd)
    r = _invoke(["train", "student", "-q"])
    assert r.exit_code == 0, r.output
    return wd


def test_train_student_writes_run_folder(trained):
    out = trained / "runs" / "student"
    for name in ("model.safetensors", "manifest.json", "settings.toml", "train_log.jsonl", "vocab.json"):
        assert (out / name).is_file(), name
    assert not (out / "checkpoint").exists()
    m = json.loads((out / "manifest.json").read_text())
    assert m["kind"] == "student" and len(m["labels"]) == 12
    assert 0 < m["threshold"]["value"] < 1 and "validation" in m["threshold"]["how"]
    log = runs.read_log(out)
    assert [r["epoch"] for r in log] == [1, 2, 3, 4]
    assert log[-1]["bce"] < log[0]["bce"]  # the loss falls
    test = m["metrics"]["test"]
    assert test["overall"]["n"] == test["single"]["n"] + test["multi"]["n"]
    assert 0 <= test["overall"]["point"]["prauc"] <= 1


def test_resume_equals_uninterrupted(tmp_path, tiny_artifact, monkeypatch):
    wd = _workdir(tmp_path, tiny_artifact)
    monkeypatch.chdir(wd)
    assert _invoke(["train", "student", "-q", "--out", "runs/full"]).exit_code == 0
    calls = {"n": 0}
    real = runs.append_log

    def crash_after_two(out, record):
        real(out, record)
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(runs, "append_log", crash_after_two)
    # the checkpoint is written after the log line; crash before → resume repeats that epoch deterministically
    r = _invoke(["train", "student", "-q", "--out", "runs/resumed"])
    assert r.exit_code == 130
    assert (wd / "runs/resumed/checkpoint/last").is_dir()
    monkeypatch.setattr(runs, "append_log", real)
    r = _invoke(["train", "student", "-q", "--out", "runs/resumed", "--resume"])
    assert r.exit_code == 0, r.output
    a = load_file(str(wd / "runs/full/model.safetensors"))
    b = load_file(str(wd / "runs/resumed/model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    ma = json.loads((wd / "runs/full/manifest.json").read_text())
    mb = json.loads((wd / "runs/resumed/manifest.json").read_text())
    assert ma["metrics"] == mb["metrics"] and ma["threshold"] == mb["threshold"]
    assert [r["epoch"] for r in runs.read_log(wd / "runs/resumed")] == [1, 2, 3, 4]


def test_same_seed_same_numbers(tmp_path, tiny_artifact, monkeypatch):
    wd = _workdir(tmp_path, tiny_artifact, epochs=2)
    monkeypatch.chdir(wd)
    for out in ("runs/a", "runs/b"):
        assert _invoke(["train", "student", "-q", "--out", out]).exit_code == 0
    assert (wd / "runs/a/model.safetensors").read_bytes() == (wd / "runs/b/model.safetensors").read_bytes()


def test_baselines(tmp_path, tiny_artifact, monkeypatch):
    wd = _workdir(tmp_path, tiny_artifact)
    monkeypatch.chdir(wd)
    for model in ("popularity", "previous"):
        r = _invoke(["train", "student", "-q", "--model", model, "--out", f"runs/{model}"])
        assert r.exit_code == 0, r.output
        m = json.loads((wd / f"runs/{model}/manifest.json").read_text())
        assert m["kind"] == model
    # popularity: every patient gets the same ranking
    r = _invoke(
        ["predict", "data/mimic3/visits.parquet", "-o", "pop.csv", "--model", "runs/popularity", "-q"]
    )
    assert r.exit_code == 0, r.output
    df = pl.read_csv("pop.csv")
    firsts = df.filter(pl.col("rank") == 1)["atc3"].unique()
    assert firsts.len() == 1


def test_predict_output_and_ranking(trained):
    r = _invoke(["predict", "data/mimic3/visits.parquet", "-o", "recs.csv", "--top-k", "5", "-q"])
    assert r.exit_code == 0, r.output
    df = pl.read_csv("recs.csv")
    assert df.columns == [
        "subject_id",
        "hadm_id",
        "rank",
        "atc3",
        "drug_name",
        "score",
        "selected",
        "ddi_dropped",
        "n_unknown_codes",
    ]
    visits = pl.read_parquet("data/mimic3/visits.parquet")
    assert df["subject_id"].n_unique() == visits["subject_id"].n_unique()
    # the top 5 of every patient, and every selected drug below them
    per = df.group_by("subject_id").agg(pl.len(), pl.col("selected").sum().alias("sel"))
    assert (per["len"] == per["sel"].clip(lower_bound=5)).all()
    assert not df["ddi_dropped"].any()
    # the latest visit of each subject is the one scored
    last = visits.sort("visit_no").group_by("subject_id").agg(pl.col("hadm_id").last())
    got = df.filter(pl.col("rank") == 1).select("subject_id", "hadm_id").join(last, on="subject_id")
    assert (got["hadm_id"] == got["hadm_id_right"]).all()
    # ranks 1..k with non-increasing scores; selected follows the threshold
    m = json.loads(Path("runs/student/manifest.json").read_text())
    for _, g in df.group_by("subject_id"):
        g = g.sort("rank")
        assert g["rank"].to_list() == list(range(1, g.height + 1)) and g.height >= 5
        assert all(a >= b for a, b in zip(g["score"], g["score"][1:], strict=False))
    assert ((df["score"] >= m["threshold"]["value"]) == df["selected"]).all()
    # parquet output, explicit threshold
    r = _invoke(["predict", "data/mimic3/visits.parquet", "-o", "recs.parquet", "--threshold", "0.99", "-q"])
    assert r.exit_code == 0 and not pl.read_parquet("recs.parquet")["selected"].any()


def test_predict_ignores_target_drugs_and_accepts_raw_icd(trained):
    visits = pl.read_parquet("data/mimic3/visits.parquet")
    a = visits.with_columns(
        pl.lit(["A02B"]).alias("medications")
    )  # history drugs change → but last visit ignored
    raw = visits.with_columns(
        pl.col("diagnoses").list.eval(pl.element().str.replace(r"^D9:", "")),
        pl.col("procedures").list.eval(pl.element().str.replace(r"^P9:", "")),
        pl.lit(9).alias("icd_version"),
    )
    raw.write_parquet("raw.parquet")
    assert _invoke(["predict", "data/mimic3/visits.parquet", "-o", "a.csv", "-q"]).exit_code == 0
    r = _invoke(["predict", "raw.parquet", "-o", "b.csv", "-q"])
    assert r.exit_code == 0, r.output
    assert pl.read_csv("a.csv").equals(pl.read_csv("b.csv"))
    single = visits.group_by("subject_id").len().filter(pl.col("len") == 1)["subject_id"]
    a.filter(pl.col("subject_id").is_in(single.implode())).write_parquet("single_changed.parquet")
    visits.filter(pl.col("subject_id").is_in(single.implode())).write_parquet("single.parquet")
    assert _invoke(["predict", "single.parquet", "-o", "s1.csv", "-q"]).exit_code == 0
    assert _invoke(["predict", "single_changed.parquet", "-o", "s2.csv", "-q"]).exit_code == 0
    assert pl.read_csv("s1.csv").equals(pl.read_csv("s2.csv"))  # a visit's own drugs never reach the input


@pytest.mark.parametrize(
    "mutate, needle",
    [
        (lambda df: df.drop("diagnoses"), "column 'diagnoses' is missing"),
        (lambda df: df.with_columns(pl.col("subject_id").cast(pl.Utf8)), "column 'subject_id' has type"),
        (lambda df: df.head(0), "has no rows"),
        (lambda df: df.drop("admittime", "visit_no"), "'admittime' or 'visit_no'"),
    ],
)
def test_predict_bad_input(trained, mutate, needle):
    mutate(pl.read_parquet("data/mimic3/visits.parquet")).write_parquet("bad.parquet")
    r = _invoke(["predict", "bad.parquet", "-o", "out.csv"])
    assert r.exit_code == 2
    assert needle in r.output and "bad.parquet" in r.output
    assert not Path("out.csv").exists()
    assert not list(Path(".").glob(".out.csv*"))


def test_predict_missing_file_and_corrupt(trained):
    r = _invoke(["predict", "nope.parquet", "-o", "out.csv"])
    assert r.exit_code == 2 and "nope.parquet" in r.output
    Path("corrupt.parquet").write_bytes(b"not parquet at all")
    r = _invoke(["predict", "corrupt.parquet", "-o", "out.csv"])
    assert r.exit_code == 2 and "corrupt.parquet" in r.output
    assert not Path("out.csv").exists()


def test_checkpoint_refuses_other_artifact(trained, tmp_path):
    from synthetic import make_synthetic_artifact

    from leadercli.data.artifact import Artifact
    from leadercli.errors import ArtifactError

    other = make_synthetic_artifact(tmp_path / "other", n_patients=20, seed=3)
    vocab = json.loads((other / "vocab.json").read_text())
    vocab["medications"]["codes"] = vocab["medications"]["codes"][:-1]
    vocab["medications"]["titles"] = vocab["medications"]["titles"][:-1]
    (other / "vocab.json").write_text(json.dumps(vocab))
    m = runs.read_manifest(Path("runs/student"))
    with pytest.raises(ArtifactError, match="another label list"):
        runs.check_matches_artifact(m, Artifact(other), Path("runs/student"))


def test_checkpoint_round_trip_reproduces_test_metrics(trained):
    """Reloading model.safetensors through the manifest gives exactly the metrics the run recorded."""
    import numpy as np

    from leadercli import metrics
    from leadercli.data.artifact import Artifact
    from leadercli.data.samples import load_samples
    from leadercli.runs import load_run
    from leadercli.training.loop import score

    run = load_run(Path("runs/student"))
    model, encoder, manifest = run.module, run.encoder, run.manifest
    art = Artifact(Path("data/mimic3"))
    s = score(model, encoder.encode_all(load_samples(art, "test")), encoder, 64, torch.device("cpu"))
    got = float(metrics.prauc(s["labels"], s["probs"]).mean())
    want = manifest["metrics"]["test"]["overall"]["point"]["prauc"]
    assert np.isclose(got, want, rtol=0, atol=1e-12)


def test_manifest_records_artifact_hashes(trained):
    from leadercli.data.artifact import Artifact

    m = json.loads(Path("runs/student/manifest.json").read_text())
    art = Artifact(Path("data/mimic3"))
    assert m["artifact"]["vocab_hash"] == art.vocab_hash
    assert m["artifact"]["content_hash"] == art.content_hash and len(art.content_hash) == 16
