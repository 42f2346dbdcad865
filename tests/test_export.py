"""Model cards and `leader export` (issue 13 item 5): valid Hub metadata without local paths, and a shareable copy
without patient-level data that loads and predicts like the original."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from leadercli.cli.main import app

runner = CliRunner()
TOML = "[student]\nepochs = 1\nbatch_size = 16\nhidden = 16\nff = 32\n"


@pytest.fixture(scope="module")
def wd(tmp_path_factory, tiny_artifact) -> Path:
    from tiny_llama import make_tiny_llama

    wd = tmp_path_factory.mktemp("export")
    shutil.copytree(tiny_artifact, wd / "data" / "mimic3")
    for name in ("visits.parquet", "patients.parquet"):  # ids that no setting or count can look like
        path = wd / "data" / "mimic3" / name
        pl.read_parquet(path).with_columns(pl.col("subject_id") + 7_340_011).write_parquet(path)
    make_tiny_llama(wd / "llama")
    (wd / "leader.toml").write_text(
        TOML + f'[teacher]\nbase_model = "{wd / "llama"}"\nmax_steps = 2\neval_every = 2\nbatch_size = 4\n'
    )
    cwd = os.getcwd()
    os.chdir(wd)
    try:
        for args in (["train", "student", "-q"], ["train", "teacher", "-q"]):
            r = runner.invoke(app, args)
            assert r.exit_code == 0, r.output
    finally:
        os.chdir(cwd)
    return wd


def _card(path: Path):
    from huggingface_hub import ModelCard

    return ModelCard(path.read_text())


@pytest.mark.parametrize("kind", ["student", "teacher"])
def test_card_metadata_is_valid_and_has_no_local_path(wd, kind, monkeypatch):
    monkeypatch.chdir(wd)
    if kind == "teacher":
        r = runner.invoke(app, ["export", "runs/teacher", "--out", "share/teacher", "-q"])
        assert r.exit_code == 0, r.output
        path = wd / "share/teacher/README.md"
    else:
        path = wd / "runs/student/README.md"  # written with the run
    card = _card(path)
    data = card.data.to_dict()
    assert data["library_name"] == "leadercli" and "medication-recommendation" in data["tags"]
    assert "base_model" not in data or not str(data["base_model"]).startswith("/")
    text = path.read_text()
    assert str(wd) not in text and "/tmp" not in text
    assert "## Metrics" in text and "## Intended use" in text and "## Limitations" in text and "MIMIC" in text
    assert "[" in text  # intervals


def test_export_has_no_patient_level_data_and_predicts_the_same(wd, monkeypatch):
    from leadercli import Recommender

    monkeypatch.chdir(wd)
    r = runner.invoke(app, ["export", "runs/student", "--out", "share/student", "-q"])
    assert r.exit_code == 0, r.output
    out = wd / "share/student"
    assert not (out / "features").exists() and not (out / "checkpoint").exists()
    subjects = {str(s) for s in pl.read_parquet(wd / "data/mimic3/patients.parquet")["subject_id"].to_list()}
    for f in out.rglob("*"):
        if f.suffix in (".json", ".toml", ".md", ".jsonl"):
            text = f.read_text()
            assert str(wd) not in text, f
            tokens = set(text.replace('"', " ").replace(",", " ").split())
            assert not (tokens & subjects), f"subject id in {f.name}"
    visits = pl.read_parquet(wd / "data/mimic3/visits.parquet")
    a = Recommender.load(wd / "runs/student").predict(visits)
    b = Recommender.load(out).predict(visits)
    assert a.equals(b)


def test_teacher_export_leaves_out_features_and_local_paths(wd, monkeypatch):
    import json

    monkeypatch.chdir(wd)
    assert (wd / "runs/teacher/features").is_dir()
    r = runner.invoke(app, ["export", "runs/teacher", "--out", "share/t2", "-q"])
    assert r.exit_code == 0, r.output
    out = wd / "share/t2"
    assert not (out / "features").exists()
    cfg = json.loads((out / "adapter/adapter_config.json").read_text())
    assert not str(cfg["base_model_name_or_path"]).startswith("/")
    m = json.loads((out / "manifest.json").read_text())
    assert "path" not in m["artifact"] and m["exported"] is True


@pytest.mark.parametrize(
    "args, needle",
    [
        (["export", "runs/student", "--out", "runs/student/x"], "inside the run folder"),
        (["export", "data/mimic3", "--out", "share/x"], "not a"),
        (["export", "runs/student", "--out", "data/mimic3"], "not an earlier export"),
    ],
)
def test_bad_export_is_one_line(wd, monkeypatch, args, needle):
    monkeypatch.chdir(wd)
    r = runner.invoke(app, args)
    assert r.exit_code == 2, r.output
    assert needle in r.output and "Traceback" not in r.output
    assert not Path("share/x").exists() and (wd / "data/mimic3/manifest.json").is_file()
