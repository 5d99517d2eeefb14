"""The export pipeline: a Keras model -> one self-contained MC-dropout ONNX file.

export_model loads the source (export/model_source.py: listed, size-checked and hashed once),
traces, converts and randomises the graph (build_graph), writes the metadata (runtime/format's
one writer), validates against Keras (export/validate.py), optionally quantizes to int8, seals the
file with its checksum and writes it atomically. Nothing is written unless every check passes.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..runtime.errors import ExportError, McdropError, ModelFileError, first_line
from ..runtime.format.metadata import describe_preprocessing
from ..runtime.format.rules import FORMAT_VERSION, labels_problem

from .model_source import MAX_SOURCE_BYTES, ModelSource, load_source
from .preprocess import image_preprocessing

VERSION = "0.1.0"
MAX_LABELS_BYTES = 16 * 2**20


@dataclass
class ExportReport:
    output: str
    head: str
    stochastic_layers: list
    default_passes: int
    repeated_from: list
    checks: list = field(default_factory=list)
    seconds: float = 0.0
    size_bytes: int = 0
    quantization: dict | None = None
    drift: dict | None = None
    preprocessing: dict | None = None  # the metadata's, None for models that take arrays only
    preprocessing_reason: str = ""  # where the pixel pipeline came from: given, the model, a default
    members: list | None = None  # an ensemble's member sources (export/ensemble.py), None for one model

    def lines(self):
        layers = ", ".join(f"{s['name']} ({s['kind']} {s['rate']:g})" for s in self.stochastic_layers) or "none"
        out = [
            f"wrote {self.output} ({self.size_bytes / 1e6:.1f} MB) in {self.seconds:.1f} s",
            f"  head: {self.head}; default passes: {self.default_passes}",
            f"  stochastic layers: {layers}",
            f"  passes repeat from: {', '.join(self.repeated_from) or 'the output (deterministic export)'}",
            f"  preprocessing: {describe_preprocessing(self.preprocessing, self.preprocessing_reason)}",
        ]
        if self.members:
            out.insert(1, f"  ensemble of {len(self.members)}: {', '.join(self.members)}; samples are members x passes")
        if self.quantization:
            out.append(f"  quantized: int8 {', '.join(self.quantization['ops'])} (calibration: {self.quantization['calibration']})")
        if self.drift:
            out.append(
                "  int8 drift from float: deterministic {deterministic:.2g}, MC mean {mc_mean:.2g}, "
                "MC variance {mc_variance:.2g} (max |difference|)".format(**self.drift)
            )
        if self.checks:
            out.append(f"  validation: {len(self.checks)} checks passed")
        else:
            out.append("  validation: skipped (--no-validate)")
        return out


def read_labels(path, head, units):
    if path is None:
        return None
    from ..runtime.safe_files import read_regular

    data = read_regular(path, MAX_LABELS_BYTES, error=ExportError, what="labels file", limit_name="labels",
                        raise_hint="one label per line never needs that much")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ExportError(f"{path}: labels file is not UTF-8 text ({first_line(err)})") from None
    labels = [line.strip() for line in text.splitlines() if line.strip()]
    problem = labels_problem(len(labels), head, units)
    if problem:
        raise ExportError(f"{path}: {problem}")
    return labels


def build_graph(
    model, head: str | list = "softmax", mc_layers=None, allow_deterministic=False, seed=None, opset=None, repeat_all=False,
    ignore_random_layers=None,
):
    """Trace, convert and randomise: returns (ModelProto, masks-as-inputs variant, calls, extras).
    `head`: one per model output (a single one for a single output).

    A layer that draws random numbers mcdrop cannot keep live is an ExportError unless it is
    named in ignore_random_layers (export/randomness.py)."""
    from ..runtime.format.seeds import fresh_seeds

    from .attention import inner_dropout, is_attention
    from .graph import OPSET, attach_random_nodes, convert, find_noise_calls, masks_as_inputs
    from .noise import SPECS, noise_layers, spec_for
    from .randomness import check_no_lost_randomness
    from .signature import input_specs
    from .trace import layer_graph

    layer_graph(model)  # refuses subclassed models before anything reads their inputs
    selected = None
    if mc_layers:
        known = {layer.name for layer in noise_layers(model)}
        unknown = sorted(set(mc_layers) - known)
        if unknown:
            raise ExportError(f"--mc-layers: no noise layer named {', '.join(unknown)} (the model has: {', '.join(sorted(known)) or 'none'})")
        selected = set(mc_layers)
    # An attention layer's dropout is a choice, not lost randomness: naming the layer in
    # --ignore-random-layers leaves it out, as leaving it out of --mc-layers does.
    left_out = {layer.name for layer in noise_layers(model) if is_attention(layer)} & set(ignore_random_layers or ())
    if left_out:
        selected = (selected if selected is not None else {layer.name for layer in noise_layers(model)}) - left_out
    for layer in noise_layers(model):
        rated = inner_dropout(layer) if is_attention(layer) else layer  # the attention dropout's own Dropout
        spec = SPECS["Dropout"] if is_attention(layer) else spec_for(rated)
        if spec is not None and not spec.kind.endswith("GaussianNoise") and spec.strength(rated) >= 1:
            raise ExportError(f"layer '{layer.name}' has rate {spec.strength(rated)}: it drops everything")

    with untraced_errors():
        check_no_lost_randomness(model, input_specs(model), {layer.name for layer in noise_layers(model)},
                                 ignore_random_layers)
        calls = find_noise_calls(model, selected)
    if not calls and not allow_deterministic:
        raise ExportError(
            "the model has no active stochastic layer (Dropout, SpatialDropout1D/2D/3D, GaussianDropout, "
            "GaussianNoise, AlphaDropout, StochasticDepth, LSTM/GRU/SimpleRNN dropout, or MultiHeadAttention "
            "dropout), so every pass is the same; pass --deterministic to export it anyway"
        )
    opset = OPSET if opset is None else opset
    if not 13 <= opset <= 21:
        raise ExportError(f"--opset {opset}: mcdrop builds graphs for opsets 13 to 21")
    heads = [head] if isinstance(head, str) else list(head)
    with untraced_errors():
        proto, stats = convert(model, heads, calls, selected, opset, repeat_all)
    variant = masks_as_inputs(proto)
    attach_random_nodes(proto, calls, fresh_seeds(len(calls), seed))
    return proto, variant, calls, {**stats, "selected": selected}


@contextlib.contextmanager
def untraced_errors():
    """Our own errors raised while TensorFlow traces (the walk runs inside tf.function) come back
    re-raised by autograph as 'in user code:' and a Python trace; give the user the original line."""
    try:
        yield
    except McdropError as err:
        original = err
        while str(original).startswith("in user code:") and isinstance(original.__context__, McdropError):
            original = original.__context__
        if original is err and str(err).startswith("in user code:"):
            # No original to return to: the last line is 'ExportError: <message>'.
            last = str(err).strip().splitlines()[-1].strip()
            raise type(err)(last.split(": ", 1)[-1]) from None
        if original is not err:
            raise type(original)(*original.args) from None
        raise


def _versions():
    import importlib.metadata as md

    out = {"mcdrop": VERSION}
    for dist in ("tensorflow", "keras", "tf2onnx", "onnx"):
        try:
            out[dist] = md.version(dist)
        except md.PackageNotFoundError:
            pass
    return out


def build_metadata(model, source: ModelSource, outputs, passes, calls, extras, preprocessing):
    """The file's "mcdrop" metadata (docs/FORMAT.md); `outputs`: export.signature.ModelOutput each,
    `source` as model_source.read_source read it (hashed)."""
    from .graph import random_node_names
    from .signature import input_names

    layers = []
    for call, node in zip(calls, random_node_names(calls)):
        layers.append(
            {
                "name": call.layer.name,
                "kind": call.kind,
                "rate": call.rate,
                "noise_shape": None if call.recurrent else list(getattr(call.layer, "noise_shape", None) or []) or None,
                "distribution": call.distribution,
                "random_node": node,
            }
        )
        if call.recurrent:
            layers[-1]["masks"] = call.recurrent.count  # one per gate, drawn together
        if extras["mask_layout"] is not None:
            place = extras["mask_layout"][len(layers) - 1]
            layers[-1].update(mask_offset=place["offset"], mask_shape=place["shape"])
    mask_set = None
    if extras["mask_layout"] is not None:
        from ..runtime.format.mask_sets import GENERATOR

        mask_set = {"generator": GENERATOR, "floats_per_pass": extras["mask_floats"]}
    return {
        "format": FORMAT_VERSION,
        "head": outputs[0].head,  # the first output's, as in files from before several outputs
        "labels": outputs[0].labels,
        "default_passes": passes,
        "input_shape": list(model.inputs[0].shape),
        "output_shape": outputs[0].shape,
        "inputs": [{"name": name, "shape": list(tensor.shape)} for name, tensor in zip(input_names(model), model.inputs)],
        "outputs": [{"name": o.name, "prefix": o.prefix, "head": o.head, "labels": o.labels, "shape": o.shape}
                    for o in outputs],
        "preprocessing": preprocessing,
        "stochastic_layers": layers,
        "masks": mask_set,
        "mc_layers": sorted(extras["selected"]) if extras["selected"] else None,
        "quantization": None,
        "activation_floats_per_sample": int(extras["activation_floats"]),
        "once_floats_per_input": int(extras["once_floats"]),
        "repeated_from": extras["tiled_at"],
        "source": {"path": source.path.name, "name": model.name, "sha256": source.sha256},
        "versions": _versions(),
    }


def attach_metadata(proto, metadata):
    """The metadata, with each random node's seed, written as the file's "mcdrop" entry."""
    from ..runtime.format.metadata_writer import write_metadata

    from .graph import random_nodes, seed_of

    seeds = {n.name: seed_of(n) for n in random_nodes(proto.graph)}
    for layer in metadata["stochastic_layers"]:
        layer["seed"] = seeds[layer["random_node"]]
    write_metadata(proto, metadata, producer_version=VERSION)


def write_atomically(data: bytes, output):
    from ..runtime.safe_files import atomic_writer

    with atomic_writer(output) as f:
        f.write(data)


def export_model(
    source,
    output,
    *,
    passes=50,
    head="auto",
    labels=None,
    mc_layers=None,
    opset=None,
    validate=True,
    allow_deterministic=False,
    image_size=None,
    color_mode=None,
    scale=None,
    offset=None,
    preprocess=None,
    seed=None,
    quantize=None,
    calibration=None,
    trust_model_code=False,
    max_source_bytes=MAX_SOURCE_BYTES,
    ignore_random_layers=None,
    custom_objects=None,
    progress=lambda msg: None,
) -> ExportReport:
    """Export `source` (a .keras file, folder or SavedModel) to `output`; a list of several sources
    exports a deep ensemble of them (export/ensemble.py), each exported and validated as it would
    be alone, `passes` passes per member."""
    from ..runtime.format.integrity import seal

    sources = list(source) if isinstance(source, (list, tuple)) else [source]
    _check_options(passes, output, quantize, calibration)
    if not sources or (len(sources) > 1 and quantize == "int8"):
        raise ExportError("--quantize int8 takes one model, not an ensemble" if sources else "no model to export")
    started = time.perf_counter()
    registered = ()
    if custom_objects is not None:
        from .custom_objects import import_custom_objects

        progress(f"importing custom objects from {custom_objects} (runs that file's code)")
        registered = import_custom_objects(custom_objects)
    members, checks = [], []
    for k, member_source in enumerate(sources):
        if len(sources) > 1:
            progress(f"member {k} of {len(sources)}")
        member_seed = seed if seed is None or k == 0 else [seed, k]  # distinct random node seeds per member
        members.append(_export_member(member_source, passes, head, labels, mc_layers, opset, allow_deterministic,
                                      (image_size, color_mode, scale, offset, preprocess), member_seed, quantize,
                                      trust_model_code, max_source_bytes, registered, ignore_random_layers, progress))
        if k:  # members that cannot be one file are refused before any is validated
            from .ensemble import check_members_agree

            check_members_agree([str(sources[0]), str(member_source)], [members[0][2], members[-1][2]])
        checks += _validated(members[-1], validate, progress)
    model, proto, metadata, outputs, (preprocessing, preprocessing_reason) = members[0]
    drift = None
    if len(sources) > 1:
        proto, metadata, more_checks = _ensemble(sources, members, validate, progress)
        checks += more_checks
    elif quantize == "int8":
        proto, drift, more_checks = _quantize(proto, model, metadata, calibration, validate, progress)
        checks += more_checks
    data = seal(proto.SerializeToString())  # the runtime checks this checksum before loading
    _check_as_the_runtime_would(data, output)
    write_atomically(data, output)
    return ExportReport(
        output=str(output),
        head=", ".join(f"{o.name}: {o.head}" for o in outputs) if len(outputs) > 1 else outputs[0].head,
        stochastic_layers=metadata["stochastic_layers"],
        default_passes=passes,
        repeated_from=metadata["repeated_from"],
        checks=checks,
        seconds=time.perf_counter() - started,
        size_bytes=len(data),
        quantization=metadata.get("quantization"),
        drift=drift,
        preprocessing=preprocessing,
        preprocessing_reason=preprocessing_reason,
        members=[str(s) for s in sources] if len(sources) > 1 else None,
    )


def _export_member(source, passes, head, labels, mc_layers, opset, allow_deterministic, image_options, seed, quantize,
                   trust_model_code, max_source_bytes, registered, ignore_random_layers, progress):
    """(model, graph, metadata, outputs, (preprocessing, its reason)) of one model, not validated yet."""
    progress(f"loading {source}")
    model, model_source = load_source(source, trust_model_code, max_source_bytes, registered)
    outputs = model_outputs(model, head, labels)
    heads = [o.head for o in outputs]
    preprocessing = image_preprocessing(model, *image_options)
    if quantize == "int8" and len(model.inputs) > 1:
        raise ExportError("--quantize int8 takes models with one input (its calibration data is one array)")

    progress(f"tracing and converting (head: {', '.join(heads)})")
    proto, _, calls, extras = build_graph(model, heads, mc_layers, allow_deterministic, seed, opset,
                                          ignore_random_layers=ignore_random_layers)
    metadata = build_metadata(model, model_source, outputs, passes, calls, extras, preprocessing[0])
    attach_metadata(proto, metadata)
    return model, proto, metadata, outputs, preprocessing


def _validated(member, validate, progress):
    """The checks one model passed (export/validate.py), as a single export runs them."""
    from .validate import validate_export

    model, proto, metadata = member[:3]
    if not validate:
        return []
    progress("validating")
    return validate_export(proto, model, metadata, progress=progress)


def _ensemble(sources, members, validate, progress):
    """(graph, metadata, checks) of the members in one file (export/ensemble.py)."""
    from ..runtime.randomness_checks import Checklist

    from .ensemble import check_against_members, combine, ensemble_metadata
    from .validate import validation_inputs

    progress(f"combining {len(members)} members")
    metadatas = [member[2] for member in members]
    metadata = ensemble_metadata([str(s) for s in sources], metadatas)
    proto = combine([member[1] for member in members], metadata)
    attach_metadata(proto, metadata)
    checks = Checklist(progress)
    if validate:
        progress("validating the ensemble against its members")
        x = validation_inputs(members[0][0], metadata)
        check_against_members(proto.SerializeToString(), [member[1] for member in members], x, metadata, checks)
    return proto, metadata, checks.passed


def _check_options(passes, output, quantize, calibration):
    """The options that need no model, checked before it is loaded."""
    if passes < 1:
        raise ExportError(f"--passes must be >= 1, got {passes}")
    if Path(output).is_dir():
        raise ExportError(f"{output}: is a folder; give a file name")
    if quantize not in (None, "none", "int8"):
        raise ExportError(f"--quantize {quantize!r}: choose none or int8")
    if calibration is not None and quantize != "int8":
        raise ExportError("--calibration is for --quantize int8 only")


def model_outputs(model, head, labels) -> list:
    """export.signature.ModelOutput for each model output: its name, prefix, head (--head, or read
    off the model) and labels (--labels, read and counted against the head)."""
    from .heads import resolve_heads
    from .signature import ModelOutput, output_names, output_prefixes, per_output
    from .trace import layer_graph

    layer_graph(model)  # a subclassed model has no outputs to read the head from
    heads = resolve_heads(model, head)
    names = output_names(model)
    label_files = per_output(labels, names, "labels")
    return [ModelOutput(name, prefix, head_, list(tensor.shape), read_labels(label_files[name], head_, tensor.shape[-1]))
            for name, prefix, head_, tensor in zip(names, output_prefixes(model), heads, model.outputs)]


def _check_as_the_runtime_would(data, output):
    """The runtime's own load-time checks, also under --no-validate: no file that `infer` or
    `info` would refuse is ever written."""
    from ..runtime.errors import ValidationError
    from ..runtime.load_checks import check_model_bytes

    try:
        check_model_bytes(data, str(output))
    except ModelFileError as err:
        raise ValidationError(f"validation failed (runtime contract): {err}") from None


def _quantize(proto, model, metadata, calibration, validate, progress):
    """int8 copy of the validated float graph; its structure is validated, its drift measured."""
    from ..runtime.randomness_checks import Checklist, sample_inputs

    from .quantize import QUANTIZED_OPS, quantize_int8
    from .validate import quantized_drift, validate_structure, validation_inputs

    progress("quantizing to int8")
    shape = model.inputs[0].shape
    if calibration is None:
        data, source = sample_inputs(shape, metadata.get("preprocessing"), count=64, seed=1), "synthetic inputs in range"
    else:
        data, source = load_calibration(calibration, shape), Path(calibration).name
    quantized = quantize_int8(proto, data)
    metadata["quantization"] = {"kind": "int8", "ops": QUANTIZED_OPS, "format": "QDQ", "calibration": source}
    attach_metadata(quantized, metadata)
    if not validate:
        return quantized, None, []
    progress("validating the int8 graph")
    checks = Checklist(progress)
    x = validation_inputs(model, metadata)
    validate_structure(checks, quantized, metadata, x)
    return quantized, quantized_drift(proto, quantized, x, metadata), checks.passed


def load_calibration(path, shape):
    """Preprocessed model inputs, batch first, from a .npy file (or an .npz holding one array, or
    one named x or input), read as the runtime reads inputs: regular files only, the header's
    size checked against the input limit before anything is read or inflated."""
    import numpy as np

    from ..runtime.array_files import load_array

    data = load_array(path)
    if data.dtype.kind not in "fiu":
        raise ExportError(f"{path}: calibration data must be numbers, not {data.dtype}")
    expected = tuple(shape[1:])
    if data.ndim != len(shape) or any(e is not None and e != d for e, d in zip(expected, data.shape[1:])):
        raise ExportError(f"{path}: calibration data has shape {data.shape}; the model takes [batch, {', '.join(map(str, expected))}]")
    return data.astype(np.float32)
