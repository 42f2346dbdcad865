"""`leader report`: evaluate runs on the test split → metrics.json, report.md, report.html."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from leadercli.cli.common import ConfigOpt, DataOpt, DebugOpt, QuietOpt, examples, load, run


def register(app: typer.Typer) -> None:
    app.command(
        "report",
        epilog=examples(
            "leader report",
            "leader report runs/teacher runs/student runs/distilled -o report/",
            "leader report runs/student --format json > metrics.json",
        ),
    )(report)


def report(
    runs: Annotated[
        list[Path] | None,
        typer.Argument(help="Run folders to evaluate. Default: every run folder in settings that exists."),
    ] = None,
    data: DataOpt = None,
    out: Annotated[
        Path | None, typer.Option("--output", "-o", help="Report folder. Default: report/.")
    ] = None,
    format: Annotated[str, typer.Option("--format", help="table (rich table on stdout) or json.")] = "table",
    config: ConfigOpt = None,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Evaluate runs on the artifact's test split: PRAUC, Jaccard, F1, DDI rate, #drugs per group (overall,
    single-visit, multi-visit) with bootstrap mean ± std, plus parameters and inference speed."""

    def body() -> None:
        from leadercli.report.build import build_report

        settings = load(config, paths={"artifact": data, "report": out})
        build_report(settings, runs or [], output_format=format)

    run(body, quiet=quiet or format == "json", debug=debug)
