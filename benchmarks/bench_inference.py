"""Teacher vs student inference on the same samples (issue 4 "Speed"): patients/s, latency per patient, ratio.

It runs `leader report` (which times the model calls of every run on the artifact's test split with the same
device and batch size) and prints the efficiency rows as a markdown table.

    python benchmarks/bench_inference.py runs/teacher runs/distilled runs/student [--batch-size 32] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", type=Path)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, LEADER_REPORT__LATENCY_BATCH_SIZE=str(args.batch_size))
        cmd = [
            sys.executable,
            "-m",
            "leadercli",
            "report",
            *map(str, args.runs),
            "-o",
            tmp,
            "--format",
            "json",
        ]
        report = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout)
    rows = []
    for run in report["runs"]:
        e = run["efficiency"]
        rows.append(
            (
                run["name"],
                run["kind"],
                e["parameters"]["total"],
                e["device"],
                e["batch_size"],
                e["latency_ms_per_patient"],
                e["throughput_patients_per_s"],
                e.get("includes", "model calls"),
            )
        )
    print(f"{report['samples'] if 'samples' in report else ''}")
    print("| run | kind | parameters | device | batch | ms / patient | patients / s | timed |")
    print("|---|---|---:|---|---:|---:|---:|---|")
    for r in rows:
        print(f"| {r[0]} | {r[1]} | {r[2]:,} | {r[3]} | {r[4]} | {r[5]:.2f} | {r[6]:,.0f} | {r[7]} |")
    for name, ratio in report["efficiency"].get("teacher_student_latency_ratio", {}).items():
        print(f"\nteacher / {name} latency: {ratio:.1f}×")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "efficiency": report["efficiency"]}, indent=2))


if __name__ == "__main__":
    main()
