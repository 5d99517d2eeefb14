"""`convert --skip-dropped` (docs/DESIGN.md: Skipping dropped units): fewer FLOPs per pass in shared mode.

With a shared mask set pass t is one fixed sub-network. Where a Dropout's input does not depend on
the pass (the layers before the first dropout run once per input, so the first dropout's input is
[1, B, n]) and the masked activations feed a MatMul by a weight W [n, N], pass t's product is

    (x * keep_t) @ W  =  x @ W  -  (x * drop_t) @ W  =  base  -  x[:, dropped_t] @ W[dropped_t, :]

so the graph computes `base` once per input and, per pass, only the rows of W its mask drops (a
fraction `rate` of them, padded to the largest count of the run's passes): 2 x B x n x N FLOPs
plus 2 x T x B x k x N instead of 2 x T x B x n x N. The dropped units' indices come from the mask
set's uniforms inside the graph (TopK of the smallest, weighted by `u < rate`), so the file takes
the same inputs as before, in every binding. Computing the kept rows instead (x[:, kept_t] @
W[kept_t, :], 80% of the rows) was measured slower than the whole product: a batched MatMul of T
small products with their own weights runs far below the rate of one large product (DESIGN.md).

The new branch is one side of an If: it runs when `masks` holds a set (shared mode) and the batch
holds at least MIN_BATCH inputs; independent masks, dropout off and small batches run the
original nodes, moved into the other side unchanged. Other layers (a Dropout whose input already
differs per pass, one feeding a Conv) are left as they are.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Optional

import numpy as np

from ..runtime.dropped_units import KEY as METADATA_KEY  # the reader's key is the writer's
from ..runtime.errors import InputError, ModelFileError
from .portable import RANDOM_OPS

PREFIX = "mcdrop_skip/"
# The skipping branch runs from this many rows per run on: below it, gathering T x k rows of W
# costs more than the FLOPs it saves (shipped MLP: 1.10x the original's time at 16 rows, 0.65x at
# 32; docs/DESIGN.md "Skipping dropped units").
MIN_BATCH = 32
# Samples of the rewritten file must equal the original's shared-mode samples to this: the same
# products summed in another order, less the dropped part (measured on the shipped MLP: 1e-6).
PARITY_TOLERANCE = 1e-4
# Ops between a mask's uniforms and its comparison with the rate that only move values.
MOVES = ("Reshape", "Identity", "Squeeze", "Unsqueeze")


@dataclass
class Site:
    """One Dropout whose pass-independent input x feeds MatMul(x * keep, W) (+ bias)."""

    layer: str
    x: str  # the scaled activation [1, B, n], computed once per input
    uniform: str  # the layer's uniforms [T, ..., n] (GreaterOrEqual's first input)
    threshold: str  # rate x stochastic (GreaterOrEqual's second input)
    moved: list  # the nodes from x * keep to the product's output, in order
    weight: str
    bias: Optional[str]
    output: str  # the product's (or the bias Add's) output, now the If's
    n: int
    columns: int


def skip_dropped_model(proto, meta: dict, path: str = "model"):
    """(The rewritten ModelProto, its metadata, the layers rewritten) for a standard mcdrop file."""
    from ..runtime.format.metadata_writer import write_metadata

    _check_source(meta, path)
    graph = proto.graph
    sites = find_sites(graph, meta)
    if not sites:
        raise InputError(f"{path}: no dropout here feeds a MatMul/Gemm from activations computed once per input "
                         "(the first dropout after the layers that run once, into a Dense layer); there is nothing "
                         "to skip")
    for site in sites:
        _rewrite(graph, site)
    meta = dict(meta)
    # A run holds the gathered rows of W, [T, k, N], per pass (the chunk planner counts them with
    # the set's masks), and one more [T, B, N] where N > n.
    meta[METADATA_KEY] = {"layers": [site.layer for site in sites], "min_batch": MIN_BATCH,
                      "floats_per_pass": sum(_most_dropped(site, meta) * site.columns for site in sites)}
    extra = sum(max(0, site.columns - site.n) for site in sites)
    meta["activation_floats_per_sample"] = int(meta.get("activation_floats_per_sample") or 0) + extra
    write_metadata(proto, meta)
    return proto, meta, [site.layer for site in sites]


def _check_source(meta: dict, path: str) -> None:
    if meta.get("portable") is not None:
        raise InputError(f"{path} is a portable file; --skip-dropped rewrites the standard file")
    if meta.get(METADATA_KEY) is not None:
        raise InputError(f"{path} skips dropped units already")
    if meta.get("format") != 3 or meta.get("masks") is None:
        raise ModelFileError(f"{path} cannot take a mask set (format {meta.get('format')}); skipping dropped units "
                             "needs shared masks: export it again")


def _most_dropped(site: Site, meta: dict) -> int:
    """A bound on k, the most units a pass drops (rate x n plus 6 standard deviations)."""
    rate = next(layer["rate"] for layer in meta["stochastic_layers"] if layer["name"] == site.layer)
    return min(site.n, math.ceil(rate * site.n + 6 * math.sqrt(site.n * rate * (1 - rate))))


def find_sites(graph, meta: dict) -> List[Site]:
    """The Dropout layers the rewrite takes, in the file's order."""
    from onnx import numpy_helper

    consumers: dict = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    initializers = {init.name: init for init in graph.initializer}
    varying = _pass_dependent(graph)
    sites = []
    for layer in meta.get("stochastic_layers") or []:
        if layer.get("kind") != "Dropout" or layer.get("distribution") != "uniform" or len(layer["mask_shape"]) != 1:
            continue
        random = next((node for node in graph.node if node.name == layer["random_node"]), None)
        joins = consumers.get(random.output[0], []) if random is not None else []
        if len(joins) != 1 or joins[0].op_type != "Concat":
            continue
        compare = _follow(joins[0].output[0], consumers, "GreaterOrEqual")
        casts = consumers.get(compare.output[0], []) if compare is not None else []
        if len(casts) != 1 or casts[0].op_type != "Cast":
            continue
        muls = consumers.get(casts[0].output[0], [])
        if len(muls) != 1 or muls[0].op_type != "Mul":
            continue
        mul = muls[0]
        x = next(name for name in mul.input if name != casts[0].output[0])
        if x in varying:
            continue
        moved, value = [mul], mul.output[0]
        while len(consumers.get(value, [])) == 1 and consumers[value][0].op_type == "Reshape":
            moved.append(consumers[value][0])
            value = moved[-1].output[0]
        users = consumers.get(value, [])
        if len(users) != 1 or users[0].op_type != "MatMul" or users[0].input[0] != value \
                or users[0].input[1] not in initializers:
            continue
        product = users[0]
        weight = numpy_helper.to_array(initializers[product.input[1]])
        if weight.ndim != 2 or weight.shape[0] != layer["mask_shape"][0] or weight.dtype != np.float32:
            continue
        moved.append(product)
        bias, output = None, product.output[0]
        adds = consumers.get(output, [])
        if len(adds) == 1 and adds[0].op_type == "Add":
            other = next(name for name in adds[0].input if name != output)
            if other in initializers and numpy_helper.to_array(initializers[other]).shape == (weight.shape[1],):
                bias, output = other, adds[0].output[0]
                moved.append(adds[0])
        sites.append(Site(layer["name"], x, compare.input[0], compare.input[1], moved, product.input[1], bias,
                          output, int(weight.shape[0]), int(weight.shape[1])))
    return sites


def _follow(value: str, consumers: dict, op_type: str):
    """The one `op_type` node reached from `value` through ops that only move values, or None."""
    while True:
        users = consumers.get(value, [])
        if len(users) != 1:
            return None
        if users[0].op_type == op_type and users[0].input[0] == value:
            return users[0]
        if users[0].op_type not in MOVES:
            return None
        value = users[0].output[0]


def _pass_dependent(graph) -> set:
    """Every value that depends on `passes`, `masks` or a random node: what differs per pass."""
    varying = {"passes", "masks"}
    for node in graph.node:  # onnx keeps nodes in topological order
        if node.op_type in RANDOM_OPS or any(name in varying for name in node.input):
            varying.update(node.output)
    return varying


def _rewrite(graph, site: Site) -> None:
    """Replace the site's nodes by If(shared and batch >= MIN_BATCH, skipping branch, original nodes)."""
    from onnx import TensorProto, helper, numpy_helper

    p = f"{PREFIX}{site.layer}/"
    constants = {p + "rows": np.array([-1, site.n], np.int64), p + "out_rows": np.array([-1, site.columns], np.int64),
                 p + "axis1": np.array([1], np.int64), p + "axis2": np.array([2], np.int64),
                 p + "one": np.array([1.0], np.float32),
                 p + "min_size": np.array(MIN_BATCH * site.n, np.int64), p + "zero": np.array(0, np.int64)}
    graph.initializer.extend(numpy_helper.from_array(value, name) for name, value in constants.items())
    node = helper.make_node
    product = [node("Reshape", [site.x, p + "rows"], [p + "x"]),  # [B, n]
               node("MatMul", [p + "x", site.weight], [p + "base" if site.bias is None else p + "product"])]
    if site.bias is not None:
        product.append(node("Add", [p + "product", site.bias], [p + "base"]))
    skip = product + [
        node("Reshape", [site.uniform, p + "rows"], [p + "u"]),  # [T, n]
        node("Less", [p + "u", site.threshold], [p + "dropped"]),
        node("Cast", [p + "dropped"], [p + "dropped_float"], to=TensorProto.FLOAT),
        node("ReduceSum", [p + "dropped_float", p + "axis1"], [p + "count"], keepdims=0),
        node("ReduceMax", [p + "count"], [p + "most"], keepdims=1),
        node("Max", [p + "most", p + "one"], [p + "k_float"]),
        node("Cast", [p + "k_float"], [p + "k"], to=TensorProto.INT64),
        # The k smallest uniforms of each pass hold its dropped units; the rest is padding, weighted 0.
        node("TopK", [p + "u", p + "k"], [p + "smallest", p + "units"], largest=0, sorted=0),  # [T, k]
        node("Less", [p + "smallest", site.threshold], [p + "real"]),
        node("Cast", [p + "real"], [p + "weights"], to=TensorProto.FLOAT),
        node("Unsqueeze", [p + "weights", p + "axis2"], [p + "weights3"]),
        node("Transpose", [p + "x"], [p + "x_t"], perm=[1, 0]),  # [n, B]
        node("Gather", [p + "x_t", p + "units"], [p + "x_dropped"], axis=0),  # [T, k, B]
        node("Mul", [p + "x_dropped", p + "weights3"], [p + "x_weighted"]),
        node("Transpose", [p + "x_weighted"], [p + "x_rows"], perm=[0, 2, 1]),  # [T, B, k]
        node("Gather", [site.weight, p + "units"], [p + "w_dropped"], axis=0),  # [T, k, N]
        node("MatMul", [p + "x_rows", p + "w_dropped"], [p + "dropped_part"]),  # [T, B, N]
        node("Sub", [p + "base", p + "dropped_part"], [p + "kept_part"]),
        node("Reshape", [p + "kept_part", p + "out_rows"], [p + "skip_out"]),
    ]
    original = []
    for moved in site.moved:  # the same nodes, the last one's output renamed for the branch
        copy = helper.make_node(moved.op_type, list(moved.input), list(moved.output), name=moved.name)
        copy.attribute.extend(moved.attribute)
        original.append(copy)
    original[-1].output[0] = p + "full_out"

    def branch(nodes, output, name):
        return helper.make_graph(nodes, name, [], [helper.make_tensor_value_info(output, TensorProto.FLOAT,
                                                                                 [None, site.columns])])

    choose = [node("Size", ["masks"], [p + "mask_size"]),
              node("Greater", [p + "mask_size", p + "zero"], [p + "shared"]),
              node("Size", [site.x], [p + "x_size"]),
              node("GreaterOrEqual", [p + "x_size", p + "min_size"], [p + "large"]),
              node("And", [p + "shared", p + "large"], [p + "skips"]),
              node("If", [p + "skips"], [site.output], name=p + "if",
                   then_branch=branch(skip, p + "skip_out", p + "skip"),
                   else_branch=branch(original, p + "full_out", p + "full"))]
    index = list(graph.node).index(site.moved[0])
    for moved in site.moved:
        graph.node.remove(moved)
    for offset, new in enumerate(choose):
        graph.node.insert(index + offset, new)
    gone = {out for moved in site.moved for out in moved.output}
    for value in list(graph.value_info):
        if value.name in gone:
            graph.value_info.remove(value)


@dataclass
class SkipReport:
    path: str
    layers: List[str]
    size: int
    checks: List[str]

    def lines(self) -> List[str]:
        return [f"wrote            {self.path} ({self.size / 2**20:.1f} MiB)",
                f"skips            dropped units of {', '.join(self.layers)} in shared runs of {MIN_BATCH}+ rows"] + \
               [f"check            ok  {check}" for check in self.checks]


def skip_dropped_file(source, output, *, verify: bool = True, limits=None) -> SkipReport:
    """Write `source` rewritten to skip dropped units to `output` (atomically, after the runtime's
    load checks and the parity check against `source` in shared mode)."""
    from pathlib import Path

    import onnx

    from ..runtime.format.integrity import seal
    from ..runtime.limits import DEFAULT
    from ..runtime.load_checks import check_model_bytes
    from ..runtime.safe_files import atomic_writer
    from .source_model import opened_source

    limits = limits or DEFAULT
    with opened_source(source, output, limits, verify) as opened:
        standard, sealed, folder = opened.session, opened.sealed, opened.folder
        proto, meta, layers = skip_dropped_model(onnx.load_from_string(opened.data), standard.info.metadata,
                                                 str(source))
        onnx.checker.check_model(proto)
        data = seal(proto.SerializeToString())
        check_model_bytes(data, str(output), limits)
        rewritten = Path(folder) / "skipping.onnx"
        rewritten.write_bytes(data)
        checks = ["loads as the runtime checks every file", _check_parity(standard, rewritten, limits)]
    with atomic_writer(Path(output)) as f:
        f.write(data if sealed else proto.SerializeToString())
    return SkipReport(str(output), layers, len(data), checks)


def _check_parity(standard, path, limits) -> str:
    """Shared-mode samples at MIN_BATCH rows (the skipping branch) and 1 row (the original nodes),
    and the deterministic pass, against the source file's, for one mask seed."""
    from ..runtime.errors import ValidationError
    from ..runtime.randomness_checks import sample_inputs
    from ..runtime.session import MCSession

    rewritten = MCSession(path, seed=0, limits=limits, threads=1)
    info = standard.info
    gaps = []
    for batch, dropout in ((MIN_BATCH, True), (1, True), (2, False)):
        x = {i.name: sample_inputs(i.shape, info.metadata.get("preprocessing"), count=batch, seed=n)
             for n, i in enumerate(info.model_inputs)}
        x = x if len(x) > 1 else next(iter(x.values()))
        want = standard.predict(x, masks="shared", mask_seed=0, dropout=dropout)
        got = rewritten.predict(x, masks="shared", mask_seed=0, dropout=dropout)
        pairs = zip(want.values(), got.values()) if isinstance(want, dict) else [(want, got)]
        gaps.append(max(float(np.max(np.abs(a.samples - b.samples))) for a, b in pairs))
    if not max(gaps) <= PARITY_TOLERANCE:
        raise ValidationError(f"validation failed: the rewritten file's samples differ from the source's by "
                              f"{max(gaps):.1e} for the same mask seed (over {PARITY_TOLERANCE:g}); file not written")
    return f"samples equal to the source's in shared mode, {MIN_BATCH} rows and 1, and dropout off ({max(gaps):.1e})"
