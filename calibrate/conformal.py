"""Split conformal prediction beyond LAC, in plain numpy: each method's nonconformity scores and the
thresholds calibrate fits on them (docs/DESIGN.md: Conformal methods). The sets themselves are
runtime/conformal_sets.py's, so calibrate, the runtime and the graph share one definition.

Every threshold is fitting.conformal_quantile: the ceil((n+1)(1-alpha))-th smallest of n scores,
so a new exchangeable input is covered with probability >= 1 - alpha (and < 1 - alpha + 1/(n+1)
when scores do not tie).

  aps        Romano, Sesia & Candes 2020, non-randomised: the cumulative mass down to the true class.
  raps       Angelopoulos et al. 2021: aps plus penalty * max(0, rank - k_reg); k_reg and the
             penalty are picked on a fifth of the data, the quantile on the rest.
  mondrian   Vovk et al. 2005 (label-conditional): LAC with one quantile per class, from that
             class's inputs only, so each class is covered >= 1 - alpha.
  normalized Papadopoulos et al. 2008 / Lei et al. 2018: regression scores |y - mean| / std with
             std the MC standard deviation; intervals mean -/+ q std per output unit.
  per_label  multi-label: label j's quantile from the inputs where j is present, so each label is
             recalled with probability >= 1 - alpha.
  risk       Angelopoulos et al. 2022 (conformal risk control): one threshold whose expected false
             negative rate (missed labels / true labels) is <= alpha.
"""

import math
from typing import Dict, Tuple

import numpy as np

from ..runtime.conformal_sets import STD_FLOOR, cumulative_scores, prediction_sets
from ..runtime.errors import InputError
from .fitting import _flags, _labels, _probabilities, conformal_quantile

# RAPS: the share of the calibration data that picks k_reg and the penalty, and the penalties
# tried (Angelopoulos et al. 2021, section 2.3 and their code's lambda grid).
RAPS_TUNING_SHARE = 0.2
RAPS_PENALTIES = (0.001, 0.01, 0.1, 0.2, 0.5)
# Mondrian / per-label: a class is "too small" when its coverage, over calibration sets of its size,
# falls more than MARGIN below 1 - alpha with probability above RISK (docs/DESIGN.md).
MARGIN, RISK = 0.05, 0.05


def finite(quantile: float, top: float = 1.0, exact: bool = False) -> float:
    """A quantile capped at `top` (inf: too few scores for alpha, so every class is in every set), as the
    float32 the graph compares with (exact: kept in float64; APS and RAPS compare 1 - it, near 0)."""
    capped = min(quantile, top)
    return float(capped if exact else np.float32(capped))


def aps_scores(probs, y, k_reg: int = 0, penalty: float = 0.0) -> np.ndarray:
    """APS (penalty 0) or RAPS scores of the true classes, [n]."""
    p = _probabilities(probs, "probs", ndim=2)
    labels = _labels(y, p.shape[0], p.shape[1])
    return cumulative_scores(p, k_reg, penalty)[np.arange(len(labels)), labels].astype(np.float64)


def true_class_ranks(probs, y) -> np.ndarray:
    """1-based rank of each true class among its input's probabilities (ties: the lower index first)."""
    p = np.asarray(probs, np.float32)
    order = np.argsort(-p, axis=-1, kind="stable")
    return np.argmax(order == np.asarray(y)[:, None], axis=-1) + 1


def fit_aps(probs, y, alpha) -> dict:
    q = conformal_quantile(aps_scores(probs, y), alpha)
    return {"method": "aps", "alpha": alpha, "score_quantile": finite(q, 2.0, exact=True)}


def fit_raps(probs, y, alpha, seed: int = 0) -> dict:
    """k_reg (the 1 - alpha quantile of the true class's rank) and the penalty (smallest mean set size)
    on a random RAPS_TUNING_SHARE of the inputs; the score quantile on the others."""
    p = _probabilities(probs, "probs", ndim=2)
    labels = _labels(y, p.shape[0], p.shape[1])
    order = np.random.default_rng(seed).permutation(len(labels))
    cut = max(1, int(round(RAPS_TUNING_SHARE * len(labels))))
    if len(labels) - cut < 2:
        raise InputError(f"raps needs more calibration inputs than {len(labels)}")
    tune, rest = order[:cut], order[cut:]
    k_reg = int(min(conformal_quantile(true_class_ranks(p[tune], labels[tune]).astype(float), alpha), p.shape[1]))
    top = 2.0 + max(RAPS_PENALTIES) * p.shape[1]

    def size(penalty):
        q = finite(conformal_quantile(aps_scores(p[tune], labels[tune], k_reg, penalty), alpha), top, exact=True)
        return float((cumulative_scores(p[tune], k_reg, penalty) <= q).sum(axis=1).mean())

    penalty = min(RAPS_PENALTIES, key=size)  # first of equal sizes: the smallest penalty
    q = conformal_quantile(aps_scores(p[rest], labels[rest], k_reg, penalty), alpha)
    return {"method": "raps", "alpha": alpha, "score_quantile": finite(q, top + 1, exact=True), "k_reg": k_reg,
            "penalty": penalty, "tuned_on": int(cut)}


def fit_mondrian(probs, y, alpha) -> dict:
    """One LAC quantile per class, from its own inputs (1 when too few: the class is in every set)."""
    p = _probabilities(probs, "probs", ndim=2)
    labels = _labels(y, p.shape[0], p.shape[1])
    scores = 1.0 - p[np.arange(len(labels)), labels]
    counts = np.bincount(labels, minlength=p.shape[1])
    quantiles = [finite(conformal_quantile(scores[labels == c], alpha)) if counts[c] else 1.0
                 for c in range(p.shape[1])]
    return {"method": "mondrian", "alpha": alpha, "class_quantiles": quantiles, "class_counts": counts.tolist()}


def normalized_scores(mean, std, y) -> np.ndarray:
    """|y - mean| / max(std, STD_FLOOR), [n, units] (trailing output dims flattened)."""
    mean, std, y = (np.asarray(a, np.float64) for a in (mean, std, y))
    if y.shape != mean.shape:
        raise InputError(f"targets have shape {y.shape}, the outputs {mean.shape}")
    scores = np.abs(y - mean) / np.maximum(std, STD_FLOOR)
    return scores.reshape(len(scores), -1)


def fit_normalized(mean, std, y, alpha) -> dict:
    scores = normalized_scores(mean, std, y)
    quantiles = [conformal_quantile(scores[:, j], alpha) for j in range(scores.shape[1])]
    if not all(math.isfinite(q) for q in quantiles):
        raise InputError(f"--alpha {alpha}: {len(scores)} calibration inputs are too few for a finite interval "
                         f"(at least {math.ceil(1 / alpha) - 1})")
    return {"method": "normalized", "alpha": alpha, "unit_quantiles": [float(np.float32(q)) for q in quantiles]}


def fit_per_label(probs, truth, alpha) -> dict:
    """Label j's LAC quantile of 1 - p_j over the inputs where j is present."""
    p = _probabilities(probs, "probs", ndim=2)
    present = _flags(truth, "y", p.shape)
    counts = present.sum(axis=0)
    quantiles = [finite(conformal_quantile(1.0 - p[present[:, j], j], alpha)) if counts[j] else 1.0
                 for j in range(p.shape[1])]
    return {"method": "per_label", "alpha": alpha, "label_quantiles": quantiles, "class_counts": counts.tolist()}


def fit_risk(probs, truth, alpha) -> dict:
    """The smallest lambda whose sets {j: p_j >= 1 - lambda} have (n R(lambda) + 1) / (n + 1) <= alpha,
    R the mean false negative rate (inputs with no label lose nothing): E[FNR] <= alpha."""
    p = _probabilities(probs, "probs", ndim=2)
    present = _flags(truth, "y", p.shape)
    n = len(p)
    weights = (present / np.maximum(present.sum(axis=1, keepdims=True), 1))[present]  # each missed label's loss
    scores = 1.0 - p[present]
    order = np.argsort(scores)
    scores, before = scores[order], np.concatenate([[0.0], np.cumsum(weights[order])])
    candidates = np.concatenate([[0.0], scores])  # the risk only drops at a score
    risk_at = (before[-1] - before[np.searchsorted(scores, candidates, "right")]) / n
    ok = np.flatnonzero((n * risk_at + 1) / (n + 1) <= alpha)
    lam = 1.0 if ok.size == 0 else float(candidates[ok[0]])
    return {"method": "risk", "alpha": alpha, "label_quantiles": [finite(lam)] * p.shape[1], "risk_bound": alpha}


def min_class_count(alpha: float, margin: float = MARGIN, risk: float = RISK, most: int = 100_000) -> int:
    """The fewest calibration inputs n of a class for which its conformal coverage, Beta(r, n + 1 - r)
    over calibration sets with r = ceil((n + 1)(1 - alpha)) (Vovk 2012), falls below
    1 - alpha - margin with probability <= risk."""
    floor = 1 - alpha - margin
    for n in range(max(1, math.ceil(1 / alpha) - 1), most):
        rank = math.ceil((n + 1) * (1 - alpha) - 1e-9)
        # P(Beta(rank, n + 1 - rank) < floor) = P(Binomial(n, floor) >= rank)
        k = np.arange(rank, n + 1)
        log_pmf = (np.vectorize(math.lgamma)(n + 1.0) - np.vectorize(math.lgamma)(k + 1.0)
                   - np.vectorize(math.lgamma)(n - k + 1.0) + k * math.log(floor) + (n - k) * math.log1p(-floor))
        if float(np.exp(log_pmf).sum()) <= risk:
            return n
    return most


def coverage(conformal: dict, mean, y, std=None) -> Tuple[np.ndarray, np.ndarray]:
    """(covered, size) per input [n] (categorical), per input and label (sigmoid: covered where the label is
    present) or per input and unit (regression), from the runtime's own sets."""
    made = prediction_sets(conformal, mean, std)
    if "interval_low" in made:
        y = np.asarray(y, np.float32)
        return ((made["interval_low"] <= y) & (y <= made["interval_high"]),
                made["interval_high"] - made["interval_low"])
    sets = made["prediction_set"]
    y = np.asarray(y)
    if y.ndim == 1:
        return sets[np.arange(len(y)), y], sets.sum(axis=1)
    return sets, sets.sum(axis=1)


def fit(method: str, alpha: float, mean, y, std=None, seed: int = 0) -> Dict:
    """The conformal entry of `method` (docs/FORMAT.md: Calibration) fitted on (mean, y)."""
    fitters = {"aps": lambda: fit_aps(mean, y, alpha), "raps": lambda: fit_raps(mean, y, alpha, seed),
               "mondrian": lambda: fit_mondrian(mean, y, alpha),
               "normalized": lambda: fit_normalized(mean, std, y, alpha),
               "per_label": lambda: fit_per_label(mean, y, alpha), "risk": lambda: fit_risk(mean, y, alpha)}
    return fitters[method]()
