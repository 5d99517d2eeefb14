"""The dropout masks of the shipped CNN, as the runtime's sessions draw them: the right rate, no
correlation across elements, passes, layers, runs or worker sessions, and a runs test.

Each random node's uniforms are exposed as graph outputs; a mask is uniform >= the layer's rate.
Every statistic must lie within 5 standard errors of what independent Bernoulli draws give.
"""

import numpy as np
import onnx
import pytest

from conftest import ROOT
from mcdrop.export.validate import ort_session, run
from mcdrop.runtime.format import seeds
from mcdrop.runtime.format.metadata import ModelInfo

MODEL = ROOT / "models" / "cnn.onnx"
PASSES, BATCH = 8, 4
LIMIT = 5.0  # standard errors


def streams(count):
    """`count` sessions' worth of the model, seeded as one MCSession seeds its sessions."""
    data = MODEL.read_bytes()
    return [onnx.load_from_string(seeds.rewrite_seeds(data, 7, stream, count)[0]) for stream in range(count)]


@pytest.fixture(scope="module")
def draws():
    """{(stream, run): {layer: mask [T*B*...] flattened}} for 3 sessions, 2 runs each."""
    x = np.random.default_rng(0).random((BATCH, 28, 28, 1), dtype=np.float32)
    rates = {layer.random_node: layer.rate for layer in ModelInfo.from_session(ort_session(MODEL.read_bytes()),
                                                                           str(MODEL)).stochastic_layers}
    out = {}
    for stream, proto in enumerate(streams(3)):
        node_of = {n.output[0]: n.name for n in proto.graph.node if n.op_type == "RandomUniformLike"}
        session = None
        for call in range(2):
            if session is None:
                probe = onnx.ModelProto()
                probe.CopyFrom(proto)
                probe.graph.output.extend(onnx.ValueInfoProto(name=name) for name in node_of)
                session = ort_session(probe.SerializeToString())
            uniforms = run(session, x, PASSES, outputs=list(node_of))
            out[stream, call] = {node_of[name]: (u.ravel() >= rates[node_of[name]]) for name, u in uniforms.items()}
    return out, rates


def correlation_z(a, b):
    n = min(a.size, b.size)
    r = np.corrcoef(a[:n].astype(np.float64), b[:n].astype(np.float64))[0, 1]
    return abs(r) * np.sqrt(n)


def test_every_layer_drops_at_its_rate(draws):
    masks, rates = draws
    for mask_set in masks.values():
        for node, kept in mask_set.items():
            rate, n = rates[node], kept.size
            assert abs((1 - kept.mean()) - rate) / np.sqrt(rate * (1 - rate) / n) < LIMIT, node


def test_no_correlation_across_elements_and_passes(draws):
    masks, _ = draws
    for node, kept in masks[0, 0].items():
        per_pass = kept.size // (PASSES * BATCH) * BATCH  # elements of one pass
        assert correlation_z(kept[:-1], kept[1:]) < LIMIT, f"{node}: neighbouring elements"
        assert correlation_z(kept[:-per_pass], kept[per_pass:]) < LIMIT, f"{node}: one pass to the next"


def test_no_correlation_across_layers_runs_and_sessions(draws):
    masks, _ = draws
    layers = list(masks[0, 0])
    for i, a in enumerate(layers):
        for b in layers[i + 1:]:
            assert correlation_z(masks[0, 0][a], masks[0, 0][b]) < LIMIT, f"layers {a} and {b}"
    for node in layers:
        assert correlation_z(masks[0, 0][node], masks[0, 1][node]) < LIMIT, f"{node}: one run to the next"
        for other in (1, 2):
            assert correlation_z(masks[0, 0][node], masks[other, 0][node]) < LIMIT, f"{node}: sessions 0 and {other}"


def test_runs_test(draws):
    # Wald-Wolfowitz: the number of runs of equal values in a sequence of independent draws.
    masks, _ = draws
    for node, kept in masks[0, 0].items():
        n, ones = kept.size, int(kept.sum())
        runs = 1 + int(np.count_nonzero(kept[1:] != kept[:-1]))
        mean = 2 * ones * (n - ones) / n + 1
        std = np.sqrt((mean - 1) * (mean - 2) / (n - 1))
        assert abs(runs - mean) / std < LIMIT, node
