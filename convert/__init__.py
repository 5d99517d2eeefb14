"""`cli.py convert`: rewrites an exported (or calibrated) mcdrop file for other runtimes and
accelerators. Needs onnx and onnxruntime, never TensorFlow. Two profiles: the portable one
(convert/portable.py, docs/FORMAT.md: Portable profile) and the analytic one, which adds the
moment graph of predict(method="analytic") (convert/analytic.py, docs/FORMAT.md: Analytic outputs)."""

from ..runtime.errors import InputError
from .analytic import add_analytic_graph
from .analytic_agreement import convert_analytic
from .portable import ConvertReport, check_convert_flags, convert_file, portable_model

__all__ = ["ConvertReport", "add_analytic_graph", "check_convert_flags", "convert_analytic", "convert_file",
           "portable_model", "run_convert"]


def run_convert(source, output, *, portable: bool = False, analytic=None, verify: bool = True, limits=None,
                **portable_options) -> list:
    """`cli.py convert`: the profile asked for, after the flags' checks; the report's lines."""
    check_convert_flags(source, output, portable, analytic)
    if analytic is not None:
        if any(value is not None for value in portable_options.values()):
            raise InputError("--batch-size, --passes and --bake-masks are for --portable, not --analytic")
        return convert_analytic(source, output, analytic, verify=verify, limits=limits)
    return convert_file(source, output, verify=verify, limits=limits, **portable_options).lines()
