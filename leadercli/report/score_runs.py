"""Score run folders on the artifact's test split and time them: the report dict of `leader report RUN...`.

Run it small on CPU:  leader train student && leader report      (or: leader report runs/student -o report/)

What it owns (DESIGN §5, leader-reference.md §5):
- which runs (the given folders, else those of `paths.teacher`, `paths.distilled`, `paths.student` that exist)
  and which artifact (`--data`/settings, else the one recorded in the first run's manifest);
- the popularity floor: the first popularity run given, else a popularity model fitted here on the
  artifact's training split exactly as `leader train student --model popularity` fits it (drug shares of the
  training samples; threshold tuned on validation unless `student.threshold` fixes it);
- scoring the test split with every run (`runs.load_run`) at the threshold the run recorded, then
  `evaluate.evaluate_scores` and `evaluate.compare`;
- efficiency: parameters (total, trainable) and latency. Samples are encoded, collated and moved to the device
  beforehand; the scoring pass over the whole split comes first (it is also the warm-up); then
  `report.latency_repeats` timed passes over the first `report.latency_patients` test patients in batches of
  `report.latency_batch_size`, repeated until MIN_TIMED_SECONDS have been timed (at most MAX_TIMED_PASSES);
  the fastest pass counts (best of k), the median is kept too. Only the model calls and the copy of the
  probabilities back to the host are timed (`time.perf_counter`, CUDA synchronised around each). The
  teacher's scorer takes samples, so its time also includes building and tokenising prompts. Baselines have no
  learned weights and run on the CPU. The machine is recorded: torch threads, CPU model (/proc/cpuinfo), the
  load average (/proc/loadavg) before and after, the GPU name; the teacher/student ratio is given only for
  runs timed on the same device with the same thread count.

No printing: progress lines go to the `log` callback; the caller writes (`write`) and prints (`cli/report.py`).
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from leadercli import metrics, runs
from leadercli.data.artifact import Artifact
from leadercli.errors import ArtifactError
from leadercli.report import evaluate

KINDS = ("teacher", "distilled", "student", "popularity", "previous")
BASELINES = ("popularity", "previous")
MIN_TIMED_SECONDS = 0.5
MAX_TIMED_PASSES = 50
SETTINGS_ARTIFACT = "settings (--data, paths.artifact or <paths.data>/<data.source>)"
Log = Callable[[str], None]


def _quiet(_msg: str) -> None:
    pass


@dataclass
class Scored:
    """One run's test-split output, aligned with the report's test samples."""

    probs: np.ndarray  # (N, M) float probabilities
    subject_ids: np.ndarray  # (N,) to check the alignment
    parameters: dict | None  # {"total", "trainable", "from"}
    timing: dict | None  # see _time_best_of


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


def _threshold(manifest: dict, run_dir: Path) -> dict:
    th = manifest.get("threshold")
    if isinstance(th, (int, float)):
        return {"value": float(th), "how": "recorded in the run's manifest"}
    if not isinstance(th, dict) or not isinstance(th.get("value"), (int, float)):
        raise ArtifactError(f"run {run_dir} has no decision threshold in its manifest", "Retrain the run")
    return {"value": float(th["value"]), "how": str(th.get("how", "recorded in the run's manifest"))}


def test_samples(artifact: Artifact, max_visits: int, per_visit: bool) -> list:
    from leadercli.data.samples import load_samples

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


# -- the popularity floor -----------------------------------------------------------------------------


class FittedPopularity:
    """The popularity baseline fitted on the artifact's training split, scored like a popularity run.

    The same numbers as `leader train student --model popularity`: drug shares of the training samples
    (`drug_frequency` of their multi-hot labels, float32), threshold tuned on validation (max Jaccard) unless
    `student.threshold` fixes it."""

    kind = "popularity"
    tensor_input = True

    def __init__(self, artifact: Artifact, settings) -> None:
        import torch

        from leadercli.data.batching import Encoder
        from leadercli.data.samples import load_samples
        from leadercli.models.baselines import PopularityModel, drug_frequency

        sp = settings.samples
        idx = artifact.vocab.medications.index
        train = load_samples(artifact, "train", 1, sp.per_visit)
        if not train:
            raise ArtifactError(
                f"artifact {artifact.path} has no training patients to fit the popularity floor on",
                "Re-run `leader preprocess` with a training split",
            )
        # the recipe's two lines (training/student.py), on the same labels
        freq = drug_frequency(torch.from_numpy(evaluate.multi_hot(train, idx)))
        self.module = PopularityModel(freq).eval()
        self.frequency = freq.numpy()  # (M,) float32
        self.encoder = Encoder(artifact.vocab)
        self.device = torch.device("cpu")
        val = load_samples(artifact, "val", 1, sp.per_visit)
        y_val = evaluate.multi_hot(val, idx)
        p_val = np.broadcast_to(self.frequency, y_val.shape)
        th = metrics.choose_threshold(settings.student.threshold, y_val, p_val)
        self.threshold = {**th, "how": f"{th['how']}; popularity fitted by the report on the training split"}

    def score_batch(self, batch):
        import torch

        with torch.inference_mode():
            return self.module.probs(batch).float().cpu()


# -- timing and scoring --------------------------------------------------------------------------------


def _sync(device) -> None:
    if device is not None and getattr(device, "type", str(device)) == "cuda":
        import torch

        torch.cuda.synchronize(device)


def read_load() -> list[float] | None:
    """The 1, 5 and 15 minute load averages from /proc/loadavg (None where unreadable)."""
    try:
        return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
    except (OSError, ValueError):
        try:
            return list(os.getloadavg())
        except OSError:
            return None


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo, else what `platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def machine(device) -> dict:
    import torch

    out = {
        "torch_threads": torch.get_num_threads(),
        "logical_cpus": os.cpu_count(),
        "cpu_model": cpu_model(),
        "load_before": read_load(),
    }
    if getattr(device, "type", "cpu") == "cuda":
        out["gpu"] = torch.cuda.get_device_name(device)
    return out


def _time_best_of(call, batches: list, sizes: list[int], device, repeats: int, batch_size: int) -> dict:
    """Timed passes over `batches` (already scored once, so warm); the fastest pass counts."""
    import torch

    load = read_load()
    passes: list[float] = []
    while len(passes) < MAX_TIMED_PASSES and (len(passes) < repeats or sum(passes) < MIN_TIMED_SECONDS):
        total = 0.0
        for b in batches:
            _sync(device)
            t0 = time.perf_counter()
            call(b)
            _sync(device)
            total += time.perf_counter() - t0
        passes.append(total)
    patients = int(sum(sizes))
    best = min(passes)
    return {
        "device": str(device) if device is not None else "cpu",
        "threads": torch.get_num_threads(),
        "load_1min": load[0] if load else None,
        "batch_size": batch_size,
        "timed_passes": len(passes),
        "timed_patients_per_pass": patients,
        "best_pass_seconds": best,
        "median_ms_per_patient": 1000.0 * statistics.median(passes) / patients,
        "latency_ms_per_patient": 1000.0 * best / patients,
        "throughput_patients_per_s": patients / best if best > 0 else None,
        "latency_is": f"best of {len(passes)} passes",
    }


def _count_parameters(model) -> dict:
    params = list(model.parameters())
    return {
        "total": int(sum(p.numel() for p in params)),
        "trainable": int(sum(p.numel() for p in params if p.requires_grad)),
        "from": "model",
    }


def score_run(scorer, samples: list, rcfg) -> Scored:
    """Any run through its `runs.Scorer` (or `FittedPopularity`): score every test sample once, then time
    best-of-k passes over the first `rcfg.latency_patients` of them."""
    from leadercli.data.batching import batches

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
    timing = _time_best_of(call, ready[:k], sizes[:k], device, rcfg.latency_repeats, bs)
    if not scorer.tensor_input:
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
    _sync(device)
    return Scored(np.concatenate(outputs), subject_ids, parameters, timing)


def latency_ratios(entries: list[dict]) -> dict:
    """Teacher latency / latency of each student-like run (student, distilled) timed on the same device with
    the same thread count; {} without a teacher."""
    eff = {e["name"]: e.get("efficiency") or {} for e in entries}
    teachers = [
        e["name"] for e in entries if e["kind"] == "teacher" and eff[e["name"]].get("latency_ms_per_patient")
    ]
    if not teachers:
        return {}
    t = eff[teachers[0]]
    out = {}
    for e in entries:
        s = eff[e["name"]]
        if e["kind"] not in ("student", "distilled") or not s.get("latency_ms_per_patient"):
            continue
        if (s.get("device"), s.get("threads")) != (t.get("device"), t.get("threads")):
            continue
        out[e["name"]] = t["latency_ms_per_patient"] / s["latency_ms_per_patient"]
    return out


# -- the entry point -----------------------------------------------------------------------------------


def score_runs(settings, run_dirs: list[Path], log: Log | None = None) -> dict:
    """Evaluate runs (and the popularity floor) on the test split; returns the report dict (not yet JSON-safe:
    numpy arrays inside; `write.jsonable` converts)."""
    import torch

    from leadercli.hardware import resolve_device

    log = log or _quiet
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
    base = test_samples(artifact, settings.samples.max_visits, per_visit)
    y_true = evaluate.multi_hot(base, artifact.vocab.medications.index)
    n_visits = np.asarray([s.n_visits for s in base])
    subject_ids = np.asarray([s.subject_id for s in base])
    env = machine(device)
    log(
        f"report: {len(dirs)} run(s), {len(base)} test patients of {artifact.path}, device {device}, "
        f"{env['torch_threads']} threads"
    )
    # the floor is fitted first: its training-split frequencies are also the report's drug frequencies
    popularity = FittedPopularity(artifact, settings)
    has_floor = any(m["kind"] == "popularity" for m in manifests)
    names = unique_names(
        [Path(d).resolve().name or "run" for d in dirs] + ([] if has_floor else ["popularity"])
    )

    jobs: list[tuple] = [
        (name, d, m, th) for name, d, m, th in zip(names, dirs, manifests, thresholds, strict=False)
    ]
    if not has_floor:
        jobs.append((names[-1], None, None, popularity.threshold))
    cache: dict[int, list] = {settings.samples.max_visits: base}
    entries, reps = [], []
    for name, d, m, th in jobs:
        if d is None:
            scorer, kind, mv = popularity, "popularity", settings.samples.max_visits
            log(f"scoring {name} (popularity fitted on the training split) and timing it")
        else:
            kind = m["kind"]
            mv = int(runs.run_samples_settings(m, d).get("max_visits", settings.samples.max_visits))
            log(f"scoring {name} ({kind}) and timing it")  # no spinner: its thread would perturb timings
            scorer = runs.load_run(d, device)
        if mv not in cache:
            cache[mv] = test_samples(artifact, mv, per_visit)
        scored = score_run(scorer, cache[mv], rcfg)
        del scorer
        if not np.array_equal(scored.subject_ids, subject_ids):
            raise ArtifactError(
                f"run {d} scored other patients than the test split", "Report a bug with --debug"
            )
        entry, r = evaluate.evaluate_scores(name, y_true, scored.probs, n_visits, th, ddi, rcfg)
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
            **{k: v for k, v in entry.items() if k != "name"},
            "efficiency": {"parameters": parameters, **(scored.timing or {})},
        }
        o = entry["groups"]["overall"]["point"]
        log(
            f"{name}: PRAUC {o['prauc']:.4f}  Jaccard {o['jaccard']:.4f}  F1 {o['f1']:.4f}  "
            f"({entry['efficiency']['latency_ms_per_patient']:.3f} ms/patient)"
        )
        entries.append(entry)
        reps.append(r)
        del scored
        if device.type == "cuda":
            torch.cuda.empty_cache()

    floor_index = next(i for i, e in enumerate(entries) if e["kind"] == "popularity")
    comparison = evaluate.compare(entries, reps, floor_index)
    env["load_after"] = read_load()
    report = evaluate.assemble(
        "runs",
        artifact_block(artifact, how),
        artifact,
        y_true,
        n_visits,
        ddi,
        settings,
        popularity.frequency,
        entries,
        comparison,
    )
    report["efficiency"] = {
        "device": str(device),
        "batch_size": rcfg.latency_batch_size,
        "machine": env,
        "busy": bool(
            env["load_before"] and env["logical_cpus"] and env["load_before"][0] >= env["logical_cpus"]
        ),
        "timing": (
            f"model calls only, after a scoring pass over the whole test split; best of ≥ {rcfg.latency_repeats} "
            f"passes (≥ {MIN_TIMED_SECONDS} s in all, at most {MAX_TIMED_PASSES}) over the first "
            f"{rcfg.latency_patients} test patients; baselines on the CPU; the teacher's time includes prompt "
            "tokenisation"
        ),
        "teacher_student_latency_ratio": latency_ratios(entries),
        "ratio_rule": "teacher / student latency, only for runs timed on the same device with the same threads",
    }
    return report
