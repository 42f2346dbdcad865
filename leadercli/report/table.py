"""The paper's table in `leader report RUN...`: LEADER(T), LEADER(S), the no-KD student, the field's models and
popularity side by side, one row per model (LEADER, arXiv 2402.02803: Table 2 for RQ1, the efficiency table of
RQ4).

Per model and patient group (overall, single-visit, multi-visit): PRAUC, Jaccard, F1, DDI rate and #drugs, each
the point value on the test split with its 95 % percentile bootstrap interval (`metrics.evaluate_groups`), and
the paired bootstrap difference of PRAUC to the best baseline (the best run of a kind that is not LEADER's on
overall PRAUC, `evaluate.compare`); then parameters, training time (the run's manifest: `training.seconds`, the
teacher's head start included), inference patients/s (`report/timing.py`) and how the model treats a patient
without history (the manifest's `training.no_history` for the field's models, `kinds.Kind.no_history` for the
others).

`table_block` is the JSON block (metrics.json "table", what `benchmarks/bench_field.py` reads); `blocks` gives
report.md / report.html one table per group and one of costs (a single table of 19 columns would not fit a
1280-px window); `terminal_tables` the same at 80 columns for `leader report`'s stdout. Pure: dicts in, strings
out.
"""

from __future__ import annotations

from leadercli import kinds

GROUPS = {"overall": "Overall", "single": "Single-visit patients", "multi": "Multi-visit patients"}
METRICS = (("prauc", "PRAUC", 4), ("jaccard", "Jaccard", 4), ("f1", "F1", 4), ("ddi_rate", "DDI rate", 4))
METRICS += (("avg_drugs", "#drugs", 2),)
DELTA = "Δ PRAUC vs best baseline"
GROUP_HEADER = ["Model", *[title for _, title, _ in METRICS], DELTA]  # one table per group
COST_HEADER = ["Model", "Parameters", "Training time", "Patients / s", "Without history"]
# row order: the baselines as the paper lists them, then LEADER's runs; a kind not listed comes before LEADER's
ORDER = ("popularity", "previous", "logreg", "retain", "gamenet", "micron", "raremed")
ORDER += ("student", "distilled", "teacher")
UNKNOWN_HISTORY = "not known (no manifest says)"


def training_seconds(kind: str, manifest: dict | None) -> float | None:
    """The run's training wall time from its manifest: `training.seconds` (the teacher's head start — frozen
    features and the linear probe — added), None for runs written before it was recorded."""
    tr = (manifest or {}).get("training") or {}
    if not isinstance(tr.get("seconds"), (int, float)):
        return None
    return float(tr["seconds"]) + (float(tr.get("head_seconds") or 0.0) if kind == "teacher" else 0.0)


def no_history(kind: str, manifest: dict | None) -> str:
    """How the run scores a patient without history: its manifest's `training.no_history` (the field's
    models), else its kind's row in `kinds`."""
    recorded = ((manifest or {}).get("training") or {}).get("no_history")
    if recorded:
        return str(recorded)
    row = kinds.BY_NAME.get(kind)
    return row.no_history if row is not None and row.no_history else UNKNOWN_HISTORY


def model_label(entry: dict) -> str:
    """The paper's name of the run's kind, with the run's name when it differs from the kind."""
    row = kinds.BY_NAME.get(entry["kind"])
    label = row.label if row is not None and row.label else entry["name"]
    return label if entry["name"] in (entry["kind"], label) else f"{label} ({entry['name']})"


def _interval(group: dict, key: str) -> dict | None:
    if not group.get("point"):
        return None
    boot = (group.get("bootstrap") or {}).get(key) or {}
    return {"value": group["point"][key], "lo": boot.get("lo"), "hi": boot.get("hi")}


def _row(entry: dict) -> dict:
    eff = entry.get("efficiency") or {}
    vb = entry.get("vs_baseline")
    return {
        "name": entry["name"],
        "model": model_label(entry),
        "kind": entry["kind"],
        "n": {g: entry["groups"][g]["n"] for g in GROUPS},
        "groups": {g: {k: _interval(entry["groups"][g], k) for k, _, _ in METRICS} for g in GROUPS},
        "vs_baseline": None
        if vb is None
        else {g: d["prauc"] for g, d in vb["groups"].items() if "prauc" in d},
        "parameters": (eff.get("parameters") or {}).get("total"),
        "training_seconds": entry.get("training_seconds"),
        "patients_per_s": eff.get("throughput_patients_per_s"),
        "no_history": entry.get("no_history") or no_history(entry["kind"], None),
    }


def table_block(entries: list[dict], comparison: dict) -> dict:
    """The report's "table": one row per entry in the paper's order, with what the rows mean."""
    rank = {k: i for i, k in enumerate(ORDER)}
    order = sorted(
        range(len(entries)), key=lambda i: (rank.get(entries[i]["kind"], ORDER.index("student") - 0.5), i)
    )
    return {
        "best_baseline": comparison.get("best_baseline"),
        "baseline_rule": comparison.get("baseline_rule"),
        "cells": "point value on the test split [95 % percentile bootstrap interval]",
        "training_time": "the run's manifest: epochs' training passes and validations (pre-training included; "
        "the teacher: its head start and fine-tuning steps; LEADER(S) without its teacher's)",
        "metrics": [k for k, _, _ in METRICS],
        "groups": list(GROUPS),
        "rows": [_row(entries[i]) for i in order],
    }


# -- text cells --------------------------------------------------------------------------------------------


def _cell(iv: dict | None, digits: int, two_lines: bool = False) -> str:
    if iv is None:
        return "—"
    if iv["lo"] is None:
        return f"{iv['value']:.{digits}f}"
    sep = "\n" if two_lines else " "
    return f"{iv['value']:.{digits}f}{sep}[{iv['lo']:.{digits}f}, {iv['hi']:.{digits}f}]"


def _delta(row: dict, group: str, digits: int, two_lines: bool = False) -> str:
    if row["vs_baseline"] is None:
        return "best baseline" if row["kind"] in kinds.TABLE_BASELINES else "—"
    d = row["vs_baseline"].get(group)
    if d is None:
        return "—"
    sep = "\n" if two_lines else " "
    return f"{d['diff']:+.{digits}f}{sep}[{d['lo']:+.{digits}f}, {d['hi']:+.{digits}f}]"


def duration(seconds: float | None) -> str:
    """12 s, 4.5 min, 2.1 h; — when unknown."""
    if seconds is None:
        return "—"
    if seconds < 90:
        return f"{seconds:.0f} s" if seconds >= 1 else f"{seconds:.2f} s"
    return f"{seconds / 60:.1f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


def _count(n, compact: bool = False) -> str:
    if n is None:
        return "—"
    if compact and n >= 1e6:
        return f"{n / 1e6:.1f}M"
    if compact and n >= 1e4:
        return f"{n / 1e3:.0f}k"
    return f"{n:,.0f}"


def group_rows(table: dict, group: str) -> tuple[list[str], list[list[str]]]:
    """(GROUP_HEADER, rows) of one patient group: every metric with its interval, Δ PRAUC with its interval."""
    rows = []
    for r in table["rows"]:
        cells = [_cell(r["groups"][group][k], d) for k, _, d in METRICS]
        rows.append([r["model"], *cells, _delta(r, group, 4)])
    return list(GROUP_HEADER), rows


def cost_rows(table: dict) -> tuple[list[str], list[list[str]]]:
    """(COST_HEADER, rows): parameters, training time, inference patients/s, the no-history treatment."""
    rows = [
        [
            r["model"],
            _count(r["parameters"]),
            duration(r["training_seconds"]),
            _count(r["patients_per_s"]),
            r["no_history"],
        ]
        for r in table["rows"]
    ]
    return list(COST_HEADER), rows


def blocks(report: dict) -> list[tuple]:
    """The table's section of report.md / report.html (the blocks of `render.blocks`); none without a table."""
    table = report.get("table")
    if not table or not table.get("rows"):
        return []
    best = table.get("best_baseline")
    out: list[tuple] = [("h2", "The paper's table: every model on every patient group")]
    out.append(
        (
            "p",
            f"Cells: {table['cells']}. {DELTA}: run − best baseline in the same group, paired bootstrap, "
            f"[95 % interval]. Best baseline: {best or 'none'} ({table['baseline_rule']}). The paper's RQ1 "
            "(accuracy) and RQ4 (efficiency).",
        )
    )
    s = report["samples"]["groups"]
    for g, title in GROUPS.items():
        header, rows = group_rows(table, g)
        n = s.get(g, 0)
        out.append(("h3", f"{title} ({n:,} patients)"))
        out.append(("table", header, rows) if n else ("p", "No test patient in this group."))
    out.append(("h3", "Cost and patients without history"))
    out.append(("table", *cost_rows(table)))
    out.append(
        ("p", f"Training time: {table['training_time']}. Patients / s: inference, best of k (Efficiency).")
    )
    return out


def terminal_tables(report: dict) -> list[tuple[str, list[str], list[list[str]]]]:
    """(title, header, rows) for the terminal at 80 columns: per group PRAUC and Δ PRAUC with their intervals
    (two lines each), Jaccard, F1, DDI rate and #drugs as point values (their intervals are in report.md);
    then parameters, training time and patients/s. The no-history texts are `history_lines`."""
    table = report.get("table")
    if not table or not table.get("rows"):
        return []
    out = []
    s = report["samples"]["groups"]
    for g, title in GROUPS.items():
        if not s.get(g):
            continue
        rows = []
        for r in table["rows"]:
            m = r["groups"][g]
            pts = [f"{m[k]['value']:.{min(d, 3)}f}" if m[k] else "—" for k, _, d in METRICS[1:]]
            rows.append([r["model"], _cell(m["prauc"], 3, two_lines=True), *pts, _delta(r, g, 3, True)])
        header = ["Model", "PRAUC\n[95 %]", "Jaccard", "F1", "DDI", "#drugs", "Δ PRAUC vs\nbest baseline"]
        out.append((f"{title}: {s[g]:,} test patients", header, rows))
    rows = [
        [
            r["model"],
            _count(r["parameters"], True),
            duration(r["training_seconds"]),
            _count(r["patients_per_s"]),
        ]
        for r in table["rows"]
    ]
    if all(set(row[1:]) == {"—"} for row in rows):  # a predictions file: nothing was timed or counted
        return out
    out.append(
        ("Cost: parameters, training time, inference", ["Model", "Params", "Training", "Patients/s"], rows)
    )
    return out


def history_rows(report: dict) -> tuple[list[str], list[list[str]]]:
    """(["Model", "Without history"], rows): how each model scores a patient without history."""
    table = report.get("table") or {}
    return ["Model", "Without history (a first visit)"], [
        [r["model"], r["no_history"]] for r in table.get("rows", [])
    ]
