"""Calibration written into an mcdrop graph (docs/FORMAT.md), so every onnxruntime binding gets it.

`cli.py calibrate` fits a temperature and a decision rule on labelled data; this module is the
graph surgery that puts them into the file:

* Temperature, per pass, before the averaging: the node that produced `<prefix>samples` now
  produces `mcdrop_calibration/<prefix>uncalibrated_samples`, and new nodes compute
  `<prefix>samples` from it. Every consumer (mean, variance, entropies) reads the tensor by name,
  so all of them see calibrated samples with no other change.
  softmax / logits heads: `Softmax(Log(Max(p, TINY)) / tau, axis=-1)`;
  binary / multilabel heads: `Sigmoid((Log(q) - Log(Max(1 - q, TINY))) / tau)`, q = Clip(p, TINY, 1).
* Decision outputs, appended after the existing graph outputs (bool):
  categorical heads: `<prefix>uncertain` (score > threshold) and `<prefix>prediction_set`
  (mean >= 1 - q, the LAC rule); binary / multilabel heads: `<prefix>decision`
  (mean >= thresholds) and `<prefix>uncertain` (any unit with mutual information above a
  threshold or a mean within a distance of its threshold).

Every node, initializer and intermediate tensor added is named `mcdrop_calibration/<prefix>...`;
the parameters are float32 initializers `mcdrop_calibration/<prefix>temperature`,
`.../uncertain_threshold`, `.../uncertain_distance`, `.../conformal_quantile` and
`.../thresholds`. `strip_calibration` removes all of it and gives back the original graph.

Imports onnx and numpy only (no TensorFlow): the calibrate command runs without the export extra.
Metadata and the integrity checksum are left alone: the caller writes them.
"""

from __future__ import annotations

import math
from typing import List, Optional, Sequence, Tuple

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .fitting import TINY  # one value for numpy and the graph
from ..runtime.checks import positive_int
from ..runtime.uncertain_rule import CATEGORICAL_HEADS, SIGMOID_HEADS

__all__ = ["add_calibration", "strip_calibration", "is_calibrated", "CALIBRATION_PREFIX", "UNCERTAIN_MEASURES",
           "SINGLE_PASS_SCORES", "TINY"]

CALIBRATION_PREFIX = "mcdrop_calibration/"
HEADS = CATEGORICAL_HEADS + SIGMOID_HEADS + ("regression",)
ENTROPY_MEASURES = ("mutual_information", "predictive_entropy", "expected_entropy")
UNCERTAIN_MEASURES = ENTROPY_MEASURES + ("one_minus_confidence", "top_class_variance")
# Graph outputs calibrate/feature_density.py adds; a rule may threshold them where the graph has them
# (max_logit is higher = more certain: its rule is "max_logit < threshold").
SINGLE_PASS_SCORES = ("feature_distance", "energy", "max_logit")


def is_calibrated(model: onnx.ModelProto) -> bool:
    """Whether any node added by add_calibration is in the graph."""
    return any(node.name.startswith(CALIBRATION_PREFIX) for node in model.graph.node)


def _checked_options(prefix, head, classes, temperature, deterministic_temperature, uncertain, conformal_quantile,
                     thresholds, sigmoid_rule, conformal=None):
    """add_calibration's options checked against the head and normalised to plain numbers:
    (classes, temperature, uncertain, conformal_quantile, thresholds, sigmoid_rule)."""
    if not isinstance(prefix, str) or (prefix and not prefix.endswith("/")):
        raise ValueError(f"prefix must be '' or end with '/', not {prefix!r}")
    if head not in HEADS:
        raise ValueError(f"unknown head {head!r} (one of {', '.join(HEADS)})")
    classes = positive_int("classes", classes, ValueError)
    categorical, sigmoid = head in CATEGORICAL_HEADS, head in SIGMOID_HEADS
    options = {"temperature": temperature, "uncertain": uncertain, "conformal_quantile": conformal_quantile,
               "thresholds": thresholds, "sigmoid_rule": sigmoid_rule}
    allowed = ({"temperature", "uncertain", "conformal_quantile"} if categorical else set()) | (
        {"temperature", "thresholds", "sigmoid_rule"} if sigmoid else set())
    refused = [name for name, value in options.items() if value is not None and name not in allowed]
    if refused:
        raise ValueError(f"{', '.join(refused)} does not apply to a {head} head")
    if conformal is not None:
        _check_conformal(conformal, head, classes, conformal_quantile)
    if sigmoid_rule is not None and thresholds is None:
        raise ValueError("sigmoid_rule needs thresholds")

    if deterministic_temperature is not None and temperature is None:
        raise ValueError("deterministic_temperature needs temperature")
    for what, value in (("temperature", temperature), ("deterministic_temperature", deterministic_temperature)):
        if value is not None and (not math.isfinite(_number(what, value)) or _number(what, value) <= 0):
            raise ValueError(f"{what} must be finite and > 0, not {value!r}")
    if temperature is not None:
        temperature = _number("temperature", temperature)
    if uncertain is not None:
        if not isinstance(uncertain, (tuple, list)) or len(uncertain) != 2:
            raise ValueError("uncertain must be (measure, threshold)")
        uncertain = (uncertain[0], _number("uncertain threshold", uncertain[1]))
        if uncertain[0] not in UNCERTAIN_MEASURES + SINGLE_PASS_SCORES:
            raise ValueError(f"unknown uncertainty measure {uncertain[0]!r} "
                             f"(one of {', '.join(UNCERTAIN_MEASURES + SINGLE_PASS_SCORES)})")
    if conformal_quantile is not None:
        conformal_quantile = _number("conformal_quantile", conformal_quantile)
    if thresholds is not None:
        thresholds = [_number("threshold", t) for t in thresholds]
        if len(thresholds) != classes:
            raise ValueError(f"{len(thresholds)} thresholds for {classes} units: give one per unit")
    if sigmoid_rule is not None:
        if not isinstance(sigmoid_rule, (tuple, list)) or len(sigmoid_rule) != 2:
            raise ValueError("sigmoid_rule must be (mi_threshold, distance)")
        sigmoid_rule = (_number("sigmoid_rule threshold", sigmoid_rule[0]),
                        _number("sigmoid_rule distance", sigmoid_rule[1]))
    return classes, temperature, uncertain, conformal_quantile, thresholds, sigmoid_rule


def _check_conformal(conformal, head, classes, conformal_quantile) -> None:
    """A conformal entry (runtime/conformal_sets.py) whose method fits the head, with numbers."""
    from ..runtime.conformal_sets import methods_for

    method = conformal.get("method") if isinstance(conformal, dict) else None
    fits = methods_for(head)
    if method not in fits:
        raise ValueError(f"conformal method {method!r} does not apply to a {head} head (one of {', '.join(fits)})")
    if conformal_quantile is not None:
        raise ValueError("give conformal_quantile or conformal, not both")
    for key in VECTORS.get(method, ()):
        if len(conformal[key]) != classes or not all(math.isfinite(_number(key, q)) for q in conformal[key]):
            raise ValueError(f"conformal {key} needs {classes} finite numbers")


def _temperature_nodes(b, graph, samples, uncalibrated, temperature, deterministic_temperature, categorical):
    """(the node producing `samples`, the nodes that scale them by the temperature): the producer's
    output is to become `uncalibrated`, and the last new node gives `samples` back."""
    producers = [n for n in graph.node if samples in n.output]
    if len(producers) != 1:
        raise ValueError(f"{samples!r} is not produced by one node of the graph")
    b.claim(uncalibrated)
    b.taken.discard(samples)  # the producer gives it up to the temperature's last node
    tau = b.constant("temperature", temperature)
    if deterministic_temperature is not None:
        tau = b.node("Where", ["stochastic", tau, b.constant("deterministic_temperature",
                                                             _number("t", deterministic_temperature))], "pass_temperature")
    if categorical:
        safe = b.node("Max", [uncalibrated, b.constant("tiny", TINY)], "safe")
        log = b.node("Log", [safe], "log")
        scaled = b.node("Div", [log, tau], "scaled_log")
        b.node("Softmax", [scaled], "softmax", output=samples, axis=-1)
    else:
        tiny = b.constant("tiny", TINY)
        one = b.constant("one", 1.0)
        q = b.node("Clip", [uncalibrated, tiny, b.constant("one_minus_tiny", np.float32(1) - np.float32(TINY))],
                   "clipped")
        log_q = b.node("Log", [q], "log_q")
        rest = b.node("Sub", [one, q], "one_minus_q")
        log_rest = b.node("Log", [b.node("Max", [rest, tiny], "safe_one_minus_q")], "log_one_minus_q")
        logit = b.node("Sub", [log_q, log_rest], "logit")
        b.node("Sigmoid", [b.node("Div", [logit, tau], "scaled_logit")], "sigmoid", output=samples)
    return producers[0], b.take_nodes()


def _decision_outputs(b, prefix, outputs, mean_dims, classes, uncertain, conformal_quantile, thresholds,
                      sigmoid_rule, conformal=None) -> List[onnx.ValueInfoProto]:
    """The nodes of the decision outputs (uncertain, prediction_set, decision) added to `b`, and the
    graph outputs they give."""
    mean = prefix + "mean"
    added_outputs: List[onnx.ValueInfoProto] = []
    if uncertain is not None:
        measure, threshold = uncertain
        if measure in ENTROPY_MEASURES + SINGLE_PASS_SCORES:
            score = prefix + measure
            if score not in outputs:
                raise ValueError(f"the graph has no output {score!r} for the measure {measure!r}")
        elif measure == "one_minus_confidence":
            top = b.reduce("ReduceMax", mean, "confidence")
            score = b.node("Sub", [b.constant("one", 1.0), top], "one_minus_confidence")
        else:  # top_class_variance
            variance = prefix + "variance"
            if variance not in outputs:
                raise ValueError(f"the graph has no output {variance!r}")
            top = b.node("ArgMax", [mean], "top_class", axis=-1, keepdims=1)
            picked = b.node("GatherElements", [variance, top], "top_class_variance_kept", axis=-1)
            score = b.node("Squeeze", [picked, b.constant("last_axis", [-1], np.int64)], "top_class_variance")
        b.node("Less" if measure == "max_logit" else "Greater", [score, b.constant("uncertain_threshold", threshold)],
               "uncertain", output=prefix + "uncertain")
        added_outputs.append(_bool_output(prefix + "uncertain", None if mean_dims is None else mean_dims[:-1]))
    if conformal_quantile is not None:
        cut = b.node("Sub", [b.constant("one", 1.0), b.constant("conformal_quantile", conformal_quantile)],
                     "one_minus_quantile")
        b.node("GreaterOrEqual", [mean, cut], "prediction_set", output=prefix + "prediction_set")
        added_outputs.append(_bool_output(prefix + "prediction_set", mean_dims, classes))
    if conformal is not None:
        added_outputs += _conformal_outputs(b, prefix, outputs, mean_dims, classes, conformal)
    if thresholds is not None:
        limits = b.constant("thresholds", thresholds)
        b.node("GreaterOrEqual", [mean, limits], "decision", output=prefix + "decision")
        added_outputs.append(_bool_output(prefix + "decision", mean_dims, classes))
        if sigmoid_rule is not None:
            information = prefix + "mutual_information"
            if information not in outputs:
                raise ValueError(f"the graph has no output {information!r}")
            mi_threshold, distance = sigmoid_rule
            high = b.node("Greater", [information, b.constant("uncertain_threshold", mi_threshold)], "high_information")
            gap = b.node("Abs", [b.node("Sub", [mean, limits], "threshold_offset")], "threshold_distance")
            close = b.node("Less", [gap, b.constant("uncertain_distance", distance)], "near_threshold")
            either = b.node("Cast", [b.node("Or", [high, close], "uncertain_unit")], "uncertain_unit_float",
                            to=TensorProto.FLOAT)
            b.node("Cast", [b.reduce("ReduceMax", either, "uncertain_any")], "uncertain", output=prefix + "uncertain",
                   to=TensorProto.BOOL)
            added_outputs.append(_bool_output(prefix + "uncertain", None if mean_dims is None else mean_dims[:-1]))
    return added_outputs


def add_calibration(model: onnx.ModelProto, prefix: str, head: str, classes: int, *,
                    temperature: Optional[float] = None,
                    deterministic_temperature: Optional[float] = None,
                    uncertain: Optional[Tuple[str, float]] = None,
                    conformal_quantile: Optional[float] = None,
                    thresholds: Optional[Sequence[float]] = None,
                    sigmoid_rule: Optional[Tuple[float, float]] = None,
                    conformal: Optional[dict] = None) -> List[str]:
    """Write calibration for the output `prefix` ("" or "<name>/") into `model`, in place.

    `conformal`: a conformal entry of any method (runtime/conformal_sets.py; LAC also as
    conformal_quantile), whose sets or intervals the graph then outputs.
    `deterministic_temperature` is the deterministic pass's own (stochastic = false): the plain
    network and the MC mean are calibrated apart (default: the same temperature).
    Returns the names of the graph outputs added (in the order appended). Raises ValueError for an
    option the head does not take, a bad value, or an output that already has calibration (strip
    it first: temperatures never stack). The model is left unchanged when it raises.
    """
    graph = model.graph
    classes, temperature, uncertain, conformal_quantile, thresholds, sigmoid_rule = _checked_options(
        prefix, head, classes, temperature, deterministic_temperature, uncertain, conformal_quantile, thresholds,
        sigmoid_rule, conformal)
    categorical = head in CATEGORICAL_HEADS
    if _has_calibration(graph, prefix):
        raise ValueError(f"output {prefix or '(single)'!r} already has calibration: strip it first "
                         "(temperatures must not stack)")
    outputs = {o.name: o for o in graph.output}
    samples, mean = prefix + "samples", prefix + "mean"
    for name in (samples, mean):
        if name not in outputs:
            raise ValueError(f"the graph has no output {name!r}")
    mean_dims = _dims(outputs[mean])
    if mean_dims is not None and mean_dims and mean_dims[-1].HasField("dim_value") \
            and mean_dims[-1].dim_value != classes:
        raise ValueError(f"{mean!r} has {mean_dims[-1].dim_value} units on its last axis, not {classes}")
    opset = _opset(model)
    if opset < 13:
        raise ValueError(f"opset {opset} is too old (13 or later)")

    b = _Builder(graph, CALIBRATION_PREFIX + prefix, opset)

    # Temperature: new nodes right after the producer of samples, before every consumer.
    uncalibrated = CALIBRATION_PREFIX + prefix + "uncalibrated_samples"
    producer, temperature_nodes = None, []
    if temperature is not None:
        producer, temperature_nodes = _temperature_nodes(b, graph, samples, uncalibrated, temperature,
                                                         deterministic_temperature, categorical)

    # Decision outputs: appended at the end, after mean, variance and the entropies.
    added_outputs = _decision_outputs(b, prefix, outputs, mean_dims, classes, uncertain, conformal_quantile,
                                      thresholds, sigmoid_rule, conformal)
    decision_nodes = b.take_nodes()

    # Every check passed: change the graph.
    if temperature_nodes:
        producer.output[list(producer.output).index(samples)] = uncalibrated
        at = list(graph.node).index(producer) + 1
        for offset, node in enumerate(temperature_nodes):
            graph.node.insert(at + offset, node)
    graph.node.extend(decision_nodes)
    graph.initializer.extend(b.initializers)
    graph.output.extend(added_outputs)
    return [o.name for o in added_outputs]


def strip_calibration(model: onnx.ModelProto) -> None:
    """Remove everything add_calibration added, for every prefix, in place."""
    graph = model.graph
    removed = [n for n in graph.node if n.name.startswith(CALIBRATION_PREFIX)]
    made = {name for node in removed for name in node.output}
    kept = [n for n in graph.node if not n.name.startswith(CALIBRATION_PREFIX)]
    restored = set()
    for node in kept:
        for i, name in enumerate(node.output):
            if name.startswith(CALIBRATION_PREFIX) and name.endswith("uncalibrated_samples"):
                original = name[len(CALIBRATION_PREFIX):-len("uncalibrated_samples")] + "samples"
                node.output[i] = original
                restored.add(original)
    gone = made - restored
    initializers = [t for t in graph.initializer if not t.name.startswith(CALIBRATION_PREFIX)]
    for field, keep in ((graph.node, kept),
                        (graph.initializer, initializers),
                        (graph.output, [o for o in graph.output if o.name not in gone]),
                        (graph.value_info, [v for v in graph.value_info
                                            if not v.name.startswith(CALIBRATION_PREFIX) and v.name not in gone])):
        if len(keep) != len(field):
            del field[:]
            field.extend(keep)


# Conformal sets and intervals (runtime/conformal_sets.py computes the same in numpy) -------------

# The per-class / per-label / per-unit numbers of each method's entry.
VECTORS = {"mondrian": ("class_quantiles",), "per_label": ("label_quantiles",), "risk": ("label_quantiles",),
           "normalized": ("unit_quantiles",)}


def _conformal_outputs(b, prefix, outputs, mean_dims, classes, conformal) -> List[onnx.ValueInfoProto]:
    """prediction_set (classifier heads) or interval_low / interval_high (regression) of `conformal`."""
    from ..runtime.conformal_sets import STD_FLOOR

    mean, method = prefix + "mean", conformal["method"]
    if method == "normalized":
        variance = prefix + "variance"
        if variance not in outputs:
            raise ValueError(f"the graph has no output {variance!r}")
        trailing = [d.dim_value for d in (mean_dims or [])[1:]]
        shape = trailing if trailing and all(trailing) else [classes]
        q = b.constant("conformal_quantiles", np.reshape(conformal["unit_quantiles"], shape))
        root = b.node("Sqrt", [b.node("Max", [variance, b.constant("zero", 0.0)], "nonnegative_variance")], "std")
        half = b.node("Mul", [q, b.node("Max", [root, b.constant("std_floor", STD_FLOOR)], "floored_std")],
                      "half_width")
        b.node("Sub", [mean, half], "interval_low", output=prefix + "interval_low")
        b.node("Add", [mean, half], "interval_high", output=prefix + "interval_high")
        return [_float_output(prefix + name, mean_dims) for name in ("interval_low", "interval_high")]
    if method in ("aps", "raps"):
        chosen = _cumulative_set(b, mean, classes, conformal)
    else:
        key = "quantile" if method == "lac" else VECTORS[method][0]
        cut = b.node("Sub", [b.constant("one", 1.0), b.constant("conformal_quantiles", conformal[key])],
                     "one_minus_quantile")
        chosen = b.node("GreaterOrEqual", [mean, cut], "prediction_set_kept")
    b.node("Identity", [chosen], "prediction_set", output=prefix + "prediction_set")
    return [_bool_output(prefix + "prediction_set", mean_dims, classes)]


def _cumulative_set(b, mean, classes, conformal) -> str:
    """APS / RAPS: sort the mean descending (TopK: ties keep the lower index first, like a stable
    argsort), the tail mass below each rank minus its penalty, kept when >= 1 - score_quantile,
    scattered back to class order."""
    from ..runtime.conformal_sets import score_bound

    sorted_mean, order = b.claim(b.base + "sorted_mean"), b.claim(b.base + "sorted_classes")
    b.nodes.append(helper.make_node("TopK", [mean, b.constant("classes", [classes], np.int64)], [sorted_mean, order],
                                    name=b.claim(b.base + "sort"), axis=-1, largest=1, sorted=1))
    # The mass ranked below each class, summed from the bottom (runtime/conformal_sets.tail_margins).
    margin = b.node("CumSum", [sorted_mean, b.constant("axis", -1, np.int64)], "tail_mass", exclusive=1, reverse=1)
    penalty = float(conformal.get("penalty", 0.0))
    if penalty:
        ranks = np.maximum(np.arange(1, classes + 1) - int(conformal["k_reg"]), 0).astype(np.float32)
        margin = b.node("Sub", [margin, b.constant("rank_penalty", np.float32(penalty) * ranks)], "raps_margin")
    kept_sorted = b.node("GreaterOrEqual", [margin, b.constant("score_bound", score_bound(conformal["score_quantile"]))],
                         "kept_sorted")
    kept = b.node("Cast", [kept_sorted], "kept_sorted_float", to=TensorProto.FLOAT)
    zeros = b.node("ConstantOfShape", [b.node("Shape", [mean], "mean_shape")], "zeros",
                   value=helper.make_tensor("value", TensorProto.FLOAT, [1], [0.0]))
    scattered = b.node("ScatterElements", [zeros, order, kept], "kept_by_class", axis=-1)
    return b.node("Cast", [scattered], "kept_bool", to=TensorProto.BOOL)


def _float_output(name, dims):
    info = helper.make_tensor_value_info(name, TensorProto.FLOAT, None)
    if dims is not None:
        info.type.tensor_type.shape.SetInParent()
        for dim in dims:
            info.type.tensor_type.shape.dim.add().CopyFrom(dim)
    return info


# Helpers -------------------------------------------------------------------------------------


class _Builder:
    """Nodes and float32 / int64 initializers named `<base><part>`, unique in the graph."""

    def __init__(self, graph, base, opset):
        self.base, self.opset = base, opset
        self.taken = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {
            o.name for o in graph.output}
        for node in graph.node:
            self.taken.update(node.output)
            self.taken.add(node.name)
        self.nodes, self.initializers, self.constants = [], [], {}

    def claim(self, name):
        if name in self.taken:
            raise ValueError(f"the graph already has a tensor or node named {name!r}")
        self.taken.add(name)
        return name

    def constant(self, part, value, dtype=np.float32):
        name = self.base + part
        array = np.asarray(value, dtype=dtype)
        if name in self.constants:
            if not np.array_equal(self.constants[name], array):
                raise ValueError(f"two values for {name!r}")
            return name
        self.constants[name] = array
        self.initializers.append(numpy_helper.from_array(array, self.claim(name)))
        return name

    def node(self, op, inputs, part, output=None, **attributes):
        name = self.claim(self.base + part)
        if output is None:
            output = name
        elif output != name:
            self.claim(output)
        self.nodes.append(helper.make_node(op, list(inputs), [output], name=name, **attributes))
        return output

    def reduce(self, op, x, part):
        """op over the last axis, keepdims=0: axes is an attribute before opset 18, an input from it."""
        if self.opset >= 18:
            return self.node(op, [x, self.constant("last_axis", [-1], np.int64)], part, keepdims=0)
        return self.node(op, [x], part, axes=[-1], keepdims=0)

    def take_nodes(self):
        nodes, self.nodes = self.nodes, []
        return nodes


def _number(what, value) -> float:
    if isinstance(value, bool):
        raise ValueError(f"{what} must be a number, not {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be a number, not {value!r}") from None
    if math.isnan(number):
        raise ValueError(f"{what} is NaN")
    return number


def _opset(model) -> int:
    versions = [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")]
    if not versions:
        raise ValueError("the model imports no default-domain opset")
    return versions[0]


def _has_calibration(graph, prefix) -> bool:
    base = CALIBRATION_PREFIX + prefix
    parameters = {base + part for part in ("temperature", "deterministic_temperature", "uncertain_threshold", "uncertain_distance",
                                           "conformal_quantile", "thresholds", "conformal_quantiles",
                                           "score_bound")}
    if any(t.name in parameters for t in graph.initializer):
        return True
    if any(base + "uncalibrated_samples" in n.output for n in graph.node):
        return True
    decisions = {prefix + part for part in ("uncertain", "prediction_set", "decision", "interval_low", "interval_high")}
    return any(n.name.startswith(CALIBRATION_PREFIX) and decisions & set(n.output) for n in graph.node)


def _dims(value_info):
    """The output's dims (a list of TensorShapeProto.Dimension), None when it has no shape."""
    tensor = value_info.type.tensor_type
    return list(tensor.shape.dim) if tensor.HasField("shape") else None


def _bool_output(name, dims, last=None):
    """A bool graph output with the given dims copied (symbolic batch included); `last` sets the
    last dim when the copied one is not a number."""
    info = helper.make_tensor_value_info(name, TensorProto.BOOL, None)
    if dims is None:
        return info
    shape = info.type.tensor_type.shape
    shape.SetInParent()
    for i, dim in enumerate(dims):
        new = shape.dim.add()
        new.CopyFrom(dim)
        if last is not None and i == len(dims) - 1 and not dim.HasField("dim_value"):
            new.Clear()
            new.dim_value = last
    return info
