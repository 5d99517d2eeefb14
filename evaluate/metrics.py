"""Evaluation metrics for predictions and their uncertainty, in plain numpy.

Everything is computed in float64; scalars come back as python floats, curves and per-class
values as numpy arrays. Conventions:

- `probs` is [n, classes] (rows of class probabilities), `y` holds integer labels [n].
- `uncertainty` is one score per input where higher = less certain; `confidence` is in [0, 1]
  where higher = more certain.
- `correct` and `positives` are bool [n] (0/1 integers are accepted too); for the detection
  metrics (AUROC, AUPR, ROC, FPR at TPR) a higher `scores` means "more likely positive".

A metric that is undefined for the data given (AUROC with a single class, AURC of one input, ...)
returns NaN instead of raising; that case is named in its docstring. Malformed arguments (wrong
rank, lengths that differ, no inputs, NaN, values out of range) raise InputError.
"""

import math
from typing import Dict, Optional, Tuple

import numpy as np

from ..runtime.checks import fraction, int_at_least, non_negative_finite
from ..runtime.errors import InputError


# --- argument checks ---------------------------------------------------------------------------

def _rank(array: np.ndarray, name: str, ndim) -> None:
    """Raise unless array.ndim is `ndim` (an int, a tuple of allowed ints, or None for any)."""
    allowed = (ndim,) if isinstance(ndim, int) else ndim
    if allowed is not None and array.ndim not in allowed:
        wanted = " or ".join(str(d) for d in allowed)
        raise InputError(f"{name} must have {wanted} dimension(s), got shape {array.shape}")


def _floats(values, name: str, ndim=None) -> np.ndarray:
    """float64 array, non-empty and finite; `ndim` (an int or a tuple of ints) pins the rank."""
    try:
        array = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise InputError(f"{name} must be numeric: {err}") from None
    _rank(array, name, ndim)
    if array.size == 0:
        raise InputError(f"{name} is empty (shape {array.shape})")
    if not np.isfinite(array).all():
        raise InputError(f"{name} contains NaN or infinite values")
    return array


def _bools(values, name: str, ndim=1) -> np.ndarray:
    """bool array of rank `ndim`, non-empty; numbers are accepted only as exact 0/1."""
    array = np.asarray(values)
    _rank(array, name, ndim)
    if array.size == 0:
        raise InputError(f"{name} is empty (shape {array.shape})")
    if array.dtype == np.bool_:
        return array
    if array.dtype.kind not in "iuf" or not np.isin(array, (0, 1)).all():
        raise InputError(f"{name} must be bool (or 0/1), got dtype {array.dtype}")
    return array.astype(bool)


def _labels(values, name: str, classes: int, length: int = None) -> np.ndarray:
    """int64 labels [n] in [0, classes)."""
    array = np.asarray(values)
    if array.ndim != 1:
        raise InputError(f"{name} must be a 1-D array of class indices, got shape {array.shape}")
    if array.size == 0:
        raise InputError(f"{name} is empty")
    if array.dtype.kind not in "iu":
        raise InputError(f"{name} must hold integer class indices, got dtype {array.dtype}")
    if length is not None and array.shape[0] != length:
        raise InputError(f"{name} has {array.shape[0]} entries, expected {length}")
    if array.min() < 0 or array.max() >= classes:
        raise InputError(f"{name} has labels outside [0, {classes}): min {array.min()}, max {array.max()}")
    return array.astype(np.int64)


def _same_length(first: np.ndarray, second: np.ndarray, names: str) -> None:
    if first.shape[0] != second.shape[0]:
        raise InputError(f"{names} differ in length: {first.shape[0]} vs {second.shape[0]}")


def _same_shape(first: np.ndarray, second: np.ndarray, names: str) -> None:
    if first.shape != second.shape:
        raise InputError(f"{names} differ in shape: {first.shape} vs {second.shape}")


def _count(value, name: str, minimum: int = 1) -> int:
    return int_at_least(name, value, minimum)


def _fraction(value, name: str) -> float:
    """A number in (0, 1]."""
    return fraction(name, value)


def _probs_and_labels(probs, y) -> Tuple[np.ndarray, np.ndarray]:
    p = _floats(probs, "probs", ndim=2)
    return p, _labels(y, "y", p.shape[1], length=p.shape[0])


def _scored(scores, flags, score_name: str, flag_name: str) -> Tuple[np.ndarray, np.ndarray]:
    s = _floats(scores, score_name, ndim=1)
    b = _bools(flags, flag_name)
    _same_length(s, b, f"{score_name} and {flag_name}")
    return s, b


def _confidences(confidence, correct) -> Tuple[np.ndarray, np.ndarray]:
    c, ok = _scored(confidence, correct, "confidence", "correct")
    # a float32 softmax computed on a GPU can overshoot 1 by an ulp or so: clip that, refuse more.
    if c.min() < -1e-6 or c.max() > 1.0 + 1e-6:
        raise InputError(f"confidence must lie in [0, 1], got values in [{c.min()}, {c.max()}]")
    return np.clip(c, 0.0, 1.0), ok


# --- classification: proper scores -------------------------------------------------------------

def accuracy(probs, y) -> float:
    """Share of inputs whose argmax class (ties -> lowest index) is y; probs [n, classes], y [n]."""
    p, labels = _probs_and_labels(probs, y)
    return float((p.argmax(axis=1) == labels).mean())


def negative_log_likelihood(probs, y, eps: float = 1e-12) -> float:
    """Mean of -log(max(p[y], eps)) in nats; probs [n, classes], y [n]. Lower = better.

    The floor keeps a probability of exactly 0 on the true class finite (-log(1e-12) ~ 27.6).
    """
    p, labels = _probs_and_labels(probs, y)
    if not eps > 0:
        raise InputError(f"eps must be > 0, got {eps!r}")
    picked = p[np.arange(p.shape[0]), labels]
    return float(-np.log(np.maximum(picked, eps)).mean())


def brier_score(probs, y) -> float:
    """Mean over inputs of sum_k (p_k - onehot_k)^2, in [0, 2]; probs [n, classes], y [n].

    This is the multi-class Brier score; for two classes it is twice the binary one.
    """
    p, labels = _probs_and_labels(probs, y)
    onehot = np.zeros_like(p)
    onehot[np.arange(p.shape[0]), labels] = 1.0
    return float(np.square(p - onehot).sum(axis=1).mean())


# --- calibration -------------------------------------------------------------------------------

def reliability_bins(confidence, correct, bins: int = 15) -> Dict[str, np.ndarray]:
    """Equal-width bins on [0, 1] -> dict of arrays [bins]: lower, upper, count, accuracy, confidence.

    confidence [n] in [0, 1], correct bool [n]. Bin b is (b/bins, (b+1)/bins] (Guo et al. 2017),
    except that a confidence of exactly 0 goes to the first bin. `accuracy` and `confidence` are
    the means over the bin, NaN for an empty bin.
    """
    conf, ok = _confidences(confidence, correct)
    bins = _count(bins, "bins")
    # i / bins (rather than linspace's start + i * step) is the double nearest to the decimal,
    # so a confidence written as 0.6 lands on the edge 3/5, not just beside it.
    edges = np.arange(bins + 1) / bins
    # side="left" puts a value equal to an edge in the bin below it: (lo, hi]; 0 gives -1.
    index = np.maximum(np.searchsorted(edges, conf, side="left") - 1, 0)
    count = np.bincount(index, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        acc = np.bincount(index, weights=ok.astype(np.float64), minlength=bins) / count
        mean_conf = np.bincount(index, weights=conf, minlength=bins) / count
    return {"lower": edges[:-1], "upper": edges[1:], "count": count,
            "accuracy": acc, "confidence": mean_conf}


def _bin_gaps(confidence, correct, bins: int) -> Tuple[np.ndarray, np.ndarray]:
    """|accuracy - confidence| and the share of inputs, for the non-empty equal-width bins."""
    table = reliability_bins(confidence, correct, bins)
    filled = table["count"] > 0
    share = table["count"][filled] / table["count"].sum()
    return np.abs(table["accuracy"][filled] - table["confidence"][filled]), share


def expected_calibration_error(confidence, correct, bins: int = 15) -> float:
    """ECE: sum over non-empty bins of (n_b / n) |acc_b - conf_b|, in [0, 1]; lower = better.

    confidence [n] in [0, 1], correct bool [n]; bins as in reliability_bins.
    """
    gaps, share = _bin_gaps(confidence, correct, bins)
    return float((gaps * share).sum())


def maximum_calibration_error(confidence, correct, bins: int = 15) -> float:
    """MCE: the largest |acc_b - conf_b| over the non-empty bins, in [0, 1]; lower = better.

    confidence [n] in [0, 1], correct bool [n]; bins as in reliability_bins.
    """
    gaps, _ = _bin_gaps(confidence, correct, bins)
    return float(gaps.max())


def adaptive_calibration_error(confidence, correct, bins: int = 15) -> float:
    """Equal-mass ECE: inputs sorted by confidence (stable) and cut into min(bins, n) groups whose
    sizes differ by at most one (np.array_split: larger groups first); the mean of
    |acc_g - conf_g| weighted by group size. confidence [n] in [0, 1], correct bool [n].
    """
    conf, ok = _confidences(confidence, correct)
    bins = _count(bins, "bins")
    order = np.argsort(conf, kind="stable")
    total = 0.0
    for group in np.array_split(order, min(bins, conf.shape[0])):
        total += group.size * abs(ok[group].mean() - conf[group].mean())
    return float(total / conf.shape[0])


# --- selective classification ------------------------------------------------------------------

def _certain_first(uncertainty, correct) -> np.ndarray:
    """`correct` reordered by increasing uncertainty; equal uncertainties keep input order."""
    u, ok = _scored(uncertainty, correct, "uncertainty", "correct")
    return ok[np.argsort(u, kind="stable")]


def risk_coverage(uncertainty, correct) -> Tuple[np.ndarray, np.ndarray]:
    """Risk-coverage curve -> (coverage [n], risk [n]); uncertainty [n], correct bool [n].

    Inputs are kept most certain first (stable on ties); point k = 1..n has coverage k / n and
    risk = errors among those k inputs / k.
    """
    ok = _certain_first(uncertainty, correct)
    k = np.arange(1, ok.shape[0] + 1, dtype=np.float64)
    return k / ok.shape[0], np.cumsum(~ok) / k


def aurc(uncertainty, correct) -> float:
    """Area under the risk-coverage curve, as torch-uncertainty's AURC; lower = better.

    The trapezoid rule over the n points of risk_coverage (coverage 1/n .. 1; there is no point at
    coverage 0), divided by the width 1 - 1/n so the area is as if on [0, 1]: all wrong gives 1,
    all right 0. Ties in uncertainty keep input order (torch-uncertainty leaves their order to
    torch's sort). NaN for fewer than 2 inputs, where the curve has no width.
    """
    coverage, risk = risk_coverage(uncertainty, correct)
    n = coverage.shape[0]
    if n < 2:
        return float("nan")
    area = (np.diff(coverage) * (risk[1:] + risk[:-1]) / 2.0).sum()
    return float(area / (1.0 - 1.0 / n))


def accuracy_at_coverage(uncertainty, correct, coverage: float) -> float:
    """Accuracy of the ceil(coverage * n) most certain inputs; coverage in (0, 1].

    uncertainty [n], correct bool [n]; equal uncertainties keep input order.
    """
    ok = _certain_first(uncertainty, correct)
    coverage = _fraction(coverage, "coverage")
    # round before ceil: 0.28 * 25 is 7.000000000000001 in floating point, and means 7 inputs.
    keep = max(1, math.ceil(round(coverage * ok.shape[0], 9)))
    return float(ok[:keep].mean())


# --- detection (binary scores) -----------------------------------------------------------------

def _counts_at_thresholds(scores, positives) -> Tuple[np.ndarray, np.ndarray, int, int]:
    """(true positives, false positives) at each distinct score taken as threshold, highest
    first (predicted positive: score >= threshold), and the totals of positives and negatives."""
    s, pos = _scored(scores, positives, "scores", "positives")
    order = np.argsort(-s, kind="stable")
    s, pos = s[order], pos[order]
    # the last index of each run of equal scores: all of a tie enters at the same threshold.
    last = np.flatnonzero(np.r_[s[1:] != s[:-1], True])
    tps = np.cumsum(pos)[last]
    fps = (last + 1) - tps
    return tps, fps, int(pos.sum()), int((~pos).sum())


def auroc(scores, positives) -> float:
    """Area under the ROC curve = P(score of a positive > score of a negative), ties count 1/2.

    scores [n] (higher = more likely positive), positives bool [n]. Computed from average ranks
    (Mann-Whitney U). NaN when all inputs are positive or all negative.
    """
    s, pos = _scored(scores, positives, "scores", "positives")
    n_pos = int(pos.sum())
    n_neg = s.shape[0] - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(s, kind="stable")
    sorted_scores = s[order]
    start = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
    stop = np.r_[start[1:], s.shape[0]]
    # a run of equal scores occupying 1-based ranks start+1 .. stop shares their mean rank.
    ranks = np.empty(s.shape[0], dtype=np.float64)
    ranks[order] = np.repeat((start + 1 + stop) / 2.0, stop - start)
    u = ranks[pos].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def aupr(scores, positives) -> float:
    """Average precision: sum over distinct thresholds of (R_t - R_prev) * P_t, R_prev = 0 at first.

    scores [n] (higher = more likely positive), positives bool [n]. A step function, not a
    trapezoid; scikit-learn's average_precision_score. NaN when there is no positive.
    """
    tps, fps, n_pos, _ = _counts_at_thresholds(scores, positives)
    if n_pos == 0:
        return float("nan")
    precision = tps / (tps + fps)
    recall = tps / n_pos
    return float((np.diff(recall, prepend=0.0) * precision).sum())


def roc_curve(scores, positives) -> Tuple[np.ndarray, np.ndarray]:
    """ROC curve -> (fpr, tpr), each [distinct scores + 1], from (0, 0) to (1, 1).

    One point per distinct score taken as threshold, highest first (as scikit-learn's roc_curve
    with drop_intermediate=False). A rate with nothing to count (no negatives for fpr, no
    positives for tpr) is NaN throughout.
    """
    tps, fps, n_pos, n_neg = _counts_at_thresholds(scores, positives)
    points = tps.shape[0] + 1
    fpr = np.r_[0.0, fps / n_neg] if n_neg else np.full(points, np.nan)
    tpr = np.r_[0.0, tps / n_pos] if n_pos else np.full(points, np.nan)
    return fpr, tpr


def fpr_at_tpr(scores, positives, tpr: float = 0.95) -> float:
    """False positive rate at the highest threshold whose true positive rate is >= tpr.

    scores [n] (higher = more likely positive), positives bool [n], tpr in (0, 1]; thresholds are
    the distinct scores, so tied inputs enter together. NaN without positives or negatives.
    """
    tps, fps, n_pos, n_neg = _counts_at_thresholds(scores, positives)
    tpr = _fraction(tpr, "tpr")
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    # the last threshold has tpr = 1 >= tpr, so argmax always finds a True.
    first = int(np.argmax(tps / n_pos >= tpr))
    return float(fps[first] / n_neg)


# --- decisions: multi-class and multi-label ----------------------------------------------------

def confusion_matrix(predicted, y, classes: int) -> np.ndarray:
    """Counts [classes, classes]: row = true class, column = predicted class; int64."""
    classes = _count(classes, "classes")
    truth = _labels(y, "y", classes)
    pred = _labels(predicted, "predicted", classes, length=truth.shape[0])
    return np.bincount(truth * classes + pred, minlength=classes * classes).reshape(classes, classes)


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """numerator / denominator, 0 where the denominator is 0 (scikit-learn's zero_division=0)."""
    numerator = numerator.astype(np.float64)
    return np.divide(numerator, denominator, out=np.zeros_like(numerator), where=denominator > 0)


def _prf(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> Dict[str, np.ndarray]:
    return {"precision": _ratio(tp, tp + fp), "recall": _ratio(tp, tp + fn),
            "f1": _ratio(2 * tp, 2 * tp + fp + fn), "support": tp + fn}


def precision_recall_f1(predicted, y, classes: int) -> Dict[str, np.ndarray]:
    """Per class [classes]: precision, recall, f1 (0 where undefined) and support (true count).

    predicted and y are integer labels [n] in [0, classes).
    """
    matrix = confusion_matrix(predicted, y, classes)
    tp = np.diag(matrix)
    return _prf(tp, matrix.sum(axis=0) - tp, matrix.sum(axis=1) - tp)


def _decisions_and_truth(decisions, truth) -> Tuple[np.ndarray, np.ndarray]:
    d = _bools(decisions, "decisions", ndim=(1, 2))
    t = _bools(truth, "truth", ndim=(1, 2))
    _same_shape(d, t, "decisions and truth")
    return d.reshape(d.shape[0], -1), t.reshape(t.shape[0], -1)


def binary_precision_recall_f1(probs, truth, thresholds) -> Dict[str, np.ndarray]:
    """Per label [labels]: precision, recall, f1 (0 where undefined) and support of the decision
    probs >= threshold. probs [n, labels], truth bool [n, labels], thresholds a number or [labels].
    """
    p = _floats(probs, "probs", ndim=2)
    t = _bools(truth, "truth", ndim=2)
    _same_shape(p, t, "probs and truth")
    cut = _floats(thresholds, "thresholds", ndim=(0, 1))
    if cut.ndim == 1 and cut.shape[0] != p.shape[1]:
        raise InputError(f"thresholds has {cut.shape[0]} entries for {p.shape[1]} labels")
    d = p >= cut
    tp = (d & t).sum(axis=0)
    return _prf(tp, (d & ~t).sum(axis=0), (~d & t).sum(axis=0))


def bernoulli_negative_log_likelihood(probs, truth, eps: float = 1e-12) -> float:
    """Mean over every input and label of -(t log p + (1 - t) log(1 - p)) in nats, p clipped to
    [eps, 1 - eps]; probs [n, labels], truth bool [n, labels]. Lower = better."""
    p = _floats(probs, "probs", ndim=2)
    t = _bools(truth, "truth", ndim=2)
    _same_shape(p, t, "probs and truth")
    if not eps > 0:
        raise InputError(f"eps must be > 0, got {eps!r}")
    q = np.clip(p, eps, 1 - eps)
    return float(-np.where(t, np.log(q), np.log(1 - q)).mean())


def subset_accuracy(decisions, truth) -> float:
    """Share of inputs whose every label decision is right; decisions, truth bool [n, labels]."""
    d, t = _decisions_and_truth(decisions, truth)
    return float((d == t).all(axis=1).mean())


def hamming_loss(decisions, truth) -> float:
    """Share of wrong label decisions over all n * labels; decisions, truth bool [n, labels]."""
    d, t = _decisions_and_truth(decisions, truth)
    return float((d != t).mean())


# --- regression --------------------------------------------------------------------------------

def _regression(mean, y) -> Tuple[np.ndarray, np.ndarray]:
    m = _floats(mean, "mean")
    target = _floats(y, "y")
    # no broadcasting: a [n, 1] prediction against [n] targets would silently become [n, n].
    _same_shape(m, target, "mean and y")
    return m, target


def rmse(mean, y) -> float:
    """Root of the mean squared error over all elements; mean and y of the same shape."""
    m, target = _regression(mean, y)
    return float(np.sqrt(np.square(m - target).mean()))


def mae(mean, y) -> float:
    """Mean absolute error over all elements; mean and y of the same shape."""
    m, target = _regression(mean, y)
    return float(np.abs(m - target).mean())


def gaussian_nll(mean, variance, y, min_variance: float = 1e-12) -> float:
    """Mean over all elements of 0.5 * (log(2 pi s2) + (y - mean)^2 / s2), s2 = max(variance,
    min_variance), in nats; mean, variance and y of the same shape, variance >= 0.

    The floor keeps a zero predicted variance finite.
    """
    m, target = _regression(mean, y)
    var = _floats(variance, "variance")
    _same_shape(m, var, "mean and variance")
    if var.min() < 0:
        raise InputError(f"variance must be >= 0, got {var.min()}")
    if not min_variance > 0:
        raise InputError(f"min_variance must be > 0, got {min_variance!r}")
    var = np.maximum(var, min_variance)
    return float((0.5 * (np.log(2.0 * np.pi * var) + np.square(target - m) / var)).mean())


def interval_coverage(mean, std, y, k: float) -> float:
    """Share of elements with |y - mean| <= k * std (edge included); mean, std, y same shape."""
    m, target = _regression(mean, y)
    s = _floats(std, "std")
    _same_shape(m, s, "mean and std")
    if s.min() < 0:
        raise InputError(f"std must be >= 0, got {s.min()}")
    k = non_negative_finite("k", k)
    return float((np.abs(target - m) <= k * s).mean())


# --- conformal sets and intervals --------------------------------------------------------------

def conformal_coverage(measures: dict, y, names=None) -> Optional[dict]:
    """Coverage of a calibrated file's conformal output in `measures` (None when it has none):
    prediction_set bool [n, classes] with int labels y [n] (the share of inputs whose set holds their
    class), with bool y [n, labels] (the share of present labels in the set), or interval_low /
    interval_high [n, ...] with targets y (the share of targets inside, over every unit). Also
    per class (label, unit; None for one without inputs), the lowest of them, and the mean set
    size (interval width)."""
    if "interval_low" in measures:
        low, high = (np.asarray(measures[k], np.float64).reshape(len(y), -1) for k in ("interval_low", "interval_high"))
        target = np.asarray(y, np.float64).reshape(low.shape)
        hits, counted = (low <= target) & (target <= high), np.ones(low.shape, bool)
        extra = {"mean_interval_width": float((high - low).mean())}
    elif "prediction_set" in measures:
        sets = np.asarray(measures["prediction_set"], bool).reshape(len(y), -1)
        y = np.asarray(y)
        if y.ndim == 1:
            hits, counted = sets, np.eye(sets.shape[1], dtype=bool)[y]  # each input counts for its class
        else:
            counted = y.reshape(sets.shape).astype(bool)
            hits = sets & counted
        extra = {"mean_set_size": float(sets.sum(axis=1).mean())}
    else:
        return None
    per = [float((hits[:, j] & counted[:, j]).sum() / counted[:, j].sum()) if counted[:, j].any() else None
           for j in range(counted.shape[1])]
    names = names if names is not None and len(names) == len(per) else [str(j) for j in range(len(per))]
    found = [value for value in per if value is not None]
    return {"coverage": float((hits & counted).sum() / max(1, counted.sum())), **extra,
            "lowest_class_coverage": min(found) if found else None, "per_class": dict(zip(names, per))}
