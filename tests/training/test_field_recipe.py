"""`leader train student --model retain|gamenet|micron|logreg|raremed` end to end on the tiny artifact: run
folder and manifest, save → load_run → the recorded scores, predict (with --max-ddi-pairs) and report over every
kind, resume equals an uninterrupted run, same seed same weights."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from leadercli import runs
from leadercli.cli.main import app
from leadercli.models.field_build import FIELD_KINDS

runner = CliRunner()

TOML = """[student]
epochs = 2
batch_size = 8
[retain]
emb_dim = 16
alpha_hidden = 16
beta_hidden = 16
[gamenet]
emb_dim = 16
[micron]
emb_dim = 16
[raremed]
emb_dim = 16
layers = 1
heads = 2
ff = 32
pretrain_epochs = 1
"""


def _workdir(root: Path, tiny_artifact: Path) -> Path:
    shutil.copytree(tiny_artifact, root / "data" / "mimic3")
    (root / "leader.toml").write_text(TOML)
    return root


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_artifact):
    """Every field kind trained once (module-scoped: the runs are shared by the tests below)."""
    wd = _workdir(tmp_path_factory.mktemp("field"), tiny_artifact)
    old = os.getcwd()
    os.chdir(wd)
    try:
        for kind in FIELD_KINDS:
            r = runner.invoke(app, ["train", "student", "-q", "--model", kind, "--out", f"runs/{kind}"])
            assert r.exit_code == 0, (kind, r.output)
        yield wd
    finally:
        os.chdir(old)


@pytest.mark.parametrize("kind", FIELD_KINDS)
def test_run_folder_and_manifest(trained, kind):
    out = trained / "runs" / kind
    for name in ("model.safetensors", "manifest.json", "train_log.jsonl", "vocab.json"):
        assert (out / name).is_file(), name
    assert not (out / "checkpoint").exists()
    m = json.loads((out / "manifest.json").read_text())
    assert m["kind"] == kind and m["model_config"]["n_labels"] == 12
    assert m["parameters"]["total"] > 0 and 0 < m["threshold"]["value"] < 1
    assert m["training"]["lr"] > 0 and m["training"]["optimizer"] in ("adam", "adamw", "rmsprop")
    assert m["training"]["no_history"]  # the report says how each model treats a first visit
    test = m["metrics"]["test"]
    assert test["single"]["n"] > 0 and test["overall"]["n"] == test["single"]["n"] + test["multi"]["n"]
    log = [r for r in runs.read_log(out) if "epoch" in r]
    assert [r["epoch"] for r in log] == [1, 2]
    if kind == "raremed":
        assert {r["pretrain"] for r in runs.read_log(out) if "pretrain" in r} == {"smp", "sr"}


@pytest.mark.parametrize("kind", FIELD_KINDS)
def test_load_run_gives_the_recorded_scores(trained, kind):
    from leadercli import metrics
    from leadercli.data.artifact import Artifact
    from leadercli.data.samples import load_samples
    from leadercli.training.loop import score

    run = runs.load_run(trained / "runs" / kind)
    art = Artifact(trained / "data" / "mimic3")
    enc = run.encoder
    s = score(run.module, enc.encode_all(load_samples(art, "test")), enc, 64, torch.device("cpu"))
    got = float(metrics.prauc(s["labels"], s["probs"]).mean())
    want = run.manifest["metrics"]["test"]["overall"]["point"]["prauc"]
    assert np.isclose(got, want, rtol=0, atol=1e-12)


@pytest.mark.parametrize("kind", FIELD_KINDS)
def test_predict_scores_every_patient(trained, kind):
    import polars as pl

    os.chdir(trained)
    r = runner.invoke(
        app,
        ["predict", "data/mimic3/visits.parquet", "-o", f"{kind}.csv", "--model", f"runs/{kind}"]
        + ["--top-k", "3", "--max-ddi-pairs", "0", "-q"],
    )
    assert r.exit_code == 0, r.output
    df = pl.read_csv(f"{kind}.csv")
    visits = pl.read_parquet("data/mimic3/visits.parquet")
    assert df["subject_id"].n_unique() == visits["subject_id"].n_unique()  # single-visit patients too
    assert df["score"].is_finite().all()


def test_report_over_every_kind(trained):
    os.chdir(trained)
    r = runner.invoke(
        app, ["report", *[f"runs/{k}" for k in FIELD_KINDS], "-o", "rep", "--format", "json", "-q"]
    )
    assert r.exit_code == 0, r.output
    text = (trained / "rep" / "report.md").read_text()
    for kind in FIELD_KINDS:
        assert kind in text


def test_resume_equals_uninterrupted(tmp_path, tiny_artifact, monkeypatch):
    """GAMENet: the annealed DDI temperature and the optimizer state survive an interruption."""
    wd = _workdir(tmp_path, tiny_artifact)
    (wd / "leader.toml").write_text(TOML.replace("epochs = 2", "epochs = 3"))
    monkeypatch.chdir(wd)
    args = ["train", "student", "-q", "--model", "gamenet", "--out"]
    assert runner.invoke(app, [*args, "runs/full"]).exit_code == 0
    real, calls = runs.append_log, {"n": 0}

    def crash_after_two(out, record):
        real(out, record)
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(runs, "append_log", crash_after_two)
    assert runner.invoke(app, [*args, "runs/resumed"]).exit_code == 130
    monkeypatch.setattr(runs, "append_log", real)
    r = runner.invoke(app, [*args, "runs/resumed", "--resume"])
    assert r.exit_code == 0, r.output
    a, b = (
        load_file(str(wd / "runs/full/model.safetensors")),
        load_file(str(wd / "runs/resumed/model.safetensors")),
    )
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("kind", ["gamenet", "raremed"])
def test_export_and_recommender(trained, kind):
    """The exported copy scores as the run does (graphs are buffers: no artifact needed)."""
    import polars as pl

    from leadercli import Recommender

    os.chdir(trained)
    r = runner.invoke(app, ["export", f"runs/{kind}", "--out", f"exported-{kind}", "-q"])
    assert r.exit_code == 0, r.output
    visits = pl.read_parquet("data/mimic3/visits.parquet")
    a = Recommender.load(f"runs/{kind}").predict(visits)
    b = Recommender.load(f"exported-{kind}").predict(visits)
    assert a.equals(b) and a["subject_id"].n_unique() == visits["subject_id"].n_unique()


@pytest.mark.parametrize(
    "setting, words",
    [
        ("raremed.heads=3", "raremed.emb_dim 512 is not divisible"),
        ("micron.remove_threshold=0.9", "is above"),
    ],
)
def test_bad_field_settings_fail_before_any_output(tmp_path, tiny_artifact, monkeypatch, setting, words):
    wd = _workdir(tmp_path, tiny_artifact)
    (wd / "leader.toml").write_text("")
    monkeypatch.chdir(wd)
    kind = setting.split(".")[0]
    r = runner.invoke(app, ["train", "student", "--model", kind, "--set", setting, "--out", "runs/bad"])
    assert r.exit_code == 2 and words in r.output
    assert not (wd / "runs" / "bad").exists()
