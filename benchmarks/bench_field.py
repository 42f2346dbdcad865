"""Issue 22 item 5: LEADER against the field's models on one artifact, several seeds, every patient.

For each seed S, every model is trained under the same protocol (the artifact, split, samples, `[student]` batch
size, epochs and patience of <work>/leader.toml; early stopping on validation PRAUC; the threshold tuned on
validation) with `student.seed = S` — the one seed of `leader train student` (the field's models have no seed of
their own: `[retain]`, `[gamenet]`, `[micron]`, `[logreg]`, `[raremed]` hold none) and of `leader distill`:

- `student` (LEADER's student, no KD), `distilled` (`leader distill --teacher T`, only with --teacher: an existing
  teacher run, or `train` to train the CPU default teacher once), `retain`, `gamenet`, `micron`, `logreg`,
  `raremed` (its CPU budget: `raremed.pretrain_epochs` = --raremed-pretrain, recorded), and `popularity` (no
  seed: once);
- two commands at a time, one torch thread each (`LEADER_HARDWARE__THREADS=1`); each command's wall time, CPU
  time and peak RSS are recorded; runs that already have a manifest are kept (rerun to resume);
- then, one seed at a time, `leader report` over that seed's runs, the teacher and popularity (one thread, so
  inference patients/s compare across models) → <work>/reports/s<S>/ (the paper's table in metrics.json);
- the table: mean ± std over the seeds of PRAUC, Jaccard, F1, DDI rate and #drugs for overall, single-visit and
  multi-visit patients, Δ PRAUC to the best baseline, parameters, training time (the manifests) and inference
  patients/s (the reports) → stdout, <work>/field.md and <work>/field.json;
- with --lr-scales (e.g. 1,8), the one small learning-rate grid every model gets, LEADER's included: each model
  also trains at its default rate (`[<model>] lr`; `student.lr` for the student and `leader distill`) times each
  scale into runs/s<S>/<model>-lrx<scale>, and for each seed the run with the best validation PRAUC
  (`best_val_prauc` of its manifest) is the one reported; the grid, each run's validation PRAUC and the chosen
  scale go to field.md / field.json (the chosen run's own rate is in its manifest's settings);
- with --coldstart, the cold-start population of `bench_coldstart.py` (a synthetic training population resampled
  from 60 % of the MIMIC-IV demo's subjects; the other 40 %, real admissions, held out), one call per seed
  (`--student-seed S`, the same models and budget) → PRAUC, Jaccard, F1 mean ± std in distribution and cold
  start, raw and with the unknown-code shrink λ = 3 (`predict.unknown_shrink`'s default).

How to run:

    python benchmarks/bench_field.py --dry-run                 # tiny data and models, 2 seeds: about a minute
    python benchmarks/bench_field.py --teacher train --coldstart   # the ~21k set, 3 seeds: hours on 2 cores
    python benchmarks/bench_field.py --models student,retain,gamenet --seeds 42 --epochs 5
    python benchmarks/bench_field.py --teacher runs/teacher --lr-scales 1,8   # the same lr grid for every model
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import tomllib

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

from common import leader_command, machine, markdown_table, pm, timed  # noqa: E402

from leadercli import kinds  # noqa: E402

A21K = Path("/work/bench/a21k/data")
MODELS = ("student", "distilled", "retain", "gamenet", "micron", "logreg", "raremed", "popularity")
FIELD = ("retain", "gamenet", "micron", "logreg", "raremed")
LR_SECTION = {m: "student" if m in ("student", "distilled") else m for m in MODELS if m != "popularity"}
GROUPS = {"overall": "Overall", "single": "Single-visit patients", "multi": "Multi-visit patients"}
METRICS = (("prauc", "PRAUC", 4), ("jaccard", "Jaccard", 4), ("f1", "F1", 4), ("ddi_rate", "DDI rate", 4))
METRICS += (("avg_drugs", "#drugs", 2),)
# the dry run: tiny models on the tests' synthetic artifact (60 patients), a tiny random LLaMA as the teacher
TINY = """[student]
hidden = 16
heads = 2
ff = 32
head_hidden = 32
batch_size = 8
[retain]
emb_dim = 16
alpha_hidden = 16
beta_hidden = 16
[gamenet]
emb_dim = 16
[micron]
emb_dim = 16
[raremed]
emb_dim = 16
layers = 1
heads = 2
ff = 32
[teacher]
max_steps = 2
batch_size = 4
"""
# the same tiny models as --set options (bench_coldstart.py writes its own config): every TINY value but the
# student's batch size and the teacher
TINY_SETS = [
    f"{section}.{key}={value}"
    for section, values in tomllib.loads(TINY).items()
    if section != "teacher"
    for key, value in values.items()
    if (section, key) != ("student", "batch_size")
]


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def env(threads: int = 1) -> dict:
    return {**os.environ, "LEADER_HARDWARE__THREADS": str(threads), "OMP_NUM_THREADS": str(threads)}


def write_config(work: Path, data: Path, args, dry: bool) -> list[str]:
    """<work>/leader.toml: the artifact and the one training budget of every model → the --config option."""
    toml = f'[paths]\nartifact = "{data}"\n[hardware]\ndevice = "cpu"\n'
    if dry:
        from tiny_llama import make_tiny_llama  # tests/: a random 2-layer LLaMA, no download

        llama = make_tiny_llama(work / "tiny-llama")
        body = TINY.replace("[teacher]\n", f'[teacher]\nbase_model = "{llama}"\n')
        body = body.replace(
            "batch_size = 8\n", f"batch_size = 8\nepochs = {args.epochs}\npatience = {args.patience}\n"
        )
        toml += body
    else:
        toml += f"[student]\nbatch_size = 64\nepochs = {args.epochs}\npatience = {args.patience}\n"
        toml += "[teacher]\nbatch_size = 16\nmax_length = 128\neval_batch_size = 64\n"
    (work / "leader.toml").write_text(toml)
    return ["--config", str(work / "leader.toml")]


def default_lr(model: str) -> float:
    """The model's default learning rate (`[<section>] lr` of the settings schema)."""
    from leadercli.settings import Settings

    return Settings.model_fields[LR_SECTION[model]].annotation.model_fields["lr"].default


def grid_point(model: str, scale: float) -> str:
    """<model>, or <model>-lrx<scale> for a grid point other than 1: the run folder's and the job's name."""
    return model if scale == 1 else f"{model}-lrx{scale:g}"


def run_dir(work: Path, seed: int, model: str, scale: float = 1.0) -> Path:
    """runs/popularity, runs/s<S>/<model>, or runs/s<S>/<model>-lrx<scale>."""
    if model == "popularity":
        return work / "runs" / "popularity"
    return work / "runs" / f"s{seed}" / grid_point(model, scale)


def job_name(model: str, scale: float, seed: int) -> str:
    """The name of a training command in the times: "<model> s<S>", "<model>-lrx<scale> s<S>"."""
    return f"{grid_point(model, scale)} s{seed}"


def jobs_for(
    work: Path, cfg: list[str], seeds: list[int], models: list[str], teacher: Path | None, args
) -> list:
    """(name, argv, run folder) of every training command still to run (a run with a manifest is kept)."""
    out = []
    for seed in seeds:
        for m in models:
            if m == "popularity" and seed != seeds[0]:
                continue
            for scale in [1.0] if m == "popularity" else args.scales:
                run = run_dir(work, seed, m, scale)
                if (run / "manifest.json").is_file():
                    continue
                seed_set = [] if m == "popularity" else ["--set", f"student.seed={seed}"]
                if scale != 1:
                    seed_set += ["--set", f"{LR_SECTION[m]}.lr={default_lr(m) * scale:g}"]
                if m == "distilled":
                    cmd = ["distill", "--teacher", str(teacher)]
                else:
                    cmd = ["train", "student", "--model", m]
                if m == "raremed":
                    cmd += ["--set", f"raremed.pretrain_epochs={args.raremed_pretrain}"]
                seed_set += [x for kv in args.sets for x in ("--set", kv)]
                name = m if m == "popularity" else job_name(m, scale, seed)
                out.append((name, [*leader_command(), *cmd, *cfg, *seed_set, "--out", str(run), "-q"], run))
    return out


def choose(work: Path, seeds: list[int], models: list[str], scales: list[float]) -> dict:
    """{seed: {model: {"scale": chosen, "val": {scale: best validation PRAUC, None = not run}, "run": path}}}:
    per seed and model, the grid point with the best validation PRAUC (ties: the smaller scale) among the grid
    points that were trained (a grid point without a manifest is skipped and shows as "—")."""
    out: dict = {}
    for seed in seeds:
        for m in models:
            if m == "popularity":
                continue
            val = {}
            for scale in scales:
                manifest = run_dir(work, seed, m, scale) / "manifest.json"
                val[scale] = (
                    json.loads(manifest.read_text())["best_val_prauc"] if manifest.is_file() else None
                )
            ran = [x for x in scales if val[x] is not None]
            if not ran:
                raise SystemExit(f"error: no run of {m} for seed {seed} under {work / 'runs'}")
            best = max(ran, key=lambda x: (val[x], -x))
            out.setdefault(seed, {})[m] = {"scale": best, "val": val, "run": run_dir(work, seed, m, best)}
    return out


def train(work: Path, jobs: list, parallel: int) -> dict:
    """Run the jobs `parallel` at a time, one torch thread each → {name: timed(...)}; exit on a failure."""
    (work / "logs").mkdir(exist_ok=True)

    def one(job):
        name, argv, _ = job
        say(f"training {name}")
        return name, timed(argv, env(1), work / "logs" / f"{name.replace(' ', '_')}.log")

    with ThreadPoolExecutor(max_workers=parallel) as pool:
        results = dict(pool.map(one, jobs))
    failed = [n for n, r in results.items() if r["rc"] != 0]
    if failed:
        raise SystemExit(f"error: training failed for {', '.join(failed)}; see {work / 'logs'}")
    return results


def teacher_run(work: Path, cfg: list[str], choice: str | None, times: dict) -> Path | None:
    """The teacher to distill from: the given run, or one trained here once (2 threads), or None."""
    if choice is None:
        return None
    if choice != "train":
        return Path(choice).resolve()
    run = work / "runs" / "teacher"
    if not (run / "manifest.json").is_file():
        say("training the teacher (the CPU default: linear probe)")
        argv = [*leader_command(), "train", "teacher", *cfg, "--out", str(run), "-q"]
        times["teacher"] = timed(argv, env(2), work / "logs" / "teacher.log")
        if times["teacher"]["rc"] != 0:
            raise SystemExit(f"error: the teacher failed; see {work / 'logs' / 'teacher.log'}")
    return run


def report(work: Path, cfg: list[str], seed: int, runs: list[Path], name: str) -> dict:
    """`leader report` over one seed's runs (one thread) → its metrics.json (kept when it exists)."""
    out = work / "reports" / name
    if (out / "metrics.json").is_file():  # kept, as runs with a manifest are (delete it to redo the report)
        return json.loads((out / "metrics.json").read_text())
    say(f"report of seed {seed}")
    r = timed(
        [*leader_command(), "report", *map(str, runs), *cfg, "-o", str(out), "-q"],
        env(1),
        work / "logs" / f"report_{name}.log",
    )
    if r["rc"] != 0:
        raise SystemExit(f"error: leader report failed; see {work / 'logs' / f'report_{name}.log'}")
    return json.loads((out / "metrics.json").read_text())


def seed_runs(work: Path, seed: int, models: list[str], teacher: Path | None, chosen: dict) -> list[Path]:
    """The runs one seed's report compares: the chosen grid point of every model, the teacher, popularity."""
    runs = [chosen[seed][m]["run"] for m in models if m != "popularity"]
    runs += [teacher] if teacher is not None else []
    return runs + ([work / "runs" / "popularity"] if "popularity" in models else [])


def grid_table(chosen: dict, models: list[str], scales: list[float]) -> str:
    """Validation PRAUC per grid point (mean ± std over seeds) and the scale chosen per seed."""
    rows = []
    for m in models:
        if m == "popularity":
            continue
        per = [chosen[s][m] for s in chosen]
        cells = [
            pm([p["val"][x] for p in per], 4) + f" ({sum(p['val'][x] is not None for p in per)})"
            for x in scales
        ]
        picked = ", ".join(f"×{p['scale']:g}" for p in per)
        rows.append([m, f"{default_lr(m):g}", *cells, picked])
    heads = ["model", "default lr", *[f"val PRAUC lr ×{x:g} (seeds)" for x in scales], "chosen (per seed)"]
    return markdown_table(heads, rows)


def collect(reports: dict[int, dict]) -> dict:
    """{kind: {"model", "seeds", (group, metric): [value per seed], "delta": {group: [...]}, "parameters",
    "training_seconds", "patients_per_s": [...]}} from the reports' tables."""
    out: dict = {}
    for seed, rep in reports.items():
        for row in rep["table"]["rows"]:
            label = kinds.BY_NAME[row["kind"]].label if row["kind"] in kinds.BY_NAME else row["name"]
            e = out.setdefault(row["kind"], {"model": label, "seeds": [], "delta": {}})
            e["seeds"].append(seed)
            for g in GROUPS:
                for k, _, _ in METRICS:
                    cell = row["groups"][g][k]
                    e.setdefault((g, k), []).append(cell["value"] if cell else None)
                vb = (row["vs_baseline"] or {}).get(g)
                e["delta"].setdefault(g, []).append(vb["diff"] if vb else None)
            for k in ("parameters", "training_seconds", "patients_per_s"):
                e.setdefault(k, []).append(row[k])
            e["best_baseline_in"] = e.get("best_baseline_in", 0) + (
                rep["table"]["best_baseline"] == row["name"]
            )
    return out


def tables(agg: dict, reports: dict[int, dict], wall: dict, chosen: dict) -> str:
    """The markdown: one table per group (mean ± std over seeds) and one of costs (the reported runs' own: the
    chosen grid point per seed)."""
    first = next(iter(reports.values()))
    parts = []
    for g, title in GROUPS.items():
        n = first["samples"]["groups"][g]
        rows = []
        for e in agg.values():
            delta = "best baseline" if all(d is None for d in e["delta"][g]) else pm(e["delta"][g], 4)
            rows.append([e["model"], len(e["seeds"]), *[pm(e[(g, k)], d) for k, _, d in METRICS], delta])
        heads = ["model", "seeds", *[t for _, t, _ in METRICS], "Δ PRAUC vs best baseline"]
        parts.append(f"### {title} ({n:,} test patients)\n\n" + markdown_table(heads, rows))
    rows = []
    for kind, e in agg.items():
        # the training commands of the reported runs (popularity and the teacher: their one command)
        names = [job_name(kind, per[kind]["scale"], seed) for seed, per in chosen.items() if kind in per]
        walls = [wall[n]["wall_s"] for n in names or [kind] if n in wall]
        params = e["parameters"][0]
        rows.append(
            [
                e["model"],
                f"{params:,}" if params is not None else "—",
                pm(e["training_seconds"], 1),
                pm(walls, 1),
                pm(e["patients_per_s"], 0),
            ]
        )
    heads = ["model", "parameters", "training s (manifest)", "command wall s", "inference patients/s"]
    parts.append("### Cost\n\n" + markdown_table(heads, rows))
    return "\n\n".join(parts)


def coldstart(work: Path, seeds: list[int], models: list[str], args) -> tuple[str, dict]:
    """bench_coldstart.py once per seed (the first one builds the populations) → (markdown, per-seed JSON)."""
    field = [m for m in models if m in FIELD]
    base = [sys.executable, str(HERE / "bench_coldstart.py"), "--work", str(work / "coldstart")]
    base += ["--field", ",".join(field), "--shrink", "0,3", "--student-epochs", str(args.epochs)]
    base += ["--patience", str(args.patience), "--set", f"raremed.pretrain_epochs={args.raremed_pretrain}"]
    base += ["--distilled"] * ("distilled" in models and args.teacher is not None)
    if args.dry_run:
        base += ["--patients", "150"] + [x for kv in TINY_SETS for x in ("--set", kv)]
    else:
        base += ["--patients", str(args.coldstart_patients)]
    results = {}
    for i, seed in enumerate(seeds):
        js = work / "coldstart" / f"s{seed}.json"
        if not js.is_file():
            say(f"cold start, seed {seed}")
            argv = [*base, "--student-seed", str(seed), "--json", str(js)] + (["--reuse"] if i else [])
            (work / "logs").mkdir(exist_ok=True)
            with open(work / "logs" / f"coldstart_s{seed}.log", "w") as log:
                if subprocess.run(argv, stdout=log, stderr=subprocess.STDOUT, env=env(1)).returncode:
                    raise SystemExit(
                        f"error: bench_coldstart failed; see {work / 'logs' / f'coldstart_s{seed}.log'}"
                    )
        results[seed] = json.loads(js.read_text())
    parts = []
    for pop in next(iter(results.values()))["scores"]:
        per: dict = {}
        for res in results.values():
            for label, m in res["scores"][pop].items():
                per.setdefault(label, []).append(m)
        rows = [
            [label, ms[0]["n"], *[pm([m[k] for m in ms], 4) for k in ("prauc", "jaccard", "f1")]]
            for label, ms in per.items()
        ]
        parts.append(f"### {pop}\n\n" + markdown_table(["model", "patients", "PRAUC", "Jaccard", "F1"], rows))
    return "\n\n".join(parts), results


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--data", type=Path, default=A21K, help="artifact folder (read only); default the ~21k set"
    )
    ap.add_argument(
        "--work", type=Path, default=None, help="default benchmarks/out/field (dry run: field_dry)"
    )
    ap.add_argument("--seeds", default="42,2,3", help="student.seed values")
    ap.add_argument("--models", default=",".join(MODELS), help=f"comma list of {', '.join(MODELS)}")
    ap.add_argument("--teacher", default=None, help="teacher run to distill from, or 'train' (one, here)")
    ap.add_argument("--epochs", type=int, default=None, help="student.epochs of every model (default 10)")
    ap.add_argument("--patience", type=int, default=None, help="student.patience (default 5)")
    ap.add_argument(
        "--raremed-pretrain", type=int, default=None, help="raremed.pretrain_epochs (CPU budget; default 2)"
    )
    ap.add_argument(
        "--lr-scales", default="1", help="learning-rate grid: multiples of each model's default lr (e.g. 1,8)"
    )
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        dest="sets",
        help="KEY=VALUE for every training command still to run (e.g. a RAREMed width); recorded in the budget",
    )
    ap.add_argument("--parallel", type=int, default=2, help="training commands at a time (one thread each)")
    ap.add_argument(
        "--report-only",
        action="store_true",
        help="train nothing: report the runs that exist (grid points too)",
    )
    ap.add_argument("--coldstart", action="store_true", help="also bench_coldstart.py's population, per seed")
    ap.add_argument("--coldstart-patients", type=int, default=4000)
    ap.add_argument(
        "--dry-run", action="store_true", help="tiny artifact and models, 2 seeds, 2 epochs, teacher"
    )
    args = ap.parse_args(argv)
    dry = args.dry_run
    if dry:  # the tests' tiny artifact, tiny models, a tiny random LLaMA teacher
        args.seeds = args.seeds if args.seeds != "42,2,3" else "42,2"
        args.teacher = args.teacher or "train"
    args.epochs = args.epochs or (2 if dry else 10)
    args.patience = args.patience or (2 if dry else 5)
    args.raremed_pretrain = args.raremed_pretrain if args.raremed_pretrain is not None else (1 if dry else 2)
    work = (args.work or HERE / "out" / ("field_dry" if dry else "field")).resolve()
    seeds = [int(s) for s in args.seeds.split(",") if s]
    args.scales = sorted({float(x) for x in args.lr_scales.split(",") if x} | {1.0})
    models = [m for m in args.models.split(",") if m]
    unknown = sorted(set(models) - set(MODELS))
    if unknown:
        raise SystemExit(f"error: --models {','.join(unknown)} unknown; choose from {','.join(MODELS)}")
    if "distilled" in models and args.teacher is None:
        say("note: no --teacher: distilled (LEADER(S)) and the teacher are left out")
        models.remove("distilled")
    work.mkdir(parents=True, exist_ok=True)
    (work / "logs").mkdir(exist_ok=True)
    data = args.data
    if dry:
        sys.path.insert(0, str(REPO / "tests"))
        from synthetic import make_synthetic_artifact

        data = work / "data" / "mimic3"
        if not (data / "manifest.json").is_file():
            shutil.rmtree(data, ignore_errors=True)
            make_synthetic_artifact(data, n_patients=120)
    t0 = time.perf_counter()
    cfg = write_config(work, data.resolve(), args, dry)
    # the training commands' times of earlier calls on this work folder (their runs are kept, so are their times)
    old = work / "field.json"
    times: dict = json.loads(old.read_text()).get("times", {}) if old.is_file() else {}
    teacher = teacher_run(work, cfg, args.teacher, times)
    if not args.report_only:
        times |= train(work, jobs_for(work, cfg, seeds, models, teacher, args), args.parallel)
    chosen = choose(work, seeds, models, args.scales)
    grid = "" if args.scales == [1.0] else "-lrx" + "-".join(f"{x:g}" for x in args.scales)
    reports = {
        s: report(work, cfg, s, seed_runs(work, s, models, teacher, chosen), f"s{s}{grid}") for s in seeds
    }
    agg = collect(reports)
    budget = (
        f"{args.data if not dry else 'tiny synthetic artifact'}; seeds {seeds}; student.epochs {args.epochs}, "
        f"patience {args.patience}, batch {'8' if dry else '64'} for every model; raremed.pretrain_epochs "
        f"{args.raremed_pretrain} (CPU budget; the authors: 20); one torch thread per command, {args.parallel} "
        f"at a time; inference at one thread, batch 32 (report.latency_batch_size); "
        + (f"--set {', '.join(args.sets)} (given to the training commands); " if args.sets else "")
        + "learning rates: "
        + (
            "each model's default"
            if args.scales == [1.0]
            else f"the grid ×{', ×'.join(f'{x:g}' for x in args.scales)} of each model's default for every "
            "model, the best validation PRAUC per seed reported"
        )
    )
    md = f"## LEADER against the field\n\n{budget}.\n\n" + tables(agg, reports, times, chosen)
    if args.scales != [1.0]:
        md += "\n\n### Learning-rate grid (validation)\n\n" + grid_table(chosen, models, args.scales)
    cold = None
    if args.coldstart:
        cold_md, cold = coldstart(work, seeds, models, args)
        md += "\n\n## Cold start (bench_coldstart.py's population)\n\n" + cold_md
    elapsed = round(time.perf_counter() - t0, 1)
    md += f"\n\n{machine()['date']}, load {machine()['load_avg_1m']}, {elapsed} s in all.\n"
    print(md)
    (work / "field.md").write_text(md)
    payload = {
        "machine": machine(),
        "budget": budget,
        "options": {k: str(v) for k, v in vars(args).items()},
        "times": times,
        "per_seed": {
            kind: {(k if isinstance(k, str) else ".".join(k)): v for k, v in e.items()}
            for kind, e in agg.items()
        },
        "reports": {s: r["table"] for s, r in reports.items()},
        "lr_grid": {
            "scales": args.scales,
            "default_lr": {m: default_lr(m) for m in models if m != "popularity"},
            "chosen": {
                s: {m: {"scale": c["scale"], "val_prauc": c["val"]} for m, c in per.items()}
                for s, per in chosen.items()
            },
        },
        "coldstart": cold,
        "elapsed_s": elapsed,
    }
    (work / "field.json").write_text(json.dumps(payload, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
