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
from leadercli.report.rows import (
    FLOOR_MARK,
    SMALL_MARK,
    ddi_rows,
    efficiency_rows,
    machine_line,
    method_lines,
    metric_rows,
    notes,
    ratio_line,
    summary_rows,
    threshold_items,
)
from leadercli.report.table import blocks as table_blocks


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
    out += table_blocks(report)
    out.append(("h2", "Metrics"))
    out.append(("p", "Every metric as bootstrap mean ± std [95 % interval], per run and group."))
    out.append(("table", *metric_rows(report)))
    out += calibration_blocks(report)
    out.append(("h2", "Method"))
    out.append(("ul", method_lines(report)))
    out.append(("h2", "Decision thresholds and selected drugs"))
    out.append(("ul", threshold_items(report)))
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
        line = ratio_line(report)
        if line:
            notes_.append(f"{line} ({eff['ratio_rule']}).")
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
