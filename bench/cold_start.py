"""The Keras script a user would write for `python cli.py infer IMAGE`: the cold-start baseline.

    python bench/cold_start.py models/samples/digit_3.png [--model models/cnn.keras] [--passes 50]

Loads the Keras model, loads and preprocesses the PNG with Pillow as the shipped CNN expects
(grayscale 28x28, pixel / 255), runs the Monte Carlo passes in one batched call with dropout on
(training=True; the shipped models have no BatchNorm) and prints the label of the mean. bench/run.py
times this whole process against `cli.py infer` and `python -c "import tensorflow"`.
"""

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # before TensorFlow loads, as a user would


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("image")
    parser.add_argument("--model", default=os.path.join(os.path.dirname(__file__), "..", "models", "cnn.keras"))
    parser.add_argument("--passes", type=int, default=50)
    args = parser.parse_args()

    import keras
    import numpy as np
    from PIL import Image

    model = keras.models.load_model(args.model, compile=False)
    height, width, _ = model.inputs[0].shape[1:]
    with Image.open(args.image) as image:
        image = image.convert("L")
        if image.size != (width, height):
            image = image.resize((width, height), Image.Resampling.LANCZOS)
        x = np.asarray(image, dtype=np.float32)[None, :, :, None] / 255.0
    probabilities = model(np.repeat(x, args.passes, axis=0), training=True)
    print(int(np.argmax(np.mean(probabilities, axis=0))))


if __name__ == "__main__":
    main()
