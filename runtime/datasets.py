"""Labelled and unlabelled data sets for `evaluate` and `calibrate`, read as untrusted input.

A labelled set is an .npz holding the inputs (`x`, or one array per input name for a model with
several) and the targets `y`, or a folder with one subfolder of images per class, the subfolders
named as the file's labels (or 0, 1, ... when it has none). An unlabelled set (`--ood`) is an
.npy / .npz batch, images, folders or globs: whatever `infer` reads.
"""

import hashlib
import os
from dataclasses import dataclass
from typing import Dict, Optional, Union

import numpy as np

from .decision import CATEGORICAL_HEADS, SIGMOID_HEADS
from .errors import InputError
from .inputs import IMAGE_EXTENSIONS, _check_array_for_model, _read_array, load_inputs, npz_names
from .limits import DEFAULT, Limits
from .metadata import ModelInfo, ModelOutput

Batch = Union[np.ndarray, Dict[str, np.ndarray]]


@dataclass
class LabelledSet:
    x: Batch
    y: np.ndarray  # categorical: int [n]; binary / multi-label: bool [n, units]; regression: float [n, ...]
    source: str
    sha256: str  # of the inputs and targets, so a calibration records what it was fitted on

    def __len__(self) -> int:
        return len(self.y)


def pick_output(info: ModelInfo, name: Optional[str]) -> ModelOutput:
    """The output to evaluate: the only one, or the one named (a file with several needs a name)."""
    outputs = info.model_outputs
    if name is None:
        if len(outputs) > 1:
            raise InputError(f"the model has {len(outputs)} outputs ({', '.join(o.name for o in outputs)}); "
                             "choose one with --output NAME")
        return outputs[0]
    for output in outputs:
        if output.name == name:
            return output
    raise InputError(f"--output {name!r}: the model's outputs are {', '.join(o.name for o in outputs)}")


def load_labelled(path, info: ModelInfo, output: ModelOutput, limits: Limits = DEFAULT) -> LabelledSet:
    """Inputs and targets from an .npz or a folder of class folders, checked against the model."""
    path = str(path)
    if os.path.isdir(path):
        x, y = _class_folders(path, info, output, limits)
    elif path.lower().endswith(".npz"):
        x, y = _labelled_npz(path, info, limits)
    else:
        raise InputError(f"{path}: a labelled set is an .npz with x and y, or a folder with one subfolder of "
                         "images per class")
    y = check_targets(y, output, batch_size(x), path)
    return LabelledSet(x, y, path, _digest(x, y))


def load_unlabelled(path, info: ModelInfo, limits: Limits = DEFAULT) -> Batch:
    """Inputs with no class (out-of-distribution): whatever `infer` reads; the npz's `y`, if any, is ignored."""
    path = str(path)
    if path.lower().endswith(".npz") and len(info.model_inputs) == 1 and "y" in npz_names(path):
        arrays = _read_array(path, limits, 0, names=["x"])
        _check_array_for_model(path, arrays["x"], info)
        return arrays["x"]
    return load_inputs([path], info, limits)[1]


def check_targets(y, output: ModelOutput, count: int, where: str) -> np.ndarray:
    """Targets as the head needs them, or an InputError saying what is wrong."""
    y = np.asarray(y)
    if len(y) != count:
        raise InputError(f"{where}: {len(y)} targets for {count} inputs")
    if y.dtype.kind not in "biuf" or (y.dtype.kind == "f" and not np.isfinite(y).all()):
        raise InputError(f"{where}: targets y must be finite numbers")
    units = output.shape[-1]
    if output.head in CATEGORICAL_HEADS:
        if y.ndim == 2 and y.shape[1] == units and np.isin(y, (0, 1)).all() and (y.sum(axis=1) == 1).all():
            y = y.argmax(axis=1)  # one-hot
        if y.ndim != 1 or (y != np.round(y)).any() or (len(y) and (y.min() < 0 or y.max() >= units)):
            raise InputError(f"{where}: targets y must be class indices 0..{units - 1} (shape [n]) or one-hot rows")
        return y.astype(np.int64)
    if output.head in SIGMOID_HEADS:
        if y.ndim == 1:
            y = y[:, None]
        if y.shape[1:] != (units,) or not np.isin(y, (0, 1)).all():
            raise InputError(f"{where}: targets y must be 0/1 of shape [n, {units}]")
        return y.astype(bool)
    if y.shape[1:] != tuple(output.shape[1:]):
        raise InputError(f"{where}: targets y have shape {list(y.shape)}, the output is [n, "
                         + ", ".join(map(str, output.shape[1:])) + "]")
    return y.astype(np.float64)


def _labelled_npz(path: str, info: ModelInfo, limits: Limits):
    names = info.input_names if len(info.model_inputs) > 1 else ["x"]
    missing = [name for name in names + ["y"] if name not in npz_names(path)]
    if missing:
        raise InputError(f"{path}: has no array named {', '.join(missing)}; a labelled set holds "
                         f"{', '.join(names)} (inputs) and y (targets)")
    arrays = _read_array(path, limits, 0, names=names + ["y"])
    y = arrays.pop("y")
    for name, array in arrays.items():
        _check_array_for_model(f"{path}[{name}]", array, info, None if name == "x" else name)
    sizes = {len(array) for array in arrays.values()}
    if len(sizes) > 1:
        raise InputError(f"{path}: its input arrays differ in batch size")
    return (arrays["x"] if "x" in arrays else arrays), y


def _class_folders(path: str, info: ModelInfo, output: ModelOutput, limits: Limits):
    if output.head not in CATEGORICAL_HEADS:
        raise InputError(f"{path}: class folders label a softmax or logits head, not {output.head}; "
                         "give an .npz with x and y")
    classes = output.labels or [str(i) for i in range(output.shape[-1])]
    try:
        folders = sorted(entry.name for entry in os.scandir(path) if entry.is_dir())
    except OSError as err:
        raise InputError(f"{path}: cannot list folder ({err.strerror or err})") from None
    unknown = [name for name in folders if name not in classes]
    if unknown:
        raise InputError(f"{path}: subfolder {unknown[0]!r} is not one of the model's labels "
                         f"({', '.join(classes[:12])}{', ...' if len(classes) > 12 else ''})")
    if not folders:
        raise InputError(f"{path}: no class subfolders (one folder of {', '.join(IMAGE_EXTENSIONS[:3])} "
                         "images per label)")
    parts, targets = [], []
    for name in folders:
        _, x = load_inputs([os.path.join(path, name)], info, limits)
        parts.append(x)
        targets += [classes.index(name)] * len(x)
    return np.concatenate(parts), np.array(targets, dtype=np.int64)


def _digest(x: Batch, y: np.ndarray) -> str:
    digest = hashlib.sha256()
    for array in (list(x.values()) if isinstance(x, dict) else [x]) + [y]:
        array = np.ascontiguousarray(array)
        digest.update(f"{array.dtype.str}{array.shape}".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def batch_size(x: Batch) -> int:
    """Inputs in a batch (an array, or a dict of arrays by input name, all of one length)."""
    return len(next(iter(x.values()))) if isinstance(x, dict) else len(x)


def take(x: Batch, rows) -> Batch:
    return {name: value[rows] for name, value in x.items()} if isinstance(x, dict) else x[rows]
