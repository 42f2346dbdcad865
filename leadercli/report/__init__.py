"""`leader report`: runs (or a predictions file) → metrics.json, report.md, report.html and PNG plots.

One module per job; none prints (the command, `cli/report.py`, prints the tables):
- `score_runs`        — run folders → scores on the test split, latency best-of-k with the machine recorded,
  the popularity floor (fitted on the training split when no popularity run is given) → report dict.
- `score_predictions` — a `leader predict` file → the same report dict.
- `evaluate`          — metrics of scored runs: per group with bootstrap intervals (n of n with replacement),
  small groups flagged, paired comparison with the best run and the floor, over-prediction, DDI trade-off.
- `write`             — JSON-safe conversion and the atomic write of the report folder.
- `build`             — score + write in one call (`build_report`, `report_from_predictions`).
- `render`            — report.md / report.html blocks and the text rows of the terminal tables.
- `plots`             — matplotlib figures (Agg backend, one figure per PNG file) drawn from the report dict.
"""

from leadercli.report.build import build_report, report_from_predictions

__all__ = ["build_report", "report_from_predictions"]
