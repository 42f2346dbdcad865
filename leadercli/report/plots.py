"""The report's plots, drawn from the report dict (the content of metrics.json) with matplotlib.

Agg backend through `matplotlib.figure.Figure` + `FigureCanvasAgg` (no pyplot state, no display needed), one
figure per PNG file, the same colour for a run in every figure, and every axis of every panel labelled.
Figures: metrics per run and group with 95 % bootstrap intervals and the popularity floor; predicted vs true
#drugs with the over-prediction ratio; per-drug F1 against drug frequency over the drugs present in the test
split; DDI rate per run; the reliability diagram (calibration); the accuracy–DDI trade-off; inference latency
(log scale).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

GROUP_TITLES = {"overall": "Overall", "single": "Single-visit", "multi": "Multi-visit"}
METRIC_TITLES = {"prauc": "PRAUC", "jaccard": "Jaccard", "f1": "F1"}
DPI = 110
FLOOR_MARK = "▼"


def _figure(width: float, height: float):
    # the Agg canvas directly: no display, and no pyplot global state shared with a host process
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _colors(n: int) -> list:
    # matplotlib: only when plots are drawn
    import matplotlib

    cmap = matplotlib.colormaps["tab10"]
    return [cmap(i % 10) for i in range(n)]


def _label(run: dict) -> str:
    vf = run.get("vs_floor")
    return f"{run['name']} {FLOOR_MARK} below floor" if vf and not vf["beats"] else run["name"]


def _stat(run: dict, group: str, metric: str) -> tuple[float, float, float] | None:
    """(bootstrap mean, distance to the interval's low end, to its high end), None for an empty group."""
    b = run["groups"][group]["bootstrap"]
    if b is None:
        return None
    s = b[metric]
    return s["mean"], max(s["mean"] - s["lo"], 0.0), max(s["hi"] - s["mean"], 0.0)


def _err(stats: list) -> np.ndarray:
    return np.array([[s[1] for s in stats], [s[2] for s in stats]])  # (2, K) asymmetric error bars


def plot_metrics(report: dict):
    """One panel per group; PRAUC / Jaccard / F1 bars per run with 95 % intervals; dashed: the floor."""
    runs = report["runs"]
    floor_name = ((report.get("comparison") or {}).get("floor") or {}).get("run")
    floor = next((r for r in runs if r["name"] == floor_name), None)
    fig = _figure(4.0 * len(GROUP_TITLES), 4.0)
    axes = fig.subplots(1, len(GROUP_TITLES), sharey=True)
    colors = _colors(len(runs))
    x = np.arange(len(METRIC_TITLES))
    width = 0.8 / max(len(runs), 1)
    for ax, (group, title) in zip(axes, GROUP_TITLES.items(), strict=True):
        n = report["samples"]["groups"][group]
        small = ", fewer than 100: rough" if 0 < n < report["bootstrap"].get("small_group", 100) else ""
        ax.set_title(f"{title} (n = {n}{small})", fontsize="medium")
        ax.set_xticks(x, list(METRIC_TITLES.values()))
        ax.set_xlabel("metric")
        ax.set_ylabel("bootstrap mean, 95 % interval")
        ax.yaxis.set_tick_params(labelleft=True)
        ax.set_ylim(0, 1)
        ax.grid(axis="y", alpha=0.3)
        if n == 0:
            ax.text(0.5, 0.5, "no patients", ha="center", va="center", transform=ax.transAxes)
            continue
        for i, run in enumerate(runs):
            stats = [_stat(run, group, m) for m in METRIC_TITLES]
            ax.bar(
                x - 0.4 + width * (i + 0.5),
                [s[0] for s in stats],
                width,
                yerr=_err(stats),
                capsize=3,
                color=colors[i],
                label=_label(run),
            )
        if floor is not None and floor["groups"][group]["point"]:
            ax.hlines(
                floor["groups"][group]["point"]["prauc"],
                -0.45,
                0.45,
                colors="0.2",
                linestyles="--",
                label=f"popularity floor (PRAUC, {floor['name']})",
            )
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=min(len(labels), 4), fontsize="small")
    return fig


def plot_drug_counts(report: dict):
    """Average #drugs per patient (overall): true vs selected per run, 95 % intervals, selected / true."""
    runs = report["runs"]
    fig = _figure(max(5.5, 1.6 * len(runs) + 2), 3.8)
    ax = fig.subplots()
    x = np.arange(len(runs))
    true = [_stat(r, "overall", "avg_true_drugs") for r in runs]
    pred = [_stat(r, "overall", "avg_drugs") for r in runs]
    ax.bar(x - 0.2, [t[0] for t in true], 0.4, yerr=_err(true), capsize=3, color="0.65", label="true")
    ax.bar(
        x + 0.2,
        [p[0] for p in pred],
        0.4,
        yerr=_err(pred),
        capsize=3,
        color=_colors(len(runs)),
        label="selected (run colour)",
    )
    over = []
    for xi, r, p in zip(x, runs, pred, strict=True):
        s = r.get("selection") or {}
        if s.get("ratio") is not None:
            ax.text(xi + 0.2, p[0] + p[2], f"×{s['ratio']:.1f}", ha="center", va="bottom", fontsize="small")
            if s.get("verdict") == "over-predicts":
                over.append(r["name"])
    ax.set_xticks(x, [r["name"] for r in runs])
    ax.set_xlabel("run")
    ax.set_ylabel("drugs per patient")
    title = "Selected vs true number of drugs (overall)"
    if over:
        title += f"\nover-predicting: {', '.join(over)}"
    ax.set_title(title, fontsize="medium")
    top = max([t[0] + t[2] for t in true] + [p[0] + p[2] for p in pred])
    ax.set_ylim(0, top * 1.3 if top > 0 else 1)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(loc="upper left", ncols=2, fontsize="small")
    return fig


def per_drug_points(report: dict) -> tuple[np.ndarray, np.ndarray, str, int]:
    """(drug indices drawn, their x frequency, the frequency's split, #present drugs left out): only drugs
    present in the test split; x is the training-split frequency (drugs never seen in training cannot sit on
    a log axis and are counted instead), the test frequency when there is no training frequency."""
    drugs = report["drugs"]
    test = np.asarray(drugs["test_frequency"], dtype=np.float64)
    present = test > 0
    if drugs.get("train_frequency") is not None:
        freq, split = np.asarray(drugs["train_frequency"], dtype=np.float64), "training"
    else:
        freq, split = test, "test"
    keep = present & (freq > 0)
    return np.flatnonzero(keep), freq[keep], split, int((present & ~keep).sum())


def plot_per_drug_f1(report: dict):
    """One panel per run: F1 of each drug present in the test split against its frequency (log scale)."""
    runs = report["runs"]
    idx, freq, split, left_out = per_drug_points(report)
    cols = min(len(runs), 3)
    rows = -(-len(runs) // cols)
    # matplotlib: only when plots are drawn
    from matplotlib.ticker import FuncFormatter, NullFormatter

    fig = _figure(max(5.5, 4.2 * cols), 3.6 * rows)
    axes = np.atleast_1d(fig.subplots(rows, cols, sharex=True, sharey=True, squeeze=False)).ravel()
    colors = _colors(len(runs))
    narrow = len(freq) > 0 and np.log10(freq.max() / freq.min()) < 1.2
    percent = FuncFormatter(lambda v, _pos: f"{v:.0%}" if v >= 0.01 else f"{v:.1%}")
    for ax, run, color in zip(axes, runs, colors, strict=False):
        f1 = np.asarray(run["per_drug_f1"], dtype=np.float64)[idx]
        ax.scatter(freq, f1, s=14, alpha=0.7, color=color, edgecolors="none")
        if len(freq):
            ax.set_xscale("log")
            ax.xaxis.set_major_formatter(percent)
            ax.xaxis.set_minor_formatter(
                percent if narrow else NullFormatter()
            )  # label minor ticks < 1 decade
        ax.tick_params(axis="x", which="both", labelsize="small", labelbottom=True)
        ax.tick_params(axis="y", labelleft=True)
        ax.set_ylim(-0.03, 1.03)
        ax.set_title(f"{run['name']} ({len(idx)} drugs)", fontsize="medium")
        ax.set_xlabel(f"share of {split} target visits (log)", fontsize="small")
        ax.set_ylabel("per-drug F1 (test split)", fontsize="small")
        ax.grid(alpha=0.3)
    for ax in axes[len(runs) :]:
        ax.set_visible(False)
    if left_out:
        fig.suptitle(
            f"{left_out} drug(s) of the test split never occur in training and are not drawn",
            fontsize="small",
        )
    return fig


def plot_ddi(report: dict):
    """Pooled DDI rate per run (overall, 95 % interval) against the rate of the true test prescriptions."""
    runs = report["runs"]
    fig = _figure(max(5.5, 1.2 * len(runs) + 2), 3.6)
    ax = fig.subplots()
    stats = [_stat(r, "overall", "ddi_rate") for r in runs]
    x = np.arange(len(runs))
    ax.bar(x, [s[0] for s in stats], 0.6, yerr=_err(stats), capsize=3, color=_colors(len(runs)))
    ax.axhline(
        report["true_ddi_rate"],
        color="0.3",
        linestyle="--",
        label=f"true drugs: {report['true_ddi_rate']:.4f}",
    )
    ax.set_xticks(x, [r["name"] for r in runs])
    ax.set_xlabel("run")
    top = max([s[0] + s[2] for s in stats] + [report["true_ddi_rate"]])
    ax.set_ylim(0, top * 1.3 if top > 0 else 1)
    ax.set_ylabel("DDI rate (lower is safer)")
    ax.set_title("DDI rate of the selected drug sets (overall)", fontsize="medium")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(loc="upper right", fontsize="small")
    return fig


def plot_ddi_tradeoff(report: dict):
    """Jaccard against DDI rate per run as the cap on interacting pairs N goes 0, 1, 2, ∞."""
    runs = [r for r in report["runs"] if r.get("ddi_tradeoff")]
    fig = _figure(6.5, 4.2)
    ax = fig.subplots()
    colors = _colors(len(report["runs"]))
    index = {r["name"]: i for i, r in enumerate(report["runs"])}
    for r in runs:
        t = r["ddi_tradeoff"]
        xs, ys = [p["ddi_rate"] for p in t], [p["jaccard"] for p in t]
        ax.plot(xs, ys, marker="o", color=colors[index[r["name"]]], label=r["name"])
        labels: dict[tuple[float, float], list[str]] = {}  # caps that give the same point share one label
        for p, xv, yv in zip(t, xs, ys, strict=True):
            labels.setdefault((xv, yv), []).append("∞" if p["max_pairs"] is None else str(p["max_pairs"]))
        for (xv, yv), ns in labels.items():
            ax.annotate(
                f"N={', '.join(ns)}", (xv, yv), textcoords="offset points", xytext=(4, 4), fontsize="x-small"
            )
    ax.axvline(report["true_ddi_rate"], color="0.3", linestyle="--", label="true drugs' DDI rate")
    ax.set_xlabel("DDI rate of the selected drugs (lower is safer)")
    ax.set_ylabel("Jaccard (test split, overall)")
    ax.set_title("Accuracy–DDI trade-off: at most N interacting pairs per patient", fontsize="medium")
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize="small")
    return fig


def plot_latency(report: dict):
    """Inference latency per patient per run (best of k, log scale), annotated with throughput."""
    runs = [r for r in report["runs"] if (r.get("efficiency") or {}).get("latency_ms_per_patient")]
    eff = report.get("efficiency") or {}
    threads = (eff.get("machine") or {}).get("torch_threads")
    fig = _figure(7.0, 0.7 * len(runs) + 1.8)
    ax = fig.subplots()
    lat = [r["efficiency"]["latency_ms_per_patient"] for r in runs]
    y = np.arange(len(runs))
    colors = _colors(len(report["runs"]))
    index = {r["name"]: i for i, r in enumerate(report["runs"])}
    ax.barh(y, lat, 0.6, color=[colors[index[r["name"]]] for r in runs])
    ax.set_yticks(y, [f"{r['name']} ({r['efficiency'].get('device', '?')})" for r in runs])
    ax.set_ylabel("run (device)")
    ax.invert_yaxis()
    ax.set_xscale("log")
    for yi, r, v in zip(y, runs, lat, strict=True):
        thr = r["efficiency"].get("throughput_patients_per_s")
        ax.text(
            v, yi, f"  {v:.3g} ms ({thr:,.0f}/s)" if thr else f"  {v:.3g} ms", va="center", fontsize="small"
        )
    ax.set_xlim(min(lat) / 3, max(lat) * 30)
    ax.set_xlabel("milliseconds per patient, best of k passes (log scale)")
    ax.set_title(
        f"Inference latency per patient, batch {eff.get('batch_size')}, {threads} threads", fontsize="medium"
    )
    ax.grid(axis="x", alpha=0.3)
    return fig


def plot_reliability(report: dict):
    """Predicted vs observed frequency per score bin (pooled over drugs, 10 bins), one line per run; the
    diagonal is perfect calibration; a lower panel shows how many pairs fall in each bin (log scale)."""
    runs = [r for r in report["runs"] if r.get("calibration")]
    fig = _figure(7.0, 6.2)
    ax, hist = fig.subplots(2, 1, height_ratios=[3, 1], sharex=True)
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="perfect calibration")
    for color, r in zip(_colors(len(report["runs"])), report["runs"], strict=True):
        if r not in runs:
            continue
        c = r["calibration"]
        rel = c["reliability"]
        count = np.asarray(rel["count"], float)
        mean_p = np.asarray(rel["mean_prob"], float)
        obs = np.asarray(rel["observed"], float)
        ok = count > 0
        ax.plot(mean_p[ok], obs[ok], marker="o", color=color, label=f"{_label(r)} (ECE {c['ece']:.3f})")
        edges = np.asarray(rel["edges"], float)
        hist.stairs(np.where(ok, count, np.nan), edges, color=color)  # empty bins left blank
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_ylabel("observed frequency of the drug")
    ax.set_title("Reliability: predicted vs observed, pooled over drugs (10 bins)", fontsize="medium")
    ax.legend(fontsize="small", loc="upper left")
    ax.grid(alpha=0.3)
    hist.set_yscale("log")
    hist.set_xlabel("predicted probability (score)")
    hist.set_ylabel("pairs per bin")
    hist.grid(alpha=0.3)
    return fig


def write_plots(report: dict, out_dir: Path) -> list[dict]:
    """Draw every applicable figure into `out_dir`; returns [{"file", "title", "caption"}] in report order."""
    _, _, split, left_out = per_drug_points(report)
    present = report["drugs"].get("present_in_test")
    specs = [
        (
            "metrics.png",
            "Metrics per run and group",
            plot_metrics,
            "Bootstrap mean and 95 % interval of PRAUC, Jaccard and F1 per patient group; the dashed line is "
            f"the popularity floor's PRAUC; {FLOOR_MARK} marks runs that do not beat it.",
        ),
        (
            "drug_counts.png",
            "Selected vs true #drugs",
            plot_drug_counts,
            "Average number of drugs per patient, true and selected at each run's threshold; ×k = selected / "
            "true (over-prediction above ×1.5).",
        ),
        (
            "per_drug_f1.png",
            "Per-drug F1 against drug frequency",
            plot_per_drug_f1,
            f"Each point is one of the {present} drugs present in the test split, at its {split}-split "
            "frequency; drugs absent from the test split have no F1 and are left out"
            + (f"; {left_out} present drug(s) never seen in training are not drawn." if left_out else "."),
        ),
        (
            "ddi_rate.png",
            "DDI rate per run",
            plot_ddi,
            "Share of selected drug pairs that interact (95 % interval); the dashed line is the rate of the true "
            "prescriptions.",
        ),
    ]
    if any(r.get("calibration") for r in report["runs"]):
        specs.append(
            (
                "reliability.png",
                "Reliability diagram",
                plot_reliability,
                "Mean score against the observed frequency of the drug in each of 10 equal-width score bins, "
                "pooled over all test patient–drug pairs; on the dashed diagonal a score of 0.7 means 7 in 10; "
                "below it the scores are too high. Lower panel: pairs per bin.",
            )
        )
    if any(r.get("ddi_tradeoff") for r in report["runs"]):
        specs.append(
            (
                "ddi_tradeoff.png",
                "Accuracy–DDI trade-off",
                plot_ddi_tradeoff,
                "Jaccard and DDI rate when at most N interacting pairs are kept per patient "
                "(`leader predict --max-ddi-pairs N`), N = 0, 1, 2, ∞.",
            )
        )
    if any((r.get("efficiency") or {}).get("latency_ms_per_patient") for r in report["runs"]):
        specs.append(
            (
                "latency.png",
                "Teacher vs student speed",
                plot_latency,
                "Latency per patient (best of k passes, log scale) on the same device, threads and batch size; "
                "throughput in patients per second.",
            )
        )
    out = []
    for file, title, draw, caption in specs:
        fig = draw(report)
        fig.savefig(Path(out_dir) / file, dpi=DPI, metadata={"Software": None})
        out.append({"file": file, "title": title, "caption": caption})
    return out
