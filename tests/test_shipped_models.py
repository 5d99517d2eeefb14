"""The shipped digits models: they export with validation, the runtime matches Keras, the card is measured."""

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tf2onnx")

import keras  # noqa: E402

from mcdrop.export import export_model  # noqa: E402
from mcdrop.export.reference import keras_mc_samples  # noqa: E402
from mcdrop.export.validate import DETERMINISTIC_ATOL, Z_LIMIT, z_scores  # noqa: E402
from mcdrop.runtime import MCSession, load_inputs  # noqa: E402

MODELS = Path(__file__).resolve().parent.parent / "models"
SAMPLES = MODELS / "samples"
pytestmark = pytest.mark.slow


def held_out():
    import build_models

    images, labels = build_models.digits_28x28()
    _, test_img, _, test_y = build_models.split(images, labels)
    return test_img, test_y


@pytest.fixture(scope="module", autouse=True)
def _models_on_path():
    import sys

    sys.path.insert(0, str(MODELS))
    yield
    sys.path.remove(str(MODELS))


@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_shipped_model_exports_with_validation(name, tmp_path):
    flags = {"image_size": (28, 28)} if name == "mlp" else {}
    report = export_model(MODELS / f"{name}.keras", tmp_path / "out.onnx", labels=MODELS / "labels.txt", **flags)
    assert (tmp_path / "out.onnx").exists()
    assert {c.name for c in report.checks} >= {"deterministic parity", "statistical parity", "optimiser all"}


@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_runtime_matches_keras(name):
    model = keras.models.load_model(MODELS / f"{name}.keras", compile=False)
    session = MCSession(MODELS / f"{name}.onnx", seed=0)
    _, x = load_inputs([str(p) for p in sorted(SAMPLES.glob("*.png"))], session.info)

    deterministic = session.predict(x, dropout=False).mean
    assert np.max(np.abs(deterministic - np.asarray(model(x, training=False)))) <= DETERMINISTIC_ATOL

    passes = 1000
    ours = session.predict(x[:2], passes=passes).samples
    theirs = keras_mc_samples(model, x[:2], passes)
    assert max(z_scores(ours, theirs).values()) <= Z_LIMIT


# Held-out accuracies are compared with the card within a few of its 450 images: float32 results
# differ in the last bits between instruction sets (AVX2, AVX-512, NEON) and can move a borderline
# image. The int8 file computes the same integers on every CPU (7-bit weights, see below); its
# 1-point tolerance is against the float model, which it may trail.
FLOAT_ACCURACY_TOLERANCE = 2.5 / 450
INT8_ACCURACY_TOLERANCE = 0.01


def test_model_card_accuracy_is_measured():
    card = json.loads((MODELS / "model_card.json").read_text())
    test_img, test_y = held_out()
    for name in ("mlp", "cnn"):
        model = keras.models.load_model(MODELS / f"{name}.keras", compile=False)
        x = test_img.astype(np.float32) / 255.0
        x = x.reshape(len(x), -1) if name == "mlp" else x[..., None]
        accuracy = float((np.asarray(model(x, training=False)).argmax(-1) == test_y).mean())
        assert accuracy == pytest.approx(card[name]["keras_deterministic_accuracy"], abs=FLOAT_ACCURACY_TOLERANCE)
        assert accuracy > 0.9


def test_int8_card_accuracy_is_measured():
    card = json.loads((MODELS / "model_card.json").read_text())["cnn_int8"]
    test_img, test_y = held_out()
    session = MCSession(MODELS / "cnn_int8.onnx")
    assert session.info.metadata["quantization"]["kind"] == "int8"
    accuracy = float((session.predict(test_img[..., None] / np.float32(255), dropout=False).mean.argmax(-1) == test_y).mean())
    assert accuracy == pytest.approx(card["int8_deterministic_accuracy"], abs=INT8_ACCURACY_TOLERANCE)
    float_accuracy = json.loads((MODELS / "model_card.json").read_text())["cnn"]["keras_deterministic_accuracy"]
    assert abs(accuracy - float_accuracy) <= INT8_ACCURACY_TOLERANCE  # within 1 point of the float model


# int8 arithmetic: the same integers on every CPU ----------------------------------------------------
# AVX2 without VNNI sums pairs of uint8 x int8 products in int16, saturating (vpmaddubsw): with 7-bit
# weights (|w| <= 64) the largest pair, 2 * 255 * 64 = 32640, fits; 8-bit ones (127) do not.
# VNNI and NEON sum in int32. docs/DESIGN.md: int8.
INT16_MAX = 2**15 - 1
UINT8_MAX = 255


def int8_weights(path):
    """{name: int8 array} of the weight initializers the file dequantizes."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path)).graph
    weights = {init.name: init for init in graph.initializer}
    found = {}
    for node in graph.node:
        if node.op_type == "DequantizeLinear" and node.input[0] in weights:
            array = numpy_helper.to_array(weights[node.input[0]])
            if array.dtype == np.int8:
                found[node.input[0]] = array
    return found


def test_int8_weight_pairs_fit_int16():
    weights = int8_weights(MODELS / "cnn_int8.onnx")
    largest = max(int(np.abs(w.astype(np.int32)).max()) for w in weights.values())
    assert 2 * UINT8_MAX * largest <= INT16_MAX
    assert len(weights) == 3  # two convolutions and the hidden dense layer; the head stays float


def last_quantized(path, x):
    """The last QuantizeLinear's output (integers) for x, deterministic pass, from onnxruntime with
    its int8 kernels (fused, the default) and from the graph as written (ORT_DISABLE_ALL: float
    Conv/Gemm on dequantized values, exact for these sums, then QuantizeLinear)."""
    import onnx
    import onnxruntime as ort

    from mcdrop.runtime.format.mask_sets import control_feeds

    proto = onnx.load(str(path))
    name = [node for node in proto.graph.node if node.op_type == "QuantizeLinear"][-1].output[0]
    proto.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.UINT8, None))
    found = []
    for level in (ort.GraphOptimizationLevel.ORT_ENABLE_ALL, ort.GraphOptimizationLevel.ORT_DISABLE_ALL):
        options = ort.SessionOptions()
        options.graph_optimization_level = level
        session = ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
        found.append(session.run([name], {"input": x, **control_feeds(1, stochastic=False)})[0].astype(np.int32))
    return found


def test_int8_kernels_equal_the_float_reference():
    """Without saturation the int8 kernels compute the float reference's sums exactly; a rounding tie
    may still requantize one step apart. The 8-bit file of before differed by up to 12 steps on
    this AVX2 CPU (the logits; up to 0.23 in probability), and by 0.13 between CPUs."""
    test_img, _ = held_out()
    fused, reference = last_quantized(MODELS / "cnn_int8.onnx", test_img[..., None] / np.float32(255))
    assert np.abs(fused - reference).max() <= 1


def test_clear_digit_is_certain_and_non_digit_is_not():
    session = MCSession(MODELS / "cnn.onnx", seed=0)
    names, x = load_inputs([str(SAMPLES / "digit_3.png"), str(SAMPLES / "not_a_digit.png")], session.info)
    prediction = session.predict(x, passes=500)
    digit, other = prediction.measures["mutual_information"]
    assert prediction.measures["label"][0] == 3
    assert digit < 0.05
    assert other > 5 * digit
    assert list(prediction.uncertain) == [False, True]
