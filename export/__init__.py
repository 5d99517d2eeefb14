"""mcdrop exporter: a Keras model -> one self-contained MC-dropout ONNX file.

    from export import export_model
    report = export_model("cnn.keras", "cnn.onnx", passes=50)

Needs the `export` extra (tensorflow, keras, tf2onnx, onnx). The file is written only after
validation passes (see export.validate).
"""

from __future__ import annotations

import hashlib
import json
import math
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from runtime.errors import ExportError, ModelFileError, first_line

__all__ = ["export_model", "load_keras_model", "build_graph", "ExportReport"]

VERSION = "0.1.0"


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

    def lines(self):
        layers = ", ".join(f"{s['name']} ({s['kind']} {s['rate']:g})" for s in self.stochastic_layers) or "none"
        out = [
            f"wrote {self.output} ({self.size_bytes / 1e6:.1f} MB) in {self.seconds:.1f} s",
            f"  head: {self.head}; default passes: {self.default_passes}",
            f"  stochastic layers: {layers}",
            f"  passes repeat from: {', '.join(self.repeated_from) or 'the output (deterministic export)'}",
        ]
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


def load_keras_model(path):
    """A .keras file, a legacy .h5 file or a SavedModel directory written by Keras."""
    import keras

    path = Path(path)
    if not path.exists():
        raise ModelFileError(f"{path}: no such file or directory")
    try:
        if path.is_dir():
            return _load_saved_model(path)
        if path.suffix not in (".keras", ".h5", ".hdf5"):
            raise ModelFileError(f"{path}: expected a .keras file, an .h5 file or a SavedModel directory")
        return keras.models.load_model(path, compile=False)
    except ModelFileError:
        raise
    except Exception as err:  # keras raises many types for unreadable files
        raise ModelFileError(f"{path}: cannot load the Keras model ({first_line(err)})") from err


def _load_saved_model(path):
    import keras

    if not (path / "saved_model.pb").exists():
        raise ModelFileError(f"{path}: a directory without saved_model.pb is not a SavedModel")
    if (path / "keras_metadata.pb").exists():
        # Keras 2 SavedModels keep the layer config; tf_keras (Keras 2) reads it and writes the
        # legacy .h5 form, which Keras 3 loads with its layers intact.
        try:
            import tf_keras
        except ImportError as err:
            raise ModelFileError(f"{path}: a Keras 2 SavedModel needs the tf_keras package (pip install tf_keras)") from err
        with tempfile.TemporaryDirectory() as tmp:
            tf_keras.models.load_model(path, compile=False).save(Path(tmp) / "model.h5")
            return keras.models.load_model(Path(tmp) / "model.h5", compile=False)
    raise ModelFileError(
        f"{path}: this SavedModel holds a traced inference graph only (no Keras layers), so its dropout is gone; "
        "export from the .keras file instead"
    )


def _noise_layers(model):
    from .noise import spec_for

    return [layer for layer in model._flatten_layers(include_self=False) if spec_for(layer) is not None]


def image_preprocessing(model, size=None, color_mode=None, scale=None, offset=0.0):
    """How an image becomes the model input: from the model's input shape, or from flags.

    An input of shape (H, W, 1|3) is an image; a flat input needs --image-size. Pixel scaling
    defaults to 1/255 unless the model starts with a Rescaling layer (it scales itself).
    """
    shape = tuple(model.inputs[0].shape[1:])
    if len(shape) == 3 and shape[-1] in (1, 3) and None not in shape[:2]:
        height, width = shape[0], shape[1]
        mode = "grayscale" if shape[-1] == 1 else "rgb"
    elif size:
        height, width = size
        mode = "rgb" if shape and shape[-1] == 3 else "grayscale"
    else:
        return None
    if size and (height, width) != tuple(size):
        raise ExportError(f"--image-size {size[0]}x{size[1]} does not match the model input {shape}")
    mode = color_mode or mode
    pixels = height * width * (1 if mode == "grayscale" else 3)
    if None not in shape and math.prod(shape) != pixels:
        raise ExportError(f"a {height}x{width} {mode} image has {pixels} values; the model input {shape} does not")
    if scale is None:
        first = _first_layer(model)
        scale = 1.0 if type(first).__name__ == "Rescaling" else 1.0 / 255.0
    return {"height": height, "width": width, "color_mode": mode, "scale": float(scale), "offset": float(offset)}


def _first_layer(model):
    from .trace import sub_model

    graph = sub_model(model)
    for depth in sorted(graph._nodes_by_depth, reverse=True):
        for node in graph._nodes_by_depth[depth]:
            if not node.is_input and node.operation:
                return node.operation
    return None


def read_labels(path, head, units):
    if path is None:
        return None
    try:
        labels = [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as err:
        raise ExportError(f"{path}: cannot read labels ({first_line(err)})") from err
    wanted = 2 if head == "binary" else units
    if head == "regression" or len(labels) != wanted:
        raise ExportError(f"{path}: {len(labels)} labels for a {head} head with {wanted} outputs")
    return labels


def build_graph(
    model, head="softmax", passes=50, mc_layers=None, allow_deterministic=False, seed=None, opset=None, repeat_all=False
):
    """Trace, convert and randomise: returns (ModelProto, masks-as-inputs variant, calls, extras)."""
    from runtime.seeds import fresh_seeds

    from .graph import OPSET, attach_random_nodes, convert, find_noise_calls, masks_as_inputs, set_defaults
    from .noise import is_active
    from .trace import layer_graph

    layer_graph(model)  # refuses subclassed models before anything reads their inputs
    selected = None
    if mc_layers:
        known = {layer.name for layer in _noise_layers(model)}
        unknown = sorted(set(mc_layers) - known)
        if unknown:
            raise ExportError(f"--mc-layers: no noise layer named {', '.join(unknown)} (the model has: {', '.join(sorted(known)) or 'none'})")
        selected = set(mc_layers)
    for layer in _noise_layers(model):
        if is_active(layer) and getattr(layer, "rate", 0) >= 1:
            raise ExportError(f"layer '{layer.name}' has rate {layer.rate}: it drops everything")

    calls = find_noise_calls(model, selected)
    if not calls and not allow_deterministic:
        raise ExportError(
            "the model has no active stochastic layer (Dropout, SpatialDropout1D/2D/3D, GaussianDropout, "
            "GaussianNoise, AlphaDropout), so every pass is the same; pass --deterministic to export it anyway"
        )
    opset = OPSET if opset is None else opset
    if not 13 <= opset <= 21:
        raise ExportError(f"--opset {opset}: mcdrop builds graphs for opsets 13 to 21")
    proto, stats = convert(model, head, calls, selected, opset, repeat_all)
    variant = masks_as_inputs(proto)
    attach_random_nodes(proto, calls, fresh_seeds(len(calls), seed))
    set_defaults(proto, passes)
    set_defaults(variant, passes)
    return proto, variant, calls, {**stats, "selected": selected}


def _versions():
    import importlib.metadata as md

    out = {"mcdrop": VERSION}
    for dist in ("tensorflow", "keras", "tf2onnx", "onnx"):
        try:
            out[dist] = md.version(dist)
        except md.PackageNotFoundError:
            pass
    return out


def _sha256(path):
    digest = hashlib.sha256()
    files = sorted(p for p in Path(path).rglob("*") if p.is_file()) if Path(path).is_dir() else [Path(path)]
    for f in files:
        digest.update(f.read_bytes())
    return digest.hexdigest()


def build_metadata(model, source, head, labels, passes, calls, extras, preprocessing):
    from .graph import random_node_names
    from .noise import spec_for

    layers = []
    for call, node in zip(calls, random_node_names(calls)):
        spec = spec_for(call.layer)
        layers.append(
            {
                "name": call.layer.name,
                "kind": spec.kind,
                "rate": spec.strength(call.layer),
                "noise_shape": list(getattr(call.layer, "noise_shape", None) or []) or None,
                "distribution": spec.distribution,
                "random_node": node,
            }
        )
    return {
        "format": 1,
        "head": head,
        "labels": labels,
        "default_passes": passes,
        "input_shape": list(model.inputs[0].shape),
        "output_shape": list(model.outputs[0].shape),
        "preprocessing": preprocessing,
        "stochastic_layers": layers,
        "mc_layers": sorted(extras["selected"]) if extras["selected"] else None,
        "quantization": None,
        "activation_floats_per_sample": int(extras["activation_floats"]),
        "once_floats_per_input": int(extras["once_floats"]),
        "repeated_from": extras["tiled_at"],
        "source": {"path": Path(source).name, "name": model.name, "sha256": _sha256(source)},
        "versions": _versions(),
    }


def attach_metadata(proto, metadata):
    from .graph import random_nodes, seed_of

    seeds = {n.name: seed_of(n) for n in random_nodes(proto.graph)}
    for layer in metadata["stochastic_layers"]:
        layer["seed"] = seeds[layer["random_node"]]
    del proto.metadata_props[:]
    entry = proto.metadata_props.add()
    entry.key, entry.value = "mcdrop", json.dumps(metadata)
    proto.producer_name, proto.producer_version = "mcdrop", VERSION


def write_atomically(data: bytes, output):
    from runtime.files import atomic_writer

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
    offset=0.0,
    seed=None,
    quantize=None,
    calibration=None,
    progress=lambda msg: None,
) -> ExportReport:
    from .heads import resolve_head
    from .trace import layer_graph
    from .validate import validate_export

    if passes < 1:
        raise ExportError(f"--passes must be >= 1, got {passes}")
    if Path(output).is_dir():
        raise ExportError(f"{output}: is a folder; give a file name")
    if quantize not in (None, "none", "int8"):
        raise ExportError(f"--quantize {quantize!r}: choose none or int8")
    if calibration is not None and quantize != "int8":
        raise ExportError("--calibration is for --quantize int8 only")
    started = time.perf_counter()
    progress(f"loading {source}")
    model = load_keras_model(source)
    layer_graph(model)  # a subclassed model has no outputs to read the head from
    head = resolve_head(model, head)
    units = model.outputs[0].shape[-1]
    label_names = read_labels(labels, head, units)
    preprocessing = image_preprocessing(model, image_size, color_mode, scale, offset)

    progress(f"tracing and converting (head: {head})")
    proto, _, calls, extras = build_graph(model, head, passes, mc_layers, allow_deterministic, seed, opset)
    metadata = build_metadata(model, source, head, label_names, passes, calls, extras, preprocessing)
    attach_metadata(proto, metadata)

    checks = []
    if validate:
        progress("validating")
        checks = validate_export(proto, model, metadata, progress=progress)
    drift = None
    if quantize == "int8":
        proto, drift, more_checks = _quantize(proto, model, metadata, calibration, validate, progress)
        checks += more_checks
    data = proto.SerializeToString()
    write_atomically(data, output)
    return ExportReport(
        output=str(output),
        head=head,
        stochastic_layers=metadata["stochastic_layers"],
        default_passes=passes,
        repeated_from=metadata["repeated_from"],
        checks=checks,
        seconds=time.perf_counter() - started,
        size_bytes=len(data),
        quantization=metadata.get("quantization"),
        drift=drift,
    )


def _quantize(proto, model, metadata, calibration, validate, progress):
    """int8 copy of the validated float graph; its structure is validated, its drift measured."""
    from runtime.validate import Checklist, sample_inputs

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
    return quantized, quantized_drift(proto, quantized, x), checks.passed


def load_calibration(path, shape):
    """Preprocessed model inputs, batch first, from a .npy file (or an .npz holding one array)."""
    import numpy as np

    try:
        data = np.load(path)
        if hasattr(data, "files"):
            if len(data.files) != 1:
                raise ExportError(f"{path}: an .npz for --calibration must hold one array, it holds {data.files}")
            data = data[data.files[0]]
    except (OSError, ValueError) as err:
        raise ExportError(f"{path}: cannot read calibration data ({first_line(err)})") from err
    if data.dtype.kind not in "fiu":
        raise ExportError(f"{path}: calibration data must be numbers, not {data.dtype}")
    expected = tuple(shape[1:])
    if data.ndim != len(shape) or any(e is not None and e != d for e, d in zip(expected, data.shape[1:])):
        raise ExportError(f"{path}: calibration data has shape {data.shape}; the model takes [batch, {', '.join(map(str, expected))}]")
    return data.astype(np.float32)
