"""Files -> one input batch: images (preprocessed as the metadata says), .npy and .npz arrays.

Input files may come from anyone, so each is decoded right or refused in one line, in bounded
memory (runtime/limits.py): only regular files are opened (a FIFO would hang, /dev/zero never
ends); an image's pixel count is checked before it is decoded; an array's header, and an .npz
member's declared size, are checked before its data is read or inflated; all inputs together stay
within the input_mb limit. Image decoders are restricted to the documented formats, so a file
named .png is never handed to some other Pillow plugin.
"""

import glob
import math
import os
import struct
import tokenize
import warnings
import zipfile
import zlib
from collections import Counter
from typing import BinaryIO, Callable, List, Optional, Sequence, Tuple

import numpy as np

from .errors import InputError, first_line
from .safe_files import open_regular
from .limits import DEFAULT, Limits
from .metadata import ModelInfo, Preprocessing


def _image_formats() -> dict:
    """Extension -> Pillow decoder, the same set by name and in folders."""
    formats = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".bmp": "BMP", ".gif": "GIF",
               ".tif": "TIFF", ".tiff": "TIFF"}
    try:
        from PIL import features  # Pillow may be built without libwebp

        if features.check("webp"):
            formats[".webp"] = "WEBP"
    except ImportError:
        pass
    return formats


IMAGE_FORMATS = _image_formats()
IMAGE_EXTENSIONS = tuple(IMAGE_FORMATS)
DECODERS = sorted(set(IMAGE_FORMATS.values()))
ARRAY_EXTENSIONS = (".npy", ".npz")
NPZ_KEYS = ("x", "input")
# numpy's own bound on an .npy header (read_array_header_*'s max_header_size default).
NPY_HEADER_BYTES = 10_000
# zipfile reads an .npz's whole central directory and makes an object per member before we can
# look at any: a small file could list millions. ~10,000 members fit in this.
MAX_ZIP_DIRECTORY_BYTES = 2**20
READ_CHUNK = 2**20
UNIFORM = 0.5  # pixel levels: an image whose values all lie within this span shows nothing
ALPHA_MODES = ("LA", "La", "PA", "RGBA", "RGBa")
WIDE_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N")  # 16-bit PNG / TIFF

Failures = Optional[List[Tuple[str, str]]]
RESIZES_NAMED = 3  # image sizes a resize warning lists; the rest are counted


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


def load_array(path, limits: Limits = DEFAULT) -> np.ndarray:
    """The array of an .npy file, or of an .npz's only member (or its member 'x' or 'input').

    Refused with a one-line InputError, before anything large is read or inflated: a file that is
    not regular, a dtype that is not real numbers, a size over limits.input_bytes, truncated or
    corrupt data, a single number (0-d)."""
    return _read_array(str(path), limits, used=0)


def npz_names(path) -> List[str]:
    """The array names an .npz holds, read with the same guards as its arrays (a regular file, a
    zip directory of bounded size), nothing inflated."""
    path = str(path)
    fd = open_regular(path)
    with os.fdopen(fd, "rb") as f:
        try:
            _check_zip_directory(f, path)
            with zipfile.ZipFile(f) as archive:
                return [name[:-4] for name in archive.namelist() if name.endswith(".npy")]
        except (ValueError, OSError, EOFError, zipfile.BadZipFile, zipfile.LargeZipFile) as err:
            raise InputError(f"{path}: cannot read array ({first_line(err)})") from None


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


def _check_budget(path: str, nbytes: int, limits: Limits, used: int) -> None:
    """nbytes more must keep all inputs within limits.input_bytes."""
    if used + nbytes <= limits.input_bytes:
        return
    size, bound = f"{nbytes / 2**20:.1f} MiB", f"{limits.input_mb:g} MiB"
    if nbytes > limits.input_bytes:
        raise InputError(f"{path}: {size} of data is over the input_mb limit ({bound}); "
                         "raise it with --limit input_mb=N if you trust it")
    raise InputError(f"{path}: {size} of data takes the inputs over the input_mb limit ({bound}, "
                     f"{used / 2**20:.1f} MiB before it); raise it with --limit input_mb=N")


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


# Arrays -----------------------------------------------------------------------------------------

def _read_array(path: str, limits: Limits, used: int, names: Optional[Sequence[str]] = None):
    """The array of an .npy file or of an .npz's member (see _npz_members); with `names`, the
    .npz members of those names, as {name: array}."""
    fd = open_regular(path)
    with os.fdopen(fd, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size == 0:
            raise InputError(f"{path}: empty file")
        try:
            if path.lower().endswith(".npz"):
                arrays = _read_npz(f, path, limits, used, names)
            else:
                arrays = {None: _read_npy(f, path, size, limits, used)}
        except (ValueError, OSError, EOFError, SyntaxError, tokenize.TokenError, zlib.error, RuntimeError,
                NotImplementedError, zipfile.BadZipFile, zipfile.LargeZipFile) as err:
            # corrupt or truncated data, a garbled header, an encrypted or unknown-compression member
            raise InputError(f"{path}: cannot read array ({first_line(err)})") from None
    for name, array in arrays.items():
        if array.ndim == 0:
            raise InputError(f"{path if name is None else f'{path}[{name}]'}: holds a single number, not a batch")
    return arrays if names is not None else arrays[None]


def _header_reader(version) -> Callable:
    fmt = np.lib.format
    readers = {(1, 0): fmt.read_array_header_1_0, (2, 0): fmt.read_array_header_2_0}
    if version in readers:
        return readers[version]
    if version == (3, 0) and hasattr(fmt, "_read_array_header"):  # numpy has no public 3.0 reader
        return lambda stream, max_header_size: fmt._read_array_header(stream, version, max_header_size)
    raise ValueError(f".npy format version {version[0]}.{version[1]} is not supported")


def npy_header(stream: BinaryIO, path: str) -> Tuple[tuple, bool, np.dtype]:
    """(shape, fortran_order, dtype) of the .npy at the stream's position, which is left at the
    data; refused unless the dtype is real numbers and every size is >= 0."""
    version = np.lib.format.read_magic(stream)
    shape, fortran_order, dtype = _header_reader(version)(stream, max_header_size=NPY_HEADER_BYTES)
    if dtype.hasobject or dtype.kind not in "fiu":
        raise InputError(f"{path}: cannot read array of dtype {dtype}: inputs must be real numbers "
                         "(integer or float)")
    if any(d < 0 for d in shape):
        raise InputError(f"{path}: cannot read array (negative size in its header {list(shape)})")
    return tuple(shape), fortran_order, dtype


def _read_npy(stream: BinaryIO, path: str, size: int, limits: Limits, used: int) -> np.ndarray:
    """The array of an .npy stream of `size` bytes, its header checked before any data is read."""
    shape, fortran_order, dtype = npy_header(stream, path)
    nbytes = math.prod(shape) * dtype.itemsize  # Python ints: no overflow
    _check_budget(path, nbytes, limits, used)
    available = size - stream.tell()
    if nbytes > available:  # refuse before allocating what the header claims
        raise InputError(f"{path}: cannot read array (truncated: its header declares {nbytes:,} bytes "
                         f"of data, the file holds {max(available, 0):,})")
    data = _read_exactly(stream, nbytes, path)
    return np.frombuffer(data, dtype=dtype).reshape(shape, order="F" if fortran_order else "C")


def _read_exactly(stream: BinaryIO, nbytes: int, path: str) -> bytearray:
    """nbytes into one buffer, read in chunks (no second copy of the data)."""
    data = bytearray(nbytes)
    view, done = memoryview(data), 0
    while done < nbytes:
        got = stream.readinto(view[done:done + READ_CHUNK])
        if not got:
            raise InputError(f"{path}: cannot read array (truncated after {done:,} of {nbytes:,} bytes)")
        done += got
    return data


def _read_npz(f: BinaryIO, path: str, limits: Limits, used: int, names: Optional[Sequence[str]] = None) -> dict:
    """{None: the array} of the member _npz_members picks, or {name: array} of the named members."""
    _check_zip_directory(f, path)
    arrays = {}
    with zipfile.ZipFile(f) as archive:
        for key, member in _npz_members(archive, path, names).items():
            where = f"{path}[{member.filename if key is None else key}]"
            # The declared uncompressed size bounds what inflating can produce (zipfile stops there).
            _check_budget(where, max(member.file_size - NPY_HEADER_BYTES, 0), limits, used)
            with archive.open(member) as stream:
                arrays[key] = _read_npy(stream, path if key is None else where, member.file_size, limits, used)
            used += arrays[key].nbytes
    return arrays


def _check_zip_directory(f: BinaryIO, path: str) -> None:
    """Refuse a zip whose central directory is huge, before zipfile reads it. Uses zipfile's own
    reader of the end record, so both agree (private: skipped on a Python without it)."""
    end_record = getattr(zipfile, "_EndRecData", None)
    if end_record is None:
        return
    end = end_record(f)
    f.seek(0)
    directory = end[getattr(zipfile, "_ECD_SIZE", 5)] if end else 0
    if directory > MAX_ZIP_DIRECTORY_BYTES:
        raise InputError(f"{path}: cannot read array (its zip directory of {directory:,} bytes lists "
                         "too many members for an input file)")


def _npz_members(archive: zipfile.ZipFile, path: str, names: Optional[Sequence[str]] = None) -> dict:
    """{None: the member to use}: the only array, or the one named 'x' or 'input' (as np.load
    names them); with `names`, {name: member} for each of them."""
    arrays = {info.filename[:-4]: info for info in archive.infolist() if info.filename.endswith(".npy")}
    if names is not None:
        missing = [name for name in names if name not in arrays]
        if missing:
            raise InputError(f"{path}: has no array named {', '.join(missing)} (the model's inputs: "
                             f"{', '.join(names)}; the file holds {', '.join(list(arrays)[:8]) or 'none'})")
        return {name: arrays[name] for name in names}
    if not arrays:
        raise InputError(f"{path}: holds no arrays (.npy members)")
    keys = list(arrays)
    key = keys[0] if len(keys) == 1 else next((k for k in NPZ_KEYS if k in arrays), None)
    if key is None:
        shown = keys[:8] + (["..."] if len(keys) > 8 else [])
        raise InputError(f"{path}: holds arrays {shown}; name the input 'x' or 'input', or save only one")
    return {None: arrays[key]}


# Images -----------------------------------------------------------------------------------------

def _resize_note(resized: Counter, pre: Preprocessing) -> str:
    """'resized 3 images to the model's 28x28 (width x height): 2 from 640x480, 1 from 32x32'."""
    shown = resized.most_common(RESIZES_NAMED if len(resized) > RESIZES_NAMED + 1 else None)
    sizes = [f"{count} from {width}x{height}" for (width, height), count in shown]
    total = sum(resized.values())
    if len(shown) < len(resized):
        sizes.append(f"{total - sum(count for _, count in shown)} from {len(resized) - len(shown)} other sizes")
    return (f"resized {total} image{'s' * (total != 1)} to the model's {pre.width}x{pre.height} "
            f"(width x height): {', '.join(sizes)}")


def _load_image(path: str, info: ModelInfo, limits: Limits, resized: Optional[Counter] = None) -> np.ndarray:
    """One model input from an image file; its size is counted in `resized` when it differs
    from the model's."""
    from PIL import Image, UnidentifiedImageError  # only image inputs need Pillow

    pre = info.preprocessing
    if pre is None:
        raise InputError(f"{path}: this model has no image preprocessing in its metadata; "
                         "pass preprocessed arrays (.npy / .npz)")
    fd = open_regular(path)
    with os.fdopen(fd, "rb") as f:
        if os.fstat(f.fileno()).st_size == 0:
            raise InputError(f"{path}: empty file")
        try:
            # Pillow warns about large images; the image_pixels check below decides instead, and
            # the CLI prints one line per problem.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                with Image.open(f, formats=DECODERS) as image:
                    image.seek(0)  # first frame of an animation
                    _check_pixels(path, image, limits)
                    _decode(path, image)
                    size = image.size
                    pixels = _pixels(path, image, pre)
        except Image.DecompressionBombError:
            raise InputError(_bomb_message(path, limits)) from None
        except UnidentifiedImageError:
            raise InputError(f"{path}: cannot read image (not a {', '.join(DECODERS)} file)") from None
        except (OSError, ValueError, SyntaxError, EOFError, IndexError, struct.error, MemoryError) as err:
            raise InputError(f"{path}: cannot read image ({first_line(err)})") from None
    x = _to_model_input(path, pixels, pre, info)
    if resized is not None and size != (pre.width, pre.height):
        resized[size] += 1
    return x


def _bomb_message(path: str, limits: Limits) -> str:
    # Pillow refuses images over twice its MAX_IMAGE_PIXELS in Image.open, before our own check
    # can see the size; such an image is over the default image_pixels limit too.
    from PIL import Image

    bound = 2 * (Image.MAX_IMAGE_PIXELS or 0)
    over_ours = f"over the image_pixels limit ({limits.image_pixels:,}) and " \
        if limits.image_pixels < bound else ""
    return (f"{path}: image of more than {bound:,} pixels is {over_ours}over Pillow's decompression-bomb "
            "bound, which no --limit raises")


def _check_pixels(path: str, image, limits: Limits) -> None:
    # Image.open has read only the header: nothing is decoded yet.
    width, height = image.size
    if width * height > limits.image_pixels:
        raise InputError(f"{path}: image of {width}x{height} = {width * height:,} pixels is over the "
                         f"image_pixels limit ({limits.image_pixels:,}); raise it with "
                         "--limit image_pixels=N if you trust it")


def _decode(path: str, image) -> None:
    """Decode the frame now: on a corrupt file Pillow's decoders raise errors of many types
    (TypeError from a garbled TIFF tag, ...); whatever they raise here is the file's fault."""
    from PIL import Image

    from .providers import quiet_stderr

    try:
        if image.format == "TIFF":  # libtiff prints its warnings on a corrupt file straight to fd 2
            with quiet_stderr():
                image.load()
        else:
            image.load()
    except (Image.DecompressionBombError, MemoryError):
        raise
    except Exception as err:  # noqa: BLE001 - one line for the user, never a traceback
        raise InputError(f"{path}: cannot read image ({first_line(err)})") from None


def _pixels(path: str, image, pre: Preprocessing) -> np.ndarray:
    """The image at the model's size, as float32 pixel values 0..255 (HxW grey or HxWx3 RGB)."""
    if image.mode == "F" or image.mode in WIDE_MODES:
        return _wide_pixels(path, image, pre)
    if image.mode in ALPHA_MODES or "transparency" in image.info:
        image = _composite(path, image, pre.background)
    return _eight_bit_pixels(image, pre)


def _eight_bit_pixels(image, pre: Preprocessing) -> np.ndarray:
    from PIL import Image

    image = image.convert("L" if pre.color_mode == "grayscale" else "RGB")
    if image.size != (pre.width, pre.height):
        # Pillow's filters widen their support when shrinking, so this also antialiases.
        image = image.resize((pre.width, pre.height), Image.Resampling.LANCZOS)
    return np.asarray(image, dtype=np.float32)


def _composite(path: str, image, background: float):
    """An image with alpha (or a transparent colour) flattened onto the background grey, in
    8 bits like the rest of the image: the grey is rounded to a whole level."""
    from PIL import Image

    rgba = image.convert("RGBA")  # also applies a palette's or a colour key's transparency
    grey = int(round(background))
    flat = Image.alpha_composite(Image.new("RGBA", rgba.size, (grey, grey, grey, 255)), rgba).convert("RGB")
    low, high = rgba.getchannel("A").getextrema()
    if low != high and all(lo == hi for lo, hi in flat.getextrema()):
        _refuse_alpha_only(path, background)
    return flat


def _refuse_alpha_only(path: str, background: float) -> None:
    raise InputError(f"{path}: the picture is only in the alpha (transparency) channel: composited "
                     f"on the model's background grey {background:g} it is one flat colour; "
                     "save it with the picture in its colour channels")


def _wide_pixels(path: str, image, pre: Preprocessing) -> np.ndarray:
    """16-bit and float images, kept in float: scaled to 0..255, composited, resized."""
    values = np.asarray(image)
    if image.mode == "F":
        grey = _float_levels(path, values)
    else:
        grey = _sixteen_bit_levels(path, values)
    transparent = image.info.get("transparency")
    if isinstance(transparent, (int, float)):  # a 16-bit PNG's colour key
        opaque = values != transparent
        flat = np.where(opaque, grey, np.float32(pre.background)).astype(np.float32)
        if not opaque.all() and opaque.any() and np.ptp(flat) < UNIFORM:
            _refuse_alpha_only(path, pre.background)
        grey = flat
    grey = _resize_float(grey, pre)
    return grey if pre.color_mode == "grayscale" else np.repeat(grey[..., None], 3, axis=2)


def _sixteen_bit_levels(path: str, values: np.ndarray) -> np.ndarray:
    wide = values.dtype.kind != "u" or values.dtype.itemsize > 2  # mode "I": 32-bit, may hold anything
    if wide and values.size and (values.min() < 0 or values.max() > 65535):
        raise InputError(f"{path}: integer image values span {values.min()}..{values.max()}; mcdrop "
                         "reads integer images as 16-bit (0..65535)")
    return values.astype(np.float32) * np.float32(255 / 65535)


def _float_levels(path: str, values: np.ndarray) -> np.ndarray:
    """[0, 1] is read as intensities, [0, 255] as pixel values; anything else is ambiguous."""
    values = values.astype(np.float32, copy=False)
    if not np.isfinite(values).all():
        raise InputError(f"{path}: float image holds NaN or infinite values")
    low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    if low >= 0 and high <= 1:
        return values * np.float32(255)
    if low >= 0 and high <= 255:
        return values
    raise InputError(f"{path}: float image values span {low:g}..{high:g}; mcdrop reads float images "
                     "as intensities in [0, 1] or pixel values in [0, 255]")


def _resize_float(grey: np.ndarray, pre: Preprocessing) -> np.ndarray:
    from PIL import Image

    if grey.shape == (pre.height, pre.width):
        return grey
    image = Image.fromarray(np.ascontiguousarray(grey, dtype=np.float32))  # mode "F"
    resized = np.asarray(image.resize((pre.width, pre.height), Image.Resampling.LANCZOS))
    return np.clip(resized, 0, 255)  # Lanczos rings past the range; 8-bit resizing clips too


def _to_model_input(path: str, pixels: np.ndarray, pre: Preprocessing, info: ModelInfo) -> np.ndarray:
    """0..255 pixels (HxW grey or HxWx3 RGB, whichever path decoded them) -> one model input."""
    x = _normalize(pixels * np.float32(pre.scale) + np.float32(pre.offset), pre)
    example_shape = tuple(info.input_shape[1:])
    if x.ndim == 2 and len(example_shape) == 3:
        x = x[..., None]  # grayscale: the channel axis of NHWC
    if len(example_shape) == 1 and x.size == example_shape[0]:
        x = x.reshape(example_shape)  # a flat (MLP) input takes the pixels row by row
    if x.shape != example_shape:
        raise InputError(f"{path}: the image becomes shape {list(x.shape)} but the model expects "
                         f"{list(example_shape)}")
    return x


def _normalize(x: np.ndarray, pre: Preprocessing) -> np.ndarray:
    """Channel order, then (x - mean[c]) / std[c] per channel, on the last (channel) axis, before
    a flat input is reshaped. Files without these fields skip both: their numbers stay as they were."""
    if pre.channel_order == "bgr":
        x = np.ascontiguousarray(x[..., ::-1])  # a reversed view would reach onnxruntime strided
    if pre.normalizes:
        x = (x - np.asarray(pre.mean, np.float32)) / np.asarray(pre.std, np.float32)
    return x
