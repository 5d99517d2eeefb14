"""No silent loss of randomness: a layer that draws random numbers mcdrop cannot keep live (a
ConvLSTM's dropout, a custom layer calling keras.random) stops the export by name, unless the
user names it in --ignore-random-layers (export/randomness.py). LSTM, GRU and SimpleRNN dropout,
also in StackedRNNCells, are kept live (tests/zoo.py has their parity models)."""

import subprocess
import sys

import keras
import pytest
from keras import layers

pytest.importorskip("tf2onnx")

from conftest import ROOT  # noqa: E402
from mcdrop.export import export_model  # noqa: E402
from mcdrop.runtime.errors import ExportError  # noqa: E402

pytestmark = pytest.mark.slow


@keras.saving.register_keras_serializable(package="mcdrop_tests")
class JitterNoise(layers.Layer):
    """A custom noise layer of the kind users write: always on, drawn with keras.random."""

    def call(self, x):
        return x + keras.random.normal(keras.ops.shape(x), stddev=0.1)


def sequence_model(rnn):
    inp = keras.Input((5, 3))
    x = rnn(inp)
    x = layers.Dropout(0.2)(x)
    return keras.Model(inp, layers.Dense(2, activation="softmax")(x))


def nested_stack():
    inner = keras.Sequential([keras.Input((5, 3, 1)), layers.ConvLSTM1D(2, 3, dropout=0.2), layers.Flatten()],
                             name="inner")
    inp = keras.Input((5, 3, 1))
    x = layers.Dropout(0.2)(inner(inp))
    return keras.Model(inp, layers.Dense(2, activation="softmax")(x))


CASES = {
    "conv lstm dropout": (lambda: keras.Sequential([keras.Input((5, 6, 2)), layers.ConvLSTM1D(2, 3, dropout=0.3, name="convlstm"),
                                                    layers.Flatten(), layers.Dense(2, activation="softmax")]),
                          "'convlstm' (ConvLSTM1D)"),
    "conv lstm 2d recurrent dropout": (lambda: keras.Sequential([
        keras.Input((3, 5, 5, 1)), layers.ConvLSTM2D(2, 3, recurrent_dropout=0.2, name="convlstm2d"), layers.Flatten(),
        layers.Dense(2, activation="softmax")]), "'convlstm2d' (ConvLSTM2D)"),
    "custom random layer": (lambda: keras.Sequential([keras.Input((4,)), layers.Dense(4), JitterNoise(name="jitter"),
                                                      layers.Dropout(0.2), layers.Dense(2, activation="softmax")]),
                            "'jitter' (JitterNoise)"),
    "inside a nested model": (nested_stack, "(ConvLSTM1D)"),
}


@pytest.mark.parametrize("case", CASES)
def test_a_layer_whose_randomness_would_be_lost_is_refused_by_name(case, tmp_path):
    build, named = CASES[case]
    build().save(tmp_path / "m.keras")
    with pytest.raises(ExportError, match=r"cannot keep live") as caught:
        export_model(tmp_path / "m.keras", tmp_path / "m.onnx", validate=False, trust_model_code=True)
    assert named in str(caught.value) and "--ignore-random-layers" in str(caught.value)
    assert not (tmp_path / "m.onnx").exists()


def test_ignoring_a_wrapper_ignores_the_layers_it_holds(tmp_path):
    nested_stack().save(tmp_path / "m.keras")
    report = export_model(tmp_path / "m.keras", tmp_path / "m.onnx", validate=False, ignore_random_layers=["inner"])
    assert [layer["kind"] for layer in report.stochastic_layers] == ["Dropout"]


def test_unknown_layer_name_to_ignore_is_an_error(tmp_path):
    CASES["conv lstm 2d recurrent dropout"][0]().save(tmp_path / "m.keras")
    with pytest.raises(ExportError, match="no layer named nope"):
        export_model(tmp_path / "m.keras", tmp_path / "m.onnx", validate=False, ignore_random_layers=["nope"])


def test_cli_refuses_in_one_line_and_exports_with_the_opt_out(tmp_path):
    CASES["conv lstm dropout"][0]().save(tmp_path / "m.keras")
    out = tmp_path / "m.onnx"
    done = subprocess.run([sys.executable, "cli.py", "export", tmp_path / "m.keras", "-o", out], cwd=ROOT,
                          capture_output=True, text=True)
    assert done.returncode == 2 and "Traceback" not in done.stderr and not out.exists()
    assert [line for line in done.stderr.splitlines() if line.startswith("error: ")][0].count("convlstm") == 2
    done = subprocess.run([sys.executable, "cli.py", "export", tmp_path / "m.keras", "-o", out, "--deterministic",
                           "--ignore-random-layers", "convlstm"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert out.exists()


def test_cli_exports_an_lstm_whose_only_dropout_is_recurrent(tmp_path):
    """Without --deterministic or any opt-out: the recurrent masks are the file's random nodes."""
    sequence = keras.Sequential([keras.Input((5, 3)), layers.LSTM(4, recurrent_dropout=0.3, name="lstm_rec"),
                                 layers.Dense(2, activation="softmax")])
    sequence.save(tmp_path / "m.keras")
    out = tmp_path / "m.onnx"
    done = subprocess.run([sys.executable, "cli.py", "export", tmp_path / "m.keras", "-o", out], cwd=ROOT,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "lstm_rec (LSTM recurrent_dropout 0.3)" in done.stdout
    info = subprocess.run([sys.executable, "cli.py", "info", out], cwd=ROOT, capture_output=True, text=True)
    assert "stochastic layer lstm_rec (LSTM recurrent_dropout, rate 0.3)" in info.stdout, info.stdout + info.stderr
