"""The teacher run's feature cache for `leader distill` (reference §7 item 18, offline distillation): the
cached pooled states of the training patients, computed first with the teacher run when they are missing or
were made by another backbone, artifact vocabulary or prompt template.

The run is loaded here, through `runs.load_run`, and its model handed to `models.teacher_infer`: the models
layer never loads a run.
"""

from __future__ import annotations

from pathlib import Path

from leadercli import console, runs
from leadercli.data.artifact import Artifact
from leadercli.data.samples import load_samples
from leadercli.errors import ArtifactError
from leadercli.hardware import resolve_device
from leadercli.models.features import FeatureCache
from leadercli.models.teacher_infer import load_feature_cache, stale_splits, write_features
from leadercli.settings import Settings


def ensure_features(
    settings: Settings, teacher_dir: Path, artifact: Artifact, splits=("train",)
) -> tuple[FeatureCache, dict]:
    """The teacher's feature cache for `splits`, computed first when missing or stale. Returns (FeatureCache
    of the first split, teacher manifest)."""
    manifest = runs.read_manifest(teacher_dir)
    if manifest.get("kind") != "teacher":
        raise ArtifactError(
            f"{teacher_dir} is not a teacher run (kind {manifest.get('kind')!r})",
            "Pass --teacher runs/teacher",
        )
    runs.check_matches_artifact(manifest, artifact, teacher_dir)
    stale = stale_splits(teacher_dir, manifest, artifact, splits)
    if stale:
        console.info(
            f"teacher features for {', '.join(stale)} are missing or stale: computing them with {teacher_dir}"
        )
        device = resolve_device(settings.hardware)
        teacher = runs.load_run(teacher_dir, device)  # the one way to load a run
        sp = settings.samples
        samples = {s: load_samples(artifact, s, sp.max_visits, sp.per_visit) for s in stale}
        write_features(
            teacher.model,
            teacher.tokenizer,
            manifest,
            artifact,
            samples,
            Path(teacher_dir),
            settings.teacher.eval_batch_size,
            manifest["max_length"],
            device,
        )
    return load_feature_cache(teacher_dir, splits[0]), manifest
