"""`mcdrop calibrate`: temperature scaling, an UNCERTAIN threshold, decision thresholds and
conformal sets, fitted on a labelled set and written into a copy of the file.

command (calibrate_model: load, fit, rewrite, validate, write), fitting (the maths, numpy + scipy)
and graph (the calibration nodes added to the ONNX graph; onnx, the `evaluate` extra), feature_density
(the single-pass scores: feature distance, energy, max logit). No TensorFlow.
"""


def calibrate_from_cli(source, output, data, *, passes=None, settings=None, **options):
    """`cli.py calibrate`: --passes checked against the limits, the `evaluate` extra required (one
    line naming it when missing), then command.calibrate_model."""
    from ..runtime.checks import require_modules
    from ..runtime.run_plan import check_passes

    if passes is not None:
        check_passes(passes, settings.limits, "--passes")  # the file's own passes are checked on load
    require_modules(("onnx", "scipy"), "calibrate", "evaluate")
    from .command import calibrate_model

    return calibrate_model(source, output, data, passes=passes, settings=settings, **options)
