"""`cli.py export MODEL --format tflite -o OUT.tflite`: a portable file in TensorFlow Lite's format.

The file has the portable ONNX file's semantics, inputs and metadata (docs/FORMAT.md: Portable
profile, LiteRT), so runtime/portable_masks.py's keep masks feed both and give the same samples:
1. the model is exported and converted to a portable ONNX file (T fixed, masks fed or baked) in a
   temporary folder: its metadata (mask layout, rates, T, baked seed) is the .tflite file's;
2. the Keras model is traced with export/graph.py's mc_function, the same walk as the ONNX graph
   (deterministic layers once, passes batched from the first noise layer), with each layer's
   random tensor its slice of the keep masks: `keep >= rate` is `keep` for keep in {0, 1} and
   rate in (0, 1), and `stochastic` = false makes every rate 0, so every unit is kept, unscaled;
3. TensorFlow's converter writes it with TFLite builtin ops only (no Flex ops: LiteRT runs it
   alone), and mcdrop's metadata JSON goes into the flatbuffer's `metadata` list (entry "mcdrop");
4. the file is loaded by MCSession on LiteRT and its samples checked against the portable ONNX
   file's for one mask seed before it is written (also under --no-validate, which skips the
   checks against Keras: this one takes milliseconds, and a file that disagrees is never written).
Only Bernoulli noise layers whose masks are a `draw >= rate` test convert: Dropout,
SpatialDropout1D/2D/3D, AlphaDropout (and TimeDistributed ones); the others are refused in one line.
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional

import numpy as np

from ..runtime.errors import ExportError, InputError, ModelFileError, ValidationError, first_line
from ..runtime.format.rules import METADATA_KEY

# The noise kinds whose formula tests `draw >= rate` (export/noise.py), so a keep mask can stand
# for the draw; StochasticDepth (floor(keep + u)), Gaussian noise and recurrent or attention
# dropout are not converted yet.
KINDS = ("Dropout", "SpatialDropout1D", "SpatialDropout2D", "SpatialDropout3D", "AlphaDropout")
# issue 25's parity with the portable ONNX file for the same masks (measured on the shipped
# CNN and MLP: 2e-6 at most, XNNPACK's float kernels against onnxruntime's).
DETERMINISTIC_TOLERANCE = 1e-5
MC_TOLERANCE = 1e-4


@dataclass
class LiteRTReport:
    path: str
    passes: int
    baked_seed: Optional[int]
    mask_bytes_per_call: int
    size: int
    ops: dict
    seconds: float
    checks: List[str] = field(default_factory=list)

    def lines(self) -> List[str]:
        masks = (f"baked (seed {self.baked_seed}), 0 bytes per call" if self.baked_seed is not None
                 else f"uint8 keep masks, {self.mask_bytes_per_call:,} bytes per call")
        ops = ", ".join(f"{name} {count}" for name, count in sorted(self.ops.items()))
        return [f"wrote            {self.path} ({self.size / 2**20:.1f} MiB, TensorFlow Lite, in {self.seconds:.1f} s)",
                f"shapes           batch any, passes {self.passes}",
                f"masks            {masks}",
                f"ops              {ops}"] + [f"check            ok  {check}" for check in self.checks]


def export_litert(source, output, *, passes: int = 50, bake_masks: Optional[int] = None, validate: bool = True,
                  progress=lambda message: None, **options) -> LiteRTReport:
    """Write the .tflite portable file of the Keras model `source` to `output` (atomically, after
    LiteRT loaded it and gave the portable ONNX file's samples; `validate`: export_model's and
    convert_file's checks). `options`:
    export_model's (head, labels, mc_layers, preprocessing, trust_model_code, ...)."""
    from ..convert import convert_file
    from ..runtime.safe_files import atomic_writer, check_writable_target
    from ..runtime.litert_engine import _interpreter_class
    from ..runtime.format.onnx_file import read_model

    from . import export_model, load_keras_model

    started = time.perf_counter()
    output = Path(output)
    if output.suffix.lower() != ".tflite":
        raise InputError(f"-o {output}: a TensorFlow Lite file must end in .tflite")
    check_writable_target(output)
    _interpreter_class()  # LiteRT loads and checks the file before it is written: refuse at once without it
    with tempfile.TemporaryDirectory(prefix="mcdrop-litert-") as folder:
        standard, portable = Path(folder) / "standard.onnx", Path(folder) / "portable.onnx"
        report = export_model(source, standard, passes=passes, validate=validate, progress=progress, **options)
        progress("converting to the portable profile")
        convert_file(standard, portable, passes=passes, bake_masks=bake_masks, validate=validate)
        meta = json.loads(read_model(portable.read_bytes(), str(portable)).metadata[METADATA_KEY])
        _check_kinds(meta)
        progress("tracing for TensorFlow Lite")
        registered = ()
        if options.get("custom_objects") is not None:
            from .custom_objects import import_custom_objects

            registered = import_custom_objects(options["custom_objects"])
        model = load_keras_model(source, options.get("trust_model_code", False), registered=registered)
        data, ops = tflite_bytes(model, meta, bake_masks)
        written = Path(folder) / "model.tflite"
        written.write_bytes(data)
        progress("checking LiteRT against the portable ONNX file")
        checks = [_check_loads(written, meta), _check_parity(written, portable, meta)]
        with atomic_writer(output) as f:
            f.write(data)
    baked = meta["portable"]["baked"]
    return LiteRTReport(str(output), passes, bake_masks, 0 if baked else passes * meta["masks"]["floats_per_pass"],
                        len(data), ops, time.perf_counter() - started, [f"exported: {line.strip()}" for line in
                                                                         report.lines()[1:2]] + checks)


def _check_kinds(meta: dict) -> None:
    for layer in meta["stochastic_layers"]:
        kind = layer["kind"].removeprefix("TimeDistributed ")
        if kind not in KINDS:
            raise ExportError(f"--format tflite takes {', '.join(KINDS)} layers so far; layer '{layer['name']}' is "
                              f"{layer['kind']} (export to ONNX: --portable)")


def tflite_bytes(model, meta: dict, bake_masks: Optional[int] = None):
    """(the .tflite bytes, {builtin op: count}) of `model` with the portable metadata `meta`."""
    import tensorflow as tf

    from ..runtime.format.mask_sets import layout_from_metadata
    from ..runtime.portable_masks import keep_masks
    from . import untraced_errors
    from .graph import find_noise_calls, mc_function
    from .signature import input_specs

    passes, floats = meta["portable"]["passes"], meta["masks"]["floats_per_pass"]
    selected = set(meta["mc_layers"]) if meta.get("mc_layers") else None
    heads = [output["head"] for output in meta["outputs"]]
    with untraced_errors():
        calls = find_noise_calls(model, selected)
        function, _, stats = mc_function(model, heads, calls, selected)
        function.get_concrete_function()  # traced once: stats now hold its mask layout
    placed = [{"offset": layer["mask_offset"], "shape": layer["mask_shape"]} for layer in meta["stochastic_layers"]]
    if stats["mask_layout"] != placed:
        raise ExportError("the traced model's mask layout differs from the exported file's; export it again")
    names = sorted(f"{output['prefix']}samples" for output in meta["outputs"])
    baked = meta["portable"]["baked"]
    controls = [tf.TensorSpec([], tf.bool, name="stochastic")]
    if baked is None:
        controls.append(tf.TensorSpec([passes, floats], tf.uint8, name="masks"))
    else:
        layers = meta["stochastic_layers"]
        stored = keep_masks(layout_from_metadata(meta, layers), [layer["rate"] for layer in layers],
                            baked["mask_seed"], 0, passes)
    specs = input_specs(model)

    @tf.function(input_signature=specs + controls)
    def portable(*args):
        xs, stochastic = list(args[:len(specs)]), args[len(specs)]
        masks = args[len(specs) + 1] if baked is None else tf.constant(stored)
        # The keep masks stand for the uniform draws (see the module's docstring); the random
        # nodes' part of each random tensor is empty, as in shared mode.
        empty = [tf.zeros([0, *entry["shape"]], tf.float32) for entry in placed]
        out = function(*xs, tf.constant(passes, tf.int64), stochastic, tf.cast(masks, tf.float32), *empty)
        return {name: out[name] for name in names}

    with untraced_errors():
        concrete = portable.get_concrete_function()
    converter = tf.lite.TFLiteConverter.from_concrete_functions([concrete])
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    try:
        converted = converter.convert()
    except Exception as err:  # noqa: BLE001 (the converter raises ConverterError and others)
        raise ExportError(f"TensorFlow Lite cannot convert the model with builtin ops alone ({first_line(err)})") from None
    return _with_metadata(converted, meta, names)


def _with_metadata(data: bytes, meta: dict, names: List[str]):
    """The flatbuffer with its outputs named `names` (in the function's output order: the sorted
    keys) and mcdrop's metadata JSON as Model.metadata entry "mcdrop" (a buffer of its own)."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    from ..runtime.format.metadata_writer import metadata_text
    from ..runtime.litert_engine import IDENTIFIER, METADATA_NAME

    model = schema.ModelT.InitFromPackedBuf(bytearray(data), 0)
    graph = model.subgraphs[0]
    if len(graph.outputs) != len(names):
        raise ExportError(f"TensorFlow Lite wrote {len(graph.outputs)} outputs for {len(names)} samples outputs")
    for index, name in zip(graph.outputs, names):
        graph.tensors[index].name = name.encode()
    ops = {}
    for operator in graph.operators:
        code = model.operatorCodes[operator.opcodeIndex]
        op = max(code.builtinCode, code.deprecatedBuiltinCode)
        name = next((key for key, value in vars(schema.BuiltinOperator).items() if value == op), str(op))
        ops[name] = ops.get(name, 0) + 1
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(metadata_text(meta).encode(), dtype=np.uint8)
    model.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name, entry.buffer = METADATA_NAME.encode(), len(model.buffers) - 1
    model.metadata = (model.metadata or []) + [entry]
    builder = flatbuffers.Builder(len(data) + 2**16)
    builder.Finish(model.Pack(builder), file_identifier=IDENTIFIER)
    return bytes(builder.Output()), ops


def _check_loads(path: Path, meta: dict) -> str:
    from ..runtime.session import MCSession

    try:
        MCSession(path, seed=0, threads=1)
    except ModelFileError as err:
        raise ValidationError(f"validation failed (runtime contract): {err}") from None
    return "loads in MCSession on LiteRT"


def _check_parity(path: Path, portable: Path, meta: dict) -> str:
    """Samples of the .tflite file against the portable ONNX file's for one mask seed: the
    deterministic pass to DETERMINISTIC_TOLERANCE, the MC mean and variance to MC_TOLERANCE."""
    from ..runtime.session import MCSession
    from ..runtime.randomness_checks import sample_inputs

    lite, reference = MCSession(path, seed=0, threads=1), MCSession(portable, seed=0, threads=1)
    info = reference.info
    x = {i.name: sample_inputs(i.shape, meta.get("preprocessing"), count=3, seed=n)
         for n, i in enumerate(info.model_inputs)}
    x = x if len(x) > 1 else next(iter(x.values()))
    gaps = {}
    for dropout in (False, True):
        want, got = reference.predict(x, dropout=dropout), lite.predict(x, dropout=dropout)
        pairs = list(zip(want.values(), got.values())) if isinstance(want, dict) else [(want, got)]
        for a, b in pairs:
            if dropout:
                gaps["mean"] = max(gaps.get("mean", 0.0), float(np.max(np.abs(a.samples.mean(0) - b.samples.mean(0)))))
                gaps["variance"] = max(gaps.get("variance", 0.0),
                                       float(np.max(np.abs(a.samples.var(0) - b.samples.var(0)))))
            else:
                gaps["deterministic"] = max(gaps.get("deterministic", 0.0), float(np.max(np.abs(a.samples - b.samples))))
    limits = {"deterministic": DETERMINISTIC_TOLERANCE, "mean": MC_TOLERANCE, "variance": MC_TOLERANCE}
    over = [name for name, gap in gaps.items() if not gap <= limits[name]]
    if over:
        raise ValidationError(f"validation failed: LiteRT's {over[0]} differs from the portable ONNX file's by "
                              f"{gaps[over[0]]:.1e} (over {limits[over[0]]:g}); file not written")
    return ("same samples as the portable ONNX file for one mask seed: " +
            ", ".join(f"{name} {gap:.1e}" for name, gap in gaps.items()))
