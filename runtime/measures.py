"""Uncertainty measures over Monte Carlo samples, in plain numpy.

`samples` always has the passes on axis 0: shape [T, batch, ...out]. Everything is computed in
float64. Entropies are in nats and use 0 * log(0) = 0, so a probability of exactly 0 or 1 never
gives NaN. For every entropy, mutual information, variation ratio and variance, higher means
less certain.
"""

from typing import Dict, Tuple

import numpy as np

from .checks import positive_int
from .errors import InputError


def _as_float64(values, min_ndim: int, name: str, classes: bool = False) -> np.ndarray:
    """Validate the rank (and, where a class is picked, a non-empty last axis) as float64."""
    array = np.asarray(values, dtype=np.float64)
    if array.ndim < min_ndim:
        raise InputError(f"{name} needs at least {min_ndim} dimensions, got shape {array.shape}")
    if min_ndim >= 2 and array.shape[0] < 1:
        raise InputError(f"{name} has no passes (axis 0 is empty)")
    if classes and array.shape[-1] < 1:
        raise InputError(f"{name} has no classes (last axis is empty)")
    return array


def _samples(samples, classes: bool = False) -> np.ndarray:
    return _as_float64(samples, 2, "samples", classes)


def _xlogx(x: np.ndarray) -> np.ndarray:
    """x * log(x) with 0 * log(0) = 0 (log is only evaluated where x > 0)."""
    return x * np.log(x, out=np.zeros_like(x), where=x > 0)


def mean_and_variance(samples) -> Tuple[np.ndarray, np.ndarray]:
    """Mean and population variance (divides by T) over the passes, axis 0.

    Two-pass: the mean is subtracted before squaring, so a large common offset does not cancel
    the variance away. Variance is in squared output units; higher = less certain.
    """
    x = _samples(samples)
    mean = x.mean(axis=0)
    return mean, np.square(x - mean).mean(axis=0)


def categorical_entropy(p, axis: int = -1) -> np.ndarray:
    """Entropy -sum p log p over `axis`, in nats; higher = less certain."""
    p = np.asarray(p, dtype=np.float64)
    return -_xlogx(p).sum(axis=axis)


def predictive_entropy(samples) -> np.ndarray:
    """Entropy of the mean over passes (total uncertainty), nats -> [batch]; higher = less sure."""
    return categorical_entropy(_samples(samples).mean(axis=0))


def expected_entropy(samples) -> np.ndarray:
    """Mean over passes of each pass's entropy (aleatoric), nats -> [batch]; higher = less sure."""
    return categorical_entropy(_samples(samples)).mean(axis=0)


def mutual_information(samples) -> np.ndarray:
    """Predictive minus expected entropy (BALD, epistemic), nats -> [batch]; higher = less certain.

    Mathematically >= 0; clipped at 0 so rounding never yields a tiny negative value.
    """
    x = _samples(samples)
    return np.maximum(predictive_entropy(x) - expected_entropy(x), 0.0)


def variation_ratio(samples) -> np.ndarray:
    """1 - (passes whose argmax is the modal argmax) / T -> [batch], in [0, 1 - 1/classes].

    0 when every pass picks the same class; higher = less certain.
    """
    x = _samples(samples, classes=True)
    passes, classes = x.shape[0], x.shape[-1]
    votes = x.argmax(axis=-1)  # [T, batch]
    counts = (votes[..., None] == np.arange(classes)).sum(axis=0)  # [batch, classes]
    return 1.0 - counts.max(axis=-1) / passes


def confidence(mean) -> np.ndarray:
    """Largest class probability of the mean -> [batch]; higher = more certain."""
    return _as_float64(mean, 1, "mean", classes=True).max(axis=-1)


def margin(mean) -> np.ndarray:
    """Top-1 minus top-2 class probability -> [batch]; higher = more certain.

    With a single class there is no runner-up, so the margin is that class's probability.
    """
    p = _as_float64(mean, 1, "mean", classes=True)
    classes = p.shape[-1]
    if classes == 1:
        return p[..., 0]
    top2 = np.partition(p, [classes - 2, classes - 1], axis=-1)
    return top2[..., -1] - top2[..., -2]


def top_k(mean, k: int) -> Tuple[np.ndarray, np.ndarray]:
    """The k most probable classes -> (indices [batch, k], probabilities [batch, k]).

    Sorted by descending probability, ties broken by the lower class index; k is clipped to
    the number of classes.
    """
    p = _as_float64(mean, 1, "mean", classes=True)
    k = positive_int("top_k", k)
    # A stable sort of -p keeps equal probabilities in index order; slicing clips k.
    indices = np.argsort(-p, axis=-1, kind="stable")[..., :k]
    return indices, np.take_along_axis(p, indices, axis=-1)


def bernoulli_entropy(p) -> np.ndarray:
    """Elementwise -p log p - (1-p) log(1-p), nats, at most ln 2; higher = less certain."""
    p = np.asarray(p, dtype=np.float64)
    return -(_xlogx(p) + _xlogx(1.0 - p))


def bernoulli_expected_entropy(samples) -> np.ndarray:
    """Per unit, mean over passes of each pass's Bernoulli entropy (aleatoric), nats."""
    return bernoulli_entropy(_samples(samples)).mean(axis=0)


def bernoulli_mutual_information(samples) -> np.ndarray:
    """Per unit, Bernoulli entropy of the mean minus expected entropy (epistemic), nats, >= 0."""
    x = _samples(samples)
    return np.maximum(bernoulli_entropy(x.mean(axis=0)) - bernoulli_expected_entropy(x), 0.0)


def standard_deviation(variance) -> np.ndarray:
    """sqrt(max(variance, 0)), in output units; higher = less certain."""
    return np.sqrt(np.maximum(np.asarray(variance, dtype=np.float64), 0.0))


# Monte Carlo standard errors -----------------------------------------------------------------
#
# The T passes are i.i.d. draws given the input (with a shared mask set, i.i.d. draws of the
# set). A measure that is a mean over passes of a per-pass term (class means, expected entropy,
# the variance as the mean of squared deviations, the modal vote share) gets the standard error of
# a mean: the terms' sample standard deviation (ddof 1) / sqrt(T). A nonlinear function of means
# (std, confidence, margin, predictive entropy, mutual information) gets the jackknife: it agrees
# with the delta method where the function is near linear over the error, and stays right where a
# few passes carry the spread, where the delta method fell to 0.5x (std) and 0.75x (mutual
# information) of the measured error. Each function takes `samples` [T, batch, ...] and returns
# the standard error of the measure of the same name, shaped like it; with one pass the spread is
# unknown: NaN. docs/DESIGN.md: Monte Carlo standard errors has the measurements.


def standard_error_of_mean(terms) -> np.ndarray:
    """Standard error of the mean over axis 0 of per-pass `terms` [T, ...]: their sample standard
    deviation (ddof 1) / sqrt(T); NaN with one pass."""
    terms = _samples(terms)
    passes = terms.shape[0]
    if passes < 2:
        return np.full(terms.shape[1:], np.nan)
    return terms.std(axis=0, ddof=1) / np.sqrt(passes)


def jackknife_standard_error(leave_one_out) -> np.ndarray:
    """Jackknife standard error from an estimate's T leave-one-out values [T, ...] (value t left
    pass t out): sqrt((T - 1) / T * sum_t (value_t - their mean)^2); NaN with one pass."""
    values = _samples(leave_one_out)
    passes = values.shape[0]
    if passes < 2:
        return np.full(values.shape[1:], np.nan)
    deviations = values - values.mean(axis=0)
    return np.sqrt((passes - 1) / passes * np.square(deviations).sum(axis=0))


def _leave_one_out_means(x: np.ndarray) -> np.ndarray:
    """[T, ...]: the mean over the passes other than t, for each t (x has at least 2 passes)."""
    return (x.sum(axis=0) - x) / (x.shape[0] - 1)


def _jackknife(x: np.ndarray, estimate) -> np.ndarray:
    """Jackknife standard error of estimate(leave-one-out means [T, ...]) -> values [T, ...]."""
    if x.shape[0] < 2:
        return jackknife_standard_error(estimate(x))  # NaN, shaped like the estimate
    return jackknife_standard_error(estimate(_leave_one_out_means(x)))


def mean_standard_error(samples) -> np.ndarray:
    """Standard error of the mean over passes (per class / output value)."""
    return standard_error_of_mean(samples)


def variance_standard_error(samples) -> np.ndarray:
    """Standard error of the population variance over passes: the variance is the mean of the
    per-pass terms (x_t - mean)^2, so to first order sqrt((m4 - m2^2) / (T - 1)), from the 4th
    central moment."""
    x = _samples(samples)
    return standard_error_of_mean(np.square(x - x.mean(axis=0)))


def standard_deviation_standard_error(samples) -> np.ndarray:
    """Jackknife standard error of sqrt(variance) (per class / output value)."""
    x = _samples(samples)
    passes = x.shape[0]
    if passes < 2:
        return jackknife_standard_error(x)
    deviations = x - x.mean(axis=0)
    squares = np.square(deviations).sum(axis=0)
    # Leaving pass t out removes T / (T - 1) d_t^2 from the sum of squared deviations.
    left = np.maximum(squares - passes / (passes - 1) * np.square(deviations), 0.0)
    return jackknife_standard_error(np.sqrt(left / (passes - 1)))


def confidence_standard_error(samples) -> np.ndarray:
    """Jackknife standard error of the largest mean probability -> [batch]."""
    return _jackknife(_samples(samples, classes=True), confidence)


def margin_standard_error(samples) -> np.ndarray:
    """Jackknife standard error of top-1 minus top-2 mean probability -> [batch]."""
    return _jackknife(_samples(samples, classes=True), margin)


def predictive_entropy_standard_error(samples) -> np.ndarray:
    """Jackknife standard error of the entropy of the mean -> [batch]."""
    return _jackknife(_samples(samples), categorical_entropy)


def expected_entropy_standard_error(samples) -> np.ndarray:
    """Standard error of the mean of the per-pass entropies -> [batch]."""
    return standard_error_of_mean(categorical_entropy(_samples(samples)))


def _mutual_information_jackknife(x: np.ndarray, entropy) -> np.ndarray:
    """Jackknife of entropy(mean) - mean(entropy(pass)), leaving the same pass out of both."""
    if x.shape[0] < 2:
        return jackknife_standard_error(entropy(x))
    per_pass = entropy(x)
    left_out = (per_pass.sum(axis=0) - per_pass) / (x.shape[0] - 1)
    return jackknife_standard_error(entropy(_leave_one_out_means(x)) - left_out)


def mutual_information_standard_error(samples) -> np.ndarray:
    """Jackknife standard error of predictive minus expected entropy -> [batch] (one pass left
    out of both at once: they share the passes, so their errors are not added)."""
    return _mutual_information_jackknife(_samples(samples), categorical_entropy)


def variation_ratio_standard_error(samples) -> np.ndarray:
    """Binomial standard error of the variation ratio: per pass, whether its argmax is the modal
    class, so sqrt(f (1 - f) / (T - 1)) with f the modal share -> [batch]."""
    x = _samples(samples, classes=True)
    votes = x.argmax(axis=-1)  # [T, batch]
    counts = (votes[..., None] == np.arange(x.shape[-1])).sum(axis=0)  # [batch, classes]
    # The modal class as variation_ratio counts it: the lowest index among the most voted.
    return standard_error_of_mean((votes == counts.argmax(axis=-1)).astype(np.float64))


def top_k_standard_error(samples, indices) -> np.ndarray:
    """Standard errors of the mean probabilities at `indices` [batch, k] (top_k's classes)."""
    return np.take_along_axis(mean_standard_error(samples), np.asarray(indices), axis=-1)


def bernoulli_entropy_standard_error(samples) -> np.ndarray:
    """Jackknife standard error of the Bernoulli entropy of the mean, per unit."""
    return _jackknife(_samples(samples), bernoulli_entropy)


def bernoulli_expected_entropy_standard_error(samples) -> np.ndarray:
    """Standard error of the mean of the per-pass Bernoulli entropies, per unit."""
    return standard_error_of_mean(bernoulli_entropy(_samples(samples)))


def bernoulli_mutual_information_standard_error(samples) -> np.ndarray:
    """Jackknife standard error of the Bernoulli mutual information, per unit."""
    return _mutual_information_jackknife(_samples(samples), bernoulli_entropy)


def single_pass_outputs(output) -> Dict[str, str]:
    """{graph output: measure name} of the single-pass scores a calibrated output carries
    (calibrate/feature_density.py; docs/FORMAT.md: Single-pass scores)."""
    entry = (getattr(output, "calibration", None) or {}).get("single_pass_scores") or {}
    return {name: name[len(output.prefix):] for name in entry.get("outputs") or []}


def add_single_pass_scores(predictions: dict, outputs, run_deterministic) -> None:
    """Add each output's single-pass scores to its Prediction's measures (float32 [batch]).
    run_deterministic(names): {name: array} of the deterministic pass over the whole batch."""
    wanted = {name: (output, measure) for output in outputs for name, measure in single_pass_outputs(output).items()}
    if not wanted:
        return
    found = run_deterministic(list(wanted))
    for name, (output, measure) in wanted.items():
        predictions[output.name].measures[measure] = np.asarray(found[name], np.float32).reshape(-1)
