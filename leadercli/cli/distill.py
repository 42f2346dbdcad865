"""`leader distill`: the student trained with KD from the teacher (its features or its drug probabilities) and profile alignment."""

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
        name="distill",
        epilog=examples(
            "leader distill",
            "leader distill --teacher runs/teacher --out runs/distilled",
            "leader distill --no-align --out runs/kd-only",
            "leader distill --no-kd --out runs/align-only",
        ),
    )(distill)


def distill(
    data: DataOpt = None,
    teacher: Annotated[
        Path | None, typer.Option("--teacher", help="Teacher run folder. Default: runs/teacher.")
    ] = None,
    out: Annotated[Path | None, typer.Option("--out", help="Run folder. Default: runs/distilled.")] = None,
    no_kd: Annotated[bool, typer.Option("--no-kd", help="Switch the distillation (KD) term off.")] = False,
    no_align: Annotated[
        bool, typer.Option("--no-align", help="Switch the profile-alignment term off.")
    ] = False,
    resume: ResumeOpt = False,
    sets: SetOpt = None,
    config: ConfigOpt = None,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Train the student with loss = BCE + α·MSE(projector(z), teacher feature) + β·contrastive(profile, drugs).

    Teacher features come from the teacher run's cache (computed first when missing or from another backbone).
    With --no-kd and --no-align the run is exactly `leader train student`.
    """

    def body() -> None:
        from leadercli.cli import checks

        settings = load(
            config,
            sets,
            paths={"artifact": data, "teacher": teacher, "distilled": out},
            distill={"kd": False if no_kd else None, "align": False if no_align else None},
        )
        if settings.distill.kd:  # the features come from the teacher run: check it before any import
            checks.run_folder(
                settings.paths.teacher,
                "--teacher",
                ("teacher",),
                "`leader train teacher` (or pass --teacher RUN_DIR)",
            )
        from leadercli.runs import check_out_dir
        from leadercli.training.distill import distill as do_distill

        protected = {"artifact": settings.artifact_dir(), "teacher run": settings.paths.teacher}
        check_out_dir(settings.paths.distilled, protected, command="distill")  # before any work
        if settings.distill.kd:  # features missing → the teacher is loaded: its adapter files, before peft
            from leadercli.runs import check_teacher_files

            check_teacher_files(settings.paths.teacher, {})
        do_distill(settings, resume=resume)

    run(body, quiet=quiet, debug=debug)
