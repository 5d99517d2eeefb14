"""Conformal prediction sets and intervals from a calibrated file's "conformal" entry (docs/FORMAT.md:
Calibration), in numpy float32 like the graph's `prediction_set` / `interval_low` / `interval_high`
outputs (calibrate/graph.py), so the runtime and every onnxruntime binding decide alike.

Methods (calibrate/conformal.py fits their numbers):
  lac       class c is in the set when mean[c] >= 1 - quantile
  mondrian  class c is in the set when mean[c] >= 1 - class_quantiles[c] (one per class)
  per_label, risk (sigmoid heads): label j when mean[j] >= 1 - label_quantiles[j]
  aps, raps the classes whose cumulative score (cumulative_scores) is <= score_quantile, decided as
            tail_margins >= 1 - score_quantile
  normalized (regression heads): mean -/+ unit_quantiles * max(std, STD_FLOOR)
"""

from typing import Dict, Optional

import numpy as np

from .uncertain_rule import CATEGORICAL_HEADS, SIGMOID_HEADS

# A regression output's MC standard deviation is floored here before it scales an interval (and
# divides a calibration score): float32's smallest normal number, as the graph floors it.
STD_FLOOR = float(np.finfo(np.float32).tiny)
CLASS_METHODS = ("lac", "mondrian", "aps", "raps")
LABEL_METHODS = ("per_label", "risk")
REGRESSION_METHODS = ("normalized",)
METHODS = CLASS_METHODS + LABEL_METHODS + REGRESSION_METHODS


def methods_for(head: str) -> tuple:
    """The conformal methods a head's outputs take: sets of classes, of labels, or intervals."""
    if head in CATEGORICAL_HEADS:
        return CLASS_METHODS
    return LABEL_METHODS if head in SIGMOID_HEADS else REGRESSION_METHODS


def tail_margins(mean, k_reg: int = 0, penalty: float = 0.0) -> np.ndarray:
    """float32 [n, classes]: the mean probability of the classes ranked below each class (the most
    likely first; ties: the lower index first), minus penalty * max(0, rank - k_reg), rank 1 for the
    most likely class. Summed from the least likely up, so the small tails near 1 - q keep float32's
    precision where a running sum from the top would round to 1 (docs/DESIGN.md: Conformal methods)."""
    p = np.asarray(mean, np.float32)
    order = np.argsort(-p, axis=-1, kind="stable")
    ranked = np.take_along_axis(p, order, axis=-1)
    from_bottom = np.cumsum(ranked[..., ::-1], axis=-1, dtype=np.float32)
    tails = np.concatenate([from_bottom[..., :-1][..., ::-1], np.zeros_like(ranked[..., :1])], axis=-1)
    if penalty:
        ranks = np.maximum(np.arange(1, p.shape[-1] + 1) - k_reg, 0).astype(np.float32)
        tails = tails - np.float32(penalty) * ranks
    margins = np.empty_like(tails)
    np.put_along_axis(margins, order, tails, axis=-1)
    return margins


def cumulative_scores(mean, k_reg: int = 0, penalty: float = 0.0) -> np.ndarray:
    """APS / RAPS scores of every class, float64 [n, classes]: 1 - tail_margins, i.e. the mass from the
    most likely class down to and including it, plus the RAPS rank penalty (APS: penalty 0).
    Non-randomised (Romano et al. 2020 with u = 1; Angelopoulos et al. 2021)."""
    return 1.0 - tail_margins(mean, k_reg, penalty).astype(np.float64)


def score_bound(score_quantile: float) -> np.float32:
    """The float32 cut of tail_margins: a class is in the set when its score <= q, i.e. margin >= 1 - q."""
    return np.float32(1.0 - float(score_quantile))


def lower_bounds(quantiles) -> np.ndarray:
    """1 - q in float32, as the graph computes the cut of a mean >= 1 - q rule."""
    return np.float32(1) - np.asarray(quantiles, np.float32)


def prediction_sets(conformal: dict, mean, std=None) -> Dict[str, np.ndarray]:
    """{"prediction_set": bool [n, classes]} for a classifier's entry, {"interval_low", "interval_high":
    float32 like mean} for a regression head's; `std` is the MC standard deviation (regression)."""
    method = conformal.get("method", "lac")
    mean32 = np.asarray(mean, np.float32)
    if method == "lac":
        return {"prediction_set": mean32 >= lower_bounds(conformal["quantile"])}
    if method == "mondrian":
        return {"prediction_set": mean32 >= lower_bounds(conformal["class_quantiles"])}
    if method in LABEL_METHODS:
        return {"prediction_set": mean32 >= lower_bounds(conformal["label_quantiles"])}
    if method in ("aps", "raps"):
        margins = tail_margins(mean32, conformal.get("k_reg", 0), conformal.get("penalty", 0.0))
        return {"prediction_set": margins >= score_bound(conformal["score_quantile"])}
    if method == "normalized":
        q = np.asarray(conformal["unit_quantiles"], np.float32).reshape(mean32.shape[1:])
        half = q * np.maximum(np.asarray(std, np.float32), np.float32(STD_FLOOR))
        return {"interval_low": mean32 - half, "interval_high": mean32 + half}
    raise ValueError(f"unknown conformal method {method!r}")


def set_labels(sets: np.ndarray, labels: Optional[list]) -> list:
    """The label names in each input's set."""
    return [[labels[j] for j in np.flatnonzero(row)] for row in sets]
