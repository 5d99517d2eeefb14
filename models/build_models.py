"""Reproduce the shipped models: train, export, measure, write the model card and the samples.

    python models/build_models.py               # train, export, measure
    python models/build_models.py --export-only # re-export the saved .keras files, measure

Data: scikit-learn's bundled handwritten digits (1797 images, 8x8, 17 grey levels), upscaled to
28x28 grayscale in [0, 1]; nothing is downloaded. Training is seeded; on a 2-core CPU the whole
script takes a few minutes.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

SIZE = 28
SEED = 0
PASSES = 50
LABELS = [str(d) for d in range(10)]


def digits_28x28():
    """Images as uint8 0-255 (28x28, ink bright as in MNIST) and labels."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    small = (digits.images * (255.0 / 16.0)).round().astype(np.uint8)
    big = np.stack([np.asarray(Image.fromarray(img).resize((SIZE, SIZE), Image.BICUBIC)) for img in small])
    return big, digits.target.astype(np.int64)


def split(images, labels):
    from sklearn.model_selection import train_test_split

    return train_test_split(images, labels, test_size=0.25, random_state=SEED, stratify=labels)


def mlp():
    import keras
    from keras import layers

    return keras.Sequential(
        [
            keras.Input((SIZE * SIZE,)),
            layers.Dense(512, activation="relu"),
            layers.Dropout(0.2),
            layers.Dense(512, activation="relu"),
            layers.Dropout(0.2),
            layers.Dense(10, activation="softmax"),
        ],
        name="digits_mlp",
    )


def cnn():
    import keras
    from keras import layers

    return keras.Sequential(
        [
            keras.Input((SIZE, SIZE, 1)),
            layers.Conv2D(128, 7, activation="relu"),
            layers.Dropout(0.2),
            layers.Conv2D(64, 3, activation="relu"),
            layers.Dropout(0.2),
            layers.Flatten(),
            layers.Dense(64, activation="relu"),
            layers.Dropout(0.25),
            layers.Dense(10, activation="softmax"),
        ],
        name="digits_cnn",
    )


def train(model, x, y, epochs):
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x, y, epochs=epochs, batch_size=32, verbose=0, validation_split=0.1)
    return model


def to_input(images, flat):
    x = images.astype(np.float32) / 255.0
    return x.reshape(len(x), -1) if flat else x[..., None]


def not_a_digit():
    """Random 8x8 blocks upscaled like the data: no digit, but the same smoothness and range."""
    rng = np.random.default_rng(7)
    img = (rng.random((8, 8)) * 255).astype(np.uint8)
    return np.asarray(Image.fromarray(img).resize((SIZE, SIZE), Image.BICUBIC))


def export_int8(train_img, test_img, test_y):
    """cnn_int8.onnx, calibrated on 256 training images; its accuracy and drift from the float file."""
    import tempfile

    from export import export_model
    from runtime import MCSession

    with tempfile.TemporaryDirectory() as tmp:
        calibration = Path(tmp) / "digits_train_256.npy"
        np.save(calibration, to_input(train_img[:256], False))
        report = export_model(
            HERE / "cnn.keras", HERE / "cnn_int8.onnx", passes=PASSES, labels=HERE / "labels.txt", seed=SEED,
            quantize="int8", calibration=calibration, progress=print,
        )
    print("\n".join(report.lines()))
    x_test = to_input(test_img, False)
    int8 = MCSession(HERE / "cnn_int8.onnx", seed=SEED)
    deterministic = int8.predict(x_test, dropout=False).mean.argmax(-1)
    mc = int8.predict(x_test, passes=PASSES)
    return {
        "int8_deterministic_accuracy": float((deterministic == test_y).mean()),
        "mcdrop_mc_accuracy": float((mc.mean.argmax(-1) == test_y).mean()),
        "held_out_images": int(len(test_y)),
        "passes": PASSES,
        "mean_mutual_information_nats": float(mc.measures["mutual_information"].mean()),
        "drift_from_float_on_validation_inputs": report.drift,
    }


def main(retrain=True):
    import keras

    from export import export_model
    from runtime import MCSession

    images, labels = digits_28x28()
    train_img, test_img, train_y, test_y = split(images, labels)
    card = {}
    (HERE / "labels.txt").write_text("\n".join(LABELS) + "\n")

    for name, build, flat, epochs in (("mlp", mlp, True, 30), ("cnn", cnn, False, 20)):
        keras_path = HERE / f"{name}.keras"
        if retrain:
            keras.backend.clear_session()  # layer names restart at dropout, dropout_1, ...
            keras.utils.set_random_seed(SEED)  # each model reproducible on its own
            trained = train(build(), to_input(train_img, flat), train_y, epochs)
            keras.backend.clear_session()
            model = build()  # a clean copy: the file carries weights, not the optimizer's state
            model.set_weights(trained.get_weights())
            model.save(keras_path)
        model = keras.models.load_model(keras_path, compile=False)
        onnx_path = HERE / f"{name}.onnx"
        flags = {"image_size": (SIZE, SIZE)} if flat else {}
        report = export_model(keras_path, onnx_path, passes=PASSES, labels=HERE / "labels.txt", seed=SEED, progress=print, **flags)
        print("\n".join(report.lines()))

        x_test = to_input(test_img, flat)
        deterministic = np.asarray(model(x_test, training=False)).argmax(-1)
        prediction = MCSession(onnx_path, seed=SEED).predict(x_test, passes=PASSES)
        card[name] = {
            "keras_deterministic_accuracy": float((deterministic == test_y).mean()),
            "mcdrop_mc_accuracy": float((prediction.mean.argmax(-1) == test_y).mean()),
            "held_out_images": int(len(test_y)),
            "passes": PASSES,
            "mean_mutual_information_nats": float(prediction.measures["mutual_information"].mean()),
        }

    card["cnn_int8"] = export_int8(train_img, test_img, test_y)

    samples = HERE / "samples"
    samples.mkdir(exist_ok=True)
    # Clear digits: the first held-out image of a few classes. Ambiguous: the held-out image the
    # shipped CNN is least sure of (highest predictive entropy).
    for digit in (3, 7, 8):
        Image.fromarray(test_img[np.flatnonzero(test_y == digit)[0]]).save(samples / f"digit_{digit}.png")
    session = MCSession(HERE / "cnn.onnx", seed=SEED)
    entropy = session.predict(to_input(test_img, False), passes=PASSES).measures["predictive_entropy"]
    worst = int(np.argmax(entropy))
    Image.fromarray(test_img[worst]).save(samples / "ambiguous.png")
    Image.fromarray(not_a_digit()).save(samples / "not_a_digit.png")
    card["samples"] = {"ambiguous_true_label": int(test_y[worst])}

    (HERE / "model_card.json").write_text(json.dumps(card, indent=2) + "\n")
    write_model_card(card)
    print(json.dumps(card, indent=2))


def write_model_card(card):
    """MODEL_CARD.md from the figures this run measured (model_card.json)."""
    rows = "\n".join(
        f"| `{name}` | {card[name]['keras_deterministic_accuracy']:.2%} | {card[name]['mcdrop_mc_accuracy']:.2%} "
        f"| {card[name]['mean_mutual_information_nats']:.3f} |"
        for name in ("mlp", "cnn")
    )
    q = card["cnn_int8"]
    rows += (
        f"\n| `cnn_int8` | {q['int8_deterministic_accuracy']:.2%} (int8 graph, dropout off) | {q['mcdrop_mc_accuracy']:.2%} "
        f"| {q['mean_mutual_information_nats']:.3f} |"
    )
    n = card["cnn"]["held_out_images"]
    (HERE / "MODEL_CARD.md").write_text(
        f"""# Shipped models: digits MLP and CNN

Written by `models/build_models.py` from the figures it measured; do not edit by hand.

**Data.** scikit-learn's bundled handwritten digits (1797 images, 8x8, 17 grey levels), upscaled
to 28x28 with a bicubic filter, ink bright on black, scaled to [0, 1]. Stratified split, 25%
held out ({n} images), seed {SEED}. No augmentation.

**Models.** The two models from the Keras questions this project grew from:
- `mlp`: 784 -> Dense 512 relu -> Dropout 0.2 -> Dense 512 relu -> Dropout 0.2 -> Dense 10 softmax
  (30 epochs). Its input is the flattened image; the file's metadata says so.
- `cnn`: Conv2D 128 7x7 relu -> Dropout 0.2 -> Conv2D 64 3x3 relu -> Dropout 0.2 -> Flatten ->
  Dense 64 relu -> Dropout 0.25 -> Dense 10 softmax (20 epochs).
Adam, batch 32, 10% of the training part for validation.

**Held-out accuracy** ({n} images; MC = argmax of the mean of {PASSES} passes run by `runtime/`):

| model | Keras, dropout off | mcdrop MC mean | mean mutual information (nats) |
|---|---|---|---|
{rows}

`cnn_int8.onnx` is `cnn.keras` exported with `--quantize int8`: Conv, MatMul and Gemm in int8
(static QDQ, per-channel weights, calibrated on 256 training images); the random masks and the
uncertainty tail stay float32. Its largest deviation from the float file on validation inputs:
deterministic {card['cnn_int8']['drift_from_float_on_validation_inputs']['deterministic']:.3f},
MC mean {card['cnn_int8']['drift_from_float_on_validation_inputs']['mc_mean']:.3f},
MC variance {card['cnn_int8']['drift_from_float_on_validation_inputs']['mc_variance']:.3f} (probabilities).
It is never the default.

**Limits.** 8x8 source images carry little detail: the models know centred, bright-on-dark,
digit-sized strokes only. A dark-on-white photo must be inverted first. The mutual information
of an input unlike the data (`samples/not_a_digit.png`) is high, but MC dropout is no
guarantee of detecting every out-of-distribution input.

**Samples** (`samples/`): `digit_3.png`, `digit_7.png`, `digit_8.png` are the first held-out
image of their class; `ambiguous.png` is the held-out image the CNN is least sure of (true label
{card['samples']['ambiguous_true_label']}); `not_a_digit.png` is random 8x8 blocks upscaled the same way.
"""
    )


if __name__ == "__main__":
    main(retrain="--export-only" not in sys.argv[1:])
