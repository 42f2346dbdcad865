"""Stage 2 of the teacher recipe: the head's initialisation and the linear probe of LP-FT.

The head bias starts at the training split's label log-odds (the head then predicts the drug frequencies, not
p = 0.5 for every drug); the pooled features are centred / standardised with training statistics; and the
head is fitted on the frozen backbone's pooled features, computed once and kept in memory (`run.frozen`).
"""

from __future__ import annotations

import time

import numpy as np
import torch
from accelerate.utils import gather_object

from leadercli import console, metrics
from leadercli.models.teacher import label_log_odds, set_feature_norm, unwrap
from leadercli.models.teacher_infer import run_teacher
from leadercli.training.teacher_run import TeacherRun, multi_hot, no_fine_tuning

LP_EVAL_EVERY = 10  # linear-probe steps between validation checks


def init_head(run: TeacherRun) -> None:
    """Bias at the label log-odds, feature normalisation from training statistics, then the linear probe."""

    cfg, teacher = run.cfg, unwrap(run.model)
    y_train = torch.from_numpy(multi_hot(run.ps["train"].labels, run.n_labels)).float()  # (N, M)
    if teacher.head.bias is not None:
        with torch.no_grad():
            teacher.head.bias.copy_(label_log_odds(y_train).to(teacher.head.bias.device))
    need_feats = cfg.linear_probe == "use" or cfg.feature_norm != "none"
    if not need_feats:
        return
    # frozen pooled features: the LoRA B matrices are zero, so the adapted model equals the base model here
    splits = ("train", "val", "test") if no_fine_tuning(run) else ("train", "val")
    t = time.perf_counter()
    run.frozen = {s: _pooled(run, s, np.arange(len(run.samples[s]))) for s in splits}
    console.info(f"frozen pooled features of {', '.join(splits)} in {time.perf_counter() - t:.0f} s")
    feats = torch.from_numpy(run.frozen["train"])  # (N, d)
    set_feature_norm(teacher, feats, cfg.feature_norm)
    if cfg.linear_probe == "use":
        run.recipe["linear_probe"] |= linear_probe(run, feats, y_train)


def linear_probe(run: TeacherRun, feats: torch.Tensor, y: torch.Tensor) -> dict:
    """Fit the head (weight + bias) on cached features with full-batch AdamW, for at most lp_epochs steps,
    keeping the head with the best PRAUC on the validation sample (checked every LP_EVAL_EVERY steps: the
    probe overfits a small training split within a few hundred steps). Every process does the same
    deterministic fit on the same features, so the heads agree without communication."""

    cfg, teacher = run.cfg, unwrap(run.model)
    dev = teacher.head.weight.device
    x, y = feats.to(dev), y.to(dev)  # (N, d), (N, M)
    xv = torch.from_numpy(run.frozen["val"][run.val_idx]).to(dev)  # (V, d)
    yv = multi_hot([run.ps["val"].labels[i] for i in run.val_idx], run.n_labels)  # (V, M)
    opt = torch.optim.AdamW(teacher.head.parameters(), lr=cfg.lp_lr, weight_decay=cfg.lp_weight_decay)

    def val_prauc() -> float:
        with torch.no_grad():
            p = torch.sigmoid(teacher.classify(xv)).cpu().numpy()  # (V, M)
        return float(metrics.prauc(yv, p).mean()) if len(yv) else 0.0

    bce = torch.nn.functional.binary_cross_entropy_with_logits
    best, best_step, best_head = val_prauc(), 0, _head_copy(teacher)
    first = last = None
    for step in range(1, cfg.lp_epochs + 1):
        opt.zero_grad(set_to_none=True)
        loss = bce(teacher.classify(x), y)
        loss.backward()
        opt.step()
        first, last = (loss.item() if first is None else first), loss.item()
        if step % LP_EVAL_EVERY == 0 or step == cfg.lp_epochs:
            val = val_prauc()
            if val > best:
                best, best_step, best_head = val, step, _head_copy(teacher)
    with torch.no_grad():
        for p, b in zip(teacher.head.parameters(), best_head, strict=True):
            p.copy_(b)
    console.info(
        f"linear probe: best val PRAUC {best:.4f} at step {best_step} of {cfg.lp_epochs} "
        f"(train BCE {first:.4f} → {last:.4f}, sample of {len(yv)} validation patients)"
    )
    return {
        "steps": cfg.lp_epochs,
        "best_step": best_step,
        "lr": cfg.lp_lr,
        "weight_decay": cfg.lp_weight_decay,
        "train_bce_first_last": [first, last],
        "val_prauc": best,
    }


def _head_copy(teacher) -> list[torch.Tensor]:
    return [p.detach().clone() for p in teacher.head.parameters()]


def _pooled(run: TeacherRun, split: str, idx: np.ndarray) -> np.ndarray:
    """(len(idx), d) pooled features of `split`, each process scoring its share, gathered on every process."""
    rank, world = run.accelerator.process_index, run.accelerator.num_processes
    mine = idx[rank::world]
    f = run_teacher(
        run.model,
        run.tokenizer,
        run.ps[split],
        mine,
        run.cfg.eval_batch_size,
        run.max_length,
        run.accelerator.device,
        want="features",
        progress=f"frozen features ({split})",
    )
    if world == 1:
        return f
    got = sorted(gather_object([(int(i), v) for i, v in zip(mine, f, strict=True)]), key=lambda t: t[0])
    return np.stack([v for _, v in got]) if got else f
