"""No silent loss of randomness: a layer that draws random numbers mcdrop cannot keep live (RNN
dropout, a custom layer calling keras.random) stops the export by name, unless the user names it
in --ignore-random-layers (export/randomness.py)."""

import subprocess
import sys

import keras
import pytest
from keras import layers

pytest.importorskip("tf2onnx")

from conftest import ROOT  # noqa: E402
from export import export_model  # noqa: E402
from runtime.errors import ExportError  # noqa: E402

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


CASES = {
    "lstm dropout": (lambda: sequence_model(layers.LSTM(4, dropout=0.3, name="lstm_in")), "'lstm_in' (LSTM)"),
    "lstm recurrent only": (lambda: sequence_model(layers.LSTM(4, recurrent_dropout=0.3, name="lstm_rec")),
                            "'lstm_rec' (LSTM)"),
    "gru": (lambda: sequence_model(layers.GRU(4, dropout=0.2, name="gru")), "'gru' (GRU)"),
    "simple rnn": (lambda: sequence_model(layers.SimpleRNN(4, recurrent_dropout=0.2, name="rnn")), "'rnn' (SimpleRNN)"),
    "bidirectional": (lambda: sequence_model(layers.Bidirectional(layers.GRU(4, dropout=0.2), name="bi")),
                      "(GRU)"),
    "custom random layer": (lambda: keras.Sequential([keras.Input((4,)), layers.Dense(4), JitterNoise(name="jitter"),
                                                      layers.Dropout(0.2), layers.Dense(2, activation="softmax")]),
                            "'jitter' (JitterNoise)"),
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
    CASES["bidirectional"][0]().save(tmp_path / "m.keras")
    report = export_model(tmp_path / "m.keras", tmp_path / "m.onnx", validate=False, ignore_random_layers=["bi"])
    assert [layer["kind"] for layer in report.stochastic_layers] == ["Dropout"]


def test_unknown_layer_name_to_ignore_is_an_error(tmp_path):
    CASES["gru"][0]().save(tmp_path / "m.keras")
    with pytest.raises(ExportError, match="no layer named nope"):
        export_model(tmp_path / "m.keras", tmp_path / "m.onnx", validate=False, ignore_random_layers=["nope"])


def test_cli_refuses_in_one_line_and_exports_with_the_opt_out(tmp_path):
    CASES["lstm recurrent only"][0]().save(tmp_path / "m.keras")
    out = tmp_path / "m.onnx"
    done = subprocess.run([sys.executable, "cli.py", "export", tmp_path / "m.keras", "-o", out], cwd=ROOT,
                          capture_output=True, text=True)
    assert done.returncode == 2 and "Traceback" not in done.stderr and not out.exists()
    assert [line for line in done.stderr.splitlines() if line.startswith("error: ")][0].count("lstm_rec") == 2
    done = subprocess.run([sys.executable, "cli.py", "export", tmp_path / "m.keras", "-o", out,
                           "--ignore-random-layers", "lstm_rec"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert out.exists()
