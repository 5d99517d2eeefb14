"""Portable files on an NVIDIA GPU (issue 25 item 6): parity and timing on onnxruntime's CUDA and
TensorRT execution providers, against the CPU provider, in one go.

For the shipped MLP and CNN converted with `--portable` (B=1 and B=32, T=50), each provider runs
the file with the same keep masks fed (mask seed 0); the table gives the largest gap of its samples
to the CPU provider's and the median ms per run (after warm-up runs; TensorRT builds its engine
in the first). Without a GPU (CUDA does not start) it says so and exits 0 at once; a provider that
does not start on a GPU machine gets a row saying why.

    python bench/gpu_portable.py        (a few minutes where TensorRT builds its engines)
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
from mcdrop.runtime.portable_masks import keep_masks  # noqa: E402
from mcdrop.runtime.providers import quiet_stderr  # noqa: E402
from mcdrop.runtime.session import MCSession  # noqa: E402

PASSES = 50
SEED = 0
WARMUP, REPEATS = 3, 20
PROVIDERS = {"CPU": ["CPUExecutionProvider"], "CUDA": ["CUDAExecutionProvider"],
             "TensorRT": [("TensorrtExecutionProvider", {"trt_fp16_enable": False}), "CUDAExecutionProvider"]}


def start(path, providers):
    """A session that really runs on the first provider asked for, or None and why not."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:
        with quiet_stderr():  # onnxruntime prints a missing CUDA's warnings straight to fd 2
            session = ort.InferenceSession(str(path), options, providers=providers)
    except Exception as err:  # noqa: BLE001 (a provider that cannot start raises many types)
        return None, str(err).splitlines()[0][:80]
    wanted = providers[0][0] if isinstance(providers[0], tuple) else providers[0]
    if session.get_providers()[0] != wanted:
        return None, f"fell back to {session.get_providers()[0]}"
    return session, ""


def main():
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        probe = Path(folder) / "probe.onnx"
        convert_file(ROOT / "models" / "mlp.onnx", probe, batch_size=1, passes=1, validate=False)
        _, why = start(probe, PROVIDERS["CUDA"])
        if why:
            print(f"skipped: no GPU here (CUDA: {why})")
            return
        for name in ("mlp", "cnn"):
            standard = ROOT / "models" / f"{name}.onnx"
            info = MCSession(standard).info
            kept = keep_masks(info.mask_layout, [layer.rate for layer in info.stochastic_layers], SEED, 0, PASSES)
            x = np.random.default_rng(0).random((32, *info.input_shape[1:]), dtype=np.float32)
            for batch in (1, 32):
                path = Path(folder) / f"{name}_b{batch}.onnx"
                convert_file(standard, path, batch_size=batch, passes=PASSES, validate=False)
                feed = {"input": x[:batch], "stochastic": np.array(True), "masks": kept}
                reference = None
                for label, providers in PROVIDERS.items():
                    session, why = start(path, providers)
                    if session is None:
                        rows.append((name, batch, label, why, None, None))
                        continue
                    for _ in range(WARMUP):
                        samples = session.run(["samples"], feed)[0]
                    times = []
                    for _ in range(REPEATS):
                        began = time.perf_counter()
                        session.run(["samples"], feed)
                        times.append(time.perf_counter() - began)
                    reference = samples if reference is None else reference
                    rows.append((name, batch, label, "", float(np.max(np.abs(samples - reference))),
                                 statistics.median(times)))
    print(f"portable files, T={PASSES}, mask seed {SEED}, onnxruntime {ort.__version__}, median of {REPEATS}")
    print("| model | B | provider | max gap to CPU | ms per run | ratio to CPU |")
    print("|---|---|---|---|---|---|")
    cpu = {(n, b): t for n, b, label, _, _, t in rows if label == "CPU"}
    for name, batch, label, why, gap, seconds in rows:
        if seconds is None:
            print(f"| {name} | {batch} | {label} | not run: {why} | - | - |")
        else:
            print(f"| {name} | {batch} | {label} | {gap:.1e} | {seconds * 1e3:.2f} | {seconds / cpu[name, batch]:.2f} |")


if __name__ == "__main__":
    main()
