"""Student components shared by `leader train student` and `leader distill` (components, not a base class;
the recipes never import each other): data setup, the model from settings, the training loop, evaluation and
the run's final files. The loop: Adam, constant LR (the reference's StepLR(gamma=0) zeroes it — §7.22), early stopping on
validation PRAUC with patience, a safetensors checkpoint after every epoch for `--resume`, best weights kept.

Determinism: the epoch's shuffling is a pure function of (seed, epoch), dropout draws from torch's global RNG
which the checkpoint saves — so an interrupted and resumed run reaches the same weights as an uninterrupted one.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from leadercli import checkpoint as ckpt_io
from leadercli import console, runs
from leadercli.data.artifact import Artifact
from leadercli.data.batching import Encoded, Encoder, batches
from leadercli.data.samples import load_samples
from leadercli.settings import Settings

# extra(model_output, batch) -> {term name: (weight, loss tensor)}
ExtraLoss = Callable[[object, dict[str, torch.Tensor]], dict[str, tuple[float, torch.Tensor]]]


@dataclass
class FitResult:
    best_epoch: int  # 1-based (the train_log and console numbering)
    best_val_prauc: float
    epochs_run: int
    history: list[dict] = field(default_factory=list)


@torch.no_grad()
def score(
    model, encoded: list[Encoded], encoder: Encoder, batch_size: int, device: torch.device
) -> dict[str, np.ndarray]:
    """Probabilities, labels and groups for a list of encoded samples (eval mode)."""
    model.eval()
    probs, labels, nv = [], [], []
    for batch in batches(encoded, batch_size, encoder.collate):
        p = model.probs({k: v.to(device) for k, v in batch.items()}).cpu()
        probs.append(p.float().numpy())
        labels.append(batch["labels"].numpy() > 0)
        nv.append(batch["n_visits"].numpy())
    M = encoder.n_labels
    return {
        "probs": np.concatenate(probs) if probs else np.zeros((0, M), np.float32),
        "labels": np.concatenate(labels) if labels else np.zeros((0, M), bool),
        "n_visits": np.concatenate(nv) if nv else np.zeros(0, np.int64),
    }


def fit(
    model: torch.nn.Module,
    encoder: Encoder,
    train: list[Encoded],
    val: list[Encoded],
    cfg,  # StudentSettings
    out: Path,
    device: torch.device,
    resume: bool,
    extra: ExtraLoss | None = None,
    extra_modules: torch.nn.Module | None = None,
    prepare: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]] | None = None,
) -> FitResult:
    """Train `model` in place; on return it holds the best-validation weights."""
    from leadercli import metrics
    from leadercli.models.losses import bce_loss

    params = list(model.parameters()) + (
        list(extra_modules.parameters()) if extra_modules is not None else []
    )
    optimizer = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    ckpt = out / ckpt_io.CHECKPOINT_DIR
    best_path = ckpt / "best.safetensors"
    start, best, best_epoch, bad = 0, -math.inf, -1, 0
    holder = torch.nn.ModuleDict(
        {"model": model, **({"extra": extra_modules} if extra_modules is not None else {})}
    )
    if resume and ckpt_io.exists(ckpt / "last"):
        st = ckpt_io.load_state(ckpt / "last", ckpt_io.module_tensors(holder), optimizer)
        start, best, best_epoch, bad = st["epoch"] + 1, st["best"], st["best_epoch"], st["bad"]
        history = [r for r in runs.read_log(out) if r.get("epoch", 0) <= start]  # 1-based epochs
        (out / runs.LOG).write_text("".join(__import__("json").dumps(r) + "\n" for r in history))
        console.info(
            f"resuming after epoch {start}/{cfg.epochs} (best val PRAUC {best:.4f} at epoch {best_epoch + 1})"
        )
    else:
        history = []
        if resume and (ckpt / "last").exists():  # a checkpoint folder without both files: say so, start over
            console.info(
                f"warning: {ckpt / 'last'} is incomplete (killed while writing?): starting from epoch 1"
            )
        elif resume:
            console.info(f"no checkpoint in {ckpt}: nothing to resume, starting from epoch 1")
    ckpt.mkdir(parents=True, exist_ok=True)
    n_batches = math.ceil(len(train) / cfg.batch_size)
    stopped = start >= cfg.epochs or (bad >= cfg.patience and start > 0)
    epoch = start - 1
    for epoch in range(start, cfg.epochs):
        if stopped:
            break
        model.train()
        if extra_modules is not None:
            extra_modules.train()
        order = np.random.default_rng(cfg.seed * 1000 + epoch).permutation(len(train))
        sums: dict[str, float] = {}
        with console.progress(f"epoch {epoch + 1}/{cfg.epochs}", total=n_batches) as advance:
            for batch in batches(train, cfg.batch_size, encoder.collate, order):
                batch = {k: v.to(device) for k, v in batch.items()}
                if prepare is not None:
                    batch = prepare(batch)
                outp = model(batch)
                loss = bce_loss(outp.logits, batch["labels"])
                terms = {"bce": loss.detach()}
                if extra is not None:
                    for name, (w, t) in extra(outp, batch).items():
                        loss = loss + w * t
                        terms[name] = t.detach()
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                terms["loss"] = loss.detach()
                for k, v in terms.items():
                    sums[k] = sums.get(k, 0.0) + float(v)
                advance(1, status=f"loss {terms['loss'].item():.4f}")
        val_scores = score(model, val, encoder, cfg.eval_batch_size, device)
        val_prauc = (
            float(metrics.prauc(val_scores["labels"], val_scores["probs"]).mean()) if len(val) else 0.0
        )
        record = {
            "epoch": epoch + 1,  # 1-based, as on the console and in the manifest
            **{k: v / max(n_batches, 1) for k, v in sums.items()},
            "val_prauc": val_prauc,
        }
        improved = val_prauc > best
        if improved:
            best, best_epoch, bad = val_prauc, epoch, 0
            save_file(
                {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(best_path)
            )
        else:
            bad += 1
        record["best"] = improved
        history.append(record)
        runs.append_log(out, record)
        terms_txt = " ".join(
            f"{k} {v:.4f}" for k, v in record.items() if k not in ("epoch", "val_prauc", "best")
        )
        console.info(
            f"epoch {epoch + 1:3d}/{cfg.epochs}  {terms_txt}  val PRAUC {val_prauc:.4f}"
            + ("  *" if improved else f"  (no gain {bad}/{cfg.patience})")
        )
        ckpt_io.save_state(
            ckpt / "last",
            ckpt_io.module_tensors(holder),
            optimizer,
            {"epoch": epoch, "best": best, "best_epoch": best_epoch, "bad": bad},
        )
        if bad >= cfg.patience:
            console.info(
                f"early stop: no val PRAUC gain for {cfg.patience} epochs (best epoch {best_epoch + 1})"
            )
            break
    if best_path.is_file():
        model.load_state_dict(load_file(str(best_path)))
    return FitResult(best_epoch + 1, float(best), epoch + 1, history)  # epochs 1-based, as logged


def evaluate_run(
    model,
    encoder: Encoder,
    val: list[Encoded],
    test: list[Encoded],
    fixed_threshold,
    ddi_pairs,
    batch_size: int,
    device: torch.device,
    report_cfg,
) -> dict:
    """Threshold on validation (unless fixed), then validation and test metrics per group."""
    from leadercli import metrics
    from leadercli.metrics import choose_threshold

    v = score(model, val, encoder, batch_size, device)
    t = score(model, test, encoder, batch_size, device)
    threshold = choose_threshold(fixed_threshold, v["labels"], v["probs"])
    th = threshold["value"]
    out = {"threshold": threshold}
    for name, s in (("val", v), ("test", t)):
        if len(s["labels"]) == 0:
            out[name] = None
            continue
        out[name] = metrics.evaluate_groups(
            s["labels"],
            s["probs"],
            th,
            ddi_pairs,
            s["n_visits"],
            rounds=report_cfg.bootstrap_rounds,
            fraction=report_cfg.bootstrap_fraction,
            seed=report_cfg.seed,
        )
    return out


def summary_line(result: dict) -> str:
    test = result.get("test") or {}
    o = (test.get("overall") or {}).get("point") if test else None
    if not o:
        return "no test samples"
    return (
        f"test PRAUC {o['prauc']:.4f}  Jaccard {o['jaccard']:.4f}  F1 {o['f1']:.4f}  DDI {o['ddi_rate']:.4f}"
        f"  #drugs {o['avg_drugs']:.2f}  (threshold {result['threshold']['value']:.2f}, {result['threshold']['how']})"
    )


# -- data, model and run files ---------------------------------------------------------------------------
def setup_data(settings: Settings):
    """Artifact → encoder and encoded train/val/test samples (shared with `leader distill`)."""
    artifact = Artifact(settings.artifact_dir())
    encoder = Encoder(artifact.vocab)
    sp = settings.samples
    with console.step("loading samples"):
        splits = {
            s: encoder.encode_all(load_samples(artifact, s, sp.max_visits, sp.per_visit))
            for s in ("train", "val", "test")
        }
    console.info(
        f"samples: train {len(splits['train'])}, val {len(splits['val'])}, test {len(splits['test'])}; "
        f"{encoder.n_labels} drugs, {encoder.vocab_size} code ids"
    )
    if not splits["train"]:
        from leadercli.errors import ArtifactError

        raise ArtifactError(
            f"artifact {artifact.path} has no training patients", "Re-run `leader preprocess` with more data"
        )
    return artifact, encoder, splits


def build_student(encoder: Encoder, cfg):
    from leadercli.models.student import StudentConfig, StudentModel

    config = StudentConfig(
        vocab_size=encoder.vocab_size,
        n_labels=encoder.n_labels,
        med_offset=encoder.med_offset,
        profile_sizes=encoder.profile_sizes,
        hidden=cfg.hidden,
        heads=cfg.heads,
        ff=cfg.ff,
        dropout=cfg.dropout,
        attn_dropout=cfg.attn_dropout,
        head_hidden=cfg.head_hidden,
        recency=cfg.recency,
    )
    return StudentModel(config), config


def save_run(out: Path, model, config, artifact: Artifact, manifest: dict, settings: Settings) -> None:
    """Final files: weights, manifest (self-describing), the artifact's vocab (predict needs no artifact)."""
    save_file(
        {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(out / runs.MODEL_FILE)
    )
    runs.copy_artifact_files(artifact, out)
    runs.save_settings(settings, out)
    if config is not None:
        manifest["model_config"] = asdict(config)
    manifest["parameters"] = {
        "total": sum(p.numel() for p in model.parameters()),
        "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
    }
    from leadercli.card import write_card
    from leadercli.modes import fix_tree

    write_card(out, manifest)  # README.md model card with Hub metadata
    fix_tree(out)  # safetensors writes 0600: the run follows the umask (group-readable under 022)
    runs.write_json(out / runs.MANIFEST, manifest)  # a manifest means the run is complete
    ckpt = out / ckpt_io.CHECKPOINT_DIR
    if ckpt.exists():
        shutil.rmtree(ckpt)
