"""Metrics on hand-computed cases, edge cases, and agreement with scikit-learn (test-only dependency)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from leadercli import metrics as mt

T = np.array(
    [
        [1, 1, 0, 0],  # true {0, 1}
        [0, 0, 1, 0],  # true {2}
        [1, 0, 1, 1],  # true {0, 2, 3}
    ],
    dtype=bool,
)
P = np.array(
    [
        [1, 0, 1, 0],  # pred {0, 2}: ∩ {0}, ∪ {0,1,2}
        [0, 0, 0, 0],  # pred {}: ∩ {}, ∪ {2}
        [1, 0, 1, 1],  # pred = true
    ],
    dtype=bool,
)


def test_jaccard_precision_recall_f1_hand():
    # J = 1/3, 0/1, 3/3
    np.testing.assert_allclose(mt.jaccard(T, P), [1 / 3, 0.0, 1.0])
    prec, rec = mt.precision_recall(T, P)
    # P = 1/2, 0 (no prediction), 3/3 ; R = 1/2, 0/1, 3/3
    np.testing.assert_allclose(prec, [0.5, 0.0, 1.0])
    np.testing.assert_allclose(rec, [0.5, 0.0, 1.0])
    # F1 = 2·.5·.5/(.5+.5) = .5 ; 0 (P+R = 0) ; 1
    np.testing.assert_allclose(mt.f1(T, P), [0.5, 0.0, 1.0])


def test_f1_unequal_precision_recall():
    t = np.array([[1, 1, 1, 0]], dtype=bool)
    p = np.array([[1, 0, 0, 0]], dtype=bool)
    # P = 1/1, R = 1/3 → F1 = 2·(1/3)/(4/3) = 0.5
    np.testing.assert_allclose(mt.f1(t, p), [0.5])


def test_empty_sets():
    t = np.zeros((2, 3), dtype=bool)
    p = np.array([[0, 0, 0], [1, 0, 0]], dtype=bool)
    # no true and no predicted drug: union empty → 0.0 by our convention; no true drug → recall 0
    np.testing.assert_allclose(mt.jaccard(t, p), [0.0, 0.0])
    prec, rec = mt.precision_recall(t, p)
    np.testing.assert_allclose(prec, [0.0, 0.0])
    np.testing.assert_allclose(rec, [0.0, 0.0])
    np.testing.assert_allclose(mt.f1(t, p), [0.0, 0.0])
    np.testing.assert_allclose(mt.prauc(t, np.array([[0.1, 0.2, 0.3], [0.5, 0.5, 0.5]])), [0.0, 0.0])


def test_prauc_hand():
    t = np.array([[1, 0, 1, 0], [0, 1, 0, 0], [1, 0, 1, 0]], dtype=bool)
    s = np.array(
        [
            [0.9, 0.8, 0.7, 0.1],  # T F T F: precision at positives 1, 2/3 → AP = (1 + 2/3)/2 = 5/6
            [0.9, 0.8, 0.7, 0.1],  # the only positive at rank 2 → AP = 1/2
            [0.5, 0.5, 0.5, 0.5],  # all tied: one threshold, precision 2/4, recall 0→1 → AP = 1/2
        ]
    )
    np.testing.assert_allclose(mt.prauc(t, s), [5 / 6, 0.5, 0.5])


def test_prauc_partial_tie_hand():
    t = np.array([[1, 0, 1, 0, 1]], dtype=bool)
    s = np.array([[0.9, 0.6, 0.6, 0.6, 0.2]])
    # thresholds 0.9: TP 1/1 → P 1, ΔR 1/3; 0.6: TP 2/4 → P 1/2, ΔR 1/3; 0.2: TP 3/5 → P 3/5, ΔR 1/3
    # AP = (1 + 1/2 + 3/5)/3 = 0.7
    np.testing.assert_allclose(mt.prauc(t, s), [0.7])


def test_prauc_matches_sklearn_with_ties():
    rng = np.random.default_rng(0)
    n, m = 200, 30
    t = rng.random((n, m)) < 0.2
    t[np.arange(n), rng.integers(0, m, n)] = True  # at least one positive per row
    s_cont = rng.random((n, m))
    s_tied = np.round(rng.random((n, m)) * 4) / 4  # 5 distinct values → many ties
    s_tied[:5] = 0.5  # a few rows entirely tied
    for s in (s_cont, s_tied):
        expected = [average_precision_score(t[i], s[i]) for i in range(n)]
        np.testing.assert_allclose(mt.prauc(t, s), expected, rtol=0, atol=1e-12)


def test_ddi_rate_hand():
    pred = np.array([[1, 1, 1, 0], [0, 0, 1, 1], [1, 0, 0, 0]], dtype=bool)
    pairs = np.array([[0, 1], [3, 2]])  # (3, 2) listed backwards: unordered
    # sample 0: pairs (0,1) (0,2) (1,2) → 1 interacting; sample 1: (2,3) → 1; sample 2: no pair
    # pooled: 2 / 4 = 0.5
    assert mt.ddi_rate(pred, pairs) == pytest.approx(0.5)
    assert mt.ddi_rate(pred, np.zeros((0, 2), dtype=int)) == 0.0
    assert mt.ddi_rate(np.zeros((2, 4), dtype=bool), pairs) == 0.0  # no pair at all
    with pytest.raises(ValueError):
        mt.ddi_rate(pred, np.array([[0, 4]]))


def test_avg_drugs_and_evaluate():
    probs = np.array([[0.9, 0.1, 0.6, 0.0], [0.2, 0.2, 0.1, 0.4], [0.7, 0.0, 0.8, 0.5]])
    # threshold 0.5 (>=) reproduces P above: {0,2}, {}, {0,2,3}
    np.testing.assert_array_equal(mt.binarize(probs, 0.5), P)
    assert mt.avg_drugs(P) == pytest.approx(5 / 3)
    out = mt.evaluate(T, probs, 0.5, np.array([[0, 2]]))
    assert set(out) == {*mt.METRICS, "n"}
    assert out["n"] == 3
    assert out["jaccard"] == pytest.approx((1 / 3 + 0 + 1) / 3)
    assert out["f1"] == pytest.approx(0.5)
    assert out["avg_true_drugs"] == pytest.approx(2.0)
    # pairs: sample 0 (0,2) interacting; sample 2 (0,2)✓ (0,3) (2,3) → 2/4
    assert out["ddi_rate"] == pytest.approx(0.5)
    # sample 0: order 0(T) 2(F) 1(T) 3(F) → (1 + 2/3)/2; sample 1: 2 is last of 4 → 1/4;
    # sample 2: order 2(T) 0(T) 3(T) 1(F) → 1
    assert out["prauc"] == pytest.approx((5 / 6 + 1 / 4 + 1) / 3)


def test_groups():
    g = mt.groups(np.array([1, 3, 1, 2]))
    np.testing.assert_array_equal(g["overall"], [True] * 4)
    np.testing.assert_array_equal(g["single"], [True, False, True, False])
    np.testing.assert_array_equal(g["multi"], [False, True, False, True])


def _random(n=50, m=12, seed=1):
    rng = np.random.default_rng(seed)
    return rng.random((n, m)) < 0.3, rng.random((n, m))


def test_bootstrap_deterministic_and_sane():
    t, s = _random()
    pairs = np.array([[0, 1], [2, 3]])
    a = mt.bootstrap(t, s, 0.5, pairs, rounds=50, seed=7)
    b = mt.bootstrap(t, s, 0.5, pairs, rounds=50, seed=7)
    c = mt.bootstrap(t, s, 0.5, pairs, rounds=50, seed=8)
    assert a == b
    assert a != c
    assert set(a) == set(mt.METRICS)
    full = mt.evaluate(t, s, 0.5, pairs)
    for k in mt.METRICS:
        assert set(a[k]) == {"mean", "std", "lo", "hi"}
        assert a[k]["std"] >= 0 and a[k]["lo"] - 1e-12 <= a[k]["mean"] <= a[k]["hi"] + 1e-12
        assert abs(a[k]["mean"] - full[k]) < 0.2 * max(1.0, full[k])
    # `fraction` is accepted for old callers and ignored
    assert mt.bootstrap(t, s, 0.5, pairs, rounds=50, fraction=0.8, seed=7) == a


def test_bootstrap_resamples_with_replacement_n_of_n():
    rows = np.concatenate(list(mt.resample_indices(50, 7, seed=3)))
    assert rows.shape == (7, 50) and rows.min() >= 0 and rows.max() < 50
    assert all(len(np.unique(r)) < 50 for r in rows)  # duplicates: drawn with replacement
    # chunked draws (many rounds on many samples) are deterministic too
    big = [b.shape for b in mt.resample_indices(300_000, 20, seed=1)]
    assert sum(r for r, _ in big) == 20 and len(big) > 1
    # the std of a mean of n values is about sd / sqrt(n), not half of it (the old 80 % draw)
    rng = np.random.default_rng(0)
    values = {k: rng.random(400) for k in mt.METRICS if k != "ddi_rate"}
    values |= {"ddi_interacting": np.zeros(400), "ddi_pairs": np.ones(400)}
    reps = mt.replicates(values, 2000, seed=0)
    se = values["prauc"].std() / np.sqrt(400)
    assert mt.interval(reps["prauc"])["std"] == pytest.approx(se, rel=0.1)


def _population(n: int, rng: np.random.Generator, m: int = 8):
    """A synthetic recommender: drugs true with probability 0.3, scores informative but noisy."""
    t = rng.random((n, m)) < 0.3
    s = np.clip(0.35 * t + 0.65 * rng.random((n, m)), 0, 1)
    return t, s


def test_bootstrap_interval_covers_the_true_mean_at_the_nominal_rate():
    rng = np.random.default_rng(2024)
    pairs = np.array([[0, 1], [2, 3], [4, 5]])
    big_t, big_s = _population(400_000, rng)
    truth = mt.evaluate(big_t, big_s, 0.5, pairs)  # the population value (its own error is ~1e-4)
    reps, n = 200, 200
    hits = {k: 0 for k in ("prauc", "jaccard", "f1", "ddi_rate")}
    for i in range(reps):
        t, s = _population(n, rng)
        b = mt.bootstrap(t, s, 0.5, pairs, rounds=1000, seed=i)
        for k in hits:
            hits[k] += b[k]["lo"] <= truth[k] <= b[k]["hi"]
    coverage = {k: v / reps for k, v in hits.items()}
    for k, c in coverage.items():
        assert 0.90 <= c <= 0.99, f"{k}: 95 % interval covered the true mean in {c:.1%} of {reps} samples"


def test_paired_bootstrap_tells_runs_apart_only_when_they_differ():
    rng = np.random.default_rng(5)
    t, s = _population(300, rng)
    pairs = np.zeros((0, 2), int)
    twin = np.clip(s + rng.normal(0, 1e-3, s.shape), 0, 1)  # identical up to noise
    better = np.clip(0.6 * t + 0.4 * rng.random(t.shape), 0, 1)  # clearly better ranking
    nv = np.full(300, 2)

    def run(p):
        return mt.evaluate_groups(t, p, 0.5, pairs, nv, rounds=1000, seed=11, keep_replicates=True)["overall"]

    a, b, c = run(s), run(twin), run(better)
    same = mt.paired_difference(b["replicates"], a["replicates"], b["point"], a["point"])
    assert not same["prauc"]["distinguishable"]
    assert same["prauc"]["lo"] <= 0 <= same["prauc"]["hi"]
    diff = mt.paired_difference(c["replicates"], a["replicates"], c["point"], a["point"])
    assert diff["prauc"]["distinguishable"] and diff["prauc"]["lo"] > 0
    assert diff["prauc"]["diff"] == pytest.approx(c["point"]["prauc"] - a["point"]["prauc"])
    # pairing matters: the paired interval is narrower than the two runs' own intervals suggest
    width = diff["prauc"]["hi"] - diff["prauc"]["lo"]
    assert width < (a["bootstrap"]["prauc"]["hi"] - a["bootstrap"]["prauc"]["lo"]) * np.sqrt(2)


def test_evaluate_groups():
    t, s = _random(n=20)
    n_visits = np.array([1] * 5 + [3] * 15)
    out = mt.evaluate_groups(t, s, 0.4, np.zeros((0, 2), int), n_visits, rounds=30, fraction=0.8, seed=1)
    assert [out[k]["n"] for k in ("overall", "single", "multi")] == [20, 5, 15]
    assert out["single"]["point"] == mt.evaluate(t[:5], s[:5], 0.4, np.zeros((0, 2), int))
    assert out["multi"]["bootstrap"] == mt.bootstrap(t[5:], s[5:], 0.4, np.zeros((0, 2), int), 30, None, 1)
    assert "replicates" not in out["overall"]
    none = mt.evaluate_groups(t, s, 0.4, np.zeros((0, 2), int), np.full(20, 2), rounds=2)
    assert none["single"] == {"n": 0, "point": None, "bootstrap": None}
    # one patient: every round is that patient, a zero-width interval (the report flags such groups)
    one = mt.evaluate_groups(t[:2], s[:2], 0.4, np.zeros((0, 2), int), np.array([1, 2]), rounds=20)
    assert one["single"]["bootstrap"]["prauc"]["std"] == 0.0


def test_tune_threshold_matches_brute_force():
    t, s = _random(n=300, m=20, seed=3)
    s = np.round(s, 2)  # scores exactly on grid values exercise the >= boundary
    grid = mt.DEFAULT_GRID
    brute = [mt.jaccard(t, s >= g).mean() for g in grid]
    assert mt.tune_threshold(t, s) == pytest.approx(grid[int(np.argmax(brute))])


def test_tune_threshold_hand_and_ties():
    t = np.array([[1, 0]], dtype=bool)
    s = np.array([[0.6, 0.3]])
    # J = 1/2 for thresholds <= 0.3, 1 for 0.3 < th <= 0.6, 0 above → smallest best grid value 0.4
    assert mt.tune_threshold(t, s, grid=np.array([0.2, 0.4, 0.5, 0.7])) == 0.4


def test_per_drug_f1_and_frequency():
    # drug 0: TP 2 → 1; drug 1: TP 0 FN 1 → 0; drug 2: TP 1 FP 1 FN 1 → 2/(2+1+1) = 0.5; drug 3: TP 1 → 1
    np.testing.assert_allclose(mt.per_drug_f1(T, P), [1.0, 0.0, 0.5, 1.0])
    np.testing.assert_allclose(mt.drug_frequency(T), [2 / 3, 1 / 3, 2 / 3, 1 / 3])
    assert mt.per_drug_f1(np.zeros((2, 1), bool), np.zeros((2, 1), bool))[0] == 0.0


def test_shape_mismatch():
    with pytest.raises(ValueError):
        mt.jaccard(T, P[:, :3])
