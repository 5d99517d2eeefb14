"""`export --quantize int8`: onnxruntime's static QDQ quantization of the weight layers only.

Only Conv, MatMul and Gemm are quantized (int8 weights per channel, uint8 activations); the
random-mask subgraph (ConstantOfShape -> Random*Like -> GreaterOrEqual -> Cast -> Mul), the noise
formulas and the uncertainty tail stay float32, so the masks and their rates are exactly those
of the float export. Activation ranges are calibrated with the noise on, on the calibration
inputs the caller gives (or on validation-style inputs in the model's range, a poorer choice).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import onnx

from ..runtime.errors import ExportError, first_line
from ..runtime.masks import control_feeds

QUANTIZED_OPS = ["Conv", "MatMul", "Gemm"]
CALIBRATION_PASSES = 4


class _Calibration:
    """onnxruntime's CalibrationDataReader protocol: feeds, then None."""

    def __init__(self, x, batch=16):
        self._feeds = iter(
            {"input": x[i : i + batch], **control_feeds(CALIBRATION_PASSES)}
            for i in range(0, len(x), batch)
        )

    def get_next(self):
        return next(self._feeds, None)


def quantize_int8(proto: onnx.ModelProto, calibration: np.ndarray) -> onnx.ModelProto:
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if len(calibration) == 0:
        raise ExportError("--calibration holds no inputs")
    with tempfile.TemporaryDirectory() as tmp:
        source, prepared, target = (Path(tmp) / name for name in ("fp32.onnx", "prep.onnx", "int8.onnx"))
        onnx.save(proto, source)
        try:
            # onnxruntime's recommended pre-processing (ONNX shape inference and graph
            # optimisation; symbolic shape inference is skipped, the batch stays symbolic).
            quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
            quantize_static(
                str(prepared),
                str(target),
                _Calibration(np.asarray(calibration, np.float32)),
                quant_format=QuantFormat.QDQ,
                op_types_to_quantize=QUANTIZED_OPS,
                per_channel=True,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
            )
        except Exception as err:  # onnxruntime.quantization raises many types
            raise ExportError(f"int8 quantization failed: {first_line(err)}") from err
        quantized = onnx.load(target)
    quantized.ir_version = proto.ir_version
    del quantized.metadata_props[:]
    quantized.metadata_props.extend(proto.metadata_props)
    return quantized
