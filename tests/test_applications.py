"""Keras Applications families export through `cli.py export` with full validation (deterministic
and statistical parity with Keras), each as a user deploys it for MC dropout (tests/applications.py)."""

import subprocess
import sys

import pytest

pytest.importorskip("tf2onnx")

from applications import FAMILIES, application_model  # noqa: E402
from conftest import ROOT  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("family", FAMILIES)
def test_application_exports_with_full_validation(family, tmp_path):
    source = tmp_path / f"{family}.keras"
    application_model(family).save(source)
    done = subprocess.run([sys.executable, "cli.py", "export", source, "-o", tmp_path / f"{family}.onnx"], cwd=ROOT,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    for check in ("deterministic parity", "statistical parity", "optimiser all", "output varies"):
        assert f"ok  {check}:" in done.stderr
    stochastic = next(line for line in done.stdout.splitlines() if line.strip().startswith("stochastic layers:"))
    assert stochastic.endswith("head_dropout (Dropout 0.3)")
