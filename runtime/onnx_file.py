"""What the runtime needs to know of an ONNX file before onnxruntime sees it, read straight from
its protobuf bytes (the runtime does not depend on the onnx package).

One pass over the message tree, skipping tensor payloads whole, finds:
- the random nodes and where each one's float `seed` attribute lies (runtime/seeds.py rewrites
  those 4 bytes), counted from the graph rather than from byte patterns, so an initializer full of
  seed-like bytes costs nothing;
- initializers whose data lies in external files (the runtime refuses them by default);
- `metadata_props`, as raw bytes, decoded by the caller.

Field numbers are those of onnx/onnx.proto. A file that is not well-formed protobuf, or nests
graphs deeper than MAX_DEPTH, is a ModelFileError.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Tuple

from .errors import ModelFileError

RANDOM_OPS = ("RandomUniformLike", "RandomNormalLike", "RandomUniform", "RandomNormal", "Bernoulli", "Multinomial")
# Graphs nest through If / Loop / Scan attributes; real models go a few levels deep.
MAX_DEPTH = 32
VARINT, FIXED64, LENGTH, FIXED32 = 0, 1, 2, 5

# ModelProto
MODEL_GRAPH, MODEL_METADATA, MODEL_TRAINING, MODEL_FUNCTIONS = 7, 14, 20, 25
# GraphProto
GRAPH_NODE, GRAPH_INITIALIZER, GRAPH_SPARSE_INITIALIZER = 1, 5, 15
# NodeProto
NODE_NAME, NODE_OP_TYPE, NODE_ATTRIBUTE, NODE_DOMAIN = 3, 4, 5, 7
# AttributeProto
ATTR_NAME, ATTR_F, ATTR_T, ATTR_G, ATTR_TENSORS, ATTR_GRAPHS, ATTR_SPARSE, ATTR_SPARSES = 1, 2, 5, 6, 10, 11, 22, 23
# TensorProto
TENSOR_NAME, TENSOR_EXTERNAL, TENSOR_LOCATION = 8, 13, 14
EXTERNAL = 1
# StringStringEntryProto
ENTRY_KEY, ENTRY_VALUE = 1, 2
# TrainingInfoProto: initialization, algorithm; FunctionProto: node
TRAINING_GRAPHS, FUNCTION_NODE = (1, 2), 7


class WireError(ValueError):
    """The bytes are not well-formed protobuf."""


@dataclass(frozen=True)
class RandomNode:
    name: str
    op_type: str
    seed: float | None  # None: no float seed attribute
    seed_offset: int | None  # where the seed's 4 little-endian bytes start in the file


@dataclass
class ModelFile:
    """The parts of an ONNX file the runtime checks before creating a session."""

    metadata: Dict[str, bytes] = field(default_factory=dict)
    metadata_spans: Dict[str, Tuple[int, int]] = field(default_factory=dict)  # key -> the entry's bytes
    random_nodes: List[RandomNode] = field(default_factory=list)
    external_data: List[Tuple[str, str]] = field(default_factory=list)  # (tensor, location) stored outside
    has_graph: bool = False


def read_model(data: bytes, path: str = "model") -> ModelFile:
    """Parse `data` as an ONNX ModelProto; ModelFileError if it is not one."""
    view = memoryview(data)
    model = ModelFile()
    try:
        for number, wire, value, start, end in _fields(view, 0, len(view)):
            if wire != LENGTH:
                continue
            if number == MODEL_GRAPH:
                model.has_graph = True
                _graph(view, value, model, 1)
            elif number == MODEL_METADATA:
                key, entry_value = _entry(view, value)
                if key in model.metadata:
                    raise WireError(f"metadata key {key!r} appears twice")
                model.metadata[key] = entry_value
                model.metadata_spans[key] = (start, end)
            elif number == MODEL_TRAINING:
                for n, w, v, _, _ in _fields(view, *value):
                    if w == LENGTH and n in TRAINING_GRAPHS:
                        _graph(view, v, model, 1)
            elif number == MODEL_FUNCTIONS:
                for n, w, v, _, _ in _fields(view, *value):
                    if w == LENGTH and n == FUNCTION_NODE:
                        _node(view, v, model, 1)
    except WireError as err:
        raise ModelFileError(f"{path}: not an ONNX file (malformed protobuf: {err})") from None
    if not model.has_graph:
        raise ModelFileError(f"{path}: not an ONNX file (no graph)")
    return model


def _graph(view, span, model: ModelFile, depth: int) -> None:
    if depth > MAX_DEPTH:
        raise WireError(f"graphs nested more than {MAX_DEPTH} deep")
    for number, wire, value, _, _ in _fields(view, *span):
        if wire != LENGTH:
            continue
        if number == GRAPH_NODE:
            _node(view, value, model, depth)
        elif number == GRAPH_INITIALIZER:
            _tensor(view, value, model)
        elif number == GRAPH_SPARSE_INITIALIZER:
            _sparse_tensor(view, value, model)


def _node(view, span, model: ModelFile, depth: int) -> None:
    name = op_type = domain = ""
    seed = offset = None
    for number, wire, value, _, _ in _fields(view, *span):
        if wire != LENGTH:
            continue
        if number == NODE_NAME:
            name = _text(view, value)
        elif number == NODE_OP_TYPE:
            op_type = _text(view, value)
        elif number == NODE_DOMAIN:
            domain = _text(view, value)
        elif number == NODE_ATTRIBUTE:
            found = _attribute(view, value, model, depth)
            if found is not None:
                seed, offset = found
    if op_type in RANDOM_OPS and domain in ("", "ai.onnx"):
        model.random_nodes.append(RandomNode(name, op_type, seed, offset))


def _attribute(view, span, model: ModelFile, depth: int):
    """Walks tensors and subgraphs held by the attribute; returns (seed, offset) for a float
    attribute named "seed"."""
    name, f_value, f_offset = None, None, None
    for number, wire, value, start, end in _fields(view, *span):
        if number == ATTR_NAME and wire == LENGTH:
            name = _text(view, value)
        elif number == ATTR_F and wire == FIXED32:
            f_value, f_offset = value, end - 4
        elif wire != LENGTH:
            continue
        elif number in (ATTR_T, ATTR_TENSORS):
            _tensor(view, value, model)
        elif number in (ATTR_G, ATTR_GRAPHS):
            _graph(view, value, model, depth + 1)
        elif number in (ATTR_SPARSE, ATTR_SPARSES):
            _sparse_tensor(view, value, model)
    if name == "seed" and f_value is not None:
        return f_value, f_offset
    return None


def _tensor(view, span, model: ModelFile) -> None:
    name, external, location = "", False, ""
    for number, wire, value, _, _ in _fields(view, *span):
        if number == TENSOR_NAME and wire == LENGTH:
            name = _text(view, value)
        elif number == TENSOR_EXTERNAL and wire == LENGTH:
            external = True
            key, text = _entry(view, value)
            if key == "location":
                location = text.decode("utf-8", "backslashreplace")
        elif number == TENSOR_LOCATION and wire == VARINT and value == EXTERNAL:
            external = True
    if external:
        model.external_data.append((name, location))


def _sparse_tensor(view, span, model: ModelFile) -> None:
    for number, wire, value, _, _ in _fields(view, *span):
        if wire == LENGTH and number in (1, 2):  # values, indices
            _tensor(view, value, model)


def _entry(view, span) -> Tuple[str, bytes]:
    key, value = "", b""
    for number, wire, v, _, _ in _fields(view, *span):
        if number == ENTRY_KEY and wire == LENGTH:
            key = _text(view, v)
        elif number == ENTRY_VALUE and wire == LENGTH:
            value = bytes(view[v[0]:v[1]])
    return key, value


def _text(view, span) -> str:
    try:
        return bytes(view[span[0]:span[1]]).decode("utf-8")
    except UnicodeDecodeError:
        raise WireError("a name is not UTF-8") from None


def _fields(view, start: int, end: int) -> Iterator[Tuple[int, int, object, int, int]]:
    """(field number, wire type, value, field start, field end) of each field in view[start:end].
    value: an int for varints, a float for fixed32 (as float32), the raw int for fixed64, and the
    (start, end) span of the payload for length-delimited fields."""
    position = start
    while position < end:
        field_start = position
        key, position = _varint(view, position, end)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise WireError(f"field number 0 at byte {field_start}")
        if wire == VARINT:
            value, position = _varint(view, position, end)
        elif wire == FIXED64:
            if position + 8 > end:
                raise WireError(f"truncated field at byte {field_start}")
            value, position = struct.unpack_from("<Q", view, position)[0], position + 8
        elif wire == LENGTH:
            length, position = _varint(view, position, end)
            if position + length > end:
                raise WireError(f"field at byte {field_start} runs past its message")
            value, position = (position, position + length), position + length
        elif wire == FIXED32:
            if position + 4 > end:
                raise WireError(f"truncated field at byte {field_start}")
            value, position = struct.unpack_from("<f", view, position)[0], position + 4
        else:
            raise WireError(f"wire type {wire} at byte {field_start}")
        yield number, wire, value, field_start, position


def _varint(view, position: int, end: int) -> Tuple[int, int]:
    result = shift = 0
    while True:
        if position >= end or shift > 63:
            raise WireError(f"bad varint at byte {position}")
        byte = view[position]
        position += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, position
        shift += 7


def encode_entry(key: str, value: bytes) -> bytes:
    """A top-level ModelProto field 14 (a metadata_props entry) holding key -> value."""
    entry = _length_field(ENTRY_KEY, key.encode()) + _length_field(ENTRY_VALUE, value)
    return _length_field(MODEL_METADATA, entry)


def _length_field(number: int, payload: bytes) -> bytes:
    return _encode_varint(number << 3 | LENGTH) + _encode_varint(len(payload)) + payload


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)
