"""The portable profile (docs/FORMAT.md: Portable profile): an mcdrop file with no random op.

The standard graph makes each layer's random tensor as Concat(its slice of `masks`, its random
node's draw): the fed set's rows, or the node's T*B rows when `masks` is empty. This rewrite keeps
the slice alone (the random nodes, their ConstantOfShape and the noise-shape arithmetic go), turns
`masks` into uint8 keep masks (1 keep, 0 drop; the runtime applies the thresholds before feeding)
and replaces each `draw >= rate` (GreaterOrEqual, which NNAPI and Core ML lack) by a Cast of the
keep mask; `stochastic` = false still keeps every unit. T (and the batch, if asked) become fixed;
the measures' nodes (ReduceSum, Log, Neg, ...) go and the runtime computes them from `samples`.
onnxruntime's basic graph optimisation then folds what the fixed shapes settle (Shape, Size, ...),
so NNAPI and Core ML MLProgram can take every node.

Only Bernoulli layers convert (Dropout, SpatialDropout, AlphaDropout, recurrent dropout): Gaussian
noise would need float noise fed, which this profile does not define yet.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional

import numpy as np

from ..export.onnx_edits import prune
from ..runtime.errors import InputError, ModelFileError, ValidationError
from ..runtime.format.metadata_writer import metadata_of, write_metadata
from ..runtime.portable_masks import KEEP_MASKS, keep_masks

PREFIX = "mcdrop_portable/"
RANDOM_OPS = ("RandomUniformLike", "RandomNormalLike", "RandomUniform", "RandomNormal", "Bernoulli", "Multinomial")
# Ops that move mask values without computing on them, between `masks` and a layer's comparison.
MOVES = ("Slice", "Reshape", "Concat", "Transpose", "Squeeze", "Unsqueeze", "Identity", "Expand", "Tile",
         "Gather", "Split", "Flatten")
# The converted file's samples must equal the standard file's shared-mode samples to this
# (they are the same float32 operations on the same masks; measured: 0).
PARITY_TOLERANCE = 1e-5


@dataclass
class ConvertReport:
    path: str
    batch: Optional[int]
    passes: int
    baked_seed: Optional[int]
    mask_bytes_per_call: int
    size: int
    nodes: int
    checks: List[str] = field(default_factory=list)

    def lines(self) -> List[str]:
        batch = "any" if self.batch is None else str(self.batch)
        masks = (f"baked (seed {self.baked_seed}), 0 bytes per call" if self.baked_seed is not None
                 else f"uint8 keep masks, {self.mask_bytes_per_call:,} bytes per call")
        return [f"wrote            {self.path} ({self.size / 2**20:.1f} MiB, {self.nodes} nodes, no random op)",
                f"shapes           batch {batch}, passes {self.passes}",
                f"masks            {masks}"] + [f"check            ok  {check}" for check in self.checks]


def portable_model(proto, meta: dict, batch: Optional[int] = None, passes: Optional[int] = None,
                   bake_seed: Optional[int] = None, path: str = "model"):
    """(The portable ModelProto, its metadata) for a standard mcdrop ModelProto and its metadata."""
    import onnx

    layers = _convertible_layers(meta, path)
    passes = meta["default_passes"] if passes is None else passes
    graph = proto.graph
    inputs = {value.name: value for value in graph.input}
    if not {"passes", "stochastic", "masks"} <= set(inputs):
        raise ModelFileError(f"{path}: the graph lacks the passes, stochastic and masks inputs of format 3")
    _masks_alone(graph, layers, path)
    keep = _keep_masks_in_front(graph, inputs["masks"], passes, meta["masks"]["floats_per_pass"])
    _fix_shapes(graph, inputs["passes"], meta, batch, passes)
    prune(graph)
    # Each comparison of a mask with its rate becomes a Cast of the keep mask to bool.
    _replace_comparisons(graph, keep, path)
    prune(graph)
    proto = _optimized(proto, path)
    left = sorted({node.op_type for node in proto.graph.node if node.op_type in RANDOM_OPS})
    if left:
        raise ModelFileError(f"{path}: random ops left after the rewrite ({', '.join(left)}); export the model again")
    if bake_seed is not None:
        _bake(proto.graph, meta, layers, bake_seed, passes)

    meta = dict(meta)
    meta["default_passes"] = passes
    meta["portable"] = {"batch": batch, "passes": passes, "masks": KEEP_MASKS,
                        "baked": None if bake_seed is None else {"mask_seed": int(bake_seed)}}
    write_metadata(proto, meta)
    onnx.checker.check_model(proto)
    return proto, meta


def _convertible_layers(meta: dict, path: str) -> list:
    """The file's stochastic layers, or a one-line refusal of a file the profile cannot take."""
    if meta.get("portable") is not None:
        raise InputError(f"{path} is already a portable file; convert the standard file")
    if meta.get("format") != 3 or meta.get("masks") is None:
        raise ModelFileError(f"{path} cannot take a mask set (format {meta.get('format')}"
                             f"{', noise shapes that depend on the input size' if meta.get('format') == 3 else ''}); "
                             "only files that take one convert: export it again")
    layers = meta.get("stochastic_layers") or []
    if not layers:
        raise InputError(f"{path} has no stochastic layer: there are no masks to make portable")
    normal = [layer["name"] for layer in layers if layer.get("distribution") != "uniform"]
    if normal:
        raise InputError(f"{path}: layer {normal[0]!r} draws Gaussian noise; the portable profile takes Bernoulli "
                         "masks only (Dropout, SpatialDropout, AlphaDropout, recurrent dropout)")
    return layers


def _masks_alone(graph, layers: list, path: str) -> None:
    """Each layer's random tensor becomes its slice of `masks` alone, not Concat(slice, draw)."""
    consumers = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    renamed = {}
    for layer in layers:
        node = next((n for n in graph.node if n.name == layer["random_node"] and n.op_type in RANDOM_OPS), None)
        joins = consumers.get(node.output[0], []) if node is not None else []
        if len(joins) != 1 or joins[0].op_type != "Concat" or len(joins[0].input) != 2:
            raise ModelFileError(f"{path}: layer {layer['name']!r}: its random node is not joined to its slice of "
                                 "masks by one Concat, the form this converter rewrites")
        join = joins[0]
        renamed[join.output[0]] = next(name for name in join.input if name != node.output[0])
    _rename_inputs(graph, renamed)


def _keep_masks_in_front(graph, masks_input, passes: int, floats_per_pass: int) -> str:
    """`masks` becomes uint8 keep masks [T, floats_per_pass]; stochastic = false keeps every unit:
    keep = max(float(masks), 1 - float(stochastic)). Returns the name of `keep`."""
    from onnx import TensorProto, helper, numpy_helper

    masks_input.type.tensor_type.elem_type = TensorProto.UINT8
    _set_shape(masks_input, [passes, floats_per_pass])
    keep = PREFIX + "keep"
    _rename_inputs(graph, {"masks": keep})
    graph.initializer.append(numpy_helper.from_array(np.array(1.0, np.float32), PREFIX + "one"))
    front = [helper.make_node("Cast", ["masks"], [PREFIX + "masks_float"], to=TensorProto.FLOAT, name=PREFIX + "masks_float"),
             helper.make_node("Cast", ["stochastic"], [PREFIX + "stochastic_float"], to=TensorProto.FLOAT,
                              name=PREFIX + "stochastic_float"),
             helper.make_node("Sub", [PREFIX + "one", PREFIX + "stochastic_float"], [PREFIX + "deterministic"],
                              name=PREFIX + "deterministic"),
             helper.make_node("Max", [PREFIX + "masks_float", PREFIX + "deterministic"], [keep], name=keep)]
    for node in reversed(front):
        graph.node.insert(0, node)
    return keep


def _fix_shapes(graph, passes_input, meta: dict, batch: Optional[int], passes: int) -> None:
    """T fixed: `passes` becomes a constant; only the samples outputs stay; the batch fixed if given."""
    from onnx import numpy_helper

    graph.input.remove(passes_input)
    graph.initializer.append(numpy_helper.from_array(np.array(passes, np.int64), "passes"))
    outputs = [o["prefix"] + "samples" for o in meta.get("outputs") or [{"prefix": ""}]]
    for value in list(graph.output):
        if value.name not in outputs:
            graph.output.remove(value)
    for value in graph.input:
        if value.name not in ("stochastic", "masks") and batch is not None:
            _set_dim(value, 0, batch)
    for value in graph.output:
        _set_dim(value, 0, passes)
        _set_dim(value, 1, batch if batch is not None else "batch")


def _bake(graph, meta: dict, layers: list, bake_seed: int, passes: int) -> None:
    """The keep masks of `bake_seed` stored as the `masks` initializer, no longer an input."""
    from onnx import numpy_helper

    from ..runtime.format.mask_sets import layout_from_metadata

    layout = layout_from_metadata(meta, layers)
    baked = keep_masks(layout, [layer["rate"] for layer in layers], bake_seed, 0, passes)
    graph.input.remove(next(value for value in graph.input if value.name == "masks"))
    graph.initializer.append(numpy_helper.from_array(baked, "masks"))


def _rename_inputs(graph, renamed: dict) -> None:
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name in renamed:
                node.input[i] = renamed[name]


def _set_shape(value, dims) -> None:
    shape = value.type.tensor_type.shape
    del shape.dim[:]
    for d in dims:
        _fill(shape.dim.add(), d)


def _set_dim(value, axis: int, size) -> None:
    dims = value.type.tensor_type.shape.dim
    if axis < len(dims):
        dims[axis].Clear()
        _fill(dims[axis], size)


def _fill(dim, size) -> None:
    if isinstance(size, str):
        dim.dim_param = size
    else:
        dim.dim_value = int(size)


def _replace_comparisons(graph, keep: str, path: str) -> None:
    """Every GreaterOrEqual fed by the keep masks (through ops that only move values) becomes
    Cast(keep mask, bool): 1 >= rate and 0 < rate for every rate in (0, 1). Anything else computing
    on the masks is a layer this profile cannot take."""
    from onnx import TensorProto, helper

    consumers = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    todo, reached, comparisons = [keep], {keep}, []
    while todo:
        value = todo.pop()
        for node in consumers.get(value, []):
            if node.op_type == "GreaterOrEqual" and node.input[0] == value:
                comparisons.append(node)
            elif node.op_type in MOVES:
                fresh = [out for out in node.output if out not in reached]
                reached.update(fresh)
                todo.extend(fresh)
            else:
                raise ModelFileError(f"{path}: the masks reach a {node.op_type} node ({node.name!r}); the portable "
                                     "profile takes masks compared with their rate (Bernoulli layers) only")
    for node in comparisons:
        cast = helper.make_node("Cast", [node.input[0]], list(node.output), to=TensorProto.BOOL,
                                name=node.name or PREFIX + "kept")
        index = list(graph.node).index(node)
        graph.node.remove(node)
        graph.node.insert(index, cast)


def _optimized(proto, path: str):
    """onnxruntime's basic graph optimisation (constant folding, redundant nodes), which keeps to
    standard ONNX ops: with the shapes fixed it folds the Shape, Size and shape arithmetic away."""
    import onnx
    import onnxruntime as ort

    metadata = metadata_of(proto)
    with tempfile.TemporaryDirectory(prefix="mcdrop-convert-") as folder:
        target = os.path.join(folder, "optimized.onnx")
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        options.optimized_model_filepath = target
        options.log_severity_level = 3
        try:
            ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
        except Exception as err:  # onnxruntime raises its own types
            raise ModelFileError(f"{path}: onnxruntime cannot load the rewritten graph ({str(err).splitlines()[0]})") from None
        optimized = onnx.load(target)
    write_metadata(optimized, metadata)
    optimized.ir_version = proto.ir_version
    return optimized


def check_convert_flags(source, output, portable: bool, skip_dropped: bool = False, analytic=None,
                        portable_options=()) -> None:
    """`cli.py convert`'s own checks, before any reading: one profile asked for, a writable .onnx
    target that is not the source, onnx installed."""
    import importlib.util

    from ..export.flags import check_export_target
    from ..runtime.result_files import same_file

    chosen = [flag for flag, asked in (("--portable", portable), ("--skip-dropped", skip_dropped),
                                       ("--analytic", analytic is not None)) if asked]
    if len(chosen) != 1:
        profiles = "--portable, --skip-dropped or --analytic INPUTS"
        raise InputError(f"convert needs one profile: {profiles}, not {' and '.join(chosen)}" if chosen else
                         f"convert needs a profile: {profiles}")
    if not portable and any(option is not None for option in portable_options):
        raise InputError(f"--batch-size, --passes and --bake-masks are for --portable; {chosen[0]} keeps the "
                         "file's shapes")
    check_export_target(Path(output))
    if same_file(Path(output), str(source)):
        raise InputError(f"-o {output}: is the input file; writing there would replace it")
    if importlib.util.find_spec("onnx") is None:
        raise InputError("convert needs onnx: pip install -e '.[convert]'")


def convert_file(source, output, *, batch_size: Optional[int] = None, passes: Optional[int] = None,
                 bake_masks: Optional[int] = None, verify: bool = True, limits=None,
                 validate: bool = True) -> ConvertReport:
    """Write the portable version of the mcdrop file `source` to `output` (atomically, after the
    runtime's load checks and, with `validate`, the parity check against `source`)."""
    import onnx

    from ..runtime.checks import int_in_range, positive_int
    from ..runtime.format.integrity import seal
    from ..runtime.format.mask_sets import MAX_SEED
    from ..runtime.limits import DEFAULT
    from ..runtime.load_checks import check_model_bytes
    from ..runtime.safe_files import atomic_writer
    from .source_model import opened_source

    limits = limits or DEFAULT
    for name, value in (("--batch-size", batch_size), ("--passes", passes)):
        if value is not None:
            positive_int(name, value)
    if passes is not None:
        limits.check("passes", passes, f"--passes {passes:,}")
    if bake_masks is not None:
        int_in_range("--bake-masks", bake_masks, 0, MAX_SEED, "2**64 - 1")
    with opened_source(source, output, limits, verify) as opened:
        standard, sealed = opened.session, opened.sealed
        proto = onnx.load_from_string(opened.data)
        converted, meta = portable_model(proto, standard.info.metadata, batch_size, passes, bake_masks, str(source))
        data = seal(converted.SerializeToString())
        check_model_bytes(data, str(output), limits)
        checks = ["loads as the runtime checks every file"]
        if validate:
            checks.append(_check_parity(standard, data, meta, opened.folder, limits))
        if batch_size is not None:  # fixed shapes: what the mobile accelerators would take
            from .accelerators import mobile_coverage

            written = opened.folder / "coverage.onnx"
            written.write_bytes(data)
            checks += [f"{name}: {coverage}" for name, coverage in mobile_coverage(written).items()]
    with atomic_writer(Path(output)) as f:
        # An unverified source gives an unsealed file (seal appends its entry: the bytes before it are unsealed).
        f.write(data if sealed else converted.SerializeToString())
    portable = meta["portable"]
    return ConvertReport(str(output), portable["batch"], portable["passes"], bake_masks,
                         0 if bake_masks is not None else portable["passes"] * meta["masks"]["floats_per_pass"],
                         len(data), len(converted.graph.node), checks)


def _check_parity(standard, data: bytes, meta: dict, folder: Path, limits) -> str:
    """The portable file's samples equal the standard file's shared-mode samples for one mask seed."""
    from ..runtime.session import MCSession
    from ..runtime.randomness_checks import sample_inputs

    path = folder / "portable.onnx"
    path.write_bytes(data)
    portable = MCSession(path, seed=0, limits=limits, threads=1)
    info = standard.info
    batch = meta["portable"]["batch"] or 2
    x = {i.name: sample_inputs(i.shape, info.metadata.get("preprocessing"), count=batch, seed=n)
         for n, i in enumerate(info.model_inputs)}
    x = x if len(x) > 1 else next(iter(x.values()))
    passes = meta["portable"]["passes"]
    seed = (meta["portable"]["baked"] or {}).get("mask_seed", 0)
    want = standard.predict(x, passes=passes, masks="shared", mask_seed=seed)
    got = portable.predict(x, passes=passes, mask_seed=seed)
    pairs = zip(want.values(), got.values()) if isinstance(want, dict) else [(want, got)]
    gap = max(float(np.max(np.abs(a.samples - b.samples))) for a, b in pairs)
    if not gap <= PARITY_TOLERANCE:
        raise ValidationError(f"validation failed: the portable file's samples differ from the standard file's "
                              f"by {gap:.1e} for the same mask seed (over {PARITY_TOLERANCE:g}); file not written")
    return f"samples equal to the standard file's shared mode for the same mask seed ({gap:.1e})"
