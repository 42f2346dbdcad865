"""`leader predict` of this tree side by side with another checkout, and their floor, in one run (issue 14).

How to run (needs a trained student run; the first line is CPU-sized):

    python benchmarks/bench_predict_ab.py --model RUN --base /tmp/perf-base --sizes 20000
    python benchmarks/bench_predict_ab.py --model RUN --base /tmp/perf-base --sizes 25000,50000,100000,200000 --reps 2

The base is any checkout, e.g. `git worktree add /tmp/perf-base <previous commit>`; both run as
`python -m leadercli predict VISITS -o OUT.csv --model RUN` with PYTHONPATH pointing at their tree, interleaved
(base, this tree, floor) `--reps` times, each under `/usr/bin/time`: wall, CPU seconds (user + sys), peak RSS.
The visits files are `generate.py visits` resamples of the run's artifact (WORK/visits-N.parquet, reused).
The floor is a fresh Python process that reads the same input with polars and reads + writes an output of the
same rows (this tree's recommendations CSV, `scan_csv → sink_csv`): what any tool pays to move the data.
The outputs are compared: same rows, subjects, ranks and drugs, largest score difference (must be ≤ 1e-5).
The 1-minute load average is printed before and after every command.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import polars as pl  # noqa: E402
from common import markdown_table, timed, write_json  # noqa: E402
from generate import generate_visits  # noqa: E402

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

FLOOR = r"""
import sys
import polars as pl
pl.read_parquet(sys.argv[1])
pl.scan_csv(sys.argv[2]).sink_csv(sys.argv[3])
"""


def compare(a: Path, b: Path) -> dict:
    x, y = pl.read_csv(a), pl.read_csv(b)
    # since 2026-12-01 predict also writes the selected drugs ranked below --top-k: compare the top-k rows
    k = min(int(x["rank"].max()), int(y["rank"].max()))
    x, y = x.filter(pl.col("rank") <= k), y.filter(pl.col("rank") <= k)
    keys = ["subject_id", "hadm_id", "rank", "atc3"]
    same = x.height == y.height and x.select(keys).equals(y.select(keys))
    diff = float((x["score"] - y["score"]).abs().max()) if x.height == y.height else float("nan")
    return {"same_rankings": bool(same), "max_score_diff": diff}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, required=True, help="trained student run folder")
    ap.add_argument("--base", type=Path, required=True, help="the other checkout (e.g. the previous commit)")
    ap.add_argument("--sizes", default="20000", help="comma-separated patient counts")
    ap.add_argument("--visits-from", type=Path, default=None, help="visits.parquet to resample from")
    ap.add_argument("--reps", type=int, default=1)
    ap.add_argument("--work", type=Path, default=HERE / "out" / "predict-ab")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    args.work, args.model = args.work.resolve(), args.model.resolve()
    args.work.mkdir(parents=True, exist_ok=True)
    source = args.visits_from
    if source is None:
        manifest = json.loads((args.model / "manifest.json").read_text())
        source = Path(manifest["artifact"]["path"]) / "visits.parquet"
    py = sys.executable
    trees = {"base": args.base.resolve(), "this tree": REPO}
    results: dict = {"model": str(args.model), "source": str(source), "runs": []}
    rows = []
    for n in [int(s.replace("_", "")) for s in args.sizes.split(",")]:
        visits = args.work / f"visits-{n}.parquet"
        if not visits.is_file():
            generate_visits(source, n, visits, seed=0)
        for rep in range(args.reps):
            runs: dict = {}
            outs = {}
            for name, tree in trees.items():
                out = args.work / f"recs-{name.replace(' ', '-')}-{n}.csv"
                out.unlink(missing_ok=True)
                cmd = [
                    py,
                    "-m",
                    "leadercli",
                    "predict",
                    str(visits),
                    "-o",
                    str(out),
                    "--model",
                    str(args.model),
                ]
                env = {**os.environ, "PYTHONPATH": str(tree)}
                log = args.work / f"predict-{name.replace(' ', '-')}.log"
                runs[name] = timed([*cmd, "-q"], env, log, tree)
                outs[name] = out
            copy = args.work / "floor-copy.csv"
            runs["floor"] = timed(
                [py, "-c", FLOOR, str(visits), str(outs["this tree"]), str(copy)],
                dict(os.environ),
                args.work / "floor.log",
            )
            copy.unlink(missing_ok=True)
            check = (
                compare(outs["base"], outs["this tree"]) if all(r["rc"] == 0 for r in runs.values()) else {}
            )
            base_cpu = runs["base"]["cpu_s"]
            for name, r in runs.items():
                rows.append(
                    [
                        f"{n:,}",
                        rep + 1,
                        name if r["rc"] == 0 else f"{name} (FAILED)",
                        r["wall_s"],
                        r["cpu_s"],
                        round(r["cpu_s"] / n * 1e5, 2),
                        r["peak_rss_gib"],
                        f"{r['cpu_s'] / base_cpu:.2f}",
                        f"{r['load_before']:.1f} → {r['load_after']:.1f}",
                    ]
                )
            results["runs"].append({"patients": n, "rep": rep + 1, **runs, "check": check})
            if check:
                print(
                    f"{n:,} patients, rep {rep + 1}: same rankings {check['same_rankings']}, "
                    f"largest score difference {check['max_score_diff']:.2e}"
                )
            for out in outs.values():
                out.unlink(missing_ok=True)
    print(
        markdown_table(
            [
                "patients",
                "rep",
                "command",
                "wall s",
                "CPU s",
                "CPU s / 100k patients",
                "peak RSS GiB",
                "CPU / base",
                "load (1 min)",
            ],
            rows,
        )
    )
    write_json(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
