"""Prediction: each head's measures on crafted samples, the uncertain rule, JSON output."""

import io
import json
import math

import numpy as np
import pytest

from mcdrop.runtime import uncertain_rule as decision
from mcdrop.runtime import measures as M
from mcdrop.runtime import prediction as P
from mcdrop.runtime.errors import InputError
from mcdrop.runtime.prediction import Prediction

LN2 = math.log(2)


def strict_loads(text):
    def refuse(name):
        raise ValueError(f"non-standard JSON constant {name}")
    return json.loads(text, parse_constant=refuse)


def assert_plain_python(value):
    """Only JSON's own python types, recursively (numpy scalars would fail json.dumps)."""
    if isinstance(value, dict):
        assert all(isinstance(k, str) for k in value)
        for item in value.values():
            assert_plain_python(item)
    elif isinstance(value, list):
        for item in value:
            assert_plain_python(item)
    else:
        assert value is None or type(value) in (str, int, float, bool), type(value)


def categorical_samples():
    """T=4, B=3, C=3.
    input 0: every pass certain of class 2  -> confidence 1, MI 0, not uncertain
    input 1: every pass [0.55, 0.45, 0]     -> MI 0 but confidence 0.55 < 0.6: uncertain
    input 2: 3 passes [1, 0, 0], 1 pass [0.2, 0.8, 0] -> confidence 0.8, MI > 0.1: uncertain
    """
    s = np.zeros((4, 3, 3), dtype=np.float32)
    s[:, 0, 2] = 1.0
    s[:, 1] = [0.55, 0.45, 0.0]
    s[:3, 2] = [1.0, 0.0, 0.0]
    s[3, 2] = [0.2, 0.8, 0.0]
    return s


def h(*p):
    return -sum(v * math.log(v) for v in p if v > 0)


# --- categorical -------------------------------------------------------------------------------

@pytest.mark.parametrize("head", ["softmax", "logits"])
def test_categorical_head(head):
    pred = Prediction.from_samples(categorical_samples(), head, labels=["cat", "dog", "eel"],
                                   provider="CPUExecutionProvider")
    m = pred.measures
    assert len(pred) == 3 and pred.passes == 4 and pred.provider == "CPUExecutionProvider"
    assert pred.mean.dtype == pred.variance.dtype == m["mutual_information"].dtype == np.float32
    assert pred.mean.shape == pred.variance.shape == (3, 3)
    np.testing.assert_allclose(pred.mean[2], [0.8, 0.2, 0.0], rtol=1e-6)
    # Population variance of [1, 1, 1, 0.2] is 0.12; its std sqrt(0.12).
    np.testing.assert_allclose(pred.variance[2, 0], 0.12, rtol=1e-5)
    np.testing.assert_allclose(m["std"][2, 0], math.sqrt(0.12), rtol=1e-5)
    assert m["label"].tolist() == [2, 0, 0]
    assert m["label_name"].tolist() == ["eel", "cat", "cat"]
    np.testing.assert_allclose(m["confidence"], [1.0, 0.55, 0.8], rtol=1e-6)
    np.testing.assert_allclose(m["margin"], [1.0, 0.10, 0.6], rtol=1e-5)
    np.testing.assert_allclose(m["predictive_entropy"], [0.0, h(0.55, 0.45), h(0.8, 0.2)],
                               rtol=1e-5)
    np.testing.assert_allclose(m["expected_entropy"], [0.0, h(0.55, 0.45), h(0.2, 0.8) / 4],
                               rtol=1e-5)
    np.testing.assert_allclose(m["mutual_information"],
                               [0.0, 0.0, h(0.8, 0.2) - h(0.2, 0.8) / 4], atol=1e-6)
    np.testing.assert_allclose(m["variation_ratio"], [0.0, 0.0, 0.25], atol=1e-7)
    assert pred.uncertain.tolist() == [False, True, True]


def test_uncertain_rule_uses_module_constants(monkeypatch):
    pred = Prediction.from_samples(categorical_samples(), "softmax")
    monkeypatch.setattr(decision, "UNCERTAIN_CONFIDENCE", 0.5)
    assert pred.uncertain.tolist() == [False, False, True]  # 0.55 is now confident enough
    monkeypatch.setattr(decision, "UNCERTAIN_MUTUAL_INFORMATION", 1.0)
    assert pred.uncertain.tolist() == [False, False, False]


def test_top_k_order_and_clipping():
    mean = np.array([[0.2, 0.4, 0.1, 0.4]], dtype=np.float32)
    pred = Prediction.from_samples(mean[None], "softmax", labels=list("abcd"), top_k=3)
    assert pred.measures["top_k_indices"].tolist() == [[1, 3, 0]]  # tie 0.4: lower index first
    np.testing.assert_allclose(pred.measures["top_k_probs"], [[0.4, 0.4, 0.2]], rtol=1e-6)
    assert pred.measures["top_k_labels"].tolist() == [["b", "d", "a"]]
    wide = Prediction.from_samples(mean[None], "softmax", top_k=10)
    assert wide.measures["top_k_indices"].tolist() == [[1, 3, 0, 2]]


# --- binary ------------------------------------------------------------------------------------

def binary_samples():
    """T=4, B=3, one unit.
    input 0: always 0.95 -> MI 0, far from 0.5: certain
    input 1: always 0.55 -> MI 0 but within 0.1 of 0.5: uncertain
    input 2: 0.99, 0.99, 0.99, 0.01 -> mean 0.745, far from 0.5, MI ~0.5: uncertain
    """
    s = np.empty((4, 3, 1), dtype=np.float32)
    s[:, 0] = 0.95
    s[:, 1] = 0.55
    s[:, 2, 0] = [0.99, 0.99, 0.99, 0.01]
    return s


def test_binary_head():
    pred = Prediction.from_samples(binary_samples(), "binary", labels=["ham", "spam"])
    m = pred.measures
    assert pred.mean.shape == (3, 1) and m["probability"].shape == (3,)
    np.testing.assert_allclose(m["probability"], [0.95, 0.55, 0.745], rtol=1e-6)
    np.testing.assert_allclose(m["variance"][2], 0.99 ** 2 * 3 / 4 + 0.01 ** 2 / 4 - 0.745 ** 2,
                               rtol=1e-4)
    np.testing.assert_allclose(m["std"], np.sqrt(m["variance"]), rtol=1e-6)
    np.testing.assert_allclose(m["entropy"], [h(0.95, 0.05), h(0.55, 0.45), h(0.745, 0.255)],
                               rtol=1e-5)
    expected2 = (3 * h(0.99, 0.01) + h(0.01, 0.99)) / 4
    np.testing.assert_allclose(m["expected_entropy"][2], expected2, rtol=1e-5)
    np.testing.assert_allclose(m["mutual_information"], [0, 0, h(0.745, 0.255) - expected2],
                               atol=1e-6)
    assert float(m["threshold"]) == 0.5
    assert m["decision"].dtype == bool and m["decision"].tolist() == [True, True, True]
    assert m["label_name"].tolist() == ["spam", "spam", "spam"]
    assert pred.uncertain.tolist() == [False, True, True]


def test_binary_threshold_moves_decision_and_flag():
    pred = Prediction.from_samples(binary_samples(), "binary", threshold=0.9, labels=["no", "yes"])
    assert pred.measures["decision"].tolist() == [True, False, False]
    assert pred.measures["label_name"].tolist() == ["yes", "no", "no"]
    # 0.95 is now within 0.1 of the threshold; 0.55 is no longer.
    certain = Prediction.from_samples(np.full((3, 2, 1), [[0.95], [0.55]], dtype=np.float32),
                                      "binary", threshold=0.9)
    assert certain.uncertain.tolist() == [True, False]


def test_binary_needs_one_unit_and_two_labels():
    with pytest.raises(InputError):
        Prediction.from_samples(np.full((2, 1, 2), 0.5), "binary")
    with pytest.raises(InputError):
        Prediction.from_samples(binary_samples(), "binary", labels=["spam"])


# --- multilabel --------------------------------------------------------------------------------

def test_multilabel_per_label_thresholds():
    probs = np.array([[0.3, 0.6, 0.8], [0.1, 0.9, 0.5]], dtype=np.float32)
    samples = np.broadcast_to(probs, (4, 2, 3))
    pred = Prediction.from_samples(samples, "multilabel", thresholds=[0.2, 0.7, 0.8],
                                   labels=["red", "green", "blue"])
    m = pred.measures
    assert m["probability"].shape == m["mutual_information"].shape == (2, 3)
    np.testing.assert_allclose(m["thresholds"], [0.2, 0.7, 0.8], rtol=1e-7)
    # 0.8 >= 0.8 is active; 0.6 < 0.7 is not although it is above the default 0.5.
    assert m["decision"].tolist() == [[True, False, True], [False, True, False]]
    assert m["active"] == [[0, 2], [1]]
    assert m["active_labels"] == [["red", "blue"], ["green"]]
    np.testing.assert_allclose(m["entropy"], [[h(p, 1 - p) for p in row] for row in probs.tolist()],
                               rtol=1e-5)
    # input 0: 0.3 within 0.1 of 0.2 -> uncertain; input 1: all >= 0.2 away, MI 0 -> certain.
    assert pred.uncertain.tolist() == [True, False]
    default = Prediction.from_samples(samples, "multilabel")
    np.testing.assert_array_equal(default.measures["thresholds"], [0.5, 0.5, 0.5])
    assert default.measures["active"] == [[1, 2], [1, 2]]


def test_multilabel_mutual_information_flag():
    # Label 1 flips 0 / 1 between passes: MI ln 2 for that label only.
    samples = np.zeros((2, 1, 2), dtype=np.float32)
    samples[1, 0, 1] = 1.0
    pred = Prediction.from_samples(samples, "multilabel", threshold=0.9)
    np.testing.assert_allclose(pred.measures["mutual_information"], [[0.0, LN2]], atol=1e-6)
    assert pred.uncertain.tolist() == [True]  # 0.5 is 0.4 from 0.9: only MI can flag it


@pytest.mark.parametrize("kwargs", [
    {"thresholds": [0.5, 0.5]},           # wrong count
    {"thresholds": [0.5, 0.5, 1.5]},      # outside [0, 1]
    {"threshold": float("nan")},
    {"labels": ["a", "b"]},
])
def test_multilabel_bad_options(kwargs):
    with pytest.raises(InputError):
        Prediction.from_samples(np.full((2, 1, 3), 0.5), "multilabel", **kwargs)


# --- regression --------------------------------------------------------------------------------

def test_regression_head():
    samples = np.array([[[1.0, 10.0]], [[3.0, 10.0]]], dtype=np.float32)  # T=2, B=1, 2 outputs
    pred = Prediction.from_samples(samples, "regression")
    np.testing.assert_array_equal(pred.measures["mean"], [[2.0, 10.0]])
    np.testing.assert_array_equal(pred.measures["std"], [[1.0, 0.0]])  # output units, not var
    np.testing.assert_array_equal(pred.variance, [[1.0, 0.0]])
    assert pred.uncertain.tolist() == [False]
    scalar = Prediction.from_samples(np.arange(6.0).reshape(3, 2), "regression")  # [T, B]
    np.testing.assert_array_equal(scalar.mean, [2.0, 3.0])


def test_regression_non_finite_becomes_null():
    samples = np.array([[[np.inf, 1.0]], [[0.0, 1.0]]], dtype=np.float32)
    with np.errstate(invalid="ignore"):
        pred = Prediction.from_samples(samples, "regression")
    loaded = strict_loads(pred.to_json())
    assert loaded["mean"] == [[None, 1.0]]


# --- serialisation and container protocol -------------------------------------------------------

def all_heads():
    rng = np.random.default_rng(0)
    return [
        Prediction.from_samples(categorical_samples(), "softmax", labels=["a", "b", "c"]),
        Prediction.from_samples(binary_samples(), "binary", labels=["no", "yes"]),
        Prediction.from_samples(rng.uniform(size=(5, 3, 4)), "multilabel", labels=list("wxyz")),
        Prediction.from_samples(rng.normal(size=(5, 3, 2)), "regression"),
    ]


@pytest.mark.parametrize("pred", all_heads(), ids=lambda p: p.head)
def test_json_round_trip(pred):
    whole = pred.to_dict()
    assert_plain_python(whole)
    assert whole["units"] == "nats"
    assert whole["orientation"] == P.ORIENTATION
    assert "mutual_information" in whole["orientation"] and "less certain" in whole["orientation"]
    loaded = strict_loads(pred.to_json())
    assert loaded == whole
    assert loaded["batch"] == len(pred) == 3
    assert loaded["uncertain"] == pred.uncertain.tolist()
    # Values survive the trip at float32 precision.
    np.testing.assert_array_equal(np.asarray(loaded["mean"], dtype=np.float32), pred.mean)
    for name, value in pred.measures.items():
        if isinstance(value, np.ndarray) and value.dtype.kind == "f":
            np.testing.assert_array_equal(np.asarray(loaded["measures"][name], dtype=value.dtype),
                                          value)


@pytest.mark.parametrize("pred", all_heads(), ids=lambda p: p.head)
def test_one_input(pred):
    one = pred[1]
    assert one == pred.to_dict(1) == strict_loads(pred.to_json(1))
    assert_plain_python(one)
    assert one["index"] == 1 and one["units"] == "nats"
    np.testing.assert_array_equal(np.asarray(one["mean"], dtype=np.float32), pred.mean[1])
    assert one["uncertain"] == bool(pred.uncertain[1])
    assert pred[-1] == pred[2]
    with pytest.raises(IndexError):
        pred[3]


def test_one_input_keeps_model_wide_thresholds():
    pred = Prediction.from_samples(np.full((2, 2, 3), 0.5), "multilabel",
                                   thresholds=[0.1, 0.5, 0.9])
    assert pred[0]["measures"]["thresholds"] == [0.1, 0.5, 0.9]
    assert pred[0]["measures"]["active"] == [0, 1]


@pytest.mark.parametrize("pred", all_heads(), ids=lambda p: p.head)
def test_arrays_for_npz(pred):
    arrays = pred.arrays()
    assert all(isinstance(v, np.ndarray) and v.dtype.kind in "biuf" for v in arrays.values())
    assert arrays["mean"].shape == arrays["variance"].shape == pred.mean.shape
    assert {"mutual_information", "std"} & set(arrays) or pred.head == "regression"
    assert "label_name" not in arrays and "active" not in arrays
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    buffer.seek(0)
    with np.load(buffer) as loaded:
        np.testing.assert_array_equal(loaded["uncertain"], pred.uncertain)
        np.testing.assert_array_equal(loaded["samples"], pred.samples)


def test_samples_kept_unless_asked():
    s = categorical_samples()
    assert Prediction.from_samples(s, "softmax").samples.shape == (4, 3, 3)
    dropped = Prediction.from_samples(s, "softmax", keep_samples=False)
    assert dropped.samples is None and "samples" not in dropped.arrays()


# --- bad input ---------------------------------------------------------------------------------

@pytest.mark.parametrize("head", ["sigmoid", "", "Softmax", None])
def test_invalid_head(head):
    with pytest.raises(InputError):
        Prediction.from_samples(categorical_samples(), head)


@pytest.mark.parametrize("samples, head, kwargs", [
    (np.full((2, 3, 2), 1.5), "softmax", {}),              # not probabilities
    (np.full((2, 3, 2), np.nan), "logits", {}),
    (np.full((2, 3), 0.5), "softmax", {}),                  # missing class axis
    (np.full((2, 3, 2), 0.5), "softmax", {"passes": 3}),   # passes disagree with samples
    (np.full((2, 3, 2), 0.5), "softmax", {"labels": ["a"]}),
    (np.full((2, 3, 2), 0.5), "softmax", {"top_k": 0}),
    (np.zeros((0, 3, 2)), "softmax", {}),
    (np.ones(3), "regression", {}),
])
def test_bad_input(samples, head, kwargs):
    with pytest.raises(InputError):
        Prediction.from_samples(samples, head, **kwargs)


def test_decided_gives_each_heads_label_and_the_confidence_of_that_decision():
    # Two passes, two inputs: means [0.2, 0.8] and [0.6, 0.4] (softmax); 0.3 and 0.7 (binary).
    softmax = np.array([[[0.1, 0.9], [0.7, 0.3]], [[0.3, 0.7], [0.5, 0.5]]], np.float32)
    labels, confidence = Prediction.from_samples(softmax, "softmax", labels=["cat", "dog"]).decided()
    assert labels == ["dog", "cat"]
    np.testing.assert_allclose(confidence, [0.8, 0.6], rtol=1e-6)
    assert Prediction.from_samples(softmax, "softmax").decided()[0] == ["1", "0"]
    binary = np.array([[[0.2], [0.6]], [[0.4], [0.8]]], np.float32)
    labels, confidence = Prediction.from_samples(binary, "binary", labels=["no", "yes"]).decided()
    assert labels == ["no", "yes"]
    np.testing.assert_allclose(confidence, [0.7, 0.7], rtol=1e-6)  # 1 - 0.3 and 0.7
    multilabel = np.array([[[0.9, 0.2, 0.6]], [[0.7, 0.4, 0.6]]], np.float32)  # means 0.8, 0.3, 0.6
    labels, confidence = Prediction.from_samples(multilabel, "multilabel", labels=["a", "b", "c"]).decided()
    assert labels == ["a,c"]
    np.testing.assert_allclose(confidence, [0.6], rtol=1e-6)  # the weakest: c at 0.6
    labels, confidence = Prediction.from_samples(np.ones((2, 3, 1), np.float32), "regression").decided()
    assert labels == [None] * 3 and np.isnan(confidence).all()


# --- Monte Carlo standard errors ----------------------------------------------------------------

SE_NAMES = {  # the measures with a standard error, per head
    "softmax": {"std", "confidence", "margin", "predictive_entropy", "expected_entropy", "mutual_information",
                "variation_ratio", "top_k_probs"},
    "binary": {"probability", "variance", "std", "entropy", "expected_entropy", "mutual_information"},
    "multilabel": {"probability", "variance", "std", "entropy", "expected_entropy", "mutual_information"},
    "regression": {"mean", "std"},
}


@pytest.mark.parametrize("pred", all_heads(), ids=lambda p: p.head)
def test_every_estimated_measure_has_a_standard_error_beside_it(pred):
    errors = pred.measure_errors()
    assert set(errors) == SE_NAMES[pred.head]
    for name, value in errors.items():
        assert value.shape == np.shape(pred.measures[name]) and value.dtype == np.float32, name
        assert np.isfinite(value).all() and (value >= 0).all(), name
    assert pred.standard_errors["mean"].shape == pred.standard_errors["variance"].shape == pred.mean.shape
    one = pred.to_dict(1)
    np.testing.assert_array_equal(np.asarray(one["mean_se"], np.float32), pred.standard_errors["mean"][1])
    np.testing.assert_array_equal(np.asarray(one["variance_se"], np.float32), pred.standard_errors["variance"][1])
    for name, value in errors.items():
        np.testing.assert_array_equal(np.asarray(one["measures"][f"{name}_se"], np.float32), value[1])
    arrays = pred.arrays()
    assert arrays["mean_se"].shape == pred.mean.shape
    assert {f"{name}_se" for name in errors} <= set(arrays)
    assert pred.decided_standard_error().shape == (len(pred),)


def test_standard_errors_are_the_measures_module_estimators():
    s = categorical_samples()
    pred = Prediction.from_samples(s, "softmax")
    x = s.astype(np.float64)
    for name, function in (("confidence", M.confidence_standard_error),
                           ("mutual_information", M.mutual_information_standard_error),
                           ("variation_ratio", M.variation_ratio_standard_error)):
        np.testing.assert_allclose(pred.standard_errors[name], function(x), rtol=1e-6, err_msg=name)
    # Input 0 is the same in every pass: nothing to be unsure of; input 2 has one pass apart.
    assert pred.standard_errors["mutual_information"][0] == 0 == pred.standard_errors["confidence"][0]
    assert pred.standard_errors["mutual_information"][2] > 0
    # 3 of 4 passes vote for the modal class: binomial sqrt(0.75 * 0.25 / 3).
    assert pred.standard_errors["variation_ratio"][2] == pytest.approx(math.sqrt(0.75 * 0.25 / 3), rel=1e-6)
    np.testing.assert_array_equal(pred.decided_standard_error(), pred.standard_errors["confidence"])


def test_decided_standard_error_of_sigmoid_heads_and_regression():
    binary = Prediction.from_samples(binary_samples(), "binary")
    np.testing.assert_array_equal(binary.decided_standard_error(), binary.standard_errors["mean"][:, 0])
    samples = np.zeros((4, 2, 3), np.float32)
    samples[:, :, 0] = [[0.5], [0.9], [0.5], [0.9]]  # label 0: p 0.7, the weakest decision
    samples[:, :, 1] = 0.99
    samples[:, :, 2] = [[0.0], [0.02], [0.0], [0.02]]
    multilabel = Prediction.from_samples(samples, "multilabel")
    np.testing.assert_array_equal(multilabel.decided_standard_error(), multilabel.standard_errors["mean"][:, 0])
    assert np.isnan(Prediction.from_samples(np.ones((3, 2, 1)), "regression").decided_standard_error()).all()


def test_standard_errors_of_one_pass_and_of_no_dropout():
    s = categorical_samples()[:1]
    one = Prediction.from_samples(s, "softmax")  # one stochastic pass: the spread is unknown
    assert np.isnan(one.standard_errors["mutual_information"]).all()
    assert one.to_dict(0)["measures"]["mutual_information_se"] is None  # strict JSON: null
    deterministic = Prediction.from_samples(s, "softmax", stochastic=False)
    assert all((value == 0).all() for value in deterministic.standard_errors.values())


@pytest.mark.parametrize("head", ["softmax", "binary", "regression"])
def test_standard_errors_a_few_inputs_at_a_time_equal_all_at_once(head, monkeypatch):
    rng = np.random.default_rng(7)
    samples = rng.dirichlet(np.ones(4), size=(6, 10)) if head == "softmax" else \
        rng.uniform(size=(6, 10, 1)) if head == "binary" else rng.normal(size=(6, 10, 2))
    whole = dict(Prediction.from_samples(samples, head).standard_errors)
    monkeypatch.setattr(P, "ERROR_CHUNK_BYTES", 3 * 8 * 6 * samples[0, 0].size)  # 3 inputs at a time
    calls = []
    monkeypatch.setattr(P.M, "mean_standard_error", lambda x: calls.append(x.shape[1]) or M.standard_error_of_mean(x))
    pieces = dict(Prediction.from_samples(samples, head).standard_errors)
    assert max(calls) == 3 and 1 in calls and set(pieces) == set(whole)  # 3 + 3 + 3 + 1 inputs
    for name in whole:
        np.testing.assert_array_equal(pieces[name], whole[name], err_msg=name)


@pytest.mark.parametrize("keep_samples", [True, False])
def test_standard_errors_are_computed_on_first_read_where_the_samples_are_kept(keep_samples, monkeypatch):
    """Most callers read no standard error, and they cost about 3x the measures: with the samples
    kept, each is computed when first read, once, with the values computed at once would have;
    without, all at once, so that no reference to the samples outlives the call."""
    samples = np.random.default_rng(3).dirichlet(np.ones(4), size=(8, 5))
    eager = dict(Prediction.from_samples(samples, "softmax", keep_samples=False).standard_errors)
    calls, original = [], M.margin_standard_error
    monkeypatch.setattr(P.M, "margin_standard_error", lambda x: calls.append(1) or original(x))
    pred = Prediction.from_samples(samples, "softmax", keep_samples=keep_samples)
    assert len(calls) == (0 if keep_samples else 1)
    assert set(pred.standard_errors) == set(eager) and "margin" in pred.standard_errors
    for _ in range(2):
        np.testing.assert_array_equal(pred.standard_errors["margin"], eager["margin"])
    assert len(calls) == 1
    np.testing.assert_allclose(pred.to_dict()["measures"]["mutual_information_se"], eager["mutual_information"],
                               rtol=1e-6)  # to_dict writes float32 as its shortest text
    with pytest.raises(KeyError):
        pred.standard_errors["nonsense"]


def test_lazy_standard_errors_pickle_as_values_answer_in_without_computing_and_let_go_of_the_samples(monkeypatch):
    import pickle

    samples = np.random.default_rng(4).dirichlet(np.ones(3), size=(6, 4)).astype(np.float32)
    calls, original = [], M.margin_standard_error
    monkeypatch.setattr(P.M, "margin_standard_error", lambda x: calls.append(1) or original(x))
    pred = Prediction.from_samples(samples, "softmax")
    assert "margin" in pred.standard_errors and "nonsense" not in pred.standard_errors and not calls
    back = pickle.loads(pickle.dumps(pred))
    assert type(back.standard_errors) is dict and len(calls) == 1
    np.testing.assert_array_equal(back.standard_errors["margin"], pred.standard_errors["margin"])
    assert pred.standard_errors._compute is None  # every error read: the samples are no longer held
