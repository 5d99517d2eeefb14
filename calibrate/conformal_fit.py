"""calibrate's conformal options: the method checked against the head, fitted (calibrate/conformal.py),
what it achieves on the calibration set, and the graph's sets checked against the runtime's."""

import warnings

import numpy as np

from ..runtime.conformal_sets import LABEL_METHODS, METHODS, methods_for, prediction_sets
from ..runtime.errors import InputError, ValidationError
from ..runtime.prediction import HEADS
from . import conformal as K

# The graph's sets may differ from the runtime's on this share of the check inputs (float32 rounding of
# scores within an ulp of the quantile), and its intervals by this much relative to their width.
SET_DISAGREEMENT, INTERVAL_AGREEMENT = 1 / 50, 1e-4
# APS / RAPS sets whose tail bound 1 - q is below this sit in the MC mean's noise: on the shipped CNN
# (1.6e-5) they covered 0.90 with the mask seed fitted on and 0.77 with another (docs/DESIGN.md).
NOISY_TAIL = 1e-3


def check_method(method, alpha):
    """(method or None, alpha) for a --conformal ALPHA, None without one; one-line errors."""
    if method is not None and method not in METHODS:
        raise InputError(f"--conformal-method {method!r}: choose one of {', '.join(METHODS)}")
    if alpha is None:
        if method is not None:
            raise InputError(f"--conformal-method {method} needs --conformal ALPHA")
        return None
    return method, alpha


def conformal_for_head(conformal, output):
    """conformal with the head's default method (lac; per_label; normalized), refusing another kind's."""
    if conformal is None:
        return None
    method, alpha = conformal
    fits = methods_for(output.head)
    if method is None:
        return fits[0], alpha
    if method not in fits:
        kind = "/".join(head for head in HEADS if method in methods_for(head))
        raise InputError(f"--conformal-method {method} is for {kind} heads; output {output.name} has a {output.head} "
                         f"head (methods for it: {', '.join(fits)})")
    return method, alpha


def fit_conformal(conformal, mean, y, graph: dict, achieved: dict, std=None, seed=0) -> dict:
    """The conformal entry fitted on the calibrated MC mean (float64), put in `graph` for add_calibration,
    with its coverage and mean set size (or interval width) on the calibration set in `achieved`."""
    method, alpha = conformal
    if method == "lac":
        from .fitting import conformal_quantile, lac_scores

        entry = {"method": "lac", "alpha": alpha, "quantile": K.finite(conformal_quantile(lac_scores(mean, y), alpha))}
        graph["conformal_quantile"] = entry["quantile"]
    else:
        entry = K.fit(method, alpha, mean, y, std, seed)
        graph["conformal"] = entry
    if "class_counts" in entry:
        _warn_small(entry, alpha)
    if method in ("aps", "raps") and 1 - entry["score_quantile"] < NOISY_TAIL:
        warnings.warn(f"{method}: the sets keep classes down to a tail mass of {1 - entry['score_quantile']:.1e}, "
                      f"where the MC mean changes with the mask set: they cover {1 - alpha:g} for the mask seed "
                      "fitted on (--mask-seed, fitted_on.seed), less for others; lac and mondrian do not depend "
                      "on it", stacklevel=2)
    covered, size = K.coverage(entry, mean, y, std)
    if method in LABEL_METHODS:
        covered = covered[np.asarray(y, bool)]  # of the labels present
    achieved.update(set_coverage=float(covered.mean()), mean_set_size=float(np.mean(size)))
    return entry


def _warn_small(entry: dict, alpha: float) -> None:
    """One warning line naming the classes (labels) with too few calibration inputs for their coverage."""
    needed = K.min_class_count(alpha)
    small = [(c, n) for c, n in enumerate(entry["class_counts"]) if n < needed]
    if small:
        shown = ", ".join(f"{c} ({n})" for c, n in small[:10]) + (" ..." if len(small) > 10 else "")
        what = "class" if entry["method"] == "mondrian" else "label"
        warnings.warn(f"{entry['method']}: {len(small)} {what}(es) have fewer than {needed} calibration inputs, too few "
                      f"for coverage >= {1 - alpha - K.MARGIN:.2f} with 95% confidence: {shown}", stacklevel=2)


def regression_fit(samples, y, conformal) -> dict:
    """A regression head's calibration: conformal intervals scaled by the MC standard deviation only."""
    from ..runtime import measures as M

    mean, variance = M.mean_and_variance(samples)
    achieved, graph = {}, {}
    entry = fit_conformal(conformal, mean, y, graph, achieved, std=M.standard_deviation(variance))
    achieved["mean_interval_width"] = achieved.pop("mean_set_size")
    return {"uncertain_rule": None, "thresholds": None, "conformal": entry, "target": None, "achieved": achieved,
            "graph": graph}


def conformal_line(entry: dict, achieved: dict) -> str:
    """calibrate's report line for the conformal entry."""
    numbers = {"lac": "quantile", "aps": "score_quantile", "raps": "score_quantile"}
    if entry["method"] in numbers:
        q = entry[numbers[entry["method"]]]
        fitted = f"quantile {q:.4f}" if entry["method"] == "lac" else f"quantile {q:.6g}"
        if entry["method"] == "raps":
            fitted += f" (k_reg {entry['k_reg']}, penalty {entry['penalty']})"
    else:
        values = entry.get("class_quantiles") or entry.get("label_quantiles") or entry["unit_quantiles"]
        fitted = f"quantiles {min(values):.4f}..{max(values):.4f}"
    size = (f"mean interval width {achieved['mean_interval_width']:.4g}" if "mean_interval_width" in achieved
            else f"mean set size {achieved['mean_set_size']:.2f}")
    return (f"conformal        {entry['method']}, alpha {entry['alpha']}, {fitted}, "
            f"coverage {achieved['set_coverage']:.4f}, {size}")


def graph_check(calibrated, x, output, entry: dict) -> str:
    """The graph's conformal outputs equal the runtime's sets (intervals) on one MC run of x."""
    found = calibrated.run_raw(x, passes=8, stochastic=True)
    p = output.prefix
    std = np.sqrt(np.maximum(found[p + "variance"], 0)) if p + "variance" in found else None
    expected = prediction_sets(entry, found[p + "mean"], std)
    if "interval_low" in expected:
        width = np.maximum(np.abs(expected["interval_high"] - expected["interval_low"]), 1.0)
        gap = max(float((np.abs(found[p + name] - expected[name]) / width).max())
                  for name in ("interval_low", "interval_high"))
        if not gap <= INTERVAL_AGREEMENT:
            raise ValidationError(f"validation failed: the graph's intervals differ from the runtime's by {gap:.2e}")
        return f"graph's intervals = the runtime's ({gap:.1e})"
    disagree = int((found[p + "prediction_set"] != expected["prediction_set"]).any(axis=-1).sum())
    if disagree > max(1, int(len(expected["prediction_set"]) * SET_DISAGREEMENT)):
        raise ValidationError(f"validation failed: the graph's {entry['method']} sets differ from the runtime's on "
                              f"{disagree} of {len(expected['prediction_set'])} inputs")
    return f"graph's {entry['method']} sets = the runtime's ({disagree} of {len(expected['prediction_set'])} differ)"
