"""mcdrop: Monte Carlo dropout uncertainty for Keras models, exported to one ONNX file.

    from mcdrop import MCSession, export_model
    export_model("cnn.keras", "cnn.onnx", passes=50)       # needs the `export` extra
    prediction = MCSession("cnn.onnx").predict(x)            # numpy + onnxruntime only

The repository root is this package: `export/` is `mcdrop.export`, `runtime/` is `mcdrop.runtime`,
each batch command's package (`evaluate/`, `calibrate/`, `score/`, `acquire/`) is `mcdrop.<name>`
and `cli.py` is `mcdrop.cli` (the `mcdrop` command); pyproject.toml maps them, and `python cli.py`
in a checkout loads the folder under the same name. Names are imported on first use, so
`import mcdrop` loads neither onnxruntime nor TensorFlow.
"""

import importlib

from . import runtime
from .runtime.errors import DeviceError, InputError, McdropError, ModelFileError, ModelRunError, UnsafeModelError

# The runtime's names come through its own lazy attributes; the exporter's are added here.
_LAZY = {
    **dict.fromkeys(runtime._LAZY, ".runtime"),
    "export_model": ".export",
    "calibrate_model": ".calibrate.command",
}

__all__ = ["McdropError", "InputError", "ModelFileError", "ModelRunError", "UnsafeModelError", "DeviceError",
           "__version__", *_LAZY]


def __getattr__(name):
    if name == "__version__":
        return importlib.import_module(".export", __name__).VERSION
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
