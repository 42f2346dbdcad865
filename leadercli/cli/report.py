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
            "leader report --predictions recs.csv -o report-recs/",
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
    predictions: Annotated[
        Path | None,
        typer.Option(
            "--predictions",
            help="Evaluate a `leader predict` file (CSV or parquet) against the artifact's test split instead of "
            "run folders. Example: --predictions recs.csv",
        ),
    ] = None,
    config: ConfigOpt = None,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Evaluate runs on the artifact's test split: PRAUC, Jaccard, F1, DDI rate, #drugs per group (overall,
    single-visit, multi-visit) with bootstrap mean ± std, plus parameters and inference speed.

    Writes metrics.json, report.md, report.html (self-contained, plots inline) and the plots as PNG files to
    the report folder, replacing an old report only when the new one is complete. With --predictions, a file
    written by `leader predict` is scored against the true drugs instead (drugs outside its top-k score 0).
    """

    def body() -> None:
        from leadercli.errors import SettingsError
        from leadercli.report.build import build_report, report_from_predictions

        settings = load(config, paths={"artifact": data, "report": out})
        if predictions is not None:
            if runs:
                raise SettingsError(
                    "pass either run folders or --predictions, not both", "Make two reports with -o"
                )
            report_from_predictions(settings, predictions, output_format=format)
        else:
            build_report(settings, runs or [], output_format=format)

    run(body, quiet=quiet or format == "json", debug=debug)
