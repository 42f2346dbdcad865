"""`leader report` in one call: score (runs or a predictions file), then write the report folder.

Used by `cli/report.py` and the demo; neither function prints (progress lines go to `log`), both return the
JSON-safe report dict (the content of metrics.json) with "output" added.
"""

from __future__ import annotations

from pathlib import Path

from leadercli.report.score_predictions import score_predictions
from leadercli.report.score_runs import Log, score_runs
from leadercli.report.write import check_out_dir, write_report_folder


def build_report(settings, run_dirs: list[Path], log: Log | None = None) -> dict:
    """Evaluate runs (and the popularity floor) on the test split; write `settings.paths.report`."""
    out = Path(settings.paths.report)
    check_out_dir(out)  # before minutes of scoring
    report = write_report_folder(score_runs(settings, run_dirs, log), out)
    report["output"] = str(out)
    return report


def report_from_predictions(
    settings, predictions_path: Path, name: str | None = None, log: Log | None = None
) -> dict:
    """Evaluate a `leader predict` file (and the popularity floor); write `settings.paths.report`."""
    out = Path(settings.paths.report)
    check_out_dir(out)
    report = write_report_folder(score_predictions(settings, predictions_path, name, log), out)
    report["output"] = str(out)
    return report
