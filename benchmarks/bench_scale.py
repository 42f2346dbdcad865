"""Issue 21 item 3: a MIMIC-IV-sized synthetic set through the whole tool on this machine, stage by stage.

Stages, each one `leader` command as a user runs it (the generator is not part of the tool, but its time is
recorded too):

1. `generate`: `generate.py raw --layout mimic4 --patients N` (the raw hosp/ CSVs; N = 300,000 is MIMIC-IV's
   size, about 430k admissions);
2. `preprocess`: `leader preprocess --source mimic4` → the artifact (cohort, split, samples);
3. `train`: `leader train student` to early stop (validation PRAUC; `--epochs` and `--patience` are the budget:
   `student.epochs` is a ceiling, training stops earlier when validation stops improving);
4. `predict`: `leader predict` on the artifact's visits.parquet — every patient of the cohort, as a hospital
   scoring its whole population (CSV out);
5. `report`: `leader report` on the run (test split, bootstrap intervals, the popularity floor, timings).

Each stage: wall seconds, CPU seconds (user + system), peak RSS (GNU time), the 1-minute load before and after.
A stage whose output already exists is kept (rerun to resume); `--force` redoes everything.

How to run (the first line is CPU-sized, about two minutes; the second is the issue's measurement, about an hour
on 2 idle cores):

    python benchmarks/bench_scale.py --patients 3000 --work /tmp/scale3k --epochs 2
    python benchmarks/bench_scale.py --patients 300000 --work /work/bench/scale300k --json benchmarks/results/scale300k.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import leader_command, machine, markdown_table, timed, write_json  # noqa: E402

STAGES = ("generate", "preprocess", "train", "predict", "report")


def commands(work: Path, args) -> dict[str, tuple[list[str], Path]]:
    """stage → (argv, the file whose presence means the stage is done)."""
    leader = leader_command()
    raw, data, run = work / "raw", work / "data", work / "runs" / "student"
    recs, report = work / "recs.csv", work / "report"
    cfg = ["--config", str(work / "leader.toml")]
    gen = [
        sys.executable,
        str(HERE / "generate.py"),
        "raw",
        "--layout",
        "mimic4",
        "--patients",
        str(args.patients),
    ]
    return {
        "generate": ([*gen, "--out", str(raw), "--seed", str(args.seed)], raw / "_generator.json"),
        "preprocess": (
            [*leader, "preprocess", "--source", "mimic4", "--raw", str(raw), "--out", str(data), *cfg, "-q"],
            data / "manifest.json",
        ),
        "train": ([*leader, "train", "student", *cfg, "--out", str(run), "-q"], run / "manifest.json"),
        "predict": ([*leader, "predict", str(data / "visits.parquet"), "-o", str(recs), "--model", str(run), "-q"], recs),
        "report": ([*leader, "report", str(run), *cfg, "-o", str(report), "-q"], report / "metrics.json"),
    }  # fmt: skip


def write_config(work: Path, args) -> None:
    """The run's settings: the artifact, the student's budget (default settings otherwise)."""
    toml = f'[paths]\nartifact = "{work / "data"}"\n[hardware]\ndevice = "cpu"\n'
    student = [f"{k} = {v}" for k, v in (("epochs", args.epochs), ("patience", args.patience)) if v]
    student += [f"batch_size = {args.batch_size}"] if args.batch_size else []
    if student:
        toml += "[student]\n" + "\n".join(student) + "\n"
    (work / "leader.toml").write_text(toml)


def sizes(work: Path) -> dict:
    """Cohort and run facts for the table: patients, admissions, splits, epochs run, test PRAUC."""
    out: dict = {}
    man = work / "data" / "manifest.json"
    if man.is_file():
        m = json.loads(man.read_text())
        keys = (
            "patients",
            "visits",
            "single_visit_patients",
            "multi_visit_patients",
            "splits",
            "vocab_sizes",
        )
        out["artifact"] = {k: m.get(k) for k in keys}
    run = work / "runs" / "student" / "manifest.json"
    if run.is_file():
        m = json.loads(run.read_text())
        test = {g: v["point"]["prauc"] for g, v in m["metrics"]["test"].items()}
        out["run"] = {
            "best_epoch": m.get("best_epoch"),
            "epochs_run": m.get("epochs_run"),
            "test_prauc": test,
        }
        out["run"] |= {"training_s": m["training"]["seconds"], "distributed": m.get("distributed")}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--patients", type=int, default=300_000, help="raw patients generated")
    ap.add_argument("--work", type=Path, default=HERE / "out" / "scale")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--epochs", type=int, default=None, help="student.epochs (a ceiling; default: settings')")
    ap.add_argument("--patience", type=int, default=None, help="student.patience (default: settings')")
    ap.add_argument("--batch-size", type=int, default=None, help="student.batch_size (default: settings')")
    ap.add_argument("--threads", type=int, default=None, help="hardware.threads (default: the thread policy)")
    ap.add_argument("--only", default=None, help=f"comma list of {', '.join(STAGES)}")
    ap.add_argument("--force", action="store_true", help="redo stages whose output exists")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    work = args.work.resolve()
    (work / "logs").mkdir(parents=True, exist_ok=True)
    write_config(work, args)
    env = dict(os.environ)
    if args.threads:
        env["LEADER_HARDWARE__THREADS"] = str(args.threads)
    only = set(args.only.split(",")) if args.only else set(STAGES)
    out_json = work / "scale.json"
    results = json.loads(out_json.read_text())["stages"] if out_json.is_file() and not args.force else {}
    for stage, (cmd, done) in commands(work, args).items():
        if stage not in only or (done.exists() and not args.force and stage in results):
            continue
        if args.force and stage == "generate" and (work / "raw").exists():
            shutil.rmtree(work / "raw")
        print(f"{stage}: {' '.join(cmd[-6:])}", file=sys.stderr, flush=True)
        r = timed(cmd, env, work / "logs" / f"{stage}.log")
        results[stage] = r
        out_json.write_text(json.dumps({"stages": results}, indent=2) + "\n")
        if r["rc"] != 0:
            print(
                f"error: {stage} failed (exit {r['rc']}); see {work / 'logs' / f'{stage}.log'}",
                file=sys.stderr,
            )
            return 1
    payload = {"machine": machine(), "patients": args.patients, "stages": results, **sizes(work)}
    out_json.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    write_json(args.json, payload)
    rows = [
        [s, r["wall_s"], r["cpu_s"], r["peak_rss_gib"], f"{r['load_before']:.1f} → {r['load_after']:.1f}"]
        for s, r in results.items()
    ]
    print(markdown_table(["stage", "wall s", "CPU s", "peak RSS GiB", "load (1 min)"], rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
