"""Recipe: `leader train student` — the LEADER student without a teacher (the paper's ablation, our fast
path), one of the two baselines, or one of the field's models (`training/field_models.py`). Reference §4.4
(Adam 5e-4, early stop on val PRAUC, patience 10).

Run it small on CPU:  leader preprocess && leader train student
"""

from __future__ import annotations

import time
from functools import partial
from pathlib import Path

from leadercli import console, runs
from leadercli.calibration import manifest_entry
from leadercli.hardware import resolve_device, set_seed
from leadercli.kinds import BASELINES, FIELD_MODELS
from leadercli.models import student_train
from leadercli.models.baselines import PopularityModel, PreviousVisitModel, fit_popularity
from leadercli.settings import Settings
from leadercli.training import distributed
from leadercli.training.code_text import title_table
from leadercli.training.loop import build_student, evaluate_run, fit, save_run, setup_data, summary_line


def train_student(settings: Settings, resume: bool = False) -> Path:
    cfg = settings.student
    out = Path(settings.paths.student)
    # setup: seed before anything draws random numbers
    set_seed(cfg.seed)
    device = resolve_device(settings.hardware, small_ops=True)
    # under torchrun / accelerate launch: join the process group (`training/distributed.py`)
    dist, device = distributed.join(device, trains=cfg.model not in BASELINES, name=cfg.model)
    if dist is None:  # a baseline has nothing to train: the main process runs it alone, the others stop here
        return out
    artifact, encoder, splits = setup_data(settings)
    if dist.main:  # the main process alone writes the run folder; the others wait until it is prepared
        runs.prepare_out_dir(out, resume)
        runs.save_settings(settings, out)
    distributed.barrier(dist)
    manifest = runs.base_manifest(cfg.model, artifact, settings)
    manifest["distributed"] = distributed.manifest_fields(dist, cfg.batch_size)
    ddi = artifact.ddi_index_pairs()

    fitted = None
    if cfg.model in BASELINES:
        t0 = time.perf_counter()
        freq = fit_popularity([e.labels for e in splits["train"]], encoder.n_labels)
        manifest["training"] = {"seconds": time.perf_counter() - t0}  # counting the training drugs
        model = (
            PopularityModel(freq)
            if cfg.model == "popularity"
            else PreviousVisitModel(freq, encoder.med_offset)
        )
        config = None
        manifest["model_config"] = {"med_offset": encoder.med_offset, "n_labels": encoder.n_labels}
    elif cfg.model in FIELD_MODELS:  # RETAIN, GAMENet, MICRON, logreg, RAREMed: the same loop and protocol
        from leadercli.training.field_models import train_field

        model, config, fitted, manifest["training"] = train_field(
            settings, cfg.model, encoder, artifact, splits, out, device, resume
        )
    else:
        text, text_entry = title_table(settings, encoder, artifact.vocab_hash, out, dist)
        model, config = build_student(encoder, cfg, settings.hardware.onednn, text)
        if text_entry is not None:
            manifest["code_text"] = text_entry
        model.to(device)
        console.info(f"student: {sum(p.numel() for p in model.parameters()):,} parameters on {device}")
        # train
        ahead = partial(student_train.prepare, model)  # packed inputs and masks, built ahead on CPU
        fitted = fit(model, encoder, splits["train"], splits["val"], cfg, out, device, resume, ahead=ahead)
        manifest["training"] = {"seconds": fitted.seconds}  # epochs' training passes and validations
    if not dist.main:  # training is over on every process (fit waited): the main process writes the run
        return out
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
        # the baselines' scores are training frequencies: probabilities by construction, left as they are
        "none" if cfg.model in BASELINES else settings.calibration.method,
    )
    manifest.update(
        {
            "threshold": result["threshold"],
            "calibration": manifest_entry(result["calibration"]),
            "metrics": {"val": result["val"], "test": result["test"]},
        }
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
    console.result(f"{cfg.model}: {summary_line(result)}")  # stdout: --quiet keeps the results
    console.result(f"saved {out}")
    return out
