"""Metrics of scored runs: what a report says about each run, given its (N, M) test-split scores.

Pure: scores, true drugs, visit counts, thresholds and DDI pairs in; plain dicts out (no I/O, no printing).
Used by `score_runs` (run folders) and `score_predictions` (a `leader predict` file) alike.

- `evaluate_scores`: per group (overall, single-visit, multi-visit) the point value and the bootstrap mean,
  std and 95 % percentile interval of every metric (`metrics.evaluate_groups`, n of n with replacement);
  groups under `SMALL_GROUP` patients are flagged; per-drug F1; what the run selects (over-prediction);
  the accuracy–DDI trade-off (`ddi_tradeoff`).
- `compare`: every run against the best one (highest overall point PRAUC), against the best baseline (the
  best run of a kind other than LEADER's, `kinds.TABLE_BASELINES`: the report's table) and against the
  popularity floor, by a paired bootstrap of the difference on the same resampled patients
  (`metrics.paired_difference`).
"""

from __future__ import annotations

import numpy as np

from leadercli import __version__, calibration, kinds, metrics, runs
from leadercli.report.table import table_block

GROUPS = ("overall", "single", "multi")
SMALL_GROUP = 100  # groups with fewer patients are flagged: their intervals are rough
COMPARED = ("prauc", "jaccard", "f1")  # metrics compared between runs
FLOOR_METRIC = "prauc"  # a run beats the popularity floor on overall PRAUC
OVER_PREDICTION = 1.5  # selected / true drugs above this ratio is called over-prediction
UNDER_PREDICTION = 1 / 1.5
DDI_LIMITS = (0, 1, 2, None)  # --max-ddi-pairs N of the trade-off; None = no cap (∞)
FLOOR_RULE = (
    "a model beats the popularity floor when the 95 % paired-bootstrap interval of its overall PRAUC minus "
    "popularity's lies above 0; 'below' = lower point PRAUC, 'not distinguishable' = the interval covers 0"
)
BASELINE_RULE = "highest overall point PRAUC among the runs that are not LEADER's: " + ", ".join(
    kinds.TABLE_BASELINES
)
DDI_RULE = (
    "drugs selected at the run's threshold, then, per patient, the lowest-scored drug of an interacting pair "
    "dropped until at most N interacting pairs remain (`leader predict --max-ddi-pairs N`); overall test split, "
    "point values"
)


def multi_hot(samples: list, label_index: dict[str, int]) -> np.ndarray:
    """(N, M) bool: the target visit's drugs of each sample (drugs outside the label list are dropped)."""
    y = np.zeros((len(samples), len(label_index)), dtype=bool)
    for i, s in enumerate(samples):
        for code in s.target.medications:
            j = label_index.get(code)
            if j is not None:
                y[i, j] = True
    return y


def selection_summary(y_true: np.ndarray, y_pred: np.ndarray) -> dict:
    """How many drugs a run selects against the true number (overall): the over-prediction call-out."""
    sel = float(y_pred.sum(1).mean()) if len(y_pred) else 0.0
    true = float(y_true.sum(1).mean()) if len(y_true) else 0.0
    ratio = sel / true if true > 0 else None
    verdict = "about right"
    if ratio is not None and ratio > OVER_PREDICTION:
        verdict = "over-predicts"
    elif ratio is not None and ratio < UNDER_PREDICTION:
        verdict = "under-predicts"
    return {
        "avg_selected": sel,
        "avg_true": true,
        "ratio": ratio,
        "verdict": verdict,
        "drugs_ever_selected": int(y_pred.any(0).sum()),
        "n_labels": int(y_pred.shape[1]),
        "rule": f"over-predicts when selected / true > {OVER_PREDICTION}, under-predicts below "
        f"{UNDER_PREDICTION:.2f}",
    }


def ddi_tradeoff(y_true: np.ndarray, y_prob: np.ndarray, threshold: float, ddi: np.ndarray) -> list[dict]:
    """Jaccard, F1, DDI rate and #drugs (overall) when at most N interacting pairs are kept, N in DDI_LIMITS.

    The cap is `selection.limit_ddi`, the rule `leader predict --max-ddi-pairs` applies; each smaller N keeps
    a subset of the drugs of the larger one, so #drugs and interacting pairs fall with N."""
    import torch

    from leadercli import selection

    probs = torch.from_numpy(np.array(y_prob, dtype=np.float32))  # (N, M), a writable copy
    adj = selection.ddi_matrix(ddi, probs.shape[1])  # (M, M)
    chosen = selection.select(probs, threshold)  # (N, M)
    # the greedy cap for a smaller N passes through the state of every larger one (it drops the same drugs
    # while a patient has more pairs than that), so each cap continues from the next larger one
    kept_by: dict = {None: chosen}
    start = chosen
    for n in sorted((n for n in DDI_LIMITS if n is not None), reverse=True):
        start, _ = selection.limit_ddi(probs, start, adj, n)
        kept_by[n] = start
    out = []
    for n in DDI_LIMITS:
        kept = kept_by[n]
        dropped = chosen & ~kept
        pred = kept.numpy()
        out.append(
            {
                "max_pairs": n,
                "jaccard": float(metrics.jaccard(y_true, pred).mean()) if len(pred) else 0.0,
                "f1": float(metrics.f1(y_true, pred).mean()) if len(pred) else 0.0,
                "ddi_rate": metrics.ddi_rate(pred, ddi),
                "avg_drugs": metrics.avg_drugs(pred),
                "avg_interacting_pairs": float(selection.interacting_pairs(kept, adj).float().mean())
                if len(pred)
                else 0.0,
                "avg_dropped": float(dropped.sum(1).float().mean()) if len(pred) else 0.0,
            }
        )
    return out


def evaluate_scores(
    name: str,
    y_true: np.ndarray,
    y_prob: np.ndarray,
    n_visits: np.ndarray,
    threshold: dict,
    ddi: np.ndarray,
    rcfg,
) -> tuple[dict, dict]:
    """(entry, replicates): one report entry (metrics per group with intervals, small-group flags, per-drug F1,
    selection summary, DDI trade-off, the threshold used) and {group: {metric: (rounds,) array}} for the
    paired comparisons of `compare` (not JSON; not stored)."""
    groups = metrics.evaluate_groups(
        y_true,
        y_prob,
        threshold["value"],
        ddi,
        n_visits,
        rounds=rcfg.bootstrap_rounds,
        seed=rcfg.seed,
        keep_replicates=True,
    )
    reps = {g: v.pop("replicates") for g, v in groups.items() if "replicates" in v}
    for v in groups.values():
        v["small"] = 0 < v["n"] < SMALL_GROUP
    pred = metrics.binarize(y_prob, threshold["value"])
    entry = {
        "name": name,
        "threshold": threshold,
        "n": int(len(y_true)),
        "groups": groups,
        "per_drug_f1": metrics.per_drug_f1(y_true, pred),
        "selection": selection_summary(y_true, pred),
        "ddi_tradeoff": ddi_tradeoff(y_true, y_prob, threshold["value"], ddi),
        "calibration": calibration_block(y_true, y_prob, n_visits),
    }
    return entry, reps


def calibration_block(y_true: np.ndarray, y_prob: np.ndarray, n_visits: np.ndarray) -> dict:
    """ECE, Brier and the reliability bins pooled over drugs (`leadercli.calibration`), overall, plus ECE and
    Brier per patient group."""
    out = calibration.calibration_summary(y_true, y_prob)
    out["groups"] = {
        g: {
            "n": int(m.sum()),
            "ece": calibration.ece(y_true[m], y_prob[m]),
            "brier": calibration.brier(y_true[m], y_prob[m]),
        }
        for g, m in metrics.groups(n_visits).items()
        if m.any()
    }
    return out


def _diffs(entry: dict, other: dict, reps: dict, other_reps: dict) -> dict:
    """{group: paired difference (entry − other) per compared metric} over the groups both have."""
    out = {}
    for g in GROUPS:
        a, b = entry["groups"][g], other["groups"][g]
        if a["n"] == 0 or g not in reps or g not in other_reps:
            continue
        out[g] = metrics.paired_difference(reps[g], other_reps[g], a["point"], b["point"], COMPARED)
    return out


def _best(entries: list[dict], among: list[int]) -> int:
    """The index (of `among`) with the highest overall point PRAUC; the first one on a tie."""
    return max(among, key=lambda i: entries[i]["groups"]["overall"]["point"]["prauc"])


def compare(entries: list[dict], reps: list[dict], floor_index: int) -> dict:
    """Add `vs_best`, `vs_baseline` and `vs_floor` to every entry (in place); return the report's comparison
    block.

    All entries must be scored on the same patients in the same order (the paired bootstrap draws the same
    rows for all of them: same n, rounds and seed)."""
    best = _best(entries, list(range(len(entries))))
    baselines = [i for i, e in enumerate(entries) if e.get("kind") in kinds.TABLE_BASELINES]
    base = _best(entries, baselines) if baselines else None
    floor = entries[floor_index]
    not_beating = []
    for i, e in enumerate(entries):
        if i == best:
            e["vs_best"] = None
        else:
            d = _diffs(e, entries[best], reps[i], reps[best])
            e["vs_best"] = {"reference": entries[best]["name"], "groups": d}
        if base is None or i == base:
            e["vs_baseline"] = None
        else:
            d = _diffs(e, entries[base], reps[i], reps[base])
            e["vs_baseline"] = {"reference": entries[base]["name"], "groups": d}
        if i == floor_index:
            e["vs_floor"] = None
            continue
        d = _diffs(e, floor, reps[i], reps[floor_index])
        o = d["overall"][FLOOR_METRIC]
        status = "above" if o["lo"] > 0 else ("below" if o["diff"] <= 0 else "not distinguishable")
        e["vs_floor"] = {"reference": floor["name"], "status": status, "beats": status == "above", **o}
        if status != "above":
            not_beating.append(e["name"])
    return {
        "best": entries[best]["name"],
        "chosen_by": "highest overall point PRAUC",
        "best_baseline": entries[base]["name"] if base is not None else None,
        "baseline_rule": BASELINE_RULE,
        "metrics": list(COMPARED),
        "method": metrics.PAIRED_METHOD,
        "floor": {
            "run": floor["name"],
            "metric": FLOOR_METRIC,
            "rule": FLOOR_RULE,
            "not_beating": not_beating,
        },
    }


def header(version: str, created_at: str, artifact: dict, y_true, n_visits, ddi, settings) -> dict:
    """The report fields every report has: artifact, samples and their groups, bootstrap method."""
    g = metrics.groups(n_visits)
    rcfg = settings.report
    counts = {k: int(m.sum()) for k, m in g.items()}
    boot = {
        "rounds": rcfg.bootstrap_rounds,
        "seed": rcfg.seed,
        "resampling": "n of n patients with replacement, within each group",
        "interval": "95 % percentile",
        "method": metrics.BOOTSTRAP_METHOD,
        "small_group": SMALL_GROUP,
    }
    if rcfg.bootstrap_fraction is not None:
        boot["ignored"] = (
            f"report.bootstrap_fraction = {rcfg.bootstrap_fraction} is ignored (removed setting)"
        )
    return {
        "leadercli_version": version,
        "created_at": created_at,
        "split": "test",
        "artifact": artifact,
        "samples": {
            "n": int(len(y_true)),
            "groups": counts,
            "small_groups": [k for k, n in counts.items() if 0 < n < SMALL_GROUP],
            "per_visit": bool(settings.samples.per_visit),
            "group_rule": "single = 1 visit including the target, multi = more",
        },
        "bootstrap": boot,
        "true_ddi_rate": metrics.ddi_rate(y_true, ddi),
        "ddi_tradeoff": {"max_pairs": list(DDI_LIMITS), "rule": DDI_RULE},
    }


def assemble(
    source: str,
    artifact_info: dict,
    artifact,
    y_true,
    n_visits,
    ddi,
    settings,
    frequency,
    entries,
    comparison,
) -> dict:
    """A whole report: `header`, where the scores came from ("runs" / "predictions"), the drugs block (training
    frequencies `frequency`), the scored entries, their comparison and the paper's table; `efficiency` is the
    caller's."""
    report = header(__version__, runs.now(), artifact_info, y_true, n_visits, ddi, settings)
    report["source"] = source
    report["drugs"] = drugs_block(artifact.labels, artifact.vocab.medications.titles, frequency, y_true)
    report["runs"] = entries
    report["comparison"] = comparison
    report["table"] = table_block(entries, comparison)  # the paper's table (`report/table.py`)
    return report


def drugs_block(labels: list[str], names: list[str], train_frequency, y_test: np.ndarray) -> dict:
    test_frequency = metrics.drug_frequency(y_test)
    return {
        "labels": list(labels),
        "names": list(names),
        "train_frequency": train_frequency,
        "test_frequency": test_frequency,
        "present_in_test": int((test_frequency > 0).sum()),
        "frequency_note": "share of target visits containing the drug (train: training split; test: test split)",
    }
