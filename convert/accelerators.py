"""How much of a file the mobile accelerators' execution providers would take, per onnxruntime's
own check (`python -m onnxruntime.tools.check_onnx_model_mobile_usability`), through its Python
functions: the same basic optimisation, shape inference and partitioning, counted per provider."""

from __future__ import annotations

import logging
import pathlib
import tempfile
from dataclasses import dataclass
from typing import Dict


@dataclass(frozen=True)
class Coverage:
    nodes: int
    supported: int
    partitions: int
    unsupported_ops: tuple

    @property
    def whole(self) -> bool:
        """Every node in one partition."""
        return self.partitions == 1 and self.supported == self.nodes

    def __str__(self) -> str:
        text = f"{self.supported}/{self.nodes} nodes in {self.partitions} partition{'s' * (self.partitions != 1)}"
        return text + (f" (unsupported: {', '.join(self.unsupported_ops)})" if self.unsupported_ops else "")


def mobile_coverage(path) -> Dict[str, Coverage]:
    """{"NNAPI": Coverage, "CoreML MLProgram": Coverage} for the ONNX file at `path`, nodes with a
    dynamic input shape counted as unsupported, as the checker does first."""
    from onnxruntime.tools.mobile_helpers import usability_checker as checker
    from onnxruntime.tools.onnx_model_utils import ModelProtoWithShapeInfo, optimize_model

    logging.getLogger("onnxruntime").setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory(prefix="mcdrop-coverage-") as folder:
        optimized = pathlib.Path(folder) / "optimized.onnx"
        optimize_model(pathlib.Path(path), optimized, use_external_initializers=True)
        model = ModelProtoWithShapeInfo(optimized).model_with_shape_info
        found = {"NNAPI": checker.check_nnapi_partitions(model, True),
                 "CoreML MLProgram": checker.check_coreml_partitions(model, True, "coreml_supported_mlprogram_ops.md")}
    return {name: Coverage(info.num_nodes, info.num_supported_nodes, info.num_partitions,
                           tuple(sorted(op.split(":")[-1] for op in info.unsupported_ops)))
            for name, info in found.items()}
