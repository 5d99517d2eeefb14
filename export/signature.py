"""What the exported graph takes and gives: one named input per model input, and per model output
its own head, labels and measures (docs/FORMAT.md, "Several inputs and outputs").

A model with one input keeps the graph input `input`, and one with one output keeps the plain
output names (`samples`, `mean`, ...), so single-input single-output files are as they always were.
With several, the graph inputs take the model's input names and each output's tensors are named
`<output name>/samples`, `<output name>/mean`, ...
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Dict, List, Optional

from ..runtime.errors import ExportError

SINGLE_INPUT = "input"
RESERVED = ("passes", "stochastic")
# Graph input names must also be TensorFlow op names, and stay readable in every binding.
NAME = re.compile(r"[A-Za-z][A-Za-z0-9_.-]{0,63}")


@dataclass(frozen=True)
class ModelOutput:
    name: str  # the model's name for it (a dict key, else the layer that produces it)
    prefix: str  # "" for a single output, else "<name>/"
    head: str
    shape: list
    labels: Optional[list] = None


def _names(struct, tensors, what) -> List[str]:
    if isinstance(struct, dict):
        return sorted(struct)  # Keras flattens a dict of tensors in sorted key order
    if what == "input":
        return [t.name for t in tensors]
    return [t._keras_history.operation.name for t in tensors]


def input_names(model) -> List[str]:
    """The graph's input names, in the model's input order."""
    if len(model.inputs) == 1:
        return [SINGLE_INPUT]
    names = _names(getattr(model, "_inputs_struct", None), model.inputs, "input")
    _check_names(names, "input", "keras.Input(shape, name=...)")
    return names


def output_names(model) -> List[str]:
    names = _names(getattr(model, "_outputs_struct", None), model.outputs, "output")
    if len(names) > 1:
        _check_names(names, "output", "the name= of the layer that produces it")
    return names


def output_prefixes(model) -> List[str]:
    names = output_names(model)
    return [""] if len(names) == 1 else [f"{name}/" for name in names]


def _check_names(names, what, fix):
    for name in names:
        if not NAME.fullmatch(name) or name in RESERVED:
            raise ExportError(f"model {what} name {name!r} cannot name a graph {what} (letters, digits, _ . -, "
                              f"starting with a letter, not {' or '.join(RESERVED)}); set it with {fix}")
    if len(set(names)) != len(names):
        raise ExportError(f"the model's {what}s share a name ({', '.join(names)}); give each its own with {fix}")


def input_specs(model) -> list:
    """One float tf.TensorSpec per model input, batch open, named as the graph input."""
    import tensorflow as tf

    return [tf.TensorSpec([None, *tensor.shape[1:]], tf.float32, name=name)
            for name, tensor in zip(input_names(model), model.inputs)]


def as_model_inputs(model, xs):
    """A flat list of input tensors, in model.inputs order, as the model's own call takes them."""
    struct = getattr(model, "_inputs_struct", None)
    if isinstance(struct, dict):
        return dict(zip(sorted(struct), xs))
    return list(xs) if len(xs) > 1 else xs[0]


def per_output(value, names: List[str], what: str, default=None) -> Dict[str, object]:
    """--head / --labels for each output: one value for every output, a dict by output name, or
    the text "NAME=VALUE,NAME=VALUE" (outputs left out get `default`)."""
    if isinstance(value, str) and "=" in value:
        pairs = [item.partition("=") for item in value.split(",") if item.strip()]
        if any(not sep or not key.strip() for key, sep, _ in pairs):
            raise ExportError(f"--{what} {value!r}: write NAME=VALUE,NAME=VALUE for a model with several outputs")
        value = {key.strip(): item.strip() for key, _, item in pairs}
    if isinstance(value, dict):
        unknown = sorted(set(value) - set(names))
        if unknown:
            raise ExportError(f"--{what}: the model has no output named {', '.join(unknown)} "
                              f"(its outputs: {', '.join(names)})")
        return {name: value.get(name, default) for name in names}
    if value is not None and value != default and len(names) > 1 and what == "labels":
        raise ExportError(f"--labels: the model has {len(names)} outputs ({', '.join(names)}); "
                          "give NAME=FILE for each output that has labels")
    return {name: value for name in names}
