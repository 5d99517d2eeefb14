"""A tiny mcdrop-format ONNX file built with onnx.helper, no TensorFlow (docs/FORMAT.md).

input [B, *example] -> flatten -> Tile by passes along the batch -> Dense(16) relu -> dropout
-> Dense(16) relu -> dropout -> Dense(units) -> head -> reshape to samples [T, B, units].
Each dropout is RandomUniformLike -> GreaterOrEqual(rate * stochastic) -> Cast -> Mul, scaled by
1 / (1 - rate * stochastic), as the exporter writes it.
"""

import json
from typing import Optional, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from mcdrop.runtime.format.integrity import seal

HEADS = {"softmax": 3, "binary": 1, "multilabel": 3, "regression": 2}
LABELS = {"softmax": ["cat", "dog", "bird"], "binary": ["no", "yes"], "multilabel": ["a", "b", "c"],
          "regression": None}
HIDDEN = 16
RATES = (0.5, 0.3)
SEEDS = (1234567.0, 7654321.0)
DEFAULT_PASSES = 8


def toy_weights(head: str, features: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    units = HEADS[head]
    return {
        "W1": rng.normal(0, 0.7, (features, HIDDEN)).astype(np.float32),
        "b1": rng.normal(0, 0.1, HIDDEN).astype(np.float32),
        "W2": rng.normal(0, 0.4, (HIDDEN, HIDDEN)).astype(np.float32),
        "b2": rng.normal(0, 0.1, HIDDEN).astype(np.float32),
        "W3": rng.normal(0, 0.6, (HIDDEN, units)).astype(np.float32),
        "b3": rng.normal(0, 0.1, units).astype(np.float32),
    }


def deterministic_forward(x: np.ndarray, head: str, weights: dict) -> np.ndarray:
    """The graph with stochastic=false, in numpy: [B, units]."""
    h = np.maximum(x.reshape(len(x), -1) @ weights["W1"] + weights["b1"], 0)
    h = np.maximum(h @ weights["W2"] + weights["b2"], 0)
    z = h @ weights["W3"] + weights["b3"]
    if head == "softmax":
        e = np.exp(z - z.max(axis=-1, keepdims=True))
        return e / e.sum(axis=-1, keepdims=True)
    if head in ("binary", "multilabel"):
        return 1 / (1 + np.exp(-z))
    return z


def build_toy_model(path, head: str = "softmax", example_shape: Sequence[int] = (4,),
                    preprocessing: Optional[dict] = None, seeds: Sequence[float] = SEEDS,
                    metadata_seeds: Optional[Sequence[float]] = None, with_metadata: bool = True,
                    activation_floats_per_sample: int = 64, weights_seed: int = 0,
                    sealed: bool = True) -> str:
    """Write the toy model to `path` and return it as a str. metadata_seeds lets a test make the
    metadata disagree with the graph; sealed=False leaves out the integrity checksum."""
    units = HEADS[head]
    features = int(np.prod(example_shape))
    weights = toy_weights(head, features, weights_seed)
    initializers = [numpy_helper.from_array(value, name) for name, value in weights.items()]
    initializers += [
        numpy_helper.from_array(np.array([1], dtype=np.int64), "one_1d"),
        numpy_helper.from_array(np.array([-1, features], dtype=np.int64), "flat_shape"),
        numpy_helper.from_array(np.array([-1, units], dtype=np.int64), "tail_shape"),
        numpy_helper.from_array(np.array(1.0, dtype=np.float32), "one_f"),
    ]
    nodes = [
        helper.make_node("Reshape", ["input", "flat_shape"], ["flat"]),
        helper.make_node("Reshape", ["passes", "one_1d"], ["passes_1d"]),
        helper.make_node("Concat", ["passes_1d", "one_1d"], ["repeats"], axis=0),
        helper.make_node("Tile", ["flat", "repeats"], ["tiled"]),
        helper.make_node("Cast", ["stochastic"], ["stochastic_f"], to=TensorProto.FLOAT),
    ]
    h = "tiled"
    layers = []
    for i, (rate, seed) in enumerate(zip(RATES, seeds)):
        name = f"dropout_{i}"
        weight, bias = ("W1", "b1") if i == 0 else ("W2", "b2")
        initializers.append(numpy_helper.from_array(np.array(rate, dtype=np.float32), f"{name}/rate"))
        nodes += [
            helper.make_node("MatMul", [h, weight], [f"{name}/mm"]),
            helper.make_node("Add", [f"{name}/mm", bias], [f"{name}/pre"]),
            helper.make_node("Relu", [f"{name}/pre"], [f"{name}/act"]),
            helper.make_node("RandomUniformLike", [f"{name}/act"], [f"{name}/u"],
                             name=f"mcdrop_random/{name}", seed=float(seed)),
            helper.make_node("Mul", [f"{name}/rate", "stochastic_f"], [f"{name}/rate_eff"]),
            helper.make_node("GreaterOrEqual", [f"{name}/u", f"{name}/rate_eff"], [f"{name}/keep"]),
            helper.make_node("Cast", [f"{name}/keep"], [f"{name}/keep_f"], to=TensorProto.FLOAT),
            helper.make_node("Sub", ["one_f", f"{name}/rate_eff"], [f"{name}/kept"]),
            helper.make_node("Mul", [f"{name}/act", f"{name}/keep_f"], [f"{name}/masked"]),
            helper.make_node("Div", [f"{name}/masked", f"{name}/kept"], [f"{name}/out"]),
        ]
        h = f"{name}/out"
        layers.append({"name": name, "kind": "Dropout", "rate": rate, "noise_shape": None,
                       "distribution": "uniform", "random_node": f"mcdrop_random/{name}",
                       "seed": float((metadata_seeds or seeds)[i])})
    nodes += [
        helper.make_node("MatMul", [h, "W3"], ["logits_mm"]),
        helper.make_node("Add", ["logits_mm", "b3"], ["logits"]),
    ]
    if head == "softmax":
        nodes.append(helper.make_node("Softmax", ["logits"], ["head"], axis=-1))
    elif head in ("binary", "multilabel"):
        nodes.append(helper.make_node("Sigmoid", ["logits"], ["head"]))
    else:
        nodes.append(helper.make_node("Identity", ["logits"], ["head"]))
    nodes += [
        helper.make_node("Concat", ["passes_1d", "tail_shape"], ["samples_shape"], axis=0),
        helper.make_node("Reshape", ["head", "samples_shape"], ["samples"]),
        helper.make_node("ReduceMean", ["samples"], ["mean"], axes=[0], keepdims=0),
        helper.make_node("Sub", ["samples", "mean"], ["deviation"]),
        helper.make_node("Mul", ["deviation", "deviation"], ["squared"]),
        helper.make_node("ReduceMean", ["squared"], ["variance"], axes=[0], keepdims=0),
    ]
    outputs = [
        helper.make_tensor_value_info("samples", TensorProto.FLOAT, ["passes", "batch", units]),
        helper.make_tensor_value_info("mean", TensorProto.FLOAT, ["batch", units]),
        helper.make_tensor_value_info("variance", TensorProto.FLOAT, ["batch", units]),
    ]
    if head != "regression":
        nodes, outputs = _add_entropies(nodes, outputs, initializers, head, units)
    graph = helper.make_graph(
        nodes, "toy", [
            helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", *example_shape]),
            helper.make_tensor_value_info("passes", TensorProto.INT64, []),
            helper.make_tensor_value_info("stochastic", TensorProto.BOOL, []),
        ], outputs, initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    if with_metadata:
        meta = {
            "format": 2, "head": head, "labels": LABELS[head], "default_passes": DEFAULT_PASSES,
            "input_shape": [None, *example_shape], "output_shape": [None, units],
            "preprocessing": preprocessing, "stochastic_layers": layers,
            "activation_floats_per_sample": activation_floats_per_sample,
            "once_floats_per_input": 4,
            "repeated_from": ["dropout_0"],
            "source": {"path": "toy.keras", "name": "toy", "sha256": "0" * 64},
            "versions": {"mcdrop": "0.1.0", "onnx": onnx.__version__},
        }
        helper.set_model_props(model, {"mcdrop": json.dumps(meta)})
    onnx.checker.check_model(model)
    with open(path, "wb") as f:
        f.write(seal(model.SerializeToString()) if sealed else model.SerializeToString())
    return str(path)


def _add_entropies(nodes, outputs, initializers, head, units):
    """predictive / expected entropy and mutual information, as FORMAT.md lists them.

    x log x is computed as x * log(max(x, tiny)), which is 0 at x = 0 like the numpy measures."""
    initializers.append(numpy_helper.from_array(np.array(1e-30, dtype=np.float32), "tiny"))

    def xlogx(x, out):
        return [helper.make_node("Max", [x, "tiny"], [f"{out}/safe"]),
                helper.make_node("Log", [f"{out}/safe"], [f"{out}/log"]),
                helper.make_node("Mul", [x, f"{out}/log"], [out])]

    def entropy(p, out):
        """-sum over classes (categorical) or elementwise Bernoulli entropy, of probabilities p."""
        made = xlogx(p, f"{out}/plogp")
        if head == "softmax":
            return made + [helper.make_node("ReduceSum", [f"{out}/plogp", "last_axis"], [f"{out}/sum"],
                                            keepdims=0),
                           helper.make_node("Neg", [f"{out}/sum"], [out])]
        made += [helper.make_node("Sub", ["one_f", p], [f"{out}/q"])]
        made += xlogx(f"{out}/q", f"{out}/qlogq")
        return made + [helper.make_node("Add", [f"{out}/plogp", f"{out}/qlogq"], [f"{out}/sum"]),
                       helper.make_node("Neg", [f"{out}/sum"], [out])]

    initializers.append(numpy_helper.from_array(np.array([-1], dtype=np.int64), "last_axis"))
    nodes = nodes + entropy("mean", "predictive_entropy") + entropy("samples", "pass_entropy") + [
        helper.make_node("ReduceMean", ["pass_entropy"], ["expected_entropy"], axes=[0], keepdims=0),
        helper.make_node("Sub", ["predictive_entropy", "expected_entropy"], ["mutual_information"]),
    ]
    shape = ["batch"] if head == "softmax" else ["batch", units]
    outputs = outputs + [helper.make_tensor_value_info(name, TensorProto.FLOAT, shape) for name in
                         ("predictive_entropy", "expected_entropy", "mutual_information")]
    return nodes, outputs
