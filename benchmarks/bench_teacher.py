"""The teacher recipe ablation (issue 10): `leader train teacher` with its defaults and with each recipe choice
switched, on a 2,000-patient synthetic MIMIC-IV set, against the popularity baseline.

Target (issue 10, item 2): with defaults, on 2 quiet CPU cores, `leader train teacher` finishes in ≤ 10 minutes
and its test PRAUC exceeds popularity's by ≥ 0.10.

    python benchmarks/bench_teacher.py run --work /tmp/bt                       # every variant (~1 h on 2 cores)
    python benchmarks/bench_teacher.py run --work /tmp/bt --only default        # the target check (≤ 10 min)
    python benchmarks/bench_teacher.py table --work /tmp/bt                     # the markdown table

`run` does, in WORK: generate.py raw (MIMIC-IV layout, 3,250 generated patients → about 2,090 kept) → `leader
preprocess` → `leader train student --model popularity` → one `leader train teacher --out WORK/runs/<variant>`
per variant of VARIANTS (settings as LEADER_TEACHER__* environment overrides of the defaults). Each step's
wall time, peak RSS and /proc/loadavg before and after go to WORK/times/<step>.json, its output to
WORK/logs/<step>.log. A step whose output exists is skipped unless --force. Only one variant runs at a time.

`table` reads WORK/runs/<variant>/manifest.json (test PRAUC: bootstrap mean ± std, 10 × 80 % of the test
patients; validation PRAUC on the full split) and WORK/times/*.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import leader_command, machine, measure, tail  # noqa: E402

HERE = Path(__file__).resolve().parent

# (variant, LEADER_TEACHER__* overrides, what it tests); "default" is the shipped recipe
VARIANTS: list[tuple[str, dict[str, str], str]] = [
    (
        "default",
        {},
        "defaults: log-odds bias, standardised features, linear probe, 128 tokens, no LoRA steps",
    ),
    ("no_bias", {"HEAD_BIAS": "none"}, "bias-free head (reference), rest default"),
    ("norm_none", {"FEATURE_NORM": "none"}, "raw pooled features"),
    ("norm_center", {"FEATURE_NORM": "center"}, "centred pooled features"),
    ("no_probe", {"LINEAR_PROBE": "skip"}, "no linear probe (head stays at its initialisation)"),
    ("len256", {"MAX_LENGTH": "256"}, "prompts ≤ 256 tokens"),
    ("len512", {"MAX_LENGTH": "512"}, "prompts ≤ 512 tokens (backbone limit; the old default)"),
    ("lpft100", {"MAX_STEPS": "100", "EVAL_EVERY": "50"}, "probe, then 100 LoRA steps (batch 4 × 2)"),
    (
        "reference",
        {
            "HEAD_BIAS": "none",
            "FEATURE_NORM": "none",
            "LINEAR_PROBE": "skip",
            "HEAD_LR": "0.0002",
            "WARMUP_STEPS": "0",
            "LENGTH_BUCKETS": "false",
            "MAX_STEPS": "100",
            "EVAL_EVERY": "50",
        },
        "the old recipe: bias-free head, one lr 2e-4, no warm-up, no probe, 100 LoRA steps",
    ),
]
DESCRIPTIONS = {name: text for name, _, text in VARIANTS}


def loadavg() -> str:
    """The 1, 5 and 15 minute load averages from /proc/loadavg (other work on the machine)."""
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def _step(work: Path, step: str, cmd: list[str], env: dict | None = None, extra: dict | None = None) -> bool:
    (work / "logs").mkdir(parents=True, exist_ok=True)
    (work / "times").mkdir(parents=True, exist_ok=True)
    log = work / "logs" / f"{step}.log"
    before = loadavg()
    print(f"[{step}] {' '.join(cmd)}  (load {before})", flush=True)
    m = measure(cmd, log=log, cwd=work, env=env)
    record = {
        "wall_s": m.wall_s,
        "peak_rss_gib": round(m.peak_rss_gib, 3),
        "returncode": m.returncode,
        "cmd": " ".join(m.cmd),
        "loadavg_before": before,
        "loadavg_after": loadavg(),
        "machine": machine(),
    } | (extra or {})
    (work / "times" / f"{step}.json").write_text(json.dumps(record, indent=2) + "\n")
    print(
        f"[{step}] rc {m.returncode}, {m.wall_s:.1f} s, {m.peak_rss_gib:.2f} GiB, load {record['loadavg_after']}"
    )
    if not m.ok:
        print(tail(log), file=sys.stderr)
    return m.ok


def run(args: argparse.Namespace) -> int:
    work: Path = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    leader = leader_command()
    raw, data = work / "raw", work / "data"
    if args.force or not (raw / "_generator.json").is_file():
        cmd = [sys.executable, str(HERE / "generate.py"), "raw", "--layout", "mimic4"]
        if not _step(
            work, "generate", [*cmd, "--patients", str(args.patients), "--out", str(raw), "--seed", "7"]
        ):
            return 1
    (work / "leader.toml").write_text(
        f'[data]\nsource = "mimic4"\n\n[paths]\nartifact = "{data}"\n\n[hardware]\ndevice = "cpu"\n'
    )
    if args.force or not (data / "manifest.json").is_file():
        cmd = [*leader, "preprocess", "--source", "mimic4", "--raw", str(raw), "--out", str(data)]
        if not _step(work, "preprocess", cmd):
            return 1
    pop = work / "runs" / "popularity"
    if args.force or not (pop / "manifest.json").is_file():
        if not _step(
            work, "popularity", [*leader, "train", "student", "--model", "popularity", "--out", str(pop)]
        ):
            return 1
    names = args.only.split(",") if args.only else [n for n, _, _ in VARIANTS]
    overrides = {n: o for n, o, _ in VARIANTS}
    for name in names:
        out = work / "runs" / name
        if not args.force and (out / "manifest.json").is_file():
            continue
        env = dict(os.environ) | {f"LEADER_TEACHER__{k}": v for k, v in overrides[name].items()}
        env["LEADER_HARDWARE__THREADS"] = str(args.threads)
        extra = {"overrides": overrides[name], "threads": args.threads}
        if not _step(work, name, [*leader, "train", "teacher", "--out", str(out)], env=env, extra=extra):
            return 1
    return 0


def _prauc(m: dict, split: str = "test", group: str = "overall") -> tuple[float, float]:
    b = m["metrics"][split][group]["bootstrap"]["prauc"]
    return b["mean"], b["std"]


def table(work: Path) -> str:
    runs_dir, times_dir = work / "runs", work / "times"
    pop = json.loads((runs_dir / "popularity" / "manifest.json").read_text())
    pop_test = _prauc(pop)[0]
    rows = [
        f"Popularity baseline: test PRAUC {pop_test:.4f} ± {_prauc(pop)[1]:.4f}.\n",
        "| variant | what changes | test PRAUC | − popularity | val PRAUC | probe val PRAUC (sample) | LoRA steps "
        "| wall s | peak RSS GiB | load avg before → after |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for name, _, text in VARIANTS:
        mf = runs_dir / name / "manifest.json"
        tf = times_dir / f"{name}.json"
        if not mf.is_file() or not tf.is_file():
            continue
        m, t = json.loads(mf.read_text()), json.loads(tf.read_text())
        mean, std = _prauc(m)
        val = m["metrics"]["val"]["overall"]["bootstrap"]["prauc"]["mean"]
        lp = m.get("recipe", {}).get("linear_probe", {}).get("val_prauc")
        rows.append(
            f"| `{name}` | {text} | {mean:.4f} ± {std:.4f} | {mean - pop_test:+.4f} | {val:.4f} | "
            f"{'—' if lp is None else f'{lp:.4f}'} | {m['training']['steps']} | {t['wall_s']:.0f} | "
            f"{t['peak_rss_gib']:.2f} | {t['loadavg_before']} → {t['loadavg_after']} |"
        )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="generate, preprocess, popularity, then every teacher variant")
    r.add_argument("--work", type=Path, default=HERE / "out" / "teacher")
    r.add_argument("--patients", type=int, default=3250, help="generated; preprocess keeps about 64 %%")
    r.add_argument("--threads", type=int, default=2, help="torch threads of each teacher run")
    r.add_argument("--only", default=None, help="comma-separated variants, in that order")
    r.add_argument("--force", action="store_true", help="redo steps whose output exists")
    t = sub.add_parser("table", help="markdown table from WORK/runs/*/manifest.json and WORK/times")
    t.add_argument("--work", type=Path, default=HERE / "out" / "teacher")
    args = ap.parse_args(argv)
    if args.command == "run":
        return run(args)
    print(table(args.work.resolve()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
