"""A run scores the same everywhere (issue 20 item 4): `leader report RUN`, `leader report --predictions`,
`leader predict` and `Recommender.predict` give the same scores for the same run and patients, the unknown-code
shrink (`predict.unknown_shrink`, the run's `Scorer`) included — for a student and for a teacher.

Tiny data: the synthetic artifact with unknown codes put into the test patients' target visits (one patient's
codes all unknown, five with one unknown code among known ones), so the shrink changes their scores."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from typer.testing import CliRunner

from leadercli.cli.main import app
from leadercli.report import timing

runner = CliRunner()
RUNS = ("student", "teacher")
ATOL = 1e-5  # float32 scores of one run agree to ~1e-7 between batchings; the teacher pads prompts per batch


def invoke(*args: str):
    r = runner.invoke(app, list(args))
    assert r.exit_code == 0, r.output
    return r


def _add_unknown_codes(artifact: Path) -> list[int]:
    """Unknown codes in the target visits of six test patients; returns those patients."""
    visits = pl.read_parquet(artifact / "visits.parquet")
    test = pl.read_parquet(artifact / "patients.parquet").filter(pl.col("split") == "test")["subject_id"]
    chosen = sorted(test.to_list())[:6]
    last = visits.group_by("subject_id").agg(pl.col("visit_no").max().alias("last"))
    visits = visits.join(last, on="subject_id")
    target = pl.col("subject_id").is_in(chosen) & (pl.col("visit_no") == pl.col("last"))
    alone = pl.col("subject_id") == chosen[0]
    visits = visits.with_columns(
        pl.when(target & alone)
        .then(pl.lit(["D9:ZZZ01", "D9:ZZZ02"]))
        .when(target)
        .then(pl.col("diagnoses").list.concat(pl.lit(["D9:ZZZ01"])))
        .otherwise(pl.col("diagnoses"))
        .alias("diagnoses"),
        pl.when(target & alone).then(pl.lit(["P9:ZZZ9"])).otherwise(pl.col("procedures")).alias("procedures"),
    ).drop("last")
    visits.write_parquet(artifact / "visits.parquet")
    return chosen


@pytest.fixture(scope="module")
def work(tiny_artifact: Path, tmp_path_factory) -> tuple[Path, list[int]]:
    from tiny_llama import make_tiny_llama

    root = tmp_path_factory.mktemp("same_scores")
    shutil.copytree(tiny_artifact, root / "data" / "mimic3")
    chosen = _add_unknown_codes(root / "data" / "mimic3")
    llama = make_tiny_llama(root / "tiny-llama")
    (root / "leader.toml").write_text(
        f'[teacher]\nbase_model = "{llama}"\nmax_steps = 0\n\n'
        "[student]\nepochs = 1\nhidden = 16\nheads = 2\nff = 32\nhead_hidden = 32\n\n"
        "[report]\nbootstrap_rounds = 20\nlatency_repeats = 1\n"
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.setattr(timing, "MIN_TIMED_SECONDS", 0.0)
        invoke("train", "teacher", "-q")
        invoke("train", "student", "-q")
        for run in RUNS:
            invoke("report", f"runs/{run}", "-o", f"report-{run}", "-q")
            m = str(len(json.loads((root / "runs" / run / "manifest.json").read_text())["labels"]))
            args = ("data/mimic3/visits.parquet", "-o", f"recs-{run}.parquet", "--top-k", m)
            invoke("predict", *args, "--model", f"runs/{run}", "-q")
            invoke("report", "--predictions", f"recs-{run}.parquet", "-o", f"report-pred-{run}", "-q")
    return root, chosen


def _matrix(recs: pl.DataFrame, subjects: list[int], labels: list[str]) -> np.ndarray:
    """Rows of a predict table → (N, M) scores in subject and label order."""
    col = {c: j for j, c in enumerate(labels)}
    row = {s: i for i, s in enumerate(subjects)}
    out = np.full((len(subjects), len(labels)), np.nan)
    for s, a, v in recs.select("subject_id", "atc3", "score").iter_rows():
        if s in row:
            out[row[s], col[a]] = v
    return out


@pytest.mark.parametrize("run", RUNS)
def test_report_predict_and_api_give_the_same_scores(work, run, monkeypatch):
    from leadercli import Recommender
    from leadercli.data.artifact import Artifact
    from leadercli.report.score_runs import score_run, test_samples
    from leadercli.runs import load_run
    from leadercli.settings import load_settings

    root, chosen = work
    monkeypatch.chdir(root)
    settings = load_settings(None)
    artifact = Artifact(root / "data" / "mimic3")
    scorer = load_run(root / "runs" / run, unknown_shrink=settings.predict.unknown_shrink)
    assert scorer.shrinks and scorer.unknown_shrink == 3.0  # the setting's default
    samples = test_samples(artifact, scorer.max_visits, False)
    subjects = [s.subject_id for s in samples]
    # `leader report RUN` scores through `score_run`
    reported = score_run(scorer, samples, settings.report).probs.astype(np.float64)  # (N, M)
    predicted = _matrix(pl.read_parquet(f"recs-{run}.parquet"), subjects, scorer.labels)
    visits = pl.read_parquet(root / "data/mimic3/visits.parquet")
    api = Recommender.load(root / "runs" / run).predict(visits, top_k=len(scorer.labels))
    from_api = _matrix(api, subjects, scorer.labels)
    assert not np.isnan(predicted).any() and not np.isnan(from_api).any()
    np.testing.assert_allclose(predicted, reported, rtol=0, atol=ATOL)
    np.testing.assert_allclose(from_api, reported, rtol=0, atol=ATOL)

    # the shrink moved the scores of exactly the patients with unknown codes, to the formula's values
    raw = score_run(load_run(root / "runs" / run, unknown_shrink=0.0), samples, settings.report).probs
    moved = np.abs(reported - raw).max(1) > 1e-6  # (N,)
    voc = scorer.vocab
    unknown = [
        s.subject_id
        for s in samples
        if any(c not in voc.diagnoses.index for c in s.target.diagnoses)
        or any(c not in voc.procedures.index for c in s.target.procedures)
    ]
    assert set(chosen) <= set(unknown)  # and the synthetic cohort's own unseen codes
    assert sorted(np.asarray(subjects)[moved].tolist()) == sorted(unknown)
    prior = scorer.prior().numpy()
    i = subjects.index(chosen[0])  # all codes unknown: w = min(1, 3 · 1) = 1, the training frequencies
    np.testing.assert_allclose(reported[i], prior, rtol=0, atol=1e-6)

    # `leader report RUN` and `leader report --predictions` of the same run: the same metrics
    by_run = json.loads((root / f"report-{run}" / "metrics.json").read_text())["runs"][0]
    by_file = json.loads((root / f"report-pred-{run}" / "metrics.json").read_text())["runs"][0]
    assert by_run["unknown_shrink"] == 3.0
    for group in ("overall", "single", "multi"):
        a, b = by_run["groups"][group]["point"], by_file["groups"][group]["point"]
        for metric in ("prauc", "jaccard", "f1", "ddi_rate", "avg_drugs"):
            if a.get(metric) is not None:
                assert b[metric] == pytest.approx(a[metric], abs=1e-6), (group, metric)
    meta = json.loads((root / f"recs-{run}.parquet.meta.json").read_text())
    assert meta["unknown_shrink"] == 3.0


def test_predict_warning_says_what_the_kind_does(work, monkeypatch):
    root, _ = work
    monkeypatch.chdir(root)
    r = invoke("predict", "data/mimic3/visits.parquet", "-o", "warn.csv", "--model", "runs/teacher")
    text = " ".join(r.output.split())
    assert "mostly unknown to the teacher run" in text
    assert "names them by their titles" in text and "training drug frequencies" in text
    assert "drug frequencies the model learned" not in text
