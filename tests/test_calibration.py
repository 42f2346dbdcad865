"""Calibration measures on hand-computed cases, and temperature scaling on scores with a known miscalibration."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from leadercli.calibration import (
    Calibrator,
    brier,
    ece,
    fit_calibrator,
    fit_temperature,
    load_calibrator,
    logit,
    reliability,
    save_calibrator,
)


def test_hand_computed_ece_brier_and_bins() -> None:
    y = np.array([[1, 0], [0, 0]], dtype=bool)
    p = np.array([[0.95, 0.15], [0.05, 0.15]])
    # bins: 0.05 → bin 0 (y 0), 0.15 ×2 → bin 1 (y 0, 0), 0.95 → bin 9 (y 1)
    rel = reliability(y, p)
    assert rel["count"] == [1, 2, 0, 0, 0, 0, 0, 0, 0, 1]
    assert rel["mean_prob"][1] == pytest.approx(0.15) and rel["observed"][1] == 0.0
    assert np.isnan(rel["mean_prob"][5])
    # ECE = 1/4·0.05 + 2/4·0.15 + 1/4·0.05
    assert ece(y, p) == pytest.approx(0.25 * 0.05 + 0.5 * 0.15 + 0.25 * 0.05)
    assert brier(y, p) == pytest.approx((0.05**2 + 0.15**2 + 0.05**2 + 0.15**2) / 4)
    # a score of exactly 1.0 falls in the last bin
    assert reliability(np.array([[1]]), np.array([[1.0]]))["count"][-1] == 1


def _miscalibrated(seed: int, n: int = 4000, m: int = 20, power: float = 2.5):
    rng = np.random.default_rng(seed)
    p_true = rng.beta(0.6, 3.0, size=(n, m))
    y = rng.random((n, m)) < p_true
    over = 1.0 / (1.0 + np.exp(-power * logit(p_true)))  # over-confident: logits multiplied by `power`
    return y, p_true, over


def test_temperature_recovers_a_known_overconfidence() -> None:
    y, p_true, over = _miscalibrated(0)
    t = fit_temperature(y, over)
    assert t == pytest.approx(2.5, rel=0.08)
    cal = fit_calibrator(y, over)
    assert cal.temperature == pytest.approx(t)
    assert cal.ece_before > 0.05 and cal.ece_after < 0.02 and cal.ece_after < cal.ece_before / 3
    # on fresh data from the same process the fitted map still helps, and it never reorders a row
    y2, _, over2 = _miscalibrated(1)
    fixed = cal.apply(over2)
    assert ece(y2, fixed) < ece(y2, over2) / 3 and brier(y2, fixed) < brier(y2, over2)
    order = np.argsort(-over2, axis=1, kind="stable")
    assert (np.diff(np.take_along_axis(fixed, order, axis=1), axis=1) <= 0).all()  # monotone: same ranking
    # well-calibrated scores keep T ≈ 1
    assert fit_temperature(y, p_true) == pytest.approx(1.0, abs=0.08)


def test_torch_and_numpy_maps_agree_and_round_trip(tmp_path) -> None:
    cal = Calibrator(temperature=1.7, n_pairs=10, ece_before=0.2, ece_after=0.01)
    p = np.array([[0.01, 0.5, 0.93], [0.2, 0.0, 1.0]])
    got = cal.apply_torch(torch.tensor(p, dtype=torch.float64)).numpy()
    assert np.allclose(got, cal.apply(p), atol=1e-12)
    assert cal.apply(np.array([0.5]))[0] == pytest.approx(0.5)
    save_calibrator(cal, tmp_path)
    assert load_calibrator(tmp_path) == cal
    assert load_calibrator(tmp_path / "missing") is None  # old runs: no calibrator
    with pytest.raises(ValueError, match="positive"):
        Calibrator.from_dict({"method": "temperature", "temperature": -1})
    with pytest.raises(ValueError, match="unknown calibration"):
        Calibrator.from_dict({"method": "isotonic"})


def test_degenerate_inputs() -> None:
    assert fit_temperature(np.zeros((3, 2), bool), np.full((3, 2), 0.3)) == 1.0
    assert ece(np.zeros((0, 2), bool), np.zeros((0, 2))) == 0.0
    with pytest.raises(ValueError, match="shape"):
        brier(np.zeros((2, 2)), np.zeros((2, 3)))
