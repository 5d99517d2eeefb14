"""What an mcdrop ONNX file says about itself: the "mcdrop" metadata JSON (docs/FORMAT.md) plus the
graph's input and output names and shapes, read from an onnxruntime session."""

import json
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

from runtime.errors import ModelFileError

METADATA_KEY = "mcdrop"
FORMAT_VERSION = 1
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
class Preprocessing:
    """Image -> model input: resize to height x width, then x = pixel * scale + offset."""

    height: int
    width: int
    color_mode: str  # "grayscale" or "rgb"
    scale: float
    offset: float
    background: float = 0.0  # 0-255 grey that transparent pixels are composited on


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

    @classmethod
    def from_session(cls, session, path: str) -> "ModelInfo":
        text = session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
        if text is None:
            raise ModelFileError(f"{path}: not an mcdrop export (no '{METADATA_KEY}' metadata); "
                                 "export it with `python cli.py export`")
        try:
            meta = json.loads(text)
            if meta.get("format") != FORMAT_VERSION:
                raise ValueError(f"format {meta.get('format')!r}, this runtime reads {FORMAT_VERSION}")
            pre = meta.get("preprocessing")
            return cls(
                path=path,
                head=str(meta["head"]),
                labels=None if meta.get("labels") is None else [str(x) for x in meta["labels"]],
                default_passes=int(meta["default_passes"]),
                input_shape=tuple(meta["input_shape"]),
                output_shape=tuple(meta["output_shape"]),
                preprocessing=None if pre is None else Preprocessing(
                    int(pre["height"]), int(pre["width"]), str(pre["color_mode"]),
                    float(pre["scale"]), float(pre["offset"])),
                stochastic_layers=tuple(_layer(layer) for layer in meta["stochastic_layers"]),
                activation_floats_per_sample=int(meta["activation_floats_per_sample"]),
                once_floats_per_input=int(meta.get("once_floats_per_input", 0)),
                inputs={arg.name: _shape(arg.shape) for arg in session.get_inputs()},
                outputs={arg.name: _shape(arg.shape) for arg in session.get_outputs()},
                metadata=meta,
            )
        except (ValueError, KeyError, TypeError) as err:
            raise ModelFileError(f"{path}: broken '{METADATA_KEY}' metadata ({err!r}); "
                                 "export the model again") from None


def _layer(entry: dict) -> StochasticLayer:
    rate = entry.get("rate")
    return StochasticLayer(
        name=str(entry["name"]), kind=str(entry["kind"]), rate=None if rate is None else float(rate),
        noise_shape=entry.get("noise_shape"), distribution=str(entry.get("distribution")),
        random_node=str(entry["random_node"]), seed=float(entry["seed"]))


def _shape(dims) -> Shape:
    # onnxruntime gives a symbolic dimension as its name (str) or None; keep ints only.
    return tuple(d if isinstance(d, int) else None for d in dims)
