"""Benchmark `leader predict` on synthetic visits files of growing size (issue 3, "Speed").

Target on the 2-core reference machine: at least 10,000 patients/s end to end (read, encode, infer, rank,
write) on 1,000,000 patients, with peak RSS under 3 GiB and about constant from 100k to 1M patients.

How to run (the first line is CPU-sized; it needs a trained run folder, e.g. from the bundled demo:
`leader preprocess && leader train student`):

    python benchmarks/bench_predict.py --model runs/student --sizes 10000
    python benchmarks/bench_predict.py --model runs/student                  # 100k and 1M patients
    python benchmarks/bench_predict.py --model runs/student --visits-from data/mimic4/visits.parquet --json out.json

Each visits file is `generate.py visits` output (patients resampled from --visits-from, by default the
artifact the run was trained on) in WORK/visits-N.parquet, reused with --reuse. `leader predict FILE -o
WORK/recs-N.csv --model RUN` runs as a subprocess; its output goes to WORK/predict-N.log.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import polars as pl  # noqa: E402
from common import leader_command, machine, markdown_table, measure, tail, write_json  # noqa: E402
from generate import generate_visits  # noqa: E402

HERE = Path(__file__).resolve().parent
TARGET_PATIENTS_PER_S = 10_000
TARGET_RSS_GIB = 3.0


def _default_source(model: Path) -> Path:
    manifest = model / "manifest.json"
    if manifest.is_file():
        path = json.loads(manifest.read_text()).get("artifact", {}).get("path")
        if path:
            return Path(path) / "visits.parquet"
    raise SystemExit(f"error: {manifest} names no artifact; pass --visits-from PATH/visits.parquet")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, default=Path("runs/student"), help="trained run folder")
    ap.add_argument("--visits-from", type=Path, default=None, help="visits.parquet to resample patients from")
    ap.add_argument("--sizes", default="100000,1000000", help="comma-separated patient counts")
    ap.add_argument("--work", type=Path, default=HERE / "out" / "predict")
    ap.add_argument("--reuse", action="store_true", help="reuse WORK/visits-N.parquet files")
    ap.add_argument("--top-k", type=int, default=None)
    ap.add_argument("--format", choices=["csv", "parquet"], default="csv", help="output format")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, default=None, help="also write the results as JSON here")
    args = ap.parse_args(argv)

    if not (args.model / "model.safetensors").is_file() and not (args.model / "manifest.json").is_file():
        raise SystemExit(f"error: {args.model} is not a run folder; train one first (leader train student)")
    source = args.visits_from or _default_source(args.model)
    sizes = [int(s.replace("_", "")) for s in args.sizes.split(",") if s.strip()]
    args.work.mkdir(parents=True, exist_ok=True)
    leader = leader_command()
    results: dict = {"machine": machine(), "model": str(args.model), "source": str(source), "runs": []}
    rows = []
    for n in sizes:
        visits = args.work / f"visits-{n}.parquet"
        if not (args.reuse and visits.is_file()):
            generate_visits(source, n, visits, seed=args.seed)
        visit_rows = pl.scan_parquet(visits).select(pl.len()).collect().item()
        out = args.work / f"recs-{n}.{args.format}"
        out.unlink(missing_ok=True)
        cmd = [*leader, "predict", str(visits), "-o", str(out), "--model", str(args.model)]
        cmd += ["--top-k", str(args.top_k)] if args.top_k else []
        m = measure(cmd, log=args.work / f"predict-{n}.log")
        out_rows = None
        if m.ok and out.is_file():
            scan = pl.scan_csv(out) if args.format == "csv" else pl.scan_parquet(out)
            out_rows = scan.select(pl.len()).collect().item()
        else:
            print(f"error: leader predict failed on {n:,} patients (exit {m.returncode}):\n{tail(m.log)}")
        m.extra = {"patients": n, "visit_rows": visit_rows, "input_mb": visits.stat().st_size / 1e6}
        m.extra["output_rows"] = out_rows
        results["runs"].append(m.to_json())
        rows.append(
            [
                n,
                visit_rows,
                round(visits.stat().st_size / 1e6, 1),
                m.wall_s,
                round(n / m.wall_s) if m.ok else "failed",
                round(m.peak_rss_gib, 2),
                out_rows if out_rows is not None else "-",
            ]
        )
        out.unlink(missing_ok=True)  # the recommendation files are large and not needed afterwards
    print(f"model {args.model}, patients resampled from {source}")
    print(
        markdown_table(
            ["patients", "visit rows", "input MB", "wall s", "patients/s", "peak RSS GiB", "output rows"],
            rows,
        )
    )
    ok = [r for r in results["runs"] if r["returncode"] == 0]
    if ok:
        big = max(ok, key=lambda r: r["extra"]["patients"])
        speed = big["extra"]["patients"] / big["wall_s"]
        met = speed >= TARGET_PATIENTS_PER_S and big["peak_rss_gib"] < TARGET_RSS_GIB
        print(
            f"target: ≥ {TARGET_PATIENTS_PER_S:,} patients/s and < {TARGET_RSS_GIB:.0f} GiB at "
            f"{big['extra']['patients']:,} patients → {'met' if met else 'NOT met'}"
        )
    write_json(args.json, results)
    return 0 if len(ok) == len(sizes) else 1


if __name__ == "__main__":
    sys.exit(main())
