"""calibrate.graph: temperature and decision rules written into the graph.

Every run here uses a plain onnxruntime.InferenceSession (no mcdrop runtime), to show that any
binding gets calibrated outputs from the file alone.
"""

import math
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from conftest import ROOT
from mcdrop.calibrate.graph import (CALIBRATION_PREFIX, TINY, UNCERTAIN_MEASURES, add_calibration,
                                      is_calibrated, strip_calibration)
from mcdrop.runtime.format.mask_sets import control_feeds
from toy_model import HEADS, build_toy_model

X = (np.random.default_rng(7).normal(size=(12, 4)) * 2).astype(np.float32)
DETERMINISTIC = {"passes": np.array(1, np.int64), "stochastic": np.array(False)}
STOCHASTIC = {"passes": np.array(16, np.int64), "stochastic": np.array(True)}
SIGMOID = ("binary", "multilabel")
LAST = -1


# Helpers ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def toys(tmp_path_factory):
    """head -> the toy file's serialized bytes (sealed, as the exporter writes it)."""
    folder = tmp_path_factory.mktemp("calibration_toys")
    built = {}
    for head in HEADS:
        with open(build_toy_model(folder / f"{head}.onnx", head), "rb") as f:
            built[head] = f.read()
    return built


def load(data):
    model = onnx.ModelProto()
    model.ParseFromString(data)
    return model


def calibrated(data, head, prefix="", classes=None, check=True, **options):
    model = load(data)
    added = add_calibration(model, prefix, "softmax" if head == "logits" else head,
                            HEADS.get(head, 3) if classes is None else classes, **options)
    if check:
        onnx.checker.check_model(model, full_check=True)
    return model, added


def run(model, feeds, x=X):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, {"input": x, **feeds})))


def softmax_tau(p, tau):
    z = np.log(np.maximum(p.astype(np.float64), np.float32(TINY))) / tau
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def sigmoid_tau(p, tau):
    q = np.clip(p.astype(np.float64), np.float32(TINY), 1.0)
    logit = np.log(q) - np.log(np.maximum(1 - q, np.float32(TINY)))
    return 1 / (1 + np.exp(-logit / tau))


def reference(p, head, tau):
    return sigmoid_tau(p, tau) if head in SIGMOID else softmax_tau(p, tau)


def xlogx(p):
    return p * np.log(np.maximum(p, 1e-30))


def entropies(samples, head):
    """(predictive, expected) from samples [T, B, units], as FORMAT.md defines them."""
    s = samples.astype(np.float64)
    if head in SIGMOID:
        h = lambda p: -(xlogx(p) + xlogx(1 - p))  # noqa: E731
    else:
        h = lambda p: -xlogx(p).sum(LAST)  # noqa: E731
    return h(s.mean(0)), h(s).mean(0)


# Temperature --------------------------------------------------------------------------------


@pytest.mark.parametrize("tau", [0.5, 2.5])
@pytest.mark.parametrize("head", ["softmax", "logits", "binary", "multilabel"])
def test_temperature_on_the_deterministic_pass(toys, head, tau):
    data = toys["softmax" if head == "logits" else head]
    before = run(load(data), DETERMINISTIC)
    model, added = calibrated(data, head, temperature=tau)
    assert added == []
    after = run(model, DETERMINISTIC)
    expected = reference(before["samples"], head, tau)
    np.testing.assert_allclose(after["samples"], expected, atol=1e-5)
    np.testing.assert_allclose(after["mean"], expected[0], atol=1e-5)
    assert not np.allclose(after["samples"], before["samples"], atol=1e-3)  # the temperature did something
    predictive, expected_entropy = entropies(after["samples"], head)
    np.testing.assert_allclose(after["predictive_entropy"], predictive, atol=1e-5)
    np.testing.assert_allclose(after["expected_entropy"], expected_entropy, atol=1e-5)


@pytest.mark.parametrize("head", ["softmax", "binary", "multilabel"])
def test_temperature_one_changes_nothing(toys, head):
    model, _ = calibrated(toys[head], head, temperature=1.0)
    before, after = run(load(toys[head]), DETERMINISTIC), run(model, DETERMINISTIC)
    assert before.keys() == after.keys()
    for name in before:
        np.testing.assert_allclose(after[name], before[name], atol=1e-6, err_msg=name)


@pytest.mark.parametrize("tau", [0.5, 2.5])
@pytest.mark.parametrize("head", ["softmax", "binary", "multilabel"])
def test_every_consumer_reads_the_calibrated_samples(toys, head, tau):
    model, _ = calibrated(toys[head], head, temperature=tau)
    out = run(model, STOCHASTIC)
    samples = out["samples"].astype(np.float64)
    assert samples.shape == (16, len(X), HEADS[head])
    np.testing.assert_allclose(out["mean"], samples.mean(0), atol=1e-6)
    np.testing.assert_allclose(out["variance"], samples.var(0), atol=1e-6)
    predictive, expected = entropies(samples, head)
    np.testing.assert_allclose(out["predictive_entropy"], predictive, atol=1e-5)
    np.testing.assert_allclose(out["expected_entropy"], expected, atol=1e-5)
    np.testing.assert_allclose(out["mutual_information"], predictive - expected, atol=1e-5)
    # Same seeds, first call of a fresh session: the same masks, so each pass is the uncalibrated
    # file's pass put through the temperature.
    uncalibrated = run(load(toys[head]), STOCHASTIC)["samples"]
    assert np.ptp(uncalibrated, axis=0).max() > 1e-3  # the passes differ
    np.testing.assert_allclose(out["samples"], reference(uncalibrated, head, tau), atol=1e-5)


@pytest.mark.parametrize("flush_denormals", [False, True])
@pytest.mark.parametrize("head", ["softmax", "binary", "multilabel"])
def test_saturated_probabilities_stay_finite(toys, head, flush_denormals):
    """Probabilities of exactly 0 and 1 (large inputs) give no NaN or inf, with TINY kept as a
    subnormal or flushed to zero."""
    x = (X * 1e4).astype(np.float32)
    before = run(load(toys[head]), DETERMINISTIC, x)["samples"]
    assert (before == 0).any() or (before == 1).any()
    model, _ = calibrated(toys[head], head, temperature=0.5)
    options = ort.SessionOptions()
    if flush_denormals:
        options.add_session_config_entry("session.set_denormal_as_zero", "1")
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    out = dict(zip([o.name for o in session.get_outputs()], session.run(None, {"input": x, **DETERMINISTIC})))
    for name, value in out.items():
        assert np.isfinite(value).all(), name
    np.testing.assert_allclose(out["samples"], reference(before, head, 0.5), atol=1e-5)


# Decision outputs ---------------------------------------------------------------------------


def score_of(out, measure):
    mean, variance = out["mean"], out["variance"]
    if measure == "one_minus_confidence":
        return 1 - mean.max(LAST)
    if measure == "top_class_variance":
        return np.take_along_axis(variance, mean.argmax(LAST)[..., None], LAST)[..., 0]
    return out[measure]


@pytest.mark.parametrize("measure", UNCERTAIN_MEASURES)
def test_uncertain_follows_the_measure(toys, measure):
    base, _ = calibrated(toys["softmax"], "softmax", temperature=1.7)
    threshold = float(np.median(score_of(run(base, STOCHASTIC), measure)))
    model, added = calibrated(toys["softmax"], "softmax", temperature=1.7, uncertain=(measure, threshold))
    assert added == ["uncertain"]
    out = run(model, STOCHASTIC)  # same seeds: the run the threshold came from
    assert out["uncertain"].dtype == np.bool_ and out["uncertain"].shape == (len(X),)
    np.testing.assert_array_equal(out["uncertain"], score_of(out, measure) > np.float32(threshold))
    assert out["uncertain"].any() and not out["uncertain"].all()
    assert run(model, DETERMINISTIC)["uncertain"].shape == (len(X),)


@pytest.mark.parametrize("q", [0.0, 0.3, 0.75, math.inf])
def test_prediction_set_is_the_lac_rule(toys, q):
    model, added = calibrated(toys["softmax"], "softmax", conformal_quantile=q)
    assert added == ["prediction_set"]
    out = run(model, STOCHASTIC)
    sets = out["prediction_set"]
    assert sets.dtype == np.bool_ and sets.shape == (len(X), 3)
    np.testing.assert_array_equal(sets, out["mean"] >= np.float32(1) - np.float32(q))
    if q == math.inf:
        assert sets.all()
    if q == 0.75:
        assert sets.any() and not sets.all()


@pytest.mark.parametrize("head", SIGMOID)
def test_decision_and_sigmoid_rule(toys, head):
    units = HEADS[head]
    base = run(load(toys[head]), STOCHASTIC)
    thresholds = [float(t) for t in np.median(base["mean"], axis=0)]
    mi_threshold = float(np.quantile(base["mutual_information"], 0.8))
    distance = 0.05
    model, added = calibrated(toys[head], head, temperature=1.3, thresholds=thresholds,
                              sigmoid_rule=(mi_threshold, distance))
    assert added == ["decision", "uncertain"]
    out = run(model, STOCHASTIC)
    limits = np.array(thresholds, np.float32)
    assert out["decision"].dtype == np.bool_ and out["decision"].shape == (len(X), units)
    np.testing.assert_array_equal(out["decision"], out["mean"] >= limits)
    assert out["decision"].any() and not out["decision"].all()
    rule = (out["mutual_information"] > np.float32(mi_threshold)) | (
        np.abs(out["mean"] - limits) < np.float32(distance))
    assert out["uncertain"].dtype == np.bool_ and out["uncertain"].shape == (len(X),)
    np.testing.assert_array_equal(out["uncertain"], rule.any(LAST))
    assert out["uncertain"].any() and not out["uncertain"].all()
    # thresholds alone: a decision, no uncertain output
    model, added = calibrated(toys[head], head, thresholds=thresholds)
    assert added == ["decision"]


# The graph ----------------------------------------------------------------------------------

OPTIONS = {
    "softmax": dict(temperature=0.8, uncertain=("top_class_variance", 0.01), conformal_quantile=0.4),
    "binary": dict(temperature=0.8, thresholds=[0.4], sigmoid_rule=(0.1, 0.05)),
    "multilabel": dict(temperature=0.8, thresholds=[0.4, 0.5, 0.6], sigmoid_rule=(0.1, 0.05)),
}


@pytest.mark.parametrize("head", list(OPTIONS))
def test_what_the_graph_gets(toys, head):
    original = load(toys[head])
    model, added = calibrated(toys[head], head, **OPTIONS[head])
    graph = model.graph
    assert is_calibrated(model) and not is_calibrated(original)
    assert [o.name for o in graph.output] == [o.name for o in original.graph.output] + added
    assert list(model.opset_import) == list(original.opset_import)
    assert model.metadata_props == original.metadata_props
    old_nodes = {n.name for n in original.graph.node}
    new_nodes = [n for n in graph.node if n.name not in old_nodes]
    assert new_nodes and all(n.name.startswith(CALIBRATION_PREFIX) for n in new_nodes)
    named = [n.name for n in graph.node if n.name]  # the toy's own nodes are mostly unnamed
    assert len(set(named)) == len(named)
    assert not any("Random" in n.op_type or any(a.name == "seed" for a in n.attribute) for n in new_nodes)
    old_inits = {t.name for t in original.graph.initializer}
    new_inits = {t.name for t in graph.initializer} - old_inits
    assert all(name.startswith(CALIBRATION_PREFIX) for name in new_inits)
    params = {t.name: onnx.numpy_helper.to_array(t) for t in graph.initializer}
    assert params["mcdrop_calibration/temperature"] == np.float32(0.8)
    assert params["mcdrop_calibration/temperature"].dtype == np.float32
    producer = [n for n in graph.node if "mcdrop_calibration/uncalibrated_samples" in n.output]
    assert len(producer) == 1 and not producer[0].name.startswith(CALIBRATION_PREFIX)
    shapes = {o.name: o.type.tensor_type for o in graph.output}
    units = HEADS[head]
    if head == "softmax":
        assert params["mcdrop_calibration/uncertain_threshold"] == np.float32(0.01)
        assert params["mcdrop_calibration/conformal_quantile"] == np.float32(0.4)
        expected = {"uncertain": ["batch"], "prediction_set": ["batch", 3]}
    else:
        np.testing.assert_array_equal(params["mcdrop_calibration/thresholds"], np.float32(OPTIONS[head]["thresholds"]))
        assert params["mcdrop_calibration/thresholds"].shape == (units,)
        assert params["mcdrop_calibration/uncertain_threshold"] == np.float32(0.1)
        assert params["mcdrop_calibration/uncertain_distance"] == np.float32(0.05)
        expected = {"decision": ["batch", units], "uncertain": ["batch"]}
    for name, dims in expected.items():
        assert shapes[name].elem_type == TensorProto.BOOL
        assert [d.dim_param or d.dim_value for d in shapes[name].shape.dim] == dims


@pytest.mark.parametrize("head", list(OPTIONS))
def test_strip_gives_back_the_original(toys, head):
    model, _ = calibrated(toys[head], head, **OPTIONS[head])
    strip_calibration(model)
    assert not is_calibrated(model)
    assert model.SerializeToString() == load(toys[head]).SerializeToString()
    before, after = run(load(toys[head]), DETERMINISTIC), run(model, DETERMINISTIC)
    for name in before:
        np.testing.assert_array_equal(after[name], before[name])
    strip_calibration(model)  # nothing left to strip: no change
    assert model.SerializeToString() == load(toys[head]).SerializeToString()


def test_calibrating_twice_is_refused(toys):
    for first in (dict(temperature=2.0), dict(uncertain=("mutual_information", 0.1)), dict(conformal_quantile=0.3)):
        model, _ = calibrated(toys["softmax"], "softmax", **first)
        once = model.SerializeToString()
        with pytest.raises(ValueError, match="already has calibration"):
            add_calibration(model, "", "softmax", 3, temperature=0.5)
        assert model.SerializeToString() == once
        strip_calibration(model)
        add_calibration(model, "", "softmax", 3, temperature=0.5)  # after a strip: fine
        onnx.checker.check_model(model, full_check=True)
        calibrations = [t for t in model.graph.initializer if t.name.endswith("temperature")]
        assert len(calibrations) == 1


@pytest.mark.parametrize("head, options, message", [
    ("regression", dict(temperature=2.0), "does not apply"),
    ("regression", dict(conformal_quantile=0.2), "does not apply"),
    ("softmax", dict(uncertain=("variance", 0.1)), "unknown uncertainty measure"),
    ("softmax", dict(uncertain=("mutual_information",)), r"\(measure, threshold\)"),
    ("softmax", dict(thresholds=[0.5, 0.5, 0.5]), "does not apply"),
    ("binary", dict(uncertain=("mutual_information", 0.1)), "does not apply"),
    ("binary", dict(conformal_quantile=0.1), "does not apply"),
    ("multilabel", dict(thresholds=[0.5, 0.5]), "one per unit"),
    ("multilabel", dict(sigmoid_rule=(0.1, 0.05)), "needs thresholds"),
    ("softmax", dict(temperature=0.0), "> 0"),
    ("softmax", dict(temperature=-1.0), "> 0"),
    ("softmax", dict(temperature=math.inf), "> 0"),
    ("softmax", dict(temperature=math.nan), "NaN"),
    ("softmax", dict(conformal_quantile=math.nan), "NaN"),
    ("softmax", dict(temperature="hot"), "a number"),
])
def test_refusals(toys, head, options, message):
    model = load(toys[head])
    with pytest.raises(ValueError, match=message):
        add_calibration(model, "", head, HEADS[head], **options)
    assert model.SerializeToString() == load(toys[head]).SerializeToString()  # left unchanged


def test_wrong_prefix_head_or_classes_is_refused(toys):
    model = load(toys["softmax"])
    with pytest.raises(ValueError, match="no output 'digit/samples'"):
        add_calibration(model, "digit/", "softmax", 3, temperature=2.0)
    with pytest.raises(ValueError, match="end with '/'"):
        add_calibration(model, "digit", "softmax", 3, temperature=2.0)
    with pytest.raises(ValueError, match="unknown head"):
        add_calibration(model, "", "poisson", 3, temperature=2.0)
    with pytest.raises(ValueError, match="not 4"):
        add_calibration(model, "", "softmax", 4, conformal_quantile=0.2)
    assert not is_calibrated(model)
    assert add_calibration(load(toys["regression"]), "", "regression", 2) == []


def test_import_loads_no_tensorflow():
    code = ("import sys, mcdrop.calibrate.graph; "
            "assert not [m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras', 'tf2onnx')]")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)


# Several outputs ----------------------------------------------------------------------------


def merged(toys, parts):
    """One file with several outputs: each toy's tensors renamed `<prefix><name>`, sharing input,
    passes and stochastic (FORMAT.md: Outputs)."""
    shared = {"input", "passes", "stochastic"}
    nodes, initializers, outputs = [], [], []
    for prefix, head in parts:
        graph = load(toys[head]).graph

        def rename(name):
            return name if name in shared or not name else prefix + name

        for node in graph.node:
            node.input[:] = [rename(n) for n in node.input]
            node.output[:] = [rename(n) for n in node.output]
            node.name = rename(node.name)
            nodes.append(node)
        for tensor in graph.initializer:
            if tensor.name not in shared or not any(t.name == tensor.name for t in initializers):
                tensor.name = rename(tensor.name)
                initializers.append(tensor)
        for output in graph.output:
            output.name = rename(output.name)
            outputs.append(output)
    graph = helper.make_graph(nodes, "several", list(load(toys[parts[0][1]]).graph.input), outputs, initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model, full_check=True)
    return model


def test_several_outputs(toys):
    parts = [("digit/", "softmax"), ("tags/", "multilabel"), ("size/", "regression")]
    original = merged(toys, parts)
    before = run(original, STOCHASTIC)
    model = load(original.SerializeToString())
    added = add_calibration(model, "digit/", "softmax", 3, temperature=0.6,
                            uncertain=("one_minus_confidence", 0.3), conformal_quantile=0.5)
    added += add_calibration(model, "tags/", "multilabel", 3, temperature=2.0,
                             thresholds=[0.5, 0.5, 0.5], sigmoid_rule=(0.05, 0.1))
    assert added == ["digit/uncertain", "digit/prediction_set", "tags/decision", "tags/uncertain"]
    with pytest.raises(ValueError, match="already has calibration"):
        add_calibration(model, "tags/", "multilabel", 3, temperature=2.0)
    with pytest.raises(ValueError, match="does not apply"):
        add_calibration(model, "size/", "regression", 2, temperature=2.0)
    onnx.checker.check_model(model, full_check=True)
    assert {t.name for t in model.graph.initializer} >= {"mcdrop_calibration/digit/temperature",
                                                        "mcdrop_calibration/tags/temperature"}
    out = run(model, STOCHASTIC)
    np.testing.assert_allclose(out["digit/samples"], softmax_tau(before["digit/samples"], 0.6), atol=1e-5)
    np.testing.assert_allclose(out["tags/samples"], sigmoid_tau(before["tags/samples"], 2.0), atol=1e-5)
    np.testing.assert_array_equal(out["size/samples"], before["size/samples"])
    np.testing.assert_allclose(out["digit/mean"], out["digit/samples"].mean(0), atol=1e-6)
    np.testing.assert_array_equal(out["digit/uncertain"], 1 - out["digit/mean"].max(LAST) > np.float32(0.3))
    np.testing.assert_array_equal(out["digit/prediction_set"], out["digit/mean"] >= np.float32(0.5))
    np.testing.assert_array_equal(out["tags/decision"], out["tags/mean"] >= np.float32(0.5))
    rule = (out["tags/mutual_information"] > np.float32(0.05)) | (
        np.abs(out["tags/mean"] - np.float32(0.5)) < np.float32(0.1))
    np.testing.assert_array_equal(out["tags/uncertain"], rule.any(LAST))
    strip_calibration(model)
    assert model.SerializeToString() == original.SerializeToString()


# A file the exporter wrote (tf2onnx graph) ---------------------------------------------------


def test_shipped_model():
    path = ROOT / "models" / "mlp.onnx"
    if not path.exists():
        pytest.skip("models/mlp.onnx is not here")
    original = onnx.load(str(path))
    model = load(original.SerializeToString())
    add_calibration(model, "", "softmax", 10, temperature=1.8, uncertain=("top_class_variance", 1e-3),
                    conformal_quantile=0.9)
    onnx.checker.check_model(model, full_check=True)
    x = np.random.default_rng(3).uniform(0, 1, (4, 784)).astype(np.float32)
    feeds = control_feeds(1, False)  # the shipped file has the `masks` input too (format 3)
    before, after = run(original, feeds, x), run(model, feeds, x)
    np.testing.assert_allclose(after["samples"], softmax_tau(before["samples"], 1.8), atol=1e-5)
    np.testing.assert_allclose(after["mean"], after["samples"][0], atol=1e-6)
    np.testing.assert_array_equal(after["prediction_set"], after["mean"] >= np.float32(1) - np.float32(0.9))
    np.testing.assert_array_equal(after["uncertain"], score_of(after, "top_class_variance") > np.float32(1e-3))
    strip_calibration(model)
    assert model.SerializeToString() == original.SerializeToString()
