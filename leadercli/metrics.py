"""Evaluation metrics for multi-label medication recommendation (DESIGN §5, leader-reference.md §5).

Pure numpy functions: every input is an argument (threshold, DDI pairs, visit counts), nothing is read from
disk, and every metric is vectorised over samples (no Python loop per sample).

Conventions (N samples, M drugs = labels):
- `y_true`, `y_pred`: (N, M) bool multi-hot; `y_prob`: (N, M) float scores in [0, 1].
- A drug is predicted when its score is >= the threshold (`binarize`); the reference uses `>`, which only
  differs for a score exactly equal to the threshold. `leader predict` uses the same rule.
- Per-sample metrics are averaged over samples, as in the reference (§5):
  Jaccard = |pred ∩ true| / |pred ∪ true|, and 0.0 when the union is empty (no true and no predicted drug;
  the reference's guard is broken, §7.17);
  precision = |∩| / |pred| (0.0 without a prediction); recall = |∩| / |true| (0.0 without a true drug);
  F1 = 2PR / (P + R) per sample, 0.0 when P + R = 0;
  PRAUC = average precision over the M drugs, identical to scikit-learn's `average_precision_score`
  (tied scores form one threshold); 0.0 for a sample with no true drug (scikit-learn also gives 0.0).
- DDI rate: pooled over all predicted pairs i < j of all samples: #interacting / #pairs (0.0 if no pair).
- Groups by the number of visits of the patient INCLUDING the target visit: single = 1, multi > 1.
- Bootstrap (`BOOTSTRAP_METHOD`): `rounds` resamples of n of n samples WITH replacement (numpy Generator
  seeded with `seed`), vectorised: per-sample values are gathered through an (rounds, n) index matrix, in
  chunks. Every metric gets the mean, std (ddof=1) and 95 % percentile interval over the rounds. Two runs on
  the same samples are compared by a paired bootstrap of the difference (`paired_difference`).
"""

from __future__ import annotations

import numpy as np

METRICS = ("prauc", "jaccard", "f1", "precision", "recall", "ddi_rate", "avg_drugs", "avg_true_drugs")
DEFAULT_GRID = np.arange(0.05, 0.951, 0.01)


def _check(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(a), np.asarray(b)
    if a.ndim != 2 or a.shape != b.shape:
        raise ValueError(f"expected two (N, M) arrays of the same shape, got {a.shape} and {b.shape}")
    return a, b


def _div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den elementwise, 0.0 where den == 0."""
    num, den = np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64)
    return np.divide(num, den, out=np.zeros(np.broadcast(num, den).shape), where=den != 0)


def binarize(y_prob: np.ndarray, threshold: float) -> np.ndarray:
    """(N, M) bool: the drugs whose score is >= threshold."""
    return np.asarray(y_prob) >= threshold


def jaccard(y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    """(N,) per-sample |pred ∩ true| / |pred ∪ true|; 0.0 when both sets are empty."""
    t, p = _check(y_true, y_pred)
    t, p = t.astype(bool), p.astype(bool)
    return _div((t & p).sum(1), (t | p).sum(1))


def precision_recall(y_true: np.ndarray, y_pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """((N,), (N,)) per-sample precision (0.0 without a prediction) and recall (0.0 without a true drug)."""
    t, p = _check(y_true, y_pred)
    t, p = t.astype(bool), p.astype(bool)
    inter = (t & p).sum(1)
    return _div(inter, p.sum(1)), _div(inter, t.sum(1))


def f1(y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    """(N,) per-sample F1 = 2PR / (P + R), 0.0 when P + R = 0."""
    prec, rec = precision_recall(y_true, y_pred)
    return _div(2 * prec * rec, prec + rec)


def prauc(y_true: np.ndarray, y_prob: np.ndarray) -> np.ndarray:
    """(N,) per-sample average precision over the M drugs, equal to sklearn's `average_precision_score`.

    AP = Σ_k (R_k − R_{k−1}) · P_k over the distinct score thresholds k (descending). Rows are sorted by
    descending score; every position takes the precision at the END of its group of tied scores, so a tie
    group counts as one threshold; AP = Σ_j true_j · precision_at_group_end(j) / #true.
    """
    t, s = _check(y_true, y_prob)
    n, m = s.shape
    if m == 0:
        return np.zeros(n)
    order = np.argsort(-s, axis=1, kind="stable")  # (N, M) descending scores
    s_sorted = np.take_along_axis(s, order, axis=1)  # (N, M)
    t_sorted = np.take_along_axis(t.astype(bool), order, axis=1)  # (N, M)
    tp = np.cumsum(t_sorted, axis=1)  # (N, M) true positives among the top j+1
    precision = tp / np.arange(1, m + 1)  # (N, M)
    # position j ends a tie group when the next score differs (or j is last)
    is_end = np.ones((n, m), dtype=bool)
    is_end[:, :-1] = s_sorted[:, :-1] != s_sorted[:, 1:]
    idx = np.where(is_end, np.arange(m), m)  # (N, M)
    group_end = np.minimum.accumulate(idx[:, ::-1], axis=1)[:, ::-1]  # (N, M) first end at or after j
    prec_end = np.take_along_axis(precision, group_end, axis=1)  # (N, M)
    return _div((t_sorted * prec_end).sum(1), t_sorted.sum(1))


def ddi_matrix(ddi_pairs: np.ndarray, n_labels: int) -> np.ndarray:
    """(M, M) symmetric 0/1 float matrix from (K, 2) label-index pairs; the diagonal stays 0."""
    pairs = np.asarray(ddi_pairs, dtype=np.int64).reshape(-1, 2)
    if pairs.size and (pairs.min() < 0 or pairs.max() >= n_labels):
        raise ValueError(f"DDI pair index out of range [0, {n_labels})")
    a = np.zeros((n_labels, n_labels))
    a[pairs[:, 0], pairs[:, 1]] = 1.0
    a[pairs[:, 1], pairs[:, 0]] = 1.0
    np.fill_diagonal(a, 0.0)
    return a


def _ddi_counts(y_pred: np.ndarray, ddi_pairs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """((N,), (N,)) per-sample #interacting predicted pairs and #predicted pairs i < j."""
    p = np.asarray(y_pred).astype(np.float64)  # (N, M)
    a = ddi_matrix(ddi_pairs, p.shape[1])  # (M, M)
    interacting = ((p @ a) * p).sum(1) / 2  # (N,) y A y / 2
    k = p.sum(1)  # (N,)
    return interacting, k * (k - 1) / 2


def ddi_rate(y_pred: np.ndarray, ddi_pairs: np.ndarray) -> float:
    """Pooled DDI rate: #interacting predicted pairs / #predicted pairs over all samples (0.0 if none)."""
    interacting, pairs = _ddi_counts(y_pred, ddi_pairs)
    return float(_div(interacting.sum(), pairs.sum()))


def avg_drugs(y_pred: np.ndarray) -> float:
    """Mean number of predicted drugs per sample (0.0 for no sample)."""
    p = np.asarray(y_pred)
    return float(p.sum(1).mean()) if len(p) else 0.0


def per_sample(
    y_true: np.ndarray, y_prob: np.ndarray, threshold: float, ddi_pairs: np.ndarray
) -> dict[str, np.ndarray]:
    """Per-sample quantities (each (N,)) from which every summary metric is a mean or a pooled ratio."""
    t, s = _check(y_true, y_prob)
    t = t.astype(bool)
    p = binarize(s, threshold)
    prec, rec = precision_recall(t, p)
    interacting, pairs = _ddi_counts(p, ddi_pairs)
    return {
        "prauc": prauc(t, s),
        "jaccard": jaccard(t, p),
        "f1": _div(2 * prec * rec, prec + rec),
        "precision": prec,
        "recall": rec,
        "ddi_interacting": interacting,
        "ddi_pairs": pairs,
        "avg_drugs": p.sum(1).astype(np.float64),
        "avg_true_drugs": t.sum(1).astype(np.float64),
    }


def summarize(values: dict[str, np.ndarray], idx: np.ndarray | None = None) -> dict[str, float]:
    """The metrics of `evaluate` from `per_sample` values, over the samples `idx` (an index or bool mask)."""
    v = values if idx is None else {k: a[idx] for k, a in values.items()}
    n = len(v["prauc"])
    out = {k: float(v[k].mean()) if n else 0.0 for k in METRICS if k != "ddi_rate"}
    out["ddi_rate"] = float(_div(v["ddi_interacting"].sum(), v["ddi_pairs"].sum()))
    out = {k: out[k] for k in METRICS}
    out["n"] = n
    return out


def evaluate(
    y_true: np.ndarray, y_prob: np.ndarray, threshold: float, ddi_pairs: np.ndarray
) -> dict[str, float]:
    """prauc, jaccard, f1, precision, recall, ddi_rate, avg_drugs, avg_true_drugs (floats) and n (int)."""
    return summarize(per_sample(y_true, y_prob, threshold, ddi_pairs))


def groups(n_visits: np.ndarray) -> dict[str, np.ndarray]:
    """Boolean (N,) masks: overall, single (1 visit incl. the target), multi (> 1)."""
    v = np.asarray(n_visits)
    return {"overall": np.ones(v.shape, dtype=bool), "single": v == 1, "multi": v > 1}


# -- bootstrap -----------------------------------------------------------------------------------------

BOOTSTRAP_METHOD = (
    "non-parametric bootstrap: each round resamples n of the n patients of a group with replacement and "
    "recomputes every metric (per-patient means; the DDI rate as pooled ratio); mean and std (ddof=1) over the "
    "rounds, 95 % percentile interval (2.5th–97.5th percentile of the rounds)"
)
PAIRED_METHOD = (
    "paired bootstrap: the same resampled patients score both runs, the interval is the 2.5th–97.5th "
    "percentile of the per-round difference; two runs are not distinguishable when that interval covers 0"
)
_CHUNK_CELLS = 2_000_000  # resampled (round, patient) cells per chunk: bounds memory at ~16 MB of indices


def resample_indices(n: int, rounds: int, seed: int):
    """Yield (r, n) int index blocks, `rounds` rows in all: every row draws n of n patients with replacement.

    Deterministic in (n, rounds, seed): two calls with the same arguments give the same rows, which is what
    pairs the bootstrap of two runs scored on the same patients."""
    if n < 1 or rounds < 1:
        raise ValueError("the bootstrap needs at least one sample and one round")
    rng = np.random.default_rng(seed)
    step = max(1, _CHUNK_CELLS // n)
    for start in range(0, rounds, step):
        yield rng.integers(0, n, size=(min(step, rounds - start), n))  # (r, n)


def replicates(values: dict[str, np.ndarray], rounds: int, seed: int) -> dict[str, np.ndarray]:
    """{metric: (rounds,) value of the metric in each bootstrap round} from `per_sample` values."""
    n = len(values["prauc"])
    means = [k for k in METRICS if k != "ddi_rate"]
    out: dict[str, list[np.ndarray]] = {k: [] for k in METRICS}
    for idx in resample_indices(n, rounds, seed):  # (r, n)
        for k in means:
            out[k].append(values[k][idx].mean(1))  # (r,)
        out["ddi_rate"].append(_div(values["ddi_interacting"][idx].sum(1), values["ddi_pairs"][idx].sum(1)))
    return {k: np.concatenate(v) for k, v in out.items()}


def interval(reps: np.ndarray) -> dict[str, float]:
    """{"mean", "std" (ddof=1; 0 for one round), "lo", "hi" (95 % percentile interval)} of bootstrap rounds."""
    r = np.asarray(reps, dtype=np.float64)
    lo, hi = np.percentile(r, [2.5, 97.5])
    return {
        "mean": float(r.mean()),
        "std": float(r.std(ddof=1)) if len(r) > 1 else 0.0,
        "lo": float(lo),
        "hi": float(hi),
    }


def summarize_replicates(reps: dict[str, np.ndarray]) -> dict[str, dict[str, float]]:
    return {k: interval(reps[k]) for k in METRICS}


def paired_difference(
    reps_a: dict[str, np.ndarray],
    reps_b: dict[str, np.ndarray],
    point_a: dict[str, float],
    point_b: dict[str, float],
    keys: tuple[str, ...] = ("prauc", "jaccard", "f1"),
) -> dict[str, dict]:
    """{metric: {"diff" (point a − b), "mean", "std", "lo", "hi", "distinguishable"}} for two runs whose
    replicates were drawn with the same (n, rounds, seed) on the same patients (`replicates`)."""
    out = {}
    for k in keys:
        d = interval(np.asarray(reps_a[k]) - np.asarray(reps_b[k]))
        out[k] = {
            "diff": float(point_a[k] - point_b[k]),
            **d,
            "distinguishable": bool(d["lo"] > 0 or d["hi"] < 0),
        }
    return out


def bootstrap(
    y_true: np.ndarray,
    y_prob: np.ndarray,
    threshold: float,
    ddi_pairs: np.ndarray,
    rounds: int = 1000,
    fraction: float | None = None,
    seed: int = 42,
) -> dict[str, dict[str, float]]:
    """{metric: {"mean", "std", "lo", "hi"}} over `rounds` resamples of n of n samples with replacement
    (`BOOTSTRAP_METHOD`). `fraction` is accepted for old callers and ignored. ValueError for no sample."""
    del fraction  # removed: subsampling without replacement understated the uncertainty (issue 13)
    values = per_sample(y_true, y_prob, threshold, ddi_pairs)
    if len(values["prauc"]) == 0:
        raise ValueError("bootstrap needs at least one sample")
    return summarize_replicates(replicates(values, rounds, seed))


def evaluate_groups(
    y_true: np.ndarray,
    y_prob: np.ndarray,
    threshold: float,
    ddi_pairs: np.ndarray,
    n_visits: np.ndarray,
    rounds: int = 1000,
    fraction: float | None = None,
    seed: int = 42,
    keep_replicates: bool = False,
) -> dict[str, dict]:
    """{group: {"n": int, "point": evaluate(...), "bootstrap": bootstrap(...)}} for overall/single/multi.

    A group without samples gets {"n": 0, "point": None, "bootstrap": None}. Each group is resampled within
    itself with the same `seed`. `fraction` is accepted for old callers and ignored. `keep_replicates` adds
    "replicates" ({metric: (rounds,) array}, not JSON) for paired comparisons (`paired_difference`)."""
    del fraction
    values = per_sample(y_true, y_prob, threshold, ddi_pairs)
    if len(np.asarray(n_visits)) != len(values["prauc"]):
        raise ValueError("n_visits must have one entry per sample")
    out: dict[str, dict] = {}
    for name, mask in groups(n_visits).items():
        n = int(mask.sum())
        if n == 0:
            out[name] = {"n": 0, "point": None, "bootstrap": None}
            continue
        sub = {k: a[mask] for k, a in values.items()}
        reps = replicates(sub, rounds, seed)
        out[name] = {"n": n, "point": summarize(sub), "bootstrap": summarize_replicates(reps)}
        if keep_replicates:
            out[name]["replicates"] = reps
    return out


def tune_threshold(y_true: np.ndarray, y_prob: np.ndarray, grid: np.ndarray = DEFAULT_GRID) -> float:
    """The grid threshold that maximises mean Jaccard (ties → the smallest threshold).

    One pass: each score falls into the bin of grid thresholds it reaches; per-sample histograms of all scores
    and of true-drug scores, cumulated from the top, give |pred| and |pred ∩ true| at every threshold."""
    t, s = _check(y_true, y_prob)
    t = t.astype(bool)
    g = np.unique(np.asarray(grid, dtype=np.float64))  # ascending
    n, m = s.shape
    if n == 0 or g.size == 0:
        raise ValueError("tune_threshold needs at least one sample and one grid value")
    nb = g.size + 1
    b = np.searchsorted(g, s, side="right")  # (N, M) #thresholds <= score: predicted at g[k] iff k < b
    flat = (np.arange(n)[:, None] * nb + b).ravel()  # (N·M,)
    hist_all = np.bincount(flat, minlength=n * nb).reshape(n, nb)  # (N, G+1)
    hist_true = np.bincount(flat, weights=t.ravel(), minlength=n * nb).reshape(n, nb)  # (N, G+1)
    # count at threshold k = #scores with b > k = sum over bins k+1..G
    n_pred = np.cumsum(hist_all[:, ::-1], axis=1)[:, ::-1][:, 1:]  # (N, G)
    n_inter = np.cumsum(hist_true[:, ::-1], axis=1)[:, ::-1][:, 1:]  # (N, G)
    n_true = t.sum(1, keepdims=True)  # (N, 1)
    mean_jaccard = _div(n_inter, n_pred + n_true - n_inter).mean(0)  # (G,)
    return float(g[int(np.argmax(mean_jaccard))])


def per_drug_f1(y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    """(M,) F1 of each drug over the samples: 2TP / (2TP + FP + FN), 0.0 when the drug is never true or
    predicted."""
    t, p = _check(y_true, y_pred)
    t, p = t.astype(bool), p.astype(bool)
    tp = (t & p).sum(0)
    return _div(2 * tp, t.sum(0) + p.sum(0))


def drug_frequency(y_true: np.ndarray) -> np.ndarray:
    """(M,) share of samples in which each drug is true (0.0 for no sample)."""
    t = np.asarray(y_true).astype(bool)
    return t.mean(0) if len(t) else np.zeros(t.shape[1])


def choose_threshold(fixed: float | None, y_true: np.ndarray, y_prob: np.ndarray) -> dict:
    """The decision threshold and how it was chosen (every report states it)."""
    if fixed is not None:
        return {"value": float(fixed), "how": "fixed in settings"}
    if len(y_true) == 0:
        return {"value": 0.5, "how": "default (empty validation split)"}
    return {
        "value": float(tune_threshold(y_true, y_prob)),
        "how": "tuned on validation (max Jaccard)",
    }
