""".npy and .npz files read as input arrays, within bounds: only regular files are opened (a FIFO
would hang, /dev/zero never ends), an array's header and an .npz member's declared size are
checked before its data is read or inflated, and all inputs together stay within the input_mb
limit (runtime/limits.py)."""

import math
import os
import tokenize
import zipfile
import zlib
from typing import BinaryIO, Callable, List, Optional, Sequence, Tuple

import numpy as np

from .errors import InputError, first_line
from .limits import DEFAULT, Limits
from .safe_files import open_regular

ARRAY_EXTENSIONS = (".npy", ".npz")
NPZ_KEYS = ("x", "input")
# numpy's own bound on an .npy header (read_array_header_*'s max_header_size default).
NPY_HEADER_BYTES = 10_000
# zipfile reads an .npz's whole central directory and makes an object per member before we can
# look at any: a small file could list millions. ~10,000 members fit in this.
MAX_ZIP_DIRECTORY_BYTES = 2**20
READ_CHUNK = 2**20


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
