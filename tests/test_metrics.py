"""Each metric against scikit-learn / scipy on random data with ties, or against numbers worked
out by hand in the comments (calibration, selective classification, regression)."""

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import norm
from sklearn import metrics as skm

from mcdrop.evaluate import metrics as M
from mcdrop.runtime.errors import InputError

ROOT = Path(__file__).resolve().parent.parent
SEEDS = [0, 1, 2]


def random_probs(rng, n, classes):
    return rng.dirichlet(np.ones(classes), size=n)


def tied_scores(rng, n, levels=8):
    """Scores on a coarse grid, so many inputs share a score."""
    return rng.integers(0, levels, size=n) / levels


# --- proper scores -----------------------------------------------------------------------------

@pytest.mark.parametrize("seed", SEEDS)
def test_accuracy_nll_brier_match_sklearn(seed):
    rng = np.random.default_rng(seed)
    probs, y = random_probs(rng, 300, 4), rng.integers(0, 4, 300)
    assert M.accuracy(probs, y) == pytest.approx(skm.accuracy_score(y, probs.argmax(1)), abs=1e-15)
    assert M.negative_log_likelihood(probs, y) == pytest.approx(
        skm.log_loss(y, probs, labels=range(4)), rel=1e-12)
    binary = random_probs(rng, 300, 2)
    labels = rng.integers(0, 2, 300)
    # ours is the multi-class Brier score: for two classes, twice the binary one.
    assert M.brier_score(binary, labels) == pytest.approx(
        2 * skm.brier_score_loss(labels, binary[:, 1]), rel=1e-12)


@pytest.mark.parametrize("seed", SEEDS)
def test_bernoulli_nll_matches_sklearn_log_loss_over_every_label(seed):
    rng = np.random.default_rng(seed)
    probs, truth = rng.uniform(0.01, 0.99, (200, 3)), rng.random((200, 3)) < 0.4
    assert M.bernoulli_negative_log_likelihood(probs, truth) == pytest.approx(
        skm.log_loss(truth.ravel(), probs.ravel(), labels=[False, True]), rel=1e-12)


def test_bernoulli_nll_floors_zero_and_one():
    # p = 0 for a positive costs -log(1e-12); p = 1 for a negative -log(1 - (1 - 1e-12)) (about the
    # same, 1 - 1e-12 rounds in float64); p = 0.5 costs log 2.
    probs, truth = [[0.0, 1.0, 0.5]], [[True, False, True]]
    assert M.bernoulli_negative_log_likelihood(probs, truth) == pytest.approx(
        (27.631021115928547 - math.log(1 - (1 - 1e-12)) + math.log(2)) / 3, rel=1e-12)


def test_accuracy_ties_go_to_the_lowest_index():
    probs = [[0.4, 0.4, 0.2], [0.3, 0.3, 0.4]]
    assert M.accuracy(probs, [0, 2]) == 1.0
    assert M.accuracy(probs, [1, 2]) == 0.5


def test_nll_floors_a_zero_probability():
    probs = [[1.0, 0.0], [0.5, 0.5]]
    # (-log 1e-12 + -log 0.5) / 2 = (27.631021 + 0.693147) / 2
    assert M.negative_log_likelihood(probs, [1, 0]) == pytest.approx(
        (27.631021115928547 + math.log(2)) / 2, rel=1e-12)
    assert M.negative_log_likelihood(probs, [1, 0], eps=1e-6) == pytest.approx(
        (6 * math.log(10) + math.log(2)) / 2, rel=1e-12)


def test_brier_multiclass_by_hand():
    # row 1, y=1: .5^2 + .7^2 + .2^2 = .78; row 2, y=2: .1^2 + .1^2 + .2^2 = .06; mean .42
    probs = [[0.5, 0.3, 0.2], [0.1, 0.1, 0.8]]
    assert M.brier_score(probs, [1, 2]) == pytest.approx(0.42, abs=1e-15)
    assert M.brier_score([[0.0, 1.0]], [0]) == 2.0


# --- calibration -------------------------------------------------------------------------------

# 6 inputs, 4 bins (0, .25] (.25, .5] (.5, .75] (.75, 1]:
#   bin 0: 0.0 (0 goes to the first bin), 0.25 (on the edge: (lo, hi]) -> n 2, acc 1/2, conf .125
#   bin 1: 0.3                                                          -> n 1, acc 0,   conf .3
#   bin 2: empty (skipped)
#   bin 3: 0.8, 0.9, 1.0                                                -> n 3, acc 2/3, conf .9
# gaps |acc - conf|: .375, .3, -, .9 - 2/3 = .2333...
# ECE = 2/6 * .375 + 1/6 * .3 + 3/6 * .2333... = .125 + .05 + .116666... = 7/24
# MCE = .375
CONF = [0.0, 0.25, 0.3, 0.8, 0.9, 1.0]
CORRECT = [False, True, False, True, True, False]


def test_reliability_bins_by_hand():
    table = M.reliability_bins(CONF, CORRECT, bins=4)
    np.testing.assert_array_equal(table["lower"], [0.0, 0.25, 0.5, 0.75])
    np.testing.assert_array_equal(table["upper"], [0.25, 0.5, 0.75, 1.0])
    np.testing.assert_array_equal(table["count"], [2, 1, 0, 3])
    np.testing.assert_allclose(table["accuracy"], [0.5, 0.0, np.nan, 2 / 3], rtol=1e-15)
    np.testing.assert_allclose(table["confidence"], [0.125, 0.3, np.nan, 0.9], rtol=1e-15)


def test_reliability_bin_edges_are_exact_fractions():
    # np.linspace(0, 1, 7)[5] is 0.8333333333333333, one ulp below 5/6: the confidence 5/6 is on
    # the edge of (4/6, 5/6] and belongs to bin 4, not 5.
    table = M.reliability_bins([5 / 6], [True], bins=6)
    np.testing.assert_array_equal(table["count"], [0, 0, 0, 0, 1, 0])


def test_confidence_overshoot_of_an_ulp_is_clipped():
    # a float32 softmax can give 1 + a few ulps; it counts as 1 (the last bin, confidence 1).
    table = M.reliability_bins([1.0 + 1e-9], [True], bins=2)
    np.testing.assert_array_equal(table["count"], [0, 1])
    assert table["confidence"][1] == 1.0


def test_ece_and_mce_by_hand():
    assert M.expected_calibration_error(CONF, CORRECT, bins=4) == pytest.approx(7 / 24, rel=1e-14)
    assert M.maximum_calibration_error(CONF, CORRECT, bins=4) == pytest.approx(0.375, rel=1e-14)


def test_ece_perfect_and_worst():
    assert M.expected_calibration_error([1.0, 1.0], [True, True]) == 0.0
    assert M.expected_calibration_error([1.0, 1.0], [False, False]) == 1.0
    assert M.maximum_calibration_error([0.0, 1.0], [True, True]) == 1.0


# 7 inputs, 3 equal-mass groups of sizes 3, 2, 2 (np.array_split puts the larger ones first).
#   confidence [.9 .6 .2 .6 .4 .8 .7], correct [T F F T T T F]
#   stable sort: .2F .4T .6F(input 1) | .6T(input 3) .7F | .8T .9T
#   gaps: |1/3 - .4| = 1/15, |.5 - .65| = .15, |1 - .85| = .15
#   ACE = (3 * 1/15 + 2 * .15 + 2 * .15) / 7 = .8 / 7
ACE_CONF = [0.9, 0.6, 0.2, 0.6, 0.4, 0.8, 0.7]
ACE_CORRECT = [True, False, False, True, True, True, False]


def test_adaptive_calibration_error_by_hand():
    assert M.adaptive_calibration_error(ACE_CONF, ACE_CORRECT, bins=3) == pytest.approx(0.8 / 7, rel=1e-14)


def test_adaptive_calibration_error_fewer_inputs_than_bins():
    # min(15, 2) = 2 groups of one: gaps |1 - .3| = .7 and |0 - .8| = .8, mean .75
    assert M.adaptive_calibration_error([0.3, 0.8], [True, False]) == pytest.approx(0.75, rel=1e-15)


# --- selective classification ------------------------------------------------------------------

def test_risk_coverage_by_hand():
    # sorted by uncertainty, ties in input order: .1F .2T(input 2) .2F(input 3) .3T .5T
    # risk = 1/1, 1/2, 2/3, 2/4, 2/5
    coverage, risk = M.risk_coverage([0.3, 0.1, 0.2, 0.2, 0.5], [True, False, True, False, True])
    np.testing.assert_allclose(coverage, [0.2, 0.4, 0.6, 0.8, 1.0], rtol=1e-15)
    np.testing.assert_allclose(risk, [1.0, 0.5, 2 / 3, 0.5, 0.4], rtol=1e-15)


def test_aurc_by_hand_as_torch_uncertainty():
    # torch-uncertainty's own test case (tests/metrics/classification/test_risk_coverage.py):
    # uncertainty [.1 .2 .3 .4 .2], correct [T T F F T]
    # sorted .1T .2T .2T .3F .4F -> risk 0, 0, 0, 1/4, 2/5 at coverage .2, .4, .6, .8, 1
    # trapezoid: .2 * (0 + 0 + (0 + .25) / 2 + (.25 + .4) / 2) = .025 + .065 = .09
    # divided by the width 1 - 1/5 = .8 -> .1125 (a plain mean of the risks would be .13)
    correct = [True, True, False, False, True]
    assert M.aurc([0.1, 0.2, 0.3, 0.4, 0.2], correct) == pytest.approx(0.1125, rel=1e-14)
    # its docstring example: confidence [.7 .6 .8], correct [T F T] -> risk 0, 0, 1/3
    # trapezoid (1/3) * (1/3) / 2 = 1/18, / (2/3) = 1/12
    assert M.aurc([0.3, 0.4, 0.2], [True, False, True]) == pytest.approx(1 / 12, rel=1e-14)


def test_aurc_extremes_and_single_input():
    assert M.aurc([0.1, 0.2, 0.3], [False, False, False]) == pytest.approx(1.0, rel=1e-15)
    assert M.aurc([0.1, 0.2, 0.3], [True, True, True]) == 0.0
    assert math.isnan(M.aurc([0.5], [True]))


def test_accuracy_at_coverage_by_hand():
    # sorted by uncertainty: .1T .2F .3T .4T .5F
    u, ok = [0.1, 0.5, 0.2, 0.4, 0.3], [True, False, False, True, True]
    assert M.accuracy_at_coverage(u, ok, 0.5) == pytest.approx(2 / 3)  # ceil(2.5) = 3 inputs
    assert M.accuracy_at_coverage(u, ok, 0.4) == 0.5                   # 2 inputs
    assert M.accuracy_at_coverage(u, ok, 0.2) == 1.0                   # 1 input
    assert M.accuracy_at_coverage(u, ok, 0.01) == 1.0                  # ceil(.05) = 1 input
    assert M.accuracy_at_coverage(u, ok, 1.0) == 0.6


def test_accuracy_at_coverage_ignores_float_noise():
    # 0.28 * 25 is 7.000000000000001 in floating point; the 7 most certain are right, the 8th not.
    ok = np.arange(25) < 7
    assert M.accuracy_at_coverage(np.arange(25.0), ok, 0.28) == 1.0


# --- detection ---------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", SEEDS)
def test_detection_metrics_match_sklearn(seed):
    rng = np.random.default_rng(seed)
    n = 400
    for scores in (tied_scores(rng, n), rng.normal(size=n)):
        positives = rng.random(n) < 0.3
        assert M.auroc(scores, positives) == pytest.approx(skm.roc_auc_score(positives, scores), rel=1e-12)
        assert M.aupr(scores, positives) == pytest.approx(
            skm.average_precision_score(positives, scores), rel=1e-12)
        fpr, tpr = M.roc_curve(scores, positives)
        ref_fpr, ref_tpr, _ = skm.roc_curve(positives, scores, drop_intermediate=False)
        np.testing.assert_allclose(fpr, ref_fpr, rtol=1e-15)
        np.testing.assert_allclose(tpr, ref_tpr, rtol=1e-15)
        for target in (0.5, 0.8, 0.95):
            expected = ref_fpr[np.flatnonzero(ref_tpr >= target)[0]]
            assert M.fpr_at_tpr(scores, positives, target) == expected


def test_detection_many_ties_match_sklearn():
    scores = [1, 1, 1, 0, 0, 1, 0, 0.5, 0.5]
    positives = [True, False, True, False, True, False, False, True, False]
    assert M.auroc(scores, positives) == pytest.approx(skm.roc_auc_score(positives, scores), rel=1e-15)
    assert M.aupr(scores, positives) == pytest.approx(
        skm.average_precision_score(positives, scores), rel=1e-15)


def test_auroc_ties_count_half():
    # positives score 1, 1, 0; negatives 1, 0. Pairs (pos, neg): (1,1) 1/2, (1,0) 1, (1,1) 1/2,
    # (1,0) 1, (0,1) 0, (0,0) 1/2 -> 3.5 / 6
    assert M.auroc([1, 1, 1, 0, 0], [True, False, True, False, True]) == pytest.approx(7 / 12, rel=1e-15)


def test_aupr_thresholds_at_distinct_scores():
    # threshold 1: TP 1, FP 1 -> P 1/2, R 1/2; threshold 0: TP 2, FP 1 -> P 2/3, R 1
    # AP = 1/2 * 1/2 + 1/2 * 2/3 = 7/12 (splitting the tie at 1 would give 5/6)
    assert M.aupr([1, 1, 0], [True, False, True]) == pytest.approx(7 / 12, rel=1e-15)


# 4 positives, 4 negatives; at each distinct threshold (score >= t):
#   t    .9   .8   .7   .6   .5   .4   .3
#   TPR  1/4  2/4  3/4  3/4  1    1    1
#   FPR  0    1/4  1/4  2/4  2/4  3/4  1
DET_SCORES = [0.9, 0.8, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3]
DET_POSITIVES = [True, True, False, True, False, True, False, False]


def test_roc_curve_by_hand():
    fpr, tpr = M.roc_curve(DET_SCORES, DET_POSITIVES)
    np.testing.assert_array_equal(fpr, [0, 0, 0.25, 0.25, 0.5, 0.5, 0.75, 1])
    np.testing.assert_array_equal(tpr, [0, 0.25, 0.5, 0.75, 0.75, 1, 1, 1])


def test_fpr_at_tpr_by_hand():
    assert M.fpr_at_tpr(DET_SCORES, DET_POSITIVES) == 0.5          # TPR 1 first at t = .5
    assert M.fpr_at_tpr(DET_SCORES, DET_POSITIVES, 1.0) == 0.5     # the first, not the last
    assert M.fpr_at_tpr(DET_SCORES, DET_POSITIVES, 0.75) == 0.25   # t = .7 (>=), not .6
    assert M.fpr_at_tpr(DET_SCORES, DET_POSITIVES, 0.5) == 0.25    # the tie at .8 enters whole
    assert M.fpr_at_tpr(DET_SCORES, DET_POSITIVES, 0.25) == 0.0


def test_detection_undefined_with_one_class():
    scores = [0.1, 0.2, 0.3]
    for positives in ([True] * 3, [False] * 3):
        assert math.isnan(M.auroc(scores, positives))
        assert math.isnan(M.fpr_at_tpr(scores, positives))
    assert math.isnan(M.aupr(scores, [False] * 3))
    assert M.aupr(scores, [True] * 3) == 1.0
    fpr, tpr = M.roc_curve(scores, [True] * 3)
    assert np.isnan(fpr).all()
    np.testing.assert_array_equal(tpr, [0, 1 / 3, 2 / 3, 1])


# --- decisions ---------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", SEEDS)
def test_precision_recall_f1_and_confusion_match_sklearn(seed):
    rng = np.random.default_rng(seed)
    # class 4 never occurs in y, class 3 is never predicted: both hit zero_division.
    y = rng.integers(0, 4, 200)
    predicted = np.where(rng.random(200) < 0.6, y, rng.integers(0, 5, 200))
    predicted[predicted == 3] = 0
    out = M.precision_recall_f1(predicted, y, 5)
    ref = skm.precision_recall_fscore_support(y, predicted, labels=range(5), zero_division=0)
    for got, expected in zip((out["precision"], out["recall"], out["f1"], out["support"]), ref):
        np.testing.assert_allclose(got, expected, rtol=1e-14)
    np.testing.assert_array_equal(M.confusion_matrix(predicted, y, 5),
                                  skm.confusion_matrix(y, predicted, labels=range(5)))


def test_confusion_matrix_orientation():
    # one input of true class 0 predicted as 1: row 0 (true), column 1 (predicted)
    np.testing.assert_array_equal(M.confusion_matrix([1], [0], 2), [[0, 1], [0, 0]])


@pytest.mark.parametrize("seed", SEEDS)
def test_multilabel_metrics_match_sklearn(seed):
    rng = np.random.default_rng(seed)
    probs = tied_scores(rng, 150 * 4, levels=10).reshape(150, 4)
    truth = rng.random((150, 4)) < 0.4
    truth[:, 3] = False  # a label with no positives: recall and f1 are 0 by zero_division
    thresholds = np.array([0.5, 0.3, 0.7, 0.5])  # on the grid: probs == threshold decide True
    decisions = probs >= thresholds
    out = M.binary_precision_recall_f1(probs, truth, thresholds)
    ref = skm.precision_recall_fscore_support(truth, decisions, average=None, zero_division=0)
    for got, expected in zip((out["precision"], out["recall"], out["f1"], out["support"]), ref):
        np.testing.assert_allclose(got, expected, rtol=1e-14)
    single = M.binary_precision_recall_f1(probs, truth, 0.5)
    ref = skm.precision_recall_fscore_support(truth, probs >= 0.5, average=None, zero_division=0)
    np.testing.assert_allclose(single["f1"], ref[2], rtol=1e-14)
    assert M.subset_accuracy(decisions, truth) == pytest.approx(
        skm.accuracy_score(truth, decisions), abs=1e-15)
    assert M.hamming_loss(decisions, truth) == pytest.approx(skm.hamming_loss(truth, decisions), abs=1e-15)


def test_binary_threshold_is_inclusive():
    out = M.binary_precision_recall_f1([[0.5], [0.2]], [[True], [False]], 0.5)
    assert out["recall"][0] == 1.0 and out["precision"][0] == 1.0


# --- regression --------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", SEEDS)
def test_regression_errors_match_sklearn_and_scipy(seed):
    rng = np.random.default_rng(seed)
    mean, y = rng.normal(size=(50, 3)), rng.normal(size=(50, 3))
    variance = rng.uniform(0.1, 2.0, size=(50, 3))
    assert M.rmse(mean, y) == pytest.approx(math.sqrt(skm.mean_squared_error(y, mean)), rel=1e-12)
    assert M.mae(mean, y) == pytest.approx(skm.mean_absolute_error(y, mean), rel=1e-12)
    assert M.gaussian_nll(mean, variance, y) == pytest.approx(
        -norm.logpdf(y, loc=mean, scale=np.sqrt(variance)).mean(), rel=1e-12)


def test_gaussian_nll_by_hand():
    # element 1: .5 * (log(2 pi * 1) + 1^2 / 1) = .5 * (1.837877 + 1)    = 1.418939
    # element 2: .5 * (log(2 pi * 4) + 0)       = .5 * 3.224171          = 1.612086
    expected = (0.5 * (math.log(2 * math.pi) + 1) + 0.5 * math.log(8 * math.pi)) / 2  # 1.515512
    assert M.gaussian_nll([0.0, 1.0], [1.0, 4.0], [1.0, 1.0]) == pytest.approx(expected, rel=1e-14)
    # zero variance floored at 1e-6: .5 * (log(2 pi 1e-6) + (1e-3)^2 / 1e-6) = -5.988817 + .5
    assert M.gaussian_nll([0.0], [0.0], [1e-3], min_variance=1e-6) == pytest.approx(
        0.5 * (math.log(2 * math.pi * 1e-6) + 1.0), rel=1e-12)


def test_interval_coverage_by_hand():
    # |y - mean| vs k * std with k = 2: 2 <= 2 (edge, in), 2.5 > 2, 1 <= 2, 4 <= 4 (edge, in)
    assert M.interval_coverage([0, 0, 0, 0], [1, 1, 1, 2], [2, -2.5, 1, 4], 2) == 0.75
    # over all elements of a 2-D array: 3 of 4 inside one sigma
    assert M.interval_coverage([[0, 0], [0, 0]], [[1, 1], [1, 1]], [[0.5, 3], [-1, 0]], 1.0) == 0.75


# --- arguments ---------------------------------------------------------------------------------

BAD_CALLS = {
    "probs length": lambda: M.accuracy([[0.5, 0.5]], [0, 1]),
    "probs rank": lambda: M.negative_log_likelihood([0.5, 0.5], [0]),
    "empty probs": lambda: M.brier_score(np.zeros((0, 3)), np.zeros(0, dtype=int)),
    "label range": lambda: M.accuracy([[0.5, 0.5]], [2]),
    "float labels": lambda: M.accuracy([[0.5, 0.5]], [0.0]),
    "nan probs": lambda: M.accuracy([[np.nan, 0.5]], [0]),
    "calibration length": lambda: M.expected_calibration_error([0.5, 0.6], [True]),
    "empty confidence": lambda: M.maximum_calibration_error([], []),
    "confidence range": lambda: M.reliability_bins([1.5], [True]),
    "zero bins": lambda: M.adaptive_calibration_error([0.5], [True], bins=0),
    "correct not bool": lambda: M.expected_calibration_error([0.5], [2]),
    "risk length": lambda: M.risk_coverage([0.1, 0.2], [True]),
    "empty uncertainty": lambda: M.aurc([], []),
    "coverage zero": lambda: M.accuracy_at_coverage([0.1], [True], 0.0),
    "coverage above one": lambda: M.accuracy_at_coverage([0.1], [True], 1.5),
    "auroc length": lambda: M.auroc([0.1, 0.2], [True]),
    "aupr empty": lambda: M.aupr([], []),
    "roc rank": lambda: M.roc_curve([[0.1]], [[True]]),
    "tpr zero": lambda: M.fpr_at_tpr([0.1, 0.2], [True, False], 0.0),
    "predicted length": lambda: M.precision_recall_f1([0, 1], [0], 2),
    "confusion classes": lambda: M.confusion_matrix([0], [0], 0),
    "multilabel shape": lambda: M.binary_precision_recall_f1([[0.5, 0.5]], [[True]], 0.5),
    "threshold count": lambda: M.binary_precision_recall_f1([[0.5, 0.5]], [[True, False]], [0.5]),
    "subset shape": lambda: M.subset_accuracy([[True, False]], [[True]]),
    "hamming empty": lambda: M.hamming_loss(np.zeros((0, 2), bool), np.zeros((0, 2), bool)),
    "rmse shape": lambda: M.rmse([[1.0], [2.0]], [1.0, 2.0]),
    "mae empty": lambda: M.mae([], []),
    "negative variance": lambda: M.gaussian_nll([0.0], [-1.0], [0.0]),
    "variance shape": lambda: M.gaussian_nll([0.0, 1.0], [1.0], [0.0, 1.0]),
    "std length": lambda: M.interval_coverage([0.0, 1.0], [1.0], [0.0, 1.0], 2),
}


@pytest.mark.parametrize("name", sorted(BAD_CALLS))
def test_bad_arguments_raise_input_error(name):
    with pytest.raises(InputError):
        BAD_CALLS[name]()


def test_module_needs_numpy_only():
    code = ("import sys, mcdrop.evaluate.metrics; "
            "bad = [m for m in ('sklearn', 'scipy') if m in sys.modules]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)
