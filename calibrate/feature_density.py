"""Single-pass scores written into an mcdrop graph by `cli.py calibrate` (docs/FORMAT.md: Single-pass
scores): a feature-space density score and, from the logits before the softmax, energy and max logit.

* `<prefix>feature_distance` [batch]: min over classes of the squared Mahalanobis distance of an
  input's features to the class means, under one covariance shared by the classes (Lee et al. 2018;
  DDU, Mukhoti et al. 2023). Features: a ReLU output of the graph, averaged over its spatial axes
  (a conv output [N, C, H, W] gives [N, C]; a dense one [N, D] is taken as it is). Only tensors
  that no random node feeds are candidates: they are the same in every pass, so the score is the
  deterministic network's in any run. Class means and the Ledoit-Wolf shrunk covariance are fitted
  on the calibration data and stored as initializers (`.../feature_means` [K, D] and
  `.../feature_whitening` [D, D], L with precision = L L^T, so distance = ||(f - mean) L||^2).
* `<prefix>energy` [batch]: -logsumexp(logits), and `<prefix>max_logit` [batch]: the largest
  logit, each averaged over the run's passes (with stochastic = false, the deterministic pass's).
  The logits are the input of the Softmax whose output becomes `<prefix>samples`, before any
  temperature.

Nodes and initializers are named `mcdrop_calibration/<prefix>...`, so strip_calibration removes them.
Imports numpy, onnx and onnxruntime only.
"""

from __future__ import annotations

from typing import Callable, Dict, List, Optional

import numpy as np
import onnx
from onnx import TensorProto, helper

__all__ = ["ledoit_wolf", "fit_gaussians", "feature_candidates", "layer_output", "pool", "add_feature_scores",
           "mahalanobis_min", "FEATURE_SCORES"]

FEATURE_SCORES = ("feature_distance", "energy")  # higher = less certain
CONTROL_INPUTS = ("passes", "stochastic", "masks")
FIT_ROWS = 128  # inputs per run while reading the features (a conv output is large)


def ledoit_wolf(x: np.ndarray) -> np.ndarray:
    """The Ledoit-Wolf shrunk covariance of rows `x` taken as centred (sklearn's LedoitWolf with
    assume_centered=True, the same formula; tests/test_feature_scores.py checks it against it)."""
    x = np.asarray(x, np.float64)
    n, p = x.shape
    empirical = x.T @ x / n
    mu = np.trace(empirical) / p
    x2 = x ** 2
    beta_ = float(np.sum(x2.T @ x2))
    delta_ = float(np.sum(empirical ** 2))
    beta = (beta_ / n - delta_) / (p * n)
    delta = (delta_ - 2 * mu * np.trace(empirical) + p * mu ** 2) / p
    shrinkage = 0.0 if delta == 0 else min(beta, delta) / delta
    shrunk = (1 - shrinkage) * empirical
    shrunk.flat[::p + 1] += shrinkage * mu
    return shrunk


def fit_gaussians(features: np.ndarray, y: np.ndarray, classes: int) -> Dict[str, np.ndarray]:
    """Class means [K, D] and the whitening L [D, D] (precision = L L^T) of class-conditional
    Gaussians with one shared covariance, Ledoit-Wolf shrunk, on features [n, D] with labels y."""
    features = np.asarray(features, np.float64)
    y = np.asarray(y).reshape(-1)
    means = np.zeros((classes, features.shape[1]))
    for k in range(classes):
        if (y == k).any():
            means[k] = features[y == k].mean(axis=0)
    covariance = ledoit_wolf(features - means[y])
    precision = np.linalg.inv(covariance)
    precision = (precision + precision.T) / 2
    whitening = np.linalg.cholesky(precision)
    present = np.array([(y == k).any() for k in range(classes)])
    return {"means": means[present], "whitening": whitening}


def mahalanobis_min(features: np.ndarray, means: np.ndarray, whitening: np.ndarray) -> np.ndarray:
    """min over classes of the squared Mahalanobis distance (numpy, float64)."""
    z = (np.asarray(features, np.float64)[:, None, :] - means[None]) @ whitening
    return (z ** 2).sum(-1).min(-1)


def feature_candidates(model: onnx.ModelProto) -> List[str]:
    """ReLU outputs no random node or control input (passes, stochastic, masks) feeds, in graph order."""
    random = set(CONTROL_INPUTS)
    for node in model.graph.node:
        if node.op_type.startswith("Random") or random & set(node.input):
            random.update(node.output)
    return [node.output[0] for node in model.graph.node if node.op_type == "Relu" and node.output[0] not in random]


def layer_output(model: onnx.ModelProto, layer: str, feeds: Dict[str, np.ndarray]) -> np.ndarray:
    """The tensor `layer` of the graph for the feeds (onnxruntime, CPU)."""
    return layer_reader(model, layer)(feeds)


def layer_reader(model: onnx.ModelProto, layer: str) -> Callable[[Dict[str, np.ndarray]], np.ndarray]:
    """feeds -> the tensor `layer` of the graph, from one onnxruntime session (CPU) for every call."""
    import onnxruntime as ort

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    if layer not in {o.name for o in probe.graph.output}:
        probe.graph.output.append(helper.make_tensor_value_info(layer, TensorProto.FLOAT, None))
    session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    return lambda feeds: session.run([layer], feeds)[0]


def pool(value: np.ndarray) -> np.ndarray:
    value = np.asarray(value, np.float64)
    return value.mean(axis=tuple(range(2, value.ndim))) if value.ndim > 2 else value.reshape(len(value), -1)


def _logits(graph, samples: str) -> Optional[tuple]:
    """(logits, the shape the Reshape to samples takes, or None) when samples are the Softmax of logits."""
    producers = {o: n for n in graph.node for o in n.output}
    node = producers.get(samples)
    shape = None
    if node is not None and node.op_type == "Reshape":
        shape, node = node.input[1], producers.get(node.input[0])
    if node is None or node.op_type != "Softmax":
        return None
    return node.input[0], shape


def add_feature_scores(model: onnx.ModelProto, prefix: str, layer: Optional[str], rank: int,
                       fitted: Optional[Dict[str, np.ndarray]]) -> List[str]:
    """Add `<prefix>feature_distance` (when `fitted`: means and whitening of `layer`'s pooled
    features, the tensor of rank `rank`) and `<prefix>energy`, `<prefix>max_logit` (when the
    samples are a softmax of logits) to `model`, in place. Returns the graph outputs added."""
    from .graph import CALIBRATION_PREFIX, _Builder, _opset

    graph = model.graph
    opset = _opset(model)
    b = _Builder(graph, CALIBRATION_PREFIX + prefix, opset)

    def reduce(op, x, axes, part, keepdims=0):
        if opset >= 18 or (op == "ReduceSum" and opset >= 13):  # axes became an input (ReduceSum first)
            return b.node(op, [x, b.constant(part + "_axes", list(axes), np.int64)], part, keepdims=keepdims)
        return b.node(op, [x], part, axes=list(axes), keepdims=keepdims)

    added = []
    if fitted is not None:
        pooled = reduce("ReduceMean", layer, range(2, rank), "feature_pooled") if rank > 2 else layer
        rows = b.node("Unsqueeze", [pooled, b.constant("axis_1", [1], np.int64)], "feature_rows")  # [N, 1, D]
        offset = b.node("Sub", [rows, b.constant("feature_means", fitted["means"])], "feature_offset")
        white = b.node("MatMul", [offset, b.constant("feature_whitening", fitted["whitening"])], "feature_whitened")
        squared = b.node("Mul", [white, white], "feature_squared")
        per_class = reduce("ReduceSum", squared, [-1], "feature_class_distance")
        nearest = reduce("ReduceMin", per_class, [-1], "feature_nearest")
        b.node("Identity", [nearest], "feature_distance", output=prefix + "feature_distance")
        added.append(prefix + "feature_distance")
    found = _logits(graph, prefix + "samples")
    if found is not None:
        logits, shape = found
        per_pass = b.node("Reshape", [logits, shape], "logits") if shape else logits
        lse = reduce("ReduceLogSumExp", per_pass, [-1], "logsumexp")
        energy = b.node("Neg", [lse], "energy_per_pass")
        top = reduce("ReduceMax", per_pass, [-1], "max_logit_per_pass")
        for name, value in (("energy", energy), ("max_logit", top)):
            mean = reduce("ReduceMean", value, [0], name + "_mean")
            b.node("Identity", [mean], name, output=prefix + name)
            added.append(prefix + name)
    graph.node.extend(b.nodes)
    graph.initializer.extend(b.initializers)
    graph.output.extend(helper.make_tensor_value_info(name, TensorProto.FLOAT, None) for name in added)
    return added


def fit_feature_scores(proto: onnx.ModelProto, session, labelled, chosen, classes: int,
                       layer: Optional[str]) -> dict:
    """Fit the feature density on the calibration inputs and write every single-pass score into
    `proto` (softmax and logits heads; {} for others): {"outputs": graph outputs added, "entry":
    {"single_pass_scores": the metadata entry (docs/FORMAT.md: Single-pass scores)}}."""
    if chosen.head not in ("softmax", "logits"):
        return {}
    from ..runtime.errors import InputError

    candidates = feature_candidates(proto)
    if layer is not None and layer not in candidates:
        raise InputError(f"--feature-layer {layer!r}: not a ReLU output that no random node feeds "
                         f"(candidates: {', '.join(candidates) or 'none'})")
    layer = layer or (candidates[-1] if candidates else None)  # the deepest before the first dropout
    entry = {"feature_layer": layer, "candidates": candidates}
    fitted, rank = None, 0
    features = None
    if layer is not None:
        features, rank = read_features(proto, session, labelled.x, layer)
        y = np.asarray(labelled.y).reshape(-1)
        fitted = fit_gaussians(features, y, classes)
        entry.update(feature_dim=int(features.shape[1]), pooled_axes=list(range(2, rank)),
                     classes_fitted=int(len(fitted["means"])))
    entry["outputs"] = add_feature_scores(proto, chosen.prefix, layer, rank, fitted)
    return {"outputs": entry["outputs"], "entry": {"single_pass_scores": entry}, "features": features,
            "scores": scores_on(proto, entry["outputs"], chosen.prefix, labelled.x, session)}


def read_features(proto: onnx.ModelProto, session, x, layer: str):
    """(the pooled features [n, D] of `layer` for the batch `x` on the deterministic pass, the
    layer's rank), read FIT_ROWS inputs at a time."""
    from ..evaluate.labelled_sets import batch_size, take
    from ..runtime.format.mask_sets import control_feeds

    x = x if isinstance(x, dict) else {session.info.model_inputs[0].name: x}
    layout = session.info.mask_layout
    feeds = control_feeds(1, False, None, layout.floats_per_pass if layout else 0)
    graph_inputs = {i.name for i in proto.graph.input}
    feeds = {name: value for name, value in feeds.items() if name in graph_inputs}
    read = layer_reader(proto, layer)
    raw = np.concatenate([read({**feeds, **take(x, slice(start, start + FIT_ROWS))})
                          for start in range(0, batch_size(x), FIT_ROWS)])
    return pool(raw), raw.ndim


def scores_on(proto, names, prefix, x, session) -> Dict[str, np.ndarray]:
    """{measure: float32 [n]}: the graph's single-pass scores on the batch `x` (deterministic pass)."""
    import onnxruntime as ort

    from ..evaluate.labelled_sets import batch_size, take
    from ..runtime.format.mask_sets import control_feeds

    if not names:
        return {}
    x = x if isinstance(x, dict) else {session.info.model_inputs[0].name: x}
    layout = session.info.mask_layout
    graph_inputs = {i.name for i in proto.graph.input}
    feeds = {k: v for k, v in control_feeds(1, False, None, layout.floats_per_pass if layout else 0).items()
             if k in graph_inputs}
    run = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    parts = [run.run(names, {**feeds, **take(x, slice(start, start + FIT_ROWS))})
             for start in range(0, batch_size(x), FIT_ROWS)]
    return {name[len(prefix):]: np.concatenate([p[i] for p in parts]).astype(np.float32).reshape(-1)
            for i, name in enumerate(names)}
