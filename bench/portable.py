"""Portable files (issue 25) against the standard ones, on the shipped MLP and CNN at T=50.

For each file: its size, the mask bytes a call feeds, the nodes NNAPI and Core ML MLProgram would
take per onnxruntime's mobile usability check (convert/accelerators.py), and the time of one run
in a default onnxruntime CPU session (masks prebuilt and fed, the same mask seed) as a ratio to the
standard file's shared-mode run of the same batch, timed side by side in interleaved rounds.

    python bench/portable.py            (about 3 min on 2 shared cores)
"""

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
from mcdrop.runtime import masks as mask_sets  # noqa: E402
from mcdrop.runtime.portable_masks import keep_masks  # noqa: E402
from mcdrop.runtime.session import MCSession  # noqa: E402

PASSES = 50
SEED = 0
ROUNDS = 15


def session(path):
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


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
            timed = {}
            for label, (path, batch, extra) in variants.items():
                s = session(path)
                feeds = ({"input": x[:batch], "stochastic": np.array(True), **extra},
                         {"input": x[:batch], "passes": np.array(PASSES, np.int64), "stochastic": np.array(True),
                          "masks": floats})
                got = s.run(["samples"], feeds[0])[0]
                want = reference.run(["samples"], feeds[1])[0]
                gap = float(np.max(np.abs(got - want)))
                times = {"portable": [], "standard": []}
                for _ in range(ROUNDS):  # interleaved: a slow spell weighs on both alike
                    for which, (runner, feed) in (("portable", (s, feeds[0])), ("standard", (reference, feeds[1]))):
                        start = time.perf_counter()
                        runner.run(["samples"], feed)
                        times[which].append(time.perf_counter() - start)
                timed[label] = (statistics.median(times["portable"]), statistics.median(times["standard"]), gap)
                coverage = mobile_coverage(path)
                rows.append((name, label, path.stat().st_size, sum(v.nbytes for v in extra.values()),
                             coverage["NNAPI"], coverage["CoreML MLProgram"], *timed[label]))
            coverage = mobile_coverage(standard)
            rows.insert(len(rows) - 3, (name, "standard", standard.stat().st_size, floats.nbytes, coverage["NNAPI"],
                                        coverage["CoreML MLProgram"], None, None, 0.0))
    print(f"T={PASSES}, mask seed {SEED}, onnxruntime {ort.__version__} CPU, default session, median of {ROUNDS}")
    print("| model | file | size (MB) | mask bytes per call | NNAPI (checker) | Core ML MLProgram (checker) "
          "| ms per run | ms standard, same batch | ratio | max gap to standard |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, label, size, mask_bytes, nnapi, coreml, mine, theirs, gap in rows:
        timing = "| - | - | - " if mine is None else f"| {mine * 1e3:.1f} | {theirs * 1e3:.1f} | {mine / theirs:.2f} "
        print(f"| {name} | {label} | {size / 1e6:.1f} | {mask_bytes:,} | {nnapi} | {coreml} {timing}| {gap:.1e} |")


if __name__ == "__main__":
    main()
