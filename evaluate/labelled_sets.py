"""Labelled and unlabelled data sets for `evaluate` and `calibrate`, read as untrusted input.

A labelled set is an .npz holding the inputs (`x`, or one array per input name for a model with
several) and the targets `y`, or a folder with one subfolder of images per class, the subfolders
named as the file's labels (or 0, 1, ... when it has none). The targets `y` of an .npz are
numbers, or label names (text) that map through the file's labels as class folders do. An
unlabelled set (`--ood`) is an .npy / .npz batch, images, folders or globs: whatever `infer` reads.

`failures`: None stops at the first input that cannot be read; a list collects (path, message)
of each such input and leaves it out (`evaluate --on-error skip`).
"""

import hashlib
import math
import os
import tokenize
import zipfile
import zlib
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple, Union

import numpy as np

from ..runtime.uncertain_rule import CATEGORICAL_HEADS, SIGMOID_HEADS
from ..runtime.errors import InputError, first_line
from ..runtime.safe_files import open_regular
from ..runtime.array_files import (NPY_HEADER_BYTES, _check_budget, _check_zip_directory, _header_reader, _npz_members,
                          _read_array, _read_exactly, npz_names)
from ..runtime.image_files import IMAGE_EXTENSIONS
from ..runtime.input_files import _check_array_for_model, load_inputs
from ..runtime.limits import DEFAULT, Limits
from ..runtime.format.metadata import ModelInfo, ModelOutput

Batch = Union[np.ndarray, Dict[str, np.ndarray]]
Failures = Optional[List[Tuple[str, str]]]
# A hint added to the first unreadable input's error when evaluate stops at it.
SKIP_HINT = "--on-error skip leaves out inputs that cannot be read"
LABEL_SHOWN = 60  # characters of an unknown target name an error quotes


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


def load_labelled(path, info: ModelInfo, output: ModelOutput, limits: Limits = DEFAULT,
                  failures: Failures = None) -> LabelledSet:
    """Inputs and targets from an .npz or a folder of class folders, checked against the model."""
    path = str(path)
    if os.path.isdir(path):
        x, y = _class_folders(path, info, output, limits, failures)
    elif path.lower().endswith(".npz"):
        x, y = _labelled_npz(path, info, limits)
    else:
        raise InputError(f"{path}: a labelled set is an .npz with x and y, or a folder with one subfolder of "
                         "images per class")
    if x is None or batch_size(x) == 0:
        raise InputError(f"{path}: holds no labelled inputs" + (" that could be read" if failures else ""))
    y = check_targets(y, output, batch_size(x), path)
    return LabelledSet(x, y, path, _digest(x, y))


def load_unlabelled(path, info: ModelInfo, limits: Limits = DEFAULT, failures: Failures = None) -> Batch:
    """Inputs with no class (out-of-distribution): whatever `infer` reads; the npz's `y`, if any, is ignored."""
    path = str(path)
    if path.lower().endswith(".npz") and len(info.model_inputs) == 1 and "y" in npz_names(path):
        arrays = _read_array(path, limits, 0, names=["x"])
        _check_array_for_model(path, arrays["x"], info)
        x = arrays["x"]
    else:
        x = _load_inputs([path], info, limits, failures)
    if x is None or batch_size(x) == 0:
        raise InputError(f"{path}: holds no inputs" + (" that could be read" if failures else ""))
    return x


def _load_inputs(paths, info: ModelInfo, limits: Limits, failures: Failures) -> Optional[Batch]:
    """load_inputs' batch; stopping at an unreadable input, its error says how to skip instead."""
    try:
        return load_inputs(paths, info, limits, failures)[1]
    except InputError as err:
        raise InputError(f"{err} ({SKIP_HINT})") from None


def check_targets(y, output: ModelOutput, count: int, where: str) -> np.ndarray:
    """Targets as the head needs them, or an InputError saying what is wrong."""
    y = np.asarray(y)
    if len(y) != count:
        raise InputError(f"{where}: {len(y)} targets for {count} inputs")
    if y.dtype.kind == "U":
        y = _label_indices(y, output, where)
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


def _label_indices(y: np.ndarray, output: ModelOutput, where: str) -> np.ndarray:
    """Label names -> class indices through the file's labels (0, 1, ... when it has none), as
    class folders are named; a name that is not a label is refused, naming it."""
    if output.head not in CATEGORICAL_HEADS + ("binary",) or y.ndim != 1:
        raise InputError(f"{where}: targets y are text; label names (shape [n]) are for softmax, logits and "
                         f"binary heads, this output is {output.head}: give numbers")
    names = output.labels or [str(i) for i in range(max(2, output.shape[-1]) if output.head == "binary"
                                                    else output.shape[-1])]
    index = {name: i for i, name in enumerate(names)}
    values, inverse = np.unique(y, return_inverse=True)
    unknown = next((str(value) for value in values if str(value) not in index), None)
    if unknown is not None:  # a name from the file: cut, so the error stays one short line
        unknown = unknown if len(unknown) <= LABEL_SHOWN else unknown[:LABEL_SHOWN] + "..."
        raise InputError(f"{where}: target {unknown!r} is not one of the model's labels "
                         f"({', '.join(names[:12])}{', ...' if len(names) > 12 else ''})")
    return np.array([index[str(value)] for value in values], dtype=np.int64)[inverse.reshape(-1)]


def _read_targets(path: str, limits: Limits, used: int) -> np.ndarray:
    """The .npz member y: numbers, booleans or label names (unicode text, never objects), read with
    the guards of the inputs' reader (header checked and size bounded before any data is read)."""
    where = f"{path}[y]"
    fd = open_regular(path)
    with os.fdopen(fd, "rb") as f:
        try:
            _check_zip_directory(f, path)
            with zipfile.ZipFile(f) as archive:
                member = _npz_members(archive, path, ["y"])["y"]
                with archive.open(member) as stream:
                    version = np.lib.format.read_magic(stream)
                    shape, fortran_order, dtype = _header_reader(version)(stream, max_header_size=NPY_HEADER_BYTES)
                    if dtype.hasobject or dtype.kind not in "biufU":
                        raise InputError(f"{where}: targets y must be numbers or label names (text), not dtype {dtype}")
                    if any(d < 0 for d in shape):
                        raise InputError(f"{where}: cannot read array (negative size in its header {list(shape)})")
                    nbytes = math.prod(shape) * dtype.itemsize
                    _check_budget(where, nbytes, limits, used)
                    data = _read_exactly(stream, nbytes, where)
        except (ValueError, OSError, EOFError, SyntaxError, tokenize.TokenError, zlib.error, RuntimeError,
                NotImplementedError, zipfile.BadZipFile, zipfile.LargeZipFile) as err:
            raise InputError(f"{where}: cannot read array ({first_line(err)})") from None
    y = np.frombuffer(data, dtype=dtype).reshape(shape, order="F" if fortran_order else "C")
    if y.ndim == 0:
        raise InputError(f"{where}: holds a single value, not one target per input")
    return y


def _labelled_npz(path: str, info: ModelInfo, limits: Limits):
    names = info.input_names if len(info.model_inputs) > 1 else ["x"]
    missing = [name for name in names + ["y"] if name not in npz_names(path)]
    if missing:
        raise InputError(f"{path}: has no array named {', '.join(missing)}; a labelled set holds "
                         f"{', '.join(names)} (inputs) and y (targets)")
    arrays = _read_array(path, limits, 0, names=names)
    y = _read_targets(path, limits, sum(array.nbytes for array in arrays.values()))
    for name, array in arrays.items():
        _check_array_for_model(f"{path}[{name}]", array, info, None if name == "x" else name)
    sizes = {len(array) for array in arrays.values()}
    if len(sizes) > 1:
        raise InputError(f"{path}: its input arrays differ in batch size")
    return (arrays["x"] if "x" in arrays else arrays), y


def _class_folders(path: str, info: ModelInfo, output: ModelOutput, limits: Limits, failures: Failures):
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
        x = _load_inputs([os.path.join(path, name)], info, limits, failures)
        if x is None:  # every input of the class skipped
            continue
        parts.append(x)
        targets += [classes.index(name)] * len(x)
    if not parts:
        return None, np.zeros(0, dtype=np.int64)
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
