"""Shared and independent mask sets against batched Keras, in one process run (issue 12's targets).

    python bench/mask_sets.py            # prints a markdown table
    python bench/mask_sets.py --quick    # shorter timing budget

For each case, on the same inputs (uniform [0, 1) images, fixed seed), in interleaved rounds
(bench/run.py's interleaved_ms): Keras batched (one tf.function tiling the batch T times, dropout
independent per input as users run it), mcdrop predict with shared masks (one set of T sampled
networks, kept between calls) and with independent masks (drawn inside onnxruntime, as before
mask sets). Then the FLOP rate of the shared path against onnxruntime's MatMul rate measured in the
same run, and the int8 file's held-out accuracy in shared mode against the float file's.
"""

import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import run as harness  # noqa: E402  (bench/run.py: timing, work counts, MatMul ceiling)

# (file, Keras model, T, batch, target: mcdrop shared / Keras batched at most)
CASES = (("cnn", "cnn", 50, 1, 0.6), ("cnn", "cnn", 50, 32, 0.5), ("mlp", "mlp", 100, 1, 0.4),
         ("mlp", "mlp", 100, 32, 0.3), ("cnn_int8", "cnn", 50, 32, 0.35))
FLOP_CASE = ("cnn", 50, 32)
FLOP_TARGET = 1.3  # shared time / (its FLOPs at the MatMul rate)
ACCURACY_POINTS = 0.5
MASK_SEED = 0


def main():
    budget, minimum = harness.timing_args(__doc__.splitlines()[0])

    import keras
    import tensorflow as tf

    from mcdrop.runtime import MCSession

    print(harness.machine_line() + "\n")
    rng = np.random.default_rng(0)
    keras_models = {name: keras.models.load_model(ROOT / "models" / f"{name}.keras", compile=False)
                    for name in ("mlp", "cnn")}
    batched = {name: harness.keras_batched(model) for name, model in keras_models.items()}
    sessions = {name: MCSession(ROOT / "models" / f"{name}.onnx", seed=0) for name in ("mlp", "cnn", "cnn_int8")}
    rows, measured = [], {}
    for file, source, passes, batch, target in CASES:
        x = rng.random((batch, *keras_models[source].inputs[0].shape[1:]), dtype=np.float32)
        session, mc = sessions[file], batched[source]
        times = harness.interleaved_ms({
            "keras": lambda: [v.numpy() for v in mc(x, tf.constant(passes))],
            "shared": lambda: session.predict(x, passes=passes, masks="shared", mask_seed=MASK_SEED),
            "independent": lambda: session.predict(x, passes=passes, masks="independent"),
        }, budget, minimum)
        measured[file, passes, batch] = times
        ratio = times["shared"] / times["keras"]
        rows.append([file, passes, batch, harness.ms(times["keras"]), harness.ms(times["shared"]),
                     harness.ms(times["independent"]), f"{ratio:.2f}", f"{times['independent'] / times['keras']:.2f}",
                     f"<= {target}", "yes" if ratio <= target else "no"])
    print("## Milliseconds per call (median), mcdrop predict in both mask modes\n")
    harness.table(["file", "T", "batch", "Keras batched", "mcdrop shared", "mcdrop independent",
                   "shared / Keras", "independent / Keras", "target", "met"], rows)

    ceiling = harness.matmul_gflops(2048, budget, minimum)
    file, passes, batch = FLOP_CASE
    before, after, _ = harness.work(keras_models[file])
    gflop = (batch * before + passes * batch * after) / 1e9
    shared_ms = measured[file, passes, batch]["shared"]
    at_ceiling_ms = gflop / ceiling * 1e3
    print(f"## FLOP rate ({file}, T={passes}, batch {batch}, shared masks)\n")
    print(f"{gflop:.1f} GFLOP per call (Dense and Conv multiply-adds x 2; the layers before the first dropout on "
          f"the batch once): **{gflop / (shared_ms * 1e-3):.0f} GFLOP/s** in mcdrop predict; onnxruntime MatMul "
          f"2048x2048 in this run: **{ceiling:.0f} GFLOP/s**, so those FLOPs take {at_ceiling_ms:.0f} ms at the "
          f"MatMul rate. mcdrop / MatMul-rate time: **{shared_ms / at_ceiling_ms:.2f}** (target <= {FLOP_TARGET}).\n")

    sys.path.insert(0, str(ROOT / "models"))
    import build_models

    images, labels = build_models.digits_28x28()
    _, test_img, _, test_y = build_models.split(images, labels)
    x = build_models.to_input(test_img, flat=False)
    accuracy = {name: float((sessions[name].predict(x, passes=50, masks="shared", mask_seed=MASK_SEED)
                             .mean.argmax(-1) == test_y).mean()) for name in ("cnn", "cnn_int8")}
    gap = (accuracy["cnn_int8"] - accuracy["cnn"]) * 100
    print(f"## int8 accuracy (held-out digits, {len(test_y)} images, MC mean of T=50, shared masks, seed {MASK_SEED})\n")
    print(f"float {accuracy['cnn']:.2%}, int8 {accuracy['cnn_int8']:.2%} ({gap:+.2f} points; target within "
          f"{ACCURACY_POINTS}: {'yes' if abs(gap) <= ACCURACY_POINTS else 'no'}).")


if __name__ == "__main__":
    main()
