"""Edits of an ONNX graph that the exporter and the converters share (onnx only, no TensorFlow)."""


def reads(node):
    """Names a node reads, including those its subgraphs (Loop, If, Scan) read from outside."""
    names = list(node.input)
    for attr in node.attribute:
        for sub in list(attr.g.node if attr.HasField("g") else []) + [n for g in attr.graphs for n in g.node]:
            names += reads(sub)
    return names


def needed_nodes(nodes, names):
    """The nodes of the sorted list `nodes` that `names` need, in order, and the set of every name
    they or `names` read."""
    needed, kept = set(names), []
    for node in reversed(nodes):
        if any(out in needed for out in node.output):
            kept.append(node)
            needed.update(reads(node))
    return kept[::-1], needed


def prune(graph) -> None:
    """Drop the nodes no graph output needs, then the initializers and value infos nothing reads, in
    place. The kept messages are copied before the fields are cleared, which frees the originals."""
    kept, needed = needed_nodes(graph.node, [value.name for value in graph.output])
    nodes = [_copy(node) for node in kept]
    initializers = [_copy(t) for t in graph.initializer if t.name in needed]
    infos = [_copy(v) for v in graph.value_info if v.name in needed]
    del graph.node[:], graph.initializer[:], graph.value_info[:]
    graph.node.extend(nodes)
    graph.initializer.extend(initializers)
    graph.value_info.extend(infos)


def _copy(message):
    copy = type(message)()
    copy.CopyFrom(message)
    return copy
