"""Portable files (issue 25) against the standard ones, on the shipped MLP and CNN at T=50.

For each file: its size, the mask bytes a call feeds, the nodes NNAPI and Core ML MLProgram would
take per onnxruntime's mobile usability check (convert/accelerators.py), and the time of one run
in a default onnxruntime CPU session (masks prebuilt and fed, the same mask seed) as a ratio to the
standard file's shared-mode run of the same batch, timed side by side in interleaved rounds; in
the same rounds, the same portable file on OpenVINO (runtime/openvino_engine.py, f32) and its
LiteRT twin (export/litert.py: the .tflite file of the same Keras model, T and masks; XNNPACK)
fed the same masks, as ratios to onnxruntime's run of the portable file, with their largest gap
to it. OpenVINO and LiteRT columns read "-" where the package (or TensorFlow, which builds the
.tflite files) is missing.

    python bench/portable.py            (about 6 min on 2 shared cores)
"""

import importlib.util
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT.parent))  # the checkout is the mcdrop package

from mcdrop.convert import convert_file  # noqa: E402
from mcdrop.convert.accelerators import mobile_coverage  # noqa: E402
from mcdrop.runtime.format import mask_sets  # noqa: E402
from mcdrop.runtime.portable_masks import keep_masks  # noqa: E402
from mcdrop.runtime.session import MCSession  # noqa: E402

PASSES = 50
SEED = 0
ROUNDS = 15
SLOW_ROUNDS = 5  # for runs over SLOW_RUN_S (the CNN at B=32: 4 runtimes x 3.5 s a round)
SLOW_RUN_S = 1.0


def session(path):
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def litert_twins(name, standard, folder):
    """{"fed": LiteRT session, "baked": LiteRT session} of the .tflite files of models/NAME.keras
    with the portable metadata of T=PASSES (fed masks; baked with SEED); {} without TensorFlow or LiteRT."""
    if not all(importlib.util.find_spec(package) for package in ("tensorflow", "ai_edge_litert")):
        return {}
    from mcdrop.export import load_keras_model
    from mcdrop.export.litert import tflite_bytes
    from mcdrop.runtime.litert_engine import create_session

    model = load_keras_model(ROOT / "models" / f"{name}.keras")
    twins = {}
    for kind, bake in (("fed", None), ("baked", SEED)):
        path = Path(folder) / f"{name}_{kind}_any.onnx"
        convert_file(standard, path, passes=PASSES, bake_masks=bake, validate=False)
        data, _ = tflite_bytes(model, MCSession(path).info.metadata, bake)
        twins[kind] = create_session(data, f"{name}_{kind}.tflite", os.cpu_count())
        twins[kind + "_bytes"] = len(data)
    return twins


def openvino_session(path):
    if importlib.util.find_spec("openvino") is None:
        return None
    from mcdrop.runtime.openvino_engine import create_session

    return create_session(path.read_bytes(), "openvino", str(path))


def main():
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for name in ("mlp", "cnn"):
            standard = ROOT / "models" / f"{name}.onnx"
            info = MCSession(standard).info
            layout = info.mask_layout
            rates = [layer.rate for layer in info.stochastic_layers]
            floats = mask_sets.draw(layout, SEED, 0, PASSES)
            kept = keep_masks(layout, rates, SEED, 0, PASSES)
            variants = {}
            for batch in (1, 32):
                path = Path(folder) / f"{name}_b{batch}.onnx"
                convert_file(standard, path, batch_size=batch, passes=PASSES, validate=False)
                variants[f"portable B={batch}"] = (path, batch, {"masks": kept})
            path = Path(folder) / f"{name}_baked.onnx"
            convert_file(standard, path, batch_size=1, passes=PASSES, bake_masks=SEED, validate=False)
            variants["portable baked B=1"] = (path, 1, {})
            x = np.random.default_rng(0).random((32, *info.input_shape[1:]), dtype=np.float32)
            reference = session(standard)
            twins = litert_twins(name, standard, folder)
            timed = {}
            for label, (path, batch, extra) in variants.items():
                s = session(path)
                feeds = ({"input": x[:batch], "stochastic": np.array(True), **extra},
                         {"input": x[:batch], "passes": np.array(PASSES, np.int64), "stochastic": np.array(True),
                          "masks": floats})
                runners = {"portable": (s, feeds[0]), "standard": (reference, feeds[1])}
                engine = openvino_session(path)
                if engine is not None:
                    runners["openvino"] = (engine, feeds[0])
                if twins:
                    runners["litert"] = (twins["baked" if "baked" in label else "fed"], feeds[0])
                got = s.run(["samples"], feeds[0])[0]
                want = reference.run(["samples"], feeds[1])[0]
                gaps = {"standard": float(np.max(np.abs(got - want)))}
                for which in ("openvino", "litert"):
                    if which in runners:
                        runner, feed = runners[which]
                        gaps[which] = float(np.max(np.abs(runner.run(["samples"], feed)[0] - got)))
                times = {which: [] for which in runners}
                rounds = ROUNDS
                for done in range(ROUNDS):  # interleaved: a slow spell weighs on all alike
                    for which, (runner, feed) in runners.items():
                        start = time.perf_counter()
                        runner.run(["samples"], feed)
                        times[which].append(time.perf_counter() - start)
                    if done + 1 == SLOW_ROUNDS and max(times["standard"]) > SLOW_RUN_S:
                        rounds = SLOW_ROUNDS
                        break
                timed[label] = ({which: statistics.median(found) for which, found in times.items()}, gaps, rounds)
                coverage = mobile_coverage(path)
                rows.append((name, label, path.stat().st_size, sum(v.nbytes for v in extra.values()),
                             coverage["NNAPI"], coverage["CoreML MLProgram"], *timed[label]))
            coverage = mobile_coverage(standard)
            rows.insert(len(rows) - 3, (name, "standard", standard.stat().st_size, floats.nbytes, coverage["NNAPI"],
                                        coverage["CoreML MLProgram"], None, {"standard": 0.0}, None))
            if twins:
                print(f"{name}: .tflite {twins['fed_bytes'] / 1e6:.1f} MB, baked {twins['baked_bytes'] / 1e6:.1f} MB")
    print(f"T={PASSES}, mask seed {SEED}, onnxruntime {ort.__version__} CPU, default sessions, median of {ROUNDS} "
          f"({SLOW_ROUNDS} where a run takes over {SLOW_RUN_S:g} s)")
    print("| model | file | size (MB) | mask bytes per call | NNAPI (checker) | Core ML MLProgram (checker) "
          "| onnxruntime ms | ms standard, same batch | ratio | OpenVINO ms (ratio) | LiteRT ms (ratio) "
          "| max gap: standard, OpenVINO, LiteRT |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name, label, size, mask_bytes, nnapi, coreml, medians, gaps, _ in rows:
        if medians is None:
            timing = "| - | - | - | - | - "
        else:
            mine = medians["portable"]
            timing = f"| {mine * 1e3:.1f} | {medians['standard'] * 1e3:.1f} | {mine / medians['standard']:.2f} "
            for which in ("openvino", "litert"):
                timing += (f"| {medians[which] * 1e3:.1f} ({medians[which] / mine:.2f}) " if which in medians
                           else "| - ")
        shown = ", ".join(f"{gaps[which]:.0e}" if which in gaps else "-" for which in ("standard", "openvino", "litert"))
        print(f"| {name} | {label} | {size / 1e6:.1f} | {mask_bytes:,} | {nnapi} | {coreml} {timing}| {shown} |")


if __name__ == "__main__":
    main()
