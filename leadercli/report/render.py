"""report.md and report.html from the report dict (the content of metrics.json) and the plot list.

Both are rendered from one list of blocks (heading, paragraph, bullet list, table, figure), so they cannot
disagree. report.md references the PNG files written beside it; report.html is self-contained: inline CSS,
every image a `data:image/png;base64,` URI, no script, no external reference — it opens from a mail
attachment or an air-gapped machine exactly as it was written.
"""

from __future__ import annotations

import base64
import html as _html
import re
from pathlib import Path

from leadercli.report.calibrated import calibration_blocks
from leadercli.report.explained import explained_blocks

GROUP_NAMES = {"overall": "overall", "single": "single-visit", "multi": "multi-visit"}
METRIC_COLUMNS = (
    ("prauc", "PRAUC", 4),
    ("jaccard", "Jaccard", 4),
    ("f1", "F1", 4),
    ("ddi_rate", "DDI rate", 4),
    ("avg_drugs", "#drugs pred", 2),
    ("avg_true_drugs", "#drugs true", 2),
)


def _cell_html(text: str) -> str:
    """A cell's HTML: an interval `value [lo, hi]` breaks before its bracket, so that the metrics table of several
    runs fits a 1280-px window (the markdown keeps one line)."""
    value, sep, interval = str(text).partition(" [")
    if not sep:
        return _html.escape(str(text))
    return f'{_html.escape(value)}<br><span class="ci">[{_html.escape(interval)}</span>'


CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; margin: 2rem auto;
       max-width: 1100px; padding: 0 1rem; color: #1d232a; line-height: 1.45; }
h1 { font-size: 1.7rem; border-bottom: 2px solid #d0d7de; padding-bottom: .3rem; }
h2 { font-size: 1.3rem; margin-top: 2rem; border-bottom: 1px solid #d0d7de; padding-bottom: .2rem; }
h3 { font-size: 1.05rem; margin-bottom: .3rem; }
div.table { overflow-x: auto; margin: .6rem 0 1rem; }
table { border-collapse: collapse; font-size: .82rem; }
th, td { border: 1px solid #d0d7de; padding: .25rem .45rem; }
th { background: #f3f5f7; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
tr:nth-child(even) td { background: #fafbfc; }
span.ci { color: #57606a; font-size: .78rem; }
figure { margin: 1rem 0 2rem; }
figure img { max-width: 100%; height: auto; border: 1px solid #e1e4e8; }
figcaption { color: #57606a; font-size: .88rem; margin-top: .3rem; }
p.note, li { color: #3d444d; }
code { background: #f3f5f7; padding: 0 .25rem; border-radius: 3px; }
"""


SMALL_MARK = "†"
FLOOR_MARK = "▼"
VS_BEST = {True: "worse", False: "≈ best"}  # distinguishable from the best run or not
VS_FLOOR = {"above": "above", "not distinguishable": "≈ floor", "below": "below"}


def _pm(stat: dict | None, digits: int) -> str:
    return "—" if stat is None else f"{stat['mean']:.{digits}f} ± {stat['std']:.{digits}f}"


def _ci(stat: dict | None, digits: int, signed: bool = False) -> str:
    if stat is None:
        return "—"
    f = f"+.{digits}f" if signed else f".{digits}f"
    return f"[{stat['lo']:{f}}, {stat['hi']:{f}}]"


def _n(group: dict) -> str:
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
                cells.append("—" if st is None else f"{_pm(st, d)} {_ci(st, d)}")
            rows.append([run_label(run), gname, _n(g), *cells])
    return header, rows


def run_card(report: dict, run: dict, digits: int = 3) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of one run for the terminal: metrics down, groups across, each cell two lines
    ("mean ± std" over "[95 % interval]"), so that it fits 80 columns."""
    header = ["Metric"]
    for group, gname in GROUP_NAMES.items():
        g = run["groups"][group]
        header.append(f"{gname}\nn = {_n(g)}")
    rows = []
    for key, title, d in METRIC_COLUMNS:
        d = min(d, digits)
        row = [title]
        for group in GROUP_NAMES:
            boot = run["groups"][group]["bootstrap"]
            st = boot[key] if boot else None
            row.append("—" if st is None else f"{_pm(st, d)}\n{_ci(st, d)}")
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
            delta = f"{d['diff']:+.3f} {_ci(d, 3, signed=True)}"
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
                f"{vf['diff']:+.4f} {_ci(vf, 4, signed=True)} — {vf['status']}."
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
    ratio = (report.get("efficiency") or {}).get("teacher_student_latency_ratio") or {}
    for name, v in ratio.items():
        out.append(f"The teacher takes {v:.1f}× the time of {name} per patient (same device and threads).")
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


def blocks(report: dict, figures: list[dict]) -> list[tuple]:
    """The report as blocks: ("h1"|"h2"|"h3"|"p", text), ("ul", [text]), ("table", header, rows),
    ("img", file, title, caption)."""
    a, s = report["artifact"], report["samples"]
    out: list[tuple] = [("h1", "LEADER medication recommendation — evaluation report")]
    out.append(("p", f"Generated {report['created_at']} by leadercli {report['leadercli_version']}."))
    out.append(
        (
            "p",
            f"Artifact: {a['path']} ({a['source']}, {a['n_labels']} drug classes, vocab hash {a['vocab_hash']}); "
            f"taken from the {a['from']}.",
        )
    )
    g = s["groups"]
    out.append(
        (
            "p",
            f"Test split: {s['n']} patients — {g['single']} single-visit and {g['multi']} multi-visit "
            f"({s['group_rule']}). Every metric is given as bootstrap mean ± std [95 % interval].",
        )
    )
    for run in report["runs"]:
        pred = run.get("predictions")
        if pred:
            out.append(
                (
                    "p",
                    f"Predictions file {pred['path']}: {pred['rows']} rows, up to {pred['top_k']} per patient; "
                    f"{pred['matched_test_patients']} of {pred['test_patients']} test patients covered "
                    f"({pred['missing_test_patients']} missing, {pred['ignored_other_subjects']} other subjects "
                    "ignored); drugs absent from a patient's rows count as score 0.",
                )
            )
    call_outs = notes(report)
    if call_outs:
        out.append(("ul", call_outs))
    out.append(("h2", "Runs compared"))
    out.append(("p", "Overall PRAUC on the whole test split; Δ and its interval from the paired bootstrap."))
    out.append(("table", *summary_rows(report)))
    out.append(("h2", "Metrics"))
    out.append(("table", *metric_rows(report)))
    out += calibration_blocks(report)
    out.append(("h2", "Method"))
    out.append(("ul", method_lines(report)))
    out.append(("h2", "Decision thresholds and selected drugs"))
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
    out.append(("ul", items))
    header, rows = ddi_rows(report)
    if rows:
        out.append(("h2", "Accuracy–DDI trade-off"))
        out.append(
            (
                "p",
                f"True prescriptions' DDI rate: {report['true_ddi_rate']:.4f}. "
                f"{report['ddi_tradeoff']['rule'].capitalize()}; ∞ = no cap; 'dropped' = drugs removed per patient.",
            )
        )
        out.append(("table", header, rows))
    header, rows = efficiency_rows(report)
    eff = report.get("efficiency")
    if rows and eff:
        out.append(("h2", "Efficiency"))
        out.append(("table", header, rows))
        notes_ = [machine_line(report), f"Timing: {eff['timing']}."]
        notes_.append("Parameters of baselines are 0: they keep drug frequencies, no weights.")
        for name, v in (eff.get("teacher_student_latency_ratio") or {}).items():
            notes_.append(f"The teacher takes {v:.1f}× the time of {name} per patient ({eff['ratio_rule']}).")
        out.append(("ul", notes_))
    out.append(("h2", "Plots"))
    for f in figures:
        out.append(("img", f["file"], f["title"], f["caption"]))
    out += explained_blocks(report)
    out.append(("h2", "What the metrics mean"))
    out.append(
        (
            "ul",
            [
                "PRAUC: average precision of the ranked drug list of each patient, averaged over patients "
                "(threshold-free).",
                "Jaccard and F1: overlap of the predicted set (score ≥ threshold) with the true set, per patient, "
                "averaged.",
                "DDI rate: share of all predicted drug pairs (pooled over patients) that are known to interact.",
                "#drugs: average size of the predicted and of the true drug set.",
                f"{FLOOR_MARK}: the run does not beat the popularity floor; {SMALL_MARK}: fewer than "
                f"{report['bootstrap']['small_group']} patients.",
            ],
        )
    )
    return out


def _numeric_columns(rows: list[list[str]]) -> list[bool]:
    """Columns whose every cell is a number, a ± pair or a dash (right-aligned)."""
    if not rows:
        return []
    return [
        all(re.fullmatch(r"[\d.,\s±—×%+\-−\[\]∞†]+", c or "—") for c in col)
        for col in zip(*rows, strict=True)
    ]


def _md_cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def markdown(report: dict, figures: list[dict]) -> str:
    lines: list[str] = []
    for blk in blocks(report, figures):
        kind = blk[0]
        if kind in ("h1", "h2", "h3"):
            lines += ["#" * int(kind[1]) + " " + blk[1], ""]
        elif kind == "p":
            lines += [blk[1], ""]
        elif kind == "ul":
            lines += [f"- {item}" for item in blk[1]] + [""]
        elif kind == "table":
            header, rows = blk[1], blk[2]
            lines.append("| " + " | ".join(_md_cell(h) for h in header) + " |")
            num = _numeric_columns(rows) or [False] * len(header)
            lines.append("|" + "|".join("---:" if n else "---" for n in num) + "|")
            lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
            lines.append("")
        elif kind == "img":
            _, file, title, caption = blk
            lines += [f"### {title}", "", f"![{title}]({file})", "", f"*{caption}*", ""]
    return "\n".join(lines).rstrip() + "\n"


def _png_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


def html(report: dict, figures: list[dict], image_dir: Path) -> str:
    """A self-contained page; images are read from `image_dir` and inlined."""
    e = _html.escape
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        "<title>LEADER report</title>",
        f"<style>{CSS}</style>",
        "</head><body>",
    ]
    for blk in blocks(report, figures):
        kind = blk[0]
        if kind in ("h1", "h2", "h3"):
            parts.append(f"<{kind}>{e(blk[1])}</{kind}>")
        elif kind == "p":
            parts.append(f'<p class="note">{e(blk[1])}</p>')
        elif kind == "ul":
            parts.append("<ul>" + "".join(f"<li>{e(item)}</li>" for item in blk[1]) + "</ul>")
        elif kind == "table":
            header, rows = blk[1], blk[2]
            head = "".join(f"<th>{e(h)}</th>" for h in header)
            num = _numeric_columns(rows)
            body = "".join(
                "<tr>"
                + "".join(
                    f"<td{' class=num' if n else ''}>{_cell_html(c)}</td>"
                    for n, c in zip(num, row, strict=True)
                )
                + "</tr>"
                for row in rows
            )
            parts.append(
                f'<div class="table"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'
            )
        elif kind == "img":
            _, file, title, caption = blk
            parts.append(
                f"<figure><h3>{e(title)}</h3>"
                f'<img src="{_png_uri(Path(image_dir) / file)}" alt="{e(title)}">'
                f"<figcaption>{e(caption)}</figcaption></figure>"
            )
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
