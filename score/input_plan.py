"""Inputs of a scoring job, listed once and read a batch at a time in bounded memory.

`plan_inputs` turns the command line's INPUTS (images, folders and globs of them, .npy / .npz
arrays, Parquet or CSV lists of image paths: score/image_lists.py) into an InputPlan: every input gets a position
(`index`, its place in the listing) and an `id` (the image's path, or `file.npy[row]` as `infer`
names array rows); nothing is read but array headers, and lists of image paths a chunk of rows at
a time (checked and counted, not kept: each pass over a list reads it again). `refs` then yields
the inputs as small columnar batches of references (index, id, path, row, member) and `load_refs`
reads one such batch: each image decoded and preprocessed as `infer` does (runtime/input_files.py),
each array row read by seeking into its file, never the whole array. The references are plain columns, so the
same batch can travel through Ray Data to another process and be read there (score/ray_engine.py).

Command-line mistakes (a missing file, a glob with no match, an array of the wrong shape, a list
path out of the list's folder) are InputErrors raised by plan_inputs before anything is scored. A
single input that cannot be read (a corrupt image, a row with NaN) is reported per input by
load_refs, for the caller to skip or stop.
"""

import os
import zipfile
from collections import OrderedDict
from dataclasses import dataclass
from typing import Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from ..runtime import array_files, image_files, input_files
from ..runtime.errors import InputError, first_line
from ..runtime.format.metadata import ModelInfo
from ..runtime.limits import DEFAULT, Limits
from ..runtime.safe_files import open_regular, valid_text as display_name
from .image_lists import LIST_EXTENSIONS, PATH_COLUMN, ImageList

NO_ROW = -1  # the `row` of an image reference
# Array files a process keeps open at once (reading runs of rows from the same few files).
OPEN_READERS = 4
REF_COLUMNS = ("index", "id", "path", "row", "member")



@dataclass(frozen=True)
class ArrayFile:
    """An .npy file, or an .npz (one member, or one per model input), whose rows are inputs."""

    path: str
    members: Tuple[Optional[str], ...]  # (None,) for an .npy; npz member names (model input order)
    rows: int


@dataclass(frozen=True)
class Segment:
    """A run of consecutive inputs from one command-line item: image paths (a list of them, or an
    ImageList that reads them from a Parquet / CSV list a chunk at a time), or an array file."""

    start: int
    count: int
    images: Optional[Iterable[str]] = None  # iterating gives the image paths, as they are opened
    image_ids: Optional[List[str]] = None
    array: Optional[ArrayFile] = None


class InputPlan:
    """Every input of a job in order; nothing but array headers has been read."""

    def __init__(self, segments: List[Segment], names: Optional[Sequence[str]]):
        self.segments = segments
        self.names = names  # the model's input names when it takes several (npz members), else None
        self.total = sum(segment.count for segment in segments)

    def __len__(self) -> int:
        return self.total

    # fingerprint: an image is known by its size, modification time and first and last blocks;
    # each file's digest is cut to DIGEST_BYTES (a checkpoint keeps one per file).
    FINGERPRINT_BLOCK = 64 * 2**10
    DIGEST_BYTES = 16

    def fingerprint(self, each=None) -> str:
        """A digest of what the inputs are, to tell a resumed job that it is given the same inputs:
        per input file its path (and id), size, and content: an array file hashed whole, an image
        by its modification time and its first and last FINGERPRINT_BLOCK bytes (reading every
        image twice would double a job's reads). `each`, a callable, gets (shown name, digest of
        DIGEST_BYTES) per file in order, so that a caller can say which file changed."""
        import hashlib

        whole = hashlib.sha256()
        for kind, path, shown in self.input_files():
            digest = hashlib.sha256(repr((kind, path, shown)).encode("utf-8", "backslashreplace"))
            digest.update(self._content_digest(path, whole_file=kind.startswith("array")))
            short = digest.digest()[:self.DIGEST_BYTES]
            whole.update(short)
            if each is not None:
                each(shown, short)
        return whole.hexdigest()

    def input_files(self) -> Iterator[Tuple[str, str, str]]:
        """(kind, path, shown name) of every file the inputs are read from, in order: 'array' for
        an array file (its members and rows in the kind), 'image' for each image."""
        for segment in self.segments:
            if segment.array is not None:
                array = segment.array
                yield f"array {array.members} {array.rows}", array.path, display_name(array.path)
            elif isinstance(segment.images, ImageList):  # streamed a chunk at a time, ids from the list
                for paths, ids in segment.images.chunks():
                    yield from (("image", path, shown) for path, shown in zip(paths, ids))
            else:
                yield from (("image", path, shown) for path, shown in zip(segment.images, segment.image_ids))

    @classmethod
    def _content_digest(cls, path: str, whole_file: bool) -> bytes:
        """sha256 of a file's size and content (whole, or mtime and first and last blocks); of the
        reason when it cannot be read (a missing image is an error row, and stays one on resume)."""
        import hashlib

        digest = hashlib.sha256()
        try:
            fd = open_regular(path)
        except InputError as err:
            return hashlib.sha256(("unreadable " + str(err)).encode("utf-8", "backslashreplace")).digest()
        try:
            with os.fdopen(fd, "rb") as f:
                info = os.fstat(f.fileno())
                digest.update(f"{info.st_size}".encode())
                if whole_file:
                    for block in iter(lambda: f.read(2**20), b""):
                        digest.update(block)
                else:
                    digest.update(f" {info.st_mtime_ns}".encode())
                    digest.update(f.read(cls.FINGERPRINT_BLOCK))
                    if info.st_size > cls.FINGERPRINT_BLOCK:
                        f.seek(max(cls.FINGERPRINT_BLOCK, info.st_size - cls.FINGERPRINT_BLOCK))
                        digest.update(f.read(cls.FINGERPRINT_BLOCK))
        except OSError as err:
            return hashlib.sha256(f"unreadable {err}".encode("utf-8", "backslashreplace")).digest()
        return digest.digest()

    def refs(self, batch_size: int, skip: Optional[np.ndarray] = None) -> Iterator[Dict[str, np.ndarray]]:
        """Batches of at most batch_size references, in index order; `skip`: a bool array over
        the indices, True for inputs already done."""
        pending: List[Dict[str, np.ndarray]] = []
        size = 0
        for segment in self.segments:
            for part in _segment_parts(segment, batch_size):
                if skip is not None:
                    part = _take(part, ~skip[part["index"]])
                while len(part["index"]):
                    room = batch_size - size
                    pending.append(_take(part, slice(0, room)))
                    size += len(pending[-1]["index"])
                    part = _take(part, slice(room, None))
                    if size == batch_size:
                        yield _concat(pending)
                        pending, size = [], 0
        if pending:
            yield _concat(pending)


def plan_inputs(items: Sequence[str], info: ModelInfo, limits: Limits = DEFAULT,
                allow_paths_outside: bool = False) -> InputPlan:
    """The InputPlan of the command line's INPUTS, in the order given (folders and globs sorted).

    A Parquet / CSV list is read once here, every row checked, and again whenever its references
    are handed out; its decoded rows count against limits.input_mb. Its paths must stay inside the
    list's folder (no absolute path elsewhere, no `..` or symbolic link out of it) unless
    allow_paths_outside."""
    names = info.input_names if len(info.model_inputs) > 1 else None
    segments: List[Segment] = []
    start = 0
    for item in map(str, items):
        for path in input_files._expand([item], None):
            segment = _segment(path, info, names, start, limits, allow_paths_outside)
            if segment.count:
                segments.append(segment)
                start += segment.count
    if not start:
        raise InputError("no inputs given")
    return InputPlan(segments, names)


def load_refs(refs: Dict[str, np.ndarray], info: ModelInfo, readers: "ArrayReaders",
              limits: Limits = DEFAULT):
    """(x, errors): the batch of the inputs that could be read (an array, or a dict by input
    name for a model with several; None when none could), and {position in refs: one-line
    message} for those that could not."""
    count = len(refs["index"])
    parts: Dict[int, Dict[Optional[str], np.ndarray]] = {}
    errors: Dict[int, str] = {}
    rows = refs["row"]
    for i in np.flatnonzero(rows == NO_ROW):
        path = os.fsdecode(refs["path"][i])
        try:
            if path.lower().endswith(image_files.IMAGE_EXTENSIONS):
                parts[i] = {None: image_files._load_image(path, info, limits)}
            else:
                raise InputError(f"{path}: not an image ({', '.join(image_files.IMAGE_EXTENSIONS)})")
        except InputError as err:
            # Named by its id (a listed image: the entry as listed, or its id), not by the path it
            # was read from: an error row shows no more of the file system than the list itself.
            message = str(err)
            errors[i] = refs["id"][i] + message[len(path):] if message.startswith(path) else message
    arrays = np.flatnonzero(rows != NO_ROW)
    for (path, member), where in _runs(refs, arrays):
        try:
            values = readers.read(os.fsdecode(path), member, info, rows[where[0]], len(where))
        except InputError as err:
            errors.update((i, str(err)) for i in where)
            continue
        for j, i in enumerate(where):
            bad = [name for name, array in values.items()
                   if array.dtype.kind == "f" and not np.isfinite(array[j]).all()]
            if bad:
                errors[i] = f"{refs['id'][i]}: holds NaN or infinite values"
            else:
                parts[i] = {name: array[j] for name, array in values.items()}
    good = sorted(parts)
    if not good:
        return None, errors
    keys = list(parts[good[0]])
    batch = {key: np.stack([parts[i][key] for i in good]) for key in keys}
    x = batch[None] if keys == [None] else batch
    assert len(good) + len(errors) == count
    return x, errors


class ArrayReaders:
    """Open array files, kept between batches (a few at a time), reading rows by seeking."""

    def __init__(self, size: int = OPEN_READERS):
        self._open: "OrderedDict[Tuple[str, Optional[str]], _RowReader]" = OrderedDict()
        self._size = size

    def read(self, path: str, member: Optional[str], info: ModelInfo, start: int, count: int) -> Dict:
        """{input name or None: rows start..start+count} of the file's member (every named member
        of a several-input .npz when member is None and the model takes several inputs)."""
        names = [member] if member is not None or len(info.model_inputs) == 1 else info.input_names
        return {None if len(info.model_inputs) == 1 else name: self._reader(path, name).rows(start, count)
                for name in names}

    def _reader(self, path: str, member: Optional[str]) -> "_RowReader":
        key = (path, member)
        if key in self._open:
            self._open.move_to_end(key)
            return self._open[key]
        reader = _RowReader(path, member)
        self._open[key] = reader
        while len(self._open) > self._size:
            self._open.popitem(last=False)[1].close()
        return reader

    def close(self) -> None:
        while self._open:
            self._open.popitem()[1].close()


class _RowReader:
    """Rows of one .npy array (a file, or an .npz member) read by seeking past its header."""

    def __init__(self, path: str, member: Optional[str]):
        self.path = path
        self._file = os.fdopen(open_regular(path), "rb")
        self._archive = None
        try:
            if member is not None or path.lower().endswith(".npz"):
                array_files._check_zip_directory(self._file, path)
                self._archive = zipfile.ZipFile(self._file)
                self._stream = self._archive.open(self._member_name(member))
                size = self._archive.getinfo(self._member_name(member)).file_size
            else:
                self._stream = self._file
                size = os.fstat(self._file.fileno()).st_size
            self.shape, self.dtype = _npy_header(self._stream, path if member is None else f"{path}[{member}]")
            self._data = self._stream.tell()
            self._row_bytes = int(np.prod(self.shape[1:], dtype=np.int64)) * self.dtype.itemsize
            if self._data + self.shape[0] * self._row_bytes > size:
                raise InputError(f"{path}: cannot read array (truncated)")
        except (ValueError, OSError, EOFError, SyntaxError, zipfile.BadZipFile, KeyError) as err:
            self.close()
            raise InputError(f"{path}: cannot read array ({first_line(err)})") from None
        except BaseException:
            self.close()
            raise

    def _member_name(self, member: Optional[str]) -> str:
        if member is None:  # the only array, or the one named 'x' or 'input' (as infer reads it)
            return array_files._npz_members(self._archive, self.path)[None].filename
        return member + ".npy"

    def rows(self, start: int, count: int) -> np.ndarray:
        try:
            self._stream.seek(self._data + int(start) * self._row_bytes)
            data = array_files._read_exactly(self._stream, count * self._row_bytes, self.path)
        except (ValueError, OSError, EOFError, zipfile.BadZipFile) as err:
            raise InputError(f"{self.path}: cannot read array ({first_line(err)})") from None
        return np.frombuffer(data, dtype=self.dtype).reshape((count, *self.shape[1:]))

    def close(self) -> None:
        for thing in (getattr(self, "_stream", None), self._archive, self._file):
            if thing is not None:
                try:
                    thing.close()
                except OSError:
                    pass


# Planning ---------------------------------------------------------------------------------------

def _segment(path: str, info: ModelInfo, names, start: int, limits: Limits, allow_paths_outside: bool) -> Segment:
    lower = path.lower()
    if lower.endswith(array_files.ARRAY_EXTENSIONS):
        array = _array_file(path, info, names)
        return Segment(start, array.rows, array=array)
    if lower.endswith(LIST_EXTENSIONS):
        listed = ImageList(path, limits, allow_paths_outside)
        return Segment(start, len(listed), images=listed)
    if lower.endswith(image_files.IMAGE_EXTENSIONS):
        if not os.path.lexists(path):
            raise InputError(f"{path}: no such file")
        return Segment(start, 1, images=[path], image_ids=[display_name(path)])
    extension = os.path.splitext(lower)[1]
    raise InputError(f"{display_name(path)}: unsupported input {extension or '(no extension)'!r}; score reads images "
                     f"({', '.join(image_files.IMAGE_EXTENSIONS)}), folders and globs of them, arrays "
                     f"({', '.join(array_files.ARRAY_EXTENSIONS)}) and lists of image paths "
                     f"({', '.join(LIST_EXTENSIONS)}, column {PATH_COLUMN!r})")


def _array_file(path: str, info: ModelInfo, names) -> ArrayFile:
    """The array file's rows, its header (and each member's) checked against the model."""
    if names is not None and not path.lower().endswith(".npz"):
        raise InputError(f"{path}: the model takes {len(names)} inputs ({', '.join(names)}); give an .npz "
                         "holding one array per input name")
    members = tuple(names) if names is not None else (None,)
    sizes = []
    for member in members:
        reader = _RowReader(path, member)
        try:
            where = path if member is None else f"{path}[{member}]"
            if len(reader.shape) == 0:
                raise InputError(f"{where}: holds a single number, not a batch")
            problem = info.shape_problem(reader.shape, member)
            if problem:
                raise InputError(f"{where}: holds {problem}")
            sizes.append(reader.shape[0])
        finally:
            reader.close()
    if len(set(sizes)) > 1:
        raise InputError(f"{path}: its arrays differ in batch size ("
                         + ", ".join(f"{name} {size}" for name, size in zip(members, sizes)) + ")")
    return ArrayFile(path, members if names is not None else (None,), sizes[0])


def _npy_header(stream, path: str):
    shape, fortran_order, dtype = array_files.npy_header(stream, path)
    if fortran_order and len(shape) > 1:
        raise InputError(f"{path}: the array is stored in Fortran order; score reads rows of C-order arrays "
                         "(save np.ascontiguousarray(x))")
    return shape, dtype


# References -------------------------------------------------------------------------------------

def _segment_parts(segment: Segment, size: int) -> Iterator[Dict[str, np.ndarray]]:
    """The segment's references in order, at most `size` at a time."""
    if isinstance(segment.images, ImageList):
        lo = 0
        for paths, ids in segment.images.chunks():
            for at in range(0, len(paths), size):
                yield _image_refs(segment.start + lo + at, paths[at:at + size], ids[at:at + size])
            lo += len(paths)
        return
    for lo in range(0, segment.count, size):
        yield _segment_refs(segment, lo, min(lo + size, segment.count))


def _segment_refs(segment: Segment, lo: int, hi: int) -> Dict[str, np.ndarray]:
    index = np.arange(segment.start + lo, segment.start + hi, dtype=np.int64)
    if segment.array is not None:
        array = segment.array
        shown = display_name(array.path)
        member = array.members[0] if len(array.members) == 1 else None
        return {"index": index, "id": np.array([f"{shown}[{row}]" for row in range(lo, hi)], dtype=object),
                "path": np.array([os.fsencode(array.path)] * (hi - lo), dtype=object),
                "row": np.arange(lo, hi, dtype=np.int64),
                "member": np.array([member] * (hi - lo), dtype=object)}
    return _image_refs(segment.start + lo, segment.images[lo:hi], segment.image_ids[lo:hi])


def _image_refs(start: int, paths: List[str], ids: List[str]) -> Dict[str, np.ndarray]:
    count = len(paths)
    return {"index": np.arange(start, start + count, dtype=np.int64), "id": np.array(ids, dtype=object),
            "path": np.array([os.fsencode(path) for path in paths], dtype=object),
            "row": np.full(count, NO_ROW, dtype=np.int64),
            "member": np.array([None] * count, dtype=object)}


def _take(refs: Dict[str, np.ndarray], where) -> Dict[str, np.ndarray]:
    return {name: column[where] for name, column in refs.items()}


def _concat(parts: List[Dict[str, np.ndarray]]) -> Dict[str, np.ndarray]:
    if len(parts) == 1:
        return parts[0]
    return {name: np.concatenate([part[name] for part in parts]) for name in parts[0]}


def _runs(refs: Dict[str, np.ndarray], positions: np.ndarray):
    """((path, member), positions) for each run of consecutive rows of one array, in order."""
    run: List[int] = []
    key = None
    for i in positions:
        here = (refs["path"][i], refs["member"][i])
        if run and (here != key or refs["row"][i] != refs["row"][run[-1]] + 1):
            yield key, run
            run = []
        key = here
        run.append(int(i))
    if run:
        yield key, run
