"""`leader report` end to end on the tiny synthetic artifact: a 2-epoch student and the popularity baseline are
trained through the CLI, reported on, and the numbers in metrics.json are checked against values computed
here independently (polars on the artifact's parquet files, scikit-learn's average precision)."""

from __future__ import annotations

import base64
import importlib.util
import json
import shutil
from itertools import combinations
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from sklearn.metrics import average_precision_score
from typer.testing import CliRunner

from leadercli.cli.main import app
from leadercli.report import timing

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[2]
PLOTS = {
    "metrics.png",
    "drug_counts.png",
    "per_drug_f1.png",
    "ddi_rate.png",
    "ddi_tradeoff.png",
    "latency.png",
    "reliability.png",
}


def invoke(*args: str):
    return runner.invoke(app, list(args))


@pytest.fixture(scope="module")
def work(tiny_artifact: Path, tmp_path_factory) -> Path:
    """A working folder with leader.toml, runs/teacher (tiny random LLaMA, 2 steps), runs/student (2 epochs,
    tiny), runs/popularity, and report/ on the three."""
    from tiny_llama import make_tiny_llama

    root = tmp_path_factory.mktemp("report_work")
    llama = make_tiny_llama(root / "tiny-llama")
    (root / "leader.toml").write_text(
        f'[paths]\nartifact = "{tiny_artifact}"\n\n'
        f'[teacher]\nbase_model = "{llama}"\nmax_steps = 2\n\n'
        "[student]\nepochs = 2\nhidden = 16\nheads = 2\nff = 32\nhead_hidden = 32\n"
        '[calibration]\nmethod = "temperature"\n'
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.setattr(timing, "MIN_TIMED_SECONDS", 0.02)  # keep the timing loop short on the shared CPU
        for args in (
            ("train", "teacher", "-q"),
            ("train", "student", "-q"),
            ("train", "student", "--model", "popularity", "--out", "runs/popularity", "-q"),
        ):
            r = invoke(*args)
            assert r.exit_code == 0, r.output
        make_worse_run(root / "runs/popularity", root / "runs/worse")
        r = invoke("report", "runs/teacher", "runs/student", "runs/popularity", "runs/worse", "-q")
        assert r.exit_code == 0, r.output
        (root / "stdout.txt").write_text(r.stdout)
    return root


def make_worse_run(src: Path, dst: Path) -> None:
    """A copy of the popularity run that ranks drugs by 1 − frequency: clearly below the popularity floor."""
    from safetensors.torch import load_file, save_file

    shutil.copytree(src, dst)
    state = load_file(str(dst / "model.safetensors"))
    state["freq"] = 1.0 - state["freq"]
    save_file(state, str(dst / "model.safetensors"))


@pytest.fixture()
def in_work(work: Path, monkeypatch) -> Path:
    monkeypatch.chdir(work)
    monkeypatch.setattr(timing, "MIN_TIMED_SECONDS", 0.02)
    return work


def truth(artifact: Path) -> dict:
    """Independent ground truth from the parquet files: test patients' last-visit drugs, n_visits, and the
    popularity model's scores (share of training patients whose last visit has the drug)."""
    labels = json.loads((artifact / "vocab.json").read_text())["medications"]["codes"]
    patients = pl.read_parquet(artifact / "patients.parquet")
    last = pl.read_parquet(artifact / "visits.parquet").sort("visit_no").group_by("subject_id").last()
    joined = patients.join(last.select("subject_id", "medications"), on="subject_id").sort("subject_id")

    def multi_hot(df: pl.DataFrame) -> np.ndarray:
        return np.asarray([[c in set(m) for c in labels] for m in df["medications"].to_list()])

    test = joined.filter(pl.col("split") == "test")
    train = joined.filter(pl.col("split") == "train")
    return {
        "labels": labels,
        "y_test": multi_hot(test),
        "n_visits": test["n_visits"].to_numpy(),
        "freq": multi_hot(train).mean(0).astype(np.float32),
        "n_other": patients.height - test.height,
    }


def truth_ids(artifact: Path) -> list[int]:
    """Test subjects in ascending order (the order of `truth`)."""
    patients = pl.read_parquet(artifact / "patients.parquet")
    return sorted(patients.filter(pl.col("split") == "test")["subject_id"].to_list())


def run_entry(report: dict, name: str) -> dict:
    return next(r for r in report["runs"] if r["name"] == name)


def test_metrics_match_independent_computation(work: Path, tiny_artifact: Path) -> None:
    report = json.loads((work / "report" / "metrics.json").read_text())
    t = truth(tiny_artifact)
    n = len(t["y_test"])
    assert [r["name"] for r in report["runs"]] == ["teacher", "student", "popularity", "worse"]
    assert [r["kind"] for r in report["runs"]] == ["teacher", "student", "popularity", "popularity"]
    assert report["artifact"]["path"] == str(tiny_artifact.resolve())
    assert report["samples"]["n"] == n == 12
    single = int((t["n_visits"] == 1).sum())
    assert report["samples"]["groups"] == {"overall": n, "single": single, "multi": n - single}
    assert report["bootstrap"]["rounds"] == 1000 and report["bootstrap"]["seed"] == 42
    assert report["created_at"]

    pop = run_entry(report, "popularity")
    manifest = json.loads((work / "runs/popularity/manifest.json").read_text())
    assert pop["threshold"] == manifest["threshold"]
    assert pop["threshold"]["how"] == "tuned on validation (max Jaccard)"
    th = pop["threshold"]["value"]
    y, freq = t["y_test"], t["freq"]

    point = pop["groups"]["overall"]["point"]
    expected_prauc = np.mean([average_precision_score(row, freq) for row in y])
    assert point["prauc"] == pytest.approx(expected_prauc, abs=1e-12)
    chosen = freq.astype(np.float64) >= th  # the same drug set for every patient
    k = int(chosen.sum())
    inter = (y & chosen).sum(1)
    assert point["jaccard"] == pytest.approx(np.mean(inter / (y | chosen).sum(1)), abs=1e-12)
    prec, rec = inter / k, inter / y.sum(1)
    f1 = np.where(prec + rec > 0, 2 * prec * rec / np.maximum(prec + rec, 1e-300), 0.0)
    assert point["f1"] == pytest.approx(f1.mean(), abs=1e-12)
    assert point["avg_drugs"] == k
    assert point["avg_true_drugs"] == pytest.approx(y.sum(1).mean(), abs=1e-12)
    # DDI pairs of the fixture: A02B–N02B and B01A–C07A; everyone gets the same set, so the pooled rate is
    # (#interacting pairs in the set) / C(k, 2)
    chosen_codes = {c for c, s in zip(t["labels"], chosen, strict=True) if s}
    bad = sum(
        1 for a, b in combinations(sorted(chosen_codes), 2) if {a, b} in ({"A02B", "N02B"}, {"B01A", "C07A"})
    )
    assert point["ddi_rate"] == pytest.approx(bad / (k * (k - 1) / 2), abs=1e-12)

    groups = pop["groups"]
    assert groups["single"]["n"] + groups["multi"]["n"] == groups["overall"]["n"] == n
    single_ap = np.mean([average_precision_score(row, freq) for row in y[t["n_visits"] == 1]])
    assert groups["single"]["point"]["prauc"] == pytest.approx(single_ap, abs=1e-12)
    boot = groups["overall"]["bootstrap"]
    assert set(boot) >= {"prauc", "jaccard", "f1", "ddi_rate", "avg_drugs", "avg_true_drugs"}
    assert boot["prauc"]["std"] > 0 and abs(boot["prauc"]["mean"] - point["prauc"]) < 0.1

    student = run_entry(report, "student")
    s_manifest = json.loads((work / "runs/student/manifest.json").read_text())
    assert student["threshold"] == s_manifest["threshold"]
    assert student["groups"]["overall"]["n"] == n
    assert len(student["per_drug_f1"]) == len(t["labels"])
    assert report["drugs"]["train_frequency"] == pytest.approx(freq.astype(float).tolist(), abs=1e-7)


def test_efficiency_recorded(work: Path) -> None:
    report = json.loads((work / "report" / "metrics.json").read_text())
    student, pop = run_entry(report, "student"), run_entry(report, "popularity")
    s_manifest = json.loads((work / "runs/student/manifest.json").read_text())
    assert student["efficiency"]["parameters"]["total"] == s_manifest["parameters"]["total"] > 0
    assert student["efficiency"]["parameters"]["trainable"] == s_manifest["parameters"]["trainable"]
    assert pop["efficiency"]["parameters"]["total"] == 0
    threads = report["efficiency"]["machine"]["torch_threads"]
    for e in (student["efficiency"], pop["efficiency"]):
        assert e["device"] == "cpu" and e["batch_size"] == 32 and e["threads"] == threads >= 1
        assert e["timed_patients_per_pass"] == 12 and e["timed_passes"] >= 5  # report.latency_repeats
        assert 0 < e["latency_ms_per_patient"] <= e["median_ms_per_patient"]  # best of k ≤ median
        assert e["latency_ms_per_patient"] == pytest.approx(1000 * e["best_pass_seconds"] / 12)
        assert e["throughput_patients_per_s"] == pytest.approx(1000 / e["latency_ms_per_patient"], rel=1e-9)
    machine = report["efficiency"]["machine"]
    assert machine["cpu_model"] and machine["logical_cpus"] >= 1
    assert len(machine["load_before"]) == 3 and len(machine["load_after"]) == 3
    teacher = run_entry(report, "teacher")
    t_manifest = json.loads((work / "runs/teacher/manifest.json").read_text())
    assert teacher["threshold"] == t_manifest["threshold"]
    assert teacher["efficiency"]["parameters"]["total"] == t_manifest["parameters"]["total"]
    assert (
        teacher["efficiency"]["parameters"]["trainable"] < teacher["efficiency"]["parameters"]["total"]
    )  # LoRA
    assert teacher["efficiency"]["device"] == "cpu" and teacher["groups"]["overall"]["n"] == 12
    assert teacher["efficiency"]["threads"] == student["efficiency"]["threads"]
    ratio = report["efficiency"]["teacher_student_latency_ratio"]
    assert set(ratio) == {"student"}  # baselines are not students
    assert ratio["student"] == pytest.approx(
        teacher["efficiency"]["latency_ms_per_patient"] / student["efficiency"]["latency_ms_per_patient"]
    )
    md = (work / "report" / "report.md").read_text()
    assert "torch threads" in md and machine["cpu_model"] in md and "load average" in md


def test_intervals_comparison_and_method(work: Path) -> None:
    report = json.loads((work / "report" / "metrics.json").read_text())
    assert report["bootstrap"]["rounds"] == 1000
    assert "with replacement" in report["bootstrap"]["method"]
    for run in report["runs"]:
        for g in ("overall", "single", "multi"):
            grp = run["groups"][g]
            assert grp["small"] == (0 < grp["n"] < 100)
            for key in ("prauc", "jaccard", "f1", "ddi_rate", "avg_drugs"):
                st = grp["bootstrap"][key]
                assert st["lo"] - 1e-12 <= st["mean"] <= st["hi"] + 1e-12 and st["std"] >= 0
    best = report["comparison"]["best"]
    points = {r["name"]: r["groups"]["overall"]["point"]["prauc"] for r in report["runs"]}
    assert points[best] == max(points.values())
    for run in report["runs"]:
        if run["name"] == best:
            assert run["vs_best"] is None
            continue
        d = run["vs_best"]["groups"]["overall"]["prauc"]
        assert d["diff"] == pytest.approx(points[run["name"]] - points[best])
        assert d["distinguishable"] == (not (d["lo"] <= 0 <= d["hi"]))
    md = (work / "report" / "report.md").read_text()
    assert "## Method" in md and "paired bootstrap" in md and "with replacement" in md
    assert "## Runs compared" in md


def test_popularity_floor_marks_a_worse_model(work: Path) -> None:
    report = json.loads((work / "report" / "metrics.json").read_text())
    assert report["comparison"]["floor"]["run"] == "popularity"  # the first popularity run given
    worse = run_entry(report, "worse")
    assert worse["vs_floor"]["status"] == "below" and worse["vs_floor"]["beats"] is False
    assert worse["vs_floor"]["diff"] < 0
    not_beating = report["comparison"]["floor"]["not_beating"]
    assert "worse" in not_beating
    assert run_entry(report, "popularity")["vs_floor"] is None
    for run in report["runs"]:
        if run["vs_floor"] is not None:
            assert (run["name"] in not_beating) == (not run["vs_floor"]["beats"])
    md = (work / "report" / "report.md").read_text()
    html = (work / "report" / "report.html").read_text()
    terminal = (work / "stdout.txt").read_text()
    for name in not_beating:
        for text in (md, html, terminal):
            assert f"{name} does not beat the popularity floor" in text
            assert f"{name} ▼" in text


def test_popularity_floor_fitted_when_no_popularity_run(in_work: Path) -> None:
    r = invoke("report", "runs/student", "-o", "report-floor")
    assert r.exit_code == 0, r.output
    report = json.loads((in_work / "report-floor" / "metrics.json").read_text())
    assert [x["name"] for x in report["runs"]] == ["student", "popularity"]
    fitted = report["runs"][1]
    assert fitted["fitted_by_report"] is True and fitted["run_dir"] is None and fitted["kind"] == "popularity"
    assert report["comparison"]["floor"]["run"] == "popularity"
    assert report["runs"][0]["vs_floor"]["status"] in ("above", "not distinguishable", "below")
    # the same model and threshold as `leader train student --model popularity`
    trained = run_entry(json.loads((in_work / "report" / "metrics.json").read_text()), "popularity")
    assert fitted["threshold"]["value"] == trained["threshold"]["value"]
    for key in ("prauc", "jaccard", "f1", "ddi_rate", "avg_drugs"):
        assert fitted["groups"]["overall"]["point"][key] == pytest.approx(
            trained["groups"]["overall"]["point"][key], abs=1e-12
        )
    assert fitted["efficiency"]["parameters"]["total"] == 0


def test_small_groups_flagged_everywhere(work: Path) -> None:
    report = json.loads((work / "report" / "metrics.json").read_text())
    assert set(report["samples"]["small_groups"]) == {"overall", "single", "multi"}  # 12 test patients
    md = (work / "report" / "report.md").read_text()
    html = (work / "report" / "report.html").read_text()
    terminal = (work / "stdout.txt").read_text()
    for text in (md, html, terminal):
        assert "fewer than 100 patients" in text
        assert "12 †" in text


def test_terminal_tables_fit_80_columns(work: Path) -> None:
    terminal = (work / "stdout.txt").read_text()
    tables = [line for line in terminal.splitlines() if "±" in line or "[" in line]
    assert tables, terminal
    assert max(len(line) for line in terminal.splitlines() if not line.startswith("- ")) <= 80
    assert "±" in terminal and "[" in terminal  # std and interval, not only means
    assert "Accuracy–DDI trade-off" in terminal and "∞" in terminal


def test_ddi_tradeoff(work: Path) -> None:
    report = json.loads((work / "report" / "metrics.json").read_text())
    assert report["ddi_tradeoff"]["max_pairs"] == [0, 1, 2, None]
    some_pairs = False
    for run in report["runs"]:
        t = run["ddi_tradeoff"]
        assert [p["max_pairs"] for p in t] == [0, 1, 2, None]
        assert t[0]["ddi_rate"] == 0.0 and t[0]["avg_interacting_pairs"] == 0.0
        for a, b in zip(t, t[1:], strict=False):  # a smaller cap keeps a subset
            assert (
                a["avg_drugs"] <= b["avg_drugs"] and a["avg_interacting_pairs"] <= b["avg_interacting_pairs"]
            )
            assert a["ddi_rate"] <= b["ddi_rate"] + 1e-12
            assert a["avg_dropped"] >= b["avg_dropped"]
        assert [p["avg_interacting_pairs"] <= n for p, n in zip(t[:3], (0, 1, 2), strict=True)] == [True] * 3
        point = run["groups"]["overall"]["point"]
        assert t[-1]["avg_dropped"] == 0.0
        for key in ("jaccard", "f1", "ddi_rate", "avg_drugs"):
            assert t[-1][key] == pytest.approx(point[key], abs=1e-9)  # no cap = the run's own selection
        some_pairs |= t[-1]["ddi_rate"] > 0
    assert some_pairs  # the fixture's pairs occur among selected drugs: N = 0 really removes something
    md = (work / "report" / "report.md").read_text()
    assert "## Accuracy–DDI trade-off" in md and "| worse | ∞ |" in md


def test_plots_cover_present_drugs_and_label_every_axis(work: Path) -> None:
    from leadercli.report import plots

    report = json.loads((work / "report" / "metrics.json").read_text())
    present = np.asarray(report["drugs"]["test_frequency"]) > 0
    assert report["drugs"]["present_in_test"] == int(present.sum())
    idx, freq, split, left_out = plots.per_drug_points(report)
    assert split == "training" and present[idx].all()
    assert len(idx) + left_out == present.sum()
    for draw in (
        plots.plot_metrics,
        plots.plot_drug_counts,
        plots.plot_per_drug_f1,
        plots.plot_ddi,
        plots.plot_ddi_tradeoff,
        plots.plot_latency,
    ):
        fig = draw(report)
        for ax in fig.axes:
            if ax.get_visible():
                assert ax.get_xlabel() and ax.get_ylabel(), f"{draw.__name__}: an axis without a label"
    fig = plots.plot_per_drug_f1(report)
    for ax in [a for a in fig.axes if a.get_visible()]:
        assert len(ax.collections[0].get_offsets()) == len(idx)
    md = (work / "report" / "report.md").read_text()
    assert f"one of the {int(present.sum())} drugs present in the test split" in md
    assert "Selected vs true #drugs" in md and "drugs per patient against" in md


def test_report_files(work: Path) -> None:
    out = work / "report"
    assert {p.name for p in out.glob("*.png")} == PLOTS
    md = (out / "report.md").read_text()
    for png in PLOTS:
        assert f"]({png})" in md
    assert "tuned on validation (max Jaccard)" in md and "## Efficiency" in md
    html = (out / "report.html").read_text()
    assert "http://" not in html and "https://" not in html and "<script" not in html
    uris = html.split('src="data:image/png;base64,')[1:]
    assert len(uris) == len(PLOTS)
    first = base64.b64decode(uris[0].split('"', 1)[0])
    assert first.startswith(b"\x89PNG\r\n\x1a\n") and first == (out / "metrics.png").read_bytes()
    assert not list(work.glob(".report.*"))  # no temporary or old folder left behind


def test_format_json_prints_only_json(in_work: Path) -> None:
    r = invoke("report", "runs/popularity", "--format", "json", "-o", "report-json")
    assert r.exit_code == 0, r.output
    printed = json.loads(r.stdout)
    written = json.loads((in_work / "report-json" / "metrics.json").read_text())
    assert printed == written
    assert [x["name"] for x in printed["runs"]] == ["popularity"]  # the floor itself: none fitted


def test_default_runs_and_errors(in_work: Path, tmp_path: Path, monkeypatch) -> None:
    r = invoke("report", "-o", "report-default", "-q")
    assert r.exit_code == 0, r.output
    default = json.loads((in_work / "report-default" / "metrics.json").read_text())
    assert [x["name"] for x in default["runs"]] == [
        "teacher",
        "student",
        "popularity",
    ]  # paths.teacher/student (no distilled), and the popularity floor fitted by the report

    before = (in_work / "report" / "metrics.json").read_bytes()
    r = invoke("report", "runs/missing")
    assert r.exit_code == 2 and "runs/missing" in r.stderr
    assert (in_work / "report" / "metrics.json").read_bytes() == before  # the old report is untouched

    keep = in_work / "not-a-report"
    keep.mkdir(exist_ok=True)
    (keep / "notes.txt").write_text("mine")
    r = invoke("report", "runs/popularity", "-o", "not-a-report")
    assert r.exit_code == 2 and "not a report folder" in r.stderr
    assert (keep / "notes.txt").read_text() == "mine"

    shutil.copy(in_work / "leader.toml", tmp_path / "leader.toml")
    monkeypatch.chdir(tmp_path)  # no runs/ here
    r = invoke("report")
    assert r.exit_code == 2 and "no run folder" in r.stderr
    assert not (tmp_path / "report").exists()


def test_predictions_file(in_work: Path, tiny_artifact: Path) -> None:
    visits = str(tiny_artifact / "visits.parquet")
    r = invoke("predict", visits, "-o", "recs.csv", "--model", "runs/popularity", "--top-k", "12", "-q")
    assert r.exit_code == 0, r.output
    r = invoke("report", "--predictions", "recs.csv", "-o", "report-pred", "-q")
    assert r.exit_code == 0, r.output
    pred = json.loads((in_work / "report-pred" / "metrics.json").read_text())
    runs_report = json.loads((in_work / "report" / "metrics.json").read_text())
    entry, pop = pred["runs"][0], run_entry(runs_report, "popularity")
    assert pred["source"] == "predictions" and entry["kind"] == "predictions" and entry["name"] == "recs"
    t = truth(tiny_artifact)
    assert entry["predictions"]["matched_test_patients"] == 12
    assert entry["predictions"]["ignored_other_subjects"] == t["n_other"]
    assert [x["name"] for x in pred["runs"]] == ["recs", "popularity"]  # the floor, fitted on train
    assert pred["runs"][1]["fitted_by_report"] and pred["comparison"]["floor"]["run"] == "popularity"
    # all 12 drugs are in the file, so it must reproduce the run's own evaluation exactly
    for key in ("prauc", "jaccard", "f1", "ddi_rate", "avg_drugs"):
        assert entry["groups"]["overall"]["point"][key] == pytest.approx(
            pop["groups"]["overall"]["point"][key], abs=1e-9
        )
        assert pred["runs"][1]["groups"]["overall"]["point"][key] == pytest.approx(
            pop["groups"]["overall"]["point"][key], abs=1e-9
        )
    assert entry["vs_floor"]["diff"] == pytest.approx(0.0, abs=1e-9)
    assert entry["vs_floor"]["status"] != "above"  # the floor itself does not beat the floor
    assert entry["threshold"]["value"] == pytest.approx(
        min(f for f in t["freq"].astype(float) if f >= pop["threshold"]["value"]), abs=1e-6
    )
    assert "latency.png" not in {p.name for p in (in_work / "report-pred").glob("*.png")}

    # top-3: drugs outside the file score 0 (the file may hold selected drugs beyond the top-k)
    r = invoke("predict", visits, "-o", "recs3.csv", "--model", "runs/popularity", "--top-k", "3", "-q")
    assert r.exit_code == 0, r.output
    r = invoke("report", "--predictions", "recs3.csv", "-o", "report-pred3", "-q")
    assert r.exit_code == 0, r.output
    top3 = json.loads((in_work / "report-pred3" / "metrics.json").read_text())["runs"][0]
    recs = pl.read_csv(in_work / "recs3.csv")
    test_ids = sorted(set(recs["subject_id"].to_list()) & set(truth_ids(tiny_artifact)))
    kept = np.zeros((len(test_ids), len(t["labels"])))
    row = {s: i for i, s in enumerate(test_ids)}
    for sid, code, score in recs.select("subject_id", "atc3", "score").iter_rows():
        if sid in row:
            kept[row[sid], t["labels"].index(code)] = score
    expected = np.mean([average_precision_score(y, k) for y, k in zip(t["y_test"], kept, strict=True)])
    assert top3["groups"]["overall"]["point"]["prauc"] == pytest.approx(expected, abs=1e-6)
    assert top3["predictions"]["top_k"] >= 3

    pl.read_csv(in_work / "recs.csv").drop("score").write_csv(in_work / "bad.csv")
    r = invoke("report", "--predictions", "bad.csv", "-o", "report-bad")
    assert r.exit_code == 2 and "'score' is missing" in r.stderr


@pytest.mark.skipif(shutil.which("chromium") is None, reason="Debian's chromium is not installed")
def test_html_renders_in_headless_chromium(work: Path, tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location(
        "check_report_html", ROOT / "benchmarks" / "check_report_html.py"
    )
    check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(check)
    shot = tmp_path / "shot.png"
    result = check.check_html(work / "report" / "report.html", shot)
    assert result["loaded"]
    assert result["console_errors"] == []
    assert result["images"] == len(PLOTS) and result["images_rendered"] == len(PLOTS)
    assert result["external_requests"] == []
    assert shot.read_bytes().startswith(b"\x89PNG") and result["page_height"] > 1000
    # no horizontal scroll at 1280 px: neither the page nor any table is wider than the window
    assert result["client_width"] == 1280 and result["scroll_width"] <= result["client_width"]
    assert result["tables_scrolling"] == 0


def test_calibration_numbers_and_reliability_diagram(work: Path, tiny_artifact: Path) -> None:
    from leadercli import calibration
    from leadercli.report import plots

    report = json.loads((work / "report" / "metrics.json").read_text())
    t = truth(tiny_artifact)
    y = t["y_test"]
    pop = run_entry(report, "popularity")  # its scores are the training frequencies, for every patient
    scores = np.tile(t["freq"], (len(y), 1))
    assert pop["calibration"]["ece"] == pytest.approx(calibration.ece(y, scores), abs=1e-6)
    assert pop["calibration"]["brier"] == pytest.approx(calibration.brier(y, scores), abs=1e-6)
    assert pop["calibrator"] is None  # baselines are not calibrated
    single = t["n_visits"] == 1
    assert pop["calibration"]["groups"]["single"]["ece"] == pytest.approx(
        calibration.ece(y[single], scores[single]), abs=1e-6
    )
    for r in report["runs"]:
        assert sum(r["calibration"]["reliability"]["count"]) == y.size
    student = run_entry(report, "student")
    assert student["calibrator"] == json.loads((work / "runs/student/calibration.json").read_text())
    md = (work / "report" / "report.md").read_text()
    assert "## Calibration" in md and f"temperature {student['calibrator']['temperature']:.3g}" in md
    fig = plots.plot_reliability(report)
    for ax in fig.axes:
        assert ax.get_xlabel() or ax.get_ylabel()
    assert fig.axes[1].get_xlabel() and fig.axes[0].get_ylabel()


def test_sample_patients_explained_with_hashed_ids(work: Path, tiny_artifact: Path) -> None:
    report = json.loads((work / "report" / "metrics.json").read_text())
    ex = report["explained"]
    learned = [r for r in report["runs"] if r["kind"] in ("teacher", "student")]
    best = max(learned, key=lambda r: r["groups"]["overall"]["point"]["prauc"])
    assert ex["run"] == best["name"] and len(ex["patients"]) == 5
    raw = {str(s) for s in truth_ids(tiny_artifact)}
    for p in ex["patients"]:
        assert p["id"] not in raw and len(p["id"]) == 12
        scores = [d["score"] for d in p["drugs"]]
        assert len(scores) == 3 and scores == sorted(scores, reverse=True)
        for d in p["drugs"]:
            c = [x["contribution"] for x in d["codes"]]
            assert all(v > 0 for v in c) and c == sorted(c, reverse=True)
    html = (work / "report" / "report.html").read_text()
    md = (work / "report" / "report.md").read_text()
    assert "Why these drugs: sample patients" in html
    section = md.split("## Why these drugs")[1].split("## What the metrics mean")[0]
    assert section.count("### Patient") == 5
    assert not any(f" {sid}" in section for sid in raw)  # no raw subject id shown
