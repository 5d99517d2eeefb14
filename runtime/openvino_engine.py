"""OpenVINO as an engine of MCSession (`device="openvino"`, `cli.py infer --device openvino`).

OpenVINO reads the ONNX bytes itself (the `openvino` extra) and runs any mcdrop file, standard or
portable, float or int8, behind the few InferenceSession methods MCSession uses, so shared mask sets
give the same samples as onnxruntime (issue 25: 1e-6 measured on the shipped files). Two settings
are not OpenVINO's defaults (issue 25, measured with OpenVINO 2026.4):
- f32 inference precision: on CPUs with AVX512-BF16 OpenVINO computes in bf16 by default (drift
  up to 3e-2 in the probabilities); `device="openvino:bf16"` asks for it.
- LP_TRANSFORMS_MODE off: its low-precision transformations refuse the int8 file's QDQ graph
  (`unsupported src_prc: boolean`); without them OpenVINO runs the quantize/dequantize pairs as
  written, as onnxruntime's reference does. Float files have no QDQ pair, so nothing changes there.
Random nodes draw with OpenVINO's own generator in independent mode: the seeds are rewritten as for
onnxruntime, but its streams are not onnxruntime's.
"""

from typing import Dict, List, Optional, Sequence

import numpy as np

from .errors import DeviceError, ModelFileError, ModelRunError, first_line

DEVICES = ("openvino", "openvino:bf16")
PROVIDER = "OpenVINO"
# OpenVINO element types -> the onnxruntime type names MCSession's contract checks read.
TYPES = {"f32": "tensor(float)", "i64": "tensor(int64)", "boolean": "tensor(bool)", "u8": "tensor(uint8)",
         "i32": "tensor(int32)", "f16": "tensor(float16)"}


def wants(device: str) -> bool:
    return device in DEVICES


class _Arg:
    """An input or output as onnxruntime's NodeArg describes it: name, type, shape."""

    def __init__(self, port):
        self.name = port.get_any_name()
        self.type = TYPES.get(port.get_element_type().get_type_name(), str(port.get_element_type()))
        self.shape = [d.get_length() if d.is_static else None for d in port.get_partial_shape()]


class OpenVINOSession:
    """The part of onnxruntime's InferenceSession that MCSession uses, on an OpenVINO CompiledModel.
    A run makes its own infer request, so runs from several threads do not share one."""

    def __init__(self, compiled, device: str):
        self._compiled = compiled
        self._inputs = [_Arg(port) for port in compiled.inputs]
        self._outputs = [_Arg(port) for port in compiled.outputs]
        self._device = device

    def get_providers(self) -> List[str]:
        return [PROVIDER]

    def get_inputs(self) -> List[_Arg]:
        return self._inputs

    def get_outputs(self) -> List[_Arg]:
        return self._outputs

    def run(self, names: Sequence[str], feed: Dict[str, np.ndarray], options=None) -> List[np.ndarray]:
        request = self._compiled.create_infer_request()
        try:
            results = request.infer(feed)
        except Exception as err:  # OpenVINO raises RuntimeError and its own types
            raise ModelRunError(f"OpenVINO failed to run the model ({first_line(err)})") from None
        by_name = {port.get_any_name(): np.asarray(value) for port, value in results.items()}
        return [by_name[name] for name in names]


def create_session(model_bytes: bytes, device: str, path: str, threads: Optional[int] = None) -> OpenVINOSession:
    """The file compiled for OpenVINO's CPU plugin, f32 unless `device` is "openvino:bf16"."""
    try:
        import openvino as ov
    except ImportError:
        raise DeviceError("device openvino needs the openvino package: pip install -e '.[openvino]'") from None
    core = ov.Core()
    config = {"INFERENCE_PRECISION_HINT": "bf16" if device.endswith(":bf16") else "f32",
              "LP_TRANSFORMS_MODE": False}
    if threads:
        config["INFERENCE_NUM_THREADS"] = int(threads)
    try:
        model = core.read_model(model_bytes, b"")
    except Exception as err:  # noqa: BLE001 (OpenVINO's front ends raise many types)
        raise ModelFileError(f"{path}: OpenVINO cannot read it ({first_line(err)})") from None
    try:
        compiled = core.compile_model(model, "CPU", config)
    except Exception as err:  # noqa: BLE001
        raise DeviceError(f"{path}: OpenVINO cannot compile it for its CPU plugin ({first_line(err)})") from None
    return OpenVINOSession(compiled, device)
