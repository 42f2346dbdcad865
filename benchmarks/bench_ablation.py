"""Model quality on synthetic data: baselines, student, teacher and the distillation ablation (issues 3 and 5).

Issue 3 ("Done when"): on a synthetic dataset of ≥ 20,000 patients from `generate.py`, the student beats the
popularity and previous-visit baselines on PRAUC and Jaccard, overall and for single-visit patients.
Issue 5 ("Done when"): the ablation table — both baselines, student without teacher, distilled with KD only,
alignment only, both terms, and the teacher — overall / single-visit / multi-visit, PRAUC, Jaccard, F1, DDI
rate, #drugs, mean ± std over the bootstrap (leadercli/metrics.py `evaluate_groups`; the test split).

Two sub-commands:

    python benchmarks/bench_ablation.py run --work /tmp/abl          # generate, preprocess, train every row
    python benchmarks/bench_ablation.py table --work /tmp/abl        # markdown tables from the manifests

`run` does, in WORK (every `leader` call runs with WORK as its working folder, so WORK/leader.toml applies):
generate.py raw (MIMIC-IV layout) → `leader preprocess` → WORK/leader.toml (artifact path and the student /
teacher settings given on the command line) → `leader train student --model popularity|previous`, `leader
train student`, `leader train teacher`, `leader distill` (both terms), `--no-align` (KD only), `--no-kd`
(alignment only) and, with --standardize, `leader distill` with `distill.standardize = true`. Each step's
wall time and peak RSS go to WORK/times/<step>.json and its output to WORK/logs/<step>.log. A step whose output
(raw set, artifact manifest, run manifest) already exists is skipped unless --force, so an interrupted `run`
continues where it stopped. `--only a,b` runs only the named steps, in that order; a distill step with the KD
term waits until WORK/runs/teacher/manifest.json exists, so two `run` processes can share the work
(e.g. `--only teacher,kd_only` beside `--only popularity,previous,student,align_only,kd_align`). Student-like
runs get `LEADER_HARDWARE__THREADS=--student-threads` (1: on a loaded 2-core machine one thread trained
faster than two), the teacher `--teacher-threads`. The defaults are the settings of the table in
benchmarks/README.md (CPU-sized: 10 student epochs, a 150-step teacher on 128-token prompts).

`table` reads WORK/runs/<name>/manifest.json: metrics.test.<group>.bootstrap.<metric>.{mean,std} (10 rounds
of 80 % of the test patients, seeded) and prints one markdown table per group plus a table of run times.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import leader_command, machine, measure, tail  # noqa: E402

HERE = Path(__file__).resolve().parent

# (step name, leader arguments after `leader`, label in the table); the run folder is WORK/runs/<name>
RUNS: list[tuple[str, list[str], str]] = [
    ("popularity", ["train", "student", "--model", "popularity"], "popularity baseline"),
    ("previous", ["train", "student", "--model", "previous"], "previous-visit baseline"),
    ("student", ["train", "student"], "student, no teacher"),
    ("teacher", ["train", "teacher"], "teacher (MiniLM-L6 + LoRA)"),
    ("kd_only", ["distill", "--no-align"], "distilled, KD only"),
    ("align_only", ["distill", "--no-kd"], "distilled, alignment only"),
    ("kd_align", ["distill"], "distilled, KD + alignment"),
    ("kd_align_std", ["distill"], "distilled, KD + alignment, standardised features"),
]
LABELS = {name: label for name, _, label in RUNS}
GROUPS = (("overall", "overall"), ("single", "single-visit"), ("multi", "multi-visit"))
COLUMNS = (
    ("prauc", "PRAUC"),
    ("jaccard", "Jaccard"),
    ("f1", "F1"),
    ("ddi_rate", "DDI rate"),
    ("avg_drugs", "#drugs"),
)


# -- run ----------------------------------------------------------------------------------------------


def write_config(work: Path, args: argparse.Namespace) -> Path:
    """WORK/leader.toml: the artifact, CPU, and the student / teacher settings shared by every row."""
    lines = [
        "[data]",
        'source = "mimic4"',
        "",
        "[paths]",
        f'artifact = "{work / "data"}"',
        "",
        "[hardware]",
        'device = "cpu"',
        "",
        "[student]",
        f"batch_size = {args.student_batch}",
        f"epochs = {args.student_epochs}",
        f"patience = {args.student_patience}",
        "",
        "[teacher]",
        f"batch_size = {args.teacher_batch}",
        f"max_length = {args.teacher_max_length}",
        f"max_steps = {args.teacher_max_steps}",
        f"eval_every = {args.teacher_eval_every or args.teacher_max_steps}",
        f"eval_batch_size = {args.teacher_eval_batch}",
        "",
    ]
    path = work / "leader.toml"
    path.write_text("\n".join(lines))
    return path


def _record(work: Path, step: str, m, extra: dict | None = None) -> None:
    """WORK/times/<step>.json (one file per step, so that two `run` processes can work side by side)."""
    path = work / "times" / f"{step}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "wall_s": m.wall_s,
        "peak_rss_gib": round(m.peak_rss_gib, 3),
        "returncode": m.returncode,
        "cmd": " ".join(m.cmd),
        "machine": machine(),
    } | (extra or {})
    path.write_text(json.dumps(record, indent=2) + "\n")


def read_times(work: Path) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in sorted((work / "times").glob("*.json"))}


def _step(work: Path, step: str, cmd: list[str], env: dict | None = None, extra: dict | None = None) -> bool:
    (work / "logs").mkdir(parents=True, exist_ok=True)
    log = work / "logs" / f"{step}.log"
    print(f"[{step}] {' '.join(cmd)}  ({extra or ''})", flush=True)
    m = measure(cmd, log=log, cwd=work, env=env)
    _record(work, step, m, extra)
    print(f"[{step}] rc {m.returncode}, {m.wall_s:.1f} s, {m.peak_rss_gib:.2f} GiB", flush=True)
    if not m.ok:
        print(tail(log), file=sys.stderr)
    return m.ok


def run(args: argparse.Namespace) -> int:
    work: Path = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    only = set(args.only.split(",")) if args.only else None
    leader = leader_command()

    def wanted(step: str) -> bool:
        return only is None or step in only

    raw, data = work / "raw", work / "data"
    if wanted("generate") and (args.force or not (raw / "_generator.json").is_file()):
        cmd = [sys.executable, str(HERE / "generate.py"), "raw", "--layout", "mimic4"]
        cmd += ["--patients", str(args.patients), "--out", str(raw), "--seed", str(args.seed)]
        if not _step(work, "generate", cmd):
            return 1
    write_config(work, args)
    if wanted("preprocess") and (args.force or not (data / "manifest.json").is_file()):
        cmd = [*leader, "preprocess", "--source", "mimic4", "--raw", str(raw), "--out", str(data)]
        if not _step(work, "preprocess", cmd):
            return 1
    steps = [r for r in RUNS if r[0] != "kd_align_std" or args.standardize]
    if only is not None:  # the order given on the command line
        names = args.only.split(",")
        steps = sorted((r for r in steps if r[0] in only), key=lambda r: names.index(r[0]))
    teacher_manifest = work / "runs" / "teacher" / "manifest.json"
    for name, leader_args, _ in steps:
        out = work / "runs" / name
        if not args.force and (out / "manifest.json").is_file():
            continue
        kd = leader_args[0] == "distill" and "--no-kd" not in leader_args
        waited = time.perf_counter()
        while kd and not teacher_manifest.is_file():  # another `run` process may be training the teacher
            time.sleep(15)
        threads = args.teacher_threads if name == "teacher" else args.student_threads
        env = dict(os.environ, LEADER_HARDWARE__THREADS=str(threads))
        if name == "kd_align_std":
            env["LEADER_DISTILL__STANDARDIZE"] = "true"
        extra = {"threads": threads, "waited_for_teacher_s": round(time.perf_counter() - waited, 1)}
        if not _step(work, name, [*leader, *leader_args, "--out", str(out)], env=env, extra=extra):
            return 1
    return 0


# -- table --------------------------------------------------------------------------------------------


def _cell(boot: dict | None, metric: str) -> str:
    if not boot:
        return "—"
    b = boot[metric]
    digits = 2 if metric == "avg_drugs" else 4
    return f"{b['mean']:.{digits}f} ± {b['std']:.{digits}f}"


def load_runs(work: Path, names: list[str] | None = None) -> dict[str, dict]:
    """{name: manifest} for the run folders under WORK/runs that hold a manifest, in table order."""
    root = work / "runs"
    order = [n for n, _, _ in RUNS]
    found = sorted(
        (p.parent.name for p in root.glob("*/manifest.json")),
        key=lambda n: (order.index(n) if n in order else len(order), n),
    )
    if names:
        found = [n for n in found if n in names]
    return {n: json.loads((root / n / "manifest.json").read_text()) for n in found}


def tables(work: Path, names: list[str] | None = None) -> str:
    manifests = load_runs(work, names)
    if not manifests:
        return f"no run manifest under {work / 'runs'}"
    parts = []
    for group, title in GROUPS:
        ns = {m["metrics"]["test"][group]["n"] for m in manifests.values()}
        n_txt = "/".join(str(n) for n in sorted(ns))
        parts.append(f"**Test, {title}** ({n_txt} patients; bootstrap mean ± std of the run manifests)\n")
        head = "| model | " + " | ".join(t for _, t in COLUMNS) + " |"
        parts.append(head)
        parts.append("|---|" + "---:|" * len(COLUMNS))
        for name, m in manifests.items():
            boot = m["metrics"]["test"][group]["bootstrap"]
            cells = " | ".join(_cell(boot, k) for k, _ in COLUMNS)
            parts.append(f"| {LABELS.get(name, name)} (`{name}`) | {cells} |")
        parts.append("")
    parts.append(run_table(work, manifests))
    return "\n".join(parts)


def run_table(work: Path, manifests: dict[str, dict]) -> str:
    """Wall time, peak RSS, epochs / steps, threshold and parameters of every step."""
    times = read_times(work)
    rows = [
        "| step | wall s | peak RSS GiB | training | threshold | parameters |",
        "|---|---:|---:|---|---:|---:|",
    ]
    for step in ("generate", "preprocess", *[n for n, _, _ in RUNS]):
        t = times.get(step)
        m = manifests.get(step, {})
        if t is None and not m:
            continue
        training = ""
        if "best_epoch" in m:
            training = f"best epoch {m['best_epoch']} of {m.get('epochs_run', '?')}"
        elif "training" in m:
            tr = m["training"]
            tok = tr.get("tokens_per_s")
            training = f"{tr.get('steps', 0)} LoRA steps, best step {tr.get('best_step')}" + (
                f", {tok:,.0f} tok/s" if tok else " (linear probe on frozen features)"
            )
        thr = m.get("threshold", {}).get("value") if isinstance(m.get("threshold"), dict) else None
        params = m.get("parameters", {}).get("trainable")
        rows.append(
            f"| {step} | {t['wall_s']:,.1f} | {t['peak_rss_gib']:.2f} | {training} | "
            f"{'' if thr is None else f'{thr:.2f}'} | {'' if params is None else f'{params:,}'} |"
            if t
            else f"| {step} | | | {training} | {'' if thr is None else f'{thr:.2f}'} | |"
        )
    return "\n".join(rows)


def seeds_table(work: Path, rows: str) -> str:
    """Test PRAUC mean ± std (sample std) over seeds, overall / single / multi-visit, from run manifests.

    rows: "label=run_a,run_b,run_c;label2=…" (one run folder under WORK/runs per seed)."""
    import statistics

    out = [
        "| model | overall | single-visit | multi-visit | per seed (overall) |",
        "|---|---:|---:|---:|---|",
    ]
    for part in filter(None, rows.split(";")):
        label, names = part.split("=", 1)
        ms = [json.loads((work / "runs" / n / "manifest.json").read_text()) for n in names.split(",")]
        cells = []
        for group in ("overall", "single", "multi"):
            v = [m["metrics"]["test"][group]["point"]["prauc"] for m in ms]
            sd = statistics.stdev(v) if len(v) > 1 else 0.0
            cells.append(f"{statistics.mean(v):.4f} ± {sd:.4f}")
        per = ", ".join(f"{m['metrics']['test']['overall']['point']['prauc']:.4f}" for m in ms)
        out.append(f"| {label} | {' | '.join(cells)} | {per} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="generate, preprocess and train every row")
    r.add_argument("--work", type=Path, default=HERE / "out" / "ablation")
    r.add_argument("--patients", type=int, default=34_000, help="generated; preprocess keeps about 62 %%")
    r.add_argument("--seed", type=int, default=7)
    r.add_argument("--student-batch", type=int, default=64)
    r.add_argument("--student-epochs", type=int, default=10)
    r.add_argument("--student-patience", type=int, default=5)
    r.add_argument("--teacher-batch", type=int, default=16)
    r.add_argument("--teacher-max-length", type=int, default=128)
    r.add_argument("--teacher-max-steps", type=int, default=150)
    r.add_argument("--teacher-eval-every", type=int, default=None, help="default: once, at the end")
    r.add_argument("--teacher-eval-batch", type=int, default=64)
    r.add_argument("--student-threads", type=int, default=1, help="torch threads of each student-like run")
    r.add_argument("--teacher-threads", type=int, default=2, help="torch threads of the teacher run")
    r.add_argument("--standardize", action="store_true", help="also the standardised-feature distill row")
    r.add_argument("--only", default=None, help="comma-separated steps (generate, preprocess, run names)")
    r.add_argument("--force", action="store_true", help="redo steps whose output exists")
    t = sub.add_parser("table", help="markdown tables from WORK/runs/*/manifest.json")
    t.add_argument("--work", type=Path, default=HERE / "out" / "ablation")
    t.add_argument("--runs", default=None, help="comma-separated run names (default: all found)")
    sd = sub.add_parser("seeds", help="test PRAUC mean ± std over seeds (one run per seed)")
    sd.add_argument("--work", type=Path, default=HERE / "out" / "ablation")
    sd.add_argument("--rows", required=True, help='"label=run_s1,run_s2,run_s3;label2=…"')
    args = ap.parse_args(argv)
    if args.command == "run":
        return run(args)
    if args.command == "seeds":
        print(seeds_table(args.work.resolve(), args.rows))
        return 0
    print(tables(args.work.resolve(), args.runs.split(",") if args.runs else None))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
