"""Deep ensembles in one file: K exported members side by side in one graph (docs/DESIGN.md: Deep ensembles).

Each member is exported and validated as a single model would be (export/pipeline.py); `combine`
then puts their graphs in one: member k's names get the prefix `member_<k>/`, all members read the
same model inputs, `passes` and `stochastic`, and member k reads its own columns of the `masks`
input (runtime/format/members.py draws them from its own seed). Each output's samples are the
members' [T, B, ...] samples interleaved pass by pass, [T * K, B, ...] (row t * K + k: pass t of
member k), so that a run split by passes (runtime/chunk_plan.py) assembles in the same order; the
mean, variance and entropies are then computed over all of them by the single export's own
head_outputs. No layer is assumed shared between members.
"""

from __future__ import annotations

import hashlib

import numpy as np
import onnx
from onnx import compose, helper, numpy_helper

from ..runtime.errors import ExportError, ValidationError
from ..runtime.format import mask_sets
from ..runtime.format.members import draw as members_draw, member_layout, member_seed, read_members
from .onnx_edits import prune

MEMBER_PREFIX = "member_{}/"
SHARED_INPUTS = ("passes", "stochastic")
# Members run the same ops on the same inputs in one file and alone, so their samples agree to
# rounding (onnxruntime may fuse a member's nodes differently inside a larger graph); measured:
# docs/DESIGN.md: Deep ensembles.
MEMBER_ATOL = 1e-5


def check_members_agree(sources, metadatas):
    """The members take the same inputs, give the same outputs (names, shapes, heads, labels) and
    preprocess images alike; the first member that differs is an ExportError naming it."""
    def compared(meta):
        # A one-output model's output name (its last layer's) names no graph output: it may differ.
        outputs = [o if o["prefix"] else {**o, "name": None} for o in meta["outputs"]]
        return {"inputs": meta["inputs"], "outputs": outputs, "preprocessing": meta["preprocessing"]}

    first = compared(metadatas[0])
    for source, meta in zip(sources[1:], map(compared, metadatas[1:])):
        for key, what in (("inputs", "inputs"), ("outputs", "outputs (shapes, heads, labels and names)"),
                          ("preprocessing", "image preprocessing")):
            if meta[key] != first[key]:
                raise ExportError(f"{source}: an ensemble's members must have the same {what}; "
                                  f"{sources[0]} has {first[key]}, this one {meta[key]}")


def ensemble_metadata(sources, metadatas):
    """The file's metadata: the first member's inputs, outputs and preprocessing; every member's
    stochastic layers in member order (their masks side by side); the activations of all members
    (each pass runs them all); and `members` (docs/FORMAT.md: Members)."""
    meta = {**metadatas[0]}
    layers, members, offset, shareable = [], [], 0, all(m["masks"] is not None for m in metadatas)
    for k, member in enumerate(metadatas):
        floats = member["masks"]["floats_per_pass"] if shareable else 0
        for layer in member["stochastic_layers"]:
            layer = {**layer, "random_node": MEMBER_PREFIX.format(k) + layer["random_node"], "member": k}
            if shareable:
                layer["mask_offset"] += offset
            layers.append(layer)
        members.append({"source": member["source"], "stochastic_layers": len(member["stochastic_layers"]),
                        "mask_offset": offset, "mask_floats": floats})
        offset += floats
    meta.update(
        stochastic_layers=layers,
        masks={**metadatas[0]["masks"], "floats_per_pass": offset} if shareable else None,
        members=members,
        mc_layers=sorted({n for m in metadatas for n in m["mc_layers"] or ()}) or None,
        activation_floats_per_sample=sum(m["activation_floats_per_sample"] for m in metadatas),
        once_floats_per_input=sum(m["once_floats_per_input"] for m in metadatas),
        repeated_from=[MEMBER_PREFIX.format(k) + name for k, m in enumerate(metadatas) for name in m["repeated_from"]],
        source={"path": ", ".join(m["source"]["path"] for m in metadatas),
                "name": "ensemble of " + ", ".join(m["source"]["name"] for m in metadatas),
                "sha256": hashlib.sha256(" ".join(m["source"]["sha256"] for m in metadatas).encode()).hexdigest()},
    )
    return meta


def combine(protos, metadata):
    """One ModelProto of the members' protos (each as export_model builds it, random nodes
    attached), with the ensemble's samples and measures as outputs."""
    first = protos[0].graph
    model_inputs = [i.name for i in first.input if i.name not in (*SHARED_INPUTS, mask_sets.MASKS)]
    graph = helper.make_graph([], "mcdrop_ensemble", [_copy(i, onnx.ValueInfoProto) for i in first.input], [])
    for k, (proto, member) in enumerate(zip(protos, metadata["members"])):
        prefix = MEMBER_PREFIX.format(k)
        sub = compose.add_prefix(proto, prefix).graph
        _rename_uses(sub, {prefix + name: name for name in (*model_inputs, *SHARED_INPUTS)})
        start, end = member["mask_offset"], member["mask_offset"] + member["mask_floats"]
        graph.node.append(helper.make_node("Slice", [mask_sets.MASKS, _constant(graph, prefix + "mask_starts", [start]),
                                                     _constant(graph, prefix + "mask_ends", [end]),
                                                     _constant(graph, prefix + "mask_axes", [1])],
                                           [prefix + mask_sets.MASKS], name=prefix + "mask_columns"))
        graph.node.extend(sub.node)
        graph.initializer.extend(sub.initializer)
        graph.value_info.extend(sub.value_info)
    for output in metadata["outputs"]:
        _interleave(graph, output["prefix"], len(protos))
    _add_measures(graph, protos[0], metadata["outputs"])
    prune(graph)
    model = helper.make_model(graph, opset_imports=_opsets(protos), producer_name=protos[0].producer_name)
    model.ir_version = protos[0].ir_version
    return model


def _interleave(graph, prefix, count):
    """[T, B, ...] x K -> [T, K, B, ...] -> [T * K, B, ...]: row t * K + k is member k's pass t."""
    name = prefix + "samples"
    stacked = [f"{MEMBER_PREFIX.format(k)}{name}/stacked" for k in range(count)]
    axis = _constant(graph, f"ensemble/{name}/axis", [1])
    for k, out in enumerate(stacked):
        graph.node.append(helper.make_node("Unsqueeze", [MEMBER_PREFIX.format(k) + name, axis], [out], name=out))
    shape, rest, target = (f"ensemble/{name}/{part}" for part in ("shape", "rest", "target"))
    graph.node.extend([
        helper.make_node("Concat", stacked, [f"ensemble/{name}/stacked"], axis=1, name=f"ensemble/{name}/stacked"),
        helper.make_node("Shape", [MEMBER_PREFIX.format(0) + name], [shape], name=shape),  # Shape's start: opset 15
        helper.make_node("Slice", [shape, _constant(graph, f"ensemble/{name}/one", [1]),
                                   _constant(graph, f"ensemble/{name}/end", [2**62])], [rest], name=rest),
        helper.make_node("Concat", [_constant(graph, f"ensemble/{name}/rows", [-1]), rest], [target], axis=0,
                         name=target),
        helper.make_node("Reshape", [f"ensemble/{name}/stacked", target], [name], name=f"ensemble/{name}"),
    ])


def _add_measures(graph, first, outputs):
    """mean, variance and the entropies of every output over all samples: the single export's
    head_outputs (export/graph.py) converted on its own and fed the ensemble's samples."""
    import tensorflow as tf
    import tf2onnx

    from .graph import head_outputs

    names = {o.name for o in first.graph.output}
    specs = [tf.TensorSpec([None] * (1 + len(o["shape"])), tf.float32, name=f"ensemble_samples_{i}")
             for i, o in enumerate(outputs)]

    @tf.function(input_signature=specs)
    def measures(*samples):
        out = {}
        for s, o in zip(samples, outputs):
            out.update({o["prefix"] + k: v for k, v in head_outputs(s, o["head"]).items() if k != "samples"})
        return out

    opset = next(o.version for o in first.opset_import if o.domain in ("", "ai.onnx"))
    try:
        proto, _ = tf2onnx.convert.from_function(measures, input_signature=specs, opset=opset)
    except Exception as err:  # tf2onnx raises bare exceptions
        raise ExportError(f"tf2onnx could not convert the ensemble's measures: {err}") from err
    wanted = [o.name for o in proto.graph.output if o.name in names]
    sub = compose.add_prefix(proto, "ensemble/measures/").graph
    _rename_uses(sub, {f"ensemble/measures/ensemble_samples_{i}": o["prefix"] + "samples" for i, o in enumerate(outputs)})
    _rename_uses(sub, {"ensemble/measures/" + name: name for name in wanted}, outputs_too=True)
    graph.node.extend(sub.node)
    graph.initializer.extend(sub.initializer)
    by_name = {o.name: o for o in first.graph.output}
    graph.output.extend(_copy(by_name[name], onnx.ValueInfoProto) for name in
                        [o["prefix"] + "samples" for o in outputs] + wanted)


def _rename_uses(graph, mapping, outputs_too=False):
    for node in graph.node:
        for i, name in enumerate(node.input):
            node.input[i] = mapping.get(name, name)
        if outputs_too:
            for i, name in enumerate(node.output):
                node.output[i] = mapping.get(name, name)
        for attr in node.attribute:
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                _rename_uses(sub, mapping, outputs_too)


def _opsets(protos):
    versions = {}
    for proto in protos:
        for o in proto.opset_import:
            versions[o.domain] = max(versions.get(o.domain, 0), o.version)
    return [helper.make_opsetid(domain, version) for domain, version in versions.items()]


def _constant(graph, name, values):
    graph.initializer.append(numpy_helper.from_array(np.array(values, np.int64), name))
    return name


def _copy(message, kind):
    copy = kind()
    copy.CopyFrom(message)
    return copy


def check_against_members(ensemble_bytes, member_protos, x, metadata, checks):
    """The ensemble's samples are its members' run alone: member k's rows (k::K) of a shared set
    from mask seed s equal member k's with mask seed member_seed(s, k), and with dropout off."""
    from ..runtime.format.mask_sets import layout_from_metadata

    from .validate import VALIDATION_MASK_SEED, max_abs_diff, ort_session, run

    layout = layout_from_metadata(metadata, metadata["stochastic_layers"])
    names = [o["prefix"] + "samples" for o in metadata["outputs"]]
    count, passes = len(member_protos), 4
    members = read_members(metadata, layout)
    masks = None if layout is None else members_draw(layout, members, VALIDATION_MASK_SEED, 0, passes)
    joined = ort_session(ensemble_bytes)
    together = run(joined, x, passes, masks=masks, outputs=names)
    off = run(joined, x, 1, stochastic=False, outputs=names)
    worst = 0.0
    for k, proto in enumerate(member_protos):
        member_meta = metadata["members"][k]
        session = ort_session(proto.SerializeToString())
        alone_off = run(session, x, 1, stochastic=False, outputs=names)
        worst = max(worst, *(max_abs_diff(off[n][k::count], alone_off[n]) for n in names))
        if masks is not None:
            own = masks[:, member_meta["mask_offset"]:member_meta["mask_offset"] + member_meta["mask_floats"]]
            expected = mask_sets.draw(member_layout(layout, members[k]), member_seed(VALIDATION_MASK_SEED, k), 0, passes)
            if not np.array_equal(own, expected):
                raise ValidationError(f"validation failed (ensemble): member {k}'s mask columns are not its own set")
            alone = run(session, x, passes, masks=own, outputs=names)
            worst = max(worst, *(max_abs_diff(together[n][k::count], alone[n]) for n in names))
    checks.check("ensemble = members", worst <= MEMBER_ATOL, f"max |ensemble - member alone| {worst:.2g} "
                 f"over {count} members (dropout off{', shared masks' if masks is not None else ''})",
                 f"the ensemble's samples differ from its members' run alone by {worst:.2g} (limit {MEMBER_ATOL:g})")

