"""What an mcdrop ONNX file says about itself: the "mcdrop" metadata JSON (docs/FORMAT.md) plus the
graph's input and output names and shapes, read from an onnxruntime session.

The file may come from anyone, so the JSON is read defensively: bytes that are not UTF-8, JSON
nested too deep, fields of the wrong type or out of range, and a graph whose inputs and outputs
differ from the contract are each one ModelFileError, raised before any run.
"""

import json
import math
import re
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

from .checks import is_int, is_number
from .errors import ModelFileError
from .limits import DEFAULT, Limits
from .masks import MASKS, MaskLayout, layout_from_metadata

METADATA_KEY = "mcdrop"
# 2: `passes` and `stochastic` are plain required inputs (1 gave them initializers as defaults,
# which onnxruntime-node and -web hide, and which warn at every session creation).
FORMAT_VERSION = 3
READABLE_FORMATS = (1, 2, 3)
# Format 3 added the `masks` input (docs/FORMAT.md: Mask sets).
MASKS_FROM_FORMAT = 3
HEADS = ("softmax", "logits", "binary", "multilabel", "regression")
COLOR_CHANNELS = {"grayscale": 1, "rgb": 3}
CHANNEL_ORDERS = ("rgb", "bgr")
# A pipeline's name is shown to users: a short plain word ("tf", "torch", "caffe", "custom", ...).
PIPELINE_NAME = re.compile(r"[A-Za-z0-9_.-]{1,32}")
# The graph's contract (docs/FORMAT.md): input name -> onnxruntime type; samples must be an output
# (<output name>/samples for each output of a file with several).
INPUT = "input"
CONTROL_TYPES = {"passes": "tensor(int64)", "stochastic": "tensor(bool)", MASKS: "tensor(float)"}
FLOAT = "tensor(float)"
SAMPLES = "samples"
# An input or output name of a file with several (export/signature.py writes them).
TENSOR_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_.-]{0,63}")
MAX_TENSORS = 64
# Deep JSON ends in RecursionError inside json; no real metadata nests beyond a few levels.
MAX_JSON_DEPTH = 16
# Shapes with None (or a name) for dimensions fixed only at run time, such as the batch.
Shape = Tuple[Optional[int], ...]


@dataclass(frozen=True)
class StochasticLayer:
    name: str
    kind: str
    rate: Optional[float]  # drop rate, or the noise's stddev for GaussianNoise
    noise_shape: Optional[List[Optional[int]]]
    distribution: str
    random_node: str
    seed: float


@dataclass(frozen=True)
class ModelInput:
    name: str  # the graph input's name: "input" for a one-input model
    shape: Shape


@dataclass(frozen=True)
class ModelOutput:
    name: str
    prefix: str  # of its graph outputs: "" for a one-output model, else "<name>/"
    head: str
    labels: Optional[List[str]]
    shape: Shape
    # What `cli.py calibrate` fitted (docs/FORMAT.md: Calibration); None: not calibrated.
    calibration: Optional[dict] = None


@dataclass(frozen=True)
class Preprocessing:
    """Image -> model input: resize to height x width, put the channels in channel_order, then
    x = (pixel * scale + offset - mean[c]) / std[c] for each channel c of the model's input.

    Files written before channel_order, mean, std and mode existed get the defaults, which leave
    x = pixel * scale + offset exactly as it was."""

    height: int
    width: int
    color_mode: str  # "grayscale" or "rgb"
    scale: float
    offset: float
    background: float = 0.0  # 0-255 grey that transparent pixels are composited on
    channel_order: str = "rgb"  # "bgr": the model takes blue first (Keras's caffe mode)
    mean: Tuple[float, ...] = (0.0,)  # 1 value for every channel, or one per channel (model order)
    std: Tuple[float, ...] = (1.0,)
    mode: Optional[str] = None  # the pipeline's name, for people ("tf", "torch", ...); None: not given

    @property
    def normalizes(self) -> bool:
        """Whether mean/std change anything (False for every file written before they existed)."""
        return any(m != 0 for m in self.mean) or any(s != 1 for s in self.std)


@dataclass(frozen=True)
class ModelInfo:
    path: str
    head: str
    labels: Optional[List[str]]
    default_passes: int
    input_shape: Shape  # batch first, batch is None
    output_shape: Shape
    preprocessing: Optional[Preprocessing]
    stochastic_layers: Tuple[StochasticLayer, ...]
    activation_floats_per_sample: int
    once_floats_per_input: int  # activations of the layers that run once per input (0 if unknown)
    inputs: Dict[str, Shape]  # graph input name -> shape
    outputs: Dict[str, Shape]
    metadata: dict  # the whole JSON, for fields the runtime does not use (source, versions, ...)
    # The model's inputs and outputs (the first of each is input_shape, head, labels, output_shape).
    model_inputs: Tuple[ModelInput, ...] = ()
    model_outputs: Tuple[ModelOutput, ...] = ()
    format: int = FORMAT_VERSION
    # Where each layer's values sit in a shared mask set; None: the file cannot take one.
    mask_layout: Optional[MaskLayout] = None

    @property
    def control_inputs(self) -> List[str]:
        return [name for name in CONTROL_TYPES if name != MASKS or self.format >= MASKS_FROM_FORMAT]

    @property
    def input_names(self) -> List[str]:
        return [i.name for i in self.model_inputs]

    def shape_problem(self, shape, name: Optional[str] = None) -> Optional[str]:
        """Why a batch of this shape cannot be fed to the model input `name` (default: the first)
        ("shape [...], the model expects [batch, ...]"), or None. Shared by MCSession and the input
        loader, which names the file."""
        wanted_shape = next((i.shape for i in self.model_inputs if i.name == name), self.input_shape)
        expected = tuple(wanted_shape[1:])
        wanted = "[batch, " + ", ".join("?" if d is None else str(d) for d in expected) + "]"
        if tuple(shape) == expected:
            return (f"shape {list(shape)}, one example without the batch axis; the model expects "
                    f"{wanted}: add one (x[None])")
        if len(shape) != len(expected) + 1 or any(d is not None and d != n for d, n in zip(expected, shape[1:])):
            return f"shape {list(shape)}, the model expects {wanted}"
        return None

    @classmethod
    def from_session(cls, session, path: str, text: Optional[bytes] = None,
                     limits: Limits = DEFAULT) -> "ModelInfo":
        """The file's metadata (`text`: the raw "mcdrop" entry; None: asked of the session) checked
        against the session's graph."""
        if text is None:
            try:
                found = session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
            except UnicodeDecodeError:
                raise ModelFileError(f"{path}: broken '{METADATA_KEY}' metadata (not UTF-8)") from None
            text = None if found is None else found.encode()
        if text is None:
            raise ModelFileError(f"{path}: not an mcdrop export (no '{METADATA_KEY}' metadata); "
                                 "export it with `python cli.py export`")
        meta = parse_metadata(text, path, limits)
        inputs = {arg.name: _shape(arg.shape) for arg in session.get_inputs() if arg.name not in CONTROL_TYPES}
        outputs = {arg.name: _shape(arg.shape) for arg in session.get_outputs()}
        try:
            info = cls._from_json(meta, path, inputs, outputs, limits)
        except _Bad as err:
            raise ModelFileError(f"{path}: broken '{METADATA_KEY}' metadata ({err}); export the model again") from None
        check_contract(session, info)
        return info

    @classmethod
    def _from_json(cls, meta: dict, path, inputs, outputs, limits: Limits) -> "ModelInfo":
        if meta.get("format") not in READABLE_FORMATS:
            raise _Bad(f"format {_short(meta.get('format'))}, this runtime reads "
                       + " and ".join(map(str, READABLE_FORMATS)))
        head = _choice(meta, "head", HEADS)
        input_shape = _shape_field(meta, "input_shape")
        output_shape = _shape_field(meta, "output_shape")
        labels = _labels(meta, head, output_shape)
        default_passes = _integer(meta, "default_passes", 1)
        if default_passes > limits.passes:
            raise _Bad(f"default_passes {default_passes:,} is over the passes limit ({limits.passes:,}); "
                       "raise it with --limit passes=N if you trust this file")
        layers = meta.get("stochastic_layers")
        if not isinstance(layers, list):
            raise _Bad("stochastic_layers must be a list")
        model_inputs = _model_inputs(meta, input_shape)
        model_outputs = _model_outputs(meta, head, labels, output_shape)
        if len(model_inputs) > 1 and meta.get("preprocessing") is not None:
            raise _Bad("preprocessing is for files with one input")
        try:
            mask_layout = layout_from_metadata(meta, layers) if meta["format"] >= MASKS_FROM_FORMAT else None
        except ValueError as err:
            raise _Bad(str(err)) from None
        return cls(
            path=path, head=head, labels=labels, default_passes=default_passes,
            input_shape=input_shape, output_shape=output_shape,
            preprocessing=_preprocessing(meta.get("preprocessing"), input_shape, limits),
            stochastic_layers=tuple(_layer(entry) for entry in layers),
            activation_floats_per_sample=_integer(meta, "activation_floats_per_sample", 0),
            once_floats_per_input=_integer(meta, "once_floats_per_input", 0, default=0),
            inputs=inputs, outputs=outputs, metadata=meta, model_inputs=model_inputs, model_outputs=model_outputs,
            format=meta["format"], mask_layout=mask_layout)


class _Bad(ValueError):
    """A metadata field is missing, of the wrong type or out of range."""


def parse_metadata(text: bytes, path: str, limits: Limits = DEFAULT) -> dict:
    """The metadata JSON object, or a ModelFileError saying what is wrong with it."""
    broken = f"{path}: broken '{METADATA_KEY}' metadata"
    if len(text) > limits.metadata_kb * 1024:
        raise ModelFileError(f"{broken} ({len(text) / 1024:.0f} KiB, over the metadata_kb limit "
                             f"of {limits.metadata_kb}; raise it with --limit metadata_kb=N if you trust this file)")
    try:
        decoded = text.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ModelFileError(f"{broken} (not UTF-8 at byte {err.start}); export the model again") from None
    if _nesting(decoded) > MAX_JSON_DEPTH:
        raise ModelFileError(f"{broken} (nested more than {MAX_JSON_DEPTH} levels deep)")
    try:
        meta = json.loads(decoded, parse_constant=_refuse_constant)
    except (ValueError, RecursionError) as err:
        raise ModelFileError(f"{broken} (not JSON: {str(err).splitlines()[0][:120]}); "
                             "export the model again") from None
    if not isinstance(meta, dict):
        raise ModelFileError(f"{broken} (a JSON {type(meta).__name__}, not an object); export the model again")
    return meta


def _refuse_constant(name):
    raise ValueError(f"{name} is not a number")


def _nesting(text: str) -> int:
    """Deepest nesting of [ and { outside strings, without recursion."""
    depth = deepest = 0
    in_string = escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth -= 1
    return deepest


def check_contract(session, info: ModelInfo) -> None:
    """The graph's inputs and outputs are those of docs/FORMAT.md and match the metadata, so that
    no run fails on a shape or name the file got wrong."""
    path = info.path
    overridable = {arg.name: arg for arg in getattr(session, "get_overridable_initializers", lambda: [])()}
    given = {arg.name: arg for arg in session.get_inputs()}
    controls = {name: CONTROL_TYPES[name] for name in info.control_inputs}
    for name, wanted in {**{i.name: FLOAT for i in info.model_inputs}, **controls}.items():
        arg = given.get(name) or overridable.get(name)
        if arg is None:
            raise ModelFileError(f"{path}: the graph has no '{name}' input; not an mcdrop export "
                                 "(docs/FORMAT.md)")
        if arg.type != wanted:
            raise ModelFileError(f"{path}: graph input '{name}' is {arg.type}, the contract says {wanted}")
    extra = sorted(set(given) - set(info.input_names) - set(controls))
    if extra:
        raise ModelFileError(f"{path}: the graph has inputs the contract does not know: {', '.join(extra)}")
    for model_input in info.model_inputs:
        if model_input.name not in given:
            raise ModelFileError(f"{path}: the graph's '{model_input.name}' input is fixed by an initializer")
        graph_shape = _shape(given[model_input.name].shape)
        if not _compatible(graph_shape, model_input.shape):
            raise ModelFileError(f"{path}: the graph's {model_input.name} shape {_shown(graph_shape)} differs "
                                 f"from the metadata's {_shown(model_input.shape)}")
    outputs = {arg.name: arg for arg in session.get_outputs()}
    for model_output in info.model_outputs:
        name = model_output.prefix + SAMPLES
        if name not in outputs:
            raise ModelFileError(f"{path}: the graph has no '{name}' output; not an mcdrop export")
        if outputs[name].type != FLOAT:
            raise ModelFileError(f"{path}: graph output '{name}' is {outputs[name].type}, not {FLOAT}")
        samples_shape = _shape(outputs[name].shape)
        if not _compatible(samples_shape, (None, *model_output.shape)):
            raise ModelFileError(f"{path}: the graph's {name} shape {_shown(samples_shape)} differs from "
                                 f"[passes, {_shown(model_output.shape)[1:]}")


def _model_inputs(meta: dict, input_shape: Shape) -> Tuple[ModelInput, ...]:
    """The "inputs" list; files from before several inputs have one, named "input"."""
    entries = meta.get("inputs")
    if entries is None:
        return (ModelInput(INPUT, input_shape),)
    found = tuple(ModelInput(_tensor_name(entry, "input"), _shape_field(entry, "shape"))
                  for entry in _entries(entries, "inputs"))
    if len(found) == 1 and found[0].name != INPUT:
        raise _Bad(f"a file with one input names it {INPUT!r}, not {_short(found[0].name)}")
    if len({i.name for i in found}) != len(found) or any(i.name in CONTROL_TYPES for i in found):
        raise _Bad("input names must be distinct, and neither passes nor stochastic")
    if found[0].shape != input_shape:
        raise _Bad("input_shape must be the first input's shape")
    return found


def _model_outputs(meta: dict, head: str, labels, output_shape: Shape) -> Tuple[ModelOutput, ...]:
    """The "outputs" list; files from before several outputs have one, with unprefixed names."""
    entries = meta.get("outputs")
    if entries is None:
        return (ModelOutput("output", "", head, labels, output_shape),)
    found = []
    entries = _entries(entries, "outputs")
    for entry in entries:
        name = _tensor_name(entry, "output")
        prefix = _string(entry, "prefix")
        if prefix != ("" if len(entries) == 1 else f"{name}/"):
            raise _Bad(f"output {name}'s prefix must be {'empty' if len(entries) == 1 else name + '/'}")
        entry_head = _choice(entry, "head", HEADS)
        shape = _shape_field(entry, "shape")
        found.append(ModelOutput(name, prefix, entry_head, _labels(entry, entry_head, shape), shape,
                                 _calibration(entry.get("calibration"), entry_head, shape)))
    if len({o.name for o in found}) != len(found):
        raise _Bad("output names must be distinct")
    first = found[0]
    if (first.head, first.labels, first.shape) != (head, labels, output_shape):
        raise _Bad("head, labels and output_shape must be the first output's")
    return tuple(found)


def _calibration(value: Any, head: str, shape: Shape) -> Optional[dict]:
    """The fields of an output's "calibration" that change what the runtime reports, checked; the
    rest (what it was fitted on, what it achieved) is for people and kept as it is."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise _Bad("calibration must be an object or null")
    from .uncertain_rule import Rule
    from .errors import InputError

    temperature = _number(value, "temperature", 1.0)
    if not temperature > 0:
        raise _Bad(f"calibration temperature must be > 0, got {temperature:g}")
    rule = value.get("uncertain_rule")
    if rule is not None:
        if not isinstance(rule, str) or len(rule) > 256:
            raise _Bad("calibration uncertain_rule must be a short string")
        try:
            Rule.parse(rule, head)
        except InputError as err:
            raise _Bad(f"calibration {err}") from None
    thresholds = value.get("thresholds")
    if thresholds is not None:
        units = shape[-1]
        if head not in ("binary", "multilabel") or not isinstance(thresholds, list) or (
                units is not None and len(thresholds) != units) or not all(
                is_number(t) and 0 <= t <= 1 for t in thresholds):
            raise _Bad("calibration thresholds must be one number in [0, 1] per unit of a binary or multilabel head")
    conformal = value.get("conformal")
    if conformal is not None:
        if head not in ("softmax", "logits") or not isinstance(conformal, dict):
            raise _Bad("calibration conformal is an object, for softmax and logits heads")
        quantile = _number(conformal, "quantile")
        if not 0 <= quantile <= 1:
            raise _Bad(f"calibration conformal quantile must lie in [0, 1], got {quantile:g}")
    return value


def _entries(value: Any, key: str) -> list:
    if not isinstance(value, list) or not 1 <= len(value) <= MAX_TENSORS or not all(isinstance(e, dict) for e in value):
        raise _Bad(f"{key} must be a list of 1 to {MAX_TENSORS} objects")
    return value


def _tensor_name(entry: dict, what: str) -> str:
    name = _string(entry, "name")
    if not TENSOR_NAME.fullmatch(name):
        raise _Bad(f"{what} name {_short(name)} is not a plain name (letters, digits, _.-)")
    return name


def _compatible(graph: Shape, meta: Shape) -> bool:
    """Same rank, and equal wherever both give a size (onnxruntime may know a size the metadata
    leaves open, or the other way round)."""
    return len(graph) == len(meta) and all(g is None or m is None or g == m for g, m in zip(graph, meta))


def _shown(shape: Shape) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _integer(meta: dict, key: str, minimum: int, default=None) -> int:
    value = meta.get(key, default)
    if not is_int(value) or value < minimum:
        raise _Bad(f"{key} must be an integer >= {minimum}, got {_short(value)}")
    return value


def _number(meta: dict, key: str, default=None) -> float:
    value = meta.get(key, default)
    if not is_number(value) or not math.isfinite(value):
        raise _Bad(f"{key} must be a finite number, got {_short(value)}")
    return float(value)


def _string(meta: dict, key: str, default=None) -> str:
    value = meta.get(key, default)
    if not isinstance(value, str):
        raise _Bad(f"{key} must be a string, got {_short(value)}")
    return value


def _choice(meta: dict, key: str, choices) -> str:
    value = meta.get(key)
    if value not in choices:
        raise _Bad(f"{key} {_short(value)} is not one of {', '.join(choices)}")
    return value


def _shape_field(meta: dict, key: str) -> Shape:
    value = meta.get(key)
    if not isinstance(value, list) or len(value) < 2 or len(value) > 8 or value[0] is not None or any(
            d is not None and (not is_int(d) or d < 1) for d in value[1:]):
        raise _Bad(f"{key} must be [null, sizes >= 1 or null, ...] (2 to 8 axes), got {_short(value)}")
    return tuple(value)


def _labels(meta: dict, head: str, output_shape: Shape) -> Optional[List[str]]:
    labels = meta.get("labels")
    if labels is None:
        return None
    if not isinstance(labels, list) or not all(isinstance(name, str) for name in labels):
        raise _Bad("labels must be a list of strings")
    wanted = 2 if head == "binary" else output_shape[-1]
    if head == "regression" or (wanted is not None and len(labels) != wanted):
        raise _Bad(f"{len(labels)} labels for a {head} head with {wanted} outputs")
    return labels


def _preprocessing(pre: Any, input_shape: Shape, limits: Limits) -> Optional[Preprocessing]:
    if pre is None:
        return None
    if not isinstance(pre, dict):
        raise _Bad("preprocessing must be an object or null")
    height, width = _integer(pre, "height", 1), _integer(pre, "width", 1)
    mode = _choice(pre, "color_mode", tuple(COLOR_CHANNELS))
    if height * width > limits.image_pixels:
        raise _Bad(f"image size {width}x{height} is over the image_pixels limit ({limits.image_pixels:,}); "
                   "raise it with --limit image_pixels=N if you trust this file")
    example = input_shape[1:]
    if None not in example and math.prod(example) != height * width * COLOR_CHANNELS[mode]:
        raise _Bad(f"a {width}x{height} {mode} image does not fill the input {_shown(input_shape)}")
    background = _number(pre, "background", 0.0)
    if not 0 <= background <= 255:
        raise _Bad(f"background must be a 0-255 grey, got {background:g}")
    channels = COLOR_CHANNELS[mode]
    return Preprocessing(height, width, mode, _number(pre, "scale"), _number(pre, "offset"), background,
                         channel_order=_channel_order(pre, mode), mean=_per_channel(pre, "mean", 0.0, channels),
                         std=_per_channel(pre, "std", 1.0, channels), mode=_pipeline_name(pre))


def _channel_order(pre: dict, color_mode: str) -> str:
    order = pre.get("channel_order", "rgb")
    if order not in CHANNEL_ORDERS:
        raise _Bad(f"channel_order {_short(order)} is not one of {', '.join(CHANNEL_ORDERS)}")
    if order != "rgb" and color_mode != "rgb":
        raise _Bad(f"channel_order {order} needs color_mode rgb, not {color_mode}")
    return order


def _per_channel(pre: dict, key: str, default: float, channels: int) -> Tuple[float, ...]:
    """mean or std: a list of 1 value (every channel) or one per channel; std must be > 0."""
    values = pre.get(key, [default])
    lengths = "1" if channels == 1 else f"1 or {channels}"
    if not isinstance(values, list) or len(values) not in (1, channels):
        raise _Bad(f"{key} must be a list of {lengths} numbers for {channels} channel(s), got {_short(values)}")
    numbers = tuple(_number({key: value}, key) for value in values)
    if key == "std" and min(numbers) <= 0:
        raise _Bad(f"std must be > 0, got {_short(values)}")
    return numbers


def _pipeline_name(pre: dict) -> Optional[str]:
    name = pre.get("mode")
    if name is not None and (not isinstance(name, str) or not PIPELINE_NAME.fullmatch(name)):
        raise _Bad(f"preprocessing mode must be a short name (letters, digits, _.-), got {_short(name)}")
    return name


def _layer(entry: Any) -> StochasticLayer:
    if not isinstance(entry, dict):
        raise _Bad("each stochastic layer must be an object")
    rate = entry.get("rate")
    noise_shape = entry.get("noise_shape")
    if noise_shape is not None and not isinstance(noise_shape, list):
        raise _Bad("noise_shape must be a list or null")
    return StochasticLayer(
        name=_string(entry, "name"), kind=_string(entry, "kind"),
        rate=None if rate is None else _number(entry, "rate"), noise_shape=noise_shape,
        distribution=str(entry.get("distribution")), random_node=_string(entry, "random_node"),
        seed=_number(entry, "seed"))


def describe_preprocessing(pre: Optional[dict], reason: str = "") -> str:
    """One line for people: size, channels, the formula with its numbers, and where it came from
    (`pre`: the metadata's preprocessing object; used by the export report and `cli.py info`)."""
    if pre is None:
        return f"none ({reason})" if reason else "none (arrays only)"
    channels = pre["color_mode"] + (" (fed as bgr)" if pre.get("channel_order") == "bgr" else "")
    mode = f"mode {pre['mode']}: " if pre.get("mode") else ""  # files from before modes have none
    line = f"{pre['width']}x{pre['height']} {channels}, {mode}{_formula(pre)}"
    return f"{line} ({reason})" if reason else line


def _formula(pre):
    scale, offset = pre["scale"], pre["offset"]
    term = "pixel" if scale == 1 else _scaled(scale)
    if offset:
        term += f" + {offset:g}" if offset > 0 else f" - {-offset:g}"
    mean, std = pre.get("mean", [0.0]), pre.get("std", [1.0])
    centred, spread = any(mean), any(s != 1 for s in std)
    term = f"{term} - mean" if centred else term
    term = f"({term}) / std" if spread else term
    shown = [f"{name} [{', '.join(f'{v:g}' for v in values)}]"
             for name, values, used in (("mean", mean, centred), ("std", std, spread)) if used]
    return ", ".join([f"x = {term}", *shown])


def _scaled(scale):
    """pixel / 127.5 reads better than pixel * 0.00784314; a scale of no round inverse stays a product."""
    inverse = 1 / scale
    if abs(inverse * 2 - round(inverse * 2)) < 1e-9 * abs(inverse):
        return f"pixel / {inverse:g}"
    return f"pixel * {scale:.6g}"


def _shape(dims) -> Shape:
    # onnxruntime gives a symbolic dimension as its name (str) or None; keep ints only.
    return tuple(d if isinstance(d, int) else None for d in dims)
