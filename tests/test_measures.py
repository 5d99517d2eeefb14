"""Each measure against an independent computation: scipy, python loops, closed forms."""

import math
import statistics
from collections import Counter

import numpy as np
import pytest
from scipy.stats import entropy as scipy_entropy

from mcdrop.runtime import measures as M
from mcdrop.runtime.errors import InputError

LN2 = math.log(2)


def random_probs(rng, shape, classes):
    return rng.dirichlet(np.ones(classes), size=shape)


# --- mean_and_variance -------------------------------------------------------------------------

def test_mean_and_variance_matches_statistics_module():
    rng = np.random.default_rng(0)
    samples = rng.normal(size=(7, 3, 2))
    mean, variance = M.mean_and_variance(samples)
    assert mean.shape == variance.shape == (3, 2)
    for b in range(3):
        for j in range(2):
            column = [float(v) for v in samples[:, b, j]]
            assert mean[b, j] == pytest.approx(statistics.fmean(column), rel=1e-12)
            # Population variance: divides by T, not T - 1.
            assert variance[b, j] == pytest.approx(statistics.pvariance(column), rel=1e-12)


def test_variance_survives_large_offset_in_float32():
    # 1e4 + noise of 1e-3: a one-pass E[x^2] - E[x]^2 loses most digits even in float64.
    rng = np.random.default_rng(1)
    samples = (1e4 + rng.normal(scale=1e-3, size=(50, 4))).astype(np.float32)
    mean, variance = M.mean_and_variance(samples)
    assert mean.dtype == variance.dtype == np.float64
    for b in range(4):
        column = [float(v) for v in samples[:, b]]  # the exact float32 values, as python floats
        assert variance[b] == pytest.approx(statistics.pvariance(column), rel=1e-9)
        assert mean[b] == pytest.approx(statistics.fmean(column), rel=1e-12)


def test_identical_passes_have_zero_variance():
    samples = np.full((5, 2, 3), 12345.678, dtype=np.float32)
    assert np.array_equal(M.mean_and_variance(samples)[1], np.zeros((2, 3)))


# --- categorical entropies ---------------------------------------------------------------------

def test_categorical_entropy_matches_scipy():
    rng = np.random.default_rng(2)
    p = random_probs(rng, 6, 5)
    expected = [scipy_entropy(row) for row in p]
    np.testing.assert_allclose(M.categorical_entropy(p), expected, rtol=1e-12)


def test_categorical_entropy_closed_forms_and_zeros():
    p = np.array([np.full(10, 0.1), [1.0] + [0.0] * 9, [0.5, 0.5] + [0.0] * 8])
    with np.errstate(all="raise"):  # no log(0) warning either
        h = M.categorical_entropy(p)
    np.testing.assert_allclose(h, [math.log(10), 0.0, LN2], rtol=1e-12, atol=0)
    assert h[1] == 0.0


def test_categorical_entropy_axis():
    p = random_probs(np.random.default_rng(3), 4, 3).T  # classes on axis 0
    np.testing.assert_allclose(M.categorical_entropy(p, axis=0),
                               [scipy_entropy(p[:, b]) for b in range(4)], rtol=1e-12)


def test_predictive_and_expected_entropy_match_loops():
    rng = np.random.default_rng(4)
    samples = random_probs(rng, (6, 3), 4)  # [T, B, C]
    T, B, C = samples.shape
    for b in range(B):
        mean = [sum(samples[t, b, c] for t in range(T)) / T for c in range(C)]
        assert M.predictive_entropy(samples)[b] == pytest.approx(scipy_entropy(mean), rel=1e-12)
        per_pass = [scipy_entropy(samples[t, b]) for t in range(T)]
        assert M.expected_entropy(samples)[b] == pytest.approx(statistics.fmean(per_pass),
                                                               rel=1e-12)
        assert M.mutual_information(samples)[b] == pytest.approx(
            scipy_entropy(mean) - statistics.fmean(per_pass), rel=1e-9)


def test_certain_class_gives_zero_everywhere():
    samples = np.zeros((5, 1, 3))
    samples[:, 0, 2] = 1.0
    with np.errstate(all="raise"):
        assert M.predictive_entropy(samples)[0] == 0.0
        assert M.expected_entropy(samples)[0] == 0.0
        assert M.mutual_information(samples)[0] == 0.0
    assert not np.isnan(M.predictive_entropy(samples)).any()


def test_uniform_passes_are_all_aleatoric():
    samples = np.full((4, 1, 10), 0.1)
    assert M.predictive_entropy(samples)[0] == pytest.approx(math.log(10), rel=1e-12)
    assert M.expected_entropy(samples)[0] == pytest.approx(math.log(10), rel=1e-12)
    assert M.mutual_information(samples)[0] == pytest.approx(0.0, abs=1e-12)


def test_mirrored_two_class_samples_have_known_mutual_information():
    # Half the passes say [1, 0], half [0, 1]: mean is a fair coin, every pass is certain.
    hard = np.array([[[1.0, 0.0]], [[0.0, 1.0]]] * 3)
    assert M.mutual_information(hard)[0] == pytest.approx(LN2, rel=1e-12)
    # Softer mirror: MI = ln 2 - H(0.9, 0.1).
    soft = np.array([[[0.9, 0.1]], [[0.1, 0.9]]])
    h09 = -(0.9 * math.log(0.9) + 0.1 * math.log(0.1))
    assert M.mutual_information(soft)[0] == pytest.approx(LN2 - h09, rel=1e-12)


def test_mutual_information_never_negative_from_rounding():
    # Identical passes: MI is 0 mathematically, but the two entropies can differ by ~1e-16.
    p = random_probs(np.random.default_rng(5), 500, 7)
    samples = np.broadcast_to(p, (3,) + p.shape)
    assert (M.mutual_information(samples) >= 0).all()
    np.testing.assert_allclose(M.mutual_information(samples), 0.0, atol=1e-12)


# --- variation ratio ---------------------------------------------------------------------------

def test_variation_ratio_agreeing_and_known_split():
    agree = np.tile([[0.1, 0.7, 0.2]], (5, 1, 1))
    assert M.variation_ratio(agree)[0] == 0.0
    # 3 passes pick class 0, 2 pick class 2: 1 - 3/5.
    votes = [0, 0, 2, 0, 2]
    split = np.array([[np.eye(3)[v] * 0.8 + 0.2 / 3] for v in votes])
    assert M.variation_ratio(split)[0] == pytest.approx(0.4, abs=1e-15)
    # Every pass a different class: 1 - 1/T.
    spread = np.eye(4)[:, None, :]
    assert M.variation_ratio(spread)[0] == pytest.approx(0.75, abs=1e-15)


def test_variation_ratio_matches_counter_loop():
    samples = random_probs(np.random.default_rng(6), (9, 8), 3)
    T = samples.shape[0]
    for b in range(samples.shape[1]):
        picks = Counter(max(range(3), key=lambda c: samples[t, b, c]) for t in range(T))
        assert M.variation_ratio(samples)[b] == pytest.approx(1 - max(picks.values()) / T)


# --- confidence, margin, top_k -----------------------------------------------------------------

def test_confidence_and_margin_match_sorted():
    mean = random_probs(np.random.default_rng(7), 6, 5)
    for b, row in enumerate(mean.tolist()):
        ordered = sorted(row, reverse=True)
        assert M.confidence(mean)[b] == ordered[0]
        assert M.margin(mean)[b] == pytest.approx(ordered[0] - ordered[1], abs=1e-15)


def test_margin_edge_cases():
    assert M.margin(np.array([[0.4, 0.4, 0.2]]))[0] == 0.0  # tied top two
    assert M.margin(np.array([[0.0, 1.0]]))[0] == 1.0
    np.testing.assert_array_equal(M.margin(np.array([[0.7], [0.2]])), [0.7, 0.2])  # one class


def test_top_k_matches_python_sort_with_ties():
    mean = np.array([[0.2, 0.3, 0.2, 0.3], [0.1, 0.6, 0.25, 0.05]])
    indices, probs = M.top_k(mean, 3)
    for b, row in enumerate(mean.tolist()):
        expected = sorted(range(4), key=lambda c: (-row[c], c))[:3]
        assert indices[b].tolist() == expected
        assert probs[b].tolist() == [row[c] for c in expected]
    assert indices[0].tolist() == [1, 3, 0]  # ties: lower index first


def test_top_k_ties_on_many_classes():
    # Beyond ~16 classes numpy's default sort is no longer stable; ties must still go low-first.
    mean = np.full((2, 200), 0.004)
    mean[1, 150] = 0.2
    indices, probs = M.top_k(mean, 50)
    assert indices[0].tolist() == list(range(50))
    assert indices[1].tolist() == [150] + list(range(49))
    assert probs[1, 0] == 0.2 and (probs[1, 1:] == 0.004).all()


def test_top_k_clips_and_validates():
    mean = np.array([[0.5, 0.2, 0.3]])
    indices, probs = M.top_k(mean, 10)
    assert indices.tolist() == [[0, 2, 1]] and probs.shape == (1, 3)
    for bad in (0, -1, 1.5, True):
        with pytest.raises(InputError):
            M.top_k(mean, bad)


# --- Bernoulli ---------------------------------------------------------------------------------

def test_bernoulli_entropy_closed_forms_and_scipy():
    with np.errstate(all="raise"):
        h = M.bernoulli_entropy(np.array([0.0, 0.5, 1.0]))
    np.testing.assert_allclose(h, [0.0, LN2, 0.0], rtol=1e-12, atol=0)
    p = np.random.default_rng(8).uniform(size=(3, 4))
    expected = [[scipy_entropy([v, 1 - v]) for v in row] for row in p]
    np.testing.assert_allclose(M.bernoulli_entropy(p), expected, rtol=1e-12)


def test_bernoulli_expected_entropy_and_mutual_information_match_loops():
    samples = np.random.default_rng(9).uniform(size=(5, 2, 3))  # [T, B, units]
    T = samples.shape[0]

    def h(v):
        return scipy_entropy([v, 1 - v])

    for b in range(2):
        for u in range(3):
            column = samples[:, b, u].tolist()
            expected = statistics.fmean(h(v) for v in column)
            assert M.bernoulli_expected_entropy(samples)[b, u] == pytest.approx(expected, rel=1e-12)
            assert M.bernoulli_mutual_information(samples)[b, u] == pytest.approx(
                h(sum(column) / T) - expected, rel=1e-9)


def test_bernoulli_mutual_information_edge_cases():
    # unit 0: passes mirrored 0 / 1 (MI ln 2); unit 1: always 1 (certain); unit 2: always 0.5.
    samples = np.array([[[0.0, 1.0, 0.5]], [[1.0, 1.0, 0.5]]])
    with np.errstate(all="raise"):
        mi = M.bernoulli_mutual_information(samples)
        expected_h = M.bernoulli_expected_entropy(samples)
    np.testing.assert_allclose(mi[0], [LN2, 0.0, 0.0], atol=1e-15)
    np.testing.assert_allclose(expected_h[0], [0.0, 0.0, LN2], atol=1e-15)
    same = np.broadcast_to(np.random.default_rng(10).uniform(size=(400, 5)), (3, 400, 5))
    assert (M.bernoulli_mutual_information(same) >= 0).all()


# --- standard deviation and validation ---------------------------------------------------------

def test_standard_deviation():
    v = np.array([4.0, 0.0, -1e-18, 2.0])
    np.testing.assert_array_equal(M.standard_deviation(v), [2.0, 0.0, 0.0, math.sqrt(2.0)])


@pytest.mark.parametrize("call", [
    lambda: M.mean_and_variance(np.ones(3)),
    lambda: M.predictive_entropy(np.ones(3)),
    lambda: M.expected_entropy(np.zeros((0, 2, 3))),
    lambda: M.mutual_information(np.ones(2)),
    lambda: M.variation_ratio(np.zeros((2, 3, 0))),
    lambda: M.bernoulli_mutual_information(np.ones(4)),
    lambda: M.bernoulli_expected_entropy(np.ones(4)),
    lambda: M.confidence(np.float64(0.3)),
    lambda: M.margin(np.zeros((2, 0))),
    lambda: M.top_k(np.zeros((2, 0)), 1),
])
def test_bad_shapes_raise_input_error(call):
    with pytest.raises(InputError):
        call()


# --- Monte Carlo standard errors -----------------------------------------------------------------
# Brute force: the batch axis holds REPLICATES independent runs of T passes from one distribution,
# so the spread of a measure over the batch is its true Monte Carlo error, to which the standard
# error of one run (root mean square over the replicates) must agree. 2,000 replicates: the spread itself is
# known to about 2%.

REPLICATES = 2000
PASSES = 50
CATEGORICAL_ERRORS = {
    "confidence": (lambda x: M.confidence(x.mean(axis=0)), M.confidence_standard_error),
    "margin": (lambda x: M.margin(x.mean(axis=0)), M.margin_standard_error),
    "predictive_entropy": (M.predictive_entropy, M.predictive_entropy_standard_error),
    "expected_entropy": (M.expected_entropy, M.expected_entropy_standard_error),
    "mutual_information": (M.mutual_information, M.mutual_information_standard_error),
    "variation_ratio": (M.variation_ratio, M.variation_ratio_standard_error),
    "mean": (lambda x: x.mean(axis=0), M.mean_standard_error),
    "variance": (lambda x: M.mean_and_variance(x)[1], M.variance_standard_error),
    "std": (lambda x: np.sqrt(M.mean_and_variance(x)[1]), M.standard_deviation_standard_error),
}
BERNOULLI_ERRORS = {
    "entropy": (lambda x: M.bernoulli_entropy(x.mean(axis=0)), M.bernoulli_entropy_standard_error),
    "expected_entropy": (M.bernoulli_expected_entropy, M.bernoulli_expected_entropy_standard_error),
    "mutual_information": (M.bernoulli_mutual_information, M.bernoulli_mutual_information_standard_error),
    "mean": (lambda x: x.mean(axis=0), M.mean_standard_error),
}


def assert_error_matches_spread(samples, measure, standard_error, tolerance=0.1):
    spread = measure(samples).std(axis=0, ddof=1)  # over the replicates
    # Root mean square over the replicates: a squared standard error estimates the variance without
    # bias to first order, while the median of a skewed one (4th moments) sits low.
    typical = np.sqrt(np.mean(np.square(standard_error(samples)), axis=0))
    np.testing.assert_allclose(typical, spread, rtol=tolerance)


@pytest.mark.parametrize("name", CATEGORICAL_ERRORS)
def test_categorical_standard_errors_match_brute_force(name):
    rng = np.random.default_rng(1)
    # A clear favourite with a real runner-up: class 0 ~ 0.45, class 1 ~ 0.25 of the mean.
    samples = rng.dirichlet([4.5, 2.5, 1.5, 1.0, 0.5], size=(PASSES, REPLICATES))
    assert_error_matches_spread(samples, *CATEGORICAL_ERRORS[name])


@pytest.mark.parametrize("name", BERNOULLI_ERRORS)
def test_bernoulli_standard_errors_match_brute_force(name):
    rng = np.random.default_rng(2)
    # Three units per replicate: unsure (Beta(3, 2)), leaning (Beta(6, 2)), near sure (Beta(20, 1)).
    # Not a mean of 0.5, where the entropy's gradient is 0 and the jackknife overstates the
    # (second-order) spread (docs/DESIGN.md: Monte Carlo standard errors).
    samples = rng.beta([3, 6, 20], [2, 2, 1], size=(PASSES, REPLICATES, 3))
    assert_error_matches_spread(samples, *BERNOULLI_ERRORS[name])


def test_regression_standard_errors_match_brute_force():
    rng = np.random.default_rng(3)
    samples = rng.gamma(3.0, 2.0, size=(PASSES, REPLICATES, 2)) + [0.0, 100.0]  # skewed, one offset
    assert_error_matches_spread(samples, *CATEGORICAL_ERRORS["mean"])
    assert_error_matches_spread(samples, *CATEGORICAL_ERRORS["variance"], tolerance=0.15)
    assert_error_matches_spread(samples, *CATEGORICAL_ERRORS["std"], tolerance=0.15)


def test_standard_errors_closed_forms():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(20, 3))
    np.testing.assert_allclose(M.mean_standard_error(x), x.std(axis=0, ddof=1) / math.sqrt(20))
    # Variance: from the 4th central moment, sqrt((m4 - m2^2) / (T - 1)).
    d = x - x.mean(axis=0)
    m2, m4 = (d ** 2).mean(axis=0), (d ** 4).mean(axis=0)
    np.testing.assert_allclose(M.variance_standard_error(x), np.sqrt((m4 - m2 ** 2) / 19))
    # Variation ratio: binomial, 15 of 20 passes vote for the modal class.
    votes = np.zeros((20, 1, 3))
    votes[:15, 0, 1] = votes[15:, 0, 2] = 1.0
    assert M.variation_ratio(votes)[0] == pytest.approx(0.25)
    assert M.variation_ratio_standard_error(votes)[0] == pytest.approx(math.sqrt(0.75 * 0.25 / 19))


JACKKNIFED = {
    "std": (lambda x: np.sqrt(M.mean_and_variance(x)[1]), M.standard_deviation_standard_error),
    "confidence": (lambda x: M.confidence(x.mean(axis=0)), M.confidence_standard_error),
    "margin": (lambda x: M.margin(x.mean(axis=0)), M.margin_standard_error),
    "predictive_entropy": (M.predictive_entropy, M.predictive_entropy_standard_error),
    "mutual_information": (lambda x: M.predictive_entropy(x) - M.expected_entropy(x),
                           M.mutual_information_standard_error),
    "bernoulli_entropy": (lambda x: M.bernoulli_entropy(x.mean(axis=0)), M.bernoulli_entropy_standard_error),
    "bernoulli_mutual_information": (
        lambda x: M.bernoulli_entropy(x.mean(axis=0)) - M.bernoulli_expected_entropy(x),
        M.bernoulli_mutual_information_standard_error),
}


@pytest.mark.parametrize("name", JACKKNIFED)
def test_jackknife_standard_errors_match_a_leave_one_out_loop(name):
    """The closed-form leave-one-out values equal the measure recomputed without each pass."""
    measure, standard_error = JACKKNIFED[name]
    x = random_probs(np.random.default_rng(5), (12, 3), 4)
    left_out = np.stack([measure(np.delete(x, t, axis=0)) for t in range(12)])
    expected = np.sqrt(11 / 12 * np.square(left_out - left_out.mean(axis=0)).sum(axis=0))
    np.testing.assert_allclose(standard_error(x), expected, rtol=1e-9, atol=1e-15)


def test_standard_errors_of_constant_and_single_passes():
    certain = np.zeros((10, 2, 3))
    certain[..., 0] = 1.0
    for _, standard_error in CATEGORICAL_ERRORS.values():
        assert np.all(standard_error(certain) == 0)  # no spread, no NaN from log(0) or 0 / 0
    for _, standard_error in BERNOULLI_ERRORS.values():
        assert np.all(standard_error(np.ones((10, 2, 3))) == 0)
    one_pass = random_probs(np.random.default_rng(6), (1, 2), 3)
    assert np.isnan(M.mutual_information_standard_error(one_pass)).all()  # one pass: unknown spread
    assert M.confidence_standard_error(one_pass).shape == (2,)
