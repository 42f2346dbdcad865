"""The report's calibration section (issue 24 item 4): do a run's scores mean probabilities?

Per run, pooled over every test patient–drug pair (`leadercli.calibration`): the expected calibration error (10
equal-width score bins) and the Brier score, overall and per patient group, and whether the run's scores went
through its calibrator (`calibration.json`, temperature scaling fitted on the validation split). The reliability
diagram itself is `plots.plot_reliability`.
"""

from __future__ import annotations


def calibration_rows(report: dict) -> tuple[list[str], list[list[str]]]:
    """One row per run: calibrated by, ECE and Brier overall, ECE per group."""
    header = ["run", "scores", "ECE", "Brier", "ECE single", "ECE multi"]
    rows = []
    for r in report["runs"]:
        c = r.get("calibration")
        if not c:
            continue
        cal = r.get("calibrator")
        how = f"temperature {cal['temperature']:.3g}" if cal else "raw"
        g = c.get("groups", {})
        per_group = [f"{g[n]['ece']:.4f}" if n in g else "—" for n in ("single", "multi")]
        rows.append([r["name"], how, f"{c['ece']:.4f}", f"{c['brier']:.4f}", *per_group])
    return header, rows


def calibration_blocks(report: dict) -> list[tuple]:
    """The section's blocks for `render.blocks` (none when no run has calibration numbers)."""
    header, rows = calibration_rows(report)
    if not rows:
        return []
    return [
        ("h2", "Calibration"),
        (
            "p",
            "Does a score of 0.7 mean that 7 in 10 such patients got the drug? ECE: the mean gap between the "
            "score and the observed frequency over 10 equal-width score bins, weighted by the pairs in each bin; "
            "Brier: the mean squared gap between score and outcome; both pooled over all test patient–drug pairs, "
            "lower is better. 'temperature T': the run's scores pass through its calibrator (fitted on the "
            "validation split after training); 'raw': the model's own scores.",
        ),
        ("table", header, rows),
    ]
