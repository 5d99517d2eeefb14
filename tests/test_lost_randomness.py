"""No silent loss of randomness: a layer that draws random numbers mcdrop cannot keep live (a
user-written RNN cell, a custom layer calling keras.random) stops the export by name, unless the
user names it in --ignore-random-layers (export/randomness.py). LSTM, GRU, SimpleRNN and ConvLSTM
dropout, also in StackedRNNCells, are kept live (tests/zoo.py has their parity models)."""

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


@keras.saving.register_keras_serializable(package="mcdrop_tests")
class NoisyCell(layers.Layer):
    """A user-written RNN cell that drops its state with keras.random: not a cell mcdrop can fill."""

    def __init__(self, units=3, **kwargs):
        super().__init__(**kwargs)
        self.units, self.state_size = units, units
        self.dense = layers.Dense(units)
        self.seed_generator = keras.random.SeedGenerator(1)

    def call(self, x, states, training=None):
        h = self.dense(x) + states[0]
        if training:
            h = keras.random.dropout(h, 0.2, seed=self.seed_generator)
        return h, [h]

    def get_config(self):
        return {**super().get_config(), "units": self.units}


def nested_stack():
    inner = keras.Sequential([keras.Input((5, 3)), layers.RNN(NoisyCell(3))], name="inner")
    inp = keras.Input((5, 3))
    x = layers.Dropout(0.2)(inner(inp))
    return keras.Model(inp, layers.Dense(2, activation="softmax")(x))


CASES = {
    "custom rnn cell": (lambda: sequence_model(layers.RNN(NoisyCell(3, name="noisy_cell"), name="noisy_rnn")),
                        "'noisy_"),
    "custom random layer": (lambda: keras.Sequential([keras.Input((4,)), layers.Dense(4), JitterNoise(name="jitter"),
                                                      layers.Dropout(0.2), layers.Dense(2, activation="softmax")]),
                            "'jitter' (JitterNoise)"),
    "inside a nested model": (nested_stack, "(NoisyCell)"),
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
    report = export_model(tmp_path / "m.keras", tmp_path / "m.onnx", validate=False, ignore_random_layers=["inner"],
                          trust_model_code=True)
    assert [layer["kind"] for layer in report.stochastic_layers] == ["Dropout"]


def test_unknown_layer_name_to_ignore_is_an_error(tmp_path):
    CASES["custom rnn cell"][0]().save(tmp_path / "m.keras")
    with pytest.raises(ExportError, match="no layer named nope"):
        export_model(tmp_path / "m.keras", tmp_path / "m.onnx", validate=False, ignore_random_layers=["nope"],
                     trust_model_code=True)


def test_cli_refuses_in_one_line_and_exports_with_the_opt_out(tmp_path):
    # A stock layer, so the CLI loads it: an augmentation layer draws in training mode too.
    keras.Sequential([keras.Input((4, 4, 1)), layers.RandomFlip(name="flip"), layers.Flatten(), layers.Dropout(0.2),
                      layers.Dense(2, activation="softmax")]).save(tmp_path / "m.keras")
    out = tmp_path / "m.onnx"
    done = subprocess.run([sys.executable, "cli.py", "export", tmp_path / "m.keras", "-o", out], cwd=ROOT,
                          capture_output=True, text=True)
    assert done.returncode == 2 and "Traceback" not in done.stderr and not out.exists()
    assert [line for line in done.stderr.splitlines() if line.startswith("error: ")][0].count("flip") == 2
    done = subprocess.run([sys.executable, "cli.py", "export", tmp_path / "m.keras", "-o", out, "--deterministic",
                           "--ignore-random-layers", "flip"], cwd=ROOT, capture_output=True, text=True)
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
