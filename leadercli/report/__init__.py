"""`leader report`: runs (or a predictions file) → metrics.json, report.md, report.html and PNG plots.

- `build`  — resolve runs and artifact, score the test split, metrics per group with bootstrap mean ± std
  (DESIGN §5, leader-reference.md §5), efficiency (parameters, latency, throughput), atomic write, stdout.
- `plots`  — matplotlib figures (Agg backend, one figure per PNG file) drawn from the report dict.
- `render` — report.md (PNGs beside it) and a self-contained report.html (inline CSS, images as data: URIs).
"""

from leadercli.report.build import build_report, report_from_predictions

__all__ = ["build_report", "report_from_predictions"]
