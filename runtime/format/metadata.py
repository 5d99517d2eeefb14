"""What an mcdrop ONNX file says about itself: the "mcdrop" metadata JSON (docs/FORMAT.md) plus the
graph's input and output names and shapes, read from an onnxruntime session.

The file may come from anyone, so the JSON is read defensively: bytes that are not UTF-8, JSON
nested too deep, fields of the wrong type or out of range, and a graph whose inputs and outputs
differ from the contract are each one ModelFileError, raised before any run.
"""

from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

from ..errors import ModelFileError
from ..limits import DEFAULT, Limits
from .mask_sets import MASKS, MaskLayout
from .rules import (CONTROL_TYPES, FLOAT, FORMAT_VERSION, MASKS_FROM_FORMAT, METADATA_KEY, PORTABLE_CONTROL_TYPES, SAMPLES,
                    Shape)

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
    # The portable profile's {"batch", "passes", "masks", "baked"}; None: a standard file.
    portable: Optional[dict] = None

    @property
    def control_inputs(self) -> List[str]:
        if self.portable is not None:
            return ["stochastic"] + ([] if self.portable["baked"] is not None else [MASKS])
        return [name for name in CONTROL_TYPES if name != MASKS or self.format >= MASKS_FROM_FORMAT]

    @property
    def control_types(self) -> Dict[str, str]:
        types = PORTABLE_CONTROL_TYPES if self.portable is not None else CONTROL_TYPES
        return {name: types[name] for name in self.control_inputs}

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
        from .metadata_fields import parse_metadata, read_fields  # they build this module's classes

        meta = parse_metadata(text, path, limits)
        inputs = {arg.name: _shape(arg.shape) for arg in session.get_inputs() if arg.name not in CONTROL_TYPES}
        outputs = {arg.name: _shape(arg.shape) for arg in session.get_outputs()}
        info = cls(path=path, inputs=inputs, outputs=outputs, metadata=meta, **read_fields(meta, path, limits))
        check_contract(session, info)
        return info


def check_contract(session, info: ModelInfo) -> None:
    """The graph's inputs and outputs are those of docs/FORMAT.md and match the metadata, so that
    no run fails on a shape or name the file got wrong."""
    path = info.path
    overridable = {arg.name: arg for arg in getattr(session, "get_overridable_initializers", lambda: [])()}
    given = {arg.name: arg for arg in session.get_inputs()}
    controls = info.control_types
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


def _compatible(graph: Shape, meta: Shape) -> bool:
    """Same rank, and equal wherever both give a size (onnxruntime may know a size the metadata
    leaves open, or the other way round)."""
    return len(graph) == len(meta) and all(g is None or m is None or g == m for g, m in zip(graph, meta))


def _shown(shape: Shape) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


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
