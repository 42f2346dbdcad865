"""The `leader` command: this module only registers the commands (one module each)."""

from __future__ import annotations

import typer

from leadercli import __version__
from leadercli.cli import (
    config_cmd,
    demo,
    distill,
    export,
    predict,
    preprocess,
    report,
    train_student,
    train_teacher,
)
from leadercli.offline import set_offline

# the command modules import huggingface_hub / transformers only inside their bodies, so this comes first
set_offline()  # no network, no telemetry

app = typer.Typer(
    name="leader",
    help="LEADER medication recommendation: raw MIMIC tables in, ranked ATC-3 drug lists and honest metrics out.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
    add_completion=False,
)
train_app = typer.Typer(
    help="Train the LLM teacher or the student (without distillation).",
    no_args_is_help=True,
    rich_markup_mode="rich",
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"leader {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version."
    ),
) -> None:
    """LEADER medication recommendation: raw MIMIC tables in, ranked ATC-3 drug lists and honest metrics out."""


preprocess.register(app)
train_teacher.register(train_app)
train_student.register(train_app)
app.add_typer(train_app, name="train")
distill.register(app)
predict.register(app)
report.register(app)
export.register(app)
demo.register(app)
config_cmd.register(app)
