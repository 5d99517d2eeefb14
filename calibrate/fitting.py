"""The fitting math behind `cli.py calibrate`, in plain numpy (scipy only for the 1-D optimiser).

`samples` are Monte Carlo samples of probabilities, shape [T, n, classes] with the passes on
axis 0 (binary / multi-label heads: [T, n, labels] of sigmoid probabilities). `uncertainty` scores
are higher = less certain, and the rule they are thresholded with is "accept when uncertainty <=
threshold". `correct` is bool [n], `y` int labels [n]. Everything is computed in float64.
"""

import math
from fractions import Fraction
from typing import Optional

import numpy as np

from ..runtime.checks import is_number
from ..runtime.errors import InputError, McdropError

from ..runtime.uncertain_rule import CATEGORICAL_HEADS, SIGMOID_HEADS

# Probabilities are clipped to TINY before a log: float32's smallest normal number, so that a
# runtime flushing subnormals to zero keeps it. The in-graph version clips to the same value.
TINY = float(np.finfo(np.float32).tiny)
# How far outside [0, 1] a probability may stray (float32 rounding) before it is refused.
_PROBABILITY_SLACK = 1e-6
# minimize_scalar's xatol on log(temperature): a relative error of about 1e-5, ample for the 3
# significant digits a temperature is reported with.
_LOG_TEMPERATURE_XATOL = 1e-5


# --- argument checks ---------------------------------------------------------------------------

def _kind(head) -> str:
    if head in CATEGORICAL_HEADS:
        return "categorical"
    if head in SIGMOID_HEADS:
        return "sigmoid"
    heads = ", ".join(CATEGORICAL_HEADS + SIGMOID_HEADS)
    raise InputError(f"temperature scaling needs a head among {heads}, got {head!r}")


def _probabilities(values, name: str, ndim: Optional[int] = None, min_ndim: int = 1) -> np.ndarray:
    """float64 copy of `values`, finite and in [0, 1] (up to float32 rounding), of the given rank."""
    try:
        array = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise InputError(f"{name} must be an array of numbers ({err})") from err
    if ndim is not None and array.ndim != ndim:
        raise InputError(f"{name} needs {ndim} dimensions, got shape {array.shape}")
    if array.ndim < min_ndim:
        raise InputError(f"{name} needs at least {min_ndim} dimensions, got shape {array.shape}")
    if array.size == 0:
        raise InputError(f"{name} is empty (shape {array.shape})")
    if not np.all(np.isfinite(array)):
        raise InputError(f"{name} holds NaN or infinite values")
    if array.min() < -_PROBABILITY_SLACK or array.max() > 1.0 + _PROBABILITY_SLACK:
        raise InputError(f"{name} must be probabilities in [0, 1], "
                         f"got values in [{array.min():.6g}, {array.max():.6g}]")
    return array


def _scores(values, name: str) -> np.ndarray:
    """A non-empty finite float64 vector [n]."""
    try:
        array = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise InputError(f"{name} must be an array of numbers ({err})") from err
    if array.ndim != 1:
        raise InputError(f"{name} needs 1 dimension [n], got shape {array.shape}")
    if array.size == 0:
        raise InputError(f"{name} is empty")
    if not np.all(np.isfinite(array)):
        raise InputError(f"{name} holds NaN or infinite values")
    return array


def _flags(values, name: str, shape: tuple) -> np.ndarray:
    """A bool array of the given shape, from bools or numbers that are all 0 or 1."""
    array = np.asarray(values)
    if array.shape != tuple(shape):
        raise InputError(f"{name} has shape {array.shape}, expected {tuple(shape)}")
    if array.dtype == bool:
        return array
    if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise InputError(f"{name} must be bool or 0/1 numbers, not {array.dtype}")
    if not np.all((array == 0) | (array == 1)):
        raise InputError(f"{name} must hold only 0/1 (or False/True)")
    return array == 1


def _labels(values, n: int, classes: int) -> np.ndarray:
    """Integer class labels [n], each in [0, classes)."""
    array = np.asarray(values)
    if array.shape != (n,):
        raise InputError(f"y has shape {array.shape}, expected ({n},): one class label per input")
    if np.issubdtype(array.dtype, np.floating):
        if not np.all(np.isfinite(array)) or np.any(array != np.round(array)):
            raise InputError("y must hold whole-number class labels")
    elif not (np.issubdtype(array.dtype, np.integer) or array.dtype == bool):
        raise InputError(f"y must be integer class labels, not {array.dtype}")
    labels = array.astype(np.int64)
    if labels.min() < 0 or labels.max() >= classes:
        raise InputError(f"y holds labels in [{labels.min()}, {labels.max()}]; "
                         f"the model has {classes} classes (0..{classes - 1})")
    return labels


def _number(value, name: str) -> float:
    if not is_number(value):
        raise InputError(f"{name} must be a number, got {value!r}")
    value = float(value)
    if math.isnan(value):
        raise InputError(f"{name} must be a number, got NaN")
    return value


def _share(value, name: str, low_open: bool) -> float:
    """A share in [0, 1] (or (0, 1] when low_open)."""
    value = _number(value, name)
    if not (0.0 < value <= 1.0 if low_open else 0.0 <= value <= 1.0):
        raise InputError(f"{name} must be in {'(0' if low_open else '[0'}, 1], got {value:g}")
    return value


def _temperature(value, name: str = "temperature") -> float:
    value = _number(value, name)
    if not (0.0 < value < math.inf):
        raise InputError(f"{name} must be a finite number > 0, got {value:g}")
    return value


# --- temperature scaling -----------------------------------------------------------------------

def _log_odds(p: np.ndarray, kind: str) -> np.ndarray:
    """What the temperature divides: log p (categorical) or logit p (sigmoid), clipped at TINY."""
    if kind == "categorical":
        return np.log(np.maximum(p, TINY))
    # logit(clip(p, TINY, 1 - TINY)), with 1 - p clipped on its own: 1 - 1e-38 rounds to 1.
    return np.log(np.maximum(p, TINY)) - np.log(np.maximum(1.0 - p, TINY))


def _sigmoid(z: np.ndarray) -> np.ndarray:
    """1 / (1 + exp(-z)) without overflow warnings for large |z|."""
    e = np.exp(-np.abs(z))
    return np.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def apply_temperature(samples, temperature, head) -> np.ndarray:
    """Temperature scaling of every pass's probabilities [T, n, classes] -> same shape, float64.

    Softmax / logits heads: softmax(log(max(p, TINY)) / temperature) over the last axis. Binary /
    multi-label heads: sigmoid(logit(clip(p, TINY, 1 - TINY)) / temperature) elementwise.
    Applied to each pass before any averaging; temperature 1 returns the input (to rounding).
    """
    kind = _kind(head)
    p = _probabilities(samples, "samples", min_ndim=2)
    z = _log_odds(p, kind) / _temperature(temperature)
    if kind == "sigmoid":
        return _sigmoid(z)
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _log_mean_exp(a: np.ndarray) -> np.ndarray:
    """log(mean(exp(a), axis=0)), stable when exp(a) underflows (a is finite here)."""
    top = a.max(axis=0)
    return top + np.log(np.exp(a - top).mean(axis=0))


def fit_temperature(samples, y, head, bounds=(0.05, 20.0)) -> float:
    """The temperature minimising the NLL of the MC mean of apply_temperature(samples, tau, head).

    Categorical heads: samples [T, n, classes], y int labels [n], NLL = mean -log mean_t p_t[y].
    Binary / multi-label heads: samples [T, n, labels], y bool or 0/1 of shape [n, labels], NLL =
    mean Bernoulli NLL over every element. A bounded 1-D search on log(tau); the result lies
    within `bounds`. > 1 softens an overconfident model, < 1 sharpens an underconfident one.
    """
    kind = _kind(head)
    p = _probabilities(samples, "samples", ndim=3 if kind == "categorical" else None, min_ndim=2)
    try:
        low, high = bounds
    except (TypeError, ValueError) as err:
        raise InputError(f"bounds must be (low, high), got {bounds!r}") from err
    low, high = _temperature(low, "bounds[0]"), _temperature(high, "bounds[1]")
    if not low < high:
        raise InputError(f"bounds must have low < high, got ({low:g}, {high:g})")

    z = _log_odds(p, kind)  # computed once; each trial temperature only divides it
    if kind == "categorical":
        labels = _labels(y, p.shape[1], p.shape[2])
        z_true = np.take_along_axis(z, labels[None, :, None], axis=-1)[..., 0]  # [T, n]

        def nll(log_t: float) -> float:
            scaled = z / math.exp(log_t)
            top = scaled.max(axis=-1)
            log_norm = top + np.log(np.exp(scaled - top[..., None]).sum(axis=-1))
            # log of the MC mean of p_t[y], in log space so a tiny p[y] does not underflow to 0
            return float(-_log_mean_exp(z_true / math.exp(log_t) - log_norm).mean())
    else:
        truth = _flags(y, "y", p.shape[1:])

        def nll(log_t: float) -> float:
            scaled = z / math.exp(log_t)
            # log sigmoid(s) = -log(1 + exp(-s)); log(1 - sigmoid(s)) = -log(1 + exp(s))
            log_yes = _log_mean_exp(-np.logaddexp(0.0, -scaled))
            log_no = _log_mean_exp(-np.logaddexp(0.0, scaled))
            return float(-np.where(truth, log_yes, log_no).mean())

    try:
        from scipy.optimize import minimize_scalar
    except ImportError as err:
        raise McdropError("fitting a temperature needs scipy (pip install scipy)") from err
    result = minimize_scalar(nll, bounds=(math.log(low), math.log(high)), method="bounded",
                             options={"xatol": _LOG_TEMPERATURE_XATOL})
    return float(min(max(math.exp(result.x), low), high))


# --- thresholds on an uncertainty score --------------------------------------------------------

def _tie_groups(sorted_values: np.ndarray) -> np.ndarray:
    """Index of the last element of each run of equal values in a sorted vector."""
    return np.flatnonzero(np.append(sorted_values[1:] != sorted_values[:-1], True))


def threshold_for_accuracy(uncertainty, correct, target) -> dict:
    """The largest coverage whose accepted accuracy is >= target, rule "uncertainty <= threshold".

    uncertainty float [n] (higher = less certain), correct bool [n]. Returns threshold, coverage
    (share accepted), accuracy (of the accepted) and accepted (count). Thresholds sit at observed
    values only, and equal values are accepted together, never split. When the whole set reaches
    the target the threshold is +inf, so inputs more uncertain than any seen are accepted too;
    otherwise it is the observed value, and anything above it is refused. When not even the most
    certain group reaches it: threshold -inf (accept nothing), coverage 0, accuracy NaN.
    """
    u = _scores(uncertainty, "uncertainty")
    ok = _flags(correct, "correct", u.shape)
    target = _share(target, "target", low_open=False)
    order = np.argsort(u, kind="stable")
    ends = _tie_groups(u[order])
    accepted = ends + 1
    right = np.cumsum(ok[order])[ends]
    # Accuracy need not fall as coverage grows, so take the last group that meets the target,
    # not the one before the first miss.
    meets = np.flatnonzero(right / accepted >= target)
    if meets.size == 0:
        return {"threshold": -math.inf, "coverage": 0.0, "accuracy": math.nan, "accepted": 0}
    g = int(meets[-1])
    threshold = math.inf if g == len(ends) - 1 else float(u[order][ends[g]])
    return {"threshold": threshold, "coverage": float(accepted[g] / u.size),
            "accuracy": float(right[g] / accepted[g]), "accepted": int(accepted[g])}


def threshold_for_coverage(uncertainty, target, correct=None) -> dict:
    """The smallest observed threshold accepting at least `target` of the inputs (share, (0, 1]).

    Rule "accept when uncertainty <= threshold"; equal values are accepted together, so the
    coverage may exceed the target. Returns threshold, coverage, accuracy (NaN without
    `correct`, bool [n]) and accepted (count).
    """
    u = _scores(uncertainty, "uncertainty")
    target = _share(target, "target", low_open=True)
    ok = None if correct is None else _flags(correct, "correct", u.shape)
    order = np.argsort(u, kind="stable")
    ends = _tie_groups(u[order])
    accepted = ends + 1
    # k / n is rounded once, so it equals the float of a decimal target exactly when k / n does.
    g = int(np.flatnonzero(accepted / u.size >= target)[0])
    accuracy = math.nan if ok is None else float(np.cumsum(ok[order])[ends[g]] / accepted[g])
    return {"threshold": float(u[order][ends[g]]), "coverage": float(accepted[g] / u.size),
            "accuracy": accuracy, "accepted": int(accepted[g])}


# --- split conformal prediction sets (LAC) -----------------------------------------------------

def conformal_quantile(scores, alpha) -> float:
    """Split conformal quantile: the ceil((n+1)(1-alpha))-th smallest of n calibration scores.

    A 1-based order statistic, no interpolation; +inf when that rank exceeds n (too few
    calibration scores for this alpha: every set then holds every class). Sets built with it
    cover a new exchangeable input with probability >= 1 - alpha.
    """
    s = _scores(scores, "scores")
    alpha = _number(alpha, "alpha")
    if not 0.0 < alpha < 1.0:
        raise InputError(f"alpha must be in (0, 1), got {alpha:g}")
    # alpha as the decimal it was written as: in floats (9 + 1) * (1 - 0.7) is 3.0000000000000004.
    rank = math.ceil((s.size + 1) * (1 - Fraction(repr(alpha))))
    if rank > s.size:
        return math.inf
    return float(np.partition(s, rank - 1)[rank - 1])


def lac_scores(probs, y) -> np.ndarray:
    """LAC nonconformity scores 1 - probs[i, y_i] -> [n] (Sadinle et al., least ambiguous sets).

    probs [n, classes] (the MC mean), y int labels [n]; higher = the true class looked less likely.
    """
    p = _probabilities(probs, "probs", ndim=2)
    labels = _labels(y, p.shape[0], p.shape[1])
    return 1.0 - p[np.arange(p.shape[0]), labels]


def lac_sets(probs, quantile) -> np.ndarray:
    """Prediction sets: class c is in input i's set when probs[i, c] >= 1 - quantile -> bool [n, classes]."""
    p = _probabilities(probs, "probs", ndim=2)
    q = _number(quantile, "quantile")
    # Compared as 1 - p <= q, rounded exactly as lac_scores rounds: a class whose score equals
    # the quantile is always in (p >= 1 - q can round the other way).
    return 1.0 - p <= q


# --- one label's decision threshold (binary / multi-label heads) -------------------------------

def _sweep(probs, positives):
    """Every observed threshold, highest first, with true and false positives of probs >= it."""
    p = _probabilities(probs, "probs", ndim=1)
    truth = _flags(positives, "positives", p.shape)
    order = np.argsort(-p, kind="stable")
    ends = _tie_groups(p[order])
    tp = np.cumsum(truth[order])[ends]
    return p[order][ends], tp, ends + 1 - tp, int(truth.sum())


def _scores_at(threshold, tp, fp, positives) -> dict:
    return {"threshold": float(threshold), "f1": float(2 * tp / (tp + fp + positives)),
            "precision": float(tp / (tp + fp)), "recall": float(tp / positives)}


def best_f1_threshold(probs, positives) -> dict:
    """The observed threshold maximising F1 of the decision probs >= threshold (ties: the higher).

    probs float [n] for one label, positives bool [n]. Returns threshold, f1, precision, recall.
    Needs at least one positive (F1 is 0 at every threshold otherwise).
    """
    thresholds, tp, fp, positives = _sweep(probs, positives)
    if positives == 0:
        raise InputError("best_f1_threshold needs at least one positive example")
    # 2TP / (2TP + FP + FN) with FN = P - TP; ratios of integers, so equal F1s compare equal.
    f1 = 2 * tp / (tp + fp + positives)
    g = int(np.argmax(f1))  # first maximum = highest threshold
    return _scores_at(thresholds[g], tp[g], fp[g], positives)


def threshold_for_precision(probs, positives, target) -> dict:
    """The lowest observed threshold whose precision (probs >= threshold) is >= target.

    The most recall at that precision. probs float [n] for one label, positives bool [n], target
    in (0, 1]. Returns threshold, f1, precision, recall; threshold None (the rest NaN) when no
    threshold reaches the target.
    """
    thresholds, tp, fp, positives = _sweep(probs, positives)
    target = _share(target, "target", low_open=True)
    meets = np.flatnonzero(tp / (tp + fp) >= target)
    if meets.size == 0:
        return {"threshold": None, "f1": math.nan, "precision": math.nan, "recall": math.nan}
    g = int(meets[-1])  # thresholds run highest first
    return _scores_at(thresholds[g], tp[g], fp[g], positives)
