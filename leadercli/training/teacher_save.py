"""Stage 4 of the teacher recipe: the run folder. The best weights are restored, a calibrator is fitted on the
full validation split (`calibration.method`), the threshold is chosen there on the calibrated scale, validation
and test are scored with bootstrap intervals, the adapter, head, vocab copy, calibration.json, feature cache and
model card are written, and the manifest last (a manifest means a finished run).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import torch
from peft import set_peft_model_state_dict
from safetensors.torch import load_file

from leadercli import checkpoint as ckpt_io
from leadercli import console, metrics, runs
from leadercli.calibration import calibrate_splits, manifest_entry, write_for_run
from leadercli.card import write_card
from leadercli.data.prompts import TEMPLATE_VERSION
from leadercli.models.teacher import HEAD_FILE, load_head, save_teacher
from leadercli.models.teacher_infer import prompt_config, run_teacher, save_split_features, write_features
from leadercli.modes import fix_tree
from leadercli.training.loop import summary_line
from leadercli.training.teacher_run import BEST_DIR, TeacherRun, multi_hot


def save(run: TeacherRun, state: dict, stats: dict) -> Path:
    """Best weights → run folder, threshold on validation, test metrics, feature cache, manifest (last)."""
    acc, out = run.accelerator, run.out
    acc.wait_for_everyone()
    teacher = acc.unwrap_model(run.model)
    if (out / BEST_DIR / "head.safetensors").is_file():
        _restore_best(teacher, out / BEST_DIR)
    manifest = _manifest(run, state, stats)
    reuse = bool(run.frozen) and stats["steps"] == 0 and all(s in run.frozen for s in ("val", "test"))
    if run.main:
        manifest.update(_final_metrics(run, teacher, reuse))
        save_teacher(teacher, out)
        shutil.copyfile(run.artifact.path / "vocab.json", out / runs.VOCAB_COPY)
    acc.wait_for_everyone()
    splits = {"train": run.samples["train"], "val": run.samples["val"]}
    if reuse:  # the backbone never changed: the frozen features are the teacher's features
        if run.main:
            for split in splits:
                save_split_features(manifest, run.artifact, split, run.ps[split], run.frozen[split], out)
    else:
        write_features(
            teacher,
            run.tokenizer,
            manifest,
            run.artifact,
            splits,
            out,
            run.cfg.eval_batch_size,
            run.max_length,
            acc.device,
            acc if acc.num_processes > 1 else None,
        )
    if run.main:
        write_for_run(out, manifest)  # calibration.json when a calibrator was fitted
        write_card(out, manifest)  # README.md model card (Hub metadata, no local paths)
        fix_tree(out)  # safetensors and peft write 0600: the run follows the umask
        runs.write_json(out / runs.MANIFEST, manifest)  # last: a manifest means the run is complete
        for d in (out / ckpt_io.CHECKPOINT_DIR, out / BEST_DIR):
            if d.exists():
                shutil.rmtree(d)
        test = {"test": manifest["metrics"]["test"], "threshold": manifest["threshold"]}
        console.result(f"teacher: {summary_line(test)}")  # stdout: --quiet keeps the results
        console.result(f"saved {out} (adapter/, head.safetensors, features/)")
    acc.wait_for_everyone()
    return out


def _manifest(run: TeacherRun, state: dict, stats: dict) -> dict:
    acc, info, cfg = run.accelerator, run.info, run.cfg
    cuda = acc.device.type == "cuda"
    return runs.base_manifest("teacher", run.artifact, run.settings) | {
        "base_model": cfg.base_model,
        "backbone": info["backbone"],
        "backbone_kind": info["kind"],
        "pooling": info["pooling"],
        "lora": info["lora"],
        "max_length": run.max_length,
        "prompt": {
            "template_version": TEMPLATE_VERSION,
            "options": prompt_config(cfg),
            "train_stats": run.ps["train"].stats,
        },
        "parameters": {"total": info["total_params"], "trainable": info["trainable_params"]},
        "recipe": run.recipe,
        "training": {
            "steps": stats["steps"],
            "best_step": state["best_step"],
            "best_val_prauc": state["best"] if state["best_step"] >= 0 else None,
            "processes": acc.num_processes,
            "seconds": stats["seconds"],
            "tokens_per_s": stats["tokens_per_s"],  # training steps only, evaluations excluded
            "eval_seconds": stats.get("eval_seconds", 0.0),
            # the head's start (frozen features, linear probe) before the steps; 0 when resumed
            "head_seconds": stats.get("head_seconds", 0.0),
            "precision": run.recipe["precision"],
            "device": str(acc.device),
            "device_name": torch.cuda.get_device_name() if cuda else "cpu",
            "peak_gpu_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
        },
    }


def _final_metrics(run: TeacherRun, teacher, reuse: bool) -> dict:
    """Threshold chosen on the full validation split, bootstrap metrics of validation and test."""
    probs = {}
    for split in ("val", "test"):
        if reuse:
            with torch.no_grad():
                x = torch.from_numpy(run.frozen[split]).to(teacher.head.weight.device)
                probs[split] = torch.sigmoid(teacher.classify(x)).cpu().numpy()
        else:
            idx = np.arange(len(run.samples[split]))
            probs[split] = run_teacher(
                teacher, run.tokenizer, run.ps[split], idx, run.cfg.eval_batch_size, run.max_length,
                run.accelerator.device, progress=split,
            )  # fmt: skip
    ys = {s: multi_hot(run.ps[s].labels, run.n_labels) for s in probs}
    scored = {s: {"labels": ys[s], "probs": probs[s]} for s in probs}
    cal = calibrate_splits(run.settings.calibration.method, scored)  # the scores below are calibrated
    probs = {s: scored[s]["probs"] for s in scored}
    threshold = metrics.choose_threshold(run.cfg.threshold, ys["val"], probs["val"])
    rc, ddi = run.settings.report, run.artifact.ddi_index_pairs()
    res = {}
    for split in ("val", "test"):
        y, nv = ys[split], np.asarray(run.ps[split].n_visits)
        res[split] = (
            metrics.evaluate_groups(
                y,
                probs[split],
                threshold["value"],
                ddi,
                nv,
                rounds=rc.bootstrap_rounds,
                fraction=rc.bootstrap_fraction,
                seed=rc.seed,
            )  # fmt: skip
            if len(y)
            else None
        )
    return {"threshold": threshold, "calibration": manifest_entry(cal), "metrics": res}


def _restore_best(teacher, best_dir: Path) -> None:
    adapter = load_file(str(best_dir / "adapter" / "adapter_model.safetensors"))
    set_peft_model_state_dict(teacher.backbone, adapter)
    load_head(teacher, load_file(str(best_dir / HEAD_FILE)))
