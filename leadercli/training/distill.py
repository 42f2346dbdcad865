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

from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from leadercli import console, runs
from leadercli.calibration import manifest_entry
from leadercli.data.registry import get_layout
from leadercli.errors import ArtifactError
from leadercli.hardware import resolve_device, set_seed
from leadercli.models import student_train
from leadercli.models.losses import contrastive_loss, feature_kd_loss
from leadercli.models.student import DistillHeads
from leadercli.settings import Settings
from leadercli.training import distributed
from leadercli.training.code_text import title_table
from leadercli.training.loop import build_student, evaluate_run, fit, save_run, setup_data, summary_line


def loss_weights(settings: Settings, source: str) -> tuple[float, float]:
    """(alpha, beta): the settings', else the reference scripts' weights for the artifact's layout."""
    a, b = get_layout(source).distill_weights
    d = settings.distill
    return (d.alpha if d.alpha is not None else a, d.beta if d.beta is not None else b)


def distill(settings: Settings, resume: bool = False) -> Path:
    """The recipe: setup → teacher features → student and loss terms → train → evaluate and save."""
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
    # features must exist before the student is built: extraction may need the teacher, not the RNG
    cache, teacher_manifest = (
        _teacher_features(settings, dist, teacher_dir, artifact, splits["train"]) if use_kd else (None, None)
    )
    kd_target = resolve_kd_target(dcfg.kd_target, teacher_manifest) if use_kd else None
    if dist.main:  # the main process alone writes the run folder; the others wait until it is prepared
        runs.prepare_out_dir(out, resume)
        runs.save_settings(settings, out)
    distributed.barrier(dist)
    text, text_entry = title_table(settings, encoder, artifact.vocab_hash, out, dist)  # student.code_text
    model, config = build_student(encoder, cfg, settings.hardware.onednn, text)
    model.to(device)
    terms = _Terms.build(
        settings, model, config, kd_target, alpha if use_kd else 0.0, beta if use_align else 0.0
    )
    terms.setup(cache, splits["train"], teacher_dir, device)
    console.info(
        f"distill: alpha (KD, {kd_target}) {terms.alpha}, beta (align) {terms.beta}"
        + (", teacher features standardised" if terms.standardize else "")
    )
    fitted = fit(
        model,
        encoder,
        splits["train"],
        splits["val"],
        cfg,
        out,
        device,
        resume,
        extra=terms if terms.on else None,
        extra_modules=terms.heads,
        prepare=terms.prepare if use_kd else None,
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
            "distill": terms.manifest(),
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
            "training": {"seconds": fitted.seconds},  # epochs' passes and validations; not the teacher's
            "metrics": {"val": result["val"], "test": result["test"]},
        }
        | ({"code_text": text_entry} if text_entry is not None else {})
    )
    save_run(out, model, config, artifact, manifest, settings)  # the student's weights only (heads dropped)
    if terms.heads is not None:
        save_file(
            {k: v.detach().cpu().contiguous() for k, v in terms.heads.state_dict().items()},
            str(out / "distill_heads.safetensors"),
        )
    console.result(f"distilled: {summary_line(result)}")  # stdout: --quiet keeps the results
    console.result(f"saved {out}")
    return out


def _teacher_features(settings: Settings, dist, teacher_dir: Path, artifact, train: list):
    """The teacher's cached features of the training patients (computed first when missing or stale; the main
    process computes, the others then read) and the teacher run's manifest."""
    # transformers (teacher model): only when the teacher's features must be computed
    from leadercli.training.teacher_features import ensure_features

    with distributed.main_first(dist):
        cache, teacher_manifest = ensure_features(settings, teacher_dir, artifact, splits=("train",))
    missing = sum(not cache.covers([e.subject_id]) for e in train)
    if missing:
        raise ArtifactError(
            f"teacher feature cache of {teacher_dir} lacks {missing} of {len(train)} training patients",
            "Re-run `leader train teacher` on this artifact (or delete its features/ folder to recompute)",
        )
    return cache, teacher_manifest


@dataclass
class _Terms:
    """The distillation terms added to the student's BCE (`fit`'s `extra`): KD (to teacher features through a
    projector, or to the teacher head's probabilities) weighted by alpha, alignment by beta (0 = off)."""

    model: torch.nn.Module
    alpha: float
    beta: float
    kd_target: str | None  # "features", "logits" or None
    tau: float
    standardize: bool  # teacher features standardised per dimension (feature KD only)
    kd_target_setting: str  # `distill.kd_target` as set (auto, features, logits)
    heads: DistillHeads | None = None
    cache: object = None  # the teacher feature cache (KD)
    device: torch.device | None = None
    mean: torch.Tensor | None = None  # (D,) feature standardisation
    std: torch.Tensor | None = None
    soft: tuple[torch.Tensor, ...] | None = (
        None  # (W (M, d), b (M,), feat_mean (d,), feat_scale (d,)): logit KD
    )

    @staticmethod
    def build(settings: Settings, model, config, kd_target, alpha: float, beta: float) -> _Terms:
        dcfg = settings.distill
        standardize = kd_target == "features" and dcfg.standardize  # only feature KD has features to scale
        return _Terms(model, alpha, beta, kd_target, dcfg.tau, standardize, dcfg.kd_target)

    @property
    def on(self) -> bool:
        return self.kd_target is not None or self.beta > 0

    def setup(self, cache, train: list, teacher_dir: Path, device: torch.device) -> None:
        """The trainable heads (created after the student, so that its initial weights equal `leader train
        student`'s; logit KD needs no projector, so none is made, saved or counted), the teacher's head for
        logit KD, and the standardisation of the features."""
        self.cache, self.device = cache, device
        if self.kd_target == "features" or self.beta > 0:
            dim = cache.dim if self.kd_target == "features" else None
            self.heads = DistillHeads(self.model.config, teacher_dim=dim, align=self.beta > 0).to(device)
        if self.kd_target == "logits":
            self.soft = _teacher_head(teacher_dir, device)
        if self.standardize:
            feats = cache.lookup(torch.tensor([e.subject_id for e in train]))  # (N, D)
            self.mean, self.std = feats.mean(0).to(device), feats.std(0).to(device)

    def __call__(self, outp, batch) -> dict[str, tuple[float, torch.Tensor]]:
        terms = {}
        if self.kd_target == "logits":  # BCE of the student's logits to the teacher's probabilities
            w, b, fm, fs = self.soft
            target = torch.sigmoid(((batch["teacher"] - fm) * fs) @ w.T + b)  # (B, M)
            terms["kd"] = (self.alpha, F.binary_cross_entropy_with_logits(outp.logits, target))
        elif self.kd_target == "features":
            proj = self.heads.kd_projector(outp.z)
            terms["kd"] = (self.alpha, feature_kd_loss(proj, batch["teacher"], self.mean, self.std))
        if self.beta > 0:
            x = self.heads.x_proj(self.model.encode_med_set(batch["target_meds"]))
            y = self.heads.y_proj(outp.profile)
            terms["align"] = (self.beta, contrastive_loss(x, y, self.tau))
        return terms

    def prepare(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The teacher's features of the batch's patients (KD)."""
        batch["teacher"] = self.cache.lookup(batch["subject_id"].cpu()).to(self.device)
        return batch

    def manifest(self) -> dict:
        """The manifest's `distill` entry."""
        return {
            "alpha": self.alpha,
            "beta": self.beta,
            "kd": self.kd_target is not None,
            "kd_target": self.kd_target,
            "kd_target_setting": self.kd_target_setting,
            "align": self.beta > 0,
            "standardize": self.standardize,
            "tau": self.tau,
        }


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
    from leadercli.models.teacher import HEAD_BIAS_KEY, HEAD_FILE, HEAD_KEY  # local: peft, transformers

    state = load_file(str(Path(teacher_dir) / HEAD_FILE))
    w = state[HEAD_KEY].float()
    b = state.get(HEAD_BIAS_KEY, torch.zeros(w.shape[0])).float()
    fm = state.get("feat_mean", torch.zeros(w.shape[1])).float()
    fs = state.get("feat_scale", torch.ones(w.shape[1])).float()
    return tuple(t.to(device) for t in (w, b, fm, fs))
