"""LoRA fine-tuning throughput of a LLaMA-7B-shaped teacher on one GPU (issue 4 "Speed"; leader-reference §3
and §7 item 25: LoRA on LLaMA-7B in bf16 with gradient checkpointing fits one 80 GB GPU without DeepSpeed).

The model is built from a config with random weights, directly on the GPU in bf16 (no checkpoint, no CPU copy):
LLaMA-7B shape (hidden 4096, 32 layers, 32 heads, intermediate 11008, vocab 32000), LoRA r 8 / α 32 /
dropout 0.1 on q/k/v/o/gate/up/down_proj through peft, activation checkpointing, sequence length 1024,
last-token pooling + Linear(4096 → M) head in fp32 + BCE, AdamW on the LoRA and head parameters.
The teacher is `leadercli.models.teacher.TeacherModel` when leadercli is importable (same as `leader train
teacher`), else an inline copy of the same math (recorded as `teacher_impl`).

For each batch size: warm-up steps, then timed steps of forward + backward + optimizer step (CUDA-synchronised).
Reports tokens/s, seconds per step and torch.cuda.max_memory_allocated as a markdown table (stdout and
OUT with .md) and JSON (OUT). A time budget skips batch sizes that would not finish in time.

Run (GPU, about 2-3 minutes on an H100):
    python benchmarks/gpu_teacher.py --out benchmarks/results/gpu_teacher.json
CPU smoke test of the same code with a tiny config (seconds):
    python benchmarks/gpu_teacher.py --tiny --out /tmp/gpu_teacher_tiny.json
Needs torch, transformers and peft only.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch
from torch import nn

LLAMA_7B = {
    "vocab_size": 32000,
    "hidden_size": 4096,
    "intermediate_size": 11008,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 32,
    "max_position_embeddings": 2048,
}
TINY = {
    "vocab_size": 512,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "max_position_embeddings": 256,
}
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--out", type=Path, required=True, help="JSON result path (a .md table is written beside it)."
    )
    p.add_argument("--tiny", action="store_true", help="Tiny config on CPU (smoke test of this script).")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda unless --tiny).")
    p.add_argument(
        "--seq-len", type=int, default=None, help="Tokens per sample (default 1024; 64 with --tiny)."
    )
    p.add_argument("--batch-sizes", default=None, help="Comma-separated (default 1,2,4,8; 1,2 with --tiny).")
    p.add_argument(
        "--warmup", type=int, default=None, help="Warm-up steps per batch size (default 5; 1 tiny)."
    )
    p.add_argument("--steps", type=int, default=None, help="Timed steps per batch size (default 10; 2 tiny).")
    p.add_argument("--labels", type=int, default=150, help="Head size M (ATC-3 classes).")
    p.add_argument("--no-checkpointing", action="store_true", help="Disable activation checkpointing.")
    p.add_argument(
        "--budget-s", type=float, default=200.0, help="Skip batch sizes that would end after this."
    )
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    args.device = args.device or ("cpu" if args.tiny else "cuda")
    args.seq_len = args.seq_len or (64 if args.tiny else 1024)
    args.batch_sizes = [int(b) for b in (args.batch_sizes or ("1,2" if args.tiny else "1,2,4,8")).split(",")]
    args.warmup = args.warmup if args.warmup is not None else (1 if args.tiny else 5)
    args.steps = args.steps if args.steps is not None else (2 if args.tiny else 10)
    return args


class InlineTeacher(nn.Module):
    """Fallback with the math of leadercli's TeacherModel: last real token → fp32 Linear head → BCE."""

    def __init__(self, backbone: nn.Module, hidden: int, n_labels: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(hidden, n_labels, bias=False, dtype=torch.float32)
        nn.init.normal_(self.head.weight, std=0.02)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor):
        h = self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # (B, T, d)
        pos = torch.arange(h.shape[1], device=h.device)  # (T,)
        idx = (attention_mask.long() * pos).argmax(dim=1)  # (B,)
        pooled = h[torch.arange(h.shape[0], device=h.device), idx].float()  # (B, d)
        logits = self.head(pooled)  # (B, M)
        loss = nn.functional.binary_cross_entropy_with_logits(logits, labels)
        return type("Out", (), {"loss": loss, "logits": logits})


def build(args: argparse.Namespace, device: torch.device, dtype: torch.dtype) -> tuple[nn.Module, dict]:
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import LlamaConfig, LlamaModel

    shape = TINY if args.tiny else LLAMA_7B
    config = LlamaConfig(**shape, bos_token_id=1, eos_token_id=2, pad_token_id=0, use_cache=False)
    config._attn_implementation = "sdpa"
    torch.manual_seed(args.seed)
    t0 = time.perf_counter()
    with torch.device(device):  # parameters are created (and randomly initialised) on the device
        backbone = LlamaModel._from_config(config, dtype=dtype)
    if device.type == "cuda":
        torch.cuda.synchronize()
    init_s = time.perf_counter() - t0
    if not args.no_checkpointing:
        kw = {"use_reentrant": False}
        if hasattr(backbone, "activation_checkpointing_enable"):
            backbone.activation_checkpointing_enable(activation_checkpointing_kwargs=kw)
        else:
            backbone.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kw)
        backbone.enable_input_require_grads()
    lora = LoraConfig(
        r=8, lora_alpha=32, lora_dropout=0.1, target_modules=TARGETS, bias="none",
        task_type=TaskType.FEATURE_EXTRACTION,
    )  # fmt: skip
    peft_model = get_peft_model(backbone, lora)
    try:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        from leadercli.models.teacher import TeacherModel

        model: nn.Module = TeacherModel(peft_model, config.hidden_size, args.labels, "last")
        impl = "leadercli.models.teacher.TeacherModel"
    except ImportError:
        model, impl = InlineTeacher(peft_model, config.hidden_size, args.labels), "inline"
    model.to(device)  # the head; the backbone is already there
    model.train()
    info = {
        "teacher_impl": impl,
        "model": {k: shape[k] for k in shape},
        "params_total": sum(p.numel() for p in model.parameters()),
        "params_trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "init_s": round(init_s, 2),
    }
    return model, info


def run_batch(model: nn.Module, opt: torch.optim.Optimizer, args, bs: int, device: torch.device) -> dict:
    g = torch.Generator(device="cpu").manual_seed(args.seed + bs)
    vocab = TINY["vocab_size"] if args.tiny else LLAMA_7B["vocab_size"]
    ids = torch.randint(3, vocab, (bs, args.seq_len), generator=g).to(device)  # (B, T)
    mask = torch.ones_like(ids)  # (B, T)
    labels = (torch.rand(bs, args.labels, generator=g) < 0.1).float().to(device)  # (B, M)
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)

    def step() -> float:
        opt.zero_grad(set_to_none=True)
        out = model(input_ids=ids, attention_mask=mask, labels=labels)
        out.loss.backward()
        opt.step()
        return float(out.loss.detach())

    losses = [step() for _ in range(args.warmup)]
    if cuda:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    losses += [step() for _ in range(args.steps)]  # float() syncs every step; negligible at these sizes
    if cuda:
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - t0
    return {
        "batch_size": bs,
        "status": "ok",
        "step_s": round(elapsed / args.steps, 4),
        "tokens_per_s": round(bs * args.seq_len * args.steps / elapsed, 1),
        "samples_per_s": round(bs * args.steps / elapsed, 2),
        "peak_mem_gib": round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if cuda else None,
        "loss_first": round(losses[0], 4),
        "loss_last": round(losses[-1], 4),
    }


def markdown(result: dict) -> str:
    head = (
        f"LoRA r8/α32 training, {result['model_name']}, {result['dtype']}, seq {result['seq_len']}, "
        f"checkpointing {result['gradient_checkpointing']}, device: {result['device']}\n\n"
        "| batch | tokens/s | s/step | samples/s | peak GPU mem (GiB) | status |\n|---|---|---|---|---|---|\n"
    )
    rows = [
        f"| {r['batch_size']} | {r.get('tokens_per_s', '')} | {r.get('step_s', '')} | {r.get('samples_per_s', '')} "
        f"| {r.get('peak_mem_gib', '')} | {r['status']} |"
        for r in result["results"]
    ]
    return head + "\n".join(rows) + "\n"


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    t_start = time.perf_counter()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run with --tiny (CPU) or on a GPU machine")
    dtype = torch.bfloat16
    import peft
    import transformers

    model, info = build(args, device, dtype)
    weights_gib = round(torch.cuda.memory_allocated(device) / 2**30, 2) if device.type == "cuda" else None
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-4, weight_decay=0.0)
    result = {
        "benchmark": "gpu_teacher",
        "model_name": "tiny LLaMA (--tiny)" if args.tiny else "LLaMA-7B shape, random init",
        "device": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"cpu ({platform.machine()})",
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "dtype": "bf16",
        "seq_len": args.seq_len,
        "gradient_checkpointing": not args.no_checkpointing,
        "lora": {"r": 8, "alpha": 32, "dropout": 0.1, "targets": TARGETS},
        "n_labels": args.labels,
        "warmup_steps": args.warmup,
        "timed_steps": args.steps,
        "weights_gib": weights_gib,
        **info,
        "results": [],
    }
    last_step_s, last_bs = None, None
    for bs in args.batch_sizes:
        spent = time.perf_counter() - t_start
        if last_step_s is not None:
            predicted = last_step_s * bs / last_bs * (args.warmup + args.steps) * 1.2
            if spent + predicted > args.budget_s:
                result["results"].append(
                    {"batch_size": bs, "status": f"skipped (time budget {args.budget_s}s)"}
                )
                continue
        try:
            r = run_batch(model, opt, args, bs, device)
        except torch.OutOfMemoryError:
            opt.zero_grad(set_to_none=True)
            torch.cuda.empty_cache()
            result["results"].append({"batch_size": bs, "status": "out of memory"})
            break
        result["results"].append(r)
        last_step_s, last_bs = r["step_s"], bs
        print(f"batch {bs}: {r['tokens_per_s']} tokens/s, {r['step_s']} s/step, peak {r['peak_mem_gib']} GiB",
              file=sys.stderr, flush=True)  # fmt: skip
    result["total_s"] = round(time.perf_counter() - t_start, 1)
    table = markdown(result)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(table)
    print(table)
    return result


if __name__ == "__main__":
    main()
