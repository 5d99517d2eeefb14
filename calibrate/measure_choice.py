"""How `cli.py calibrate` picks the score its UNCERTAIN rule thresholds (docs/DESIGN.md: Choosing the
rule's measure).

Candidates: every score of the file that the graph's uncertain output can compute (the MC measures,
and the single-pass scores feature_distance, energy, max_logit of a calibrated softmax or logits
head). The calibration set is split in two stratified halves with the fit's seed:
* the choice half ranks the candidates: each one's error AUROC (wrong = positive) and, with OOD
  inputs (`calibrate --ood`), its OOD AUROC against the choice half (OOD = positive);
* the rule half is what the threshold is fitted on, so the luck of the winner on the choice half
  does not flatter its threshold (with `--measure` there is no choice: the threshold uses every input).
A calibration input's feature distance comes from a density fitted on the other half (cross-fitted),
never on itself: in-sample distances are small, which would flatter the score and tighten its
threshold. The density in the graph is fitted on every input.
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
# Kept when no candidate can be ranked (no error in the choice half and no OOD inputs): the rule's
# measure before calibrate chose one.
FALLBACK = "mutual_information"
CRITERIA = {False: "error AUROC on the choice half",
            True: "mean of error AUROC and OOD AUROC on the choice half"}


@dataclass
class Evidence:
    """What the choice is made from, beside the calibration samples: the two halves (row indices),
    the calibration inputs' cross-fitted feature distances, and the OOD inputs' samples and scores."""

    choice_rows: np.ndarray
    rule_rows: np.ndarray
    feature_distance: Optional[np.ndarray] = None
    ood_samples: Optional[np.ndarray] = None
    ood_scores: Dict[str, np.ndarray] = field(default_factory=dict)


def halves(y: np.ndarray, seed: Optional[int]):
    """(choice rows, rule rows): each class's inputs shuffled with `seed` and dealt alternately, so
    both halves hold every class with two or more inputs."""
    rng = np.random.default_rng(0 if seed is None else seed)
    choice, rule = [], []
    for label in np.unique(y):
        rows = rng.permutation(np.flatnonzero(y == label))
        choice.append(rows[::2])
        rule.append(rows[1::2])
    return np.sort(np.concatenate(choice)), np.sort(np.concatenate(rule))


def gather(proto, session, labelled, ood_x, chosen, single_pass: dict, seed, sample) -> Optional[Evidence]:
    """The Evidence for calibrate_model (None for heads other than softmax and logits): halves of the
    labelled set, cross-fitted feature distances (from single_pass["features"]), and for the OOD
    batch `ood_x` (or None) its MC samples (`sample(x)`) and single-pass scores from `proto`, the
    graph with those scores added."""
    if chosen.head not in ("softmax", "logits"):
        return None
    y = np.asarray(labelled.y).reshape(-1)
    classes = int(y.max()) + 1  # fit_gaussians keeps the classes present
    choice, rule = halves(y, seed)
    evidence = Evidence(choice, rule)
    features = single_pass.get("features")
    fitted = {}
    if features is not None:
        evidence.feature_distance, fitted = cross_fitted(features, y, (choice, rule), classes)
    if ood_x is not None:
        evidence.ood_samples = sample(ood_x)
        evidence.ood_scores = scores_on(proto, single_pass.get("outputs", []), chosen.prefix, ood_x, session)
        if fitted:  # as the choice half's distances: the density of the rule half
            layer = single_pass["entry"]["single_pass_scores"]["feature_layer"]
            ood_features, _ = read_features(proto, session, ood_x, layer)
            evidence.ood_scores["feature_distance"] = mahalanobis_min(
                ood_features, fitted["rule"]["means"], fitted["rule"]["whitening"])
    return evidence


def cross_fitted(features: np.ndarray, y: np.ndarray, parts, classes: int):
    """(each input's feature distance under the density fitted on the other half of `parts`, the
    two densities {"choice": ..., "rule": ...}): no distance comes from a fit that saw its input."""
    choice, rule = parts
    fitted = {name: fit_gaussians(features[rows], y[rows], classes) for name, rows in (("choice", choice),
                                                                                    ("rule", rule))}
    distance = np.empty(len(y))
    for rows, other in ((choice, "rule"), (rule, "choice")):
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


def measure_choice(prediction, ood_prediction, correct: np.ndarray, evidence: Evidence,
                   given: Optional[str]) -> dict:
    """The metadata entry "measure_choice" (docs/FORMAT.md: Calibration): the candidates' AUROCs on
    the choice half, the criterion, the measure chosen and the inputs the threshold is fitted on."""
    rows = evidence.choice_rows
    inside = {name: score[rows] for name, score in candidate_scores(prediction).items()}
    outside = None if ood_prediction is None else candidate_scores(ood_prediction)
    table = compare(inside, ~correct[rows], outside)
    chosen = choose(table, given)
    rule_rows = evidence.rule_rows if given is None else np.arange(len(correct))
    return {"chosen": chosen, "given": given is not None, "criterion": CRITERIA[outside is not None],
            "choice_inputs": int(len(rows)), "rule_inputs": int(len(rule_rows)),
            "ood_inputs": 0 if ood_prediction is None else int(len(ood_prediction)), "candidates": table,
            "rule_rows": rule_rows}
