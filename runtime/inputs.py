"""Files -> one input batch: images (preprocessed as the metadata says), .npy and .npz arrays."""

import glob
import os
from typing import List, Sequence, Tuple

import numpy as np

from runtime.errors import InputError, first_line
from runtime.metadata import ModelInfo

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif")
ARRAY_EXTENSIONS = (".npy", ".npz")
NPZ_KEYS = ("x", "input")


def load_inputs(paths: Sequence[str], info: ModelInfo) -> Tuple[List[str], np.ndarray]:
    """(one name per input, the batch). Paths may be files, folders (their images, sorted) or globs.

    An image becomes one input, preprocessed for the model; a .npy / .npz array is taken as an
    already preprocessed batch (axis 0 is the batch). Everything is stacked along the batch axis;
    dtype and shape are checked by MCSession.predict.
    """
    names: List[str] = []
    parts: List[np.ndarray] = []
    for path in _expand(paths):
        if path.lower().endswith(ARRAY_EXTENSIONS):
            array = _load_array(path)
            names.extend(f"{path}[{i}]" for i in range(len(array)))
            parts.append(array)
        else:
            names.append(path)
            parts.append(_load_image(path, info)[None])
    if not parts:
        raise InputError("no inputs given")
    if len({part.shape[1:] for part in parts}) > 1:
        shapes = sorted({str(list(part.shape[1:])) for part in parts})
        raise InputError(f"inputs have different shapes per example ({', '.join(shapes)}); "
                         "they cannot form one batch")
    return names, parts[0] if len(parts) == 1 else np.concatenate(parts)


def _expand(paths: Sequence[str]) -> List[str]:
    expanded: List[str] = []
    for path in map(str, paths):
        if os.path.isdir(path):
            images = sorted(os.path.join(path, name) for name in os.listdir(path)
                            if name.lower().endswith(IMAGE_EXTENSIONS))
            if not images:
                raise InputError(f"{path}: folder holds no images ({', '.join(IMAGE_EXTENSIONS)})")
            expanded.extend(images)
        elif not os.path.exists(path) and glob.has_magic(path):
            matches = sorted(glob.glob(path))
            if not matches:
                raise InputError(f"{path}: no file matches")
            expanded.extend(_expand(matches))
        else:
            expanded.append(path)
    return expanded


def _check_file(path: str) -> None:
    if not os.path.exists(path):
        raise InputError(f"{path}: no such file")
    if os.path.getsize(path) == 0:
        raise InputError(f"{path}: empty file")


def _load_array(path: str) -> np.ndarray:
    _check_file(path)
    try:
        loaded = np.load(path, allow_pickle=False)
        if isinstance(loaded, np.lib.npyio.NpzFile):
            with loaded:
                keys = list(loaded.files)
                key = keys[0] if len(keys) == 1 else next((k for k in NPZ_KEYS if k in keys), None)
                if key is None:
                    raise InputError(f"{path}: holds arrays {keys}; name the input 'x' or 'input', "
                                     "or save only one")
                loaded = loaded[key]
    except (ValueError, OSError, EOFError) as err:  # corrupt, truncated, or pickled objects
        raise InputError(f"{path}: cannot read array ({first_line(err)})") from None
    if loaded.ndim == 0:
        raise InputError(f"{path}: holds a single number, not a batch")
    return loaded


def _load_image(path: str, info: ModelInfo) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError  # only image inputs need Pillow

    _check_file(path)
    pre = info.preprocessing
    if pre is None:
        raise InputError(f"{path}: this model has no image preprocessing in its metadata; "
                         "pass preprocessed arrays (.npy / .npz)")
    try:
        with Image.open(path) as image:
            image.seek(0)  # first frame of an animation
            image = image.convert("L" if pre.color_mode == "grayscale" else "RGB")
            if image.size != (pre.width, pre.height):
                # Pillow's filters widen their support when shrinking, so this also antialiases.
                image = image.resize((pre.width, pre.height), Image.Resampling.LANCZOS)
            pixels = np.asarray(image, dtype=np.float32)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as err:
        raise InputError(f"{path}: cannot read image ({first_line(err)})") \
            from None
    x = pixels * np.float32(pre.scale) + np.float32(pre.offset)
    example_shape = tuple(info.input_shape[1:])
    if x.ndim == 2 and len(example_shape) == 3:
        x = x[..., None]  # grayscale: the channel axis of NHWC
    if len(example_shape) == 1 and x.size == example_shape[0]:
        x = x.reshape(example_shape)  # a flat (MLP) input takes the pixels row by row
    if x.shape != example_shape:
        raise InputError(f"{path}: the image becomes shape {list(x.shape)} but the model expects "
                         f"{list(example_shape)}")
    return x
