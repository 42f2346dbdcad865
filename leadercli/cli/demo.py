"""`leader demo`: the whole chain on the bundled sample data."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from leadercli.cli.common import ConfigOpt, DebugOpt, LeaderCommand, QuietOpt, SetOpt, examples, load, run


def register(app: typer.Typer) -> None:
    app.command(
        "demo", cls=LeaderCommand, epilog=examples("leader demo", "leader demo --workdir /tmp/leader-demo")
    )(demo)


def demo(
    workdir: Annotated[
        Path | None,
        typer.Option("--workdir", help="Where data/, runs/ and report/ go. Default: the settings' paths."),
    ] = None,
    sets: SetOpt = None,
    config: ConfigOpt = None,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Run preprocess → train teacher → distill → train student → train RETAIN and GAMENet → predict → report on
    the bundled MIMIC-III demo with the bundled small teacher backbone (CPU, minutes), then print where the report
    and predictions are."""

    def body() -> None:
        from leadercli.demo import run_demo
        from leadercli.hardware import keep_freed_memory

        keep_freed_memory()  # this process ends with the command
        run_demo(load(config, sets), workdir=workdir)

    run(body, quiet=quiet, debug=debug)
