"""`export --quantize int8`: onnxruntime's static QDQ quantization of the weight layers only.

Only Conv, MatMul and Gemm are quantized (7-bit int8 weights per channel, uint8 activations), and
not the head layers (those whose output reaches a graph output through no other weight layer):
their output, the logits, would be rounded to one activation step (about 0.4 for the shipped CNN).
Why 7-bit weights: docs/DESIGN.md, int8. The random-mask subgraph (ConstantOfShape -> Random*Like
-> GreaterOrEqual -> Cast -> Mul), the noise formulas and the uncertainty tail stay float32, so the
masks and their rates are exactly those of the float export. Activation ranges are calibrated with
the noise on, on the calibration inputs the caller gives (or on validation-style inputs in the
model's range, a poorer choice).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import onnx

from ..runtime.errors import ExportError, first_line
from ..runtime.format.mask_sets import control_feeds
from ..runtime.format.metadata_writer import metadata_of, write_metadata

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


def head_layers(proto: onnx.ModelProto) -> list:
    """Names of the top-level quantizable nodes with no quantizable node downstream of them."""
    consumers = {}
    for node in proto.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    heads = []
    for node in proto.graph.node:
        if node.op_type not in QUANTIZED_OPS:
            continue
        seen, todo, downstream = set(), list(node.output), False
        while todo and not downstream:
            for consumer in consumers.get(todo.pop(), []):
                if id(consumer) not in seen:
                    seen.add(id(consumer))
                    downstream = consumer.op_type in QUANTIZED_OPS
                    todo.extend(consumer.output)
        if not downstream and node.name:  # quantize_static excludes by name
            heads.append(node.name)
    return heads


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
            prepared_proto = onnx.load(prepared, load_external_data=False)
            heads = head_layers(prepared_proto)
            if len(heads) == sum(node.op_type in QUANTIZED_OPS for node in prepared_proto.graph.node):
                heads = []  # a model of head layers only: quantize them rather than nothing
            quantize_static(
                str(prepared),
                str(target),
                _Calibration(np.asarray(calibration, np.float32)),
                quant_format=QuantFormat.QDQ,
                op_types_to_quantize=QUANTIZED_OPS,
                nodes_to_exclude=heads,
                per_channel=True,
                # 7-bit weights: no pair of uint8 x int8 products saturates AVX2's int16 sums, so
                # every CPU computes the same integers (docs/DESIGN.md: int8).
                reduce_range=True,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
            )
        except Exception as err:  # onnxruntime.quantization raises many types
            raise ExportError(f"int8 quantization failed: {first_line(err)}") from err
        quantized = onnx.load(target)
    quantized.ir_version = proto.ir_version
    metadata = metadata_of(proto)
    if metadata is not None:
        write_metadata(quantized, metadata)
    return quantized
