"""Shared helpers of the benchmark scripts: run a command, measure its wall time and peak RSS, print tables.

Peak RSS comes from GNU `/usr/bin/time -v` ("Maximum resident set size") when it is installed, else from a
small Python wrapper that runs the command and reads `resource.getrusage(RUSAGE_CHILDREN).ru_maxrss` (the
largest RSS of the command and of the children it waited for). Both count the whole process tree's largest
single process, not a sum. Used by bench_preprocess.py and bench_predict.py (issue 2 "Speed and memory",
issue 3 "Speed").
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

GNU_TIME = Path("/usr/bin/time")
GIB = 1024**3

# runs argv[2:], then writes the peak RSS of that child (KiB on Linux, bytes on macOS) to argv[1]
_WRAPPER = (
    "import resource, subprocess, sys\n"
    "rc = subprocess.call(sys.argv[2:])\n"
    "rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss\n"
    "rss = rss if sys.platform == 'darwin' else rss * 1024\n"
    "open(sys.argv[1], 'w').write(str(rss))\n"
    "sys.exit(rc)\n"
)


@dataclass
class Measurement:
    """One measured command."""

    cmd: list[str]
    wall_s: float
    peak_rss_bytes: int
    returncode: int
    log: str | None = None
    extra: dict = field(default_factory=dict)

    @property
    def peak_rss_gib(self) -> float:
        return self.peak_rss_bytes / GIB

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def to_json(self) -> dict:
        return asdict(self) | {"peak_rss_gib": round(self.peak_rss_gib, 3)}


def measure(
    cmd: list[str], *, log: Path | None = None, env: dict | None = None, cwd: Path | None = None
) -> Measurement:
    """Run `cmd` to completion (stdout and stderr into `log`) and measure wall time and peak RSS."""
    with tempfile.TemporaryDirectory() as tmp:
        stats = Path(tmp) / "stats"
        if GNU_TIME.is_file() and os.access(GNU_TIME, os.X_OK):
            full = [str(GNU_TIME), "-v", "-o", str(stats), *cmd]
        else:
            full = [sys.executable, "-c", _WRAPPER, str(stats), *cmd]
        out = open(log, "wb") if log else subprocess.DEVNULL  # noqa: SIM115 - closed below
        try:
            t0 = time.perf_counter()
            rc = subprocess.call(full, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=cwd)
            wall = time.perf_counter() - t0
        finally:
            if log:
                out.close()
        rss = _peak_rss(stats.read_text()) if stats.is_file() else 0
    return Measurement(list(map(str, cmd)), round(wall, 3), rss, rc, str(log) if log else None)


def _peak_rss(text: str) -> int:
    """Bytes from `/usr/bin/time -v` output ("Maximum resident set size (kbytes): N") or the wrapper's number."""
    for line in text.splitlines():
        if "Maximum resident set size" in line:
            return int(line.rsplit(":", 1)[1]) * 1024
    text = text.strip()
    return int(text) if text.isdigit() else 0


def leader_command() -> list[str]:
    """The `leader` entry point of this interpreter's environment, else `python -m leadercli`."""
    exe = Path(sys.executable).parent / "leader"
    if exe.is_file():
        return [str(exe)]
    found = shutil.which("leader")
    return [found] if found else [sys.executable, "-m", "leadercli"]


def tail(path: str | Path | None, lines: int = 15) -> str:
    if not path or not Path(path).is_file():
        return ""
    return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])


def markdown_table(headers: list[str], rows: list[list[object]]) -> str:
    """A GitHub markdown table; numbers right-aligned."""

    def cell(v: object) -> str:
        if isinstance(v, float):
            return f"{v:,.2f}" if abs(v) < 1e5 else f"{v:,.0f}"
        if isinstance(v, int):
            return f"{v:,}"
        return str(v)

    numeric = [
        all(isinstance(r[i], int | float) for r in rows) if rows else False for i in range(len(headers))
    ]
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---:" if n else "---" for n in numeric) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in r) + " |" for r in rows]
    return "\n".join(lines)


def pm(values: list, digits: int = 4, empty: str = "—") -> str:
    """mean ± sample std (ddof 1) over seeds, `digits` decimals; one value without ±; `empty` when there is none
    (None values are left out)."""
    import numpy as np

    vals = [v for v in values if v is not None]
    if not vals:
        return empty
    f = f",.{digits}f"
    if len(vals) == 1:
        return f"{vals[0]:{f}}"
    return f"{np.mean(vals):{f}} ± {np.std(vals, ddof=1):{f}}"


def machine() -> dict:
    """Where a number was measured (the README and the JSON record it next to each result)."""
    import polars as pl

    return {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpus": os.cpu_count(),
        "load_avg_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "polars": pl.__version__,
    }


def write_json(path: Path | None, payload: dict) -> None:
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n")


def load1() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


def timed(cmd: list[str], env: dict, log: Path, cwd: Path | None = None) -> dict:
    """Wall, CPU (user + sys) and peak RSS of `cmd` from GNU time, with the load before and after. `cwd`: the
    tree to run `python -m leadercli` in (its folder comes first on sys.path, before PYTHONPATH)."""
    with tempfile.NamedTemporaryFile("r", suffix=".time") as stats:
        before = load1()
        t0 = time.perf_counter()
        with open(log, "wb") as out:
            rc = subprocess.call(
                ["/usr/bin/time", "-f", "%e %U %S %M", "-o", stats.name, *cmd],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=cwd,
            )
        wall = time.perf_counter() - t0
        parts = Path(stats.name).read_text().split()[-4:]
    _, user, sys_s, rss_kib = (float(p) for p in parts)
    return {
        "rc": rc,
        "wall_s": round(wall, 2),
        "cpu_s": round(user + sys_s, 2),
        "peak_rss_gib": round(rss_kib / 2**20, 3),
        "load_before": before,
        "load_after": load1(),
    }
