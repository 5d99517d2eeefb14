"""Checks an exported graph must pass before its file is written.

`validate_export` runs them all and raises ValidationError naming the first that fails; the
CLI, the tests and `export_model` all call it. The comparison helpers are shared with the
parity tests.
"""

from __future__ import annotations

import os
import tempfile
import numpy as np
import onnx

from ..runtime.errors import ValidationError, first_line
from ..runtime.format import mask_sets as masks
from ..runtime.format.mask_sets import control_feeds, layout_from_metadata
from ..runtime.randomness_checks import Checklist, check_live_randomness, sample_inputs, side_by_side, z_scores

from .graph import RANDOM_PREFIX, random_nodes, seed_of

DETERMINISTIC_ATOL = 1e-5
MC_PASSES = 1000
VALIDATION_MASK_SEED = 0
Z_LIMIT = 5.0


def ort_session(model_bytes, level="all", optimized_path=None):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[level]
    opts.log_severity_level = 3
    if optimized_path:
        opts.optimized_model_filepath = optimized_path
    return ort.InferenceSession(model_bytes, opts, providers=["CPUExecutionProvider"])


def feeds_for(x) -> dict:
    """The graph's model inputs: x is an array (a one-input model's `input`) or a dict by name."""
    return {name: np.asarray(v, np.float32) for name, v in (x.items() if isinstance(x, dict) else [("input", x)])}


def run(session, x, passes, stochastic=True, outputs=None, masks=None):
    """Every named output of one run; masks: a shared mask set's rows (None: independent)."""
    feeds = {**feeds_for(x), **control_feeds(passes, stochastic, masks)}
    names = outputs or [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feeds)))


def max_abs_diff(a, b):
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


def validation_inputs(model, metadata, count=2, seed=0):
    """Inputs in the model's range: token ids (0, the padding id, included) for an input that
    feeds an Embedding, else runtime.randomness_checks.sample_inputs. An array for a one-input model, else
    a dict by graph input name."""
    from .signature import input_names

    out = {}
    for i, (name, tensor) in enumerate(zip(input_names(model), model.inputs)):
        x = sample_inputs(tensor.shape, metadata.get("preprocessing"), count, seed + i)
        vocabulary = embedding_vocabulary(model, tensor)
        if vocabulary is not None:
            x = np.random.default_rng(seed + i).integers(0, vocabulary, x.shape).astype(np.float32)
        out[name] = x
    return out if len(out) > 1 else out["input"]


def embedding_vocabulary(model, source):
    """The smallest input_dim of the Embedding layers that read the model input `source`, or None."""
    import keras

    sources = _same_tensors(model, source)
    sizes = [layer.input_dim for layer in model._flatten_layers(include_self=False)
             if isinstance(layer, keras.layers.Embedding)
             and any(id(t) in sources for node in layer._inbound_nodes for t in node.input_tensors)]
    return min(sizes) if sizes else None


def _same_tensors(model, source):
    """ids of `source` and of the inputs of nested models it feeds (a keras-hub backbone called
    on the model's own token_ids), which hold the same values."""
    import keras

    found, pending = {id(source)}, [source]
    nested = [layer for layer in model._flatten_layers(include_self=False)
              if isinstance(layer, keras.Model) and hasattr(layer, "_nodes_by_depth")]
    while pending:
        tensor = pending.pop()
        for sub in nested:
            for node in sub._inbound_nodes:
                for outer, inner in zip(node.input_tensors, sub.inputs):
                    if outer is tensor and id(inner) not in found:
                        found.add(id(inner))
                        pending.append(inner)
    return found


def apply_head(y, head):
    """The graph applies softmax to each pass of a logits head; do the same to Keras's outputs."""
    y = np.asarray(y, np.float32)
    if head == "logits":
        y = np.exp(y - y.max(-1, keepdims=True))
        y /= y.sum(-1, keepdims=True)
    return y


def keras_deterministic(model, x, heads):
    """Keras's predict, one array per output, each with its head applied."""
    from .reference import model_inputs
    from .signature import as_model_inputs

    outputs = model(as_model_inputs(model, model_inputs(model, x)), training=False)
    outputs = [outputs[name] for name in sorted(outputs)] if isinstance(outputs, dict) else outputs
    outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
    return [apply_head(y, head) for y, head in zip(outputs, heads)]


def output_heads(metadata):
    """[(output prefix, head)] of the metadata the exporter writes."""
    return [(o["prefix"], o["head"]) for o in metadata["outputs"]]


def validate_structure(checks, proto, metadata, x):
    """What any mcdrop file must pass, float or quantized: valid ONNX, standard ops, one seeded
    random node per stochastic layer at every optimisation level, live randomness."""
    check = checks.check
    expected = len(metadata["stochastic_layers"])
    try:
        onnx.checker.check_model(proto, full_check=True)
    except Exception as err:  # checker raises several exception types
        raise ValidationError(f"validation failed (onnx checker): {first_line(err)}") from err
    check("onnx checker", True, "valid ONNX", "")  # reached only when the checker passed

    foreign = sorted({f"{n.domain}:{n.op_type}" for n in proto.graph.node if n.domain not in ("", "ai.onnx")})
    check("convertible ops", not foreign, "standard ONNX ops only", f"unconverted ops left: {', '.join(foreign)}")

    nodes = random_nodes(proto.graph)
    seeds = [seed_of(n) for n in nodes]
    check(
        "random nodes",
        len(nodes) == expected and all(n.name.startswith(RANDOM_PREFIX) for n in nodes),
        f"{len(nodes)} random nodes for {expected} stochastic layers",
        f"{len(nodes)} random nodes for {expected} stochastic layers",
    )
    check(
        "distinct seeds",
        None not in seeds and len(set(seeds)) == len(seeds),
        "every random node has its own seed",
        f"seeds {seeds} are missing or shared",
    )

    data = proto.SerializeToString()
    with tempfile.TemporaryDirectory() as tmp:
        for level in ("disable", "basic", "extended", "all"):
            path = os.path.join(tmp, f"{level}.onnx")
            try:
                ort_session(data, level, path)
            except Exception as err:  # onnxruntime raises its own exception types
                raise ValidationError(f"validation failed (onnxruntime {level}): {first_line(err)}") from err
            kept = len(random_nodes(onnx.load(path).graph))
            check(
                f"optimiser {level}",
                kept == expected,
                f"{kept} random nodes survive",
                f"onnxruntime at level '{level}' left {kept} of {expected} random nodes",
            )
    session = ort_session(data)
    if expected:
        names = [prefix + "samples" for prefix, _ in output_heads(metadata)]
        check_live_randomness(checks, lambda x, t, on: side_by_side(run(session, x, t, on, names), names), x)
    return session


def validate_export(proto, model, metadata, x=None, mc_passes=MC_PASSES, progress=lambda msg: None):
    """Raise ValidationError on the first failed check; return the passed checks, for the report."""
    from .reference import keras_mc_samples

    checks = Checklist(progress)
    check = checks.check
    outputs = output_heads(metadata)
    several = len(outputs) > 1
    if x is None:
        x = validation_inputs(model, metadata)
    session = validate_structure(checks, proto, metadata, x)

    references = keras_deterministic(model, x, [head for _, head in outputs])
    deterministic = run(session, x, 1, stochastic=False, outputs=[prefix + "mean" for prefix, _ in outputs])
    for (prefix, _), reference in zip(outputs, references):
        got = deterministic[prefix + "mean"]
        diff = max_abs_diff(got, reference) if got.shape == reference.shape else float("inf")
        where = f" of {prefix[:-1]}" if several else ""
        check(
            f"deterministic parity{where}",
            diff <= DETERMINISTIC_ATOL,
            f"max |onnx - keras| = {diff:.1e}",
            f"deterministic pass{where} differs from Keras predict by {diff:.2e} (shape {got.shape} vs {reference.shape})",
        )
    if not metadata["stochastic_layers"]:
        return checks.passed

    progress(f"  ..  statistical parity with Keras MC at T={mc_passes}")
    names = [prefix + "samples" for prefix, _ in outputs]
    keras_samples = keras_mc_samples(model, x, mc_passes, selected=metadata.get("mc_layers"))
    keras_samples = keras_samples if several else [keras_samples]
    modes = [("", None)]
    layout = layout_from_metadata(metadata, metadata["stochastic_layers"])
    if layout is not None:
        # One set for every input: each input's T samples must still follow Keras's distribution.
        modes.append((" (shared masks)", masks.draw(layout, VALIDATION_MASK_SEED, 0, mc_passes)))
    for mode, mask_set in modes:
        onnx_samples = run(session, x, mc_passes, outputs=names, masks=mask_set)
        for (prefix, head), theirs in zip(outputs, keras_samples):
            z = z_scores(onnx_samples[prefix + "samples"], apply_head(theirs, head))
            where = (f" of {prefix[:-1]}" if several else "") + mode
            check(
                f"statistical parity{where}",
                max(z.values()) <= Z_LIMIT,
                f"T={mc_passes}: worst z mean {z['mean']:.1f}, variance {z['variance']:.1f} (limit {Z_LIMIT:g})",
                f"MC mean/variance{where} differ from Keras's own MC beyond {Z_LIMIT:g} standard errors: {z}",
            )
    return checks.passed


def quantized_drift(float_proto, quantized_proto, x, metadata, passes=MC_PASSES):
    """How far the int8 graph's outputs move from the float graph's, on the same inputs, over
    every output of the model.

    Deterministic: max |difference| of the outputs. MC: max |difference| of the mean and of the
    variance, each of T passes (their own sampling noise included)."""
    sessions = [ort_session(p.SerializeToString()) for p in (float_proto, quantized_proto)]
    prefixes = [prefix for prefix, _ in output_heads(metadata)]
    means = [prefix + "mean" for prefix in prefixes]
    det = [run(s, x, 1, stochastic=False, outputs=means) for s in sessions]
    mc = [run(s, x, passes, outputs=means + [prefix + "variance" for prefix in prefixes]) for s in sessions]

    def drift(runs, stat):
        return max(max_abs_diff(runs[0][prefix + stat], runs[1][prefix + stat]) for prefix in prefixes)

    return {"deterministic": drift(det, "mean"), "mc_mean": drift(mc, "mean"), "mc_variance": drift(mc, "variance")}
