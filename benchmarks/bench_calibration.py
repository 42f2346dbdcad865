"""Calibration on or off (issue 24 item 5): does temperature scaling lower ECE without costing PRAUC or Jaccard?

For each trained run (a student, distilled or field-model run; several seeds), the same model is scored twice
— its raw scores, and through the calibrator `leader train` fitted on the validation split (fitted here the
same way, `calibration.fit_calibrator` on the validation split, for a run trained without one) — on the artifact's
test split (in distribution) and, with --cold, on a `preprocess --for-run` population (cold start; its target
visits' drugs are the labels). Each side's threshold is tuned on the validation split on its own scale (as the
recipe does). Scores go through the run's Scorer with the unknown-code shrink of `leader predict` (λ setting),
calibration first. Training is not repeated: calibration is fitted after training, so "method = none" is the
same weights scored raw.

How to run (a few seconds per run on 2 cores; the runs from `bench_coldstart.py`, trained with 3 seeds):

    python benchmarks/bench_coldstart.py --work /tmp/cold --patients 4000 --shrink 0
    for s in 1 2; do leader train student --config /tmp/cold/leader.toml --out /tmp/cold/runs/student_s$s \\
        --set student.seed=$s -q; done
    python benchmarks/bench_calibration.py --runs /tmp/cold/runs/student /tmp/cold/runs/student_s1 \\
        /tmp/cold/runs/student_s2 --cold /tmp/cold/new-patients --json benchmarks/results/calibration.json
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import numpy as np
import polars as pl

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import machine, markdown_table, write_json  # noqa: E402

METRICS = ("ece", "brier", "prauc", "jaccard")


def labels_of(samples: list, labels: list[str]) -> np.ndarray:
    idx = {c: i for i, c in enumerate(labels)}
    Y = np.zeros((len(samples), len(labels)), bool)
    for r, s in enumerate(samples):
        for m in s.target.medications:
            if m in idx:
                Y[r, idx[m]] = True
    return Y


def measure(Y: np.ndarray, P: np.ndarray, threshold: float) -> dict:
    from leadercli import calibration, metrics

    keep = Y.any(1)  # patients whose target visit has a drug in the label list
    Y, P = Y[keep], P[keep]
    return {
        "n": int(keep.sum()),
        "ece": calibration.ece(Y, P),
        "brier": calibration.brier(Y, P),
        "prauc": float(metrics.prauc(Y, P).mean()),
        "jaccard": float(metrics.jaccard(Y, P >= threshold).mean()),
        "threshold": threshold,
    }


def run_one(run: Path, cold: Path | None) -> dict:
    from leadercli import metrics
    from leadercli.data.artifact import Artifact
    from leadercli.data.samples import load_samples, samples_from_frame
    from leadercli.runs import load_run

    scorer = load_run(run)
    raw = copy.copy(scorer)
    raw.calibrator = None
    art = Artifact(Path(scorer.manifest["artifact"]["path"]))
    pops = {
        "val": load_samples(art, "val", scorer.max_visits),
        "test (in distribution)": load_samples(art, "test", scorer.max_visits),
    }
    if cold is not None:
        visits = pl.read_parquet(cold / "visits.parquet")
        pops["cold start"] = samples_from_frame(visits, scorer.encoder.profile_fields, scorer.max_visits)
    if scorer.calibrator is None:  # fitted here as `leader train` would (calibration.method = temperature)
        from leadercli.calibration import fit_calibrator

        y_val = labels_of(pops["val"], scorer.labels)
        scorer = copy.copy(raw)
        scorer.calibrator = fit_calibrator(y_val, np.asarray(raw.score_samples(pops["val"]), np.float32))
    out = {"T": scorer.calibrator.temperature}
    for side, s in (("raw", raw), ("temperature", scorer)):
        P = {name: np.asarray(s.score_samples(smp), np.float32) for name, smp in pops.items()}
        Y = {name: labels_of(smp, scorer.labels) for name, smp in pops.items()}
        th = metrics.choose_threshold(None, Y["val"], P["val"])["value"]
        out[side] = {name: measure(Y[name], P[name], th) for name in pops if name != "val"}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=Path, nargs="+", required=True, help="run folders with calibration.json")
    ap.add_argument("--cold", type=Path, default=None, help="a `preprocess --for-run` folder (cold start)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    results = {"machine": machine(), "runs": {str(r): run_one(r, args.cold) for r in args.runs}}
    pops = list(next(iter(results["runs"].values()))["raw"])
    rows = []
    for pop in pops:
        for side in ("raw", "temperature"):
            vals = {m: [r[side][pop][m] for r in results["runs"].values()] for m in METRICS}
            rows.append(
                [pop, side]
                + [
                    f"{np.mean(v):.4f} ± {np.std(v):.4f}" if len(v) > 1 else f"{v[0]:.4f}"
                    for v in vals.values()
                ]
            )
        d = {
            m: [r["temperature"][pop][m] - r["raw"][pop][m] for r in results["runs"].values()]
            for m in METRICS
        }
        rows.append(
            [pop, "Δ (temp − raw)"]
            + [f"{np.mean(v):+.4f} [{min(v):+.4f}, {max(v):+.4f}]" for v in d.values()]
        )
    temps = [r["T"] for r in results["runs"].values()]
    print(f"{len(args.runs)} run(s), temperatures {', '.join(f'{t:.3f}' for t in temps)}")
    print(markdown_table(["population", "scores", *METRICS], rows))
    results["table"] = rows
    write_json(args.json, results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
