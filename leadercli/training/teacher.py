"""Recipe: `leader train teacher` — LEADER(T): an LLM backbone with LoRA and a Linear(d → M) drug head,
trained with BCE on prompts rendered from the patient's record (reference §2-3, bugs of §7 fixed).

The lifecycle, top to bottom (`train_teacher`):
1. `setup`: accelerator, samples, backbone + LoRA + head, prompts;
2. `init_head`: the head bias starts at the training split's label log-odds (the head then predicts the
   drug frequencies, not p = 0.5 for every drug), the pooled features are centred / standardised with
   training statistics, and — the linear-probe stage of LP-FT — the head is fitted on the frozen backbone's
   pooled features, computed once and cached in memory;
3. `fine_tune`: LoRA + head with separate learning rates, linear warm-up then decay, length-bucketed batches
   padded per batch, validation on a bounded sample of the validation split, resume checkpoints;
4. `save`: best weights → run folder, threshold on the full validation split, test metrics, feature cache.
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from leadercli import checkpoint as ckpt_io
from leadercli import console, runs
from leadercli.data.artifact import Artifact
from leadercli.data.samples import load_samples
from leadercli.errors import ArtifactError, ModelError
from leadercli.hardware import resolve_device
from leadercli.models.teacher_infer import (
    PromptSet,
    _collate,
    make_prompts,
    prompt_config,
    run_teacher,
    save_split_features,
    write_features,
)
from leadercli.settings import Settings

BEST_DIR = "best"
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
LP_EVAL_EVERY = 10  # linear-probe steps between validation checks
GPU_EPOCHS = 3.0  # default LoRA fine-tuning epochs on a GPU
ENCODER_MAX_LENGTH = 128  # default prompt limit for encoder backbones
BUCKET_BATCHES = 50  # a length bucket holds this many global batches (shuffled first, sorted within)


@dataclass
class TeacherRun:
    """What `setup` builds and the later stages share (a plain record; the stages are functions)."""

    settings: Settings
    accelerator: Any
    artifact: Artifact
    samples: dict[str, list]
    ps: dict[str, PromptSet]
    model: Any  # TeacherModel, wrapped by accelerate after `prepare`
    tokenizer: Any
    info: dict
    max_length: int
    out: Path
    val_idx: np.ndarray  # the bounded validation sample scored during training
    frozen: dict[str, np.ndarray] = field(default_factory=dict)  # split → (N, d) frozen pooled features
    recipe: dict = field(default_factory=dict)  # every choice, for the manifest

    @property
    def cfg(self):
        return self.settings.teacher

    @property
    def main(self) -> bool:
        return self.accelerator.is_main_process

    @property
    def n_labels(self) -> int:
        return len(self.artifact.labels)


# -- the recipe -----------------------------------------------------------------------------------------


def train_teacher(settings: Settings, resume: bool = False) -> Path:
    run = setup(settings, resume)
    plan = plan_steps(run)
    resuming = resume and ckpt_io.exists(run.out / ckpt_io.CHECKPOINT_DIR)
    # the head is initialised (and probed) before the optimizer exists: AdamW starts from the probed head
    if not resuming:
        init_head(run)
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
            from leadercli.models.teacher import save_teacher

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
    from accelerate import Accelerator
    from accelerate.utils import set_seed as acc_set_seed

    from leadercli.models.teacher import build_teacher

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
    epochs = _epochs(cfg, run.accelerator.device)
    total = (
        cfg.max_steps if cfg.max_steps is not None else math.ceil(epochs * micro_per_epoch / cfg.grad_accum)
    )
    warmup = cfg.warmup_steps if cfg.warmup_steps is not None else int(round(0.06 * total))
    # evaluate at least once per epoch, so short runs (the demo) still log validation PRAUC as they go
    eval_every = max(1, min(cfg.eval_every, micro_per_epoch // cfg.grad_accum))
    run.recipe.update(
        {
            "fine_tune_epochs": epochs,
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


# -- stage 2: head initialisation and the linear probe ---------------------------------------------------


def init_head(run: TeacherRun) -> None:
    """Bias at the label log-odds, feature normalisation from training statistics, then the linear probe."""
    from leadercli.models.teacher import _unwrap, label_log_odds, set_feature_norm

    cfg, teacher = run.cfg, _unwrap(run.model)
    y_train = torch.from_numpy(_multi_hot(run.ps["train"].labels, run.n_labels)).float()  # (N, M)
    if teacher.head.bias is not None:
        with torch.no_grad():
            teacher.head.bias.copy_(label_log_odds(y_train).to(teacher.head.bias.device))
    need_feats = cfg.linear_probe == "use" or cfg.feature_norm != "none"
    if not need_feats:
        return
    # frozen pooled features: the LoRA B matrices are zero, so the adapted model equals the base model here
    splits = ("train", "val", "test") if _no_fine_tuning(run) else ("train", "val")
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
    from leadercli import metrics
    from leadercli.models.teacher import _unwrap

    cfg, teacher = run.cfg, _unwrap(run.model)
    dev = teacher.head.weight.device
    x, y = feats.to(dev), y.to(dev)  # (N, d), (N, M)
    xv = torch.from_numpy(run.frozen["val"][run.val_idx]).to(dev)  # (V, d)
    yv = _multi_hot([run.ps["val"].labels[i] for i in run.val_idx], run.n_labels)  # (V, M)
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
    from accelerate.utils import gather_object

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


def _epochs(cfg, device: torch.device) -> float:
    """teacher.epochs, or its device default: 3 on a GPU; 0 on CPU, where a LoRA step of MiniLM costs seconds
    and the linear probe alone beats popularity by far (benchmarks/README.md, teacher recipe)."""
    if cfg.epochs is not None:
        return cfg.epochs
    return 0.0 if device.type == "cpu" else GPU_EPOCHS


def _no_fine_tuning(run: TeacherRun) -> bool:
    cfg = run.cfg
    return cfg.max_steps == 0 or (cfg.max_steps is None and _epochs(cfg, run.accelerator.device) == 0)


# -- stage 3: LoRA fine-tuning ---------------------------------------------------------------------------


def make_optimizer(run: TeacherRun, total: int):
    """AdamW with two parameter groups (LoRA, head) and a linear warm-up → linear decay to 0 schedule."""
    from transformers import get_linear_schedule_with_warmup

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
                b = _collate(run.ps["train"], mine, run.tokenizer, run.max_length, run.n_labels)
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
    from accelerate.utils import gather_object

    from leadercli import metrics
    from leadercli.models.teacher import save_teacher

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
        y = _multi_hot([run.ps["val"].labels[i] for i, _ in got], run.n_labels)
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
    from leadercli.models.teacher import HEAD_NORM_KEYS, _unwrap

    teacher = _unwrap(model)
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


# -- stage 4: save -------------------------------------------------------------------------------------


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
        from leadercli.models.teacher import save_teacher

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
        from leadercli.card import write_card
        from leadercli.modes import fix_tree

        write_card(out, manifest)  # README.md model card (Hub metadata, no local paths)
        fix_tree(out)  # safetensors and peft write 0600: the run follows the umask
        runs.write_json(out / runs.MANIFEST, manifest)  # last: a manifest means the run is complete
        for d in (out / ckpt_io.CHECKPOINT_DIR, out / BEST_DIR):
            if d.exists():
                shutil.rmtree(d)
        from leadercli.training.loop import summary_line

        test = {"test": manifest["metrics"]["test"], "threshold": manifest["threshold"]}
        console.result(f"teacher: {summary_line(test)}")  # stdout: --quiet keeps the results
        console.result(f"saved {out} (adapter/, head.safetensors, features/)")
    acc.wait_for_everyone()
    return out


def _manifest(run: TeacherRun, state: dict, stats: dict) -> dict:
    from leadercli.data.prompts import TEMPLATE_VERSION

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
            "precision": run.recipe["precision"],
            "device": str(acc.device),
            "device_name": torch.cuda.get_device_name() if cuda else "cpu",
            "peak_gpu_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
        },
    }


def _final_metrics(run: TeacherRun, teacher, reuse: bool) -> dict:
    """Threshold chosen on the full validation split, bootstrap metrics of validation and test."""
    from leadercli import metrics
    from leadercli.metrics import choose_threshold

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
    ys = {s: _multi_hot(run.ps[s].labels, run.n_labels) for s in probs}
    threshold = choose_threshold(run.cfg.threshold, ys["val"], probs["val"])
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
    return {"threshold": threshold, "metrics": res}


def _restore_best(teacher, best_dir: Path) -> None:
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file as lf

    from leadercli.models.teacher import HEAD_FILE, load_head

    adapter = lf(str(best_dir / "adapter" / "adapter_model.safetensors"))
    set_peft_model_state_dict(teacher.backbone, adapter)
    load_head(teacher, lf(str(best_dir / HEAD_FILE)))


def _multi_hot(labels: list[list[int]], M: int) -> np.ndarray:
    y = np.zeros((len(labels), M), dtype=bool)
    for i, lab in enumerate(labels):
        y[i, lab] = True
    return y
