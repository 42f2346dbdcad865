"""`leader train student`: the student without a teacher, a baseline (popularity, previous visit), or one of
the field's models (RETAIN, GAMENet, MICRON, logistic regression, RAREMed)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from leadercli.cli.common import (
    ConfigOpt,
    DataOpt,
    DebugOpt,
    LeaderCommand,
    QuietOpt,
    ResumeOpt,
    SetOpt,
    examples,
    load,
    run,
)


def register(app: typer.Typer) -> None:
    app.command(
        cls=LeaderCommand,
        name="student",
        epilog=examples(
            "leader train student",
            "leader train student --data data/mimic4 --out runs/student-m4",
            "leader train student --model popularity --out runs/popularity",
            "leader train student --model previous --out runs/previous",
            "leader train student --model gamenet --out runs/gamenet",
        ),
    )(train_student)


def train_student(
    data: DataOpt = None,
    model: Annotated[
        str | None,
        typer.Option(
            "--model",
            help="student (default), popularity (most frequent drugs), previous (last visit's drugs), or a "
            "field model: retain, gamenet, micron, logreg, raremed (settings sections of the same name).",
        ),
    ] = None,
    out: Annotated[Path | None, typer.Option("--out", help="Run folder. Default: runs/student.")] = None,
    resume: ResumeOpt = False,
    sets: SetOpt = None,
    config: ConfigOpt = None,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Train the LEADER student on the artifact without distillation (the paper's ablation, our fast path).

    Early stopping on validation PRAUC, decision threshold tuned on validation (unless fixed in settings),
    model.safetensors + manifest.json + train_log.jsonl in the run folder.
    """

    def body() -> None:
        from leadercli.runs import check_out_dir
        from leadercli.training.student import train_student as do_train

        settings = load(config, sets, paths={"artifact": data, "student": out}, student={"model": model})
        check_out_dir(
            settings.paths.student, {"artifact": settings.artifact_dir()}, command="train student"
        )  # before any work
        do_train(settings, resume=resume)

    run(body, quiet=quiet, debug=debug)
