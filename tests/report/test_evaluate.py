"""The report's judgements on synthetic scores, without runs: paired comparison with the best run, the
popularity floor and its marks in every output, over-prediction, the DDI trade-off, the 80-column terminal."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from leadercli.report import evaluate, render

RCFG = SimpleNamespace(bootstrap_rounds=1000, seed=42, bootstrap_fraction=None)
SETTINGS = SimpleNamespace(report=RCFG, samples=SimpleNamespace(per_visit=False))
PAIRS = np.array([[0, 1], [2, 3], [1, 2]])


def _data(n: int = 400, m: int = 10, seed: int = 0):
    rng = np.random.default_rng(seed)
    y = rng.random((n, m)) < np.linspace(0.6, 0.05, m)  # drug 0 common, drug 9 rare
    freq = y[: n // 2].mean(0)
    good = np.clip(0.55 * y + 0.45 * rng.random((n, m)), 0, 1)
    n_visits = rng.integers(1, 4, n)
    return y, freq, good, n_visits, rng


def _report(named: dict[str, tuple[np.ndarray, float]], y, n_visits, floor: str = "popularity") -> dict:
    entries, reps = [], []
    for name, (probs, th) in named.items():
        e, r = evaluate.evaluate_scores(name, y, probs, n_visits, {"value": th, "how": "test"}, PAIRS, RCFG)
        e["kind"] = "popularity" if name == floor else "student"
        entries.append(e)
        reps.append(r)
    comparison = evaluate.compare(entries, reps, list(named).index(floor))
    artifact = {"path": "a", "source": "mimic4", "n_labels": y.shape[1], "vocab_hash": "h", "from": "test"}
    report = evaluate.header("test", "now", artifact, y, n_visits, PAIRS, SETTINGS)
    report.update({"runs": entries, "comparison": comparison, "efficiency": None})
    return report


def test_compare_best_twin_and_floor():
    y, freq, good, nv, rng = _data()
    pop = np.broadcast_to(freq, y.shape)
    twin = np.clip(good + rng.normal(0, 1e-4, good.shape), 0, 1)
    worse = np.broadcast_to(1 - freq, y.shape)
    report = _report(
        {"good": (good, 0.5), "twin": (twin, 0.5), "popularity": (pop, 0.3), "worse": (worse, 0.5)}, y, nv
    )
    runs = {r["name"]: r for r in report["runs"]}
    best = report["comparison"]["best"]
    assert best in ("good", "twin")
    other = "twin" if best == "good" else "good"
    d = runs[other]["vs_best"]["groups"]["overall"]["prauc"]
    assert not d["distinguishable"] and d["lo"] <= 0 <= d["hi"]
    assert runs["popularity"]["vs_best"]["groups"]["overall"]["prauc"]["distinguishable"]
    assert runs["good"]["vs_floor"]["status"] == "above" and runs["good"]["vs_floor"]["beats"]
    assert runs["worse"]["vs_floor"]["status"] == "below" and not runs["worse"]["vs_floor"]["beats"]
    assert runs["popularity"]["vs_floor"] is None
    assert report["comparison"]["floor"]["not_beating"] == ["worse"]
    # every group is compared, the per-group differences are paired too
    assert set(runs["worse"]["vs_best"]["groups"]) == {"overall", "single", "multi"}
    # marks: markdown, html (same blocks) and the terminal call-outs
    md = render.markdown(report, [])
    html = render.html(report, [], None)
    notes = "\n".join(render.notes(report))
    for text in (md, html, notes):
        assert "worse does not beat the popularity floor" in text
        assert "good does not beat" not in text
    assert "| worse ▼ |" in md
    assert f"{other} and {best} are not distinguishable" in notes


def test_a_run_equal_to_the_floor_does_not_beat_it():
    y, freq, _, nv, _ = _data()
    pop = np.broadcast_to(freq, y.shape)
    report = _report({"copy": (pop.copy(), 0.3), "popularity": (pop, 0.3)}, y, nv)
    vf = report["runs"][0]["vs_floor"]
    assert vf["diff"] == 0.0 and not vf["beats"] and vf["status"] == "below"


def test_small_groups_and_over_prediction_are_called_out():
    y, freq, good, nv, _ = _data(n=150)
    nv[:] = 2
    nv[:30] = 1  # 30 single-visit patients: a small group
    everything = np.full(y.shape, 0.9)  # threshold 0.5 selects all 10 drugs
    report = _report(
        {"good": (good, 0.5), "all": (everything, 0.5), "popularity": (np.broadcast_to(freq, y.shape), 0.3)},
        y,
        nv,
    )
    assert report["samples"]["small_groups"] == ["single"]
    runs = {r["name"]: r for r in report["runs"]}
    assert runs["all"]["groups"]["single"]["small"] and not runs["all"]["groups"]["overall"]["small"]
    sel = runs["all"]["selection"]
    assert (
        sel["avg_selected"] == 10 and sel["verdict"] == "over-predicts" and sel["drugs_ever_selected"] == 10
    )
    assert sel["ratio"] == pytest.approx(10 / y.sum(1).mean())
    notes = render.notes(report)
    assert any("fewer than 100 patients in single-visit (30)" in n for n in notes)
    assert any(n.startswith("all over-predicts: 10.0 drugs selected per patient") for n in notes)
    md = render.markdown(report, [])
    assert "30 †" in md and "150 †" not in md


def test_ddi_tradeoff_monotone_and_zero_at_n0():
    y, _, good, _, _ = _data(n=300)
    th = 0.3  # many drugs selected: interacting pairs occur
    t = evaluate.ddi_tradeoff(y, good, th, PAIRS)
    assert [p["max_pairs"] for p in t] == [0, 1, 2, None]
    assert t[-1]["ddi_rate"] > 0
    assert t[0]["ddi_rate"] == 0.0 and t[0]["avg_interacting_pairs"] == 0.0
    for a, b in zip(t, t[1:], strict=False):
        assert a["avg_drugs"] <= b["avg_drugs"] and a["ddi_rate"] <= b["ddi_rate"]
        assert a["avg_interacting_pairs"] <= b["avg_interacting_pairs"]
    from leadercli import metrics

    pred = metrics.binarize(good, th)
    assert t[-1]["jaccard"] == pytest.approx(metrics.jaccard(y, pred).mean())
    assert t[-1]["ddi_rate"] == pytest.approx(metrics.ddi_rate(pred, PAIRS))
    # no DDI pairs at all: every cap is the plain selection
    flat = evaluate.ddi_tradeoff(y, good, th, np.zeros((0, 2), int))
    assert len({(p["jaccard"], p["avg_drugs"]) for p in flat}) == 1


def test_terminal_rows_fit_80_columns():
    from rich.console import Console

    from leadercli.cli import report as cli_report

    y, freq, good, nv, _ = _data()
    report = _report(
        {"distilled-long-name": (good, 0.5), "popularity": (np.broadcast_to(freq, y.shape), 0.3)}, y, nv
    )
    report["output"] = "report"
    console = Console(width=80, record=True, file=open("/dev/null", "w"))  # noqa: SIM115
    import leadercli.console as lc

    saved, lc.out = lc.out, console
    try:
        cli_report.print_tables(report)
    finally:
        lc.out = saved
    text = console.export_text()
    assert "±" in text and "[" in text and "DDI trade-off" in text
    table_lines = [line for line in text.splitlines() if not line.startswith("- ")]
    assert max(len(line) for line in table_lines) <= 80


def test_removed_bootstrap_fraction_is_ignored_and_said_so():
    y, freq, good, nv, _ = _data(n=120)
    old = SimpleNamespace(
        report=SimpleNamespace(bootstrap_rounds=50, seed=1, bootstrap_fraction=0.8), samples=SETTINGS.samples
    )
    artifact = {"path": "a", "source": "mimic4", "n_labels": y.shape[1], "vocab_hash": "h", "from": "test"}
    h = evaluate.header("test", "now", artifact, y, nv, PAIRS, old)
    assert "report.bootstrap_fraction = 0.8 is ignored" in h["bootstrap"]["ignored"]
    assert "ignored" not in evaluate.header("test", "now", artifact, y, nv, PAIRS, SETTINGS)["bootstrap"]
