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

from mcdrop.runtime.validate import z_scores

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
    standard errors (runtime.validate.z_scores); returns the worst z of each."""
    worst = z_scores(np.asarray(samples_js, np.float64), np.asarray(samples_py, np.float64))
    assert max(worst.values()) <= limit, f"Monte Carlo samples disagree: worst z {worst} > {limit}"
    return worst
