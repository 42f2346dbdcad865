"""Calibration: do the scores mean probabilities? Measured (ECE, Brier, reliability bins) and fitted (temperature
scaling, Guo et al., "On Calibration of Modern Neural Networks", ICML 2017).

Conventions as in `metrics.py`: `y_true` (N, M) bool multi-hot, `y_prob` (N, M) scores in [0, 1]. Every
patient–drug pair is one binary prediction, so the measures pool over drugs:

- `brier`: mean of (p − y)² over all N·M pairs;
- `reliability`: 10 equal-width bins of p over [0, 1] (the last bin closed); per bin the number of pairs, the
  mean predicted probability and the observed frequency of y = 1;
- `ece` (expected calibration error): Σ_bins (n_b / N·M) · |mean p_b − observed_b|.

Temperature scaling divides every logit by one positive number T fitted on the validation split by minimising
the binary cross-entropy of all pairs: p' = σ(logit(p) / T). It is monotone in p, so every patient's ranking —
and with it PRAUC — is unchanged; only the scale moves, and the decision threshold is re-tuned on the
calibrated scale. T is found by a golden-section search over log T in [log 0.05, log 20] (convex in log T for
BCE; deterministic, no optimiser state), on float64.

A `Calibrator` is plain numbers: it is stored as `calibration.json` in the run folder and its fields are copied
into the run's manifest.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

METHODS = ("temperature", "none")  # the `calibration.method` setting's choices
BINS = 10
EPS = 1e-6  # probabilities are clipped to [EPS, 1 − EPS] before taking logits
CALIBRATION_FILE = "calibration.json"


def _pooled(y_true: np.ndarray, y_prob: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true, dtype=np.float64).ravel()
    p = np.asarray(y_prob, dtype=np.float64).ravel()
    if y.shape != p.shape:
        raise ValueError(f"y_true and y_prob differ in shape: {np.shape(y_true)} vs {np.shape(y_prob)}")
    return y, p


def brier(y_true: np.ndarray, y_prob: np.ndarray) -> float:
    """Mean squared difference between score and outcome over all patient–drug pairs (0 = perfect)."""
    y, p = _pooled(y_true, y_prob)
    return float(np.mean((p - y) ** 2)) if len(y) else 0.0


def reliability(y_true: np.ndarray, y_prob: np.ndarray, bins: int = BINS) -> dict[str, list[float]]:
    """Per equal-width bin of the score: `count`, `mean_prob` (predicted) and `observed` (frequency of y = 1);
    empty bins have count 0 and NaN means. `edges` has bins + 1 entries."""
    y, p = _pooled(y_true, y_prob)
    edges = np.linspace(0.0, 1.0, bins + 1)
    idx = np.clip(np.searchsorted(edges, p, side="right") - 1, 0, bins - 1)  # p = 1 falls in the last bin
    count = np.bincount(idx, minlength=bins).astype(np.float64)
    sum_p = np.bincount(idx, weights=p, minlength=bins)
    sum_y = np.bincount(idx, weights=y, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_p = np.where(count > 0, sum_p / count, np.nan)
        observed = np.where(count > 0, sum_y / count, np.nan)
    return {
        "edges": edges.tolist(),
        "count": count.astype(int).tolist(),
        "mean_prob": mean_p.tolist(),
        "observed": observed.tolist(),
    }


def ece(y_true: np.ndarray, y_prob: np.ndarray, bins: int = BINS) -> float:
    """Expected calibration error over `bins` equal-width bins, pooled over drugs (0 = perfect)."""
    rel = reliability(y_true, y_prob, bins)
    count = np.asarray(rel["count"], dtype=np.float64)
    if count.sum() == 0:
        return 0.0
    gap = np.abs(np.nan_to_num(np.asarray(rel["mean_prob"]) - np.asarray(rel["observed"])))
    return float(np.sum(count / count.sum() * gap))


def calibration_summary(y_true: np.ndarray, y_prob: np.ndarray, bins: int = BINS) -> dict:
    """ECE, Brier and the reliability bins in one dict (what the report stores per run)."""
    return {
        "ece": ece(y_true, y_prob, bins),
        "brier": brier(y_true, y_prob),
        "bins": bins,
        "reliability": reliability(y_true, y_prob, bins),
    }


def logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), EPS, 1.0 - EPS)
    return np.log(p) - np.log1p(-p)


def _bce(z: np.ndarray, y: np.ndarray) -> float:
    # mean of softplus(z) − y·z: the binary cross-entropy of σ(z), stable for large |z|
    return float(np.mean(np.logaddexp(0.0, z) - y * z))


def fit_temperature(
    y_true: np.ndarray, y_prob: np.ndarray, lo: float = 0.05, hi: float = 20.0, iters: int = 80
) -> float:
    """The temperature T > 0 that minimises the pooled BCE of σ(logit(p) / T) (golden-section search on log T)."""
    y, p = _pooled(y_true, y_prob)
    if len(y) == 0 or y.min() == y.max():
        return 1.0  # nothing to fit on (no pairs, or one class only)
    z = logit(p)
    a, b = math.log(lo), math.log(hi)
    g = (math.sqrt(5.0) - 1.0) / 2.0
    c, d = b - g * (b - a), a + g * (b - a)
    fc, fd = _bce(z / math.exp(c), y), _bce(z / math.exp(d), y)
    for _ in range(iters):
        if fc <= fd:
            b, d, fd = d, c, fc
            c = b - g * (b - a)
            fc = _bce(z / math.exp(c), y)
        else:
            a, c, fc = c, d, fd
            d = a + g * (b - a)
            fd = _bce(z / math.exp(d), y)
    return float(math.exp((a + b) / 2.0))


@dataclass(frozen=True)
class Calibrator:
    """A fitted map from raw scores to calibrated probabilities."""

    method: str = "temperature"  # only temperature scaling so far
    temperature: float = 1.0  # logits are divided by it; > 1 softens over-confident scores
    fitted_on: str = "val"  # the split it was fitted on
    n_pairs: int = 0  # patient–drug pairs it was fitted on
    ece_before: float | None = None  # ECE on the fitting split, before and after
    ece_after: float | None = None

    def apply(self, y_prob: np.ndarray) -> np.ndarray:
        """Calibrated probabilities, same shape (numpy, float64)."""
        z = logit(y_prob) / self.temperature
        return 1.0 / (1.0 + np.exp(-z))

    def apply_torch(self, probs):
        """The same map on a torch tensor of probabilities (kept in its dtype and device)."""
        import torch  # local: this module is also read by `leader report` paths that need no torch

        p = probs.clamp(EPS, 1.0 - EPS)
        return torch.sigmoid((torch.log(p) - torch.log1p(-p)) / self.temperature)

    def to_dict(self) -> dict:
        return asdict(self)

    @staticmethod
    def from_dict(d: dict) -> Calibrator:
        if d.get("method") != "temperature":
            raise ValueError(f"unknown calibration method {d.get('method')!r}")
        t = float(d.get("temperature", 1.0))
        if not (t > 0 and math.isfinite(t)):
            raise ValueError(f"calibration temperature must be a positive number, got {t!r}")
        known = {k: d[k] for k in Calibrator.__dataclass_fields__ if k in d}
        return Calibrator(**known)


def fit_calibrator(y_true: np.ndarray, y_prob: np.ndarray, split: str = "val") -> Calibrator:
    """Temperature scaling fitted on (y_true, y_prob), with the ECE before and after on the same pairs."""
    t = fit_temperature(y_true, y_prob)
    cal = Calibrator(temperature=t, fitted_on=split, n_pairs=int(np.size(y_true)))
    return Calibrator(
        temperature=t,
        fitted_on=split,
        n_pairs=cal.n_pairs,
        ece_before=ece(y_true, y_prob),
        ece_after=ece(y_true, cal.apply(y_prob)),
    )


def save_calibrator(cal: Calibrator, run_dir: Path) -> Path:
    path = Path(run_dir) / CALIBRATION_FILE
    path.write_text(json.dumps(cal.to_dict(), indent=2) + "\n")
    return path


def load_calibrator(run_dir: Path) -> Calibrator | None:
    """The run's calibrator, or None for runs saved without one (they score as they always did)."""
    path = Path(run_dir) / CALIBRATION_FILE
    if not path.is_file():
        return None
    return Calibrator.from_dict(json.loads(path.read_text()))


def fit_for_run(method: str, y_val: np.ndarray, p_val: np.ndarray) -> Calibrator | None:
    """The calibrator the `calibration.method` setting asks for, fitted on the validation split (None for
    "none", or when the split is empty)."""
    if method not in METHODS:
        raise ValueError(f"unknown calibration method {method!r} (choose {', '.join(METHODS)})")
    if method == "none" or np.size(y_val) == 0:
        return None
    return fit_calibrator(y_val, p_val, split="val")


def calibrate_splits(method: str, scored: dict[str, dict]) -> Calibrator | None:
    """Fit on `scored["val"]` (`{"labels", "probs"}`) and replace every split's `probs` by calibrated float32
    probabilities, in place, so that the threshold is tuned and the metrics computed on the calibrated scale;
    returns the calibrator (None: nothing changed)."""
    cal = fit_for_run(method, scored["val"]["labels"], scored["val"]["probs"])
    if cal is not None:
        for s in scored.values():
            s["probs"] = cal.apply(s["probs"]).astype(np.float32)
    return cal


def manifest_entry(cal: Calibrator | None) -> dict:
    """What a run's manifest records: the calibrator's fields and its file, or method "none"."""
    if cal is None:
        return {"method": "none"}
    return {**cal.to_dict(), "file": CALIBRATION_FILE}


def write_for_run(run_dir: Path, manifest: dict) -> None:
    """`calibration.json` in the run folder when the manifest records a fitted calibrator (before the manifest
    is written: a manifest means a finished run)."""
    entry = manifest.get("calibration") or {}
    if entry.get("method", "none") != "none":
        save_calibrator(Calibrator.from_dict(entry), run_dir)
