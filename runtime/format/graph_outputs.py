"""A file's bytes with its main graph cut to some of its outputs: onnxruntime runs every node of a
graph whatever outputs a run fetches, so a run that wants only some outputs (the analytic mode's,
runtime/analytic.py) gets a session of its own on these bytes instead of paying for the rest.

Edited on the protobuf bytes, as runtime/format/seeds.py edits seeds: every field is copied as it
is except the main graph's node, output and initializer entries that no kept output needs.
Standard library only, like the rest of runtime/format/.
"""

from typing import Iterable, List, Set

from .onnx_file import (GRAPH_INITIALIZER, GRAPH_INPUT, GRAPH_NODE, LENGTH, MODEL_GRAPH, ModelFile, Node,
                        _fields, _length_field, _node, _tensor, _value_info)

GRAPH_OUTPUT = 12  # GraphProto.output


def keep_outputs(data: bytes, outputs: Iterable[str]) -> bytes:
    """`data` (a well-formed ONNX file: one the runtime has read) whose main graph declares only
    `outputs` and holds only the nodes and initializers they need. Graph inputs all stay, so a run
    takes the same feeds."""
    view, pieces = memoryview(data), []
    for number, wire, value, start, end in _fields(view, 0, len(view)):
        if number == MODEL_GRAPH and wire == LENGTH:
            pieces.append(_length_field(MODEL_GRAPH, _graph(view, value, set(outputs))))
        else:
            pieces.append(bytes(view[start:end]))
    return b"".join(pieces)


def reads(node: Node) -> List[str]:
    """The names a node reads, with those its subgraphs (If, Loop, Scan) read from outside."""
    names = list(node.inputs)
    for value in node.attributes.values():
        for graph in value if isinstance(value, list) else [value]:
            for inner in getattr(graph, "nodes", ()):
                names += reads(inner)
    return names


def _graph(view, span, outputs: Set[str]) -> bytes:
    fields = list(_fields(view, *span))
    scratch = ModelFile()  # _node and _tensor note random nodes and external data there; unused
    nodes = [(start, _node(view, value, scratch, 1)) for number, wire, value, start, _ in fields
             if number == GRAPH_NODE and wire == LENGTH]
    inputs = {_value_info(view, value)[0] for number, wire, value, _, _ in fields
              if number == GRAPH_INPUT and wire == LENGTH}
    needed, kept, grown = set(outputs), set(), True
    while grown:  # one pass for a sorted graph (producers first); onnxruntime also loads unsorted ones
        grown = False
        for start, node in reversed(nodes):
            if start not in kept and any(name in needed for name in node.outputs):
                kept.add(start)
                needed.update(reads(node))
                grown = True
    found = []
    for number, wire, value, start, end in fields:
        if wire == LENGTH and (
                (number == GRAPH_NODE and start not in kept)
                or (number == GRAPH_OUTPUT and _value_info(view, value)[0] not in outputs)
                # an initializer listed as a graph input stays: without it the input must be fed
                or (number == GRAPH_INITIALIZER
                    and (name := _tensor(view, value, scratch).name) not in needed and name not in inputs)):
            continue
        found.append(bytes(view[start:end]))
    return b"".join(found)
