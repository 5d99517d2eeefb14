"""Keras Applications families export with full validation (deterministic and statistical parity
with Keras), each as a user deploys it for MC dropout (tests/applications.py)."""

import pytest

pytest.importorskip("tf2onnx")

from applications import FAMILIES, application_model  # noqa: E402
from export import export_model  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("family", FAMILIES)
def test_application_exports_with_full_validation(family, tmp_path):
    source = tmp_path / f"{family}.keras"
    application_model(family).save(source)
    report = export_model(source, tmp_path / f"{family}.onnx")
    checks = {check.name for check in report.checks}
    assert {"deterministic parity", "statistical parity", "optimiser all", "output varies"} <= checks
    assert [layer["name"] for layer in report.stochastic_layers][-1] == "head_dropout"
