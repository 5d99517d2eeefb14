"""Parity of the exported graph with Keras, over the zoo of model kinds (needs the export extra)."""

import pytest

pytest.importorskip("tf2onnx")

from parity import assert_parity  # noqa: E402
from zoo import ZOO  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("name", sorted(ZOO))
def test_zoo_model_matches_keras(name, tmp_path):
    model, kwargs = ZOO[name]()
    result = assert_parity(model, tmp_path, name, **kwargs)
    assert len(result.metadata["stochastic_layers"]) == len(result.report.stochastic_layers) >= 1
