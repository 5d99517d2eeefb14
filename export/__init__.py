"""mcdrop exporter: a Keras model -> one self-contained MC-dropout ONNX file.

    from mcdrop.export import export_model
    report = export_model("cnn.keras", "cnn.onnx", passes=50)

Needs the `export` extra (tensorflow, keras, tf2onnx, onnx). The pipeline is export/pipeline.py;
the model source (listed, size-checked, hashed and loaded) export/model_source.py. The file is
written only after validation passes (export/validate.py). Importing this package loads no
TensorFlow: the modules that need it are imported on use.
"""

from ..runtime.errors import ExportError

from .model_source import MAX_SOURCE_BYTES, load_keras_model, source_files
from .pipeline import (VERSION, ExportReport, attach_metadata, build_graph, build_metadata, export_model,
                       load_calibration, read_labels, untraced_errors)
from .preprocess import PREPROCESS_MODES, UNKNOWN_PREPROCESS, check_preprocess_options, image_preprocessing

__all__ = ["export_model", "load_keras_model", "build_graph", "ExportReport", "PREPROCESS_MODES", "UNKNOWN_PREPROCESS",
           "check_preprocess_options", "image_preprocessing"]
