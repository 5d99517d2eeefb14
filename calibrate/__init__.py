"""`mcdrop calibrate`: temperature scaling, an UNCERTAIN threshold, decision thresholds and
conformal sets, fitted on a labelled set and written into a copy of the file.

command (calibrate_model: load, fit, rewrite, validate, write), fitting (the maths, numpy + scipy)
and graph (the calibration nodes added to the ONNX graph; onnx, the `evaluate` extra). No TensorFlow.
"""
