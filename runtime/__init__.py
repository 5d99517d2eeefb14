"""mcdrop runtime: Monte Carlo dropout inference on an exported ONNX file.

Needs numpy and onnxruntime only (Pillow for images); never imports TensorFlow.

    from mcdrop import MCSession
    prediction = MCSession("models/cnn.onnx", seed=0).predict(x, passes=50)

Names are imported on first use, so `import mcdrop.runtime` (and `mcdrop.runtime.errors`) stays cheap.
"""

import importlib

from . import errors
from .errors import DeviceError, InputError, McdropError, ModelFileError, ModelRunError, UnsafeModelError

_LAZY = {
    "MCSession": ".session",
    "SessionSettings": ".settings",
    "RawPixelWarning": ".feed_checks",
    "Prediction": ".prediction",
    "ModelInfo": ".format.metadata",
    "load_inputs": ".input_files",
    "Limits": ".limits",
}

__all__ = ["errors", "McdropError", "InputError", "ModelFileError", "ModelRunError", "UnsafeModelError",
           "DeviceError", *_LAZY]


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
