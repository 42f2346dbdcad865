"""Teacher LoRA training speed, step by step (issue 14 item 3): the same micro-batches through forward +
backward + optimizer step, timed without the frozen pass, the probe or evaluation, in any source tree.

    python benchmarks/bench_lora_step.py dump --data ARTIFACT --out batches.safetensors [--steps 6]
    PYTHONPATH=/path/to/tree python benchmarks/bench_lora_step.py time --batches batches.safetensors \
        --label base [--reps 3] [--threads 2] [--masks fast|torch] [--nodrop] [--profile]

`dump` (this tree) renders the training prompts of ARTIFACT with the defaults (≤ 128 tokens, length buckets,
seed 42), cuts them into `--steps` × 2 micro-batches of 4 and writes their token ids, masks and labels. `time`
builds the bundled MiniLM teacher with the tree's own `build_teacher` (whatever that tree does on CPU: oneDNN,
fused LoRA, dropout masks; `--masks` where the tree knows `fast_dropout`), warms up once, then runs the batches
`--reps` times (accumulation 2, AdamW), printing real tokens/s (padding excluded, as `leader train teacher`
counts them) and /proc/loadavg before and after. `--nodrop` sets every dropout to 0 (the ceiling of what
faster masks can give); `--profile` prints torch.profiler's table for two micro-batches. Interleave trees in a
shell loop (benchmarks/out/quiet/tps4.sh).
"""

from __future__ import annotations

import argparse
import inspect
import os
import tempfile
import time


def dump(args) -> None:
    import numpy as np
    import torch
    from safetensors.torch import save_file

    from leadercli.models.teacher_infer import collate_prompts as _collate
    from leadercli.settings import load_settings
    from leadercli.training import teacher as tt

    over = {"teacher": {"max_length": 128}, "paths": {"artifact": args.data, "teacher": tempfile.mkdtemp()}}
    run = tt.setup(load_settings(None, overrides=over), resume=False)
    lengths = np.array([len(p) for p in run.ps["train"].prompts])
    batches = tt.epoch_batches(lengths, 4, 42, 0, True)[: args.steps * 2]
    out = {}
    for i, b in enumerate(batches):
        for k, v in _collate(run.ps["train"], b, run.tokenizer, run.max_length, run.n_labels).items():
            out[f"{i}.{k}"] = v.contiguous()
    save_file(out, args.out)
    tokens = sum(int(out[f"{i}.attention_mask"].sum()) for i in range(len(batches)))
    print(f"{len(batches)} micro-batches, {tokens} real tokens, {torch.numel(out['0.labels'][0])} labels")


def time_tree(args) -> None:
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import torch
    from safetensors.torch import load_file

    import leadercli
    from leadercli.models.teacher import build_teacher

    torch.set_num_threads(args.threads)
    try:  # the allocator setting of `leader train teacher`; absent in older trees
        from leadercli.hardware import keep_freed_memory

        keep_freed_memory()
    except ImportError:
        pass
    raw = load_file(args.batches)
    n = len({k.split(".")[0] for k in raw})
    data = [{k: raw[f"{i}.{k}"] for k in ("input_ids", "attention_mask", "labels")} for i in range(n)]
    kwargs = {}
    if "fast_dropout" in inspect.signature(build_teacher).parameters:
        kwargs["fast_dropout"] = args.masks == "fast"
    torch.manual_seed(42)
    model, _, _ = build_teacher(None, data[0]["labels"].shape[1], **kwargs)
    if args.nodrop:
        for m in model.modules():
            if hasattr(m, "p") and isinstance(m.p, float):
                m.p = 0.0
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    model.train()

    def one_pass() -> float:
        torch.manual_seed(0)
        seen, t0 = 0, time.perf_counter()
        for i, b in enumerate(data):
            (model(**b).loss / 2).backward()
            seen += int(b["attention_mask"].sum())
            if i % 2 == 1:
                opt.step()
                opt.zero_grad(set_to_none=True)
        return seen / (time.perf_counter() - t0)

    one_pass()  # warm-up: oneDNN kernels, allocator
    where = os.path.dirname(os.path.dirname(leadercli.__file__))
    for rep in range(args.reps):
        l0 = open("/proc/loadavg").read().split()[0]
        tps = one_pass()
        l1 = open("/proc/loadavg").read().split()[0]
        print(f"{args.label} rep {rep + 1} {tps:8.0f} tokens/s  load {l0} -> {l1}  ({where})", flush=True)
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for b in data[:2]:
                model(**b).loss.backward()
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("dump")
    d.add_argument("--data", required=True)
    d.add_argument("--out", required=True)
    d.add_argument("--steps", type=int, default=6)
    t = sub.add_parser("time")
    t.add_argument("--batches", required=True)
    t.add_argument("--label", default="tree")
    t.add_argument("--reps", type=int, default=3)
    t.add_argument("--threads", type=int, default=2)
    t.add_argument("--masks", choices=["fast", "torch"], default="fast")
    t.add_argument("--nodrop", action="store_true")
    t.add_argument("--profile", action="store_true")
    args = ap.parse_args()
    dump(args) if args.cmd == "dump" else time_tree(args)


if __name__ == "__main__":
    main()
