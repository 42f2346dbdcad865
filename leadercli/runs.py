"""Run folders: the one place that knows what a run folder holds and how to load it.

- manifests that describe the run (kind, model config, label list and hash, vocab hash, artifact, the input
  settings — `inputs.samples`, `inputs.prompt` — threshold, metrics), written last so that a manifest means a
  finished run;
- the checks that make a run refuse an artifact or a vocabulary it was not trained for;
- `load_run(path)` → a `leadercli.scorer.Scorer` for every kind of run (`leadercli.kinds`), its calibrator
  (`calibration.json`, when the run has one) included, with one interface:
  `score_samples(samples)` for all, `score_batch(batch)` for the kinds that read student tensors
  (`tensor_input`), the run's output rules applied. `leader predict`, `leader report`, `leader distill` and
  the Python API (`leadercli.Recommender`) load runs only through it.

The resume checkpoint inside a run folder (`checkpoint/`) is `leadercli.checkpoint`'s business; what each kind
is, `leadercli.kinds`'.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import tomllib

from leadercli import __version__, console, paths
from leadercli.data.artifact import Artifact, Vocab, labels_hash, vocab_hash
from leadercli.errors import ArtifactError, SettingsError
from leadercli.kinds import COMMAND_KINDS, KINDS, rebuild_hint
from leadercli.modes import fix_file

MANIFEST = "manifest.json"
SETTINGS = "settings.toml"
LOG = "train_log.jsonl"
VOCAB_COPY = "vocab.json"
DDI_COPY = "ddi.parquet"
MODEL_FILE = "model.safetensors"


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def write_json(path: Path, obj: Any) -> None:
    """Atomic JSON write (temp file in the same folder + rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    fix_file(fd)  # mkstemp makes 0600: give it the umask's mode
    with os.fdopen(fd, "w") as fh:
        json.dump(obj, fh, indent=2, sort_keys=False, default=str)
        fh.write("\n")
    os.replace(tmp, path)


def read_manifest(run_dir: Path) -> dict:
    path = Path(run_dir) / MANIFEST
    if not path.is_file():
        raise ArtifactError(
            f"{run_dir} is not a finished run folder (no {MANIFEST})",
            "Train it first (`leader train student`, `leader distill`, `leader train teacher`) or pass another --model",
        )
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ArtifactError(f"{path} is not valid JSON ({exc.msg})", "Re-run the training command") from None


def base_manifest(kind: str, artifact: Artifact, settings=None) -> dict:
    """The manifest fields every run has; `settings` adds the input settings that define the run's samples."""
    out = {
        "kind": kind,
        "leadercli_version": __version__,
        "created_at": now(),
        "artifact": {
            "path": str(artifact.path.resolve()),
            "source": artifact.source,
            "vocab_hash": artifact.vocab_hash,
            "content_hash": artifact.content_hash,
            "created_at": artifact.manifest.get("created_at"),
            **({"meds": artifact.manifest["meds"]} if "meds" in artifact.manifest else {}),  # for --for-run
        },
        "labels": artifact.labels,
        "labels_hash": labels_hash(artifact.labels),
    }
    if settings is not None:
        out["inputs"] = {"samples": settings.samples.model_dump(mode="json")}
    out["label_prior"] = label_prior(artifact)
    am = artifact.manifest
    out["cohort"] = {  # counts only (for the model card)
        k: am.get(k)
        for k in (
            "source_version",
            "patients",
            "visits",
            "single_visit_patients",
            "multi_visit_patients",
            "splits",
        )
        if k in am
    }
    return out


def label_prior(artifact: Artifact) -> list[float]:
    """Share of the training split's target visits that carry each drug (label order): the popularity
    baseline's scores, and the prior `leader predict` shrinks towards for visits of unknown codes."""
    import polars as pl  # here, not at the top: the commands' argument checks import this module

    train = artifact.patients().filter(pl.col("split") == "train").select("subject_id")
    last = (
        artifact.visits()
        .join(train, on="subject_id", how="semi")
        .sort(["subject_id", "visit_no"])
        .group_by("subject_id")
        .agg(pl.col("medications").last())
    )
    n = max(last.height, 1)
    counts = dict(last.explode("medications").group_by("medications").len().iter_rows())
    return [round(counts.get(code, 0) / n, 6) for code in artifact.labels]


def run_samples_settings(manifest: dict, run_dir: Path) -> dict:
    """The sample settings (`max_visits`, `per_visit`) a run was trained with: from its manifest; runs made
    before the manifest recorded them fall back to the run's own settings.toml, then to the defaults of the
    version that wrote them (never to the current settings)."""
    got = (manifest.get("inputs") or {}).get("samples")
    if got:
        return dict(got)
    try:
        return dict(tomllib.loads((Path(run_dir) / SETTINGS).read_text())["samples"])
    except (OSError, KeyError, tomllib.TOMLDecodeError):
        return {"max_visits": 10, "per_visit": False}


def check_matches_artifact(manifest: dict, artifact: Artifact, run_dir: Path) -> None:
    """A checkpoint only scores an artifact with the same label list and vocabulary."""
    if manifest.get("labels_hash") != labels_hash(artifact.labels):
        raise ArtifactError(
            f"run {run_dir} was trained on another label list ({len(manifest.get('labels', []))} drugs) than "
            f"artifact {artifact.path} ({len(artifact.labels)} drugs)",
            "Use the artifact the run was trained on, or retrain on this one",
        )
    want = manifest.get("artifact", {}).get("vocab_hash")
    if want is not None and want != artifact.vocab_hash:
        raise ArtifactError(
            f"run {run_dir} was trained on an artifact with another vocabulary (vocab hash {want}, "
            f"artifact {artifact.path} has {artifact.vocab_hash})",
            "Use the artifact the run was trained on, or retrain on this one",
        )


# every name a run folder of any kind may hold (weights, teacher adapter and head, feature cache, checkpoints);
# a folder without a manifest that holds only these (and hidden temporary files) is an unfinished run
RUN_ENTRIES = frozenset(
    {MANIFEST, SETTINGS, LOG, VOCAB_COPY, DDI_COPY, MODEL_FILE, "checkpoint", "checkpoint.tmp", "adapter"}
    | {"head.safetensors", "features", "best", "README.md"}  # README.md = leadercli.card.CARD, the model card
    | {"calibration.json"}  # = calibration.CALIBRATION_FILE
    | {"code_text.safetensors"}  # = code_titles.FILE, a title-reading student's title embeddings
)


def check_out_dir(
    out: Path,
    protected: dict[str, Path | None] | None = None,
    option: str = "--out",
    need: int = 0,
    command: str | None = None,
) -> None:
    """Refuse a run folder that would destroy something, before any work: `out` must be writable with room
    for a run, must not be or contain a `protected` path (the artifact, the teacher run), and when it exists
    it must be a folder that is empty, a finished leadercli run (`manifest.json` of a run kind; of a kind
    `command` writes, `kinds.COMMAND_KINDS`, when given) or an unfinished one (only run files, no manifest).
    Anything else — an artifact, a prediction input folder, another tool's `manifest.json`, a folder of other
    files, a teacher run given to `train student` — is refused."""
    out = Path(out)
    hint = f"Choose another {option} (a new or empty folder, or a run folder to replace)"
    paths.refuse_dangerous_out(out, protected or {}, option)
    paths.check_writable_dir(out, f"run folder {option}", hint)
    paths.check_free_space(out, need, f"run folder {option}")  # at least paths.MIN_FREE
    if not out.exists():
        return
    manifest = out / MANIFEST
    if manifest.exists():
        try:
            kind = json.loads(manifest.read_text()).get("kind")
        except (OSError, ValueError, AttributeError, UnicodeDecodeError):
            kind = None
        if kind not in KINDS:
            raise SettingsError(
                f"{option} {out} holds a {MANIFEST} that is not a leadercli run (kind {kind!r}); a run would "
                "replace it",
                hint,
            )
        want = COMMAND_KINDS.get(command or "", KINDS)
        if kind not in want:
            raise SettingsError(
                f"{option} {out} holds a {kind} run; `leader {command}` would replace its manifest and mix its "
                "files with another kind's",
                f"Choose another {option}, or delete {out} first if that run is no longer needed",
            )
        return
    others = sorted(p.name for p in out.iterdir() if p.name not in RUN_ENTRIES and not p.name.startswith("."))
    if others:
        shown = ", ".join(others[:3]) + (f" and {len(others) - 3} more" if len(others) > 3 else "")
        raise SettingsError(f"{option} {out} is not a run folder (it holds {shown})", hint)


def teacher_out_bytes(artifact_dir: Path, base_model: str | None) -> int:
    """A rough size of a teacher run: its feature cache (train + val patients × hidden size × 2 bytes, fp16)
    twice (the cache and its temporary copy) plus 256 MiB for the adapter, head and checkpoints. Read from the
    artifact's manifest and the backbone's config.json without loading either; 0 when they cannot be read."""
    try:
        splits = json.loads((Path(artifact_dir) / "manifest.json").read_text())["splits"]
        patients = int(splits.get("train", 0)) + int(splits.get("val", 0))
        hidden = 384  # the bundled MiniLM-L6
        if base_model and (Path(base_model) / "config.json").is_file():
            cfg = json.loads((Path(base_model) / "config.json").read_text())
            hidden = int(cfg.get("hidden_size") or cfg.get("d_model") or hidden)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return 0
    return 2 * patients * hidden * 2 + (256 << 20)


def prepare_out_dir(
    out: Path,
    resume: bool,
    checkpoint_name: str = "checkpoint",
    protected: dict[str, Path | None] | None = None,
) -> None:  # = checkpoint.CHECKPOINT_DIR
    """A fresh run clears a previous run's files; --resume keeps them. `check_out_dir` first: only a run
    folder (finished or not) or an empty one is ever cleared."""
    check_out_dir(out, protected)
    if out.exists() and not resume:
        for name in (MANIFEST, LOG, checkpoint_name):
            p = out / name
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()
    out.mkdir(parents=True, exist_ok=True)


def copy_artifact_files(artifact: Artifact, out: Path) -> None:
    """The artifact files a run needs to predict without its artifact: the vocab and the DDI pairs."""
    shutil.copyfile(artifact.path / "vocab.json", out / VOCAB_COPY)
    shutil.copyfile(artifact.path / DDI_COPY, out / DDI_COPY)


def save_settings(settings, out: Path) -> None:
    (out / SETTINGS).write_text(settings.to_toml())


def append_log(out: Path, record: dict) -> None:
    with open(out / LOG, "a") as fh:
        fh.write(json.dumps(record, default=float) + "\n")


def read_log(out: Path) -> list[dict]:
    path = out / LOG
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# -- loading a run ---------------------------------------------------------------------------------------------
TEACHER_FILES = ("adapter/adapter_config.json", "adapter/adapter_model.safetensors", "head.safetensors")


def check_teacher_files(run_dir: Path, manifest: dict) -> None:
    """A teacher run's PEFT adapter (config + safetensors weights) and head are there before peft is called:
    peft given a folder without them looks the name up on the Hub, and reads a `.bin` adapter with pickle."""
    run_dir = Path(run_dir)
    missing = [name for name in TEACHER_FILES if not (run_dir / name).is_file()]
    if missing:
        found = (
            sorted(p.name for p in (run_dir / "adapter").glob("*.bin"))
            if (run_dir / "adapter").is_dir()
            else []
        )
        extra = f"; {', '.join(found)} is not read (pickle)" if found else ""
        raise ArtifactError(
            f"teacher run {run_dir} lacks {', '.join(str(run_dir / n) for n in missing)}{extra}",
            rebuild_hint(run_dir, "teacher"),
        )
    model = run_dir / "adapter" / "adapter_model.safetensors"
    try:
        from safetensors import safe_open  # only to check a teacher run's adapter

        with safe_open(str(model), framework="pt"):
            pass
    except Exception as exc:  # noqa: BLE001 - any failure to open the header means a damaged file
        raise ArtifactError(
            f"{model} is not a readable safetensors file (truncated or another format; {type(exc).__name__})",
            rebuild_hint(run_dir, "teacher"),
        ) from None


def read_run_vocab(run_dir: Path, manifest: dict):
    """The run's copy of its artifact's vocab, checked against the manifest's label and vocab hashes (a
    vocab.json with reordered or removed labels would put scores under the wrong drugs)."""
    path = Path(run_dir) / VOCAB_COPY
    if not path.is_file():
        raise ArtifactError(
            f"{path} is missing (the run's copy of its vocabulary)",
            rebuild_hint(run_dir, manifest.get("kind")),
        )
    try:
        vocab = Vocab.from_json(json.loads(path.read_text()))
    except (json.JSONDecodeError, KeyError, TypeError, ValueError, UnicodeDecodeError):
        raise ArtifactError(
            f"{path} is not a leadercli vocab", rebuild_hint(run_dir, manifest.get("kind"))
        ) from None
    want = manifest.get("labels_hash")
    if want is not None and labels_hash(vocab.medications.codes) != want:
        raise ArtifactError(
            f"{path} does not hold the label list the run was trained with (labels hash differs from "
            f"{MANIFEST})",
            f"Restore the run folder from a copy, or {_lower(rebuild_hint(run_dir, manifest.get('kind')))}",
        )
    want_v = (manifest.get("artifact") or {}).get("vocab_hash")
    if want_v is not None and vocab_hash(vocab) != want_v:
        raise ArtifactError(
            f"{path} is not the vocabulary the run was trained with (vocab hash differs from {MANIFEST})",
            f"Restore the run folder from a copy, or {_lower(rebuild_hint(run_dir, manifest.get('kind')))}",
        )
    return vocab


def _lower(text: str) -> str:
    return text[:1].lower() + text[1:]


def run_threshold(run_dir: Path, manifest: dict) -> float:
    """The decision threshold the run recorded (in [0, 1]); ArtifactError when the manifest lacks it."""
    th = manifest.get("threshold")
    value = th.get("value") if isinstance(th, dict) else None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise ArtifactError(
            f"{Path(run_dir) / MANIFEST} has no decision threshold in [0, 1] (the manifest is damaged)",
            rebuild_hint(Path(run_dir), manifest.get("kind")),
        )
    return float(value)


def run_prior(manifest: dict) -> list[float] | None:
    """The training split's drug frequencies the run recorded (`label_prior`); runs made before the manifest
    recorded them use their artifact when it is still there; None otherwise."""
    got = manifest.get("label_prior")
    if got is None:
        art = Path((manifest.get("artifact") or {}).get("path", ""))
        if (art / "manifest.json").is_file():
            got = label_prior(Artifact(art))
    if got is None or len(got) != len(manifest.get("labels") or []):
        return None
    return list(got)


def run_ddi_path(run_dir: Path, manifest: dict) -> Path:
    """The run's copy of its artifact's ddi.parquet, else the artifact's own (runs made before the copy)."""
    path = Path(run_dir) / DDI_COPY
    if path.is_file():
        return path
    return Path((manifest.get("artifact") or {}).get("path", "")) / DDI_COPY


def run_calibrator(run_dir: Path, manifest: dict):
    """The run's `calibration.Calibrator` (its calibration.json), or None for runs saved without one (they
    score as they always did)."""
    # numpy (via calibration): only when a run's calibrator is read; runs.py itself loads no numpy
    from leadercli.calibration import CALIBRATION_FILE, load_calibrator

    try:
        return load_calibrator(run_dir)
    except (OSError, ValueError, TypeError, AttributeError):  # JSONDecodeError is a ValueError
        raise ArtifactError(
            f"{Path(run_dir) / CALIBRATION_FILE} is not a readable calibrator",
            rebuild_hint(run_dir, manifest.get("kind")),
        ) from None


def load_run(path: Path | str, device=None, unknown_shrink: float | None = None):
    """A run folder of any kind → its `scorer.Scorer`. `unknown_shrink`: λ of the unknown-code shrink (None =
    the `predict.unknown_shrink` default). A folder that is not a finished run is one `ArtifactError`."""
    path = Path(path)
    if not path.is_dir():
        raise ArtifactError(
            f"run folder {path} does not exist",
            "Pass a run folder written by `leader train student`, `leader distill` or `leader train teacher`",
        )
    manifest = read_manifest(path)
    kind = manifest.get("kind") if isinstance(manifest, dict) else None
    if kind not in KINDS:
        raise ArtifactError(
            f"{path / MANIFEST} is not a leadercli run manifest (kind {kind!r})",
            "Pass a run folder written by `leader train student`, `leader distill` or `leader train teacher`",
        )
    # torch and the models are imported here, not at the top: the commands' argument checks import this module
    from leadercli.scorer import TeacherScorer, TensorScorer

    vocab = read_run_vocab(path, manifest)
    common = {
        "calibrator": run_calibrator(path, manifest),
        "threshold": run_threshold(path, manifest),
        "max_visits": int(run_samples_settings(manifest, path).get("max_visits", 10)),
        "device": device,
        "unknown_shrink": unknown_shrink,
        "prior": run_prior(manifest),
        "ddi_path": run_ddi_path(path, manifest),
    }
    if kind == "teacher":
        check_teacher_files(path, manifest)
        scorer = TeacherScorer(path, manifest, vocab, **common)
    else:
        scorer = TensorScorer(path, manifest, vocab, model_file=path / MODEL_FILE, **common)
    console.debug(
        f"loaded {kind} run {path}: {len(scorer.labels)} drugs, threshold {scorer.threshold:.3f}, "
        f"max_visits {scorer.max_visits}, device {scorer.device}, created {manifest.get('created_at')}"
    )
    return scorer
