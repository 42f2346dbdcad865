"""`leader report`: evaluate runs on the test split → metrics.json, report.md, report.html; tables on stdout.

Run it small on CPU:  leader train student && leader report
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from leadercli.cli.common import (
    ConfigOpt,
    DataOpt,
    DebugOpt,
    LeaderCommand,
    QuietOpt,
    SetOpt,
    examples,
    load,
    run,
)

FORMATS = ("table", "json")


def register(app: typer.Typer) -> None:
    app.command(
        cls=LeaderCommand,
        name="report",
        epilog=examples(
            "leader report",
            "leader report runs/teacher runs/student runs/distilled -o report/",
            "leader report runs/distilled runs/student runs/retain runs/gamenet runs/popularity",
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
    format: Annotated[str, typer.Option("--format", help="table (tables on stdout) or json.")] = "table",
    predictions: Annotated[
        Path | None,
        typer.Option(
            "--predictions",
            help="Evaluate a `leader predict` file (CSV or parquet) against the artifact's test split instead of "
            "run folders. Example: --predictions recs.csv",
        ),
    ] = None,
    sets: SetOpt = None,
    config: ConfigOpt = None,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Evaluate runs on the artifact's test split: PRAUC, Jaccard, F1, DDI rate, #drugs per group (overall,
    single-visit, multi-visit) with bootstrap mean ± std, plus parameters and inference speed.

    Over LEADER's runs, the field's models (`train student --model retain|gamenet|micron|logreg|raremed`) and
    popularity it writes the paper's table: one row per model, every metric per group with its interval, the
    paired difference of PRAUC to the best baseline, parameters, training time, patients/s, and how each model
    treats a patient without history.

    Every metric comes with a 95 % bootstrap interval (1,000 resamples of the test patients with replacement);
    each run is compared with the best one by a paired bootstrap, and with the popularity floor (fitted on the
    training split when no popularity run is given): runs that do not beat it are marked. Also: the
    accuracy–DDI trade-off for at most N = 0, 1, 2, ∞ interacting pairs, and latency (best of k) with the
    threads, CPU and load recorded.

    Writes metrics.json, report.md, report.html (self-contained, plots inline) and the plots as PNG files to
    the report folder, replacing an old report only when the new one is complete. With --predictions, a file
    written by `leader predict` is scored against the true drugs instead (drugs absent from it score 0).
    """

    def body() -> None:
        from leadercli import console
        from leadercli.errors import SettingsError

        if format not in FORMATS:
            raise SettingsError(f"--format {format!r} is not known", "Use --format table or --format json")
        if predictions is not None and runs:
            raise SettingsError(
                "pass either run folders or --predictions, not both", "Make two reports with -o"
            )
        from leadercli.report.build import build_report, report_from_predictions

        settings = load(config, sets, paths={"artifact": data, "report": out})
        from leadercli.paths import check_free_space, check_writable_dir

        check_writable_dir(settings.paths.report, "report folder", "Choose another -o")  # before any scoring
        check_free_space(settings.paths.report, 0, "report folder")
        from leadercli.hardware import keep_freed_memory

        keep_freed_memory()  # this process ends with the command
        if predictions is not None:
            result = report_from_predictions(settings, predictions, log=console.info)
        else:
            result = build_report(settings, runs or [], log=console.info)
        if format == "json":
            text = json.dumps({k: v for k, v in result.items() if k != "output"}, indent=2, allow_nan=False)
            console.out.file.write(text + "\n")
            console.out.file.flush()
        else:
            print_tables(result)

    run(body, quiet=quiet or format == "json", debug=debug)


def _table(title: str, header: list[str], rows: list[list[str]], left: int = 1, tight: bool = False):
    """A rich table; `tight`: one space of padding (right) instead of two, for the paper's table's 7 columns."""
    from rich import box
    from rich.table import Table

    padding = (0, 1, 0, 0) if tight else (0, 1)
    t = Table(
        title=title,
        title_justify="left",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        padding=padding,
        show_edge=not tight,
    )
    for i, h in enumerate(header):
        t.add_column(h, justify="left" if i < left else "right", overflow="fold")
    for r in rows:
        t.add_row(*r)
    return t


CARDS_UP_TO = 4  # runs; with more, the per-run metric cards (mean ± std) are left to report.md


def print_tables(report: dict) -> None:
    """The report on stdout, stacked so that it reads at 80 columns: a summary of the runs; the paper's table
    (one block per patient group: PRAUC and Δ PRAUC to the best baseline with their intervals, the other
    metrics as points; then parameters, training time, patients/s, and how each model treats a patient
    without history); one metrics card per run (groups across, mean ± std over the 95 % interval) when there
    are at most CARDS_UP_TO runs; the DDI trade-off; the machine; call-outs."""
    from leadercli import console
    from leadercli.report import rows, table

    out = console.out

    def line(text: str) -> None:
        out.print(text, highlight=False, soft_wrap=False)  # prose wraps at the console width, as tables do

    s, b = report["samples"], report["bootstrap"]
    line(
        f"Test split: {s['n']} patients; bootstrap 95 % intervals, {b['rounds']} resamples of n of n with "
        "replacement; paired bootstrap against the best run, the best baseline and the popularity floor."
    )
    out.print(
        _table(
            "Runs compared (overall PRAUC on the whole split)", *rows.summary_rows(report, with_kind=False)
        )
    )
    eff = report.get("efficiency") or {}
    for title, header, body in table.terminal_tables(report):
        if title.startswith("Cost") and eff:
            threads = (eff.get("machine") or {}).get("torch_threads")
            title += f" on {eff['device']}, {threads} threads, batch {eff['batch_size']}"
        out.print()  # the tight tables have no blank edge line
        out.print(_table(title, header, body, tight=True))
    best = (report.get("table") or {}).get("best_baseline")
    if best:
        line(f"Best baseline: {best}. Every metric's interval: report.md.")
    header, body = table.history_rows(report)
    if body:
        out.print(_table("How each model treats a patient without history", header, body, left=2))
    if len(report["runs"]) <= CARDS_UP_TO:
        for entry in report["runs"]:
            th = entry["threshold"]
            title = f"{rows.run_label(entry)} ({entry['kind']}) — threshold {th['value']:.4g}, {th['how']}"
            out.print(_table(title, *rows.run_card(report, entry)))
    else:
        line(f"Per-run metric cards (mean ± std, {len(report['runs'])} runs) and thresholds: report.md.")
    header, body = rows.ddi_rows(report)
    if body:
        out.print(
            _table("Accuracy–DDI trade-off (at most N interacting pairs; ∞ = no cap)", header, body, left=2)
        )
    machine = rows.machine_line(report)
    if machine:
        line(machine)
    for note in rows.notes(report):
        line(f"- {note}")
    if b.get("ignored"):
        line(f"- {b['ignored']}.")
    line(f"report written to {report['output']}/ (metrics.json, report.md, report.html, plots)")
