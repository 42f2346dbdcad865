"""Issue 25: does a student that reads code titles (`student.code_text`) do better where codes are new?

Variants, each trained per seed (`student.seed`), scored on every population:
- `popularity` (the floor; no seed), `student` (ids only: code_text none), `student+titles` (both), `titles only`
  (text: the title alone for titled codes), and with --distilled the two distilled versions (`leader distill`,
  defaults) of ids-only and both;
- the title-reading runs are scored twice on the cold-start populations: codes unknown to the run read by their
  titles (codes.parquet; the default) and as UNK (`predict.code_titles = false`): the ablation "with title vs as
  UNK";
- with --teacher-encoder also `student+titles (teacher enc.)`: the titles embedded by the teacher run's backbone
  (`student.code_text_encoder = teacher`). On a CPU the default teacher is a linear probe on the bundled MiniLM,
  so its backbone IS MiniLM and this variant equals `student+titles` bit for bit: it only differs for a teacher
  trained on another backbone (`teacher.base_model`).

Populations:
- `coldstart` (as benchmarks/bench_coldstart.py): a synthetic training population resampled from 60 % of the
  MIMIC-IV demo's subjects (`--layout mimic3`: of the MIMIC-III demo's, ICD-9 and NDC, a MIMIC-III run); in
  distribution = its test split; cold start = the other 40 %, real admissions, prepared with
  `leader preprocess --for-run` (which refuses a demo of the other source: each population needs its own run);
- `a21k`: the ~21k set (an artifact folder, read only: /work/bench/a21k/data); in distribution = its test split;
  also the whole MIMIC-IV demo prepared against it: real records, but the 21k set was resampled from them, so
  not a cold start.

Metrics: PRAUC, Jaccard, F1 per group (overall / single-visit / multi-visit), the run's own threshold, the
predict defaults for the output rules (`predict.unknown_shrink` λ = 3; `--shrink 0` scores the raw model);
mean ± sample std (ddof 1) over the seeds. Also the training time of each run and the predict time of the in-distribution test
split (cost: issue 25 item 4).

How to run (CPU-sized; one seed of `coldstart` with 2000 patients is about 10 minutes on 2 idle cores):

    python benchmarks/bench_code_text.py coldstart --patients 2000 --seeds 42
    python benchmarks/bench_code_text.py coldstart --patients 4000 --seeds 42,2,3 --distilled -q \\
        --json benchmarks/results/code_text_coldstart.json
    python benchmarks/bench_code_text.py coldstart --layout mimic3 --patients 4000 --seeds 42,2,3 --distilled -q \\
        --work benchmarks/out/code_text_coldstart3 --json benchmarks/results/code_text_coldstart_mimic3.json
    python benchmarks/bench_code_text.py a21k --seeds 42,2,3 -q --json benchmarks/results/code_text_21k.json
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

from bench_coldstart import DEMO_NAME, _labels, _leader, evaluate, raw_root, split_demo  # noqa: E402
from common import machine, markdown_table, pm  # noqa: E402

A21K = Path("/work/bench/a21k/data")
M4 = REPO / "sample_data" / "mimic-iv-demo"
METRICS = ("prauc", "jaccard", "f1")
GROUPS = ("overall", "single", "multi")
# variant → (command, its --set options)
VARIANTS = {
    "student": ("student", ["student.code_text=none"]),
    "student+titles": ("student", ["student.code_text=both"]),
    "titles only": ("student", ["student.code_text=text"]),
    "student+titles (teacher enc.)": (
        "student",
        ["student.code_text=both", "student.code_text_encoder=teacher"],
    ),
    "distilled": ("distill", ["student.code_text=none"]),
    "distilled+titles": ("distill", ["student.code_text=both"]),
}
READS_TITLES = {"student+titles", "titles only", "student+titles (teacher enc.)", "distilled+titles"}


def say(msg: str, quiet: bool) -> None:
    if not quiet:
        print(msg, file=sys.stderr, flush=True)


def train_runs(work: Path, cfg: list[str], seeds: list[int], variants: list[str], quiet: bool) -> dict:
    """Train what is missing: popularity once, the teacher once when needed, every variant per seed →
    {"popularity": path, (variant, seed): path, "times": {...}}."""
    out: dict = {"times": {}}
    pop = work / "runs" / "popularity"
    if not (pop / "manifest.json").is_file():
        args = ("train", "student", *cfg, "--model", "popularity", "--out", str(pop), "-q")
        out["times"]["popularity"] = _leader(*args, log=work / "popularity.log")
    out["popularity"] = pop
    teacher = work / "runs" / "teacher"
    needs_teacher = any(
        VARIANTS[v][0] == "distill" or "teacher" in " ".join(VARIANTS[v][1]) for v in variants
    )
    if needs_teacher and not (teacher / "manifest.json").is_file():
        say("training the teacher (linear probe on MiniLM on a CPU)", quiet)
        args = ("train", "teacher", *cfg, "--out", str(teacher), "-q")
        out["times"]["teacher"] = _leader(*args, log=work / "teacher.log", threads=2)
    for seed in seeds:
        for v in variants:
            cmd, sets = VARIANTS[v]
            run = work / "runs" / f"s{seed}" / v.replace(" ", "_").replace("+", "_").replace(".", "")
            out[(v, seed)] = run
            if (run / "manifest.json").is_file():
                continue
            say(f"training {v} (seed {seed})", quiet)
            args = ["train", "student"] if cmd == "student" else ["distill", "--teacher", str(teacher)]
            for s in [*sets, f"student.seed={seed}"]:
                args += ["--set", s]
            if "teacher" in " ".join(sets):
                args += ["--set", f"paths.teacher={teacher}"]
            log = work / f"{run.parent.name}-{run.name}.log"
            out["times"][f"{v} s{seed}"] = _leader(*args, *cfg, "--out", str(run), "-q", log=log)
    return out


def for_run(work: Path, cfg: list[str], run: Path, raw: Path, name: str, extra: list[str]) -> Path:
    out = work / name
    if not (out / "visits.parquet").is_file():
        shutil.rmtree(out, ignore_errors=True)
        args = ("preprocess", *cfg, "--for-run", str(run), *extra, "--raw", str(raw), "--out", str(out), "-q")
        _leader(*args, log=work / f"{name}.log")
    return out


def scores(run: Path, visits: pl.DataFrame, titles, code_titles: bool, lam: float | None) -> np.ndarray:
    """(P, M) scores of every drug per subject (subject order) through the Python API, as `leader predict`."""
    from leadercli import Recommender

    rec = Recommender.load(run)
    out = rec.predict(
        visits, top_k=len(rec.labels), titles=titles, unknown_shrink=lam, code_titles=code_titles
    ).sort(["subject_id", "rank"])
    idx = {c: i for i, c in enumerate(rec.labels)}
    subjects = out["subject_id"].unique(maintain_order=True)
    row = {s: i for i, s in enumerate(subjects.to_list())}
    P = np.zeros((len(row), len(rec.labels)), np.float32)
    for s, a, sc in out.select("subject_id", "atc3", "score").iter_rows():
        P[row[s], idx[a]] = sc
    return P


def grouped(Y: np.ndarray, P: np.ndarray, nv: np.ndarray, threshold: float) -> dict:
    """Metrics per group (overall, single-visit, multi-visit patients)."""
    masks = {"overall": np.ones(len(nv), bool), "single": nv == 1, "multi": nv > 1}
    return {g: evaluate(Y[m], P[m], threshold) for g, m in masks.items() if m.any()}


def populations(mode: str, work: Path, cfg: list[str], runs: dict, first: Path, layout: str) -> dict:
    """name → (visits, titles or None) of the populations of `mode`."""
    from leadercli.data.artifact import Artifact
    from leadercli.predict import INPUT_CODES, read_titles

    art = Artifact(A21K if mode == "a21k" else work / "artifact")
    test_ids = art.patients().filter(pl.col("split") == "test")["subject_id"]
    out = {
        "in distribution (test split)": (
            art.visits().filter(pl.col("subject_id").is_in(test_ids.implode())),
            None,
        )
    }
    # `preprocess --for-run` refuses another source than the run's (the MIMIC-III demo for a MIMIC-IV run)
    if mode == "coldstart":
        new = "new-m4" if layout == "mimic4" else "new-m3"
        cold = [(f"cold start: held-out {DEMO_NAME[layout]}", raw_root(work / "demo-held", layout), [], new)]
    else:  # the 21k set was resampled from the whole demo: its real records, but not held out
        cold = [("real MIMIC-IV demo admissions (the generator's source)", M4, [], "new-m4")]
    for name, raw, extra, folder in cold:
        f = for_run(work, cfg, first, raw, folder, extra)
        out[name] = (pl.read_parquet(f / "visits.parquet"), read_titles(f / INPUT_CODES))
    return out


def unknown_shares(visits: pl.DataFrame, titles, vocab) -> dict:
    """Mean share of target-visit codes unknown to the vocabulary, and of those without a title."""
    last = (
        visits.sort(["subject_id", "visit_no"])
        .group_by("subject_id")
        .agg(pl.col("diagnoses").last(), pl.col("procedures").last())
    )
    known = set(vocab.diagnoses.codes) | set(vocab.procedures.codes)
    titled = set((titles or {}).get("diagnoses", {})) | set((titles or {}).get("procedures", {}))
    unk, untitled = [], []
    for d, p in last.select("diagnoses", "procedures").iter_rows():
        codes = list(d or []) + list(p or [])
        n = max(len(codes), 1)
        unk.append(sum(c not in known for c in codes) / n)
        untitled.append(sum(c not in known and c not in titled for c in codes) / n)
    return {"unknown_share": float(np.mean(unk)), "untitled_share": float(np.mean(untitled))}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("mode", choices=["coldstart", "a21k"])
    ap.add_argument("--work", type=Path, default=None, help="default benchmarks/out/code_text_<mode>")
    ap.add_argument("--seeds", default="42", help="student.seed values, e.g. 42,2,3")
    ap.add_argument("--patients", type=int, default=4000, help="coldstart: synthetic training patients")
    ap.add_argument("--seed", type=int, default=11, help="coldstart: the demo split and generator seed")
    ap.add_argument("--layout", choices=["mimic4", "mimic3"], default="mimic4", help="coldstart: which demo")
    ap.add_argument("--student-epochs", type=int, default=None, help="default 30 (coldstart), 10 (a21k)")
    ap.add_argument("--distilled", action="store_true", help="also the distilled versions (trains a teacher)")
    ap.add_argument("--titles-only", action="store_true", help="also the text-only ablation (code_text=text)")
    ap.add_argument("--teacher-encoder", action="store_true", help="also titles by the teacher's backbone")
    ap.add_argument("--shrink", type=float, default=None, help="λ of the unknown-code shrink (default: 3)")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("-q", "--quiet", action="store_true", help="print the table only")
    args = ap.parse_args(argv)
    work = args.work or HERE / "out" / f"code_text_{args.mode}"
    work.mkdir(parents=True, exist_ok=True)
    seeds = [int(s) for s in args.seeds.split(",") if s]
    variants = ["student", "student+titles"] + ["titles only"] * args.titles_only
    variants += ["student+titles (teacher enc.)"] * args.teacher_encoder
    variants += ["distilled", "distilled+titles"] * args.distilled
    t0 = time.perf_counter()
    cfg = ["--config", str(work / "leader.toml")]
    if args.mode == "coldstart" and not (work / "artifact" / "manifest.json").is_file():
        from generate import generate_raw

        say("splitting the demo, generating the training population, preprocessing", args.quiet)
        train_root, _, _ = split_demo(work, args.seed, 0.6, args.layout)
        shutil.rmtree(work / "raw", ignore_errors=True)
        generate_raw(args.layout, args.patients, work / "raw", seed=args.seed, demo_root=train_root)
    epochs = args.student_epochs or (30 if args.mode == "coldstart" else 10)
    artifact = A21K if args.mode == "a21k" else work / "artifact"
    source = args.layout if args.mode == "coldstart" else "mimic4"  # the 21k set is MIMIC-IV
    (work / "leader.toml").write_text(
        f'[data]\nsource = "{source}"\n[paths]\nartifact = "{artifact}"\n[hardware]\ndevice = "cpu"\n'
        f"[student]\nepochs = {epochs}\nbatch_size = 64\npatience = {5 if args.mode == 'a21k' else 10}\n"
        "[teacher]\nbatch_size = 16\nmax_length = 128\neval_batch_size = 64\n"
    )
    if args.mode == "coldstart" and not (work / "artifact" / "manifest.json").is_file():
        _leader("preprocess", *cfg, "--raw", str(work / "raw"), "--out", str(artifact), log=work / "pp.log")
    runs = train_runs(work, cfg, seeds, variants, args.quiet)
    pops = populations(args.mode, work, cfg, runs, runs[("student", seeds[0])], args.layout)
    from leadercli.data.artifact import Artifact
    from leadercli.runs import load_run

    labels = Artifact(artifact).labels
    vocab = Artifact(artifact).vocab
    results: dict = {"machine": machine(), "options": {k: str(v) for k, v in vars(args).items()}}
    results["times"] = runs["times"]
    per: dict = {}  # (population, label) → [metrics per seed]
    for pop, (visits, titles) in pops.items():
        Y, nv, _, _ = _labels(visits, labels)
        results.setdefault("populations", {})[pop] = {"patients": int(Y.any(1).sum())} | unknown_shares(
            visits, titles, vocab
        )
        entries = [("popularity", runs["popularity"], None, True)]
        for v in variants:
            for seed in seeds:
                entries.append((v, runs[(v, seed)], seed, True))
                if v in READS_TITLES and titles:
                    entries.append((f"{v}, new codes as UNK", runs[(v, seed)], seed, False))
        for label, run, seed, read in entries:
            t = time.perf_counter()
            P = scores(run, visits, titles, read, args.shrink)
            if pop.startswith("in distribution") and seed is not None:
                results.setdefault("predict_s", {})[f"{label} s{seed}"] = round(time.perf_counter() - t, 2)
            per.setdefault((pop, label), []).append(grouped(Y, P, nv, load_run(run).threshold))
        say(f"scored {pop}", args.quiet)
    rows = []
    for (pop, label), ms in per.items():
        row = [pop, label, len(ms)]
        for g in GROUPS:
            vals = [m[g]["prauc"] for m in ms if g in m]
            row.append(pm(vals, 4, empty=""))
        for k in ("jaccard", "f1"):
            row.append(pm([m["overall"][k] for m in ms], 4, empty=""))
        rows.append(row)
        results.setdefault("scores", {}).setdefault(pop, {})[label] = ms
    results["elapsed_s"] = round(time.perf_counter() - t0, 1)
    heads = ["population", "model", "seeds", "PRAUC overall", "PRAUC single", "PRAUC multi", "Jaccard", "F1"]
    print(json.dumps(results["populations"], indent=1))
    print(markdown_table(heads, rows))
    train_times = {k: round(v, 1) for k, v in results["times"].items()}
    print(f"training s: {train_times}\npredict s (test split): {results.get('predict_s')}")
    print(f"load {machine().get('load_avg_1m')}, {results['elapsed_s']} s")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
