"""`cli.py convert`: rewrites an exported (or calibrated) mcdrop file for other runtimes and
accelerators. Needs onnx and onnxruntime, never TensorFlow. Two profiles: the portable one
(convert/portable.py, docs/FORMAT.md: Portable profile) and the analytic one, which adds the
moment graph of predict(method="analytic") (convert/analytic.py, docs/FORMAT.md: Analytic outputs)."""

from .analytic import add_analytic_graph
from .analytic_agreement import convert_analytic
from .dropped_units import SkipReport, skip_dropped_file, skip_dropped_model
from .portable import ConvertReport, check_convert_flags, convert_file, portable_model

__all__ = ["ConvertReport", "SkipReport", "add_analytic_graph", "check_convert_flags", "convert_analytic",
           "convert_file", "portable_model", "run_convert", "skip_dropped_file", "skip_dropped_model"]


def run_convert(source, output, *, portable: bool = False, skip_dropped: bool = False, analytic=None,
                verify: bool = True, limits=None, **portable_options) -> list:
    """`cli.py convert`: the one profile asked for, after the flags' checks; the report's lines."""
    check_convert_flags(source, output, portable, skip_dropped, analytic, portable_options.values())
    if analytic is not None:
        return convert_analytic(source, output, analytic, verify=verify, limits=limits)
    if skip_dropped:
        return skip_dropped_file(source, output, verify=verify, limits=limits).lines()
    return convert_file(source, output, verify=verify, limits=limits, **portable_options).lines()
