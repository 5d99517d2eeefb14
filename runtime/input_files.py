"""The input files `infer` and `acquire` read into one batch: images (runtime/image_files.py), folders
of images, globs, .npy and .npz arrays (runtime/array_files.py).

Input files may come from anyone, so each is decoded right or refused in one line, in bounded
memory (runtime/limits.py); all inputs together stay within the input_mb limit.
"""

import glob
import os
import warnings
from collections import Counter
from typing import List, Optional, Sequence, Tuple

import numpy as np

from .array_files import ARRAY_EXTENSIONS, _check_budget, _read_array
from .errors import InputError
from .image_files import IMAGE_EXTENSIONS, IMAGE_FORMATS, _load_image, _resize_note
from .limits import DEFAULT, Limits
from .format.metadata import ModelInfo

Failures = Optional[List[Tuple[str, str]]]


def load_inputs(paths: Sequence[str], info: ModelInfo, limits: Limits = DEFAULT,
                failures: Failures = None) -> Tuple[List[str], Optional[np.ndarray]]:
    """(one name per input, the batch). Paths may be files, folders (their images, sorted) or globs.

    An image becomes one input, preprocessed for the model; a .npy / .npz array is taken as an
    already preprocessed batch (axis 0 is the batch). Everything is stacked along the batch axis;
    dtype and values are checked again by MCSession.predict. For a model with several inputs each
    file is an .npz with one array per input name, and the batch is a dict by input name.

    failures None: the first bad input raises InputError. failures a list: each bad input is
    appended as (path, one-line message) and skipped; the good ones are returned (no names and
    x None when none is good).

    Images of another size than the model's are resized; one UserWarning per call says how many,
    from which sizes (the CLI prints it as one 'warning:' line).
    """
    names: List[str] = []
    parts: List[dict] = []
    used = 0  # bytes of the inputs kept so far, against limits.input_bytes
    resized: Counter = Counter()  # (width, height) before resizing -> images
    for path in _expand(paths, failures):
        try:
            if len(info.model_inputs) > 1:
                part, part_names = _load_named(path, info, limits, used)
            else:
                array, part_names = _load_one(path, info, limits, used, resized)
                part = {None: array}
            for key, array in part.items():
                _check_batch_shape(path, array, [earlier[key] for earlier in parts])
        except InputError as err:
            _refuse(failures, path, err)
            continue
        used += sum(array.nbytes for array in part.values())
        names.extend(part_names)
        parts.append(part)
    if resized:
        warnings.warn(_resize_note(resized, info.preprocessing), stacklevel=2)
    if not parts:
        if failures is None:
            raise InputError("no inputs given")
        return names, None
    batch = {key: parts[0][key] if len(parts) == 1 else np.concatenate([part[key] for part in parts])
             for key in parts[0]}
    return names, batch.pop(None) if None in batch else batch


# Paths ------------------------------------------------------------------------------------------

def _refuse(failures: Failures, path: str, err: InputError) -> None:
    if failures is None:
        raise err
    failures.append((path, str(err)))


def _expand(paths: Sequence[str], failures: Failures) -> List[str]:
    expanded: List[str] = []
    for path in map(str, paths):
        try:
            expanded.extend(_expand_one(path, failures))
        except InputError as err:
            _refuse(failures, path, err)
    return expanded


def _expand_one(path: str, failures: Failures) -> List[str]:
    if os.path.isdir(path):
        try:
            entries = os.listdir(path)
        except OSError as err:
            raise InputError(f"{path}: cannot list folder ({err.strerror or err})") from None
        images = sorted(os.path.join(path, name) for name in entries
                        if name.lower().endswith(IMAGE_EXTENSIONS))
        if not images:
            raise InputError(f"{path}: folder holds no images ({', '.join(IMAGE_EXTENSIONS)})")
        return images
    if not os.path.lexists(path) and glob.has_magic(path):
        matches = sorted(glob.glob(path))
        if not matches:
            raise InputError(f"{path}: no file matches")
        return _expand(matches, failures)
    return [path]


def _load_one(path: str, info: ModelInfo, limits: Limits, used: int,
              resized: Optional[Counter] = None) -> Tuple[np.ndarray, List[str]]:
    """(batch part, its names) of one file, checked against the model and the byte budget; an
    image resized to the model's size is counted in `resized` by its own size."""
    lower = path.lower()
    # endswith, as the folder listing does (a file named just ".png" is a PNG there too)
    extension = next((e for e in ARRAY_EXTENSIONS + IMAGE_EXTENSIONS if lower.endswith(e)),
                     os.path.splitext(lower)[1])
    if extension in ARRAY_EXTENSIONS:
        array = _read_array(path, limits, used)
        _check_array_for_model(path, array, info)
        return array, [f"{path}[{i}]" for i in range(len(array))]
    if extension in IMAGE_FORMATS:
        x = _load_image(path, info, limits, resized)[None]
        _check_budget(path, x.nbytes, limits, used)
        return x, [path]
    raise InputError(f"{path}: unsupported file type {extension or '(no extension)'!r}; mcdrop reads "
                     f"images ({', '.join(IMAGE_EXTENSIONS)}) and arrays ({', '.join(ARRAY_EXTENSIONS)})")


def _load_named(path: str, info: ModelInfo, limits: Limits, used: int) -> Tuple[dict, List[str]]:
    """An .npz with one array per input name, for a model with several inputs."""
    wanted = info.input_names
    if not path.lower().endswith(".npz"):
        raise InputError(f"{path}: the model takes {len(wanted)} inputs ({', '.join(wanted)}); give an .npz "
                         "holding one array per input name")
    arrays = _read_array(path, limits, used, names=wanted)
    for name, array in arrays.items():
        _check_array_for_model(f"{path}[{name}]", array, info, name)
    sizes = {len(array) for array in arrays.values()}
    if len(sizes) > 1:
        raise InputError(f"{path}: its arrays differ in batch size ("
                         + ", ".join(f"{name} {len(array)}" for name, array in arrays.items()) + ")")
    return arrays, [f"{path}[{i}]" for i in range(sizes.pop())]


def _check_array_for_model(path: str, array: np.ndarray, info: ModelInfo, name: Optional[str] = None) -> None:
    """The file is named in the error (MCSession's own check sees only the stacked batch)."""
    problem = info.shape_problem(array.shape, name)
    if problem:
        raise InputError(f"{path}: holds {problem}")
    if array.dtype.kind == "f":
        bad = np.count_nonzero(~np.isfinite(array))
        if bad:
            raise InputError(f"{path}: holds {bad} NaN or infinite values")


def _check_batch_shape(path: str, part: np.ndarray, parts: List[np.ndarray]) -> None:
    # The model may leave sizes open; the inputs must still agree to form one batch.
    if parts and part.shape[1:] != parts[0].shape[1:]:
        raise InputError(f"{path}: examples of shape {list(part.shape[1:])} differ from those before "
                         f"({list(parts[0].shape[1:])}); inputs have different shapes and cannot "
                         "form one batch")
