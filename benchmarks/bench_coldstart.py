"""Cold start (issue 10 item 4): how every model does on real admissions the training population never used.

The bundled MIMIC-IV demo's subjects are split in two by a seeded shuffle. The *training population* is
synthetic, resampled by `generate.py raw` from the admissions of the first part only; the *cold-start
population* is the second part's real patients, prepared with `leader preprocess --for-run` against the
trained run (its vocabulary as it is: many codes and most code combinations unseen), their latest admission the
target (its real drugs the labels). Every model — popularity, previous visit, the student, the field's models
(`--field`, issue 22: RETAIN, GAMENet, MICRON, LR, RAREMed by default) and, with --teacher, the default teacher —
is scored on both the synthetic test split (in distribution) and the cold-start population, with popularity as
the floor. `--shrink` also scores, for every learned run, the option of shrinking each score towards the
training prior in proportion to the share of unknown codes in the target visit:
p' = (1 − λ·u)·p + λ·u·prior, u = unknown / all codes of the target visit (`predict.unknown_shrink`, default 3).
`--layout mimic3` builds the same two populations from the MIMIC-III demo (ICD-9 codes, NDC drugs; 100 subjects,
so about 40 held out): a MIMIC-III run is needed for it, since `preprocess --for-run` refuses a source with other
codes and profile fields than the run's (it would read every new patient against the wrong vocabulary).

`--student-seed S` trains the learned runs with `student.seed = S` (the one seed of `train student`, the field's
models included, and of `distill`) into runs/s<S>/; with --reuse the populations of an earlier call are kept, so
`benchmarks/bench_field.py --coldstart` calls this once per seed. `--set KEY=VALUE` goes to every training
command (e.g. a RAREMed budget, `raremed.pretrain_epochs=2`).

How to run (CPU-sized: about 5 minutes on 2 cores without the teacher and `--field ""`):

    python benchmarks/bench_coldstart.py --patients 4000
    python benchmarks/bench_coldstart.py --patients 16000 --teacher --json benchmarks/results/coldstart.json
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

from common import leader_command, machine, markdown_table  # noqa: E402

METRICS = ("prauc", "jaccard", "f1")
DEMO_NAME = {"mimic4": "MIMIC-IV demo", "mimic3": "MIMIC-III demo"}
FIELD = "retain,gamenet,micron,logreg,raremed"  # the field's models (`leader train student --model NAME`)
BASELINES = ("popularity", "previous")  # no learned weights: no seed, no shrink


def split_demo(
    work: Path, seed: int, train_share: float, layout: str = "mimic4"
) -> tuple[Path, Path, list[int]]:
    """Two copies of a demo's tables (`layout`: mimic4 = the MIMIC-IV demo's hosp/, mimic3 = the MIMIC-III
    demo), each under <root>/<the demo's folder>: the training part (generator source) and the held-out part."""
    from generate import LAYOUTS

    demo = LAYOUTS[layout].demo  # mimic-iv-demo/hosp or mimic-iii-demo
    src = REPO / "sample_data" / demo
    adm_file = next(f for f in src.iterdir() if f.name.lower().startswith("admissions.csv"))
    adm = pl.read_csv(adm_file, infer_schema=False)
    subjects = np.array(sorted({int(s) for s in adm["subject_id"].to_list()}))
    rng = np.random.default_rng(seed)
    perm = subjects[rng.permutation(len(subjects))]
    cut = int(round(train_share * len(subjects)))
    parts = {"train": set(perm[:cut].tolist()), "held": set(perm[cut:].tolist())}
    roots = {}
    for name, ids in parts.items():
        root = work / f"demo-{name}"
        tables = root / demo
        shutil.rmtree(root, ignore_errors=True)
        tables.mkdir(parents=True)
        for f in src.iterdir():
            if ".csv" not in f.name:  # LICENSE.txt, SHA256SUMS.txt: no table (and the sums would not match)
                continue
            df = pl.read_csv(f, infer_schema=False)
            if "subject_id" in df.columns:
                df = df.filter(pl.col("subject_id").cast(pl.Int64).is_in(sorted(ids)))
            df.write_csv(tables / f.name.removesuffix(".gz"))
        roots[name] = root
    return roots["train"], roots["held"], sorted(parts["held"])


def raw_root(root: Path, layout: str) -> Path:
    """The folder `leader preprocess --raw` takes for a copy made by `split_demo` (mimic-iv-demo holds hosp/)."""
    from generate import LAYOUTS

    return root / Path(LAYOUTS[layout].demo).parts[0]


def _leader(*args: str, log: Path, threads: int = 1) -> float:
    import os

    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "LEADER_HARDWARE__THREADS": str(threads)}
    t0 = time.perf_counter()
    with open(log, "w") as fh:
        r = subprocess.run([*leader_command(), *args], stdout=fh, stderr=subprocess.STDOUT, env=env)
    if r.returncode != 0:
        raise SystemExit(f"error: leader {' '.join(args)} failed (exit {r.returncode}), see {log}")
    return time.perf_counter() - t0


def _scores(
    run: Path, visits: pl.DataFrame, titles=None, unknown_shrink: float = 0.0
) -> tuple[np.ndarray, list[str]]:
    """(P, M) scores of every drug for each subject (subject order), via the Python API (shrinkage off: the
    script applies it itself to compare λ values)."""
    from leadercli import Recommender

    rec = Recommender.load(run)
    out = rec.predict(visits, top_k=len(rec.labels), titles=titles, unknown_shrink=unknown_shrink)
    out = out.sort(["subject_id", "rank"])
    idx = {c: i for i, c in enumerate(rec.labels)}
    subjects = out["subject_id"].unique(maintain_order=True)
    P = np.zeros((subjects.len(), len(rec.labels)), np.float32)
    row = {s: i for i, s in enumerate(subjects.to_list())}
    for s, a, sc in out.select("subject_id", "atc3", "score").iter_rows():
        P[row[s], idx[a]] = sc
    return P, rec.labels


def _labels(visits: pl.DataFrame, labels: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Multi-hot (P, M) target drugs, visit counts, unknown-share inputs (target codes) per subject."""
    last = (
        visits.sort(["subject_id", "visit_no"])
        .group_by("subject_id", maintain_order=True)
        .agg(
            pl.col("medications").last(),
            pl.len().alias("n_visits"),
            pl.col("diagnoses").last(),
            pl.col("procedures").last(),
        )
    )
    idx = {c: i for i, c in enumerate(labels)}
    Y = np.zeros((last.height, len(labels)), bool)
    for r, meds in enumerate(last["medications"].to_list()):
        for m in meds or []:
            if m in idx:
                Y[r, idx[m]] = True
    return Y, last["n_visits"].to_numpy(), last["diagnoses"].to_list(), last["procedures"].to_list()


def _unknown_share(dx: list, px: list, vocab) -> np.ndarray:
    known = set(vocab.diagnoses.codes) | set(vocab.procedures.codes)
    out = np.zeros(len(dx))
    for i, (d, p) in enumerate(zip(dx, px, strict=True)):
        codes = list(d or []) + list(p or [])
        out[i] = sum(c not in known for c in codes) / max(len(codes), 1)
    return out


def evaluate(Y: np.ndarray, P: np.ndarray, threshold: float) -> dict:
    from leadercli import metrics

    keep = Y.any(1)  # patients whose target visit has a drug in the label list
    Y, P = Y[keep], P[keep]
    pred = P >= threshold
    return {
        "n": int(keep.sum()),
        "prauc": float(metrics.prauc(Y, P).mean()),
        "jaccard": float(metrics.jaccard(Y, pred).mean()),
        "f1": float(metrics.f1(Y, pred).mean()),
    }


def train_missing(runs: dict[str, Path], cfg: list[str], args) -> dict[str, float]:
    """Train every run of `runs` (kind → folder) without a manifest, one thread each (the teacher two) → wall s."""
    sets = [x for kv in args.sets for x in ("--set", kv)]
    if args.student_seed is not None:
        sets += ["--set", f"student.seed={args.student_seed}"]
    times = {}
    for kind, out in runs.items():
        if (out / "manifest.json").is_file():
            continue
        if kind == "teacher":
            cmd, threads = ["train", "teacher"], 2
        elif kind == "distilled":  # the defaults (distill.kd_target auto → logits for a probe-only teacher)
            cmd, threads = ["distill", "--teacher", str(runs["teacher"]), *sets], 1
        elif kind == "student_recency":
            cmd, threads = ["train", "student", "--set", f"student.recency={args.recency}", *sets], 1
        else:
            cmd, threads = ["train", "student", "--model", kind, *(sets if kind not in BASELINES else [])], 1
        log = out.parent / f"{kind}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        times[kind] = _leader(*cmd, *cfg, "--out", str(out), "-q", log=log, threads=threads)
    return times


def score_populations(
    populations: dict, runs: dict[str, Path], art, lambdas: list[float], results: dict
) -> list:
    """Every run on every population (raw, and shrunk by each λ for learned runs) → table rows; the metrics go
    to results["scores"][population][label], the populations' sizes to results["populations"]."""
    from leadercli.runs import load_run

    prior = load_run(runs["popularity"]).prior().numpy()  # the training split's drug frequencies
    table = []
    for pop_name, (visits, pop_titles) in populations.items():
        Y, nv, dx, px = _labels(visits, art.labels)
        u = _unknown_share(dx, px, art.vocab)
        results.setdefault("populations", {})[pop_name] = {
            "patients": int(Y.any(1).sum()),
            "mean_unknown_share": float(u[Y.any(1)].mean()),
            "single_visit_share": float((nv[Y.any(1)] == 1).mean()),
        }
        for name, run in runs.items():
            scorer = load_run(run)
            P, _ = _scores(run, visits, pop_titles, unknown_shrink=0.0)
            for lam in lambdas if name not in BASELINES else [0.0]:
                w = np.clip(lam * u, 0.0, 1.0)[:, None]  # (P, 1), as leader predict does
                Pl = P if lam == 0 else (1 - w) * P + w * prior[None, :]
                m = evaluate(Y, Pl, scorer.threshold)
                label = name if lam == 0 else f"{name} + shrink λ={lam:g}"
                results.setdefault("scores", {}).setdefault(pop_name, {})[label] = m
                table.append([pop_name, label, m["n"], *(f"{m[k]:.4f}" for k in METRICS)])
    return table


def parse_args(argv: list[str] | None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, default=HERE / "out" / "coldstart")
    ap.add_argument("--patients", type=int, default=4000)
    ap.add_argument("--layout", choices=["mimic4", "mimic3"], default="mimic4", help="which demo to split")
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--train-share", type=float, default=0.6)
    ap.add_argument("--student-epochs", type=int, default=30)
    ap.add_argument("--patience", type=int, default=10, help="student.patience (every learned run)")
    ap.add_argument("--field", default=FIELD, help="the field's models to train too (comma list; '' = none)")
    ap.add_argument("--student-seed", type=int, default=None, help="student.seed; runs go to runs/s<S>/")
    ap.add_argument(
        "--set", action="append", default=[], dest="sets", help="KEY=VALUE for every training command"
    )
    ap.add_argument("--teacher", action="store_true", help="also the default teacher (minutes on a CPU)")
    ap.add_argument(
        "--distilled", action="store_true", help="also the teacher and `leader distill` (defaults)"
    )
    ap.add_argument("--recency", type=int, default=0, help="also a student with student.recency = N")
    ap.add_argument("--shrink", default="0,1,3,5", help="λ values of the unknown-share shrinkage to score")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument(
        "--reuse", action="store_true", help="score the runs of an earlier call (no generate/train)"
    )
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sys.path.insert(0, str(HERE))
    from generate import generate_raw

    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    names = ["popularity", "previous", "student"]
    names += ["teacher"] * (args.teacher or args.distilled) + ["distilled"] * args.distilled
    names += ["student_recency"] * (args.recency > 0)
    field = [f for f in args.field.split(",") if f]
    names += field
    run_root = work / "runs" / (f"s{args.student_seed}" if args.student_seed is not None else "")
    runs = {k: run_root / k for k in names}
    held_root, new = work / "demo-held", work / "new-patients"
    cfg = ["--config", str(work / "leader.toml")]
    times: dict = {}
    fresh = not (args.reuse and (work / "artifact" / "manifest.json").is_file())
    if fresh:
        train_root, held_root, _ = split_demo(work, args.seed, args.train_share, args.layout)
        raw = work / "raw"
        shutil.rmtree(raw, ignore_errors=True)
        generate_raw(args.layout, args.patients, raw, seed=args.seed, demo_root=train_root)
        (work / "leader.toml").write_text(
            f'[data]\nsource = "{args.layout}"\n[paths]\nartifact = "{work / "artifact"}"\n'
            f"[student]\nepochs = {args.student_epochs}\nbatch_size = 64\npatience = {args.patience}\n"
        )
        shutil.rmtree(work / "artifact", ignore_errors=True)
        shutil.rmtree(work / "runs", ignore_errors=True)
        times = {
            "preprocess": _leader(
                "preprocess", *cfg, "--raw", str(raw), "--out", str(work / "artifact"), log=work / "pp.log"
            )
        }
    times |= train_missing(runs, cfg, args)  # --reuse: only the runs that are missing are trained
    # the real population, prepared against the student run's vocabulary (also when a --reuse call for another
    # seed comes before the first call has written it)
    if fresh or not (new / "visits.parquet").is_file():
        shutil.rmtree(new, ignore_errors=True)
        raw_held = str(raw_root(held_root, args.layout))
        cmd = ("preprocess", *cfg, "--for-run", str(runs["student"]), "--raw", raw_held, "--out", str(new))
        _leader(*cmd, "-q", log=work / "forrun.log")
    from leadercli.data.artifact import Artifact
    from leadercli.predict import INPUT_CODES, read_titles

    art = Artifact(work / "artifact")
    test_ids = art.patients().filter(pl.col("split") == "test")["subject_id"]
    test_visits = art.visits().filter(pl.col("subject_id").is_in(test_ids.implode()))
    cold_visits = pl.read_parquet(new / "visits.parquet")
    titles = read_titles(new / INPUT_CODES)
    results: dict = {
        "machine": machine(),
        "options": vars(args) | {"work": str(work), "json": str(args.json)},
        "times": times,
    }
    populations = {
        "in distribution (synthetic test split)": (test_visits, None),
        f"cold start (held-out {DEMO_NAME[args.layout]} admissions)": (cold_visits, titles),
    }
    lambdas = [float(x) for x in args.shrink.split(",") if x != ""]
    table = score_populations(populations, runs, art, lambdas, results)
    floor = {p: results["scores"][p]["popularity"]["prauc"] for p in results["scores"]}
    for row in table:
        pop = row[0]
        row.append("below" if float(row[3]) < floor[pop] - 1e-12 and row[1] != "popularity" else "")
    results["elapsed_s"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(results["populations"], indent=1))
    print(markdown_table(["population", "model", "patients", "PRAUC", "Jaccard", "F1", "vs floor"], table))
    print(f"load {machine().get('load_avg_1m')}, {results['elapsed_s']} s")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
