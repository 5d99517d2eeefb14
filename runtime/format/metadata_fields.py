"""The "mcdrop" metadata JSON read field by field (docs/FORMAT.md): each field's type and range
checked, the values put in runtime/format/metadata.py's classes. A field that is wrong is one
`_Bad`, which read_fields turns into a ModelFileError naming the file.
"""

import json
import math
from typing import Any, List, Optional, Tuple

from ..checks import is_int, is_number
from ..errors import ModelFileError
from ..limits import DEFAULT, Limits
from .mask_sets import MaskLayout, layout_from_metadata
from .metadata import ModelInput, ModelOutput, Preprocessing, StochasticLayer, _shown
from .rules import (CHANNEL_ORDERS, COLOR_CHANNELS, CONTROL_TYPES, HEADS, INPUT, MASKS_FROM_FORMAT, MAX_TENSORS, PORTABLE_MASKS,
                    METADATA_KEY, PIPELINE_NAME, READABLE_FORMATS, TENSOR_NAME, Shape, labels_problem, output_prefixes)

# Deep JSON ends in RecursionError inside json; no real metadata nests beyond a few levels.
MAX_JSON_DEPTH = 16


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


def read_fields(meta: dict, path: str, limits: Limits = DEFAULT) -> dict:
    """ModelInfo's fields read from the metadata (all but path, inputs, outputs and metadata), each
    checked; a ModelFileError naming `path` for the first that is wrong."""
    try:
        return _fields(meta, limits)
    except _Bad as err:
        raise ModelFileError(f"{path}: broken '{METADATA_KEY}' metadata ({err}); export the model again") from None


def _fields(meta: dict, limits: Limits) -> dict:
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
    return dict(
        head=head, labels=labels, default_passes=default_passes,
        input_shape=input_shape, output_shape=output_shape,
        preprocessing=_preprocessing(meta.get("preprocessing"), input_shape, limits),
        stochastic_layers=tuple(_layer(entry) for entry in layers),
        activation_floats_per_sample=_integer(meta, "activation_floats_per_sample", 0),
        once_floats_per_input=_integer(meta, "once_floats_per_input", 0, default=0),
        model_inputs=model_inputs, model_outputs=model_outputs,
        format=meta["format"], mask_layout=mask_layout,
        portable=_portable(meta.get("portable"), mask_layout, layers, default_passes))


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
        if prefix != output_prefixes([name] * len(entries))[0]:
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
    from ..uncertain_rule import Rule
    from ..errors import InputError

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
        _conformal(conformal, head, shape)
    return value


def _conformal(conformal: Any, head: str, shape: Shape) -> None:
    """A conformal entry the runtime can build sets from (runtime/conformal_sets.py)."""
    from ..conformal_sets import methods_for

    method = conformal.get("method", "lac") if isinstance(conformal, dict) else None
    fits = methods_for(head)
    if method not in fits:
        raise _Bad(f"calibration conformal is an object whose method is one of {', '.join(fits)} for {head} heads")
    if method in ("lac", "aps", "raps"):
        key = "quantile" if method == "lac" else "score_quantile"
        quantile, top = _number(conformal, key), 1 if method == "lac" else math.inf
        if not 0 <= quantile <= top:
            raise _Bad(f"calibration conformal {key} must lie in [0, {top}], got {quantile:g}")
        if method == "raps" and not (is_number(conformal.get("penalty")) and conformal["penalty"] >= 0
                                     and isinstance(conformal.get("k_reg"), int)):
            raise _Bad("calibration conformal raps needs a penalty >= 0 and an integer k_reg")
        return
    key = {"mondrian": "class_quantiles", "normalized": "unit_quantiles"}.get(method, "label_quantiles")
    values, units = conformal.get(key), shape[-1] if shape else None
    top = math.inf if method == "normalized" else 1
    if not isinstance(values, list) or (units is not None and method != "normalized" and len(values) != units) \
            or not all(is_number(q) and 0 <= q <= top for q in values):
        raise _Bad(f"calibration conformal {key} must be one number in [0, {top}] per unit")


def _entries(value: Any, key: str) -> list:
    if not isinstance(value, list) or not 1 <= len(value) <= MAX_TENSORS or not all(isinstance(e, dict) for e in value):
        raise _Bad(f"{key} must be a list of 1 to {MAX_TENSORS} objects")
    return value


def _tensor_name(entry: dict, what: str) -> str:
    name = _string(entry, "name")
    if not TENSOR_NAME.fullmatch(name):
        raise _Bad(f"{what} name {_short(name)} is not a plain name (letters, digits, _.-)")
    return name

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
    problem = labels_problem(len(labels), head, output_shape[-1])
    if problem:
        raise _Bad(problem)
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


def _portable(value: Any, mask_layout: Optional[MaskLayout], layers: list, default_passes: int) -> Optional[dict]:
    """The portable profile's fields, checked (docs/FORMAT.md: Portable profile)."""
    if value is None:
        return None
    if not isinstance(value, dict) or mask_layout is None:
        raise _Bad("portable must be an object, in a file with a mask layout")
    passes = _integer(value, "passes", 1)
    batch = value.get("batch")
    if batch is not None:
        _integer(value, "batch", 1)
    if value.get("masks") not in PORTABLE_MASKS:
        raise _Bad(f"portable masks {_short(value.get('masks'))} is not one of {', '.join(PORTABLE_MASKS)}")
    if passes != default_passes:
        raise _Bad("a portable file's default_passes must be its passes")
    if any(not is_number(layer.get("rate"))
           or not 0 < layer["rate"] < 1 or layer.get("distribution") != "uniform" for layer in layers):
        raise _Bad("a portable file's stochastic layers are Bernoulli: uniform draws, rates in (0, 1)")
    baked = value.get("baked")
    if baked is not None:
        if not isinstance(baked, dict):
            raise _Bad("portable baked must be an object or null")
        seed = baked.get("mask_seed")
        if not is_int(seed) or not 0 <= seed < 2**64:
            raise _Bad("portable baked mask_seed must be an integer from 0 to 2**64 - 1")
    return {"batch": batch, "passes": passes, "masks": value["masks"], "baked": baked}
