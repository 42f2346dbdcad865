"""Recipe: `leader train teacher` — LEADER(T): an LLM backbone with LoRA and a Linear(d → M) drug head,
trained with BCE on prompts rendered from the patient's record (reference §2-3, bugs of §7 fixed).

Runs through `accelerate`: CPU, one GPU, or several processes (`accelerate launch -m leadercli train teacher`,
or `torchrun --nproc_per_node N -m leadercli train teacher` which accelerate reads as DDP). Each process takes
its share of every global batch; the main process evaluates, keeps the best adapter and writes the run folder.
Then it caches teacher features (the pooled hidden state per training/validation patient) for `leader distill`.

Run it small on CPU:  leader preprocess && leader train teacher --max-steps 20
"""

from __future__ import annotations

import json
import math
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from leadercli import checkpoint as ckpt_io
from leadercli import console, runs
from leadercli.data.artifact import Artifact
from leadercli.data.samples import load_samples
from leadercli.errors import ArtifactError, ModelError
from leadercli.hardware import resolve_device
from leadercli.models.teacher_infer import (
    _collate,
    _unwrap,
    make_prompts,
    prompt_config,
    run_teacher,
    write_features,
)
from leadercli.settings import Settings

BEST_DIR = "best"
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


# -- the recipe -----------------------------------------------------------------------------------------


def train_teacher(settings: Settings, resume: bool = False) -> Path:
    from accelerate import Accelerator
    from accelerate.utils import gather_object
    from accelerate.utils import set_seed as acc_set_seed
    from transformers import get_linear_schedule_with_warmup

    from leadercli import metrics
    from leadercli.data.prompts import TEMPLATE_VERSION
    from leadercli.metrics import choose_threshold
    from leadercli.models.teacher import build_teacher, save_teacher

    cfg, hw = settings.teacher, settings.hardware
    device = resolve_device(settings.hardware)
    cpu = device.type == "cpu"
    mixed = "no" if cpu or hw.precision == "fp32" else hw.precision
    accelerator = Accelerator(cpu=cpu, mixed_precision=mixed)
    main, rank, world = accelerator.is_main_process, accelerator.process_index, accelerator.num_processes
    if not main:
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
    dtype = DTYPES[hw.precision] if not cpu else torch.float32
    model, tokenizer, info = build_teacher(
        cfg.base_model,
        len(artifact.labels),
        lora_r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        lora_targets=cfg.lora_targets,
        pooling=cfg.pooling,
        dtype=dtype,
        gradient_checkpointing=cfg.gradient_checkpointing,
    )
    max_length = cfg.max_length or min(info["max_positions"], 2048)
    if cfg.max_length and cfg.max_length > info["max_positions"]:
        raise ModelError(
            f"teacher.max_length {cfg.max_length} exceeds the backbone's limit {info['max_positions']}",
            "Lower teacher.max_length or leave it unset",
        )
    pcfg = prompt_config(cfg)
    with console.step("rendering prompts"):
        ps = {s: make_prompts(v, artifact.vocab, tokenizer, pcfg, max_length) for s, v in samples.items()}
    st = ps["train"].stats
    console.info(
        f"teacher: {info['backbone']['name']} ({info['kind']}, pooling {info['pooling']}), "
        f"{info['trainable_params']:,} trainable of {info['total_params']:,} parameters; prompts ≤ {max_length} "
        f"tokens (train mean {st['mean_tokens']:.0f}, {st['history_dropped']} history visits dropped); "
        f"{world} process(es) on {accelerator.device}"
    )

    # optimisation: steps-per-epoch comes from the data and the process count, so it follows them
    n_train = len(samples["train"])
    global_batch = cfg.batch_size * world
    micro_per_epoch = math.ceil(n_train / global_batch)
    total = cfg.max_steps or max(1, math.ceil(cfg.epochs * micro_per_epoch / cfg.grad_accum))
    # evaluate at least once per epoch, so short runs (the demo) still log validation PRAUC as they go
    eval_every = max(1, min(cfg.eval_every, micro_per_epoch // cfg.grad_accum))
    log_every = max(1, total // 20)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, eps=1e-8)
    scheduler = get_linear_schedule_with_warmup(optimizer, cfg.warmup_steps, total)
    model.to(accelerator.device)
    start_step, best, best_step = 0, -math.inf, -1
    ckpt = out / ckpt_io.CHECKPOINT_DIR
    if main:
        runs.prepare_out_dir(out, resume, ckpt_io.CHECKPOINT_DIR)
        if not resume and (out / BEST_DIR).exists():
            shutil.rmtree(out / BEST_DIR)
        runs.save_settings(settings, out)
    accelerator.wait_for_everyone()
    if resume and ckpt_io.exists(ckpt):
        s = ckpt_io.load_state(ckpt, ckpt_io.trainable_tensors(_unwrap(model)), optimizer, scheduler)
        start_step, best, best_step = s["step"], s["best"], s["best_step"]
        if main:  # log lines written after the checkpoint belong to the interrupted attempt
            kept = [r for r in runs.read_log(out) if r.get("step", 0) <= start_step]
            (out / runs.LOG).write_text("".join(json.dumps(r) + "\n" for r in kept))
        console.info(f"resuming at step {start_step}/{total} (best val PRAUC {best:.4f} at step {best_step})")
    model, optimizer = accelerator.prepare(model, optimizer)

    def evaluate() -> float:
        idx = np.arange(rank, len(samples["val"]), world)
        probs = run_teacher(
            model,
            tokenizer,
            ps["val"],
            idx,
            cfg.eval_batch_size,
            max_length,
            accelerator.device,
            progress="validation",
        )
        got = gather_object([(int(i), p) for i, p in zip(idx, probs, strict=True)])
        if not got:
            return 0.0
        got.sort(key=lambda t: t[0])
        P = np.stack([p for _, p in got])
        Y = _multi_hot(ps["val"].labels, len(artifact.labels))
        return float(metrics.prauc(Y, P).mean())

    # train: a step = grad_accum micro-batches; each process takes its slice of each global micro-batch
    step, micro, seen_tokens, loss_sum, loss_n = start_step, 0, 0, 0.0, 0
    t0 = time.perf_counter()
    model.train()
    with console.progress("teacher", total=total) as advance:
        advance(start_step)
        while step < total:
            epoch = (step * cfg.grad_accum) // micro_per_epoch
            order = np.random.default_rng(cfg.seed * 1000 + epoch).permutation(n_train)
            first = (step * cfg.grad_accum) % micro_per_epoch
            for m in range(first, micro_per_epoch):
                g = order[m * global_batch : (m + 1) * global_batch]
                if len(g) < global_batch:  # wrap so every process gets a full share (DDP needs equal steps)
                    g = np.concatenate([g, order[: global_batch - len(g)]])
                mine = g[rank * cfg.batch_size : (rank + 1) * cfg.batch_size]
                b = _collate(ps["train"], mine, tokenizer, max_length, len(artifact.labels))
                b = {k: v.to(accelerator.device) for k, v in b.items()}
                sync = (micro + 1) % cfg.grad_accum == 0
                ctx = accelerator.no_sync(model) if (not sync and world > 1) else _nullcontext()
                with ctx:
                    o = model(
                        input_ids=b["input_ids"], attention_mask=b["attention_mask"], labels=b["labels"]
                    )
                    accelerator.backward(o.loss / cfg.grad_accum)
                micro += 1
                seen_tokens += int(b["attention_mask"].sum()) * world
                loss_sum, loss_n = loss_sum + o.loss.detach().item(), loss_n + 1
                if not sync:
                    continue
                accelerator.clip_grad_norm_(params, 1.0)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                tok_s = seen_tokens / max(time.perf_counter() - t0, 1e-9)
                advance(1, status=f"loss {loss_sum / loss_n:.4f}  {tok_s:,.0f} tok/s")
                if not console.err.is_terminal and step % log_every == 0 and step % eval_every:
                    # progress bars do not render into log files: a line every 5 % of the run instead
                    console.info(f"step {step:5d}/{total}  loss {loss_sum / loss_n:.4f}  {tok_s:,.0f} tok/s")
                if step % eval_every == 0 or step == total:
                    val = evaluate()
                    model.train()
                    record = {
                        "step": step,
                        "loss": loss_sum / loss_n,
                        "lr": scheduler.get_last_lr()[0],
                        "tokens_per_s": tok_s,
                        "val_prauc": val,
                    }
                    loss_sum, loss_n = 0.0, 0
                    improved = val > best
                    if improved:
                        best, best_step = val, step
                        if main:
                            save_teacher(accelerator.unwrap_model(model), out / BEST_DIR)
                    record["best"] = improved
                    if main:
                        runs.append_log(out, record)
                        ckpt_io.save_state(
                            ckpt,
                            ckpt_io.trainable_tensors(accelerator.unwrap_model(model)),
                            optimizer,
                            {"step": step, "best": best, "best_step": best_step},
                            scheduler,
                        )
                        console.info(
                            f"step {step:5d}  loss {record['loss']:.4f}  val PRAUC {val:.4f}"
                            f"{'  *' if improved else ''}  {tok_s:,.0f} tok/s"
                        )
                    accelerator.wait_for_everyone()
                if step >= total:
                    break
    elapsed = time.perf_counter() - t0

    # save: best adapter → run folder, threshold on validation, test metrics, features
    accelerator.wait_for_everyone()
    teacher = accelerator.unwrap_model(model)
    if (out / BEST_DIR / "head.safetensors").is_file():
        _restore_best(teacher, out / BEST_DIR)
    manifest = runs.base_manifest("teacher", artifact, settings) | {
        "base_model": cfg.base_model,
        "backbone": info["backbone"],
        "backbone_kind": info["kind"],
        "pooling": info["pooling"],
        "lora": info["lora"],
        "max_length": max_length,
        "prompt": {"template_version": TEMPLATE_VERSION, "options": pcfg, "train_stats": st},
        "parameters": {"total": info["total_params"], "trainable": info["trainable_params"]},
        "training": {
            "steps": step,
            "best_step": best_step,
            "best_val_prauc": best,
            "processes": world,
            "seconds": elapsed,
            "tokens_per_s": seen_tokens / max(elapsed, 1e-9),
            "precision": mixed,
            "device": str(accelerator.device),
            "device_name": torch.cuda.get_device_name() if accelerator.device.type == "cuda" else "cpu",
            "peak_gpu_memory_gib": (
                torch.cuda.max_memory_allocated() / 2**30 if accelerator.device.type == "cuda" else None
            ),
        },
    }
    if main:
        dev = accelerator.device
        probs = {
            split: run_teacher(
                teacher,
                tokenizer,
                ps[split],
                np.arange(len(samples[split])),
                cfg.eval_batch_size,
                max_length,
                dev,
                progress=split,
            )
            for split in ("val", "test")
        }
        val_p, test_p = probs["val"], probs["test"]
        M = len(artifact.labels)
        yv, yt = _multi_hot(ps["val"].labels, M), _multi_hot(ps["test"].labels, M)
        threshold = choose_threshold(cfg.threshold, yv, val_p)
        rc, ddi = settings.report, artifact.ddi_index_pairs()
        res = {}
        for name, y, p, nv in (
            ("val", yv, val_p, ps["val"].n_visits),
            ("test", yt, test_p, ps["test"].n_visits),
        ):
            res[name] = (
                metrics.evaluate_groups(
                    y,
                    p,
                    threshold["value"],
                    ddi,
                    np.asarray(nv),
                    rounds=rc.bootstrap_rounds,
                    fraction=rc.bootstrap_fraction,
                    seed=rc.seed,
                )
                if len(y)
                else None
            )
        manifest.update({"threshold": threshold, "metrics": res})
        save_teacher(teacher, out)
        shutil.copyfile(artifact.path / "vocab.json", out / runs.VOCAB_COPY)
    accelerator.wait_for_everyone()
    write_features(
        teacher,
        tokenizer,
        manifest,
        artifact,
        {"train": samples["train"], "val": samples["val"]},
        out,
        cfg.eval_batch_size,
        max_length,
        accelerator.device,
        accelerator if world > 1 else None,
    )
    if main:
        runs.write_json(out / runs.MANIFEST, manifest)  # last: a manifest means the run is complete
        for d in (ckpt, out / BEST_DIR):
            if d.exists():
                shutil.rmtree(d)
        from leadercli.training.loop import summary_line

        console.info(summary_line({"test": manifest["metrics"]["test"], "threshold": manifest["threshold"]}))
        console.info(f"saved {out} (adapter/, head.safetensors, features/)")
    accelerator.wait_for_everyone()
    return out


def _restore_best(teacher, best_dir: Path) -> None:
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file as lf

    from leadercli.models.teacher import HEAD_FILE, HEAD_KEY

    adapter = lf(str(best_dir / "adapter" / "adapter_model.safetensors"))
    set_peft_model_state_dict(teacher.backbone, adapter)
    with torch.no_grad():
        teacher.head.weight.copy_(lf(str(best_dir / HEAD_FILE))[HEAD_KEY].to(teacher.head.weight.device))


def _multi_hot(labels: list[list[int]], M: int) -> np.ndarray:
    y = np.zeros((len(labels), M), dtype=bool)
    for i, lab in enumerate(labels):
        y[i, lab] = True
    return y


class _nullcontext:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False
