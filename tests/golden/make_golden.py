"""Writes tests/golden/digits.json: golden vectors for the Python, Node and browser tests.

For each shipped sample (models/samples/*.png): the model input the Python runtime makes of it
(runtime.input_files.load_inputs), and for each shipped model the deterministic pass's mean (passes 1,
stochastic false) as the Python runtime computes it on this machine. Run it again after the
models are exported again:

    .venv/bin/python tests/golden/make_golden.py

Readers compare with the tolerances the file states: other CPUs' instruction sets round float
sums differently, so the recorded means hold to 1e-4; the int8 model's to a few quantization steps
(tests/js_support.py int8_mean_tolerance, derived from the file). Comparing two runtimes live, on
one machine, is tighter (tests/test_node_example.py: 1e-5).
"""

import hashlib
import json
import platform
import re
import sys
from datetime import date
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from mcdrop.runtime.input_files import load_inputs  # noqa: E402
from mcdrop.runtime.session import MCSession  # noqa: E402

sys.path.insert(0, str(ROOT / "tests"))
from js_support import INT8_STEPS, int8_mean_tolerance  # noqa: E402

OUT = Path(__file__).resolve().parent / "digits.json"
SAMPLES = "models/samples"
MODELS = ("models/cnn.onnx", "models/mlp.onnx", "models/cnn_int8.onnx")
INPUT_MODEL = "models/cnn.onnx"  # its input shape is the one recorded; the MLP takes the same values flat
INT8_MODEL = "models/cnn_int8.onnx"
# A label can change only where the top-2 margin is under twice what each probability may move.
TOLERANCES = {
    "input": 1e-6,
    "mean": 1e-4,
    "mean_int8": int8_mean_tolerance(ROOT / INT8_MODEL),
}
TOLERANCES["int8_same_label_margin"] = 2 * TOLERANCES["mean_int8"]
NOTE = ("Golden vectors for the JavaScript examples and their tests; written by tests/golden/make_golden.py, run it "
        "again after the models are exported again (each model's sha256 tells a reader that the file it has is "
        "the one recorded). input: the model input of each sample as runtime.input_files.load_inputs makes it, float32, "
        "of input_shape (models/mlp.onnx takes the same values flat, row by row): readers match it to "
        "tolerances.input (the same float32 operations give the same bits). means: the deterministic pass (passes 1, "
        "stochastic false) of each model, as the Python runtime computed it on `machine`; readers on other machines "
        "match it to tolerances.mean, because other CPUs' instruction sets round float sums differently, and the int8 "
        "model to tolerances.mean_int8, with the same top label wherever the recorded top-2 margin exceeds "
        "tolerances.int8_same_label_margin. Live comparisons of two runtimes on one machine are tighter (1e-5). "
        f"mean_int8 is derived from the int8 file, not measured: {INT8_STEPS} steps of its last quantized tensor "
        "(a requantization tie may round either way on another CPU; its 7-bit weights make the integer sums "
        "exact everywhere), times the float head's largest |weight|, halved by the softmax (tests/js_support.py "
        "int8_mean_tolerance). onnxruntime-web runs the int8 model's QuantizeLinear/DequantizeLinear pairs "
        "unfused, as float operations, which give the same sums.")


def short(value) -> float:
    """A float32 as the shortest decimal that reads back to the same float32."""
    return float(np.format_float_positional(np.float32(value), unique=True, trim="0"))


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import onnxruntime

    return f"{cpu}, {platform.system()} {platform.machine()}, onnxruntime {onnxruntime.__version__} (Python)"


def main() -> None:
    samples = sorted((ROOT / SAMPLES).glob("*.png"))
    paths = [str(path.relative_to(ROOT)) for path in samples]
    sessions = {name: MCSession(ROOT / name, seed=0) for name in MODELS}
    _, x = load_inputs([str(path) for path in samples], sessions[INPUT_MODEL].info)
    means = {}
    for name, session in sessions.items():
        batch = x.reshape((len(x), *[d for d in session.info.input_shape[1:]]))
        means[name] = session.predict(batch, dropout=False).mean
    document = {
        "note": NOTE,
        "machine": machine(),
        "written": date.today().isoformat(),
        "tolerances": TOLERANCES,
        "models": {name: {"sha256": sha256(ROOT / name)} for name in MODELS},
        "input_model": INPUT_MODEL,
        "samples": [{
            "path": path,
            "input_shape": [1, *x.shape[1:]],
            "input": [short(v) for v in x[i].ravel()],
            "means": {name: [short(v) for v in means[name][i]] for name in MODELS},
        } for i, path in enumerate(paths)],
    }
    text = json.dumps(document, indent=1)
    # A list of numbers on one line: the file stays readable and its diffs small.
    text = re.sub(r"\[[-0-9.e,\s]+\]", lambda m: "[" + ", ".join(m.group(0)[1:-1].split()).replace(",,", ",") + "]", text)
    OUT.write_text(text + "\n")
    print(f"wrote {OUT.relative_to(ROOT)}: {len(paths)} samples, {len(MODELS)} models")


if __name__ == "__main__":
    main()
