"""Recipe: `leader distill` — the LEADER student trained with
loss = BCE + α · KD + β · contrastive(profile, target-drug set)
(reference §4.3, with the alignment index bug and the batch-size-1 crash fixed — §7.5). KD is the reference's
MSE(projector(z), teacher feature) or BCE(student logits, teacher probabilities) (`distill.kd_target`; auto =
features for a fine-tuned teacher backbone, logits for a frozen one, `resolve_kd_target`).

Offline distillation (the reference's default, §7.18): teacher features are the pooled hidden states that
`leader train teacher` caches per training/validation patient; when the cache is missing or belongs to another
backbone it is computed first. With `--no-kd --no-align` this recipe is exactly `leader train student`
(same code path, same random draws, same numbers).

Run it small on CPU:  leader preprocess && leader train teacher && leader distill
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import torch

from leadercli import console, runs
from leadercli.calibration import manifest_entry
from leadercli.errors import ArtifactError
from leadercli.hardware import resolve_device, set_seed
from leadercli.models import student_train
from leadercli.settings import Settings
from leadercli.training import distributed
from leadercli.training.loop import build_student, evaluate_run, fit, save_run, setup_data, summary_line


def loss_weights(settings: Settings, source: str) -> tuple[float, float]:
    """(alpha, beta): the settings', else the reference scripts' weights for the artifact's layout."""
    from leadercli.data.registry import get_layout

    a, b = get_layout(source).distill_weights
    d = settings.distill
    return (d.alpha if d.alpha is not None else a, d.beta if d.beta is not None else b)


def distill(settings: Settings, resume: bool = False) -> Path:
    from leadercli.models.losses import contrastive_loss, feature_kd_loss
    from leadercli.models.student import DistillHeads

    cfg, dcfg = settings.student, settings.distill
    out = Path(settings.paths.distilled)
    teacher_dir = Path(settings.paths.teacher)
    # setup: the same order of random draws as `leader train student` (seed → data → student model)
    set_seed(cfg.seed)
    device = resolve_device(settings.hardware, small_ops=True)
    dist, device = distributed.join(device)  # under torchrun / accelerate launch: data-parallel
    artifact, encoder, splits = setup_data(settings)
    alpha, beta = loss_weights(settings, artifact.source)
    use_kd, use_align = dcfg.kd and alpha > 0, dcfg.align and beta > 0
    cache, teacher_manifest = (None, None)
    if use_kd:
        from leadercli.training.teacher_features import ensure_features

        # features must exist before the student is built: extraction may need the teacher, not the RNG;
        # the main process computes missing ones, the others then read them
        with distributed.main_first(dist):
            cache, teacher_manifest = ensure_features(settings, teacher_dir, artifact, splits=("train",))
        missing = sum(not cache.covers([e.subject_id]) for e in splits["train"])
        if missing:
            raise ArtifactError(
                f"teacher feature cache of {teacher_dir} lacks {missing} of {len(splits['train'])} training patients",
                "Re-run `leader train teacher` on this artifact (or delete its features/ folder to recompute)",
            )
    kd_target = resolve_kd_target(dcfg.kd_target, teacher_manifest) if use_kd else None
    if dist.main:  # the main process alone writes the run folder; the others wait until it is prepared
        runs.prepare_out_dir(out, resume)
        runs.save_settings(settings, out)
    distributed.barrier(dist)
    model, config = build_student(encoder, cfg, settings.hardware.onednn)
    model.to(device)
    heads = None
    if kd_target == "features" or use_align:
        # created after the student so that the student's initial weights equal `leader train student`'s;
        # logit KD needs no projector (none is made, so none is saved or counted)
        dim = cache.dim if kd_target == "features" else None
        heads = DistillHeads(config, teacher_dim=dim, align=use_align).to(device)
    mean = std = None
    soft = None  # (W (M, d), b (M,), feat_mean (d,), feat_scale (d,)) of the teacher's head: logit KD
    if kd_target == "logits":
        soft = _teacher_head(teacher_dir, device)
    standardize = kd_target == "features" and dcfg.standardize  # only feature KD has features to standardise
    if standardize:
        train_feats = cache.lookup(torch.tensor([e.subject_id for e in splits["train"]]))  # (N, D)
        mean, std = train_feats.mean(0).to(device), train_feats.std(0).to(device)

    def extra(outp, batch):
        terms = {}
        if use_kd and soft is not None:  # BCE of the student's logits to the teacher's probabilities
            w, b, fm, fs = soft
            target = torch.sigmoid(((batch["teacher"] - fm) * fs) @ w.T + b)  # (B, M)
            terms["kd"] = (alpha, torch.nn.functional.binary_cross_entropy_with_logits(outp.logits, target))
        elif use_kd:
            teacher = batch["teacher"]
            terms["kd"] = (alpha, feature_kd_loss(heads.kd_projector(outp.z), teacher, mean, std))
        if use_align:
            x = heads.x_proj(model.encode_med_set(batch["target_meds"]))
            y = heads.y_proj(outp.profile)
            terms["align"] = (beta, contrastive_loss(x, y, dcfg.tau))
        return terms

    def prepare(batch):
        if use_kd:
            batch["teacher"] = cache.lookup(batch["subject_id"].cpu()).to(device)
        return batch

    console.info(
        f"distill: alpha (KD, {kd_target}) {alpha if use_kd else 0}, beta (align) {beta if use_align else 0}"
        + (", teacher features standardised" if standardize else "")
    )
    on = use_kd or use_align
    fitted = fit(
        model,
        encoder,
        splits["train"],
        splits["val"],
        cfg,
        out,
        device,
        resume,
        extra=extra if on else None,
        extra_modules=heads,
        prepare=prepare if use_kd else None,
        ahead=partial(student_train.prepare, model, align=use_align),  # packed inputs, masks: ahead on CPU
    )
    if not dist.main:  # training is over on every process (fit waited): the main process writes the run
        return out
    result = evaluate_run(
        model,
        encoder,
        splits["val"],
        splits["test"],
        cfg.threshold,
        artifact.ddi_index_pairs(),
        cfg.eval_batch_size,
        device,
        settings.report,
        settings.calibration.method,
    )
    manifest = runs.base_manifest("distilled", artifact, settings)
    manifest["distributed"] = distributed.manifest_fields(dist, cfg.batch_size)
    manifest.update(
        {
            "distill": {
                "alpha": alpha if use_kd else 0.0,
                "beta": beta if use_align else 0.0,
                "kd": use_kd,
                "kd_target": kd_target,
                "kd_target_setting": dcfg.kd_target,
                "align": use_align,
                "standardize": standardize,
                "tau": dcfg.tau,
            },
            "teacher": {
                "run": str(teacher_dir.resolve()),
                "backbone": (teacher_manifest or {}).get("backbone"),
            }
            if use_kd
            else None,
            "threshold": result["threshold"],
            "calibration": manifest_entry(result["calibration"]),
            "best_epoch": fitted.best_epoch,
            "epochs_run": fitted.epochs_run,
            "best_val_prauc": fitted.best_val_prauc,
            "metrics": {"val": result["val"], "test": result["test"]},
        }
    )
    save_run(out, model, config, artifact, manifest, settings)  # the student's weights only (heads dropped)
    if heads is not None:
        from safetensors.torch import save_file

        save_file(
            {k: v.detach().cpu().contiguous() for k, v in heads.state_dict().items()},
            str(out / "distill_heads.safetensors"),
        )
    console.result(f"distilled: {summary_line(result)}")  # stdout: --quiet keeps the results
    console.result(f"saved {out}")
    return out


def resolve_kd_target(setting: str, teacher_manifest: dict | None) -> str:
    """`distill.kd_target` → "features" or "logits". auto: logits when the teacher run took no fine-tuning steps
    (its pooled features are the frozen backbone's, which the probe never changed: distilling them cost 0.0105
    PRAUC at each of 3 seeds on the 21k set, `benchmarks/README.md`), features when LoRA trained it."""
    if setting != "auto":
        return setting
    steps = ((teacher_manifest or {}).get("training") or {}).get("steps")
    return "logits" if steps == 0 else "features"


def _teacher_head(teacher_dir: Path, device) -> tuple[torch.Tensor, ...]:
    """The teacher's head as tensors (weight (M, d), bias (M,), feature mean (d,), scale (d,)); a bias-free or
    un-normalised head (older runs, `teacher.head_bias = none`) gets zeros / identity."""
    from safetensors.torch import load_file

    from leadercli.models.teacher import HEAD_BIAS_KEY, HEAD_FILE, HEAD_KEY

    state = load_file(str(Path(teacher_dir) / HEAD_FILE))
    w = state[HEAD_KEY].float()
    b = state.get(HEAD_BIAS_KEY, torch.zeros(w.shape[0])).float()
    fm = state.get("feat_mean", torch.zeros(w.shape[1])).float()
    fs = state.get("feat_scale", torch.ones(w.shape[1])).float()
    return tuple(t.to(device) for t in (w, b, fm, fs))
