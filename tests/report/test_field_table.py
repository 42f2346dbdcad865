"""The paper's table of `leader report RUN...` (issue 22 item 4): its columns pinned, the best baseline and the
paired difference to it, training time from the manifests, inference patients/s, the no-history treatment of
every kind, in metrics.json, report.md, report.html and on the 80-column terminal."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from leadercli import kinds
from leadercli.cli.main import app
from leadercli.report import table, timing

runner = CliRunner()

TOML = """[student]
epochs = 2
batch_size = 8
hidden = 16
heads = 2
ff = 32
head_hidden = 32
[retain]
emb_dim = 16
alpha_hidden = 16
beta_hidden = 16
"""


@pytest.fixture(scope="module")
def work(tiny_artifact: Path, tmp_path_factory) -> Path:
    """runs/student (2 tiny epochs), runs/retain, runs/popularity, and report/ on the three."""
    root = tmp_path_factory.mktemp("field_table")
    (root / "leader.toml").write_text(f'[paths]\nartifact = "{tiny_artifact}"\n' + TOML)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.setattr(timing, "MIN_TIMED_SECONDS", 0.02)  # keep the timing loop short on the shared CPU
        for model in ("student", "retain", "popularity"):
            r = runner.invoke(app, ["train", "student", "-q", "--model", model, "--out", f"runs/{model}"])
            assert r.exit_code == 0, r.output
        r = runner.invoke(app, ["report", "runs/student", "runs/retain", "runs/popularity", "-q"])
        assert r.exit_code == 0, r.output
        (root / "stdout.txt").write_text(r.stdout)
    return root


def test_the_tables_columns_are_pinned():
    assert table.GROUP_HEADER == [
        "Model",
        "PRAUC",
        "Jaccard",
        "F1",
        "DDI rate",
        "#drugs",
        "Δ PRAUC vs best baseline",
    ]
    assert table.COST_HEADER == ["Model", "Parameters", "Training time", "Patients / s", "Without history"]
    assert list(table.GROUPS) == ["overall", "single", "multi"]


def test_table_block_rows_and_best_baseline(work: Path):
    report = json.loads((work / "report/metrics.json").read_text())
    t = report["table"]
    assert [r["kind"] for r in t["rows"]] == [
        "popularity",
        "retain",
        "student",
    ]  # baselines first, LEADER last
    assert [r["model"] for r in t["rows"]] == ["Popularity", "RETAIN", "Student (no KD)"]
    assert t["metrics"] == ["prauc", "jaccard", "f1", "ddi_rate", "avg_drugs"]
    runs = {r["name"]: r for r in report["runs"]}
    points = {n: runs[n]["groups"]["overall"]["point"]["prauc"] for n in ("retain", "popularity")}
    best = max(points, key=points.get)
    assert t["best_baseline"] == report["comparison"]["best_baseline"] == best
    for row in t["rows"]:
        run = runs[row["name"]]
        for g in table.GROUPS:
            for key in t["metrics"]:
                cell, grp = row["groups"][g][key], run["groups"][g]
                assert cell["value"] == grp["point"][key]
                assert cell["lo"] == grp["bootstrap"][key]["lo"] and cell["hi"] == grp["bootstrap"][key]["hi"]
        if row["name"] == best:
            assert row["vs_baseline"] is None
            continue
        for g in table.GROUPS:
            d = row["vs_baseline"][g]
            assert d["diff"] == pytest.approx(
                run["groups"][g]["point"]["prauc"] - runs[best]["groups"][g]["point"]["prauc"]
            )
            assert d["lo"] <= d["hi"]


def test_cost_columns_from_manifests_and_timing(work: Path):
    report = json.loads((work / "report/metrics.json").read_text())
    rows = {r["name"]: r for r in report["table"]["rows"]}
    for name in ("student", "retain", "popularity"):
        m = json.loads((work / "runs" / name / "manifest.json").read_text())
        assert m["training"]["seconds"] >= 0
        assert rows[name]["training_seconds"] == pytest.approx(m["training"]["seconds"])
        assert rows[name]["parameters"] == (m["parameters"]["total"] if name != "popularity" else 0)
        assert rows[name]["patients_per_s"] > 0
    log = [json.loads(x) for x in (work / "runs/student/train_log.jsonl").read_text().splitlines()]
    assert rows["student"]["training_seconds"] == pytest.approx(sum(r["seconds"] for r in log))
    retain = json.loads((work / "runs/retain/manifest.json").read_text())
    assert rows["retain"]["no_history"] == retain["training"]["no_history"]
    assert rows["student"]["no_history"] == kinds.BY_NAME["student"].no_history
    assert rows["popularity"]["no_history"] == kinds.BY_NAME["popularity"].no_history


def test_every_kind_says_how_it_treats_a_first_visit():
    for k in kinds.ROWS:
        if k.name in kinds.FIELD_MODELS:
            continue  # their model class says it, in the manifest (tests/training/test_field_recipe.py)
        assert table.no_history(k.name, None) == k.no_history and k.no_history
        assert k.label
    assert table.no_history("retain", {"training": {"no_history": "reads the visit"}}) == "reads the visit"
    assert table.training_seconds("teacher", {"training": {"seconds": 2.0, "head_seconds": 3.0}}) == 5.0
    assert table.training_seconds("student", {"training": {"seconds": 2.0, "head_seconds": 3.0}}) == 2.0
    assert table.training_seconds("student", {}) is None


def test_markdown_html_and_terminal(work: Path):
    md = (work / "report/report.md").read_text()
    html = (work / "report/report.html").read_text()
    header = "| " + " | ".join(table.GROUP_HEADER) + " |"
    assert md.count(header) == 3  # overall, single-visit, multi-visit
    assert "| " + " | ".join(table.COST_HEADER) + " |" in md
    for title in ("### Overall (12 patients)", "### Single-visit patients", "### Multi-visit patients"):
        assert title in md
    assert "| RETAIN | " in md and "best baseline" in md
    assert html.count("<th>Δ PRAUC vs best baseline</th>") == 3
    terminal = (work / "stdout.txt").read_text()
    assert max(len(line) for line in terminal.splitlines() if not line.startswith("- ")) <= 80
    for text in ("Overall: 12 test patients", "Single-visit patients", "Multi-visit patients", "Patients/s"):
        assert text in terminal
    assert "How each model treats a patient without history" in terminal and "Student (no KD)" in terminal
