"""`leader preprocess` against its floor, a polars scan of the same raw files, in one run (issue 14, item 1).

How to run (the first line is CPU-sized, about a minute; the raw sets are generated once into WORK and reused):

    python benchmarks/bench_preprocess_scan.py --patients 20000
    python benchmarks/bench_preprocess_scan.py --patients 300000 --base /tmp/perf-base   # + the previous commit
    python benchmarks/bench_preprocess_scan.py --patients 75000,150000,300000,600000      # the scaling table

For each size, interleaved and `--reps` times: the floor (a fresh Python process that scans the five raw tables
with `polars.scan_csv(...).select(<the columns preprocess reads>).collect(engine="streaming")`, strings and
ids as preprocess types them), `leader preprocess` of this tree, and with `--base TREE` the same command run
from another checkout (e.g. `git worktree add /tmp/perf-base <commit>`), each under `/usr/bin/time`: wall
seconds, CPU seconds (user + sys), peak RSS. The two artifacts are compared byte for byte (visits.parquet,
patients.parquet, ddi.parquet, vocab.json). The 1-minute load average is printed before and after every
command: on a shared machine compare ratios within one run, not across runs.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import markdown_table, timed, write_json  # noqa: E402

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
ROLES = ("patients", "admissions", "diagnoses", "procedures", "prescriptions")
ARTIFACT_FILES = ("visits.parquet", "patients.parquet", "ddi.parquet", "vocab.json")

# the floor: a fresh process that scans the five tables, reading the columns (and dtypes) preprocess reads
FLOOR = r"""
import sys
import polars as pl
from pathlib import Path
from leadercli.data import tables
from leadercli.data.registry import get_layout

layout = get_layout(sys.argv[1])
files = layout.locate(Path(sys.argv[2]))
for role in sys.argv[3:]:
    spec = layout.table_spec(role)
    names = tables.match_columns(files[role], tables.read_header(files[role]), spec)
    cols = {names[c.name]: tables.DTYPES[c.kind] for c in spec.columns if names[c.name] is not None}
    lf = pl.scan_csv(files[role], infer_schema=False, schema_overrides=cols, raise_if_empty=False)
    lf.select(list(cols)).collect(engine="streaming")
"""


def digest(artifact: Path) -> dict[str, str]:
    return {f: hashlib.sha256((artifact / f).read_bytes()).hexdigest() for f in ARTIFACT_FILES}


def ensure_raw(work: Path, layout: str, patients: int, seed: int) -> Path:
    raw = work / f"raw-{layout}-{patients}"
    meta = raw / "_generator.json"
    if meta.is_file():
        m = json.loads(meta.read_text())
        if m.get("patients") == patients and m.get("seed") == seed and m.get("gzip"):
            return raw
    shutil.rmtree(raw, ignore_errors=True)
    cmd = [sys.executable, str(HERE / "generate.py"), "raw", "--layout", layout, "--patients", str(patients)]
    subprocess.run([*cmd, "--out", str(raw), "--seed", str(seed), "--gzip"], check=True, capture_output=True)
    return raw


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--layout", choices=["mimic3", "mimic4"], default="mimic4")
    ap.add_argument("--patients", default="20000", help="comma-separated patient counts (synthetic, gzip)")
    ap.add_argument("--raw", type=Path, default=None, help="an existing raw folder instead of generating")
    ap.add_argument("--base", type=Path, default=None, help="another checkout to run side by side")
    ap.add_argument("--reps", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", type=Path, default=HERE / "out" / "preprocess-scan")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    args.work = args.work.resolve()
    args.work.mkdir(parents=True, exist_ok=True)
    py = sys.executable
    trees = {"this tree": REPO, **({"base": args.base.resolve()} if args.base else {})}
    results: dict = {"runs": [], "machine": {"cores": os.cpu_count()}}
    rows = []
    sizes = [None] if args.raw else [int(s.replace("_", "")) for s in args.patients.split(",")]
    for n in sizes:
        raw = args.raw or ensure_raw(args.work, args.layout, n, args.seed)
        label = f"{n:,} patients" if n else str(raw)
        digests = {}
        for rep in range(args.reps):
            env = {**os.environ, "PYTHONPATH": str(REPO)}
            floor = timed([py, "-c", FLOOR, args.layout, str(raw), *ROLES], env, args.work / "floor.log")
            runs = {"floor": floor}
            for name, tree in trees.items():
                out = args.work / f"artifact-{name.replace(' ', '-')}"
                shutil.rmtree(out, ignore_errors=True)
                cmd = [py, "-m", "leadercli", "preprocess", "-q", "--source", args.layout]
                cmd += ["--raw", str(raw), "--out", str(out)]
                env = {**os.environ, "PYTHONPATH": str(tree)}
                runs[name] = timed(cmd, env, args.work / f"preprocess-{name.replace(' ', '-')}.log", tree)
                if runs[name]["rc"] == 0:
                    digests[name] = digest(out)
                shutil.rmtree(out, ignore_errors=True)
            for name, r in runs.items():
                ratio = r["wall_s"] / floor["wall_s"] if floor["wall_s"] else float("nan")
                rows.append(
                    [
                        label,
                        rep + 1,
                        name if r["rc"] == 0 else f"{name} (FAILED)",
                        r["wall_s"],
                        r["cpu_s"],
                        r["peak_rss_gib"],
                        f"{ratio:.2f}",
                        f"{r['cpu_s'] / floor['cpu_s']:.2f}",
                        f"{r['load_before']:.1f} → {r['load_after']:.1f}",
                    ]
                )
            results["runs"].append({"raw": str(raw), "patients": n, "rep": rep + 1, **runs})
        if len(digests) == 2:
            same = digests["this tree"] == digests["base"]
            results.setdefault("identical", {})[label] = same
            print(f"{label}: artifacts of this tree and base byte-identical: {same}")
    print(
        markdown_table(
            [
                "input",
                "rep",
                "command",
                "wall s",
                "CPU s",
                "peak RSS GiB",
                "wall / floor",
                "CPU / floor",
                "load (1 min)",
            ],
            rows,
        )
    )
    write_json(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
