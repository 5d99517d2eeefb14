"""What the JavaScript example tests share (tests/test_node_example.py, tests/test_web_example.py):
finding node and examples/node_modules, the golden vectors, running a Node script, and the
Monte Carlo agreement check.

Without node or without `npm ci` in examples/ the tests skip, saying why; with
MCDROP_REQUIRE_EXAMPLES=1 (CI that installed them) they fail instead, so a broken install cannot
pass as skipped.
"""

import json
import os
import shutil
import subprocess
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import numpy as np
import pytest

from mcdrop.runtime.randomness_checks import z_scores

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
NODE_MODULES = EXAMPLES / "node_modules"
INFER_JS = EXAMPLES / "node" / "infer.js"
GOLDEN = ROOT / "tests" / "golden" / "digits.json"
REQUIRE = "MCDROP_REQUIRE_EXAMPLES"
NODE_TIMEOUT = 120  # seconds; a T=1000 run of the shipped CNN takes about 2
# The deterministic pass of Node or the browser against the Python runtime on one machine: the
# same float kernels, so only summation order differs.
LIVE_ATOL = 1e-5
# int8 means across CPUs and runtimes (models/cnn_int8.onnx): its weights are 7-bit, so no int8
# kernel saturates and every CPU (AVX2, AVX-512 VNNI, NEON) computes the same integer sums
# (docs/DESIGN.md: int8). What may still differ is the float rounding where a sum is requantized: an
# activation on a rounding tie moves one step. int8_mean_tolerance allows INT8_STEPS such steps.
INT8_STEPS = 2


def int8_mean_tolerance(path) -> float:
    """How far an int8 file's probabilities may move when INT8_STEPS activations of its last
    quantized tensor move one step each: step = that QuantizeLinear's scale, times the largest
    |weight| of the float layers after it (the head, left float by export/quantize.py; none: the
    step is in logits already); a softmax probability moves by at most half the largest change of
    a logit (|dp_i| <= 2 d p_i (1 - p_i) <= d / 2)."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path)).graph
    weights = {init.name: init for init in graph.initializer}
    nodes = list(graph.node)
    last = max(i for i, node in enumerate(nodes) if node.op_type == "QuantizeLinear")
    scale = float(numpy_helper.to_array(weights[nodes[last].input[1]]).max())
    heads = [numpy_helper.to_array(weights[node.input[1]]) for node in nodes[last + 1:]
             if node.op_type in ("Conv", "MatMul", "Gemm") and node.input[1] in weights]
    gain = max((float(np.abs(w).max()) for w in heads), default=1.0)
    return INT8_STEPS * scale * gain / 2


def unavailable(reason: str):
    """Skip, or fail where the environment says the examples must run."""
    if os.environ.get(REQUIRE) == "1":
        pytest.fail(f"{reason} ({REQUIRE}=1)")
    pytest.skip(reason)


@lru_cache(maxsize=None)
def _node_path():
    return shutil.which("node")


def node() -> str:
    """The node executable, with examples/node_modules installed; else skip (or fail)."""
    path = _node_path()
    if path is None:
        unavailable("node is not installed (the JavaScript example needs Node 20 or newer)")
    if not (NODE_MODULES / "onnxruntime-node").is_dir():
        unavailable(f"{NODE_MODULES} is missing: run `npm ci` in {EXAMPLES}")
    dependencies = json.loads((EXAMPLES / "package.json").read_text()).get("dependencies", {})
    missing = sorted(name for name in dependencies if not (NODE_MODULES / name).is_dir())
    if missing:  # an install from before a dependency was added (jpeg-js): every infer.js run would fail
        unavailable(f"{', '.join(missing)} missing from {NODE_MODULES}: run `npm ci` in {EXAMPLES}")
    return path


def node_modules(package: str) -> Path:
    """examples/node_modules/<package>; skip (or fail) where it is not installed."""
    node()
    path = NODE_MODULES / package
    if not path.is_dir():
        unavailable(f"{path} is missing: run `npm ci` in {EXAMPLES}")
    return path


def run_node(args: Sequence[str], input: str = None, timeout: float = NODE_TIMEOUT) -> subprocess.CompletedProcess:
    """node ARGS... from the repository root (paths as the README gives them), text out."""
    return subprocess.run([node(), *map(str, args)], cwd=ROOT, input=input, capture_output=True, text=True,
                          timeout=timeout)


def start_node(args: Sequence[str]) -> subprocess.Popen:
    """node ARGS... started in the background (the caller works meanwhile, then communicate())."""
    return subprocess.Popen([node(), *map(str, args)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def golden() -> dict:
    """tests/golden/digits.json (written by tests/golden/make_golden.py), a fresh copy per call."""
    return json.loads(GOLDEN.read_text())


def golden_input(entry: dict) -> np.ndarray:
    """One sample's preprocessed input, float32 of its recorded shape ([1, 28, 28, 1])."""
    return np.asarray(entry["input"], np.float32).reshape(entry["input_shape"])


def assert_mc_agrees(samples_js, samples_py, limit: float = 5.0) -> dict:
    """Two sets of Monte Carlo samples ([T, ...] each) agree in mean and variance within `limit`
    standard errors (runtime.randomness_checks.z_scores); returns the worst z of each."""
    worst = z_scores(np.asarray(samples_js, np.float64), np.asarray(samples_py, np.float64))
    assert max(worst.values()) <= limit, f"Monte Carlo samples disagree: worst z {worst} > {limit}"
    return worst
