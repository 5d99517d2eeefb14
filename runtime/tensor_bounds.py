"""The largest tensors an ONNX graph asks for, found before onnxruntime allocates them.

A small file can ask for a huge tensor: an initializer or Constant with a [60000, 60000] shape,
a ConstantOfShape, Expand, Tile, Resize or Pad whose shape input is a constant, or a shape
computed from the input (Shape -> Gather -> Mul -> ConstantOfShape). onnxruntime gives no shape
inference to Python and runtime/ does not depend on the onnx package, so this module follows the
graph itself, as far as it can without running it:

- it knows the shapes of the graph's inputs (their symbolic dims unknown at load, the feed's at
  run time), initializers and constants, and the values of small integer tensors (shapes,
  indices, the `passes` input);
- it carries shapes and small values through the operators that move or make shapes (the rules of
  runtime/operator_shapes.py), and stops at any other operator: what follows one is
  unknown here, and left to onnxruntime's arena bound (runtime/session.py).

Every tensor whose shape is known is checked against the tensor_mb limit, and so is the sum of
the tensors computed from constants alone, which onnxruntime folds into new initializers when it
loads the file (below 1 GiB each). docs/DESIGN.md: Bounded work.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Iterable, List, Mapping, Optional, Tuple

import numpy as np

from .limits import Limits
from .format.onnx_file import SMALL_TENSOR, Graph, Node
from .operator_shapes import ABSENT, UNKNOWN, VALUES_KEPT, Value, infer, tensor_value
MIB = 2**20


@dataclass(frozen=True)
class Largest:
    """The largest tensor found, and what makes it."""

    bytes: int
    what: str


def check(graph: Graph, limits: Limits, path: str, feeds: Optional[Mapping[str, np.ndarray]] = None) -> None:
    """InputError (Limits.check) if a tensor the graph asks for is over the tensor_mb limit.

    feeds None: at load, from the file alone (also: what onnxruntime folds at load, together).
    feeds {input name: array}: for one run, from the shapes of the arrays (the values of the small
    ones) fed to it."""
    largest, folded = largest_tensors(graph, feeds)
    if largest is not None:
        limits.check("tensor_mb", largest.bytes / MIB, f"{path}: {largest.what} ({_mib(largest.bytes)})")
    if folded is not None:
        limits.check("tensor_mb", folded.bytes / MIB, f"{path}: {folded.what} ({_mib(folded.bytes)} in all)")


def largest_tensors(graph: Graph, feeds: Optional[Mapping[str, np.ndarray]] = None
                    ) -> Tuple[Optional[Largest], Optional[Largest]]:
    """(the largest tensor with a known shape, the tensors computed from constants together)."""
    _, found, folded = _environment(graph, feeds)
    largest = max(found, key=lambda f: f.bytes, default=None)
    together = Largest(folded[0], f"the {folded[1]} tensors onnxruntime computes from constants when it loads "
                                  "the file") if feeds is None and folded[1] else None
    return largest, together


def vocabularies(graph: Graph) -> Dict[str, int]:
    """{graph input: the rows of the smallest table it indexes}, for the inputs whose values reach
    a Gather's indices unchanged (through casts and reshapes): token ids for an Embedding. An id
    outside [0, rows) makes onnxruntime fail in the middle of a run with a message of its own."""
    env, _, _ = _environment(graph, None)
    reaches = {name: name for name in graph.inputs}  # tensor -> the graph input whose values it holds
    found: Dict[str, int] = {}
    for node in graph.nodes:
        if node.domain not in ("", "ai.onnx") or not node.inputs:
            continue
        if node.op_type == "Gather" and len(node.inputs) > 1 and node.inputs[1] in reaches:
            table = env.get(node.inputs[0], UNKNOWN).shape
            if table:
                rows = table[node.attributes.get("axis", 0) % len(table)]
                source = reaches[node.inputs[1]]
                if rows is not None:
                    found[source] = min(rows, found.get(source, rows))
        elif node.op_type in VALUES_KEPT and node.inputs[0] in reaches:
            for output in node.outputs[:1]:
                reaches[output] = reaches[node.inputs[0]]
    return found


def index_sources(graph: Graph) -> Dict[str, List[str]]:
    """{Gather node's name: the graph inputs its indices are computed from, in any way}: which
    input to name when onnxruntime refuses an index that `vocabularies` could not foresee (Keras 3
    wraps negative ids with Where(ids < 0, ids + rows, ids), as numpy does, so the ids do not
    reach the Gather unchanged)."""
    depends: Dict[str, set] = {name: {name} for name in graph.inputs}
    found: Dict[str, List[str]] = {}
    for node in graph.nodes:
        if node.op_type in ("Shape", "Size", "ConstantOfShape"):  # the input's shape, not its values
            continue
        # The operators that move values take their other inputs (repeats, shapes) as shapes.
        carriers = node.inputs[:1] if node.op_type in VALUES_KEPT and node.op_type not in ("Concat", "Gather") \
            else node.inputs
        sources = set().union(*(depends.get(name, set()) for name in carriers))
        if node.op_type == "Gather" and len(node.inputs) > 1 and depends.get(node.inputs[1]):
            found[node.name] = sorted(depends[node.inputs[1]])
        for output in node.outputs:
            if sources:
                depends[output] = sources
    return found


def _environment(graph: Graph, feeds: Optional[Mapping[str, np.ndarray]]):
    """(what is known of each tensor, the tensors with a known size, [bytes, count] of those
    computed from constants alone)."""
    env: Dict[str, Value] = {}
    found: List[Largest] = []
    folded = [0, 0]
    for name, (elem_type, dims) in graph.inputs.items():
        if feeds is not None and name in feeds:
            array = np.asarray(feeds[name])
            small = array.size <= SMALL_TENSOR and array.dtype.kind in "iub"
            env[name] = Value(tuple(array.shape), elem_type, array if small else None)
        else:
            env[name] = Value(tuple(d if d is not None and d >= 0 else None for d in dims), elem_type)
    for tensor in graph.initializers.values():
        env[tensor.name] = tensor_value(tensor)
        found.append(Largest(env[tensor.name].bytes, f"initializer {tensor.name!r} {_shape(tensor.dims)}"))
    for tensor in graph.sparse_initializers:
        dense = tensor_value(tensor)
        env[tensor.name] = dense
        found.append(Largest(dense.bytes, f"sparse initializer {tensor.name!r} {_shape(tensor.dims)} (made dense "
                                          "on load)"))
    _walk(graph.nodes, env, found, folded, feeds is None)
    return env, found, folded


def _walk(nodes: Iterable[Node], env: Dict[str, Value], found: List[Largest], folded: list, subgraphs: bool) -> None:
    for node in nodes:
        try:
            outputs = infer(node, [env.get(name, UNKNOWN) if name else ABSENT for name in node.inputs])
        except Exception:  # a malformed node: onnxruntime refuses or runs it; nothing is known of it here
            outputs = []
        for i, name in enumerate(node.outputs):
            value = outputs[i] if i < len(outputs) else UNKNOWN
            env[name] = value
            if value.known:
                by = f"node {node.name!r} ({node.op_type})" if node.name else f"a {node.op_type} node"
                found.append(Largest(value.bytes, f"{by}: output {name!r} {_shape(value.shape)}"))
                if value.constant:
                    folded[0] += value.bytes
                    folded[1] += 1
        if subgraphs:  # Loop, If, Scan bodies: their constant shapes, with the outer names in view
            for attribute in node.attributes.values():
                for body in attribute if isinstance(attribute, list) else [attribute]:
                    if isinstance(body, Graph):
                        inner = dict(env)
                        for tensor in body.initializers.values():
                            inner[tensor.name] = tensor_value(tensor)
                            found.append(Largest(inner[tensor.name].bytes,
                                                 f"initializer {tensor.name!r} {_shape(tensor.dims)}"))
                        for name in body.inputs:
                            inner[name] = UNKNOWN
                        _walk(body.nodes, inner, found, [0, 0], True)


def _shape(dims) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in dims) + "]"


def _mib(size: int) -> str:
    return f"{size / MIB:,.0f} MiB" if size >= MIB else f"{size:,} bytes"
