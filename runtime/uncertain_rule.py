"""When a prediction is flagged UNCERTAIN: a rule of conditions on the uncertainty measures.

A rule is an OR of conditions `measure > value` or `measure < value`, written as text
("mutual_information > 0.1 or confidence < 0.6"). A measure that has one value per label (binary
and multi-label heads) meets a condition when any of its labels does.

Where the rule comes from, in order: `--uncertain-if` / `uncertain_if=` (source "override"); the
rule `cli.py calibrate` fitted and wrote into the file (source "calibrated"); else the default
below (source "default"), a rule of thumb for a model nobody calibrated (README: Uncertain).
"""

import re
from dataclasses import dataclass
from typing import Dict, Optional, Tuple

import numpy as np

from .errors import InputError

CATEGORICAL_HEADS = ("softmax", "logits")
SIGMOID_HEADS = ("binary", "multilabel")

# The default rule, a heuristic chosen on the shipped digits models, not a calibrated test.
# Categorical: mutual_information > UNCERTAIN_MUTUAL_INFORMATION (nats) or confidence <
#   UNCERTAIN_CONFIDENCE. Binary / multi-label: any label's mutual_information above the same
#   bound, or any label's probability strictly closer than UNCERTAIN_THRESHOLD_DISTANCE to its
#   decision threshold. Regression: never flagged (read `std`).
UNCERTAIN_MUTUAL_INFORMATION = 0.1
UNCERTAIN_CONFIDENCE = 0.6
UNCERTAIN_THRESHOLD_DISTANCE = 0.1

# The scores `evaluate` ranks inputs by and `calibrate` may threshold: higher = less certain.
CATEGORICAL_SCORES = ("mutual_information", "predictive_entropy", "expected_entropy", "variation_ratio",
                      "top_class_variance", "one_minus_confidence")
# Single-pass scores a calibrated file computes in its graph (calibrate/feature_density.py), on the
# deterministic pass; higher = less certain except max_logit. Present only in files that carry them.
SINGLE_PASS_SCORES = ("feature_distance", "energy")
SINGLE_PASS_MEASURES = SINGLE_PASS_SCORES + ("max_logit",)
# Measures a rule may name, per kind of head (a score, or a measure where higher = more certain);
# categorical heads may also name SINGLE_PASS_MEASURES, which only calibrated files compute.
RULE_MEASURES = {
    "categorical": CATEGORICAL_SCORES + ("confidence", "margin"),
    "sigmoid": ("mutual_information", "entropy", "expected_entropy", "std", "threshold_distance"),
    "regression": ("std",),
}
_CONDITION = re.compile(r"\s*([a-z_]+)\s*([<>])\s*([-+0-9.eE]+|inf)\s*")


def head_kind(head: str) -> str:
    if head in CATEGORICAL_HEADS:
        return "categorical"
    return "sigmoid" if head in SIGMOID_HEADS else "regression"


@dataclass(frozen=True)
class Condition:
    measure: str
    op: str  # ">" or "<"
    value: float

    def __str__(self) -> str:
        return f"{self.measure} {self.op} {self.value:.6g}"


@dataclass(frozen=True)
class Rule:
    """OR of conditions; no condition: never uncertain."""

    conditions: Tuple[Condition, ...]
    source: str = "default"  # "default", "calibrated" or "override"

    def __str__(self) -> str:
        return " or ".join(map(str, self.conditions)) or "never"

    @classmethod
    def parse(cls, text: str, head: str, source: str = "override") -> "Rule":
        """A rule from its text, checked against the measures the head has."""
        kind = head_kind(head)
        conditions = []
        if text.strip().lower() != "never":
            for part in re.split(r"\s+or\s+|,", text.strip()):
                match = _CONDITION.fullmatch(part)
                if not match:
                    raise InputError(f"uncertain rule {text!r}: expected conditions like "
                                     "'mutual_information > 0.1 or confidence < 0.6', or 'never'")
                measure, op, value = match.groups()
                allowed = RULE_MEASURES[kind] + (SINGLE_PASS_MEASURES if kind == "categorical" else ())
                if measure not in allowed:
                    raise InputError(f"uncertain rule: a {head} head has no measure {measure!r}; "
                                     f"choose from {', '.join(allowed)}")
                try:
                    number = float(value)
                except ValueError:
                    raise InputError(f"uncertain rule: {value!r} is not a number") from None
                if not np.isfinite(number):
                    raise InputError(f"uncertain rule: {measure} {op} {value}: the bound must be finite")
                conditions.append(Condition(measure, op, number))
        return cls(tuple(conditions), source)

    def evaluate(self, prediction) -> np.ndarray:
        """bool [batch]: which inputs of `prediction` the rule flags."""
        flagged = np.zeros(len(prediction), dtype=bool)
        for condition in self.conditions:
            value = measure_value(prediction, condition.measure).reshape(len(prediction), -1)
            met = value > condition.value if condition.op == ">" else value < condition.value
            flagged |= met.any(axis=1)
        return flagged

    def to_dict(self) -> dict:
        return {"rule": str(self), "source": self.source}


def default_rule(head: str) -> Rule:
    """The documented rule of thumb; reads the module constants when called."""
    kind = head_kind(head)
    if kind == "categorical":
        return Rule((Condition("mutual_information", ">", UNCERTAIN_MUTUAL_INFORMATION),
                     Condition("confidence", "<", UNCERTAIN_CONFIDENCE)))
    if kind == "sigmoid":
        return Rule((Condition("mutual_information", ">", UNCERTAIN_MUTUAL_INFORMATION),
                     Condition("threshold_distance", "<", UNCERTAIN_THRESHOLD_DISTANCE)))
    return Rule(())


def scores(prediction) -> Dict[str, np.ndarray]:
    """Every uncertainty score of a categorical prediction, float64 [batch], higher = less certain
    (CATEGORICAL_SCORES), then the file's single-pass scores (SINGLE_PASS_SCORES, and -max_logit
    as `negative_max_logit`) when it has them."""
    found = {name: measure_value(prediction, name) for name in CATEGORICAL_SCORES}
    found.update({name: np.asarray(prediction.measures[name], np.float64) for name in SINGLE_PASS_SCORES
                  if name in prediction.measures})
    if "max_logit" in prediction.measures:
        found["negative_max_logit"] = -np.asarray(prediction.measures["max_logit"], np.float64)
    return found


def measure_value(prediction, name: str) -> np.ndarray:
    """One value a rule may test (RULE_MEASURES), batch first: only what the rule names is
    computed, since `Prediction.uncertain` evaluates the rule on every access."""
    kind = head_kind(prediction.head)
    m = prediction.measures
    if name in SINGLE_PASS_MEASURES and name not in m:
        raise InputError(f"the rule names {name}, which this file does not compute: `cli.py calibrate` writes "
                         "the single-pass scores into a softmax or logits head's graph")
    if kind == "categorical":
        if name in ("confidence", "margin"):
            return np.asarray(m[name])
        if name == "top_class_variance":
            label = prediction.mean.argmax(axis=-1)
            return np.take_along_axis(prediction.variance.astype(np.float64), label[:, None], axis=-1)[:, 0]
        if name == "one_minus_confidence":
            return 1.0 - prediction.mean.astype(np.float64).max(axis=-1)
        return np.asarray(m[name], np.float64)
    if kind == "sigmoid" and name == "threshold_distance":
        return np.abs(m["probability"] - (m["threshold"] if prediction.head == "binary" else m["thresholds"]))
    return m[name]


def file_rule(calibration: Optional[dict], head: str) -> Rule:
    """The rule a file's calibration carries (see docs/FORMAT.md), else the default."""
    text = (calibration or {}).get("uncertain_rule")
    if text is None:
        return default_rule(head)
    return Rule.parse(text, head, source="calibrated")
