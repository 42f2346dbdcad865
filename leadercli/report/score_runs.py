"""Score run folders on the artifact's test split and time them: the report dict of `leader report RUN...`.

Run it small on CPU:  leader train student && leader report      (or: leader report runs/student -o report/)

What it owns (DESIGN §5, leader-reference.md §5):
- which runs (the given folders, else those of `paths.teacher`, `paths.distilled`, `paths.student` that exist)
  and which artifact (`--data`/settings, else the one recorded in the first run's manifest);
- the popularity floor: the first popularity run given, else the one `report/floor.py` fits;
- scoring the test split with every run through its `Scorer` (`runs.load_run`, the run's output rules
  applied, `predict.unknown_shrink` included: the scores `leader predict` writes for the same patients) at the
  threshold the run recorded, then `evaluate.evaluate_scores` and `evaluate.compare`;
- efficiency: parameters (total, trainable), latency (`report/timing.py`) and the training time and
  no-history treatment the run's manifest records (`report/table.py`). The teacher's scorer takes
  samples, so its time also includes building and tokenising prompts. Baselines have no learned weights and
  run on the CPU.

No printing: progress lines go to the `log` callback; the caller writes (`write`) and prints (`cli/report.py`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from leadercli import kinds, runs
from leadercli.data.artifact import Artifact
from leadercli.data.batching import batches
from leadercli.data.samples import load_samples
from leadercli.errors import ArtifactError
from leadercli.hardware import resolve_device
from leadercli.report import evaluate, table, timing
from leadercli.report.explained import explain_patients
from leadercli.report.floor import Floor, fit_floor

SETTINGS_ARTIFACT = "settings (--data, paths.artifact or <paths.data>/<data.source>)"
Log = Callable[[str], None]


def quiet(_msg: str) -> None:
    """The default `log`: progress lines dropped."""


@dataclass
class Scored:
    """One run's test-split output, aligned with the report's test samples."""

    probs: np.ndarray  # (N, M) float probabilities
    subject_ids: np.ndarray  # (N,) to check the alignment
    parameters: dict | None  # {"total", "trainable", "from"}
    timing: dict | None  # see timing.time_best_of


@dataclass
class EvalSplit:
    """What every run is scored against: the test samples (by history length), their labels and groups."""

    artifact: Artifact
    samples: dict[int, list]  # max_visits → the test samples with that much history
    y_true: np.ndarray  # (N, M) bool
    n_visits: np.ndarray  # (N,)
    subject_ids: np.ndarray  # (N,)
    ddi: np.ndarray  # (K, 2) label-index pairs
    per_visit: bool

    def with_history(self, max_visits: int) -> list:
        if max_visits not in self.samples:
            self.samples[max_visits] = test_samples(self.artifact, max_visits, self.per_visit)
        return self.samples[max_visits]


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


def unique_names(bases: list[str]) -> list[str]:
    """Names made unique with a numeric suffix."""
    names: list[str] = []
    for base in bases:
        name, k = base, 2
        while name in names:
            name, k = f"{base}-{k}", k + 1
        names.append(name)
    return names


def recorded_threshold(manifest: dict, run_dir: Path) -> dict:
    th = manifest.get("threshold")
    if isinstance(th, (int, float)):
        return {"value": float(th), "how": "recorded in the run's manifest"}
    if not isinstance(th, dict) or not isinstance(th.get("value"), (int, float)):
        raise ArtifactError(f"run {run_dir} has no decision threshold in its manifest", "Retrain the run")
    return {"value": float(th["value"]), "how": str(th.get("how", "recorded in the run's manifest"))}


def test_samples(artifact: Artifact, max_visits: int, per_visit: bool) -> list:
    samples = load_samples(artifact, "test", max_visits, per_visit)
    if not samples:
        raise ArtifactError(
            f"artifact {artifact.path} has no test patients", "Re-run `leader preprocess` with a test split"
        )
    return samples


def artifact_block(artifact: Artifact, how: str) -> dict:
    return {
        "path": str(artifact.path.resolve()),
        "from": how,
        "source": artifact.manifest.get("source"),
        "vocab_hash": artifact.vocab_hash,
        "n_labels": len(artifact.labels),
    }


# -- scoring ------------------------------------------------------------------------------------------


def _count_parameters(model) -> dict:
    params = list(model.parameters())
    return {
        "total": int(sum(p.numel() for p in params)),
        "trainable": int(sum(p.numel() for p in params if p.requires_grad)),
        "from": "model",
    }


def score_run(scorer, samples: list, rcfg) -> Scored:
    """Any run through its `scorer.Scorer` (a run folder's or the fitted floor's): score every test sample once, then time
    best-of-k passes over the first `rcfg.latency_patients` of them."""
    bs = rcfg.latency_batch_size
    device = scorer.device
    if scorer.tensor_input:
        enc = scorer.encoder
        cpu_batches = list(batches(enc.encode_all(samples), bs, enc.collate))
        subject_ids = np.concatenate([b["subject_id"].numpy() for b in cpu_batches])
        ready = [{k: v.to(device) for k, v in b.items()} for b in cpu_batches]
        sizes = [len(b["subject_id"]) for b in cpu_batches]

        def call(b):
            return scorer.score_batch(b).numpy()
    else:
        subject_ids = np.asarray([s.subject_id for s in samples])
        ready = [samples[i : i + bs] for i in range(0, len(samples), bs)]
        sizes = [len(c) for c in ready]

        def call(chunk):
            return np.asarray(scorer.score_samples(chunk, bs), dtype=np.float32)

    outputs = [call(b) for b in ready]  # the scoring pass, also the warm-up of the timed ones
    k = 1
    while k < len(ready) and sum(sizes[:k]) < rcfg.latency_patients:
        k += 1
    times = timing.time_best_of(call, ready[:k], sizes[:k], device, rcfg.latency_repeats, bs)
    if not scorer.tensor_input:
        times["includes"] = "prompt building and tokenisation"
    if scorer.kind in kinds.BASELINES:
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
    timing.sync(device)
    return Scored(np.concatenate(outputs), subject_ids, parameters, times)


# -- the entry point -----------------------------------------------------------------------------------


def score_runs(settings, run_dirs: list[Path], log: Log | None = None) -> dict:
    """Evaluate runs (and the popularity floor) on the test split; returns the report dict (not yet JSON-safe:
    numpy arrays inside; `write.jsonable` converts)."""
    log = log or quiet
    dirs = resolve_run_dirs(settings, run_dirs)
    manifests = [runs.read_manifest(d) for d in dirs]
    for d, m in zip(dirs, manifests, strict=True):
        if m.get("kind") not in kinds.KINDS:
            raise ArtifactError(
                f"run {d} has an unknown kind {m.get('kind')!r}",
                f"Pass runs of kind {', '.join(kinds.KINDS)}",
            )
    artifact, how = resolve_artifact(settings, manifests)
    for d, m in zip(dirs, manifests, strict=True):
        runs.check_matches_artifact(m, artifact, d)
    thresholds = [recorded_threshold(m, d) for d, m in zip(dirs, manifests, strict=True)]
    device = resolve_device(settings.hardware)
    test = _test_split(artifact, settings)
    env = timing.machine(device)
    log(
        f"report: {len(dirs)} run(s), {len(test.subject_ids)} test patients of {artifact.path}, device {device}, "
        f"{env['torch_threads']} threads"
    )
    # the floor is fitted first: its training-split frequencies are also the report's drug frequencies
    floor = fit_floor(artifact, settings)
    has_floor = any(m["kind"] == "popularity" for m in manifests)
    names = unique_names(
        [Path(d).resolve().name or "run" for d in dirs] + ([] if has_floor else ["popularity"])
    )
    jobs = list(zip(names, dirs, manifests, thresholds, strict=False))
    if not has_floor:
        jobs.append((names[-1], None, None, floor.threshold))
    entries, reps = [], []
    for name, d, m, th in jobs:
        entry, r = _score_job(name, d, m, th, floor, test, settings, device, log)
        entries.append(entry)
        reps.append(r)
    floor_index = next(i for i, e in enumerate(entries) if e["kind"] == "popularity")
    comparison = evaluate.compare(entries, reps, floor_index)
    env["load_after"] = timing.read_load()
    report = evaluate.assemble(
        "runs",
        artifact_block(artifact, how),
        artifact,
        test.y_true,
        test.n_visits,
        test.ddi,
        settings,
        floor.frequency,
        entries,
        comparison,
    )
    report["efficiency"] = timing.efficiency_block(device, settings.report, env, entries)
    report["explained"] = _explained(entries, test, settings, device, log)
    return report


def _explained(entries: list[dict], test: EvalSplit, settings, device, log: Log) -> dict | None:
    """Sample explanations (`report/explained.py`) from the learned run with the best overall PRAUC; None
    when no learned run is compared."""
    learned = [e for e in entries if e["kind"] in kinds.LEARNED and e["run_dir"]]
    if not learned:
        return None
    best = max(learned, key=lambda e: e["groups"]["overall"]["point"]["prauc"])
    log(f"explaining {best['name']}'s top drugs for a few test patients (occlusion)")
    scorer = runs.load_run(Path(best["run_dir"]), device, unknown_shrink=settings.predict.unknown_shrink)
    samples = test.with_history(best["max_visits"])
    return {"run": best["name"], **explain_patients(scorer, samples, test.y_true, settings.report.seed)}


def _test_split(artifact: Artifact, settings) -> EvalSplit:
    sp = settings.samples
    base = test_samples(artifact, sp.max_visits, sp.per_visit)
    return EvalSplit(
        artifact,
        {sp.max_visits: base},
        evaluate.multi_hot(base, artifact.vocab.medications.index),
        np.asarray([s.n_visits for s in base]),
        np.asarray([s.subject_id for s in base]),
        artifact.ddi_index_pairs(),
        sp.per_visit,
    )


def _score_job(name, d, m, th, floor: Floor, test: EvalSplit, settings, device, log: Log):
    """One run (or the fitted floor when `d` is None) scored and timed → (its report entry, its bootstrap
    replicates)."""
    if d is None:
        scorer, kind, mv = floor.scorer, "popularity", settings.samples.max_visits
        log(f"scoring {name} (popularity fitted on the training split) and timing it")
    else:
        kind = m["kind"]
        mv = int(runs.run_samples_settings(m, d).get("max_visits", settings.samples.max_visits))
        log(f"scoring {name} ({kind}) and timing it")  # no spinner: its thread would perturb timings
        scorer = runs.load_run(d, device, unknown_shrink=settings.predict.unknown_shrink)
    scored = score_run(scorer, test.with_history(mv), settings.report)
    shrink = scorer.unknown_shrink if scorer.shrinks else 0.0
    cal = scorer.calibrator
    del scorer
    if not np.array_equal(scored.subject_ids, test.subject_ids):
        raise ArtifactError(f"run {d} scored other patients than the test split", "Report a bug with --debug")
    entry, r = evaluate.evaluate_scores(
        name, test.y_true, scored.probs, test.n_visits, th, test.ddi, settings.report
    )
    parameters = scored.parameters or (m or {}).get("parameters")
    if parameters is not None and "from" not in parameters:
        parameters = {**parameters, "from": "manifest"}
    entry = {
        "name": name,
        "kind": kind,
        "run_dir": str(Path(d).resolve()) if d is not None else None,
        "fitted_by_report": d is None,
        "trained_at": m.get("created_at") if m else None,
        "max_visits": mv,
        "unknown_shrink": shrink,  # λ the run's Scorer applied (predict.unknown_shrink; 0 = none)
        "calibrator": cal.to_dict() if cal is not None else None,  # the run's calibration.json, applied
        "training_seconds": table.training_seconds(kind, m),  # the manifest's; None for the fitted floor
        "no_history": table.no_history(kind, m),
        **{k: v for k, v in entry.items() if k != "name"},
        "efficiency": {"parameters": parameters, **(scored.timing or {})},
    }
    o = entry["groups"]["overall"]["point"]
    log(
        f"{name}: PRAUC {o['prauc']:.4f}  Jaccard {o['jaccard']:.4f}  F1 {o['f1']:.4f}  "
        f"({entry['efficiency']['latency_ms_per_patient']:.3f} ms/patient)"
    )
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return entry, r
