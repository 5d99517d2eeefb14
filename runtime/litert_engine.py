"""LiteRT (TensorFlow Lite) as an engine of MCSession: `MCSession("model.tflite")`, chosen by the suffix.

A .tflite mcdrop file (`cli.py export MODEL --format tflite`, export/litert.py) is a portable file
in TensorFlow Lite's format: inputs `input` (each model input), `stochastic` (bool) and `masks`
(uint8 keep masks [T, floats_per_pass], absent when baked), outputs `<prefix>samples` [T, B, ...],
and mcdrop's metadata JSON in the flatbuffer's own `metadata` list (entry "mcdrop", its bytes in the
buffer it names; docs/FORMAT.md: Portable profile, LiteRT). So the same keep masks
(runtime/portable_masks.py) feed both formats and give the same samples. The LiteRT interpreter
(the `litert` extra, ai-edge-litert) is imported only when such a file is opened.
"""

import threading
from typing import Dict, List, Optional, Sequence

import numpy as np

from .errors import DeviceError, ModelFileError, ModelRunError, first_line

SUFFIX = ".tflite"
PROVIDER = "LiteRT"
METADATA_NAME = "mcdrop"  # the entry of the flatbuffer's Model.metadata that holds mcdrop's JSON
IDENTIFIER = b"TFL3"  # TensorFlow Lite's flatbuffer file identifier, bytes 4-7
TYPES = {np.float32: "tensor(float)", np.bool_: "tensor(bool)", np.uint8: "tensor(uint8)",
         np.int64: "tensor(int64)", np.int32: "tensor(int32)"}


def wants(path: str) -> bool:
    return str(path).lower().endswith(SUFFIX)


def _interpreter_class():
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        raise DeviceError("a .tflite file runs on LiteRT, which needs the ai-edge-litert package: "
                          "pip install -e '.[litert]'") from None
    return Interpreter


def read_metadata(model_bytes: bytes, path: str) -> bytes:
    """The bytes of the flatbuffer's "mcdrop" metadata entry; ModelFileError without one, or for
    bytes that are not a TensorFlow Lite flatbuffer."""
    _interpreter_class()  # the one-line refusal without the package
    from ai_edge_litert import schema_py_generated as schema

    if len(model_bytes) < 8 or model_bytes[4:8] != IDENTIFIER:
        raise ModelFileError(f"{path}: not a TensorFlow Lite file (no {IDENTIFIER.decode()} identifier)")
    try:
        model = schema.Model.GetRootAs(model_bytes, 0)
        for i in range(model.MetadataLength()):
            entry = model.Metadata(i)
            if entry.Name() == METADATA_NAME.encode():
                buffer = model.Buffers(entry.Buffer())
                if buffer is None or buffer.Offset():  # data kept outside the flatbuffer: not ours
                    raise ModelFileError(f"{path}: its '{METADATA_NAME}' metadata buffer is missing")
                return buffer.DataAsNumpy().tobytes() if buffer.DataLength() else b""
    except ModelFileError:
        raise
    except Exception as err:  # noqa: BLE001 (a broken flatbuffer reads as struct or index errors)
        raise ModelFileError(f"{path}: broken TensorFlow Lite file ({first_line(err)})") from None
    raise ModelFileError(f"{path}: not an mcdrop export (no '{METADATA_NAME}' metadata entry); export it with "
                         "`python cli.py export MODEL --format tflite`")


class _Arg:
    """An input or output as onnxruntime's NodeArg describes it: name, type, shape (None: dynamic)."""

    def __init__(self, detail: dict):
        self.name = detail["name"]
        self.type = TYPES.get(np.dtype(detail["dtype"]).type, str(detail["dtype"]))
        self.shape = [None if d < 0 else int(d) for d in detail["shape_signature"]]
        self.index = detail["index"]


class LiteRTSession:
    """The part of onnxruntime's InferenceSession that MCSession uses, on one LiteRT interpreter.
    An interpreter is not thread-safe, so runs take turns; a feed of another batch resizes it."""

    def __init__(self, interpreter):
        self._interpreter = interpreter
        self._inputs = [_Arg(d) for d in interpreter.get_input_details()]
        self._outputs = [_Arg(d) for d in interpreter.get_output_details()]
        self._shapes: Dict[str, tuple] = {}
        self._lock = threading.Lock()

    def get_providers(self) -> List[str]:
        return [PROVIDER]

    def get_inputs(self) -> List[_Arg]:
        return self._inputs

    def get_outputs(self) -> List[_Arg]:
        return self._outputs

    def run(self, names: Sequence[str], feed: Dict[str, np.ndarray], options=None) -> List[np.ndarray]:
        interpreter = self._interpreter
        with self._lock:
            try:
                resized = False
                for arg in self._inputs:
                    shape = tuple(np.shape(feed[arg.name]))
                    if self._shapes.get(arg.name) != shape:
                        interpreter.resize_tensor_input(arg.index, shape, strict=True)
                        self._shapes[arg.name] = shape
                        resized = True
                if resized:
                    interpreter.allocate_tensors()
                for arg in self._inputs:
                    interpreter.set_tensor(arg.index, np.array(feed[arg.name], order="C", copy=None))  # 0-d stays 0-d
                interpreter.invoke()
                by_name = {arg.name: arg.index for arg in self._outputs}
                return [interpreter.get_tensor(by_name[name]).copy() for name in names]
            except (RuntimeError, ValueError) as err:  # LiteRT's kernels and shape checks
                self._shapes.clear()  # allocate again on the next run
                raise ModelRunError(f"LiteRT failed to run the model ({first_line(err)})") from None


def create_session(model_bytes: bytes, path: str, threads: Optional[int] = None) -> LiteRTSession:
    """The file loaded in LiteRT's interpreter (its default CPU kernels, XNNPACK), `threads` threads."""
    from .providers import quiet_stderr

    interpreter_class = _interpreter_class()
    try:
        with quiet_stderr():  # LiteRT logs "INFO: Created TensorFlow Lite XNNPACK delegate" from C++
            interpreter = interpreter_class(model_content=bytes(model_bytes), num_threads=threads or None)
            interpreter.allocate_tensors()
    except (RuntimeError, ValueError) as err:
        raise ModelFileError(f"{path}: LiteRT cannot load it ({first_line(err)})") from None
    return LiteRTSession(interpreter)
