"""Graph rewrites that keep onnxruntime's optimisers from changing what the model computes.

Each is applied to the converted graph before validation, so it also protects sessions that
other people's code creates on the file. Validation's deterministic parity runs at onnxruntime's
full optimisation level and would catch a rewrite that stopped working.
"""

from __future__ import annotations

import numpy as np
from onnx import numpy_helper


def keep_zero_pads_out_of_maxpool(proto) -> int:
    """Stop onnxruntime's Pad_Fusion (level "basic" and up) from folding a zero Pad into a MaxPool.

    The fusion adds the Pad's sizes to the pool's `pads`, but MaxPool pads with -inf, not 0: a
    window at the border whose values are all negative then gives their maximum instead of 0.
    Keras's ZeroPadding2D before MaxPooling2D does this where nothing clips the values first
    (ResNet50V2's stem: its pooled features moved by up to 0.4%, docs/APPLICATIONS.md). The
    fusion only takes a pad value whose bytes are all zero, so the value becomes -0.0: equal to
    0.0 for Max, so the results are unchanged. Returns how many Pads were rewritten.
    """
    graph = proto.graph
    consumers = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    initializers = {i.name: i for i in graph.initializer}
    rewritten = 0
    for node in graph.node:
        if node.op_type != "Pad" or not any(c.op_type == "MaxPool" for c in consumers.get(node.output[0], [])):
            continue
        if next((a.s for a in node.attribute if a.name == "mode"), b"constant") != b"constant":
            continue
        old = node.input[2] if len(node.input) > 2 else ""
        if old:
            if old not in initializers:
                continue  # computed at run time: not a constant Pad_Fusion would fold
            value = numpy_helper.to_array(initializers[old])
            if value.dtype.kind != "f" or np.any(value != 0):
                continue
        else:
            value = np.zeros((), np.float32)  # an absent value is 0 (the graphs we convert are float32)
        name = f"{node.output[0]}/negative_zero"
        graph.initializer.append(numpy_helper.from_array(np.full(value.shape, -0.0, value.dtype), name))
        while len(node.input) < 3:
            node.input.append("")
        node.input[2] = name
        if old and sum(old in n.input for n in graph.node) == 0:
            graph.initializer.remove(initializers[old])
        rewritten += 1
    return rewritten
