"""`leader train teacher`: LLM backbone + LoRA + drug-classification head; caches teacher features."""

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
        name="teacher",
        epilog=examples(
            "leader train teacher",
            "leader train teacher --data data/mimic4 --base-model /models/llama-7b --out runs/teacher-llama",
            "accelerate launch -m leadercli train teacher --base-model /models/llama-7b",
            "torchrun --nproc_per_node 2 -m leadercli train teacher --max-steps 20",
        ),
    )(train_teacher)


def train_teacher(
    data: DataOpt = None,
    base_model: Annotated[
        str | None,
        typer.Option(
            "--base-model", help="Backbone folder (HF format, safetensors). Default: the bundled MiniLM-L6."
        ),
    ] = None,
    out: Annotated[Path | None, typer.Option("--out", help="Run folder. Default: runs/teacher.")] = None,
    max_steps: Annotated[
        int | None, typer.Option("--max-steps", help="Optimizer steps (overrides epochs).")
    ] = None,
    resume: ResumeOpt = False,
    sets: SetOpt = None,
    config: ConfigOpt = None,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Fine-tune the LLM teacher (LoRA + Linear head, BCE) and cache its features for distillation.

    Runs on CPU, one GPU or several (launch with `accelerate launch` or `torchrun`). Writes the PEFT adapter,
    head.safetensors, manifest.json, the resolved settings and features/ (pooled hidden states of the training
    and validation patients, fp16 safetensors keyed by subject_id).
    """

    def body() -> None:
        from leadercli.cli import checks

        settings = load(
            config,
            sets,
            paths={"artifact": data, "teacher": out},
            teacher={"base_model": base_model, "max_steps": max_steps},
        )
        checks.base_model(settings.teacher.base_model)  # before the heavy imports
        from leadercli.runs import check_out_dir, teacher_out_bytes
        from leadercli.training.teacher import train_teacher as do_train

        protected = {"artifact": settings.artifact_dir()}
        if settings.teacher.base_model and Path(settings.teacher.base_model).exists():
            protected["base model"] = Path(settings.teacher.base_model)
        need = teacher_out_bytes(settings.artifact_dir(), settings.teacher.base_model)
        check_out_dir(
            settings.paths.teacher, protected, need=need, command="train teacher"
        )  # before any work
        from leadercli.hardware import keep_freed_memory

        keep_freed_memory()  # this process ends with the command (the frozen pass: −20 % CPU)
        do_train(settings, resume=resume)

    run(body, quiet=quiet, debug=debug)
