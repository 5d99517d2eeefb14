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

from runtime.errors import InputError

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
# Measures a rule may name, per kind of head (a score, or a measure where higher = more certain).
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
                if measure not in RULE_MEASURES[kind]:
                    raise InputError(f"uncertain rule: a {head} head has no measure {measure!r}; "
                                     f"choose from {', '.join(RULE_MEASURES[kind])}")
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
        values = rule_values(prediction)
        for condition in self.conditions:
            value = values[condition.measure].reshape(len(prediction), -1)
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
    (CATEGORICAL_SCORES)."""
    m = prediction.measures
    mean = prediction.mean.astype(np.float64)
    label = mean.argmax(axis=-1)
    top_variance = np.take_along_axis(prediction.variance.astype(np.float64), label[:, None], axis=-1)[:, 0]
    return {
        "mutual_information": np.asarray(m["mutual_information"], np.float64),
        "predictive_entropy": np.asarray(m["predictive_entropy"], np.float64),
        "expected_entropy": np.asarray(m["expected_entropy"], np.float64),
        "variation_ratio": np.asarray(m["variation_ratio"], np.float64),
        "top_class_variance": top_variance,
        "one_minus_confidence": 1.0 - mean.max(axis=-1),
    }


def rule_values(prediction) -> Dict[str, np.ndarray]:
    """The values a rule may test, by measure name, batch first."""
    kind = head_kind(prediction.head)
    m = prediction.measures
    if kind == "categorical":
        return {**scores(prediction), "confidence": np.asarray(m["confidence"]), "margin": np.asarray(m["margin"])}
    if kind == "sigmoid":
        limits = m["threshold"] if prediction.head == "binary" else m["thresholds"]
        return {"mutual_information": m["mutual_information"], "entropy": m["entropy"],
                "expected_entropy": m["expected_entropy"], "std": m["std"],
                "threshold_distance": np.abs(m["probability"] - limits)}
    return {"std": m["std"]}


def file_rule(calibration: Optional[dict], head: str) -> Rule:
    """The rule a file's calibration carries (see docs/FORMAT.md), else the default."""
    text = (calibration or {}).get("uncertain_rule")
    if text is None:
        return default_rule(head)
    return Rule.parse(text, head, source="calibrated")
