"""CPU threads for the student (issue 12): `leader train student` and `leader predict` with 1 and N torch
threads, on a quiet machine and with a background CPU hog (busy-loop processes, one per core), the load
recorded next to every number. The numbers chose the default policy in `leadercli.hardware.cpu_threads`.

Run it small on CPU (the bundled MIMIC-III demo, 3 epochs, 20,000 generated patients to predict):

    .venv/bin/python benchmarks/bench_threads.py --work /tmp/bench-threads

Each measurement is a `leader` subprocess with LEADER_HARDWARE__THREADS set (`default` = unset: the policy);
train time is the whole command (3 epochs + evaluation), predict time the whole command.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import leader_command  # noqa: E402
from generate import generate_visits  # noqa: E402


def load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def timed(cmd: list[str], env: dict, cwd: Path) -> float:
    t0 = time.perf_counter()
    p = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True)
    if p.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{p.stderr[-2000:]}")
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/bench-threads"))
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--patients", type=int, default=20_000)
    ap.add_argument("--threads", nargs="+", default=["1", "2", "default"])
    ap.add_argument("--hogs", type=int, nargs="+", default=[0, os.cpu_count() or 2])
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument(
        "--synthetic",
        type=int,
        default=0,
        help="Train on tests/synthetic.py's artifact of this many patients instead of the demo (0 = demo).",
    )
    ap.add_argument("--no-predict", action="store_true", help="Time training only.")
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # `timeout` still stops the busy loops (finally)
    leader = leader_command()
    wd = args.work
    wd.mkdir(parents=True, exist_ok=True)
    base = {k: v for k, v in os.environ.items() if not k.startswith("LEADER_")}
    if args.synthetic and not (wd / "data" / "mimic3" / "manifest.json").is_file():
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
        from synthetic import make_synthetic_artifact

        make_synthetic_artifact(wd / "data" / "mimic3", n_patients=args.synthetic)
    if not (wd / "data" / "mimic3" / "manifest.json").is_file():
        timed([*leader, "preprocess", "-q"], base, wd)
    visits = wd / "predict.parquet"
    if not visits.is_file() and not args.no_predict:
        generate_visits(wd / "data" / "mimic3" / "visits.parquet", args.patients, visits)
    print(f"cores {os.cpu_count()}, affinity {len(os.sched_getaffinity(0))}; epochs {args.epochs}")
    print("| background hog | threads | train student (s) | predict (s) | load before (1/5/15 min) |")
    print("|---|---|---|---|---|")
    for hogs in args.hogs:
        procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(hogs)]
        try:
            if hogs:
                time.sleep(5)
            for threads in args.threads:
                env = dict(base, LEADER_STUDENT__EPOCHS=str(args.epochs), LEADER_STUDENT__PATIENCE="100")
                if threads != "default":
                    env["LEADER_HARDWARE__THREADS"] = threads
                before = load()
                train, pred = [], []
                for _ in range(args.repeats):
                    out = wd / "runs" / f"t{threads}"
                    if out.exists():
                        shutil.rmtree(out)
                    train.append(timed([*leader, "train", "student", "-q", "--out", str(out)], env, wd))
                    pred.append(
                        float("nan")
                        if args.no_predict
                        else timed(
                            [
                                *leader,
                                "predict",
                                str(visits),
                                "-o",
                                str(wd / "recs.csv"),
                                "--model",
                                str(out),
                                "-q",
                            ],
                            env,
                            wd,
                        )
                    )
                print(
                    f"| {hogs} busy loops | {threads} | {min(train):.1f} | {min(pred):.1f} | {before} |",
                    flush=True,
                )
        finally:
            for p in procs:
                p.kill()
                p.wait()


if __name__ == "__main__":
    main()
