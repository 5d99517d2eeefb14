"""Shared fixtures: tiny mcdrop ONNX files built with onnx.helper (no TensorFlow)."""

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

import mcdrop  # noqa: E402

if Path(mcdrop.__file__).resolve().parent != ROOT:
    pytest.exit(f"mcdrop is imported from {Path(mcdrop.__file__).parent}, not this checkout: "
                f"pip install -e {ROOT}", returncode=2)

from toy_model import build_toy_model  # noqa: E402

GRAYSCALE_PREPROCESSING = {"height": 2, "width": 3, "color_mode": "grayscale", "scale": 1 / 255, "offset": 0.0}
RGB_PREPROCESSING = {"height": 2, "width": 2, "color_mode": "rgb", "scale": 1 / 127.5, "offset": -1.0}


@pytest.fixture(scope="session")
def toy_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("toy_models")


@pytest.fixture(scope="session")
def toy_model_path(toy_dir):
    """Softmax head, 3 classes, input [batch, 4]."""
    return build_toy_model(toy_dir / "softmax.onnx", "softmax")


@pytest.fixture(scope="session", params=["softmax", "binary", "multilabel", "regression"])
def toy_head_model(request, toy_dir):
    """(head, path) for every head."""
    return request.param, build_toy_model(toy_dir / f"{request.param}.onnx", request.param)


@pytest.fixture(scope="session")
def grayscale_model_path(toy_dir):
    """Images 3 wide, 2 high, grayscale, scale 1/255: input [batch, 2, 3, 1]."""
    return build_toy_model(toy_dir / "gray.onnx", "softmax", example_shape=(2, 3, 1),
                           preprocessing=GRAYSCALE_PREPROCESSING)


@pytest.fixture(scope="session")
def rgb_model_path(toy_dir):
    """Images 2 x 2 RGB mapped to [-1, 1]: input [batch, 2, 2, 3]."""
    return build_toy_model(toy_dir / "rgb.onnx", "softmax", example_shape=(2, 2, 3),
                           preprocessing=RGB_PREPROCESSING)
