"""mcdrop runtime: Monte Carlo dropout inference on an exported ONNX file.

Needs numpy and onnxruntime only (Pillow for images); never imports TensorFlow.

    from runtime import MCSession
    prediction = MCSession("models/cnn.onnx", seed=0).predict(x, passes=50)

Names are imported on first use, so `import runtime` (and `runtime.errors`) stays cheap.
"""

import importlib

from runtime import errors
from runtime.errors import DeviceError, InputError, McdropError, ModelFileError, ModelRunError, UnsafeModelError

_LAZY = {
    "MCSession": "runtime.session",
    "RawPixelWarning": "runtime.session",
    "Prediction": "runtime.prediction",
    "ModelInfo": "runtime.metadata",
    "load_inputs": "runtime.inputs",
    "Limits": "runtime.limits",
}

__all__ = ["errors", "McdropError", "InputError", "ModelFileError", "ModelRunError", "UnsafeModelError",
           "DeviceError", *_LAZY]


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'runtime' has no attribute {name!r}")
