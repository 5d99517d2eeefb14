"""The models issue 26's benchmarks run on, and the four kinds of inputs they are scored on.

- `cnn`, `mlp`: the shipped files (models/).
- `mobilenetv3small`: one Keras Applications model as a user deploys it for MC dropout: the
  MobileNetV3Small base (include_top=False, pooling="avg"), Dropout(0.3) and a 10-class softmax head,
  trained from scratch on the digits (weights=None: nothing can be downloaded here, and a base
  left at its initial weights gives every digit the same features). Built and exported once into
  bench/out/models/ (about 2 minutes on 2 cores; delete the folder to build it again); 94% accuracy
  on the held-out digits.

Inputs: held-out digits, the same rotated 90 degrees, uniform noise and blends of two digits, in
each model's input layout (the MobileNet takes the digit padded to 32x32, grey as RGB, 0-255).
"""

import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "models"))
sys.path.insert(0, str(ROOT / "tests"))

APPLICATION = "mobilenetv3small"
BUILT = ROOT / "bench" / "out" / "models"
NAMES = ("cnn", "mlp", APPLICATION)
EPOCHS = 15


def kinds(count: int, start: int = 0) -> dict:
    """name -> float32 [count, 28, 28, 1] in [0, 1], from held-out digit `start` on."""
    import build_models

    images, labels = build_models.digits_28x28()
    _, test, _, _ = build_models.split(images, labels)
    digits = (test[start:start + count] / 255.0).astype(np.float32)[..., None]
    rng = np.random.default_rng(start)
    other = digits[rng.permutation(len(digits))]
    return {"digits": digits, "rotated digits": np.rot90(digits, axes=(1, 2)).copy(),
            "noise": rng.random(digits.shape, dtype=np.float32),
            "blends of two digits": (0.5 * digits + 0.5 * other).astype(np.float32)}


def as_input(x: np.ndarray, shape) -> np.ndarray:
    """[n, 28, 28, 1] in [0, 1] -> the model's input layout `shape` (without the batch axis)."""
    shape = tuple(int(d) for d in shape)
    if shape == (32, 32, 3):
        padded = np.pad(x, ((0, 0), (2, 2), (2, 2), (0, 0)))
        return np.repeat(padded * 255.0, 3, axis=-1).astype(np.float32)
    return x.reshape(len(x), *shape).astype(np.float32)


def onnx_file(name: str) -> Path:
    """The model's mcdrop file (the Keras Applications one built on first use)."""
    if name in ("cnn", "mlp"):
        return ROOT / "models" / f"{name}.onnx"
    path = BUILT / f"{name}.onnx"
    if not path.exists():
        from mcdrop.export import export_model

        keras_model(name)
        export_model(BUILT / f"{name}.keras", path, seed=0, validate=False)  # parity: tests/test_applications.py
    return path


def keras_model(name: str):
    import keras

    if name in ("cnn", "mlp"):
        return keras.models.load_model(ROOT / "models" / f"{name}.keras", compile=False)
    path = BUILT / f"{name}.keras"
    if path.exists():
        return keras.models.load_model(path, compile=False)
    model = _application_trained_on_digits()
    BUILT.mkdir(parents=True, exist_ok=True)
    model.save(path)
    return model


def _application_trained_on_digits():
    import build_models
    import keras
    from keras import layers

    keras.utils.set_random_seed(0)
    base = keras.applications.MobileNetV3Small(include_top=False, weights=None, input_shape=(32, 32, 3),
                                               pooling="avg")
    for layer in base.layers:  # its 0.999 would leave the statistics near their initial values after 15 epochs
        if isinstance(layer, layers.BatchNormalization):
            layer.momentum = 0.9
    inp = keras.Input((32, 32, 3))
    x = layers.Dropout(0.3, name="head_dropout")(base(inp))
    model = keras.Model(inp, layers.Dense(10, activation="softmax", name="head")(x), name=APPLICATION)
    images, labels = build_models.digits_28x28()
    train, _, train_y, _ = build_models.split(images, labels)
    return build_models.train(model, as_input((train / 255.0).astype(np.float32)[..., None], (32, 32, 3)), train_y,
                              EPOCHS)
