"""The report's plots, drawn from the report dict (the content of metrics.json) with matplotlib.

Agg backend through `matplotlib.figure.Figure` + `FigureCanvasAgg` (no pyplot state, no display needed), one
figure per PNG file, the same colour for a run in every figure. Figures where a reader would rather look than
read (issue 6): metrics per run and group with bootstrap error bars, predicted vs true #drugs, per-drug F1
against drug frequency, DDI rate per run, and inference latency (teacher vs student, log scale).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

GROUP_TITLES = {"overall": "Overall", "single": "Single-visit", "multi": "Multi-visit"}
METRIC_TITLES = {"prauc": "PRAUC", "jaccard": "Jaccard", "f1": "F1"}
DPI = 110


def _figure(width: float, height: float):
    # the Agg canvas directly: no display, and no pyplot global state shared with a host process
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _colors(n: int) -> list:
    import matplotlib

    cmap = matplotlib.colormaps["tab10"]
    return [cmap(i % 10) for i in range(n)]


def _stat(run: dict, group: str, metric: str) -> tuple[float, float] | None:
    """(bootstrap mean, std) of a metric in a group, None for an empty group."""
    b = run["groups"][group]["bootstrap"]
    return None if b is None else (b[metric]["mean"], b[metric]["std"])


def plot_metrics(report: dict):
    """One panel per group; PRAUC / Jaccard / F1 bars per run with ± std error bars."""
    runs = report["runs"]
    fig = _figure(4.0 * len(GROUP_TITLES), 3.8)
    axes = fig.subplots(1, len(GROUP_TITLES), sharey=True)
    colors = _colors(len(runs))
    x = np.arange(len(METRIC_TITLES))
    width = 0.8 / max(len(runs), 1)
    for ax, (group, title) in zip(axes, GROUP_TITLES.items(), strict=True):
        n = report["samples"]["groups"][group]
        ax.set_title(f"{title} (n = {n})")
        ax.set_xticks(x, list(METRIC_TITLES.values()))
        ax.set_ylim(0, 1)
        ax.grid(axis="y", alpha=0.3)
        if n == 0:
            ax.text(0.5, 0.5, "no patients", ha="center", va="center", transform=ax.transAxes)
            continue
        for i, run in enumerate(runs):
            stats = [_stat(run, group, m) for m in METRIC_TITLES]
            means = [s[0] for s in stats]
            stds = [s[1] for s in stats]
            ax.bar(
                x - 0.4 + width * (i + 0.5),
                means,
                width,
                yerr=stds,
                capsize=3,
                color=colors[i],
                label=run["name"],
            )
    axes[0].set_ylabel("bootstrap mean ± std")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=min(len(runs), 6), fontsize="small")
    return fig


def plot_drug_counts(report: dict):
    """Average #drugs per patient (overall): true vs predicted per run, ± std."""
    runs = report["runs"]
    fig = _figure(max(5.5, 1.6 * len(runs) + 2), 3.6)
    ax = fig.subplots()
    x = np.arange(len(runs))
    true = [_stat(r, "overall", "avg_true_drugs") for r in runs]
    pred = [_stat(r, "overall", "avg_drugs") for r in runs]
    ax.bar(
        x - 0.2, [t[0] for t in true], 0.4, yerr=[t[1] for t in true], capsize=3, color="0.65", label="true"
    )
    ax.bar(
        x + 0.2,
        [p[0] for p in pred],
        0.4,
        yerr=[p[1] for p in pred],
        capsize=3,
        color=_colors(len(runs)),
        label="predicted (run colour)",
    )
    ax.set_xticks(x, [r["name"] for r in runs])
    ax.set_ylabel("drugs per patient")
    ax.set_title("Predicted vs true number of drugs (overall)")
    top = max([t[0] + t[1] for t in true] + [p[0] + p[1] for p in pred])
    ax.set_ylim(0, top * 1.25 if top > 0 else 1)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(loc="upper left", ncols=2, fontsize="small")
    return fig


def plot_per_drug_f1(report: dict):
    """One panel per run: each drug's F1 against its training-split frequency (log scale)."""
    runs = report["runs"]
    drugs = report["drugs"]
    freq = np.asarray(
        drugs["train_frequency"] if drugs.get("train_frequency") is not None else drugs["test_frequency"]
    )
    label = "training" if drugs.get("train_frequency") is not None else "test"
    cols = min(len(runs), 3)
    rows = -(-len(runs) // cols)
    from matplotlib.ticker import FuncFormatter, NullFormatter

    fig = _figure(max(5.5, 4.0 * cols), 3.4 * rows)
    axes = np.atleast_1d(fig.subplots(rows, cols, sharex=True, sharey=True, squeeze=False)).ravel()
    keep = freq > 0
    colors = _colors(len(runs))
    narrow = keep.any() and np.log10(freq[keep].max() / freq[keep].min()) < 1.2
    percent = FuncFormatter(lambda v, _pos: f"{v:.0%}" if v >= 0.01 else f"{v:.1%}")
    for ax, run, color in zip(axes, runs, colors, strict=False):
        f1 = np.asarray(run["per_drug_f1"])
        ax.scatter(freq[keep], f1[keep], s=14, alpha=0.7, color=color, edgecolors="none")
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(percent)
        ax.xaxis.set_minor_formatter(percent if narrow else NullFormatter())  # label minor ticks < ~1 decade
        ax.tick_params(axis="x", which="both", labelsize="small")
        ax.set_ylim(-0.03, 1.03)
        ax.set_title(run["name"])
        ax.grid(alpha=0.3)
    for ax in axes[len(runs) :]:
        ax.set_visible(False)
    fig.supxlabel(f"share of {label} target visits with the drug (log)")
    fig.supylabel("per-drug F1 on the test split")
    return fig


def plot_ddi(report: dict):
    """Pooled DDI rate per run (overall, ± std) against the rate of the true test prescriptions."""
    runs = report["runs"]
    fig = _figure(max(5.5, 1.2 * len(runs) + 2), 3.6)
    ax = fig.subplots()
    stats = [_stat(r, "overall", "ddi_rate") for r in runs]
    x = np.arange(len(runs))
    ax.bar(x, [s[0] for s in stats], 0.6, yerr=[s[1] for s in stats], capsize=3, color=_colors(len(runs)))
    ax.axhline(
        report["true_ddi_rate"],
        color="0.3",
        linestyle="--",
        label=f"true drugs: {report['true_ddi_rate']:.4f}",
    )
    ax.set_xticks(x, [r["name"] for r in runs])
    top = max([s[0] + s[1] for s in stats] + [report["true_ddi_rate"]])
    ax.set_ylim(0, top * 1.3 if top > 0 else 1)
    ax.set_ylabel("DDI rate (lower is safer)")
    ax.set_title("DDI rate of the predicted drug sets (overall)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(loc="upper right", fontsize="small")
    return fig


def plot_latency(report: dict):
    """Inference latency per patient per run (log scale), annotated with throughput."""
    runs = [r for r in report["runs"] if (r.get("efficiency") or {}).get("latency_ms_per_patient")]
    eff = report.get("efficiency") or {}
    fig = _figure(7.0, 0.7 * len(runs) + 1.6)
    ax = fig.subplots()
    lat = [r["efficiency"]["latency_ms_per_patient"] for r in runs]
    y = np.arange(len(runs))
    colors = _colors(len(report["runs"]))
    index = {r["name"]: i for i, r in enumerate(report["runs"])}
    ax.barh(y, lat, 0.6, color=[colors[index[r["name"]]] for r in runs])
    ax.set_yticks(y, [f"{r['name']} ({r['efficiency'].get('device', '?')})" for r in runs])
    ax.invert_yaxis()
    ax.set_xscale("log")
    for yi, r, v in zip(y, runs, lat, strict=True):
        thr = r["efficiency"].get("throughput_patients_per_s")
        ax.text(
            v, yi, f"  {v:.3g} ms ({thr:,.0f}/s)" if thr else f"  {v:.3g} ms", va="center", fontsize="small"
        )
    ax.set_xlim(min(lat) / 3, max(lat) * 30)
    ax.set_xlabel("milliseconds per patient (log scale)")
    ax.set_title(f"Inference latency per patient, batch {eff.get('batch_size')}")
    ax.grid(axis="x", alpha=0.3)
    return fig


def write_plots(report: dict, out_dir: Path) -> list[dict]:
    """Draw every applicable figure into `out_dir`; returns [{"file", "title", "caption"}] in report order."""
    specs = [
        (
            "metrics.png",
            "Metrics per run and group",
            plot_metrics,
            "Bootstrap mean ± std of PRAUC, Jaccard and F1 per patient group.",
        ),
        (
            "drug_counts.png",
            "Predicted vs true #drugs",
            plot_drug_counts,
            "Average number of drugs per patient, true and predicted at each run's threshold.",
        ),
        (
            "per_drug_f1.png",
            "Per-drug F1 against drug frequency",
            plot_per_drug_f1,
            "Each point is a drug; rare drugs are where models usually fail. Drugs never seen in training are left out.",
        ),
        (
            "ddi_rate.png",
            "DDI rate per run",
            plot_ddi,
            "Share of predicted drug pairs that interact; the dashed line is the rate of the true prescriptions.",
        ),
    ]
    if any((r.get("efficiency") or {}).get("latency_ms_per_patient") for r in report["runs"]):
        specs.append(
            (
                "latency.png",
                "Teacher vs student speed",
                plot_latency,
                "Latency per patient (log scale) on the same device and batch size; throughput in patients per second.",
            )
        )
    out = []
    for file, title, draw, caption in specs:
        fig = draw(report)
        fig.savefig(Path(out_dir) / file, dpi=DPI, metadata={"Software": None})
        out.append({"file": file, "title": title, "caption": caption})
    return out
