"""Recipe: `leader train student` — the LEADER student without a teacher (the paper's ablation, our fast
path), or one of the two baselines. Reference §4.4 (Adam 5e-4, early stop on val PRAUC, patience 10).

Run it small on CPU:  leader preprocess && leader train student
"""

from __future__ import annotations

import shutil
from dataclasses import asdict
from pathlib import Path

from safetensors.torch import save_file

from leadercli import checkpoint as ckpt_io
from leadercli import console, runs
from leadercli.data.artifact import Artifact
from leadercli.data.batching import Encoder
from leadercli.data.samples import load_samples
from leadercli.hardware import resolve_device, set_seed
from leadercli.settings import Settings
from leadercli.training.loop import evaluate_run, fit, summary_line

MODEL_FILE = runs.MODEL_FILE


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
    )
    return StudentModel(config), config


def save_run(out: Path, model, config, artifact: Artifact, manifest: dict, settings: Settings) -> None:
    """Final files: weights, manifest (self-describing), the artifact's vocab (predict needs no artifact)."""
    save_file(
        {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(out / MODEL_FILE)
    )
    runs.copy_artifact_files(artifact, out)
    runs.save_settings(settings, out)
    if config is not None:
        manifest["model_config"] = asdict(config)
    manifest["parameters"] = {
        "total": sum(p.numel() for p in model.parameters()),
        "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
    }
    runs.write_json(out / runs.MANIFEST, manifest)
    ckpt = out / ckpt_io.CHECKPOINT_DIR
    if ckpt.exists():
        shutil.rmtree(ckpt)


def train_student(settings: Settings, resume: bool = False) -> Path:
    cfg = settings.student
    out = Path(settings.paths.student)
    # setup: seed before anything draws random numbers
    set_seed(cfg.seed)
    device = resolve_device(settings.hardware)
    artifact, encoder, splits = setup_data(settings)
    runs.prepare_out_dir(out, resume)
    runs.save_settings(settings, out)
    manifest = runs.base_manifest(cfg.model, artifact, settings)
    ddi = artifact.ddi_index_pairs()

    fitted = None
    if cfg.model in ("popularity", "previous"):
        from leadercli.models.baselines import PopularityModel, PreviousVisitModel, drug_frequency

        freq = drug_frequency(encoder.collate(splits["train"])["labels"])
        model = (
            PopularityModel(freq)
            if cfg.model == "popularity"
            else PreviousVisitModel(freq, encoder.med_offset)
        )
        config = None
        manifest["model_config"] = {"med_offset": encoder.med_offset, "n_labels": encoder.n_labels}
    else:
        model, config = build_student(encoder, cfg)
        model.to(device)
        console.info(f"student: {sum(p.numel() for p in model.parameters()):,} parameters on {device}")
        # train
        fitted = fit(model, encoder, splits["train"], splits["val"], cfg, out, device, resume)
    # save: threshold on validation, metrics, weights
    result = evaluate_run(
        model,
        encoder,
        splits["val"],
        splits["test"],
        cfg.threshold,
        ddi,
        cfg.eval_batch_size,
        device,
        settings.report,
    )
    manifest.update(
        {"threshold": result["threshold"], "metrics": {"val": result["val"], "test": result["test"]}}
    )
    if fitted is not None:
        manifest.update(
            {
                "best_epoch": fitted.best_epoch,
                "epochs_run": fitted.epochs_run,
                "best_val_prauc": fitted.best_val_prauc,
            }
        )
    save_run(out, model, config, artifact, manifest, settings)
    console.info(f"{cfg.model}: {summary_line(result)}")
    console.info(f"saved {out}")
    return out
