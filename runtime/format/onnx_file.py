"""What the runtime needs to know of an ONNX file before onnxruntime sees it, read straight from
its protobuf bytes (the runtime does not depend on the onnx package).

One pass over the message tree, skipping tensor payloads whole, finds:
- the random nodes and where each one's float `seed` attribute lies (runtime/format/seeds.py rewrites
  those 4 bytes), counted from the graph rather than from byte patterns, so an initializer full of
  seed-like bytes costs nothing;
- initializers whose data lies in external files (the runtime refuses them by default);
- `metadata_props`, as raw bytes, decoded by the caller;
- the main graph's nodes (inputs, outputs, attributes), the shapes of its inputs, initializers
  and sparse initializers, and the values of its small tensors: what runtime/tensor_bounds.py
  needs to bound the tensors the graph asks for before onnxruntime allocates them.

Field numbers are those of onnx/onnx.proto. A file that is not well-formed protobuf, or nests
graphs deeper than MAX_DEPTH, is a ModelFileError.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Optional, Tuple

import numpy as np

from ..errors import ModelFileError

RANDOM_OPS = ("RandomUniformLike", "RandomNormalLike", "RandomUniform", "RandomNormal", "Bernoulli", "Multinomial")
# Graphs nest through If / Loop / Scan attributes; real models go a few levels deep.
MAX_DEPTH = 32
VARINT, FIXED64, LENGTH, FIXED32 = 0, 1, 2, 5

# ModelProto
MODEL_GRAPH, MODEL_METADATA, MODEL_TRAINING, MODEL_FUNCTIONS = 7, 14, 20, 25
# GraphProto
GRAPH_NODE, GRAPH_INITIALIZER, GRAPH_INPUT, GRAPH_SPARSE_INITIALIZER = 1, 5, 11, 15
# NodeProto
NODE_INPUT, NODE_OUTPUT, NODE_NAME, NODE_OP_TYPE, NODE_ATTRIBUTE, NODE_DOMAIN = 1, 2, 3, 4, 5, 7
# AttributeProto
ATTR_NAME, ATTR_F, ATTR_I, ATTR_S, ATTR_T, ATTR_G, ATTR_FLOATS, ATTR_INTS = 1, 2, 3, 4, 5, 6, 7, 8
ATTR_TENSORS, ATTR_GRAPHS, ATTR_SPARSE, ATTR_SPARSES = 10, 11, 22, 23
# TensorProto
TENSOR_DIMS, TENSOR_DATA_TYPE, TENSOR_FLOATS, TENSOR_INT32S, TENSOR_INT64S = 1, 2, 4, 5, 7
TENSOR_NAME, TENSOR_RAW, TENSOR_DOUBLES, TENSOR_UINT64S, TENSOR_EXTERNAL, TENSOR_LOCATION = 8, 9, 10, 11, 13, 14
EXTERNAL = 1
# SparseTensorProto
SPARSE_VALUES, SPARSE_INDICES, SPARSE_DIMS = 1, 2, 3
# ValueInfoProto > TypeProto > TypeProto.Tensor > TensorShapeProto > Dimension
VALUE_NAME, VALUE_TYPE, TYPE_TENSOR, TENSOR_ELEM_TYPE, TENSOR_SHAPE, SHAPE_DIM, DIM_VALUE = 1, 2, 1, 1, 2, 1, 1
# TensorProto.DataType -> numpy, for the values kept of small tensors (raw_data is little-endian).
NUMPY_TYPES = {1: "<f4", 2: "u1", 3: "i1", 4: "<u2", 5: "<i2", 6: "<i4", 7: "<i8", 9: "?", 10: "<f2",
               11: "<f8", 12: "<u4", 13: "<u8"}
# Values are kept for tensors of at most this many elements: shapes and indices, never weights.
SMALL_TENSOR = 1024
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
class Tensor:
    """A TensorProto's name, type and shape; its values only where it is small (SMALL_TENSOR)
    and its data well-formed."""

    name: str
    data_type: int
    dims: Tuple[int, ...]
    values: Optional[np.ndarray] = None


@dataclass
class Node:
    name: str
    op_type: str
    domain: str
    inputs: List[str]
    outputs: List[str]
    # int, float, bytes, Tensor, Graph, or a list of ints, floats or Graphs
    attributes: Dict[str, object] = field(default_factory=dict)


@dataclass
class Graph:
    nodes: List[Node] = field(default_factory=list)
    initializers: Dict[str, Tensor] = field(default_factory=dict)
    sparse_initializers: List[Tensor] = field(default_factory=list)  # their dense shapes
    # name -> (element type, dims), a dim None where it is symbolic or absent
    inputs: Dict[str, Tuple[int, Tuple[Optional[int], ...]]] = field(default_factory=dict)


@dataclass
class ModelFile:
    """The parts of an ONNX file the runtime checks before creating a session."""

    metadata: Dict[str, bytes] = field(default_factory=dict)
    metadata_spans: Dict[str, Tuple[int, int]] = field(default_factory=dict)  # key -> the entry's bytes
    random_nodes: List[RandomNode] = field(default_factory=list)
    external_data: List[Tuple[str, str]] = field(default_factory=list)  # (tensor, location) stored outside
    has_graph: bool = False
    graph: Graph = field(default_factory=Graph)  # the main graph


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
                model.graph = _graph(view, value, model, 1)
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


def _graph(view, span, model: ModelFile, depth: int) -> Graph:
    if depth > MAX_DEPTH:
        raise WireError(f"graphs nested more than {MAX_DEPTH} deep")
    graph = Graph()
    for number, wire, value, _, _ in _fields(view, *span):
        if wire != LENGTH:
            continue
        if number == GRAPH_NODE:
            graph.nodes.append(_node(view, value, model, depth))
        elif number == GRAPH_INITIALIZER:
            tensor = _tensor(view, value, model)
            graph.initializers[tensor.name] = tensor
        elif number == GRAPH_SPARSE_INITIALIZER:
            graph.sparse_initializers.append(_sparse_tensor(view, value, model))
        elif number == GRAPH_INPUT:
            name, elem_type, dims = _value_info(view, value)
            graph.inputs[name] = (elem_type, dims)
    return graph


def _node(view, span, model: ModelFile, depth: int) -> Node:
    node = Node("", "", "", [], [])
    seed = offset = None
    for number, wire, value, _, _ in _fields(view, *span):
        if wire != LENGTH:
            continue
        if number == NODE_INPUT:
            node.inputs.append(_text(view, value))
        elif number == NODE_OUTPUT:
            node.outputs.append(_text(view, value))
        elif number == NODE_NAME:
            node.name = _text(view, value)
        elif number == NODE_OP_TYPE:
            node.op_type = _text(view, value)
        elif number == NODE_DOMAIN:
            node.domain = _text(view, value)
        elif number == NODE_ATTRIBUTE:
            name, attribute, found = _attribute(view, value, model, depth)
            node.attributes[name] = attribute
            if found is not None:
                seed, offset = found
    if node.op_type in RANDOM_OPS and node.domain in ("", "ai.onnx"):
        model.random_nodes.append(RandomNode(node.name, node.op_type, seed, offset))
    return node


def _attribute(view, span, model: ModelFile, depth: int):
    """(name, value, found) of an AttributeProto, walking the tensors and subgraphs it holds;
    found is (seed, offset) for a float attribute named "seed", else None. The value is the
    last of the fields it sets (a well-formed attribute sets one)."""
    name, attribute, f_value, f_offset = "", None, None, None
    ints: List[int] = []
    floats: List[float] = []
    graphs: List[Graph] = []
    for number, wire, value, start, end in _fields(view, *span):
        if number == ATTR_NAME and wire == LENGTH:
            name = _text(view, value)
        elif number == ATTR_F and wire == FIXED32:
            f_value, f_offset = value, end - 4
            attribute = value
        elif number == ATTR_I and wire == VARINT:
            attribute = _signed(value)
        elif number == ATTR_INTS:
            ints += _repeated_varints(view, wire, value)
            attribute = ints
        elif number == ATTR_FLOATS:
            floats += _repeated_floats(view, wire, value)
            attribute = floats
        elif wire != LENGTH:
            continue
        elif number == ATTR_S:
            attribute = bytes(view[value[0]:value[1]])
        elif number in (ATTR_T, ATTR_TENSORS):
            attribute = _tensor(view, value, model)
        elif number in (ATTR_G, ATTR_GRAPHS):
            graphs.append(_graph(view, value, model, depth + 1))
            attribute = graphs[0] if number == ATTR_G else graphs
        elif number in (ATTR_SPARSE, ATTR_SPARSES):
            attribute = _sparse_tensor(view, value, model)
    found = (f_value, f_offset) if name == "seed" and f_value is not None else None
    return name, attribute, found


def _tensor(view, span, model: ModelFile) -> Tensor:
    name, external, location = "", False, ""
    dims: List[int] = []
    data_type = 0
    data = []  # (field number, wire type, value) of the data fields, decoded once dims are known
    for number, wire, value, _, _ in _fields(view, *span):
        if number == TENSOR_NAME and wire == LENGTH:
            name = _text(view, value)
        elif number == TENSOR_DIMS:
            dims += [_signed(d) for d in _repeated_varints(view, wire, value)]
        elif number == TENSOR_DATA_TYPE and wire == VARINT:
            data_type = value
        elif number in (TENSOR_FLOATS, TENSOR_INT32S, TENSOR_INT64S, TENSOR_RAW, TENSOR_DOUBLES, TENSOR_UINT64S):
            data.append((number, wire, value))
        elif number == TENSOR_EXTERNAL and wire == LENGTH:
            external = True
            key, text = _entry(view, value)
            if key == "location":
                location = text.decode("utf-8", "backslashreplace")
        elif number == TENSOR_LOCATION and wire == VARINT and value == EXTERNAL:
            external = True
    if external:
        model.external_data.append((name, location))
    tensor = Tensor(name, data_type, tuple(dims))
    if not external and all(d >= 0 for d in dims) and _count(dims) <= SMALL_TENSOR:
        tensor.values = _values(view, data_type, tensor.dims, data)
    return tensor


def _values(view, data_type: int, dims: Tuple[int, ...], data) -> Optional[np.ndarray]:
    """A small tensor's values, or None where its type is not a number or its data does not
    match its shape (onnxruntime refuses such a file; the bounds just know nothing of it)."""
    if data_type not in NUMPY_TYPES:
        return None
    dtype = np.dtype(NUMPY_TYPES[data_type])
    numbers: list = []
    for number, wire, value in data:
        if number == TENSOR_RAW and wire == LENGTH:
            raw = bytes(view[value[0]:value[1]])
            if len(raw) != _count(dims) * dtype.itemsize:
                return None
            return np.frombuffer(raw, dtype).astype(dtype.newbyteorder("="), copy=False).reshape(dims)
        if number == TENSOR_FLOATS:
            numbers += _repeated_floats(view, wire, value)
        elif number == TENSOR_DOUBLES:
            numbers += [struct.unpack("<d", struct.pack("<Q", v))[0] for v in _repeated_fixed64(view, wire, value)]
        elif number in (TENSOR_INT32S, TENSOR_INT64S):
            numbers += [_signed(v) for v in _repeated_varints(view, wire, value)]
        elif number == TENSOR_UINT64S:
            numbers += _repeated_varints(view, wire, value)
    if len(numbers) != _count(dims):
        return None
    try:
        return np.array(numbers).astype(dtype.newbyteorder("=")).reshape(dims)
    except (ValueError, OverflowError):
        return None


def _sparse_tensor(view, span, model: ModelFile) -> Tensor:
    """The dense tensor a SparseTensorProto stands for: onnxruntime makes it dense on load."""
    dims: List[int] = []
    values = None
    for number, wire, value, _, _ in _fields(view, *span):
        if wire == LENGTH and number in (SPARSE_VALUES, SPARSE_INDICES):
            tensor = _tensor(view, value, model)
            if number == SPARSE_VALUES:
                values = tensor
        elif number == SPARSE_DIMS:
            dims += [_signed(d) for d in _repeated_varints(view, wire, value)]
    return Tensor(values.name if values else "", values.data_type if values else 0, tuple(dims))


def _value_info(view, span) -> Tuple[str, int, Tuple[Optional[int], ...]]:
    """(name, element type, dims) of a ValueInfoProto; 0 and () where it has no tensor type."""
    name, elem_type, dims = "", 0, []
    for number, wire, value, _, _ in _fields(view, *span):
        if number == VALUE_NAME and wire == LENGTH:
            name = _text(view, value)
        elif number == VALUE_TYPE and wire == LENGTH:
            for n, w, v, _, _ in _fields(view, *value):
                if n != TYPE_TENSOR or w != LENGTH:
                    continue
                for n2, w2, v2, _, _ in _fields(view, *v):
                    if n2 == TENSOR_ELEM_TYPE and w2 == VARINT:
                        elem_type = v2
                    elif n2 == TENSOR_SHAPE and w2 == LENGTH:
                        for n3, w3, v3, _, _ in _fields(view, *v2):
                            if n3 == SHAPE_DIM and w3 == LENGTH:
                                dim = None
                                for n4, w4, v4, _, _ in _fields(view, *v3):
                                    if n4 == DIM_VALUE and w4 == VARINT:
                                        dim = _signed(v4)
                                dims.append(dim)
    return name, elem_type, tuple(dims)


def _count(dims) -> int:
    count = 1
    for d in dims:
        count *= d
    return count


def _signed(value: int) -> int:
    """An int64 from its varint (negative numbers are sent as 64-bit two's complement)."""
    return value - (1 << 64) if value >= 1 << 63 else value


def _repeated_varints(view, wire: int, value) -> List[int]:
    """A repeated varint field's values: one unpacked, or a packed run."""
    if wire == VARINT:
        return [value]
    if wire != LENGTH:
        return []
    out, position, end = [], value[0], value[1]
    while position < end:
        number, position = _varint(view, position, end)
        out.append(number)
    return out


def _repeated_floats(view, wire: int, value) -> List[float]:
    return _repeated_fixed(view, wire, value, FIXED32, "f")


def _repeated_fixed64(view, wire: int, value) -> List[int]:
    return _repeated_fixed(view, wire, value, FIXED64, "Q")


def _repeated_fixed(view, wire: int, value, fixed_wire: int, code: str) -> list:
    """A repeated fixed-width field: one value, or a packed run of them (little-endian `code`)."""
    if wire == fixed_wire:
        return [value]
    width = struct.calcsize(code)
    if wire != LENGTH or (value[1] - value[0]) % width:
        return []
    return list(struct.unpack(f"<{(value[1] - value[0]) // width}{code}", view[value[0]:value[1]]))


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
