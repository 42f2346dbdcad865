"""`leader report`: evaluate runs on the artifact's test split and write the report folder.

Run it small on CPU:  leader train student && leader report      (or: leader report runs/student -o report/)

What it owns (DESIGN §5, leader-reference.md §5):
- which runs (the given folders, else those of `paths.teacher`, `paths.distilled`, `paths.student` that exist)
  and which artifact (`--data`/settings, else the one recorded in the first run's manifest);
- scoring the test split with every run at the threshold the run recorded (value + how it was chosen);
- metrics per group (overall, single-visit, multi-visit): PRAUC, Jaccard, F1, DDI rate, average #drugs
  predicted and true — point values and mean ± std over `report.bootstrap_rounds` rounds of
  `report.bootstrap_fraction` of the samples (`metrics.evaluate_groups`), per-drug F1 and drug frequency;
- efficiency: parameters (total, trainable), latency per patient and throughput. The reference timed
  `trainer.test()` including checkpoint load and metric computation (§5); here samples are encoded, collated
  and moved to the device beforehand, one warm-up batch runs first, and only the model calls (with the copy
  of the probabilities back to the host) are timed with `time.perf_counter`, synchronising CUDA around each,
  in batches of `report.latency_batch_size`, repeated until MIN_TIMED_SECONDS have been timed (at most
  MAX_TIMED_PASSES passes). The teacher's scorer takes samples, so its time also includes building and
  tokenising the prompts. Baselines have no learned weights and always run on the CPU;
- `report_from_predictions`: a `leader predict` file + the artifact's true test drugs → the same metrics;
- writing metrics.json, report.md, report.html and the PNG plots to a temporary folder that replaces the old
  report only when complete; a rich table on stdout, or only the JSON with `output_format="json"`.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from leadercli import __version__, console, metrics, runs
from leadercli.data.artifact import Artifact
from leadercli.errors import ArtifactError, InputError, SettingsError

KINDS = ("teacher", "distilled", "student", "popularity", "previous")
BASELINES = ("popularity", "previous")
GROUPS = ("overall", "single", "multi")
MIN_TIMED_SECONDS = 0.5
MAX_TIMED_PASSES = 20
SETTINGS_ARTIFACT = "settings (--data, paths.artifact or <paths.data>/<data.source>)"
REPORT_FILES = ("metrics.json", "report.md", "report.html")
PREDICTION_COLUMNS = ("subject_id", "hadm_id", "atc3", "score", "selected")


@dataclass
class Scored:
    """One run's test-split output, aligned with the report's test samples."""

    probs: np.ndarray  # (N, M) float probabilities
    subject_ids: np.ndarray  # (N,) to check the alignment
    parameters: dict | None  # {"total", "trainable", "from"}
    timing: dict | None  # see _time_calls


# -- runs and artifact ---------------------------------------------------------------------------------


def resolve_run_dirs(settings, run_dirs: list[Path]) -> list[Path]:
    """The given run folders (each must hold a manifest), else the settings' teacher, distilled and student
    folders that hold one. ArtifactError when there is none."""
    if run_dirs:
        for d in run_dirs:
            runs.read_manifest(Path(d))  # raises ArtifactError naming the folder
        return [Path(d) for d in run_dirs]
    p = settings.paths
    found = [Path(d) for d in (p.teacher, p.distilled, p.student) if (Path(d) / runs.MANIFEST).is_file()]
    if not found:
        raise ArtifactError(
            f"no run folder to report on (looked in {p.teacher}, {p.distilled} and {p.student})",
            "Train one first (`leader train student`) or pass run folders: `leader report runs/student`",
        )
    return found


def resolve_artifact(settings, manifests: list[dict]) -> tuple[Artifact, str]:
    """The settings' artifact; when it is the default `<data>/<source>` and missing, the first run's."""
    path = settings.artifact_dir()
    if settings.paths.artifact is None and not path.is_dir():
        recorded = (manifests[0].get("artifact") or {}).get("path") if manifests else None
        if recorded and Path(recorded).is_dir():
            return Artifact(recorded), "manifest of the first run"
    return Artifact(path), SETTINGS_ARTIFACT


def _run_names(dirs: list[Path]) -> list[str]:
    """Folder names, made unique with a numeric suffix."""
    names: list[str] = []
    for d in dirs:
        base = Path(d).resolve().name or "run"
        name, k = base, 2
        while name in names:
            name, k = f"{base}-{k}", k + 1
        names.append(name)
    return names


def _threshold(manifest: dict, run_dir: Path) -> dict:
    th = manifest.get("threshold")
    if isinstance(th, (int, float)):
        return {"value": float(th), "how": "recorded in the run's manifest"}
    if not isinstance(th, dict) or not isinstance(th.get("value"), (int, float)):
        raise ArtifactError(f"run {run_dir} has no decision threshold in its manifest", "Retrain the run")
    return {"value": float(th["value"]), "how": str(th.get("how", "recorded in the run's manifest"))}


def multi_hot(samples: list, label_index: dict[str, int]) -> np.ndarray:
    """(N, M) bool: the target visit's drugs of each sample (drugs outside the label list are dropped)."""
    y = np.zeros((len(samples), len(label_index)), dtype=bool)
    for i, s in enumerate(samples):
        for code in s.target.medications:
            j = label_index.get(code)
            if j is not None:
                y[i, j] = True
    return y


# -- timing and scoring --------------------------------------------------------------------------------


def _sync(device) -> None:
    if device is not None and getattr(device, "type", str(device)) == "cuda":
        import torch

        torch.cuda.synchronize(device)


def _time_calls(call, batches: list, n_patients: int, device, batch_size: int) -> tuple[list, dict]:
    """Run `call` on every pre-built batch: a warm-up call first, then timed passes over all batches.

    Returns the first timed pass's outputs (one (B, M) array per batch) and the timing record."""
    call(batches[0])  # warm-up: lazy initialisation, kernel selection, caches
    _sync(device)
    outputs: list = []
    total, passes = 0.0, 0
    while passes < MAX_TIMED_PASSES and (passes == 0 or total < MIN_TIMED_SECONDS):
        for b in batches:
            _sync(device)
            t0 = time.perf_counter()
            out = call(b)
            _sync(device)
            total += time.perf_counter() - t0
            if passes == 0:
                outputs.append(out)
        passes += 1
    timed = n_patients * passes
    return outputs, {
        "device": str(device) if device is not None else "cpu",
        "batch_size": batch_size,
        "timed_passes": passes,
        "timed_patients": timed,
        "timed_seconds": total,
        "latency_ms_per_patient": 1000.0 * total / timed,
        "throughput_patients_per_s": timed / total if total > 0 else None,
    }


def _count_parameters(model) -> dict:
    params = list(model.parameters())
    return {
        "total": int(sum(p.numel() for p in params)),
        "trainable": int(sum(p.numel() for p in params if p.requires_grad)),
        "from": "model",
    }


def _score_run(scorer, samples: list, device, batch_size: int) -> Scored:
    """Any run through its `runs.Scorer`; tensor runs are encoded and collated beforehand so that only the
    model calls are timed, the teacher's time includes prompt building and tokenisation."""
    import torch

    from leadercli.data.batching import batches

    if scorer.tensor_input:
        enc = scorer.encoder
        cpu_batches = list(batches(enc.encode_all(samples), batch_size, enc.collate))
        subject_ids = np.concatenate([b["subject_id"].numpy() for b in cpu_batches])
        ready = [{k: v.to(scorer.device) for k, v in b.items()} for b in cpu_batches]
        outputs, timing = _time_calls(
            lambda b: scorer.score_batch(b).numpy(), ready, len(samples), scorer.device, batch_size
        )
    else:
        subject_ids = np.asarray([s.subject_id for s in samples])
        chunks = [samples[i : i + batch_size] for i in range(0, len(samples), batch_size)]
        outputs, timing = _time_calls(
            lambda chunk: np.asarray(scorer.score_samples(chunk, batch_size), dtype=np.float32),
            chunks,
            len(samples),
            device,
            batch_size,
        )
        timing["includes"] = "prompt building and tokenisation"
    if scorer.kind in BASELINES:
        parameters = {
            "total": 0,
            "trainable": 0,
            "from": "baseline (training-split drug frequencies, no weights)",
        }
    elif scorer.kind == "teacher":
        counted = {k: int(v) for k, v in scorer.parameters().items()}
        parameters = {**counted, "from": "teacher scorer"} if "total" in counted else None
    else:
        parameters = _count_parameters(scorer.module)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return Scored(np.concatenate(outputs), subject_ids, parameters, timing)


# -- metrics -------------------------------------------------------------------------------------------


def evaluate_scores(
    name: str,
    y_true: np.ndarray,
    y_prob: np.ndarray,
    n_visits: np.ndarray,
    threshold: dict,
    ddi: np.ndarray,
    rcfg,
) -> dict:
    """One report entry: metrics per group (point + bootstrap), per-drug F1, the threshold used."""
    groups = metrics.evaluate_groups(
        y_true,
        y_prob,
        threshold["value"],
        ddi,
        n_visits,
        rounds=rcfg.bootstrap_rounds,
        fraction=rcfg.bootstrap_fraction,
        seed=rcfg.seed,
    )
    per_drug = metrics.per_drug_f1(y_true, metrics.binarize(y_prob, threshold["value"]))
    return {
        "name": name,
        "threshold": threshold,
        "n": int(len(y_true)),
        "groups": groups,
        "per_drug_f1": per_drug,
    }


def _drugs_block(artifact: Artifact, y_test: np.ndarray, settings) -> dict:
    from leadercli.data.samples import load_samples

    idx = artifact.vocab.medications.index
    train = load_samples(artifact, "train", 1, settings.samples.per_visit)
    return {
        "labels": list(artifact.labels),
        "names": list(artifact.vocab.medications.titles),
        "train_frequency": metrics.drug_frequency(multi_hot(train, idx)) if train else None,
        "test_frequency": metrics.drug_frequency(y_test),
        "frequency_note": "share of target visits containing the drug (train: training split; test: test split)",
    }


def _test_samples(artifact: Artifact, max_visits: int, per_visit: bool) -> list:
    from leadercli.data.samples import load_samples

    samples = load_samples(artifact, "test", max_visits, per_visit)
    if not samples:
        raise ArtifactError(
            f"artifact {artifact.path} has no test patients", "Re-run `leader preprocess` with a test split"
        )
    return samples


def _header(
    settings, artifact: Artifact, artifact_how: str, y_true: np.ndarray, n_visits: np.ndarray, ddi
) -> dict:
    g = metrics.groups(n_visits)
    rcfg = settings.report
    return {
        "leadercli_version": __version__,
        "created_at": runs.now(),
        "split": "test",
        "artifact": {
            "path": str(artifact.path.resolve()),
            "from": artifact_how,
            "source": artifact.manifest.get("source"),
            "vocab_hash": artifact.vocab_hash,
            "n_labels": len(artifact.labels),
        },
        "samples": {
            "n": int(len(y_true)),
            "groups": {k: int(m.sum()) for k, m in g.items()},
            "per_visit": bool(settings.samples.per_visit),
            "group_rule": "single = 1 visit including the target, multi = more",
        },
        "bootstrap": {
            "rounds": rcfg.bootstrap_rounds,
            "method": metrics.BOOTSTRAP_METHOD,
            "seed": rcfg.seed,
        },
        "true_ddi_rate": metrics.ddi_rate(y_true, ddi),
    }


def _latency_ratios(entries: list[dict]) -> dict[str, float] | None:
    """Teacher latency / latency of each student-like run (student, distilled), when a teacher is present."""
    lat = {e["name"]: (e.get("efficiency") or {}).get("latency_ms_per_patient") for e in entries}
    teachers = [e["name"] for e in entries if e["kind"] == "teacher" and lat[e["name"]]]
    if not teachers:
        return None
    t = lat[teachers[0]]
    out = {
        e["name"]: t / lat[e["name"]]
        for e in entries
        if e["kind"] in ("student", "distilled") and lat[e["name"]]
    }
    return out or None


# -- the two entry points ------------------------------------------------------------------------------


def build_report(settings, run_dirs: list[Path], output_format: str = "table") -> dict:
    """Evaluate runs on the test split and write the report folder (`settings.paths.report`).

    Returns the report dict (the content of metrics.json)."""
    import torch

    from leadercli.hardware import resolve_device

    _check_format(output_format)
    dirs = resolve_run_dirs(settings, run_dirs)
    manifests = [runs.read_manifest(d) for d in dirs]
    for d, m in zip(dirs, manifests, strict=True):
        if m.get("kind") not in KINDS:
            raise ArtifactError(
                f"run {d} has an unknown kind {m.get('kind')!r}", f"Pass runs of kind {', '.join(KINDS)}"
            )
    artifact, how = resolve_artifact(settings, manifests)
    for d, m in zip(dirs, manifests, strict=True):
        runs.check_matches_artifact(m, artifact, d)
    thresholds = [_threshold(m, d) for d, m in zip(dirs, manifests, strict=True)]
    device = resolve_device(settings.hardware)
    rcfg = settings.report
    ddi = artifact.ddi_index_pairs()
    per_visit = settings.samples.per_visit
    base = _test_samples(artifact, settings.samples.max_visits, per_visit)
    y_true = multi_hot(base, artifact.vocab.medications.index)
    n_visits = np.asarray([s.n_visits for s in base])
    subject_ids = np.asarray([s.subject_id for s in base])
    console.info(f"report: {len(dirs)} run(s), {len(base)} test patients of {artifact.path}, device {device}")

    cache: dict[int, list] = {settings.samples.max_visits: base}
    entries = []
    for name, d, m, th in zip(_run_names(dirs), dirs, manifests, thresholds, strict=True):
        mv = int(runs.run_samples_settings(m, d).get("max_visits", settings.samples.max_visits))
        if mv not in cache:
            cache[mv] = _test_samples(artifact, mv, per_visit)
        samples = cache[mv]
        console.info(
            f"scoring {name} ({m['kind']}) and timing it"
        )  # no spinner: its thread would perturb timings
        scorer = runs.load_run(d, device)
        scored = _score_run(scorer, samples, device, rcfg.latency_batch_size)
        del scorer
        if not np.array_equal(scored.subject_ids, subject_ids):
            raise ArtifactError(
                f"run {d} scored other patients than the test split", "Report a bug with --debug"
            )
        entry = evaluate_scores(name, y_true, scored.probs, n_visits, th, ddi, rcfg)
        parameters = scored.parameters or m.get("parameters")
        if parameters is not None and "from" not in parameters:
            parameters = {**parameters, "from": "manifest"}
        entry = {
            "name": name,
            "kind": m["kind"],
            "run_dir": str(Path(d).resolve()),
            "trained_at": m.get("created_at"),
            "max_visits": mv,
            **{k: v for k, v in entry.items() if k != "name"},
            "efficiency": {"parameters": parameters, **(scored.timing or {})},
        }
        o = entry["groups"]["overall"]["point"]
        console.info(
            f"{name}: PRAUC {o['prauc']:.4f}  Jaccard {o['jaccard']:.4f}  F1 {o['f1']:.4f}  "
            f"({entry['efficiency']['latency_ms_per_patient']:.3f} ms/patient)"
        )
        entries.append(entry)
        del scored
        if device.type == "cuda":
            torch.cuda.empty_cache()

    report = _header(settings, artifact, how, y_true, n_visits, ddi)
    report["source"] = "runs"
    report["drugs"] = _drugs_block(artifact, y_true, settings)
    report["runs"] = entries
    report["efficiency"] = {
        "device": str(device),
        "batch_size": rcfg.latency_batch_size,
        "timing": (
            f"model calls only (warm-up batch first, ≥ {MIN_TIMED_SECONDS} s or {MAX_TIMED_PASSES} passes over "
            "the test split); baselines on the CPU; the teacher's time includes prompt tokenisation"
        ),
        "teacher_student_latency_ratio": _latency_ratios(entries),
    }
    return _finish(settings, report, output_format)


def report_from_predictions(
    settings, predictions_path: Path, name: str | None = None, output_format: str = "table"
) -> dict:
    """Evaluate a `leader predict` file (subject_id, hadm_id, rank, atc3, score, selected; CSV or parquet)
    against the true drugs of the artifact's test split. Drugs absent from a patient's top-k score 0; the
    threshold is the lowest `score` among selected rows (checked: selected ⇔ score ≥ threshold). Test patients
    missing from the file are left out (counted in the report); other subjects are ignored."""
    _check_format(output_format)
    if settings.samples.per_visit:
        raise SettingsError(
            "samples.per_visit is on, but a predictions file holds one visit per patient", "Turn it off"
        )
    path = Path(predictions_path)
    df = _read_predictions(path)
    artifact = Artifact(settings.artifact_dir())
    ddi = artifact.ddi_index_pairs()
    samples = _test_samples(artifact, 1, False)
    y_all = multi_hot(samples, artifact.vocab.medications.index)
    row_of = {s.subject_id: i for i, s in enumerate(samples)}
    hadm_of = {s.subject_id: s.hadm_id for s in samples}

    sid = df["subject_id"].to_numpy()
    in_test = np.asarray([s in row_of for s in sid], dtype=bool)
    ignored = len({int(s) for s in sid[~in_test]})
    df = df.filter(in_test)
    if df.height == 0:
        raise InputError(
            f"{path}: none of its subjects is a test patient of artifact {artifact.path}",
            "Predict on the artifact's visits (`leader predict data/<source>/visits.parquet -o recs.csv`)",
        )
    bad_visit = {
        int(s)
        for s, h in zip(df["subject_id"].to_list(), df["hadm_id"].to_list(), strict=True)
        if hadm_of[s] != h
    }
    if bad_visit:
        raise InputError(
            f"{path}: {len(bad_visit)} test patient(s) were predicted for another visit than their last one",
            "Predict on the artifact's visits.parquet so the latest visit is the test target",
        )
    label_idx = artifact.vocab.medications.index
    unknown = sorted({c for c in df["atc3"].unique().to_list() if c not in label_idx})
    if unknown:
        raise InputError(
            f"{path}: {len(unknown)} drug code(s) are not in the artifact's label list (e.g. {unknown[0]})",
            "Predict with a model trained on this artifact, or pass its artifact with --data",
        )
    if df.select(["subject_id", "atc3"]).is_duplicated().any():
        raise InputError(
            f"{path}: a (subject_id, atc3) pair appears twice", "Pass the file as written by `leader predict`"
        )

    rows = np.asarray([row_of[s] for s in df["subject_id"].to_list()])
    cols = np.asarray([label_idx[c] for c in df["atc3"].to_list()])
    score = df["score"].to_numpy().astype(np.float64)
    selected = df["selected"].to_numpy().astype(bool)
    threshold = _inferred_threshold(path, score, selected)
    covered = np.unique(rows)
    y_prob = np.zeros(y_all.shape, dtype=np.float64)
    y_prob[rows, cols] = score
    y_prob, y_true = y_prob[covered], y_all[covered]
    n_visits = np.asarray([samples[i].n_visits for i in covered])

    name = name or path.stem
    entry = evaluate_scores(name, y_true, y_prob, n_visits, threshold, ddi, settings.report)
    top_k = int(df.group_by("subject_id").len()["len"].max())
    entry = {
        "name": name,
        "kind": "predictions",
        "run_dir": None,
        **{k: v for k, v in entry.items() if k != "name"},
        "predictions": {
            "path": str(path.resolve()),
            "rows": int(df.height),
            "top_k": top_k,
            "test_patients": len(samples),
            "matched_test_patients": int(len(covered)),
            "missing_test_patients": int(len(samples) - len(covered)),
            "ignored_other_subjects": ignored,
            "absent_drugs": "score 0 (not in the patient's top-k)",
        },
        "efficiency": None,
    }
    if len(covered) < len(samples):
        console.info(
            f"warning: {len(samples) - len(covered)} test patient(s) are not in {path}; evaluated on the rest"
        )
    console.info(f"{name}: {len(covered)} test patients, top-{top_k}, threshold {threshold['value']:.4g}")

    report = _header(settings, artifact, SETTINGS_ARTIFACT, y_true, n_visits, ddi)
    report["source"] = "predictions"
    report["drugs"] = _drugs_block(artifact, y_true, settings)
    report["runs"] = [entry]
    report["efficiency"] = None
    return _finish(settings, report, output_format)


def _check_format(output_format: str) -> None:
    if output_format not in ("table", "json"):
        raise SettingsError(f"--format {output_format!r} is not known", "Use --format table or --format json")


def _read_predictions(path: Path):
    import polars as pl

    if not path.is_file():
        raise InputError(
            f"predictions file {path} does not exist", "Write one with `leader predict ... -o recs.csv`"
        )
    try:
        df = pl.read_parquet(path) if path.suffix.lower() == ".parquet" else pl.read_csv(path)
    except Exception as exc:  # noqa: BLE001 - polars raises several error types for unreadable files
        raise InputError(
            f"{path} is not a readable CSV/parquet file ({type(exc).__name__})",
            "Pass a `leader predict` output",
        ) from None
    for col in PREDICTION_COLUMNS:
        if col not in df.columns:
            raise InputError(
                f"{path}: column '{col}' is missing",
                f"A predictions file has columns {', '.join(PREDICTION_COLUMNS)}",
            )
    try:
        if df.schema["selected"] == pl.Utf8:
            df = df.with_columns(pl.col("selected").str.to_lowercase().is_in(["true", "1"]).alias("selected"))
        df = df.with_columns(
            pl.col("subject_id").cast(pl.Int64),
            pl.col("hadm_id").cast(pl.Int64),
            pl.col("atc3").cast(pl.Utf8),
            pl.col("score").cast(pl.Float64),
            pl.col("selected").cast(pl.Boolean),
        )
    except pl.exceptions.PolarsError:
        raise InputError(
            f"{path}: columns have unexpected types", "Pass the file as written by `leader predict`"
        ) from None
    if df.height == 0:
        raise InputError(f"{path} has no rows", "Pass a non-empty predictions file")
    if df.select(pl.any_horizontal(pl.all().is_null()).any()).item():
        raise InputError(f"{path}: has empty values", "Pass the file as written by `leader predict`")
    return df


def _inferred_threshold(path: Path, score: np.ndarray, selected: np.ndarray) -> dict:
    how = "inferred from the predictions file: lowest score among selected drugs"
    if selected.any():
        t = float(score[selected].min())
        if t <= 0 or (~selected & (score >= t)).any():
            raise InputError(
                f"{path}: 'selected' is not 'score >= one threshold' (a selected score is not above every unselected one)",
                "Pass the file as written by `leader predict`",
            )
        return {"value": t, "how": how}
    top = float(score.max()) if len(score) else 0.0
    return {
        "value": float(np.nextafter(max(top, 0.0), np.inf)),
        "how": "no drug selected in the predictions file",
    }


# -- output --------------------------------------------------------------------------------------------


def _jsonable(obj: Any) -> Any:
    """numpy → Python; non-finite floats → None (strict JSON)."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, (np.floating, float)):
        return float(obj) if math.isfinite(float(obj)) else None
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    return obj


def _finish(settings, report: dict, output_format: str) -> dict:
    report = _jsonable(report)
    out = Path(settings.paths.report)
    write_report_folder(report, out)
    report["output"] = str(out)
    if output_format == "json":
        text = json.dumps({k: v for k, v in report.items() if k != "output"}, indent=2, allow_nan=False)
        console.out.file.write(text + "\n")
        console.out.file.flush()
    else:
        print_tables(report)
        console.out.print(
            f"report written to {out}/ (metrics.json, report.md, report.html, plots)", highlight=False
        )
    return report


def _looks_like_report(path: Path) -> bool:
    return not any(path.iterdir()) or any((path / f).is_file() for f in REPORT_FILES)


def write_report_folder(report: dict, out: Path) -> None:
    """Write everything to a temporary sibling folder, then swap it in; an old report is replaced only when the
    new one is complete, and a folder that is not a report is never replaced."""
    from leadercli.report import plots, render

    out = Path(out)
    if out.exists() and (not out.is_dir() or not _looks_like_report(out)):
        raise SettingsError(
            f"report folder {out} exists and is not a report folder (no metrics.json/report.md/report.html)",
            "Pick an empty or new folder with -o",
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    try:
        with console.step("drawing plots"):
            figures = plots.write_plots(report, tmp)
        runs.write_json(tmp / "metrics.json", report)
        (tmp / "report.md").write_text(render.markdown(report, figures))
        (tmp / "report.html").write_text(render.html(report, figures, tmp))
        old = None
        if out.exists():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            os.rename(out, old)
        try:
            os.rename(tmp, out)
        except OSError:
            if old is not None:
                os.rename(old, out)
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def print_tables(report: dict) -> None:
    """The rich tables on stdout: metrics per run and group (bootstrap mean ± std), then efficiency."""
    from rich.table import Table

    from leadercli.report.render import efficiency_rows, metric_rows

    b = report["bootstrap"]
    table = Table(
        title=f"Test split, {report['samples']['n']} patients — mean ± std over {b['rounds']} bootstrap rounds",
        title_justify="left",
    )
    from rich.console import Console

    # rich gives a pipe 80 columns, too few for these tables: there they take their natural width
    target = (
        console.out if console.out.is_terminal else Console(file=console.out.file, width=200, soft_wrap=True)
    )
    header, rows = metric_rows(report, digits=3)
    for i, h in enumerate(header):
        table.add_column(h, justify="left" if i < 2 else "right", no_wrap=True, min_width=len(h))
    for r in rows:
        table.add_row(*r)
    target.print(table)
    header, rows = efficiency_rows(report)
    if rows:
        eff = report.get("efficiency") or {}
        t2 = Table(
            title=f"Efficiency on {eff.get('device')} (batch {eff.get('batch_size')})", title_justify="left"
        )
        for i, h in enumerate(header):
            t2.add_column(h, justify="left" if i in (0, 1, 4) else "right", no_wrap=True, min_width=len(h))
        for r in rows:
            t2.add_row(*r)
        target.print(t2)
    for r in report["runs"]:
        th = r["threshold"]
        console.out.print(f"threshold {r['name']}: {th['value']:.4g} ({th['how']})", highlight=False)
    ratio = (report.get("efficiency") or {}).get("teacher_student_latency_ratio")
    for name, v in (ratio or {}).items():
        console.out.print(f"teacher / {name} latency: {v:.1f}×", highlight=False)
