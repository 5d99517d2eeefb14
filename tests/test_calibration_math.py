"""The calibration fits against independent computations: scipy, sklearn, brute force, hand-worked cases."""

import math
from fractions import Fraction

import numpy as np
import pytest
from scipy.optimize import minimize_scalar
from scipy.special import expit, softmax
from sklearn.metrics import f1_score, precision_recall_curve, precision_score, recall_score

from mcdrop.calibrate import fitting as C
from mcdrop.runtime.errors import InputError


def sample_labels(rng, probs):
    """One class per row drawn from probs [n, classes]."""
    return (rng.random((len(probs), 1)) > np.cumsum(probs, axis=1)).sum(axis=1).clip(max=probs.shape[1] - 1)


def noisy_passes(rng, T, n, classes, scale=2.0, noise=1.5):
    """(logits [n, classes], overconfident noisy passes [T, n, classes]) with passes = softmax(scale*z + noise)."""
    logits = rng.normal(scale=1.5, size=(n, classes))
    return logits, softmax(scale * logits[None] + rng.normal(scale=noise, size=(T, n, classes)), axis=-1)


def minimise(f):
    return minimize_scalar(f, bounds=(0.05, 20.0), method="bounded", options={"xatol": 1e-9}).x


# --- apply_temperature -------------------------------------------------------------------------

@pytest.mark.parametrize("tau", [0.3, 1.0, 2.5])
def test_apply_temperature_matches_scipy(tau):
    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.ones(4), size=(3, 5))  # [T, n, classes]
    for head in ("softmax", "logits"):
        got = C.apply_temperature(p, tau, head)
        assert got.shape == p.shape and got.dtype == np.float64
        np.testing.assert_allclose(got, softmax(np.log(p) / tau, axis=-1), rtol=1e-12, atol=1e-15)
    q = rng.uniform(0.01, 0.99, size=(3, 5, 2))
    for head in ("binary", "multilabel"):
        np.testing.assert_allclose(C.apply_temperature(q, tau, head), expit((np.log(q) - np.log1p(-q)) / tau),
                                   rtol=1e-12, atol=1e-15)


def test_temperature_one_returns_input():
    rng = np.random.default_rng(1)
    p = rng.dirichlet(np.ones(3), size=(4, 6))
    p[0, 0] = [1.0, 0.0, 0.0]
    np.testing.assert_allclose(C.apply_temperature(p, 1.0, "softmax"), p, rtol=1e-12, atol=1e-30)
    q = rng.uniform(size=(4, 6, 2))
    q[0, 0] = [0.0, 1.0]
    np.testing.assert_allclose(C.apply_temperature(q, 1, "binary"), q, rtol=1e-12, atol=1e-30)


def test_apply_temperature_acts_on_each_pass_not_on_the_mean():
    rng = np.random.default_rng(2)
    _, p = noisy_passes(rng, 5, 4, 3)
    got = C.apply_temperature(p, 2.0, "softmax")
    for t in range(5):
        np.testing.assert_allclose(got[t], softmax(np.log(p[t]) / 2.0, axis=-1), rtol=1e-12)
    # Averaging after or before tempering differs: the test above sees the difference.
    after = got.mean(axis=0)
    before = softmax(np.log(p.mean(axis=0)) / 2.0, axis=-1)
    assert np.abs(after - before).max() > 1e-2


def test_zero_and_one_probabilities_are_clipped_at_tiny():
    assert C.TINY == np.finfo(np.float32).tiny  # a normal float32: never flushed to zero
    p = np.array([[[1.0, 0.0, 0.0]]])
    for tau in (0.5, 3.0):
        got = C.apply_temperature(p, tau, "softmax")
        assert np.all(np.isfinite(got))
        # softmax(log(max(p, TINY)) / tau): the zeros weigh TINY ** (1 / tau) against 1.
        w = C.TINY ** (1 / tau)
        np.testing.assert_allclose(got[0, 0], [1 / (1 + 2 * w), w / (1 + 2 * w), w / (1 + 2 * w)], rtol=1e-12)
    got = C.apply_temperature(np.array([[0.0, 1.0]]), 2.0, "multilabel")
    # logit is clipped to +-log(1 / TINY) = +-87.5, so 0 maps to sigmoid(-87.5 / 2) > 0
    np.testing.assert_allclose(got, [[expit(math.log(C.TINY) / 2), expit(-math.log(C.TINY) / 2)]], rtol=1e-12)
    assert got[0, 0] > 0
    # 1 - 1e-38 rounds to 1, so 1 - p is clipped on its own: a 1 softens like any probability.
    softened = C.apply_temperature(np.array([[1.0]]), 20.0, "binary")[0, 0]
    assert softened == pytest.approx(expit(-math.log(C.TINY) / 20), rel=1e-12)


def test_apply_temperature_refuses_bad_arguments():
    p = np.full((2, 3, 2), 0.5)
    for bad in (0.0, -1.0, math.inf, math.nan, "2", True):
        with pytest.raises(InputError, match="temperature"):
            C.apply_temperature(p, bad, "softmax")
    with pytest.raises(InputError, match="head"):
        C.apply_temperature(p, 1.0, "regression")
    with pytest.raises(InputError, match="probabilities"):
        C.apply_temperature(p + 1.0, 1.0, "softmax")
    with pytest.raises(InputError, match="NaN"):
        C.apply_temperature(np.full((2, 3, 2), np.nan), 1.0, "binary")
    with pytest.raises(InputError, match="dimensions"):
        C.apply_temperature(np.full(3, 0.5), 1.0, "binary")


# --- fit_temperature ---------------------------------------------------------------------------

@pytest.mark.parametrize("head", ["softmax", "logits"])
def test_fit_temperature_recovers_known_overconfidence(head):
    # Labels drawn from softmax(z); the model says softmax(2 z): the right temperature is 2.
    rng = np.random.default_rng(3)
    logits = rng.normal(scale=1.5, size=(20000, 5))
    y = sample_labels(rng, softmax(logits, axis=1))
    tau = C.fit_temperature(softmax(2.0 * logits, axis=1)[None], y, head)
    assert tau == pytest.approx(2.0, rel=0.05)  # sampling error at n = 20000 is about 1 %


def test_fit_temperature_recovers_known_binary_overconfidence():
    rng = np.random.default_rng(4)
    logits = rng.normal(scale=2.0, size=(20000, 1))
    y = rng.random(logits.shape) < expit(logits)
    assert C.fit_temperature(expit(0.5 * logits)[None], y, "binary") == pytest.approx(0.5, rel=0.05)


def test_fit_temperature_tempers_each_pass_then_averages():
    rng = np.random.default_rng(5)
    T, n = 8, 3000
    logits, p = noisy_passes(rng, T, n, 4)
    y = sample_labels(rng, softmax(logits, axis=1))
    rows = np.arange(n)

    def per_pass(t):
        return -np.log(softmax(np.log(p) / t, axis=-1).mean(axis=0)[rows, y]).mean()

    def mean_first(t):
        return -np.log(softmax(np.log(p.mean(axis=0)) / t, axis=-1)[rows, y]).mean()

    expected = minimise(per_pass)
    assert abs(minimise(mean_first) / expected - 1) > 0.05  # the two orders really differ here
    assert C.fit_temperature(p, y, "softmax") == pytest.approx(expected, rel=1e-3)


def test_fit_temperature_multilabel_tempers_each_pass_then_averages():
    rng = np.random.default_rng(6)
    T, n, labels = 8, 3000, 3
    logits = rng.normal(scale=2.0, size=(n, labels))
    y = (rng.random((n, labels)) < expit(logits)).astype(np.int64)  # 0/1 numbers work as well as bools
    p = expit(2.0 * logits[None] + rng.normal(scale=1.5, size=(T, n, labels)))

    def nll(mean):
        return -(y * np.log(mean) + (1 - y) * np.log1p(-mean)).mean()

    def logit(q):
        return np.log(q) - np.log1p(-q)

    expected = minimise(lambda t: nll(expit(logit(p) / t).mean(axis=0)))
    assert abs(minimise(lambda t: nll(expit(logit(p.mean(axis=0)) / t))) / expected - 1) > 0.05
    assert C.fit_temperature(p, y, "multilabel") == pytest.approx(expected, rel=1e-3)


def test_fit_temperature_stays_within_bounds():
    rng = np.random.default_rng(7)
    logits = rng.normal(scale=1.5, size=(2000, 5))
    y = sample_labels(rng, softmax(logits, axis=1))
    p = softmax(2.0 * logits, axis=1)[None]
    tau = C.fit_temperature(p, y, "softmax", bounds=(0.5, 1.5))  # the optimum, 2, lies above
    assert 1.49 <= tau <= 1.5
    # Confident predictions and labels independent of them: the NLL falls all the way to the bound.
    noise = sample_labels(rng, np.full((2000, 5), 0.2))
    tau = C.fit_temperature(p, noise, "softmax")
    assert 19.9 <= tau <= 20.0


def test_fit_temperature_refuses_bad_arguments():
    p = np.full((2, 4, 3), 1 / 3)
    with pytest.raises(InputError, match="labels"):
        C.fit_temperature(p, [0, 1, 2, 3], "softmax")
    with pytest.raises(InputError, match="shape"):
        C.fit_temperature(p, [0, 1, 2], "softmax")
    with pytest.raises(InputError, match="whole-number"):
        C.fit_temperature(p, [0, 1.5, 2, 0], "softmax")
    with pytest.raises(InputError, match="dimensions"):
        C.fit_temperature(p[0], [0, 1, 2, 0], "softmax")
    with pytest.raises(InputError, match="0/1"):
        C.fit_temperature(np.full((2, 4, 3), 0.5), np.full((4, 3), 2), "multilabel")
    with pytest.raises(InputError, match="shape"):
        C.fit_temperature(np.full((2, 4, 3), 0.5), np.zeros((4, 2), bool), "multilabel")
    for bounds in ((2.0, 1.0), (0.0, 1.0), (1.0,), (1.0, math.inf)):
        with pytest.raises(InputError, match="bounds"):
            C.fit_temperature(p, [0, 1, 2, 0], "softmax", bounds=bounds)
    with pytest.raises(InputError, match="head"):
        C.fit_temperature(p, [0, 1, 2, 0], "regression")


# --- threshold_for_accuracy --------------------------------------------------------------------

def brute_accuracy(u, ok, target):
    """Try every observed value (and +-inf) as a threshold; keep the largest coverage meeting target."""
    best = (-math.inf, 0)
    for t in sorted(set(u.tolist())):
        accepted = u <= t
        if ok[accepted].mean() >= target and accepted.sum() > best[1]:
            best = (t if accepted.sum() < len(u) else math.inf, int(accepted.sum()))
    return best


@pytest.mark.parametrize("seed", range(5))
def test_threshold_for_accuracy_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    n = 200
    u = np.round(rng.uniform(size=n), 1)  # 11 values: plenty of ties
    ok = rng.random(n) < 1 - 0.8 * u
    for target in (0.0, 0.5, 0.7, 0.8, 0.9, 0.95, 1.0):
        got = C.threshold_for_accuracy(u, ok, target)
        threshold, accepted = brute_accuracy(u, ok, target)
        assert (got["threshold"], got["accepted"]) == (threshold, accepted)
        assert got["coverage"] == accepted / n
        if accepted:
            assert got["accuracy"] == ok[u <= got["threshold"]].mean() >= target
        else:
            assert math.isnan(got["accuracy"])


@pytest.mark.parametrize("order", [[0, 1, 2, 3], [0, 2, 1, 3]])
def test_threshold_for_accuracy_never_splits_ties(order):
    u = np.array([0.1, 0.2, 0.2, 0.3])[order]
    ok = np.array([True, True, False, False])[order]
    # Accepting 0.1 and one of the two 0.2s would reach 100 %, but 0.2 comes as a group: 2/3.
    got = C.threshold_for_accuracy(u, ok, 0.7)
    assert got == {"threshold": 0.1, "coverage": 0.25, "accuracy": 1.0, "accepted": 1}


def test_threshold_for_accuracy_takes_the_largest_coverage_not_the_first_miss():
    u = [1.0, 2.0, 3.0, 4.0, 5.0]
    ok = [True, False, True, True, False]  # accuracies 1, 1/2, 2/3, 3/4, 3/5
    got = C.threshold_for_accuracy(u, ok, 0.75)
    assert got == {"threshold": 4.0, "coverage": 0.8, "accuracy": 0.75, "accepted": 4}


def test_threshold_for_accuracy_all_or_nothing():
    u = [3.0, 1.0, 2.0]
    got = C.threshold_for_accuracy(u, [True, True, False], 0.6)
    assert got == {"threshold": math.inf, "coverage": 1.0, "accuracy": 2 / 3, "accepted": 3}
    got = C.threshold_for_accuracy(u, [True, False, False], 0.6)  # 1.0 alone is wrong: 0, 1/2, 1/3
    assert (got["threshold"], got["coverage"], got["accepted"]) == (-math.inf, 0.0, 0)
    assert math.isnan(got["accuracy"])


def test_threshold_for_accuracy_refuses_bad_arguments():
    with pytest.raises(InputError, match="target"):
        C.threshold_for_accuracy([0.1, 0.2], [True, False], 1.5)
    with pytest.raises(InputError, match="shape"):
        C.threshold_for_accuracy([0.1, 0.2], [True], 0.5)
    with pytest.raises(InputError, match="0/1"):
        C.threshold_for_accuracy([0.1, 0.2], [2, 0], 0.5)
    with pytest.raises(InputError, match="NaN"):
        C.threshold_for_accuracy([0.1, math.nan], [True, False], 0.5)
    with pytest.raises(InputError, match="empty"):
        C.threshold_for_accuracy([], [], 0.5)


# --- threshold_for_coverage --------------------------------------------------------------------

def test_threshold_for_coverage_hand_worked():
    u = [2.0, 1.0, 3.0, 2.0]
    assert C.threshold_for_coverage(u, 0.25)["threshold"] == 1.0
    got = C.threshold_for_coverage(u, 0.5, correct=[True, False, True, True])
    # The two 2.0s come together: 3 of 4 accepted, not the 2 asked for.
    assert got == {"threshold": 2.0, "coverage": 0.75, "accuracy": 2 / 3, "accepted": 3}
    got = C.threshold_for_coverage(u, 1.0)
    assert (got["threshold"], got["accepted"]) == (3.0, 4) and math.isnan(got["accuracy"])
    # 7 of 25 is exactly 0.28: 0.28 * 25 is 7.000000000000001 in floats, which would ask for 8.
    assert C.threshold_for_coverage(np.arange(25.0), 0.28)["accepted"] == 7


def test_threshold_for_coverage_matches_brute_force():
    rng = np.random.default_rng(8)
    u = np.round(rng.normal(size=300), 1)
    ok = rng.random(300) < 0.8
    for target in (0.01, 0.1, 0.33, 0.5, 0.9, 0.999, 1.0):
        got = C.threshold_for_coverage(u, target, correct=ok)
        expected = min(t for t in set(u.tolist()) if (u <= t).mean() >= target)
        assert got["threshold"] == expected
        assert got["accepted"] == (u <= expected).sum()
        assert got["accuracy"] == ok[u <= expected].mean()


def test_threshold_for_coverage_refuses_bad_arguments():
    for target in (0.0, -0.1, 1.1, math.nan):
        with pytest.raises(InputError, match="target"):
            C.threshold_for_coverage([0.1, 0.2], target)
    with pytest.raises(InputError, match="dimension"):
        C.threshold_for_coverage([[0.1, 0.2]], 0.5)


# --- conformal_quantile ------------------------------------------------------------------------

@pytest.mark.parametrize("n, alpha, rank", [
    (9, 0.1, 9),      # ceil(10 * 0.9) = 9: the largest
    (9, 0.2, 8),      # ceil(10 * 0.8) = 8
    (19, 0.1, 18),    # ceil(20 * 0.9) = 18
    (19, 0.2, 16),    # ceil(20 * 0.8) = 16
    (10, 0.1, 10),    # ceil(11 * 0.9) = ceil(9.9) = 10 (floor would give 9, n instead of n+1 too)
    (19, 0.15, 17),   # ceil(20 * 0.85) = 17
    (9, 0.7, 3),      # ceil(10 * 0.3) = 3, though 10 * (1 - 0.7) is 3.0000000000000004 in floats
    (9, 0.05, None),  # ceil(10 * 0.95) = 10 > 9: +inf
    (8, 0.1, None),   # ceil(9 * 0.9) = ceil(8.1) = 9 > 8: +inf (floor would give the largest)
])
def test_conformal_quantile_hand_worked(n, alpha, rank):
    rng = np.random.default_rng(n)
    sorted_scores = np.arange(1, n + 1) / (n + 1)
    scores = rng.permutation(sorted_scores)
    expected = math.inf if rank is None else sorted_scores[rank - 1]
    assert C.conformal_quantile(scores, alpha) == expected


def test_conformal_quantile_is_the_smallest_rank_reaching_1_minus_alpha():
    # The definition read the other way: the smallest k with k / (n + 1) >= 1 - alpha.
    rng = np.random.default_rng(9)
    for n in range(1, 60):
        scores = rng.uniform(size=n)
        for alpha in (0.01, 0.05, 0.1, 0.2, 0.25, 0.3, 0.5, 0.7, 0.9):
            k = next((k for k in range(1, n + 1) if Fraction(k, n + 1) >= 1 - Fraction(str(alpha))), None)
            expected = math.inf if k is None else np.sort(scores)[k - 1]
            assert C.conformal_quantile(scores, alpha) == expected, (n, alpha)


def test_conformal_quantile_refuses_bad_arguments():
    for alpha in (0.0, 1.0, -0.1, math.nan, "0.1"):
        with pytest.raises(InputError, match="alpha"):
            C.conformal_quantile([0.1, 0.2], alpha)
    with pytest.raises(InputError, match="empty"):
        C.conformal_quantile([], 0.1)


# --- LAC scores and sets -----------------------------------------------------------------------

def test_lac_scores_and_sets_match_a_loop():
    rng = np.random.default_rng(10)
    probs = rng.dirichlet(np.ones(4), size=50)
    y = rng.integers(0, 4, size=50)
    scores = C.lac_scores(probs, y)
    assert scores.shape == (50,)
    for i in range(50):
        assert scores[i] == 1 - probs[i, y[i]]
    sets = C.lac_sets(probs, 0.6)
    assert sets.dtype == bool and sets.shape == probs.shape
    assert np.array_equal(sets, probs >= 0.4)
    assert C.lac_sets(probs, math.inf).all()
    assert not C.lac_sets(probs, -0.1).any()


def test_lac_set_holds_the_class_whose_score_is_the_quantile():
    # score <= quantile must mean "in the set" bit for bit, whatever 1 - (1 - p) rounds to.
    rng = np.random.default_rng(11)
    probs = rng.dirichlet(np.ones(5), size=2000)
    y = rng.integers(0, 5, size=2000)
    scores = C.lac_scores(probs, y)
    for i in range(2000):
        assert C.lac_sets(probs[i:i + 1], scores[i])[0, y[i]]


def test_lac_refuses_bad_arguments():
    probs = np.full((3, 2), 0.5)
    with pytest.raises(InputError, match="labels"):
        C.lac_scores(probs, [0, 1, 2])
    with pytest.raises(InputError, match="dimensions"):
        C.lac_sets(probs[0], 0.5)
    with pytest.raises(InputError, match="quantile"):
        C.lac_sets(probs, math.nan)


@pytest.mark.parametrize("alpha", [0.1, 0.2])
def test_conformal_sets_cover_exchangeable_data(alpha):
    rng = np.random.default_rng(12)
    pool, n_cal, splits = 6000, 500, 100
    logits = rng.normal(scale=2.0, size=(pool, 5))
    y = sample_labels(rng, softmax(logits, axis=1))
    probs = softmax(1.5 * logits, axis=1)  # miscalibrated on purpose: conformal does not care
    coverages = []
    for _ in range(splits):
        order = rng.permutation(pool)
        cal, test = order[:n_cal], order[n_cal:]
        q = C.conformal_quantile(C.lac_scores(probs[cal], y[cal]), alpha)
        sets = C.lac_sets(probs[test], q)
        coverages.append(sets[np.arange(len(test)), y[test]].mean())
    coverages = np.array(coverages)
    # Per split the coverage is about Beta(k, n + 1 - k) plus test sampling noise: sd ~ 0.014-0.018.
    sd = math.sqrt(alpha * (1 - alpha) / (n_cal + 2) + alpha * (1 - alpha) / (pool - n_cal))
    assert coverages.min() >= 1 - alpha - 4.5 * sd
    # Averaged over random splits of one pool it is k / (n + 1), in [1 - alpha, 1 - alpha + 1 / (n + 1)].
    assert 1 - alpha - 0.005 <= coverages.mean() <= 1 - alpha + 1 / (n_cal + 1) + 0.005


# --- best_f1_threshold and threshold_for_precision ---------------------------------------------

def brute_sweep(probs, positives):
    """[(threshold, f1, precision, recall)] for every observed threshold, highest first."""
    rows = []
    for t in sorted(set(probs.tolist()), reverse=True):
        decided = probs >= t
        tp = (decided & positives).sum()
        precision, recall = tp / decided.sum(), tp / positives.sum()
        rows.append((t, 2 * tp / (decided.sum() + positives.sum()), precision, recall))
    return rows


def random_label(seed, n=300):
    rng = np.random.default_rng(seed)
    positives = rng.random(n) < 0.3
    probs = np.round(np.clip(rng.normal(0.3 + 0.3 * positives, 0.2), 0, 1), 2)  # ties included
    return probs, positives


@pytest.mark.parametrize("seed", range(5))
def test_best_f1_threshold_matches_brute_force_and_sklearn(seed):
    probs, positives = random_label(seed)
    got = C.best_f1_threshold(probs, positives)
    rows = brute_sweep(probs, positives)
    best = max(f1 for _, f1, _, _ in rows)
    expected = max(row for row in rows if row[1] == best)  # the highest threshold among the best
    assert (got["threshold"], got["f1"], got["precision"], got["recall"]) == pytest.approx(expected, rel=1e-12)
    decided = probs >= got["threshold"]
    assert got["f1"] == pytest.approx(f1_score(positives, decided), rel=1e-12)
    assert got["precision"] == pytest.approx(precision_score(positives, decided), rel=1e-12)
    assert got["recall"] == pytest.approx(recall_score(positives, decided), rel=1e-12)
    precision, recall, _ = precision_recall_curve(positives, probs)
    with np.errstate(invalid="ignore"):
        curve_f1 = np.nan_to_num(2 * precision * recall / (precision + recall))
    assert got["f1"] == pytest.approx(curve_f1.max(), rel=1e-12)


def test_best_f1_threshold_ties_go_to_the_higher_threshold():
    # F1 at 0.9: 2 / (1 + 0 + 2) = 2/3; at 0.6: 4 / (2 + 2 + 2) = 2/3; in between less.
    got = C.best_f1_threshold([0.9, 0.8, 0.7, 0.6], [True, False, False, True])
    assert got == {"threshold": 0.9, "f1": 2 / 3, "precision": 1.0, "recall": 0.5}


def test_best_f1_threshold_needs_a_positive():
    with pytest.raises(InputError, match="positive"):
        C.best_f1_threshold([0.2, 0.7], [False, False])
    with pytest.raises(InputError, match="shape"):
        C.best_f1_threshold([0.2, 0.7], [True])


def test_threshold_for_precision_hand_worked():
    probs = [0.9, 0.8, 0.7, 0.6, 0.5]
    positives = [True, True, False, True, False]  # precisions 1, 1, 2/3, 3/4, 3/5
    got = C.threshold_for_precision(probs, positives, 0.75)  # 0.7 misses, 0.6 meets again
    assert got == {"threshold": 0.6, "f1": 6 / 7, "precision": 0.75, "recall": 1.0}
    assert C.threshold_for_precision(probs, positives, 1.0)["threshold"] == 0.8
    assert C.threshold_for_precision(probs, positives, 0.6)["threshold"] == 0.5
    got = C.threshold_for_precision(probs, [False] * 5, 0.5)
    assert got["threshold"] is None and math.isnan(got["precision"])
    with pytest.raises(InputError, match="target"):
        C.threshold_for_precision(probs, positives, 0.0)


@pytest.mark.parametrize("seed", range(5))
def test_threshold_for_precision_matches_brute_force_and_sklearn(seed):
    probs, positives = random_label(seed)
    precision, recall, thresholds = precision_recall_curve(positives, probs)
    precision, recall = precision[:-1], recall[:-1]  # the last point has no threshold
    for target in (0.3, 0.5, 0.7, 0.8, 0.9, 0.95, 1.0):
        got = C.threshold_for_precision(probs, positives, target)
        rows = [row for row in brute_sweep(probs, positives) if row[2] >= target]
        if not rows:
            assert got["threshold"] is None and not (precision >= target).any()
            continue
        expected = min(rows)  # the lowest threshold
        assert (got["threshold"], got["f1"], got["precision"], got["recall"]) == pytest.approx(expected, rel=1e-12)
        meets = precision >= target
        assert got["threshold"] == thresholds[meets].min()
        assert got["recall"] == pytest.approx(recall[meets].max(), rel=1e-12)
