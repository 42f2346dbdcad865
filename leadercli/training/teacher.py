"""Recipe: `leader train teacher` — LEADER(T): an LLM backbone with LoRA and a Linear(d → M) drug head,
trained with BCE on prompts rendered from the patient's record (reference §2-3, bugs of §7 fixed).

The lifecycle, top to bottom (`train_teacher`):
1. `setup`: accelerator, samples, backbone + LoRA + head, prompts;
2. `init_head` (`teacher_probe.py`): the head bias starts at the training split's label log-odds (the head
   then predicts the drug frequencies, not p = 0.5 for every drug), the pooled features are centred /
   standardised with training statistics, and — the linear-probe stage of LP-FT — the head is fitted on the
   frozen backbone's pooled features, computed once and cached in memory;
3. `fine_tune`: LoRA + head with separate learning rates, linear warm-up then decay, length-bucketed batches
   padded per batch, validation on a bounded sample of the validation split, resume checkpoints;
4. `save` (`teacher_save.py`): best weights → run folder, threshold on the full validation split, test
   metrics, feature cache.
Every choice is recorded in the manifest under "recipe". With no fine-tuning steps (epochs = 0), the frozen
features of stage 2 are the final ones, so scoring and the feature cache reuse them (one backbone pass).

Runs through `accelerate`: CPU, one GPU, or several processes (`accelerate launch -m leadercli train teacher`,
or `torchrun --nproc_per_node N -m leadercli train teacher` which accelerate reads as DDP). Each process takes
its share of every global batch; the main process evaluates, keeps the best adapter and writes the run folder.

Run it small on CPU:  leader preprocess && leader train teacher --max-steps 20
"""

from __future__ import annotations

import contextlib
import json
import math
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import gather_object
from accelerate.utils import set_seed as acc_set_seed
from transformers import get_linear_schedule_with_warmup

from leadercli import checkpoint as ckpt_io
from leadercli import console, metrics, runs
from leadercli.data.artifact import Artifact
from leadercli.data.samples import load_samples
from leadercli.errors import ArtifactError, ModelError
from leadercli.hardware import resolve_device
from leadercli.models.teacher import HEAD_NORM_KEYS, build_teacher, save_teacher, unwrap
from leadercli.models.teacher_infer import collate_prompts, make_prompts, prompt_config, run_teacher
from leadercli.settings import Settings
from leadercli.training.teacher_probe import init_head
from leadercli.training.teacher_run import BEST_DIR, TeacherRun, epochs, multi_hot
from leadercli.training.teacher_save import save

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
ENCODER_MAX_LENGTH = 128  # default prompt limit for encoder backbones
BUCKET_BATCHES = 50  # a length bucket holds this many global batches (shuffled first, sorted within)


# -- the recipe -----------------------------------------------------------------------------------------


def train_teacher(settings: Settings, resume: bool = False) -> Path:
    run = setup(settings, resume)
    plan = plan_steps(run)
    resuming = resume and ckpt_io.exists(run.out / ckpt_io.CHECKPOINT_DIR)
    # the head is initialised (and probed) before the optimizer exists: AdamW starts from the probed head
    t_head = time.perf_counter()
    if not resuming:
        init_head(run)  # on CPU by default the whole training: frozen features and the linear probe
    head_seconds = time.perf_counter() - t_head
    optimizer, scheduler = make_optimizer(run, plan["total"])
    if resuming:
        state = resume_state(run, optimizer, scheduler, plan)
    else:
        state = start_state(run, optimizer, scheduler, plan)
    # accelerate wraps the model (DDP) only now: the probe and the checkpoints above see the plain model
    run.model, optimizer = run.accelerator.prepare(run.model, optimizer)
    t0 = time.perf_counter()
    stats = fine_tune(run, optimizer, scheduler, state, plan)
    stats["seconds"] = time.perf_counter() - t0
    stats["head_seconds"] = head_seconds
    return save(run, state, stats)


def start_state(run: TeacherRun, optimizer, scheduler, plan: dict) -> dict:
    """Step 0. With a probed head, that head is the best so far: LoRA steps must beat it on the same
    validation sample to replace it. A step-0 checkpoint keeps the probe through an interruption."""
    state = {"step": 0, "best": -math.inf, "best_step": -1}
    lp_val = run.recipe["linear_probe"].get("val_prauc")
    if plan["total"] == 0:
        return state
    if lp_val is not None:
        state.update(best=lp_val, best_step=0)
    if run.main:
        if lp_val is not None:
            save_teacher(run.model, run.out / BEST_DIR)
        _checkpoint(run, optimizer, scheduler, state)
    return state


def resume_state(run: TeacherRun, optimizer, scheduler, plan: dict) -> dict:
    """Weights, optimizer, scheduler, RNG and counters from the checkpoint; later log lines dropped."""
    ckpt = run.out / ckpt_io.CHECKPOINT_DIR
    state = ckpt_io.load_state(ckpt, _state_tensors(run.model), optimizer, scheduler)
    run.recipe = state.pop("recipe", run.recipe)
    if run.main:  # log lines written after the checkpoint belong to the interrupted attempt
        kept = [r for r in runs.read_log(run.out) if r.get("step", 0) <= state["step"]]
        (run.out / runs.LOG).write_text("".join(json.dumps(r) + "\n" for r in kept))
    console.info(
        f"resuming at step {state['step']}/{plan['total']} "
        f"(best val PRAUC {state['best']:.4f} at step {state['best_step']})"
    )
    return state


def setup(settings: Settings, resume: bool) -> TeacherRun:
    """Accelerator, seeds, samples, the model and the prompts; prepares the run folder."""
    cfg, hw = settings.teacher, settings.hardware
    device = resolve_device(settings.hardware)
    cpu = device.type == "cpu"
    mixed = "no" if cpu or hw.precision == "fp32" else hw.precision
    accelerator = Accelerator(cpu=cpu, mixed_precision=mixed)
    if not accelerator.is_main_process:
        console.configure(quiet=True)
    acc_set_seed(cfg.seed)
    out = Path(settings.paths.teacher)
    artifact = Artifact(settings.artifact_dir())
    sp = settings.samples
    samples = {s: load_samples(artifact, s, sp.max_visits, sp.per_visit) for s in ("train", "val", "test")}
    if not samples["train"]:
        raise ArtifactError(
            f"artifact {artifact.path} has no training patients", "Re-run `leader preprocess`"
        )
    # model: dtype of the frozen backbone follows the precision on GPU; LoRA and head train in fp32
    model, tokenizer, info = build_teacher(
        cfg.base_model,
        len(artifact.labels),
        lora_r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        lora_targets=cfg.lora_targets,
        pooling=cfg.pooling,
        dtype=DTYPES[hw.precision] if not cpu else torch.float32,
        gradient_checkpointing=cfg.gradient_checkpointing,
        head_bias=cfg.head_bias == "log_odds",
        fast_dropout=cfg.dropout_masks == "fast",
        onednn=hw.onednn,
    )
    if cfg.max_length and cfg.max_length > info["max_positions"]:
        raise ModelError(
            f"teacher.max_length {cfg.max_length} exceeds the backbone's limit {info['max_positions']}",
            "Lower teacher.max_length or leave it unset",
        )
    # encoders: 128 tokens beat 256 and 512 for MiniLM (benchmarks/README.md, teacher recipe), at half the cost
    default_length = ENCODER_MAX_LENGTH if info["kind"] == "encoder" else 2048
    max_length = cfg.max_length or min(info["max_positions"], default_length)
    pcfg = prompt_config(cfg)
    with console.step("rendering prompts"):
        ps = {s: make_prompts(v, artifact.vocab, tokenizer, pcfg, max_length) for s, v in samples.items()}
    st = ps["train"].stats
    console.info(
        f"teacher: {info['backbone']['name']} ({info['kind']}, pooling {info['pooling']}), "
        f"{info['trainable_params']:,} trainable of {info['total_params']:,} parameters; prompts ≤ {max_length} "
        f"tokens (train mean {st['mean_tokens']:.0f}, {st['history_dropped']} history visits dropped); "
        f"{accelerator.num_processes} process(es) on {accelerator.device}"
    )
    n_val = len(samples["val"])
    val_idx = np.arange(n_val)
    if cfg.val_sample and cfg.val_sample < n_val:  # a fixed sample, the same at every evaluation
        val_idx = np.sort(np.random.default_rng(cfg.seed).choice(n_val, cfg.val_sample, replace=False))
    model.to(accelerator.device)
    if accelerator.is_main_process:
        runs.prepare_out_dir(out, resume, ckpt_io.CHECKPOINT_DIR)
        if not resume and (out / BEST_DIR).exists():
            shutil.rmtree(out / BEST_DIR)
        runs.save_settings(settings, out)
    accelerator.wait_for_everyone()
    run = TeacherRun(
        settings, accelerator, artifact, samples, ps, model, tokenizer, info, max_length, out, val_idx
    )
    run.recipe = {
        "head_bias": cfg.head_bias,
        "feature_norm": cfg.feature_norm,
        "linear_probe": {"mode": cfg.linear_probe},
        "lr_lora": cfg.lr,
        "lr_head": cfg.head_lr or cfg.lr,
        "length_buckets": cfg.length_buckets,
        "dropout_masks": cfg.dropout_masks,
        "val_sample": int(len(val_idx)),
        "max_length": max_length,
        "precision": mixed,
    }
    return run


def plan_steps(run: TeacherRun) -> dict:
    """Fine-tuning length: steps-per-epoch come from the data and the process count, so they follow them."""
    cfg, world = run.cfg, run.accelerator.num_processes
    global_batch = cfg.batch_size * world
    micro_per_epoch = math.ceil(len(run.samples["train"]) / global_batch)
    n_epochs = epochs(cfg, run.accelerator.device)
    total = (
        cfg.max_steps if cfg.max_steps is not None else math.ceil(n_epochs * micro_per_epoch / cfg.grad_accum)
    )
    warmup = cfg.warmup_steps if cfg.warmup_steps is not None else int(round(0.06 * total))
    # evaluate at least once per epoch, so short runs (the demo) still log validation PRAUC as they go
    eval_every = max(1, min(cfg.eval_every, micro_per_epoch // cfg.grad_accum))
    run.recipe.update(
        {
            "fine_tune_epochs": n_epochs,
            "fine_tune_steps": total,
            "warmup_steps": warmup,
            "eval_every": eval_every,
        }
    )
    return {
        "total": total,
        "warmup": warmup,
        "global_batch": global_batch,
        "micro_per_epoch": micro_per_epoch,
        "eval_every": eval_every,
    }


# -- stage 3: LoRA fine-tuning (stage 2 is teacher_probe.py, stage 4 teacher_save.py) ---------------------


def make_optimizer(run: TeacherRun, total: int):
    """AdamW with two parameter groups (LoRA, head) and a linear warm-up → linear decay to 0 schedule."""

    cfg = run.cfg
    named = [(n, p) for n, p in run.model.named_parameters() if p.requires_grad]
    head = [p for n, p in named if n.startswith("head.")]
    lora = [p for n, p in named if not n.startswith("head.")]
    groups = [{"params": lora, "lr": cfg.lr}, {"params": head, "lr": cfg.head_lr or cfg.lr}]
    optimizer = torch.optim.AdamW(groups, weight_decay=cfg.weight_decay, eps=1e-8)
    warmup = run.recipe["warmup_steps"]
    scheduler = get_linear_schedule_with_warmup(optimizer, warmup, max(total, 1))
    return optimizer, scheduler


def epoch_batches(lengths: np.ndarray, global_batch: int, seed: int, epoch: int, buckets: bool) -> list:
    """The global micro-batches of one epoch, deterministic in (seed, epoch). With `buckets`, the shuffled
    order is cut into buckets of BUCKET_BATCHES batches, each sorted by prompt length, and the batches are
    shuffled again: similar lengths share a batch (less padding), the order stays random."""
    n = len(lengths)
    rng = np.random.default_rng(seed * 1000 + epoch)
    order = rng.permutation(n)
    if buckets:
        size = global_batch * BUCKET_BATCHES
        order = np.concatenate(
            [c[np.argsort(lengths[c], kind="stable")] for c in np.array_split(order, max(1, -(-n // size)))]
        )
    batches = [order[i : i + global_batch] for i in range(0, n, global_batch)]
    if len(batches[-1]) < global_batch:  # wrap so every process gets a full share (DDP needs equal steps)
        batches[-1] = np.concatenate([batches[-1], order[: global_batch - len(batches[-1])]])
    if buckets:
        batches = [batches[i] for i in rng.permutation(len(batches))]
    return batches


def fine_tune(run: TeacherRun, optimizer, scheduler, state: dict, plan: dict) -> dict:
    """LoRA + head: a step = grad_accum micro-batches; each process takes its slice of each global batch."""
    acc, cfg = run.accelerator, run.cfg
    rank, world, total = acc.process_index, acc.num_processes, plan["total"]
    params = [p for g in optimizer.param_groups for p in g["params"]]
    lengths = np.array([len(p) for p in run.ps["train"].prompts])  # characters: a cheap proxy for tokens
    step = state["step"]
    micro, seen, loss_sum, loss_n = 0, 0, 0.0, 0
    t0, eval_s = time.perf_counter(), 0.0
    run.model.train()
    with console.progress("teacher", total=total) as advance:
        advance(step)
        while step < total:
            epoch = (step * cfg.grad_accum) // plan["micro_per_epoch"]
            batches = epoch_batches(lengths, plan["global_batch"], cfg.seed, epoch, cfg.length_buckets)
            for g in batches[(step * cfg.grad_accum) % plan["micro_per_epoch"] :]:
                mine = g[rank * cfg.batch_size : (rank + 1) * cfg.batch_size]
                b = collate_prompts(run.ps["train"], mine, run.tokenizer, run.max_length, run.n_labels)
                b = {k: v.to(acc.device) for k, v in b.items()}
                sync = (micro + 1) % cfg.grad_accum == 0
                ctx = acc.no_sync(run.model) if (not sync and world > 1) else contextlib.nullcontext()
                with ctx:
                    o = run.model(**b)
                    acc.backward(o.loss / cfg.grad_accum)
                micro += 1
                seen += int(b["attention_mask"].sum()) * world
                loss_sum, loss_n = loss_sum + o.loss.detach().item(), loss_n + 1
                if not sync:
                    continue
                acc.clip_grad_norm_(params, 1.0)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                elapsed = time.perf_counter() - t0 - eval_s  # training only: evaluations are not counted
                tok_s = seen / max(elapsed, 1e-9)
                advance(1, status=f"loss {loss_sum / loss_n:.4f}  {tok_s:,.0f} tok/s")
                if step % plan["eval_every"] == 0 or step == total:
                    record = {"step": step, "loss": loss_sum / loss_n, "lr": scheduler.get_last_lr()[0]}
                    t_eval = time.perf_counter()
                    _evaluate_and_keep(
                        run, optimizer, scheduler, state, step, record | {"tokens_per_s": tok_s}
                    )
                    eval_s += time.perf_counter() - t_eval
                    loss_sum, loss_n = 0.0, 0
                if step >= total:
                    break
    elapsed = time.perf_counter() - t0 - eval_s
    return {
        "steps": step,
        "tokens_per_s": seen / max(elapsed, 1e-9) if seen else None,
        "eval_seconds": eval_s,
    }


def _evaluate_and_keep(run: TeacherRun, optimizer, scheduler, state: dict, step: int, record: dict) -> None:
    """Validation PRAUC on the bounded sample; the best weights go to best/, every evaluation checkpoints."""

    acc = run.accelerator
    rank, world = acc.process_index, acc.num_processes
    idx = run.val_idx[rank::world]
    probs = run_teacher(
        run.model, run.tokenizer, run.ps["val"], idx, run.cfg.eval_batch_size, run.max_length, acc.device,
        progress="validation",
    )  # fmt: skip
    got = sorted(gather_object([(int(i), p) for i, p in zip(idx, probs, strict=True)]), key=lambda t: t[0])
    val = 0.0
    if got:
        y = multi_hot([run.ps["val"].labels[i] for i, _ in got], run.n_labels)
        val = float(metrics.prauc(y, np.stack([p for _, p in got])).mean())
    run.model.train()
    improved = val > state["best"]
    if improved:
        state["best"], state["best_step"] = val, step
        if run.main:
            save_teacher(acc.unwrap_model(run.model), run.out / BEST_DIR)
    state["step"] = step
    if run.main:
        runs.append_log(run.out, record | {"val_prauc": val, "best": improved})
        _checkpoint(run, optimizer, scheduler, state)
        tok_s = record["tokens_per_s"]
        console.info(
            f"step {step:5d}  loss {record['loss']:.4f}  val PRAUC {val:.4f} (sample of {len(run.val_idx)})"
            f"{'  *' if improved else ''}  {tok_s:,.0f} tok/s"
        )
    acc.wait_for_everyone()


def _state_tensors(model) -> dict[str, torch.Tensor]:
    """What a resume checkpoint holds: LoRA + head parameters and the head's feature normalisation."""

    teacher = unwrap(model)
    return ckpt_io.trainable_tensors(teacher) | {k: getattr(teacher, k) for k in HEAD_NORM_KEYS}


def _checkpoint(run: TeacherRun, optimizer, scheduler, state: dict) -> None:
    model = run.accelerator.unwrap_model(run.model)
    ckpt_io.save_state(
        run.out / ckpt_io.CHECKPOINT_DIR,
        _state_tensors(model),
        optimizer,
        dict(state) | {"recipe": run.recipe},
        scheduler,
    )
