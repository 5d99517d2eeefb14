"""`cli.py export` and export_model: options, errors, and nothing written unless validation passes."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

pytest.importorskip("tf2onnx")

import keras  # noqa: E402
from keras import layers  # noqa: E402
from parity import assert_parity  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from mcdrop import cli  # noqa: E402
from mcdrop import export  # noqa: E402
from mcdrop.runtime.format.mask_sets import control_feeds  # noqa: E402
from mcdrop.export.validate import ort_session  # noqa: E402
from mcdrop.runtime.errors import ValidationError  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


def save(model, tmp_path, name="m.keras"):
    path = tmp_path / name
    model.save(path)
    return path


def mlp(final_units=3, activation="softmax", dropout=True):
    keras.utils.set_random_seed(0)
    stack = [keras.Input((5,)), layers.Dense(8, activation="relu", name="hidden")]
    if dropout:
        stack += [layers.Dropout(0.3, name="drop_a"), layers.Dense(8, activation="relu"), layers.Dropout(0.3, name="drop_b")]
    stack.append(layers.Dense(final_units, activation=activation))
    return keras.Sequential(stack)


def invoke(*args):
    result = CliRunner().invoke(cli.app, ["export", *map(str, args)])
    return result.exit_code, result.output


def assert_one_line_error(code, output, fragment):
    assert code == 2, output
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and fragment in errors[0], output
    assert "Traceback" not in output


@pytest.mark.parametrize(
    "model, fragment",
    [
        (lambda: mlp(activation=None), "--head logits"),
        (lambda: mlp(final_units=1, activation="softmax"), "single unit"),
        (lambda: mlp(dropout=False), "--deterministic"),
    ],
    ids=["ambiguous-head", "softmax-one-unit", "no-stochastic-layer"],
)
def test_refused_models(model, fragment, tmp_path):
    code, output = invoke(save(model(), tmp_path), "-o", tmp_path / "out.onnx")
    assert_one_line_error(code, output, fragment)
    assert not (tmp_path / "out.onnx").exists()


def test_bad_inputs_are_one_line_errors(tmp_path):
    source = save(mlp(), tmp_path)
    corrupt = tmp_path / "corrupt.keras"
    corrupt.write_bytes(b"not a zip file")
    labels = tmp_path / "labels.txt"
    labels.write_text("a\nb\n")
    cases = [
        ((tmp_path / "missing.keras", "-o", tmp_path / "o.onnx"), "no such file"),
        ((corrupt, "-o", tmp_path / "o.onnx"), "cannot load"),
        ((source, "-o", tmp_path / "o.onnx", "--mc-layers", "nope"), "no noise layer named nope"),
        ((source, "-o", tmp_path / "o.onnx", "--labels", labels), "2 labels"),
        ((source, "-o", tmp_path / "o.onnx", "--head", "banana"), "unknown head"),
        ((source, "-o", tmp_path / "o.onnx", "--passes", "0"), "--passes"),
        ((source, "-o", tmp_path / "o.onnx", "--opset", "7"), "--opset"),
        ((source, "-o", tmp_path), "is a folder"),
        ((source, "-o", tmp_path / "o.onnx", "--calibration", labels), "--quantize int8 only"),
    ]
    for args, fragment in cases:
        assert_one_line_error(*invoke(*args), fragment)
    assert not (tmp_path / "o.onnx").exists()


def test_deterministic_export_has_zero_variance(tmp_path):
    code, output = invoke(save(mlp(dropout=False), tmp_path), "-o", tmp_path / "d.onnx", "--deterministic")
    assert code == 0, output
    session = ort_session((tmp_path / "d.onnx").read_bytes())
    x = np.random.default_rng(0).random((2, 5), dtype=np.float32)
    samples, variance = session.run(["samples", "variance"], {"input": x, **control_feeds(4)})
    assert samples.shape == (4, 2, 3) and np.all(variance == 0)


def test_default_passes_and_labels_are_stored(tmp_path):
    labels = tmp_path / "labels.txt"
    labels.write_text("cat\ndog\nfox\n")
    code, output = invoke(save(mlp(), tmp_path), "-o", tmp_path / "p.onnx", "--passes", "7", "--labels", labels, "--no-validate")
    assert code == 0, output
    proto = onnx.load(tmp_path / "p.onnx")
    meta = json.loads(proto.metadata_props[0].value)
    assert meta["labels"] == ["cat", "dog", "fox"] and meta["default_passes"] == 7
    assert [layer["name"] for layer in meta["stochastic_layers"]] == ["drop_a", "drop_b"]
    session = ort_session(proto.SerializeToString())
    assert {"passes", "stochastic"} <= {i.name for i in session.get_inputs()}  # plain inputs, no defaults
    assert not {"passes", "stochastic"} & {t.name for t in proto.graph.initializer}


def test_mc_layers_keeps_only_the_named_layers(tmp_path):
    result = assert_parity(mlp(), tmp_path, "only_b", mc_layers=["drop_b"])
    assert [layer["name"] for layer in result.metadata["stochastic_layers"]] == ["drop_b"]
    assert result.metadata["repeated_from"] == ["drop_b"]  # hidden and drop_a run once


def test_nothing_is_written_when_validation_fails(tmp_path, monkeypatch):
    def fail(*args, **kwargs):
        raise ValidationError("validation failed (test): forced")

    monkeypatch.setattr("mcdrop.export.validate.validate_export", fail)
    with pytest.raises(ValidationError):
        export.export_model(save(mlp(), tmp_path), tmp_path / "never.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.keras"]


def test_no_validate_still_refuses_a_file_the_runtime_would_refuse(tmp_path, monkeypatch):
    """--no-validate skips the Keras comparisons, not the runtime's load-time checks: a graph left
    with an input nobody can feed (Normalization's statistics, unfrozen) is never written."""
    from zoo import normalization_adapted_and_given

    monkeypatch.setattr("mcdrop.export.graph.freeze_captured_constants", lambda *args: None)
    model, _ = normalization_adapted_and_given()
    with pytest.raises(ValidationError, match="runtime contract.*inputs the contract does not know"):
        export.export_model(save(model, tmp_path), tmp_path / "never.onnx", validate=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.keras"]


def test_legacy_h5_exports(tmp_path):
    path = tmp_path / "legacy.h5"
    mlp().save(path)
    report = export.export_model(path, tmp_path / "h5.onnx")
    assert report.checks and (tmp_path / "h5.onnx").exists()


def test_keras2_saved_model_exports(tmp_path):
    tf_keras = pytest.importorskip("tf_keras")
    legacy = tf_keras.Sequential(
        [tf_keras.Input((5,)), tf_keras.layers.Dense(8, activation="relu"), tf_keras.layers.Dropout(0.3),
         tf_keras.layers.Dense(3, activation="softmax")]
    )
    legacy.save(tmp_path / "k2", save_format="tf")
    report = export.export_model(tmp_path / "k2", tmp_path / "k2.onnx")
    assert [layer["kind"] for layer in report.stochastic_layers] == ["Dropout"] and report.checks


def test_inference_only_saved_model_is_refused_with_reason(tmp_path):
    mlp().export(tmp_path / "saved", verbose=False)
    code, output = invoke(tmp_path / "saved", "-o", tmp_path / "s.onnx")
    assert_one_line_error(code, output, "inference graph only")


def test_subclassed_model_is_refused(tmp_path):
    class Net(keras.Model):
        def __init__(self):
            super().__init__()
            self.dense = layers.Dense(3, activation="softmax")
            self.drop = layers.Dropout(0.2)

        def call(self, x, training=False):
            return self.dense(self.drop(x, training=training))

    model = Net()
    model(np.zeros((1, 4), np.float32))
    with pytest.raises(export.ExportError, match="subclassed"):
        export.build_graph(model)


def test_cli_process_shows_progress_and_report(tmp_path):
    source = save(mlp(), tmp_path)
    done = subprocess.run(
        [sys.executable, str(ROOT / "cli.py"), "export", str(source), "-o", str(tmp_path / "c.onnx")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "validating" in done.stderr and "statistical parity" in done.stderr
    assert done.stdout.startswith("wrote ") and "2 random nodes" not in done.stdout
    assert "I0000" not in done.stderr  # TensorFlow's C++ log lines stay off the terminal


def small_cnn():
    keras.utils.set_random_seed(0)
    return keras.Sequential(
        [keras.Input((8, 8, 1)), layers.Conv2D(8, 3, activation="relu"), layers.Dropout(0.3, name="drop_conv"),
         layers.Flatten(), layers.Dense(16, activation="relu"), layers.Dropout(0.3, name="drop_dense"),
         layers.Dense(4, activation="softmax")]
    )


def test_int8_keeps_the_random_masks_in_float(tmp_path):
    model = small_cnn()
    calibration = tmp_path / "calibration.npy"
    np.save(calibration, np.random.default_rng(0).random((64, 8, 8, 1), dtype=np.float32))
    code, output = invoke(save(model, tmp_path), "-o", tmp_path / "q.onnx", "--quantize", "int8", "--calibration", calibration)
    assert code == 0, output
    assert "int8 drift from float" in output

    proto = onnx.load(tmp_path / "q.onnx")
    ops = [n.op_type for n in proto.graph.node]
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    randoms = [n for n in proto.graph.node if n.op_type == "RandomUniformLike"]
    assert len(randoms) == 2
    def consumers(names):
        return [n for n in proto.graph.node if set(n.input) & set(names)]

    # The draw (joined to the shared set's slice, reshaped) is compared with the rate in float,
    # never quantized.
    frontier, reached = [r.output[0] for r in randoms], []
    while frontier:
        found = consumers(frontier)
        frontier = [n.output[0] for n in found if n.op_type in ("Concat", "Reshape")]
        reached += [n.op_type for n in found if n.op_type not in ("Concat", "Reshape")]
    assert reached and set(reached) <= {"GreaterOrEqual"}
    meta = json.loads(proto.metadata_props[0].value)
    assert meta["quantization"]["kind"] == "int8" and meta["quantization"]["calibration"] == "calibration.npy"

    x = np.random.default_rng(1).random((4, 8, 8, 1), dtype=np.float32)
    session = ort_session(proto.SerializeToString())
    (quantized,) = session.run(["mean"], {"input": x, **control_feeds(1, False)})
    assert np.max(np.abs(quantized - np.asarray(model(x, training=False)))) < 0.05


def test_bad_calibration_is_a_one_line_error(tmp_path):
    wrong = tmp_path / "wrong.npy"
    np.save(wrong, np.zeros((4, 5, 5, 1), np.float32))
    code, output = invoke(save(small_cnn(), tmp_path), "-o", tmp_path / "q.onnx", "--quantize", "int8", "--calibration", wrong)
    assert_one_line_error(code, output, "calibration data has shape")
    words = tmp_path / "words.npy"
    np.save(words, np.array([["a"] * 8] * 8))
    code, output = invoke(save(small_cnn(), tmp_path), "-o", tmp_path / "q.onnx", "--quantize", "int8", "--calibration", words)
    assert_one_line_error(code, output, "must be real numbers")
    assert not (tmp_path / "q.onnx").exists()


def test_contract_export_then_infer(tmp_path):
    """export MODEL -o OUT.onnx, then infer X.npy --out R.npz: mean/variance of the model's shape;
    --no-dropout equals Keras predict."""
    model = mlp()
    assert invoke(save(model, tmp_path), "-o", tmp_path / "out.onnx")[0] == 0
    x = np.random.default_rng(3).standard_normal((4, 5)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    runner = CliRunner()
    for flags, out in (([], "mc.npz"), (["--no-dropout"], "det.npz")):
        args = ["infer", str(tmp_path / "x.npy"), "--model", str(tmp_path / "out.onnx"), "--passes", "30",
                "--seed", "1", "--out", str(tmp_path / out), *flags]
        assert runner.invoke(cli.app, args).exit_code == 0
    with np.load(tmp_path / "mc.npz") as mc, np.load(tmp_path / "det.npz") as det:
        assert mc["mean"].shape == mc["variance"].shape == (4, 3)
        assert np.all(mc["variance"] > 0)
        assert np.max(np.abs(det["mean"] - np.asarray(model(x, training=False)))) <= 1e-5
        assert np.all(det["variance"] == 0)


def test_missing_export_extra_is_a_one_line_error(tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tf2onnx" else real(name, *a))
    code, output = invoke(tmp_path / "m.keras", "-o", tmp_path / "o.onnx")
    assert_one_line_error(code, output, "pip install -e '.[export]'")
