"""The UNCERTAIN rule: its text form, its measures, and a file's calibration read defensively."""

import numpy as np
import pytest

from mcdrop.runtime import uncertain_rule as decision
from mcdrop.runtime.uncertain_rule import Rule, default_rule, file_rule, scores
from mcdrop.runtime.errors import InputError
from mcdrop.runtime.format.metadata_fields import _Bad, _calibration
from mcdrop.runtime.prediction import Prediction


def categorical():
    """input 0: sure of class 0; input 1: passes split between classes 1 and 2."""
    samples = np.array([[[1.0, 0.0, 0.0], [0.0, 0.9, 0.1]],
                        [[1.0, 0.0, 0.0], [0.0, 0.1, 0.9]]], dtype=np.float32)
    return Prediction.from_samples(samples, "softmax")


def test_parse_round_trips_and_evaluates_as_an_or():
    rule = Rule.parse("mutual_information > 0.2 or confidence < 0.5", "softmax")
    assert str(rule) == "mutual_information > 0.2 or confidence < 0.5" and rule.source == "override"
    assert Rule.parse(str(rule), "softmax") == rule
    p = categorical()  # input 1: confidence 0.5 (not < 0.5), MI = ln 2 - H(0.9) > 0.2
    assert rule.evaluate(p).tolist() == [False, True]
    assert Rule.parse("confidence < 0.6", "softmax").evaluate(p).tolist() == [False, True]
    assert Rule.parse("never", "softmax").evaluate(p).tolist() == [False, False]


@pytest.mark.parametrize("text, message", [
    ("confidence", "expected conditions"), ("confidence <= 0.5", "expected conditions"),
    ("certainty > 1", "no measure 'certainty'"), ("confidence < inf", "must be finite"),
])
def test_bad_rules_are_input_errors(text, message):
    with pytest.raises(InputError, match=message):
        Rule.parse(text, "softmax")


def test_sigmoid_measures_meet_a_condition_when_any_label_does():
    samples = np.array([[[0.55, 0.9]], [[0.55, 0.9]]], dtype=np.float32)
    p = Prediction.from_samples(samples, "multilabel", thresholds=[0.5, 0.5])
    assert Rule.parse("threshold_distance < 0.1", "multilabel").evaluate(p).tolist() == [True]  # label 0
    assert Rule.parse("threshold_distance < 0.01", "multilabel").evaluate(p).tolist() == [False]
    with pytest.raises(InputError, match="no measure 'confidence'"):
        Rule.parse("confidence < 0.5", "binary")


def test_scores_against_their_definitions():
    p = categorical()
    found = scores(p)
    np.testing.assert_allclose(found["one_minus_confidence"], 1 - p.mean.max(-1), atol=1e-7)
    np.testing.assert_allclose(found["top_class_variance"], [0.0, 0.16], atol=1e-6)  # 0.9 and 0.1 around 0.5
    np.testing.assert_allclose(found["mutual_information"], p.measures["mutual_information"])
    assert list(found) == list(decision.CATEGORICAL_SCORES)


def test_default_and_file_rules():
    assert str(default_rule("softmax")) == "mutual_information > 0.1 or confidence < 0.6"
    assert str(default_rule("binary")) == "mutual_information > 0.1 or threshold_distance < 0.1"
    assert str(default_rule("regression")) == "never"
    rule = file_rule({"uncertain_rule": "mutual_information > 0.35"}, "softmax")
    assert rule.source == "calibrated" and rule.conditions[0].value == 0.35
    assert file_rule(None, "softmax").source == "default"


@pytest.mark.parametrize("calibration, head", [
    ("yes", "softmax"), ({"temperature": -1}, "softmax"), ({"temperature": True}, "softmax"),
    ({"uncertain_rule": "certainty > 1"}, "softmax"), ({"uncertain_rule": 3}, "softmax"),
    ({"thresholds": [0.5]}, "softmax"), ({"thresholds": [0.5, 2.0, 0.1]}, "multilabel"),
    ({"thresholds": [0.5]}, "multilabel"), ({"conformal": {"quantile": 1.5}}, "softmax"),
    ({"conformal": {"quantile": 0.5}}, "binary"),
])
def test_broken_calibration_metadata_is_refused(calibration, head):
    with pytest.raises(_Bad):
        _calibration(calibration, head, (None, 3))
