"""`leader predict --explain K` (issue 24 items 1–3): is the explanation faithful, and what does it cost?

Faithfulness, on the test split of the run's artifact: for each test patient's top `--drugs` drugs, the K codes of
the target visit with the largest occlusion contribution (`Recommender.predict(explain=...)`) are removed
together and the drug is re-scored; so are K codes drawn at random (seeded) from the same target visit. The
report: the mean score drop of each, their ratio (> 1: the explanation picks codes that matter more than
chance), and the share of (patient, drug) rows where the top-K drop is larger. A row whose target visit has
fewer than K codes with a positive contribution compares that many. Scores through the run's Scorer (its
calibrator and `predict.unknown_shrink`), as `leader predict` writes them; works for every run kind (the
copies are new subjects of one visits frame).

Cost: `leader predict` on a visits file of `--patients` patients resampled from the artifact (`generate.py
visits`, as `bench_predict.py`), plain and with `--explain K`, as subprocesses: wall time, CPU seconds (user +
system; the fairer ratio on a busy machine) and peak RSS.

How to run (CPU-sized first; then the 100k measurement of the issue):

    python benchmarks/bench_explain.py --model runs/student --patients 2000 --faithful-patients 300
    python benchmarks/bench_explain.py --model runs/student --patients 100000 --json benchmarks/results/explain.json
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np
import polars as pl

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import leader_command, load1, machine, markdown_table, measure, tail, write_json  # noqa: E402
from generate import generate_visits  # noqa: E402


def _without(p: pl.DataFrame, target_no: int, drop: dict[str, set[int]], new_id: int) -> pl.DataFrame:
    """Patient `p`'s visits as subject `new_id`, the target visit without the codes at `drop` (list → slots)."""
    rows = []
    for r in p.iter_rows(named=True):
        if r["visit_no"] == target_no:
            for kind, slots in drop.items():
                r[kind] = [c for i, c in enumerate(r[kind] or []) if i not in slots]
        rows.append({**r, "subject_id": new_id})
    return pl.DataFrame(rows, schema=p.schema)


def faithfulness(model: Path, k: int, drugs: int, patients: int, seed: int) -> dict:
    from leadercli import Recommender
    from leadercli.data.artifact import Artifact

    rec = Recommender.load(model)
    art = Artifact(Path(rec.scorer.manifest["artifact"]["path"]))
    test = art.patients().filter(pl.col("split") == "test").select("subject_id")
    visits = art.visits().join(test, on="subject_id", how="semi").sort(["subject_id", "visit_no"])
    rng = np.random.default_rng(seed)
    ids = np.sort(visits["subject_id"].unique().to_numpy())
    if patients and len(ids) > patients:
        ids = np.sort(rng.choice(ids, patients, replace=False))
    visits = visits.filter(pl.col("subject_id").is_in(ids.tolist()))
    out = rec.predict(visits, top_k=drugs, explain=10_000).filter(pl.col("rank") <= drugs)
    by_subject = {sid: g for (sid,), g in visits.group_by("subject_id")}
    copies, rows = [], []  # rows: (original subject, drug, score, copy id of top-K, copy id of random-K)
    next_id = int(ids.max()) + 1
    for r in out.iter_rows(named=True):
        p = by_subject[r["subject_id"]]
        target = p.filter(pl.col("visit_no") == p["visit_no"].max()).row(0, named=True)
        codes = [("diagnoses", i, c) for i, c in enumerate(target["diagnoses"] or [])]
        codes += [("procedures", i, c) for i, c in enumerate(target["procedures"] or [])]
        top = [
            c
            for c, v, kd in zip(r["explain_codes"], r["explain_visits"], r["explain_kinds"], strict=True)
            if v == "target" and kd in ("diagnosis", "procedure")
        ][:k]
        n = len(top)
        if n == 0 or len(codes) <= n:
            continue
        chosen: dict[str, set[int]] = {}
        left = list(top)
        for kind, i, c in codes:  # the first occurrence of each explained code (codes repeat rarely)
            if c in left:
                chosen.setdefault(kind, set()).add(i)
                left.remove(c)
        pick = rng.choice(len(codes), n, replace=False)
        rand: dict[str, set[int]] = {}
        for j in pick:
            rand.setdefault(codes[j][0], set()).add(codes[j][1])
        copies += [
            _without(p, target["visit_no"], chosen, next_id),
            _without(p, target["visit_no"], rand, next_id + 1),
        ]
        rows.append((r["atc3"], r["score"], next_id, next_id + 1))
        next_id += 2
    scored = rec.predict(pl.concat(copies), top_k=len(rec.labels))
    score = {(s, d): x for s, d, x in scored.select("subject_id", "atc3", "score").iter_rows()}
    top_drop = np.array([base - score[(a, d)] for d, base, a, _ in rows])
    rand_drop = np.array([base - score[(b, d)] for d, base, _, b in rows])
    return {
        "k": k,
        "rows": len(rows),
        "patients": len(ids),
        "mean_drop_top_k": float(top_drop.mean()),
        "mean_drop_random_k": float(rand_drop.mean()),
        "ratio": float(top_drop.mean() / rand_drop.mean()) if rand_drop.mean() else float("inf"),
        "share_top_larger": float((top_drop > rand_drop).mean()),
    }


def cost(model: Path, n: int, k: int, work: Path, seed: int, source: Path) -> list[dict]:
    work.mkdir(parents=True, exist_ok=True)
    visits = work / f"visits-{n}.parquet"
    if not visits.is_file():
        generate_visits(source, n, visits, seed=seed)
    out = []
    for explain in (0, k):
        dest = work / f"recs-{n}-{explain}.parquet"
        cmd = [*leader_command(), "predict", str(visits), "-o", str(dest), "--model", str(model)]
        cmd += ["--explain", str(explain)] if explain else []
        before, t0 = load1(), os.times()
        m = measure(cmd, log=work / f"predict-{n}-{explain}.log")
        t1 = os.times()  # CPU seconds of the finished child: robust to a busy machine, unlike wall time
        cpu = round(t1.children_user - t0.children_user + t1.children_system - t0.children_system, 2)
        if not m.ok:
            print(f"error: leader predict failed (exit {m.returncode}):\n{tail(m.log)}")
        rss = round(m.peak_rss_gib, 3)
        out.append(
            {"explain": explain, "wall_s": m.wall_s, "cpu_s": cpu, "peak_rss_gib": rss, "load1": before}
        )
        dest.unlink(missing_ok=True)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, default=Path("runs/student"))
    ap.add_argument("--k", type=int, default=3)
    ap.add_argument(
        "--drugs", type=int, default=3, help="top drugs per test patient in the faithfulness test"
    )
    ap.add_argument("--faithful-patients", type=int, default=0, help="test patients drawn (0 = all)")
    ap.add_argument(
        "--patients", type=int, default=100_000, help="patients of the cost measurement (0 = skip)"
    )
    ap.add_argument("--work", type=Path, default=HERE / "out" / "explain")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    results: dict = {"machine": machine(), "model": str(args.model)}
    f = faithfulness(args.model, args.k, args.drugs, args.faithful_patients, args.seed)
    results["faithfulness"] = f
    print(
        f"faithfulness (test split, {f['patients']} patients, {f['rows']} patient-drug rows, K = {f['k']}): "
        f"mean drop top-K {f['mean_drop_top_k']:.4f}, random-K {f['mean_drop_random_k']:.4f}, ratio "
        f"{f['ratio']:.2f}; top-K drop larger in {100 * f['share_top_larger']:.1f} % of rows"
    )
    if args.patients:
        import json

        art = json.loads((args.model / "manifest.json").read_text())["artifact"]["path"]
        c = cost(args.model, args.patients, args.k, args.work, args.seed, Path(art) / "visits.parquet")
        results["cost"] = c
        base, base_cpu = c[0]["wall_s"], c[0]["cpu_s"]
        rows = [
            [f"--explain {r['explain']}" if r["explain"] else "plain", args.patients, r["wall_s"],
             f"{r['wall_s'] / base:.1f}×", r["cpu_s"], f"{r['cpu_s'] / base_cpu:.1f}×", r["peak_rss_gib"], r["load1"]]
            for r in c
        ]  # fmt: skip
        head = [
            "predict",
            "patients",
            "wall s",
            "vs plain",
            "CPU s",
            "vs plain",
            "peak RSS GiB",
            "load (1 min)",
        ]
        print(markdown_table(head, rows))
    write_json(args.json, results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
