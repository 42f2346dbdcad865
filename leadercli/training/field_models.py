"""`leader train student --model retain|gamenet|micron|logreg|raremed`: the field's models (issue 22) trained by
the student's loop under one protocol — the same artifact, split, samples and `samples.max_visits`; the loop's
batch size, epochs, patience and seed (`[student]`); early stopping on validation PRAUC; the threshold tuned on
validation by the recipe. What is the model's own comes from its settings section (`[retain]`, `[gamenet]`, …):
architecture, learning rate, weight decay, loss weights, and its authors' optimizer (`model.optimizer`). The
model's extra loss terms (`extra_loss`) are added to the loop's BCE. RAREMed is pre-trained first (SMP, then SR,
`raremed.pretrain_epochs` each) unless a checkpoint is being resumed; the pre-training losses go to the run's
train log.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from leadercli import checkpoint as ckpt_io
from leadercli import console, runs
from leadercli.data.batching import batches
from leadercli.errors import SettingsError
from leadercli.models.field_build import build
from leadercli.models.raremed import pretrain
from leadercli.settings import Settings
from leadercli.training import distributed
from leadercli.training.loop import FitResult, fit


def train_field(
    settings: Settings, kind: str, encoder, artifact, splits: dict, out: Path, device, resume: bool
) -> tuple[object, object, FitResult, dict]:
    """Build, (pre-)train and return (model with the best validation weights, its config, the fit, manifest
    notes: the optimizer, learning rate and weight decay used, and any pre-training)."""
    section = getattr(settings, kind)
    try:
        model, config = build(kind, section, encoder, splits["train"], artifact.ddi_index_pairs())
    except ValueError as exc:
        raise SettingsError(
            f"{kind} settings: {exc}", f"Fix the {kind} section of leader.toml (see `leader config`)"
        ) from None
    model.to(device)
    console.info(f"{kind}: {model.num_parameters():,} parameters on {device}")
    cfg = settings.student.model_copy(
        update={"lr": section.lr, "weight_decay": getattr(section, "weight_decay", 0.0)}
    )
    notes = {
        "optimizer": model.optimizer,
        "lr": cfg.lr,
        "weight_decay": cfg.weight_decay,
        "no_history": model.no_history,
    }
    resuming = resume and ckpt_io.exists(out / ckpt_io.CHECKPOINT_DIR / "last")
    if kind == "raremed" and section.pretrain_epochs and not resuming:
        train = splits["train"]

        def epoch_batches(i: int):
            order = np.random.default_rng(cfg.seed * 1000 + 500 + i).permutation(len(train))
            return batches(train, cfg.batch_size, encoder.collate, order)

        t0 = time.perf_counter()
        with console.step(f"pre-training ({section.pretrain_epochs} epochs of SMP, then of SR)"):
            log = pretrain(
                model, epoch_batches, section.pretrain_epochs, cfg.lr, cfg.weight_decay, cfg.seed, device
            )
        if distributed.current(device).main:  # data-parallel: every process pre-trains alike, one writes
            for record in log:
                runs.append_log(out, record)
        notes["pretrain"] = {
            "epochs": section.pretrain_epochs,
            "final_loss": {r["pretrain"]: r["loss"] for r in log},
            "seconds": time.perf_counter() - t0,
        }
    fitted = fit(
        model, encoder, splits["train"], splits["val"], cfg, out, device, resume, extra=model.extra_loss
    )
    # training time: the epochs' training passes and validations, plus any pre-training (`leader report`)
    notes["seconds"] = fitted.seconds + notes.get("pretrain", {}).get("seconds", 0.0)
    return model, config, fitted, notes
