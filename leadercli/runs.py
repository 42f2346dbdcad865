"""Run folders: manifests that describe their checkpoint (model config, label list, vocab hash, artifact,
threshold, metrics) and the checks that make a checkpoint refuse an artifact it was not trained for."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from leadercli import __version__
from leadercli.data.artifact import Artifact, labels_hash
from leadercli.errors import ArtifactError

MANIFEST = "manifest.json"
SETTINGS = "settings.toml"
LOG = "train_log.jsonl"
VOCAB_COPY = "vocab.json"


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def write_json(path: Path, obj: Any) -> None:
    """Atomic JSON write (temp file in the same folder + rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
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


def base_manifest(kind: str, artifact: Artifact) -> dict:
    return {
        "kind": kind,
        "leadercli_version": __version__,
        "created_at": now(),
        "artifact": {
            "path": str(artifact.path.resolve()),
            "source": artifact.source,
            "vocab_hash": artifact.vocab_hash,
            "content_hash": artifact.content_hash,
            "created_at": artifact.manifest.get("created_at"),
        },
        "labels": artifact.labels,
        "labels_hash": labels_hash(artifact.labels),
    }


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


def prepare_out_dir(out: Path, resume: bool, checkpoint_name: str = "checkpoint") -> None:
    """A fresh run clears a previous run's files; --resume keeps them."""
    if out.exists() and not resume:
        for name in (MANIFEST, LOG, checkpoint_name):
            p = out / name
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()
    out.mkdir(parents=True, exist_ok=True)


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
