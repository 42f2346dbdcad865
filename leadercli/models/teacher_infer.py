"""Teacher inference: prompts for a model's samples, scoring, pooled features and the feature cache of a
teacher run (DESIGN §4; reference §3 "Prediction / saving for offline KD", §7 item 18).

Used by the teacher recipe (validation, test scores, features), by `leader distill` (features, through
`leadercli.training.teacher_features`) and by `leadercli.scorer.TeacherScorer` (a teacher run scoring
samples for `leader predict` / `leader report`). It loads no run folder (the caller reads the manifest and
passes it in) and never imports `leadercli.runs` or `leadercli.training`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from leadercli import console
from leadercli.data.artifact import Artifact
from leadercli.data.prompts import fit_prompt
from leadercli.data.samples import Sample
from leadercli.errors import ModelError
from leadercli.models.backbone import encode_prompts, needs_eos
from leadercli.models.features import (
    FeatureCache,
    check_backbone,
    feature_metadata,
    load_features,
    merge_feature_shards,
    save_features,
)
from leadercli.models.teacher import load_teacher, unwrap

FEATURES_DIR = "features"


# -- prompts --------------------------------------------------------------------------------------------


@dataclass
class PromptSet:
    prompts: list[str]
    labels: list[list[int]]  # label indices per sample
    subject_ids: list[int]
    hadm_ids: list[int]
    n_visits: list[int]
    stats: dict


def make_prompts(samples: list[Sample], vocab, tokenizer, prompt_cfg: dict, max_length: int) -> PromptSet:
    """Render and fit every sample's prompt to the backbone's length (history first, never the cue)."""
    extra = 1 if needs_eos(tokenizer) else 0

    def count(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=True, verbose=False)["input_ids"]) + extra

    idx = vocab.medications.index
    prompts, labels = [], []
    totals = {"history_dropped": 0, "codes_dropped": 0, "truncated": 0, "untitled_codes": 0, "tokens": 0}
    for s in samples:
        text, st = fit_prompt(s, vocab, count, max_length, **prompt_cfg)
        prompts.append(text)
        labels.append(sorted({idx[c] for c in s.target.medications if c in idx}))
        for k in totals:
            totals[k] += int(st[k])
    totals["mean_tokens"] = totals.pop("tokens") / max(len(samples), 1)
    return PromptSet(
        prompts,
        labels,
        [s.subject_id for s in samples],
        [s.hadm_id for s in samples],
        [s.n_visits for s in samples],
        totals,
    )


def prompt_config(cfg) -> dict:
    return {
        "history_visits": cfg.history_visits,
        "include_profile": cfg.include_profile,
        "pronoun": cfg.pronoun,
    }


def collate_prompts(
    ps: PromptSet, idx: np.ndarray, tokenizer, max_length: int, n_labels: int
) -> dict[str, torch.Tensor]:
    """The prompts `idx` of a PromptSet → tokenised batch with its (B, M) multi-hot `labels` (training)."""
    enc = encode_prompts(tokenizer, [ps.prompts[i] for i in idx], max_length)
    y = torch.zeros(len(idx), n_labels)
    for r, i in enumerate(idx):
        y[r, ps.labels[i]] = 1.0
    enc["labels"] = y
    return enc


# -- scoring and features -------------------------------------------------------------------------------


@torch.no_grad()
def run_teacher(
    model,
    tokenizer,
    ps: PromptSet,
    idx: np.ndarray,
    batch_size: int,
    max_length: int,
    device,
    want: str = "probs",
    progress: str | None = None,
) -> np.ndarray:
    """Probabilities (N, M) or pooled features (N, d) for the samples `idx` of a PromptSet (eval mode).

    Batches hold prompts of similar length (sorted by length, padded per batch); rows come back in `idx`
    order."""
    model.eval()
    idx = np.asarray(idx, dtype=np.int64)
    n_labels = model.n_labels if hasattr(model, "n_labels") else unwrap(model).n_labels
    width = n_labels if want == "probs" else unwrap(model).hidden_size
    res = np.zeros((len(idx), width), np.float32)
    order = length_order(ps, idx)
    with console.progress(progress or "scoring", total=len(idx)) as advance:
        for i in range(0, len(idx), batch_size):
            rows = order[i : i + batch_size]
            # no labels: scoring needs none, and a new patient's target drugs may lie outside the label list
            b = encode_prompts(tokenizer, [ps.prompts[j] for j in idx[rows]], max_length)
            o = model(input_ids=b["input_ids"].to(device), attention_mask=b["attention_mask"].to(device))
            x = torch.sigmoid(o.logits) if want == "probs" else o.pooled
            res[rows] = x.float().cpu().numpy()
            advance(len(rows))
    return res


def length_order(ps: PromptSet, idx: np.ndarray) -> np.ndarray:
    """Positions 0..len(idx)-1 ordered by prompt length (characters, a cheap proxy for tokens), stable."""
    lengths = np.array([len(ps.prompts[i]) for i in idx], dtype=np.int64)
    return np.argsort(lengths, kind="stable")


def features_path(teacher_dir: Path, split: str) -> Path:
    return Path(teacher_dir) / FEATURES_DIR / f"{split}.safetensors"


def _feature_meta(manifest: dict, artifact: Artifact, split: str) -> dict[str, str]:
    """The cache metadata of a teacher run's features (`features.feature_metadata`, the one metadata API)."""
    return feature_metadata(
        manifest["backbone"],
        vocab_hash=artifact.vocab_hash,
        split=split,
        prompt_template=manifest["prompt"]["template_version"],
    )


def _is_stale(meta: dict[str, str], manifest: dict, artifact: Artifact, split: str) -> bool:
    want = _feature_meta(manifest, artifact, split)
    try:
        check_backbone(
            meta, manifest["backbone"], also={k: want[k] for k in ("vocab_hash", "prompt_template")}
        )
    except ModelError:
        return True
    return False


def write_features(
    model,
    tokenizer,
    manifest: dict,
    artifact: Artifact,
    samples: dict[str, list[Sample]],
    out: Path,
    batch_size: int,
    max_length: int,
    device,
    accelerator=None,
) -> None:
    """Pooled teacher states per sample → features/<split>.safetensors (fp16), keyed by subject_id.
    Under several processes each rank writes its shard and the main process merges them."""
    rank = accelerator.process_index if accelerator is not None else 0
    world = accelerator.num_processes if accelerator is not None else 1
    vocab = artifact.vocab
    pcfg = manifest["prompt"]["options"]
    for split, ss in samples.items():
        ps = make_prompts(ss, vocab, tokenizer, pcfg, max_length)
        idx = np.arange(rank, len(ss), world)
        feats = run_teacher(
            model,
            tokenizer,
            ps,
            idx,
            batch_size,
            max_length,
            device,
            want="features",
            progress=f"teacher features ({split})",
        )
        if world == 1:
            save_split_features(manifest, artifact, split, ps, feats, out, idx)
            continue
        target = features_path(out, split)
        save_split_features(manifest, artifact, split, ps, feats, out, idx, suffix=f".rank{rank}")
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            shards = [target.with_name(f"{split}.rank{r}.safetensors") for r in range(world)]
            merge_feature_shards(shards, target)
            for s in shards:
                s.unlink()
        accelerator.wait_for_everyone()


def save_split_features(
    manifest: dict,
    artifact: Artifact,
    split: str,
    ps: PromptSet,
    feats: np.ndarray,
    out: Path,
    idx: np.ndarray | None = None,
    suffix: str = "",
) -> Path:
    """features/<split><suffix>.safetensors from (len(idx), d) pooled features of the samples `idx` of `ps`
    (all of them when `idx` is None)."""
    idx = np.arange(len(ps.subject_ids)) if idx is None else idx
    target = features_path(out, split)
    target = target.with_name(f"{split}{suffix}.safetensors")
    target.parent.mkdir(parents=True, exist_ok=True)
    sids = torch.tensor([ps.subject_ids[i] for i in idx], dtype=torch.int64)
    hids = torch.tensor([ps.hadm_ids[i] for i in idx], dtype=torch.int64)
    return save_features(
        target, sids, hids, torch.from_numpy(feats), _feature_meta(manifest, artifact, split)
    )


def stale_splits(teacher_dir: Path, manifest: dict, artifact: Artifact, splits=("train",)) -> list[str]:
    """The `splits` whose feature cache in `teacher_dir` is missing or was made by another backbone, artifact
    vocabulary or prompt template than the teacher run of `manifest` on `artifact`."""
    stale = []
    for split in splits:
        p = features_path(teacher_dir, split)
        if not p.is_file() or _is_stale(load_features(p)[3], manifest, artifact, split):
            stale.append(split)
    return stale


def load_feature_cache(teacher_dir: Path, split: str) -> FeatureCache:
    sids, hids, feats, meta = load_features(features_path(teacher_dir, split))
    return FeatureCache(sids, hids, feats, meta)


def load_trained(run_dir: Path, manifest: dict, device, dtype=torch.float32):
    """A teacher run's model (eval mode, frozen) on `device` and its tokenizer, from its manifest."""
    model, tokenizer = load_teacher(
        run_dir, manifest.get("base_model"), len(manifest["labels"]), manifest["pooling"], dtype
    )
    return model.to(device), tokenizer
