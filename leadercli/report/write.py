"""Write a report dict to its folder: metrics.json, report.md, report.html and the PNG plots.

Everything goes to a temporary sibling folder first, which replaces the old report only when complete; a
folder that is not a report is never replaced. No printing: the caller says what was written.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from leadercli import runs
from leadercli.errors import SettingsError
from leadercli.modes import fix_dir
from leadercli.report import plots, render

REPORT_FILES = ("metrics.json", "report.md", "report.html")


def jsonable(obj: Any) -> Any:
    """numpy → Python; non-finite floats → None (strict JSON)."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    if isinstance(obj, (np.floating, float)):
        return float(obj) if math.isfinite(float(obj)) else None
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    return obj


def _looks_like_report(path: Path) -> bool:
    return not any(path.iterdir()) or any((path / f).is_file() for f in REPORT_FILES)


def check_out_dir(out: Path) -> None:
    """SettingsError when `out` exists and is not a report folder (checked before any scoring)."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or not _looks_like_report(out)):
        raise SettingsError(
            f"report folder {out} exists and is not a report folder (no metrics.json/report.md/report.html)",
            "Pick an empty or new folder with -o",
        )


def write_report_folder(report: dict, out: Path) -> dict:
    """Write the report (JSON-safe copy returned) to `out`, replacing an old report only when complete."""
    report = jsonable(report)
    out = Path(out)
    check_out_dir(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    fix_dir(tmp)  # mkdtemp makes 0700: give it the umask's mode
    try:
        figures = plots.write_plots(report, tmp)
        runs.write_json(tmp / "metrics.json", report)
        (tmp / "report.md").write_text(render.markdown(report, figures))
        (tmp / "report.html").write_text(render.html(report, figures, tmp))
        old = None
        if out.exists():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            os.rename(out, old)
        try:
            os.rename(tmp, out)
        except OSError:
            if old is not None:
                os.rename(old, out)
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return report
