"""What each ONNX operator's outputs are, from what is known of its inputs: shapes, element types,
small integer values (shapes, indices, `passes`) and whether they come from constants alone.
runtime/tensor_bounds.py walks a graph with these rules; an operator not listed here gives
outputs of unknown shape, which that walk leaves to onnxruntime's arena bound.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import List, Optional, Tuple

import numpy as np

from .format.onnx_file import NUMPY_TYPES, SMALL_TENSOR, Node, Tensor

FLOAT, INT64, BOOL = 1, 7, 9
# Bytes per element of each TensorProto.DataType (strings: their pointers); 4-bit types as 1.
ELEMENT_BYTES = {1: 4, 2: 1, 3: 1, 4: 2, 5: 2, 6: 4, 7: 8, 8: 8, 9: 1, 10: 2, 11: 8, 12: 4, 13: 8, 14: 8,
                 15: 16, 16: 2, 17: 1, 18: 1, 19: 1, 20: 1, 21: 1, 22: 1, 23: 1}
Shape = Tuple[Optional[int], ...]

SAME_SHAPE = {
    "Identity", "Neg", "Abs", "Floor", "Ceil", "Round", "Relu", "Sigmoid", "Tanh", "Exp", "Log", "Sqrt",
    "Reciprocal", "Sign", "Not", "Erf", "Softmax", "LogSoftmax", "Hardmax", "LeakyRelu", "Elu", "Selu", "Softplus",
    "Softsign", "HardSigmoid", "HardSwish", "Gelu", "Mish", "Clip", "Sin", "Cos", "Tan", "Asin", "Acos", "Atan",
    "Sinh", "Cosh", "Asinh", "Acosh", "Atanh", "ThresholdedRelu", "Shrink", "Celu", "BatchNormalization",
    "LayerNormalization", "InstanceNormalization", "LRN", "CumSum", "ScatterElements", "ScatterND", "Trilu",
    "EyeLike", "Dropout", "RandomUniformLike", "RandomNormalLike", "Bernoulli", "IsNaN", "IsInf", "Cast",
    "CastLike", "MeanVarianceNormalization", "LpNormalization",
}
BOOL_RESULTS = {"Not", "IsNaN", "IsInf", "Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual", "And", "Or",
                "Xor"}
BROADCAST = {"Add", "Sub", "Mul", "Div", "Pow", "Mod", "Max", "Min", "Sum", "Mean", "Equal", "Less", "Greater",
             "LessOrEqual", "GreaterOrEqual", "And", "Or", "Xor", "BitShift", "PRelu", "Where", "BitwiseAnd",
             "BitwiseOr", "BitwiseXor"}
# Operators whose first output holds values of their first input, unchanged (some of them).
VALUES_KEPT = {"Identity", "Cast", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose", "Tile", "Expand",
               "Slice", "Concat", "Gather"}
REDUCE = {"ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2", "ReduceLogSum",
          "ReduceLogSumExp", "ReduceSumSquare", "ArgMax", "ArgMin"}
# Small values are computed for these (numpy's result is ONNX's for the integers shapes hold).
VALUE_OPS = {
    "Identity": lambda a: a[0], "Neg": lambda a: -a[0], "Abs": lambda a: np.abs(a[0]), "Not": lambda a: ~a[0],
    "Relu": lambda a: np.maximum(a[0], 0), "Floor": lambda a: np.floor(a[0]), "Ceil": lambda a: np.ceil(a[0]),
    "Sign": lambda a: np.sign(a[0]),
    "Add": lambda a: a[0] + a[1], "Sub": lambda a: a[0] - a[1], "Mul": lambda a: a[0] * a[1],
    "Div": lambda a: _divide(a[0], a[1]), "Max": lambda a: functools.reduce(np.maximum, a),
    "Min": lambda a: functools.reduce(np.minimum, a),
    "Sum": lambda a: sum(a[1:], a[0]), "Equal": lambda a: a[0] == a[1], "Less": lambda a: a[0] < a[1],
    "Greater": lambda a: a[0] > a[1], "LessOrEqual": lambda a: a[0] <= a[1], "GreaterOrEqual": lambda a: a[0] >= a[1],
    "And": lambda a: a[0] & a[1], "Or": lambda a: a[0] | a[1], "Where": lambda a: np.where(a[0], a[1], a[2]),
    "Mod": lambda a: np.mod(a[0], a[1]),
}


@dataclass
class Value:
    """What is known of one tensor: its shape (None: not even its rank; a dim None: that dim), its
    element type (0: unknown), its values where small, and whether it is computed from constants
    alone (onnxruntime folds those when it loads the file)."""

    shape: Optional[Shape] = None
    data_type: int = 0
    values: Optional[np.ndarray] = None
    constant: bool = False

    @property
    def known(self) -> bool:
        return self.shape is not None and all(d is not None for d in self.shape)

    @property
    def bytes(self) -> int:
        return math.prod(self.shape) * ELEMENT_BYTES.get(self.data_type, 1) if self.known else 0


UNKNOWN = Value()
ABSENT = Value()  # an optional input left out (an empty name)


def tensor_value(tensor: Tensor) -> Value:
    dims = tuple(d if d >= 0 else None for d in tensor.dims)
    return Value(dims, tensor.data_type, tensor.values, constant=True)


def infer(node: Node, inputs: List[Value]) -> List[Value]:
    """The node's outputs, as far as they are known."""
    op, attrs = node.op_type, node.attributes
    if node.domain not in ("", "ai.onnx"):
        return []
    first = inputs[0] if inputs else UNKNOWN
    constant = bool(inputs) and all(v.constant for v in inputs) and op not in ("RandomUniformLike", "RandomNormalLike",
                                                                                 "Bernoulli", "Multinomial")
    data_type = first.data_type
    if op in BOOL_RESULTS:
        data_type = BOOL
    elif op in ("Cast",):
        data_type = attrs.get("to", 0)
    elif op == "CastLike" and len(inputs) > 1:
        data_type = inputs[1].data_type
    elif op == "Where" and len(inputs) > 1:
        data_type = inputs[1].data_type

    if op == "Constant":
        return [_constant(attrs)]
    if op in ("RandomUniform", "RandomNormal"):
        return [Value(tuple(attrs.get("shape", ())) or None, attrs.get("dtype", FLOAT))]
    if op in SAME_SHAPE:
        if op in ("RandomUniformLike", "RandomNormalLike", "Bernoulli") and "dtype" in attrs:
            data_type = attrs["dtype"]
        values = _values(op, inputs, first.shape)
        if op == "Cast" and values is not None:
            values = values.astype(NUMPY_TYPES[data_type]) if data_type in NUMPY_TYPES else None
        out = Value(first.shape, data_type, values, constant)
        return [out, Value(first.shape, BOOL)] if op == "Dropout" else [out]
    if op in BROADCAST:
        shape = _broadcast([v.shape for v in inputs])
        return [Value(shape, data_type, _values(op, inputs, shape), constant)]

    if op in ("Shape", "Size", "ConstantOfShape"):
        return [_shape_source(op, first, attrs, constant)]
    found = _moved_shape(op, first, inputs, attrs, data_type) or _computed_shape(op, first, inputs, attrs, data_type)
    if found is None:
        return []
    shape, values, data_type = found
    if shape is not None and any(d is not None and d < 0 for d in shape):
        return []  # onnxruntime refuses it
    if values is None and shape is not None and all(v.values is not None for v in inputs[:1]) \
            and op in ("Reshape", "Unsqueeze", "Squeeze", "Expand", "Tile", "Slice") and _small(shape):
        values = _moved(op, first.values, shape, inputs, attrs)
    return [Value(shape, data_type, values, constant)]


def _shape_source(op: str, first: Value, attrs: dict, constant: bool) -> Value:
    """Shape, Size and ConstantOfShape: a shape read, or a tensor made from one."""
    shape: Optional[Shape] = None
    values = None
    if op == "Shape":
        if first.shape is not None:
            start, end = attrs.get("start", 0), attrs.get("end", None)
            dims = first.shape[slice(start, end)]
            shape = (len(dims),)
            values = np.array(dims, np.int64) if all(d is not None for d in dims) else None
        return Value(shape, INT64, values, constant or values is not None)
    if op == "Size":
        size = math.prod(first.shape) if first.known else None
        return Value((), INT64, None if size is None else np.array(size, np.int64), size is not None)
    if op == "ConstantOfShape":
        fill = attrs.get("value")
        dims = _ints(first)
        if dims is not None:
            shape = tuple(dims)
            if math.prod(shape) <= SMALL_TENSOR and isinstance(fill, Tensor) and fill.values is not None:
                values = np.full(shape, fill.values.reshape(-1)[0])
        return Value(shape, fill.data_type if isinstance(fill, Tensor) else FLOAT, values, constant)


def _moved_shape(op: str, first: Value, inputs: List[Value], attrs: dict, data_type: int) -> Optional[tuple]:
    """(shape, values, element type) of the operators that move, repeat or make index values; None for others."""
    shape: Optional[Shape] = None
    values = None
    if op == "Reshape":
        target = _ints(inputs[1]) if len(inputs) > 1 else None
        if target is not None:
            shape = _reshape(first.shape, target, attrs.get("allowzero", 0))
    elif op == "Expand":
        target = _ints(inputs[1]) if len(inputs) > 1 else None
        if target is not None:
            shape = _broadcast([first.shape, tuple(target)])
    elif op == "Tile":
        repeats = _ints(inputs[1]) if len(inputs) > 1 else None
        if repeats is not None and first.shape is not None and len(repeats) == len(first.shape):
            shape = tuple(None if d is None else d * r for d, r in zip(first.shape, repeats))
    elif op == "Concat":
        shapes = [v.shape for v in inputs]
        if all(s is not None for s in shapes) and shapes and len({len(s) for s in shapes}) == 1:
            axis = attrs.get("axis", 0) % len(shapes[0])
            along = [s[axis] for s in shapes]
            shape = tuple((None if None in along else sum(along)) if i == axis else
                          next((s[i] for s in shapes if s[i] is not None), None) for i in range(len(shapes[0])))
            if all(v.values is not None for v in inputs):
                values = np.concatenate([v.values for v in inputs], axis=axis)
    elif op == "Gather":
        indices = inputs[1] if len(inputs) > 1 else UNKNOWN
        if first.shape is not None and indices.shape is not None:
            axis = attrs.get("axis", 0) % len(first.shape)
            shape = first.shape[:axis] + indices.shape + first.shape[axis + 1:]
            if first.values is not None and indices.values is not None:
                values = np.take(first.values, indices.values, axis=axis)
    elif op in ("Unsqueeze", "Squeeze"):
        axes = attrs.get("axes") if "axes" in attrs else (_ints(inputs[1]) if len(inputs) > 1 else None)
        if first.shape is not None:
            shape = _squeeze(first.shape, axes, op == "Unsqueeze")
    elif op == "Slice":
        shape = _slice(first.shape, inputs, attrs)
    elif op == "Range":
        start, limit, delta = (_scalar(v) for v in (inputs + [UNKNOWN] * 3)[:3])
        if None not in (start, limit, delta) and delta != 0:
            shape = (max(math.ceil((limit - start) / delta), 0),)
            if shape[0] <= SMALL_TENSOR:
                values = np.arange(start, limit, delta).astype(first.values.dtype)
    elif op == "Transpose":
        if first.shape is not None:
            perm = attrs.get("perm", list(range(len(first.shape)))[::-1])
            shape = tuple(first.shape[p] for p in perm)
    elif op == "Flatten":
        if first.shape is not None:
            axis = attrs.get("axis", 1) % (len(first.shape) + 1) if first.shape else 0
            shape = (_product(first.shape[:axis]), _product(first.shape[axis:]))
    else:
        return None
    return shape, values, data_type


def _computed_shape(op: str, first: Value, inputs: List[Value], attrs: dict, data_type: int) -> Optional[tuple]:
    """(shape, None, element type) of the operators that compute new values; None for others."""
    shape: Optional[Shape] = None
    if op == "MatMul":
        shape = _matmul(first.shape, inputs[1].shape if len(inputs) > 1 else None)
    elif op == "Gemm":
        b = inputs[1].shape if len(inputs) > 1 else None
        if first.shape is not None and b is not None and len(first.shape) == 2 and len(b) == 2:
            shape = (first.shape[1 if attrs.get("transA", 0) else 0], b[0 if attrs.get("transB", 0) else 1])
    elif op in ("Resize", "Upsample"):
        shape = _resize(first.shape, inputs, attrs)
    elif op == "Pad":
        pads = attrs.get("pads") if "pads" in attrs else (_ints(inputs[1]) if len(inputs) > 1 else None)
        if first.shape is not None and pads is not None and len(inputs) <= 3 and len(pads) == 2 * len(first.shape):
            rank = len(first.shape)
            shape = tuple(None if d is None else d + pads[i] + pads[i + rank] for i, d in enumerate(first.shape))
    elif op == "OneHot":
        depth = _scalar(inputs[1]) if len(inputs) > 1 else None
        if first.shape is not None and depth is not None:
            axis = attrs.get("axis", -1) % (len(first.shape) + 1)
            shape = first.shape[:axis] + (int(depth),) + first.shape[axis:]
            data_type = inputs[2].data_type if len(inputs) > 2 else 0
    elif op in REDUCE:
        shape = _reduce(op, first.shape, inputs, attrs)
        if op in ("ArgMax", "ArgMin"):
            data_type = INT64
    else:
        return None
    return shape, None, data_type


def _constant(attrs: dict) -> Value:
    for key, value in attrs.items():
        if isinstance(value, Tensor):
            return tensor_value(value)
        if key == "value_int":
            return Value((), INT64, np.array(value, np.int64), True)
        if key == "value_ints":
            return Value((len(value),), INT64, np.array(value, np.int64), True)
        if key == "value_float":
            return Value((), FLOAT, np.array(value, np.float32), True)
        if key == "value_floats":
            return Value((len(value),), FLOAT, np.array(value, np.float32), True)
    return UNKNOWN


def _values(op: str, inputs: List[Value], shape: Optional[Shape]) -> Optional[np.ndarray]:
    if op not in VALUE_OPS and op != "Cast" or not _small(shape):
        return None
    if not inputs or any(v.values is None for v in inputs if v is not ABSENT):
        return None
    if op == "Cast":
        return inputs[0].values
    with np.errstate(all="ignore"):
        return np.asarray(VALUE_OPS[op]([v.values for v in inputs]))


def _divide(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """ONNX Div: integers truncate toward zero."""
    if a.dtype.kind in "iu" and b.dtype.kind in "iu":
        return (np.sign(a) * np.sign(b) * (np.abs(a) // np.abs(b))).astype(np.result_type(a, b))
    return a / b


def _moved(op: str, values: np.ndarray, shape: Shape, inputs: List[Value], attrs: dict) -> Optional[np.ndarray]:
    """Small values through the operators that only move them."""
    if op in ("Reshape", "Unsqueeze", "Squeeze"):
        return values.reshape(shape) if values.size == math.prod(shape) else None
    if op == "Expand":
        return np.broadcast_to(values, shape).copy()
    if op == "Tile":
        return np.tile(values, _ints(inputs[1]))
    if op == "Slice":
        index = _slice_index(values.shape, inputs, attrs)
        return values[index] if index is not None else None
    return None


def _ints(value: Value) -> Optional[List[int]]:
    """A 1-D (or scalar) integer tensor's values as ints, or None if unknown."""
    if value.values is None or value.values.dtype.kind not in "iub" or value.values.ndim > 1:
        return None
    return [int(v) for v in value.values.reshape(-1)]


def _scalar(value: Value):
    if value.values is None or value.values.size != 1 or value.values.dtype.kind not in "iuf":
        return None
    return value.values.reshape(-1)[0].item()


def _small(shape: Optional[Shape]) -> bool:
    return shape is not None and all(d is not None for d in shape) and math.prod(shape) <= SMALL_TENSOR


def _product(dims: Shape) -> Optional[int]:
    return None if None in dims else math.prod(dims)


def _broadcast(shapes: List[Optional[Shape]]) -> Optional[Shape]:
    if any(s is None for s in shapes) or not shapes:
        return None
    rank = max(len(s) for s in shapes)
    out = []
    for i in range(rank):
        dims = [s[i - rank + len(s)] for s in shapes if i - rank + len(s) >= 0]
        known = {d for d in dims if d is not None and d != 1}
        if len(known) > 1:
            return None  # onnxruntime refuses it
        out.append(known.pop() if known else (None if None in dims else 1))
    return tuple(out)


def _reshape(shape: Optional[Shape], target: List[int], allowzero: int) -> Optional[Shape]:
    out: List[Optional[int]] = []
    for i, d in enumerate(target):
        if d == 0 and not allowzero:
            out.append(shape[i] if shape is not None and i < len(shape) else None)
        else:
            out.append(d)
    if -1 in out:
        rest = [d for d in out if d != -1]
        total = _product(shape) if shape is not None else None
        out[out.index(-1)] = (total // math.prod(rest) if total is not None and None not in rest and math.prod(rest)
                              else None)
    return tuple(out)


def _squeeze(shape: Shape, axes: Optional[List[int]], unsqueeze: bool) -> Optional[Shape]:
    if unsqueeze:
        if axes is None:
            return None
        rank = len(shape) + len(axes)
        axes = sorted(a % rank for a in axes)
        out = list(shape)
        for a in axes:
            out.insert(a, 1)
        return tuple(out)
    if axes is None:
        return None if None in shape else tuple(d for d in shape if d != 1)
    axes = {a % len(shape) for a in axes}
    return tuple(d for i, d in enumerate(shape) if i not in axes)


def _slice_index(shape: Shape, inputs: List[Value], attrs: dict):
    """A tuple of slices for Slice (inputs from opset 10, attributes before), or None."""
    if "starts" in attrs:
        starts, ends = attrs["starts"], attrs["ends"]
        axes, steps = attrs.get("axes"), None
    else:
        starts, ends = (_ints(inputs[i]) if len(inputs) > i else None for i in (1, 2))
        axes = _ints(inputs[3]) if len(inputs) > 3 and inputs[3] is not ABSENT else None
        steps = _ints(inputs[4]) if len(inputs) > 4 and inputs[4] is not ABSENT else None
        if len(inputs) > 3 and inputs[3] is not ABSENT and axes is None:
            return None
        if len(inputs) > 4 and inputs[4] is not ABSENT and steps is None:
            return None
    if starts is None or ends is None:
        return None
    axes = list(range(len(starts))) if axes is None else axes
    steps = [1] * len(starts) if steps is None else steps
    index = [slice(None)] * len(shape)
    for start, end, axis, step in zip(starts, ends, axes, steps):
        index[axis % len(shape)] = slice(start, end, step)
    return tuple(index)


def _slice(shape: Optional[Shape], inputs: List[Value], attrs: dict) -> Optional[Shape]:
    if shape is None:
        return None
    index = _slice_index(shape, inputs, attrs)
    if index is None:
        return None
    return tuple(d if s == slice(None) else (None if d is None else len(range(*s.indices(d))))
                 for d, s in zip(shape, index))


def _matmul(a: Optional[Shape], b: Optional[Shape]) -> Optional[Shape]:
    if a is None or b is None or not a or not b:
        return None
    if len(a) == 1 and len(b) == 1:
        return ()
    if len(a) == 1:
        return b[:-2] + b[-1:]
    if len(b) == 1:
        return a[:-1]
    batch = _broadcast([a[:-2], b[:-2]])
    return None if batch is None else batch + (a[-2], b[-1])


def _resize(shape: Optional[Shape], inputs: List[Value], attrs: dict) -> Optional[Shape]:
    if shape is None or "axes" in attrs:
        return None
    sizes = _ints(inputs[3]) if len(inputs) > 3 and inputs[3].values is not None and inputs[3].values.size else None
    if sizes is not None:
        return tuple(sizes) if len(sizes) == len(shape) else None
    scales_input = inputs[1] if len(inputs) == 2 else (inputs[2] if len(inputs) > 2 else ABSENT)
    scales = attrs.get("scales") if "scales" in attrs else (
        None if scales_input.values is None or not scales_input.values.size else list(scales_input.values.reshape(-1)))
    if scales is None or len(scales) != len(shape):
        return None
    return tuple(None if d is None else int(math.floor(d * float(s))) for d, s in zip(shape, scales))


def _reduce(op: str, shape: Optional[Shape], inputs: List[Value], attrs: dict) -> Optional[Shape]:
    if shape is None:
        return None
    keep = attrs.get("keepdims", 1)
    if op in ("ArgMax", "ArgMin"):
        axes = [attrs.get("axis", 0)]
    elif "axes" in attrs:
        axes = attrs["axes"]
    elif len(inputs) > 1 and inputs[1] is not ABSENT:
        axes = _ints(inputs[1])
        if axes is None:
            return None
    else:
        axes = []
    if not axes:
        if attrs.get("noop_with_empty_axes", 0):
            return shape
        axes = list(range(len(shape)))
    axes = {a % len(shape) for a in axes} if shape else set()
    return tuple(1 if i in axes else d for i, d in enumerate(shape) if keep or i not in axes)
