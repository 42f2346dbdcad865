"""`leader demo`: the whole chain on the bundled MIMIC-III demo with the bundled MiniLM teacher backbone —
preprocess → train teacher → distill → train student (no KD) → train two of the field's models (RETAIN,
GAMENet: `FIELD`) → predict → report (the paper's table: LEADER against the field) — on a laptop CPU.

Settings from `leader.toml` (and `LEADER_*`) apply; `--workdir DIR` runs everything inside DIR.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from leadercli import console
from leadercli.settings import Settings

FIELD = (
    "retain",
    "gamenet",
)  # the field's models the demo trains beside LEADER (`leader train student --model`)
# The bundled demo has about 65 training patients: at the default batch of 64 an epoch is one or two steps, and the
# models need several times the epochs (and validations) to converge. The demo trains every model at the
# reference's batch 16 and lr 5e-4 (the defaults until 2026-12-07), unless the user's settings name them.
SMALL_DATA = {"batch_size": 16, "lr": 5e-4}


def small_data(settings: Settings) -> Settings:
    """`SMALL_DATA` into `settings.student` (in place), except what the user's settings name."""
    for key, value in SMALL_DATA.items():
        if key not in settings.student.model_fields_set:
            setattr(settings.student, key, value)
    return settings


def run_demo(settings: Settings, workdir: Path | None = None) -> dict:
    # the recipes, predict and report load torch/transformers: imported at call time so demo.py stays light
    from leadercli.data.preprocess import preprocess, print_summary
    from leadercli.predict import predict_file
    from leadercli.report.build import build_report
    from leadercli.training.distill import distill
    from leadercli.training.student import train_student
    from leadercli.training.teacher import train_teacher  # transformers/peft: the teacher recipe

    if workdir is not None:
        Path(workdir).mkdir(parents=True, exist_ok=True)
        os.chdir(workdir)
    small_data(settings)
    times: dict[str, float] = {}

    def stage(name: str, fn):
        console.err.rule(f"[bold]{name}")
        t = time.perf_counter()
        result = fn()
        times[name] = time.perf_counter() - t
        return result

    result = stage("1/7 preprocess", lambda: preprocess(settings))
    print_summary(result)
    settings.paths.artifact = result.path
    stage("2/7 train teacher", lambda: train_teacher(settings))
    stage("3/7 distill", lambda: distill(settings))
    student = settings.model_copy(deep=True)
    student.student.model = "student"
    stage("4/7 train student (no KD)", lambda: train_student(student))
    field = []  # beside the student's run folder: runs/retain, runs/gamenet
    for name in FIELD:
        run = settings.model_copy(deep=True)
        run.student.model = name
        run.paths.student = Path(settings.paths.student).parent / name
        field.append(run)
    stage(f"5/7 train {', '.join(FIELD)}", lambda: [train_student(run) for run in field])
    recs = Path("recs.csv")
    settings.predict.model = Path(settings.paths.distilled)
    visits = settings.artifact_dir() / "visits.parquet"
    stage("6/7 predict", lambda: predict_file(settings, visits, recs))
    runs_ = [Path(settings.paths.teacher), Path(settings.paths.distilled), Path(settings.paths.student)]
    runs_ += [Path(run.paths.student) for run in field]
    stage("7/7 report", lambda: build_report(settings, runs_))
    total = sum(times.values())
    parts = ", ".join(f"{name.split(maxsplit=1)[1]} {sec:.0f} s" for name, sec in times.items())
    console.out.print(
        "\n[bold green]demo finished[/bold green] in "
        f"{total:.0f} s ({parts})\n"
        f"  report:      {Path(settings.paths.report).resolve() / 'report.html'}\n"
        f"  predictions: {recs.resolve()}\n"
        f"  runs:        {', '.join(str(p) for p in runs_)}",
        highlight=False,
    )
    return {"times": times, "report": Path(settings.paths.report), "predictions": recs}
