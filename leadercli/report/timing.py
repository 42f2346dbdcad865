"""Efficiency in `leader report RUN...`: the machine a report ran on and the latency of each run.

Latency: samples are encoded, collated and moved to the device beforehand; the scoring pass over the whole
split comes first (it is also the warm-up); then `report.latency_repeats` timed passes over the first
`report.latency_patients` test patients in batches of `report.latency_batch_size`, repeated until
MIN_TIMED_SECONDS have been timed (at most MAX_TIMED_PASSES); the fastest pass counts (best of k), the median is
kept too. Only the model calls and the copy of the probabilities back to the host are timed
(`time.perf_counter`, CUDA synchronised around each). The machine is recorded: torch threads, CPU model
(/proc/cpuinfo), the load average (/proc/loadavg) before and after, the GPU name; the teacher/student ratio is
given only for runs timed on the same device with the same thread count.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from pathlib import Path

import torch

from leadercli import kinds

MIN_TIMED_SECONDS = 0.5
# the runs whose latency is set against the teacher's: learned, reading student tensors
RATIO_KINDS = tuple(k for k in kinds.TENSOR_KINDS if k in kinds.LEARNED)
MAX_TIMED_PASSES = 50


def sync(device) -> None:
    if device is not None and getattr(device, "type", str(device)) == "cuda":
        torch.cuda.synchronize(device)


def read_load() -> list[float] | None:
    """The 1, 5 and 15 minute load averages from /proc/loadavg (None where unreadable)."""
    try:
        return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
    except (OSError, ValueError):
        try:
            return list(os.getloadavg())
        except OSError:
            return None


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo, else what `platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def machine(device) -> dict:
    out = {
        "torch_threads": torch.get_num_threads(),
        "logical_cpus": os.cpu_count(),
        "cpu_model": cpu_model(),
        "load_before": read_load(),
    }
    if getattr(device, "type", "cpu") == "cuda":
        out["gpu"] = torch.cuda.get_device_name(device)
    return out


def time_best_of(call, batches: list, sizes: list[int], device, repeats: int, batch_size: int) -> dict:
    """Timed passes over `batches` (already scored once, so warm); the fastest pass counts."""
    load = read_load()
    passes: list[float] = []
    while len(passes) < MAX_TIMED_PASSES and (len(passes) < repeats or sum(passes) < MIN_TIMED_SECONDS):
        total = 0.0
        for b in batches:
            sync(device)
            t0 = time.perf_counter()
            call(b)
            sync(device)
            total += time.perf_counter() - t0
        passes.append(total)
    patients = int(sum(sizes))
    best = min(passes)
    return {
        "device": str(device) if device is not None else "cpu",
        "threads": torch.get_num_threads(),
        "load_1min": load[0] if load else None,
        "batch_size": batch_size,
        "timed_passes": len(passes),
        "timed_patients_per_pass": patients,
        "best_pass_seconds": best,
        "median_ms_per_patient": 1000.0 * statistics.median(passes) / patients,
        "latency_ms_per_patient": 1000.0 * best / patients,
        "throughput_patients_per_s": patients / best if best > 0 else None,
        "latency_is": f"best of {len(passes)} passes",
    }


def latency_ratios(entries: list[dict]) -> dict:
    """Teacher latency / latency of each learned run that reads tensors (the student, LEADER(S), the field's
    models) timed on the same device with the same thread count; {} without a teacher."""
    eff = {e["name"]: e.get("efficiency") or {} for e in entries}
    teachers = [
        e["name"] for e in entries if e["kind"] == "teacher" and eff[e["name"]].get("latency_ms_per_patient")
    ]
    if not teachers:
        return {}
    t = eff[teachers[0]]
    out = {}
    for e in entries:
        s = eff[e["name"]]
        if e["kind"] not in RATIO_KINDS or not s.get("latency_ms_per_patient"):
            continue
        if (s.get("device"), s.get("threads")) != (t.get("device"), t.get("threads")):
            continue
        out[e["name"]] = t["latency_ms_per_patient"] / s["latency_ms_per_patient"]
    return out


def efficiency_block(device, rcfg, env: dict, entries: list[dict]) -> dict:
    """The report's `efficiency` block: device, machine, whether it was busy, the timing rule, the ratios."""
    return {
        "device": str(device),
        "batch_size": rcfg.latency_batch_size,
        "machine": env,
        "busy": bool(
            env["load_before"] and env["logical_cpus"] and env["load_before"][0] >= env["logical_cpus"]
        ),
        "timing": (
            f"model calls only, after a scoring pass over the whole test split; best of ≥ {rcfg.latency_repeats} "
            f"passes (≥ {MIN_TIMED_SECONDS} s in all, at most {MAX_TIMED_PASSES}) over the first "
            f"{rcfg.latency_patients} test patients; baselines on the CPU; the teacher's time includes prompt "
            "tokenisation"
        ),
        "teacher_student_latency_ratio": latency_ratios(entries),
        "ratio_rule": "teacher / run latency (learned runs reading tensors), only for runs timed on the same "
        "device with the same threads",
    }
