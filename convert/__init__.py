"""`cli.py convert`: rewrites an exported (or calibrated) mcdrop file for other runtimes and
accelerators. Needs onnx and onnxruntime, never TensorFlow. The one profile so far is the
portable one (convert/portable.py, docs/FORMAT.md: Portable profile)."""

from .dropped_units import SkipReport, skip_dropped_file, skip_dropped_model
from .portable import ConvertReport, check_convert_flags, convert_file, portable_model

__all__ = ["ConvertReport", "SkipReport", "check_convert_flags", "convert_file", "portable_model",
           "skip_dropped_file", "skip_dropped_model"]
