"""How `cli.py calibrate` picks the score its UNCERTAIN rule thresholds (docs/DESIGN.md: Choosing the
rule's measure).

Candidates: every score of the file that the graph's uncertain output can compute (the MC measures,
and the single-pass scores feature_distance, energy, max_logit of a calibrated softmax or logits
head). Each is ranked on the calibration inputs by its error AUROC (wrong = positive) and, with OOD
inputs (`calibrate --ood`), its OOD AUROC (OOD = positive); the threshold is then fitted on the same
inputs. A calibration input's feature distance comes from a density fitted on the other of two
stratified halves (cross-fitted), never on itself: in-sample distances are small, which would flatter
the score and tighten its threshold. The density in the graph is fitted on every input.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, Optional

import numpy as np

from .feature_density import fit_gaussians, mahalanobis_min, read_features, scores_on
from .graph import SINGLE_PASS_SCORES, UNCERTAIN_MEASURES

CANDIDATES = UNCERTAIN_MEASURES + SINGLE_PASS_SCORES
# Scores that are constant for one pass (evaluate/evaluation.py: MC_ONLY): no candidates then.
MC_ONLY = ("mutual_information", "top_class_variance")
# Kept when no candidate can be ranked (no error in the calibration set and no OOD inputs): the rule's
# measure before calibrate chose one.
FALLBACK = "mutual_information"
CRITERIA = {False: "error AUROC", True: "mean of error AUROC and OOD AUROC"}


@dataclass
class Evidence:
    """What the choice is made from, beside the calibration samples: the calibration inputs'
    cross-fitted feature distances, and the OOD inputs' samples and scores."""

    feature_distance: Optional[np.ndarray] = None
    ood_samples: Optional[np.ndarray] = None
    ood_scores: Dict[str, np.ndarray] = field(default_factory=dict)


def halves(y: np.ndarray, seed: Optional[int]):
    """(first rows, second rows): each class's inputs shuffled with `seed` and dealt alternately, so
    both halves hold every class with two or more inputs."""
    rng = np.random.default_rng(0 if seed is None else seed)
    first, second = [], []
    for label in np.unique(y):
        rows = rng.permutation(np.flatnonzero(y == label))
        first.append(rows[::2])
        second.append(rows[1::2])
    return np.sort(np.concatenate(first)), np.sort(np.concatenate(second))


def gather(proto, session, labelled, ood_x, chosen, single_pass: dict, seed, sample) -> Optional[Evidence]:
    """The Evidence for calibrate_model (None for heads other than softmax and logits): halves of the
    labelled set, its cross-fitted feature distances (from single_pass["features"]), and for the OOD
    batch `ood_x` (or None) its MC samples (`sample(x)`) and single-pass scores from `proto`, the
    graph with those scores added."""
    if chosen.head not in ("softmax", "logits"):
        return None
    y = np.asarray(labelled.y).reshape(-1)
    classes = int(y.max()) + 1  # fit_gaussians keeps the classes present
    first, second = halves(y, seed)
    evidence = Evidence()
    features = single_pass.get("features")
    fitted = {}
    if features is not None:
        evidence.feature_distance, fitted = cross_fitted(features, y, (first, second), classes)
    if ood_x is not None:
        evidence.ood_samples = sample(ood_x)
        evidence.ood_scores = scores_on(proto, single_pass.get("outputs", []), chosen.prefix, ood_x, session)
        if fitted:  # from a density fitted on half the inputs, as the calibration inputs' distances
            layer = single_pass["entry"]["single_pass_scores"]["feature_layer"]
            ood_features, _ = read_features(proto, session, ood_x, layer)
            evidence.ood_scores["feature_distance"] = np.mean([mahalanobis_min(
                ood_features, half["means"], half["whitening"]) for half in fitted.values()], axis=0)
    return evidence


def cross_fitted(features: np.ndarray, y: np.ndarray, parts, classes: int):
    """(each input's feature distance under the density fitted on the other half of `parts`, the
    two densities {"first": ..., "second": ...}): no distance comes from a fit that saw its input."""
    first, second = parts
    fitted = {name: fit_gaussians(features[rows], y[rows], classes) for name, rows in (("first", first),
                                                                                    ("second", second))}
    distance = np.empty(len(y))
    for rows, other in ((first, "second"), (second, "first")):
        distance[rows] = mahalanobis_min(features[rows], fitted[other]["means"], fitted[other]["whitening"])
    return distance, fitted


def candidate_scores(prediction) -> Dict[str, np.ndarray]:
    """{candidate: float64 [n], higher = less certain} of the prediction (max_logit negated)."""
    from ..runtime.uncertain_rule import scores

    found = scores(prediction)
    out = {}
    for name in CANDIDATES:
        key = "negative_max_logit" if name == "max_logit" else name
        if key in found and (prediction.passes > 1 or name not in MC_ONLY):
            out[name] = found[key]
    return out


def _auroc(scores, positives) -> Optional[float]:
    from ..evaluate.metrics import auroc

    value = auroc(scores, positives)
    return value if math.isfinite(value) else None


def compare(inside: Dict[str, np.ndarray], wrong: np.ndarray,
            outside: Optional[Dict[str, np.ndarray]] = None) -> Dict[str, dict]:
    """Each candidate's error AUROC on `inside` (wrong = positive), OOD AUROC of `outside` against
    `inside` (None without OOD scores or where undefined) and the criterion: the mean of those defined."""
    table = {}
    for name, score in inside.items():
        row = {"error_auroc": _auroc(score, wrong), "ood_auroc": None}
        if outside is not None and name in outside:
            row["ood_auroc"] = _auroc(np.concatenate([score, outside[name]]),
                                      np.r_[np.zeros(len(score), bool), np.ones(len(outside[name]), bool)])
        defined = [value for value in row.values() if value is not None]
        row["criterion"] = float(np.mean(defined)) if defined else None
        table[name] = row
    return table


def choose(table: Dict[str, dict], given: Optional[str]) -> str:
    """`given` (--measure) when there is one; else the candidate with the highest criterion, the
    first in CANDIDATES' order on a tie; FALLBACK when none has a criterion."""
    if given is not None:
        return given
    ranked = [(row["criterion"], -CANDIDATES.index(name), name) for name, row in table.items()
              if row["criterion"] is not None]
    return max(ranked)[2] if ranked else FALLBACK


def measure_choice(prediction, ood_prediction, correct: np.ndarray, given: Optional[str]) -> dict:
    """The metadata entry "measure_choice" (docs/FORMAT.md: Calibration): every candidate's AUROCs on
    the calibration inputs (prediction's feature distances cross-fitted), the criterion and the
    measure chosen."""
    outside = None if ood_prediction is None else candidate_scores(ood_prediction)
    table = compare(candidate_scores(prediction), ~correct, outside)
    return {"chosen": choose(table, given), "given": given is not None, "criterion": CRITERIA[outside is not None],
            "inputs": int(len(correct)), "ood_inputs": 0 if ood_prediction is None else int(len(ood_prediction)),
            "feature_distance": "cross-fitted on two stratified halves", "candidates": table}
