"""Teacher feature cache for offline distillation (DESIGN §4; leader-reference.md §3 "Prediction / saving for
offline KD" and §7 item 18): the teacher's pooled hidden state per sample, keyed by subject_id (and hadm_id
of the target visit), in ONE safetensors file instead of the reference's JSON lines of 4096 floats.

File layout (`safetensors`, no pickle):

| tensor | dtype | shape |
|---|---|---|
| `subject_ids` | int64 | (N,) |
| `hadm_ids` | int64 | (N,) target admission of each sample |
| `features` | float16 (float32 if a value exceeds the fp16 range) | (N, d) |

String metadata: `backbone` (name), `config_hash`, `hidden_size` (= d, filled in), `n` (filled in),
`format`, plus whatever the writer adds (template version, adapter hash, split …). Files are written to a
temporary sibling and renamed into place, so a reader never sees half a file.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from leadercli.errors import ArtifactError, ModelError

FORMAT = "leadercli.teacher-features/1"
REQUIRED_METADATA = ("backbone", "config_hash")
FP16_MAX = 65504.0
_SHARD_KEYS = ("rank", "world_size", "shard")  # per-shard metadata, dropped when merging


def _as_int64(ids: torch.Tensor | Sequence[int]) -> torch.Tensor:
    return torch.as_tensor(ids, dtype=torch.int64).reshape(-1).cpu()  # (N,)


def feature_metadata(backbone: Mapping[str, object], **extra: object) -> dict[str, str]:
    """Metadata from a `backbone.backbone_id` dict (+ extra string-able fields)."""
    meta = {
        "backbone": str(backbone["name"]),
        "config_hash": str(backbone["config_hash"]),
        "hidden_size": str(backbone["hidden_size"]),
    }
    meta.update({k: str(v) for k, v in extra.items()})
    return meta


def save_features(
    path: str | os.PathLike,
    subject_ids: torch.Tensor | Sequence[int],
    hadm_ids: torch.Tensor | Sequence[int],
    feats: torch.Tensor,
    metadata: Mapping[str, str],
) -> Path:
    """Write the cache atomically (temp file + rename). `metadata` needs `backbone` and `config_hash`;
    `hidden_size`, `n`, `dtype` and `format` are filled in from the tensors."""
    path = Path(path)
    sids, hids = _as_int64(subject_ids), _as_int64(hadm_ids)
    feats = feats.detach().to("cpu", torch.float32)  # (N, d)
    if feats.dim() != 2 or feats.shape[0] != sids.shape[0] or hids.shape != sids.shape:
        raise ValueError(
            f"features {tuple(feats.shape)} do not match {sids.shape[0]} subject ids / {hids.shape[0]} hadm ids"
        )
    missing = [k for k in REQUIRED_METADATA if k not in metadata]
    if missing:
        raise ValueError(f"feature metadata lacks {', '.join(missing)}")
    if "hidden_size" in metadata and int(metadata["hidden_size"]) != feats.shape[1]:
        raise ValueError(f"metadata hidden_size {metadata['hidden_size']} != feature width {feats.shape[1]}")
    if not torch.isfinite(feats).all():
        raise ModelError(
            f"teacher features for {path.name} contain NaN or inf values",
            "The teacher diverged; re-train it (lower the learning rate or use bf16 instead of fp16)",
        )
    fits_fp16 = feats.abs().max().item() <= FP16_MAX if feats.numel() else True
    stored = feats.to(torch.float16) if fits_fp16 else feats  # (N, d)
    meta = {str(k): str(v) for k, v in metadata.items()}
    meta.update(
        {
            "format": FORMAT,
            "hidden_size": str(feats.shape[1]),
            "n": str(feats.shape[0]),
            "dtype": "float16" if fits_fp16 else "float32",
        }
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tensors = {
        "subject_ids": sids.contiguous(),
        "hadm_ids": hids.contiguous(),
        "features": stored.contiguous(),
    }
    try:
        save_file(tensors, str(tmp), metadata=meta)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def load_features(path: str | os.PathLike) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict[str, str]]:
    """(subject_ids (N,) int64, hadm_ids (N,) int64, features (N, d) float32, metadata)."""
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(
            f"teacher feature cache {path} does not exist", "Run `leader train teacher` first"
        )
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
            keys = set(f.keys())
            missing = {"subject_ids", "hadm_ids", "features"} - keys
            if missing or meta.get("format") != FORMAT:
                raise ArtifactError(
                    f"{path} is not a teacher feature cache (missing {', '.join(sorted(missing)) or 'format tag'})",
                    "Delete it and re-run `leader train teacher`",
                )
            sids, hids = f.get_tensor("subject_ids"), f.get_tensor("hadm_ids")
            feats = f.get_tensor("features").to(torch.float32)
    except (SafetensorError, OSError) as exc:
        raise ArtifactError(
            f"{path} is unreadable ({exc})", "Delete it and re-run `leader train teacher`"
        ) from None
    return sids.to(torch.int64), hids.to(torch.int64), feats, meta


def check_backbone(
    metadata: Mapping[str, str],
    expected: Mapping[str, object],
    *,
    path: str | os.PathLike | None = None,
    also: Mapping[str, object] | None = None,
) -> None:
    """Raise ModelError (one line) unless the cache was made with the `expected` backbone
    (`backbone.backbone_id` dict: hidden_size, name, config_hash) and matches every `also` key."""
    where = f"teacher features {path}" if path else "teacher features"
    hint = "Delete the feature cache (or re-run `leader train teacher`) so it is rebuilt with this teacher"
    want_d, got_d = str(expected["hidden_size"]), str(metadata.get("hidden_size", "?"))
    if got_d != want_d:
        raise ModelError(
            f"{where} have hidden size {got_d} but backbone {expected['name']} has hidden size {want_d}", hint
        )
    got = (metadata.get("backbone"), metadata.get("config_hash"))
    want = (str(expected["name"]), str(expected["config_hash"]))
    if got != want:
        raise ModelError(
            f"{where} were made with backbone {got[0]} (config {got[1]}) but the teacher is {want[0]} "
            f"(config {want[1]})",
            hint,
        )
    for key, value in (also or {}).items():
        if metadata.get(key) != str(value):
            raise ModelError(f"{where} have {key} {metadata.get(key)} but this run has {value}", hint)


class FeatureCache:
    """Teacher features in memory, looked up by subject_id (or by (subject_id, hadm_id))."""

    def __init__(
        self,
        subject_ids: torch.Tensor,
        hadm_ids: torch.Tensor,
        feats: torch.Tensor,
        metadata: Mapping[str, str] | None = None,
        path: str | os.PathLike | None = None,
    ) -> None:
        self.subject_ids = _as_int64(subject_ids)  # (N,)
        self.hadm_ids = _as_int64(hadm_ids)  # (N,)
        self.features = feats.to(torch.float32)  # (N, d)
        self.metadata = dict(metadata or {})
        self.path = Path(path) if path else None
        sids, hids = self.subject_ids.tolist(), self.hadm_ids.tolist()
        self._by_pair = {(s, h): i for i, (s, h) in enumerate(zip(sids, hids, strict=True))}
        self._by_subject: dict[int, int] = {}
        self._ambiguous: set[int] = set()
        for i, s in enumerate(sids):
            if s in self._by_subject:
                self._ambiguous.add(s)
            self._by_subject.setdefault(s, i)

    @classmethod
    def load(cls, path: str | os.PathLike) -> FeatureCache:
        sids, hids, feats, meta = load_features(path)
        return cls(sids, hids, feats, meta, path)

    @property
    def dim(self) -> int:
        return int(self.features.shape[1])

    def __len__(self) -> int:
        return int(self.subject_ids.shape[0])

    def covers(self, subject_ids: Iterable[int]) -> bool:
        return all(int(s) in self._by_subject for s in subject_ids)

    def lookup(
        self, subject_ids: torch.Tensor | Sequence[int], hadm_ids: torch.Tensor | Sequence[int] | None = None
    ) -> torch.Tensor:
        """(B, d) float32 features of the requested samples, in request order.

        By subject_id (one sample per patient, the default), or by (subject_id, hadm_id) when `hadm_ids` is
        given (per-visit samples). ArtifactError naming how many ids are missing / ambiguous."""
        sids = _as_int64(subject_ids).tolist()
        where = self.path or "the teacher feature cache"
        if hadm_ids is None:
            ambiguous = sum(1 for s in sids if s in self._ambiguous)
            if ambiguous:
                raise ArtifactError(
                    f"{where} holds several samples for {ambiguous} of {len(sids)} requested subject ids",
                    "Look features up by (subject_id, hadm_id) for per-visit samples",
                )
            rows = [self._by_subject.get(s) for s in sids]
        else:
            hids = _as_int64(hadm_ids).tolist()
            rows = [self._by_pair.get(k) for k in zip(sids, hids, strict=True)]
        missing = sum(1 for r in rows if r is None)
        if missing:
            raise ArtifactError(
                f"{where} lacks {missing} of {len(sids)} requested samples",
                "The cache was built for other patients; delete it so `leader train teacher` rebuilds it",
            )
        return self.features[torch.tensor(rows, dtype=torch.long)]  # (B, d)


def merge_feature_shards(paths: Sequence[str | os.PathLike], out: str | os.PathLike) -> Path:
    """Merge per-rank shards into one cache sorted by (subject_id, hadm_id), duplicates dropped (samplers
    pad the last batch by repeating samples; the first copy wins). Shards must share backbone metadata."""
    if not paths:
        raise ArtifactError("no teacher feature shards to merge", "Check that every rank wrote its shard")
    parts = [load_features(p) for p in paths]
    base = {k: v for k, v in parts[0][3].items() if k not in _SHARD_KEYS + ("n", "dtype")}
    for p, (_, _, _f, meta) in zip(paths, parts, strict=True):
        other = {k: v for k, v in meta.items() if k not in _SHARD_KEYS + ("n", "dtype")}
        if other != base:
            diff = sorted(k for k in base.keys() | other.keys() if base.get(k) != other.get(k))
            raise ArtifactError(
                f"feature shard {p} differs from {paths[0]} in {', '.join(diff)}",
                "Delete the shards and re-run the extraction with one teacher",
            )
    sids = torch.cat([s for s, _, _, _ in parts])  # (N_total,)
    hids = torch.cat([h for _, h, _, _ in parts])  # (N_total,)
    feats = torch.cat([f for _, _, f, _ in parts])  # (N_total, d)
    order = sorted(range(len(sids)), key=lambda i: (int(sids[i]), int(hids[i]), i))
    seen: set[tuple[int, int]] = set()
    keep = []
    for i in order:
        key = (int(sids[i]), int(hids[i]))
        if key not in seen:
            seen.add(key)
            keep.append(i)
    idx = torch.tensor(keep, dtype=torch.long)
    return save_features(out, sids[idx], hids[idx], feats[idx], base)
