"""Uncertainty measures over Monte Carlo samples, in plain numpy.

`samples` always has the passes on axis 0: shape [T, batch, ...out]. Everything is computed in
float64. Entropies are in nats and use 0 * log(0) = 0, so a probability of exactly 0 or 1 never
gives NaN. For every entropy, mutual information, variation ratio and variance, higher means
less certain.
"""

from typing import Tuple

import numpy as np

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
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise InputError(f"top_k needs an integer k >= 1, got {k!r}")
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
