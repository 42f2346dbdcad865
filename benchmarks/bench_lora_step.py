"""Teacher LoRA training speed, step by step (issue 14 item 3): the same micro-batches through forward +
backward + optimizer step, for several variants built in one process and timed interleaved.

    python benchmarks/bench_lora_step.py --data ARTIFACT [--steps 6] [--reps 3] [--threads 2] \
        [--variant name=section.key=value,section.key=value ...] [--profile name]

Each variant is a full `training.teacher.setup` (model, LoRA, prompts) with its overrides on top of the
defaults + `teacher.max_length = 128`, batch 4 × accumulation 2. `--variant nodrop=` is special-cased: every
dropout of the backbone, the attention and LoRA set to 0 (the ceiling of what faster dropout masks can give).
Printed: tokens/s (real tokens, padding excluded, as `leader train teacher` counts them) per repetition, and
/proc/loadavg before and after. `--profile NAME` prints torch.profiler's table for one step of that variant.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def _parse(spec: str) -> tuple[str, dict]:
    name, _, rest = spec.partition("=")
    over: dict = {}
    for item in filter(None, rest.split(",")):
        key, _, value = item.partition("=")
        section, _, field = key.partition(".")
        over.setdefault(section, {})[field] = value
    return name, over


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--variant", action="append", default=None)
    ap.add_argument("--profile", default=None)
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import numpy as np
    import torch

    from leadercli import hardware
    from leadercli.models.teacher_infer import _collate
    from leadercli.settings import load_settings
    from leadercli.training import teacher as tt

    torch.set_num_threads(args.threads)
    getattr(hardware, "keep_freed_memory", lambda: None)()  # absent in older trees
    variants = [_parse(v) for v in (args.variant or ["now="])]
    built = {}
    for name, over in variants:
        base = {"teacher": {"max_length": 128, "batch_size": 4, "grad_accum": 2}, "hardware": {}}
        for s, kv in over.items():
            base.setdefault(s, {}).update(kv)
        base["paths"] = {"artifact": args.data, "teacher": tempfile.mkdtemp(prefix="lora-step-")}
        settings = load_settings(None, overrides=base)
        hardware.apply_threads(settings.hardware)
        torch.set_num_threads(args.threads)
        run = tt.setup(settings, resume=False)
        if name == "nodrop":
            for m in run.model.modules():
                if isinstance(m, torch.nn.Dropout):
                    m.p = 0.0
        lengths = np.array([len(p) for p in run.ps["train"].prompts])
        batches = tt.epoch_batches(lengths, 4, 42, 0, True)[: args.steps * 2]
        data = [_collate(run.ps["train"], b, run.tokenizer, run.max_length, run.n_labels) for b in batches]
        params = [p for p in run.model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=1e-4)
        built[name] = (run, data, opt)

    def one_pass(name: str) -> float:
        run, data, opt = built[name]
        run.model.train()
        torch.manual_seed(0)
        seen, t0 = 0, time.perf_counter()
        for i, b in enumerate(data):
            out = run.model(**b)
            (out.loss / 2).backward()
            seen += int(b["attention_mask"].sum())
            if i % 2 == 1:
                opt.step()
                opt.zero_grad(set_to_none=True)
        return seen / (time.perf_counter() - t0)

    for name in built:  # warm-up
        one_pass(name)
    rows: dict[str, list[float]] = {n: [] for n in built}
    for rep in range(args.reps):
        for name in built:
            l0 = open("/proc/loadavg").read().split()[0]
            tps = one_pass(name)
            l1 = open("/proc/loadavg").read().split()[0]
            rows[name].append(tps)
            print(f"rep {rep + 1} {name:>12s} {tps:8.0f} tokens/s  load {l0} -> {l1}", flush=True)
    ref = max(rows[variants[0][0]])
    for name, v in rows.items():
        print(f"{name:>12s} best {max(v):8.0f} median {sorted(v)[len(v) // 2]:8.0f}  ×{max(v) / ref:.2f}")
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        run, data, opt = built[args.profile]
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for b in data[:2]:
                run.model(**b).loss.backward()
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))


if __name__ == "__main__":
    main()
