"""Broken or unsupported models: every one stops the export with one line naming the cause, and
no file is written, with validation and with --no-validate."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import layers

pytest.importorskip("tf2onnx")

from mcdrop.export import build_graph, export_model  # noqa: E402
from test_lost_randomness import JitterNoise, NoisyCell  # noqa: E402
from mcdrop.runtime.errors import McdropError  # noqa: E402

pytestmark = pytest.mark.slow


@keras.saving.register_keras_serializable(package="refusals")
class Erfinv(layers.Layer):
    """An op tf2onnx leaves unconverted."""

    def call(self, x):
        return tf.math.erfinv(tf.clip_by_value(x, -0.5, 0.5))


@keras.saving.register_keras_serializable(package="refusals")
class TwiceDroppedAttention(layers.MultiHeadAttention):
    """Attention that applies its attention dropout twice: not Keras's semantics mcdrop keeps."""

    def _compute_attention(self, query, key, value, attention_mask=None, training=None, *args, **kwargs):
        super()._compute_attention(query, key, value, attention_mask, training, *args, **kwargs)
        return super()._compute_attention(query, key, value, attention_mask, training, *args, **kwargs)


def attention(kind=layers.MultiHeadAttention, **kwargs):
    inp = keras.Input((3, 4))
    x = kind(num_heads=2, key_dim=2, **kwargs)(inp, inp)
    return keras.Model(inp, layers.Dense(2, activation="softmax")(layers.Flatten()(x)))


class Subclassed(keras.Model):
    def __init__(self):
        super().__init__()
        self.dense, self.drop, self.out = layers.Dense(4), layers.Dropout(0.3), layers.Dense(2, activation="softmax")

    def call(self, x):
        return self.out(self.drop(self.dense(x)))


def mlp(*middle, head=None):
    return keras.Sequential([keras.Input((4,)), layers.Dense(4, activation="relu"), *middle,
                             head or layers.Dense(3, activation="softmax")])


def input_named_passes():
    a, b = keras.Input((4,), name="passes"), keras.Input((4,), name="meta")
    x = layers.Dropout(0.3)(layers.Concatenate()([a, b]))
    return keras.Model([a, b], layers.Dense(2, activation="softmax")(x))


def constant_output():
    model = mlp(layers.Dropout(0.3))
    last = model.layers[-1]
    last.set_weights([np.zeros_like(w) for w in last.get_weights()])
    return model


# name: (model builder, fragment of the one-line message, also refused under --no-validate)
CASES = {
    "custom random layer": (lambda: mlp(JitterNoise(name="jitter"), layers.Dropout(0.2)), "'jitter' (JitterNoise) draws random",
                            True),
    "custom rnn cell": (lambda: keras.Sequential([keras.Input((5, 3)), layers.RNN(NoisyCell(3), name="noisy_rnn"),
                                                  layers.Dense(2, activation="softmax")]), "(NoisyCell) draws random", True),
    "unconvertible op": (lambda: mlp(Erfinv(), layers.Dropout(0.2)), "Erfinv", True),
    "subclassed model": (Subclassed, "subclassed model", True),
    "input named passes": (input_named_passes, "'passes' cannot name a graph input", True),
    "no stochastic layer": (lambda: mlp(), "no active stochastic layer", True),
    "dropout rate 1": (lambda: mlp(layers.Dropout(1.0, name="all")), "drops everything", True),
    "softmax over one unit": (lambda: mlp(layers.Dropout(0.2), head=layers.Dense(1, activation="softmax")), "single unit", True),
    "ambiguous head": (lambda: mlp(layers.Dropout(0.2), head=layers.Dense(3)), "--head", True),
    "lambda layer": (lambda: mlp(layers.Lambda(lambda x: x * 2.0, name="twice"), layers.Dropout(0.2)), "Lambda layer", True),
    "constant output": (constant_output, "same for every input", False),
    # Found while TensorFlow traces: one line, not autograph's 'in user code:' trace.
    "attention dropout applied twice": (lambda: attention(TwiceDroppedAttention, dropout=0.2, name="twice_mha"), "'twice_mha' (TwiceDroppedAttention) applied its "
                                        "attention dropout 2 times", True),
    "attention dropout rate 1": (lambda: attention(dropout=1.0, name="all_mha"), "'all_mha' has rate 1.0", True),
}


# A constant output is a structurally sound file: only validation's runs can see it.
RUNS = [pytest.param(case, validate, id=f"{case}-{'validate' if validate else 'no-validate'}")
        for case in CASES for validate in (True, False) if validate or CASES[case][2]]


@pytest.mark.parametrize("case, validate", RUNS)
def test_broken_model_is_refused_in_one_line_and_writes_nothing(case, validate, tmp_path):
    build, message, _ = CASES[case]
    model = build()
    if isinstance(model, Subclassed):  # no .keras file holds it without a config: refused from Python
        model(np.zeros((1, 4), np.float32))
        with pytest.raises(McdropError, match=message):
            build_graph(model)
        return
    source = tmp_path / "m.keras"
    model.save(source)
    with pytest.raises(McdropError) as caught:
        export_model(source, tmp_path / "m.onnx", validate=validate, trust_model_code=case != "lambda layer")
    text = str(caught.value)
    assert message in text and "\n" not in text, text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.keras"]


CLI_LAYERS_FILE = """
import keras


@keras.saving.register_keras_serializable(package="refusals_cli")
class TwiceDroppedAttention(keras.layers.MultiHeadAttention):
    def _compute_attention(self, query, key, value, attention_mask=None, training=None, *args, **kwargs):
        super()._compute_attention(query, key, value, attention_mask, training, *args, **kwargs)
        return super()._compute_attention(query, key, value, attention_mask, training, *args, **kwargs)
"""

# name: (model builder taking the custom-objects module, whether --custom-objects names it, fragments of the one error line)
CLI_CASES = {
    # found while TensorFlow traces (autograph would wrap it in 'in user code:' and a trace)
    "attention dropout applied twice": (
        lambda module: attention(module.TwiceDroppedAttention, dropout=0.2, name="twice_mha"), True,
        ["'twice_mha' (TwiceDroppedAttention) applied its attention dropout 2 times", "--ignore-random-layers twice_mha"]),
    # found before tracing
    "augmentation layer": (
        lambda module: keras.Sequential([keras.Input((4, 4, 1)), layers.RandomFlip(name="flip"), layers.Flatten(),
                                         layers.Dropout(0.2), layers.Dense(2, activation="softmax")]), False,
        ["'flip' (RandomFlip) draws random", "--ignore-random-layers flip"]),
    "registered layer without its module": (
        lambda module: attention(module.TwiceDroppedAttention, dropout=0.2, name="twice_mha"), False,
        ["'twice_mha' (TwiceDroppedAttention)", "--custom-objects FILE.py"]),
    "attention dropout rate 1": (lambda module: attention(dropout=1.0, name="all_mha"), False, ["'all_mha' has rate 1.0"]),
}


@pytest.mark.parametrize("case", sorted(CLI_CASES))
def test_refusal_is_one_line_from_the_cli(case, tmp_path):
    import importlib.util
    import subprocess
    import sys

    from conftest import ROOT

    build, with_module, fragments = CLI_CASES[case]
    layer_file = tmp_path / "cli_layers.py"
    layer_file.write_text(CLI_LAYERS_FILE)
    spec = importlib.util.spec_from_file_location("refusals_cli_layers", layer_file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    build(module).save(tmp_path / "m.keras")
    done = subprocess.run([sys.executable, "cli.py", "export", tmp_path / "m.keras", "-o", tmp_path / "m.onnx",
                           *(["--custom-objects", layer_file] if with_module else [])], cwd=ROOT, capture_output=True,
                          text=True)
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert len(errors) == 1 and all(fragment in errors[0] for fragment in fragments), done.stderr
    assert "in user code" not in errors[0] and "\\x0a" not in errors[0] and "File \"" not in errors[0]
    assert not (tmp_path / "m.onnx").exists()


@pytest.mark.parametrize("name, message", [("no_such_package_here", "no Python file or installed package of that name"),
                                           ("json", "the package registers no Keras object")])
def test_custom_objects_package_that_cannot_load_anything_is_one_line(name, message, tmp_path):
    """--custom-objects takes an installed package (keras_hub: tests/test_export_attention.py)."""
    keras.Sequential([keras.Input((4,)), layers.Dropout(0.2), layers.Dense(2, activation="softmax")]).save(tmp_path / "m.keras")
    with pytest.raises(McdropError) as caught:
        export_model(tmp_path / "m.keras", tmp_path / "m.onnx", custom_objects=name)
    assert message in str(caught.value) and "\n" not in str(caught.value)
    assert not (tmp_path / "m.onnx").exists()
