"""The report's tables as rows of text cells (header, rows), shared by report.md / report.html
(`render.py`) and the terminal (`cli/report.py`): the runs compared, the per-run metrics, the DDI trade-off,
efficiency, the machine line, the call-outs and the method lines. Pure: the report dict in, strings out.
"""

from __future__ import annotations

GROUP_NAMES = {"overall": "overall", "single": "single-visit", "multi": "multi-visit"}
METRIC_COLUMNS = (
    ("prauc", "PRAUC", 4),
    ("jaccard", "Jaccard", 4),
    ("f1", "F1", 4),
    ("ddi_rate", "DDI rate", 4),
    ("avg_drugs", "#drugs pred", 2),
    ("avg_true_drugs", "#drugs true", 2),
)


SMALL_MARK = "†"
FLOOR_MARK = "▼"
VS_BEST = {True: "worse", False: "≈ best"}  # distinguishable from the best run or not
VS_FLOOR = {"above": "above", "not distinguishable": "≈ floor", "below": "below"}


def pm(stat: dict | None, digits: int) -> str:
    return "—" if stat is None else f"{stat['mean']:.{digits}f} ± {stat['std']:.{digits}f}"


def ci(stat: dict | None, digits: int, signed: bool = False) -> str:
    if stat is None:
        return "—"
    f = f"+.{digits}f" if signed else f".{digits}f"
    return f"[{stat['lo']:{f}}, {stat['hi']:{f}}]"


def n_cell(group: dict) -> str:
    return f"{group['n']} {SMALL_MARK}" if group.get("small") else str(group["n"])


def run_label(run: dict) -> str:
    """The run's name, marked when it does not beat the popularity floor."""
    vf = run.get("vs_floor")
    return f"{run['name']} {FLOOR_MARK}" if vf and not vf["beats"] else run["name"]


def metric_rows(report: dict, digits: int | None = None) -> tuple[list[str], list[list[str]]]:
    """(header, rows): one row per run × group; cells "mean ± std [95 % interval]" (`digits` overrides)."""
    header = ["Run", "Group", "n", *[title for _, title, _ in METRIC_COLUMNS]]
    rows = []
    for run in report["runs"]:
        for group, gname in GROUP_NAMES.items():
            g = run["groups"][group]
            boot = g["bootstrap"]
            cells = []
            for key, _, d in METRIC_COLUMNS:
                d = min(d, digits or d)
                st = boot[key] if boot else None
                cells.append("—" if st is None else f"{pm(st, d)} {ci(st, d)}")
            rows.append([run_label(run), gname, n_cell(g), *cells])
    return header, rows


def run_card(report: dict, run: dict, digits: int = 3) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of one run for the terminal: metrics down, groups across, each cell two lines
    ("mean ± std" over "[95 % interval]"), so that it fits 80 columns."""
    header = ["Metric"]
    for group, gname in GROUP_NAMES.items():
        g = run["groups"][group]
        header.append(f"{gname}\nn = {n_cell(g)}")
    rows = []
    for key, title, d in METRIC_COLUMNS:
        d = min(d, digits)
        row = [title]
        for group in GROUP_NAMES:
            boot = run["groups"][group]["bootstrap"]
            st = boot[key] if boot else None
            row.append("—" if st is None else f"{pm(st, d)}\n{ci(st, d)}")
        rows.append(row)
    return header, rows


def summary_rows(report: dict, with_kind: bool = True) -> tuple[list[str], list[list[str]]]:
    """(header, rows): overall PRAUC of every run, its paired difference to the best run with the 95 %
    interval, and where it stands against the best run and the popularity floor."""
    header = ["Run", *(["Kind"] if with_kind else []), "PRAUC", "Δ vs best [95 %]", "vs best", "vs floor"]
    rows = []
    for run in report["runs"]:
        p = run["groups"]["overall"]["point"]["prauc"]
        vb = run.get("vs_best")
        if vb is None:
            delta, best = "—", "best"
        else:
            d = vb["groups"]["overall"]["prauc"]
            delta = f"{d['diff']:+.3f} {ci(d, 3, signed=True)}"
            best = VS_BEST[d["distinguishable"]]
        vf = run.get("vs_floor")
        floor = "floor" if vf is None else VS_FLOOR[vf["status"]]
        kind = [run["kind"] + (" (fitted)" if run.get("fitted_by_report") else "")] if with_kind else []
        rows.append([run_label(run), *kind, f"{p:.3f}", delta, best, floor])
    return header, rows


def ddi_rows(report: dict) -> tuple[list[str], list[list[str]]]:
    """(header, rows): the accuracy–DDI trade-off, one row per run and cap N (∞ = no cap)."""
    header = ["Run", "Max DDI pairs", "Jaccard", "F1", "DDI rate", "#drugs", "dropped"]
    rows = []
    for run in report["runs"]:
        for t in run.get("ddi_tradeoff") or []:
            n = "∞" if t["max_pairs"] is None else str(t["max_pairs"])
            rows.append(
                [
                    run["name"],
                    n,
                    f"{t['jaccard']:.4f}",
                    f"{t['f1']:.4f}",
                    f"{t['ddi_rate']:.4f}",
                    f"{t['avg_drugs']:.2f}",
                    f"{t['avg_dropped']:.2f}",
                ]
            )
    return header, rows


def _fmt_ms(ms: float | None) -> str:
    if ms is None:
        return "—"
    return f"{ms:.0f}" if ms >= 100 else (f"{ms:.2f}" if ms >= 1 else f"{ms:.3g}")


def efficiency_rows(report: dict, narrow: bool = False) -> tuple[list[str], list[list[str]]]:
    """(header, rows): parameters, device, threads, latency (best of k) and throughput per run (runs without
    timing are left out). `narrow` leaves out the columns the terminal gives in its title."""
    if narrow:
        header = ["Run", "Parameters", "ms / patient", "patients / s"]
    else:
        header = [
            "Run",
            "Kind",
            "Parameters",
            "Trainable",
            "Device",
            "Threads",
            "Batch",
            "ms / patient",
            "median ms",
            "patients / s",
        ]
    rows = []
    for run in report["runs"]:
        e = run.get("efficiency")
        if not e:
            continue
        p = e.get("parameters") or {}
        thr = e.get("throughput_patients_per_s")
        total = f"{p['total']:,}" if "total" in p else "—"
        lat, tp = _fmt_ms(e.get("latency_ms_per_patient")), f"{thr:,.0f}" if thr else "—"
        if narrow:
            rows.append([run["name"], total, lat, tp])
            continue
        rows.append(
            [
                run["name"],
                run["kind"],
                total,
                f"{p['trainable']:,}" if "trainable" in p else "—",
                str(e.get("device", "—")),
                str(e.get("threads", "—")),
                str(e.get("batch_size", "—")),
                lat,
                _fmt_ms(e.get("median_ms_per_patient")),
                tp,
            ]
        )
    return header, rows


def machine_line(report: dict) -> str | None:
    """Where the latency was measured: device, threads, CPU model, load before/after."""
    eff = report.get("efficiency")
    if not eff:
        return None
    m = eff.get("machine") or {}

    def load(v):
        return "unknown" if not v else " / ".join(f"{x:.2f}" for x in v)

    gpu = f", GPU {m['gpu']}" if m.get("gpu") else ""
    busy = " — the machine was busy: latencies are pessimistic" if eff.get("busy") else ""
    return (
        f"Measured on {eff['device']}{gpu} with {m.get('torch_threads')} torch threads, CPU {m.get('cpu_model')} "
        f"({m.get('logical_cpus')} logical CPUs), load average (1/5/15 min) {load(m.get('load_before'))} before "
        f"and {load(m.get('load_after'))} after{busy}."
    )


def notes(report: dict) -> list[str]:
    """The call-outs every output carries: small groups, runs not beating the floor, runs not
    distinguishable from the best, over-prediction, the teacher/student ratio."""
    out = []
    small = report["samples"].get("small_groups") or []
    if small:
        names = ", ".join(f"{GROUP_NAMES[g]} ({report['samples']['groups'][g]})" for g in small)
        out.append(
            f"{SMALL_MARK} fewer than {report['bootstrap']['small_group']} patients in {names}: "
            "the intervals of such groups are rough and can be far too narrow."
        )
    comp = report.get("comparison") or {}
    floor = (comp.get("floor") or {}).get("run")
    for run in report["runs"]:
        vf = run.get("vs_floor")
        if vf and not vf["beats"]:
            out.append(
                f"{FLOOR_MARK} {run['name']} does not beat the popularity floor ({floor}): overall PRAUC "
                f"{vf['diff']:+.4f} {ci(vf, 4, signed=True)} — {vf['status']}."
            )
    for run in report["runs"]:
        vb = run.get("vs_best")
        if vb and not vb["groups"]["overall"]["prauc"]["distinguishable"]:
            out.append(
                f"{run['name']} and {vb['reference']} are not distinguishable on overall PRAUC "
                "(the 95 % interval of the paired difference covers 0)."
            )
    for run in report["runs"]:
        s = run.get("selection") or {}
        if s.get("verdict") in ("over-predicts", "under-predicts"):
            out.append(
                f"{run['name']} {s['verdict']}: {s['avg_selected']:.1f} drugs selected per patient against "
                f"{s['avg_true']:.1f} true (×{s['ratio']:.1f}); {s['drugs_ever_selected']} of {s['n_labels']} "
                "drug classes selected for at least one patient."
            )
    line = ratio_line(report)
    if line:
        out.append(f"{line} (same device and threads).")
    return out


def method_lines(report: dict) -> list[str]:
    b = report["bootstrap"]
    out = [
        f"Intervals: {b['method']}; {b['rounds']} rounds, seed {b['seed']}. Point values on the whole split "
        "are in metrics.json.",
        f"Comparisons: {report['comparison']['method']}; the best run is the one with the "
        f"{report['comparison']['chosen_by']}.",
        f"Popularity floor ({report['comparison']['floor']['run']}): {report['comparison']['floor']['rule']}.",
        f"Groups with fewer than {b['small_group']} patients are marked {SMALL_MARK}.",
    ]
    if b.get("ignored"):
        out.append(b["ignored"] + ".")
    return out


def ratio_line(report: dict) -> str | None:
    """ "The teacher takes 12.3× the time of student, 40.1× the time of retain per patient" (no final stop), or
    None without a teacher timed against other runs."""
    ratio = (report.get("efficiency") or {}).get("teacher_student_latency_ratio") or {}
    if not ratio:
        return None
    return (
        "The teacher takes "
        + ", ".join(f"{v:.1f}× the time of {n}" for n, v in ratio.items())
        + " per patient"
    )


def threshold_items(report: dict) -> list[str]:
    """One line per run: its threshold and how it was chosen, and what it selects against the true drugs."""
    items = []
    for r in report["runs"]:
        sel = r.get("selection") or {}
        ratio = f" (×{sel['ratio']:.1f}, {sel['verdict']})" if sel.get("ratio") is not None else ""
        items.append(
            f"{r['name']} ({r['kind']}): threshold {r['threshold']['value']:.4g} — {r['threshold']['how']}; "
            f"selects {sel.get('avg_selected', 0):.2f} drugs per patient against {sel.get('avg_true', 0):.2f} "
            f"true{ratio}; {sel.get('drugs_ever_selected', 0)} of {sel.get('n_labels', 0)} drug classes "
            "selected at least once."
        )
    return items
