"""Inputs of a scoring job, listed once and read a batch at a time in bounded memory.

`plan_inputs` turns the command line's INPUTS (images, folders and globs of them, .npy / .npz
arrays, Parquet or CSV lists of image paths) into an InputPlan: every input gets a position
(`index`, its place in the listing) and an `id` (the image's path, or `file.npy[row]` as `infer`
names array rows); nothing is read but array headers, and lists of image paths a chunk of rows at
a time (checked and counted, not kept: each pass over a list reads it again). `refs` then yields
the inputs as small columnar batches of references (index, id, path, row, member) and `load_refs`
reads one such batch: each image decoded and preprocessed as `infer` does (runtime/input_files.py),
each array row read by seeking into its file, never the whole array. The references are plain columns, so the
same batch can travel through Ray Data to another process and be read there (runtime/ray_scoring.py).

Command-line mistakes (a missing file, a glob with no match, an array of the wrong shape, a list
path out of the list's folder) are InputErrors raised by plan_inputs before anything is scored. A
single input that cannot be read (a corrupt image, a row with NaN) is reported per input by
load_refs, for the caller to skip or stop.
"""

import csv
import io
import itertools
import os
import zipfile
from collections import OrderedDict
from dataclasses import dataclass
from typing import Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from . import array_files, image_files, input_files
from .errors import InputError, first_line
from .safe_files import open_regular, valid_text as display_name
from .limits import DEFAULT, Limits
from .metadata import ModelInfo

LIST_EXTENSIONS = (".parquet", ".csv")
# The column of a Parquet / CSV list that holds image paths (or its only column), and its optional ids.
PATH_COLUMN = "path"
ID_COLUMN = "id"
NO_ROW = -1  # the `row` of an image reference
# Array files a process keeps open at once (reading runs of rows from the same few files).
OPEN_READERS = 4
REF_COLUMNS = ("index", "id", "path", "row", "member")
# Rows of a list read at a time: the list is streamed, never held whole, and a batch of rows
# with a path and an id of at most LIST_VALUE_BYTES each stays within a few MiB (docs/DESIGN.md: Scoring).
LIST_READ_ROWS = 2048
LIST_VALUE_BYTES = 4096  # PATH_MAX on Linux: no longer path can be opened
LIST_SIZE_ROWS = 65_536  # rows per batch when only the decoded size of a Parquet list is counted
# Folders of listed images whose real path is remembered while a list is read (a bounded cache).
LIST_FOLDER_CACHE = 4096
# pyarrow reads a Parquet list's pages through a buffer of this size instead of whole column chunks.
PARQUET_BUFFER = 2**20


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


class ImageList:
    """The images of a Parquet or CSV list, read LIST_READ_ROWS rows at a time: once when planned
    (counting and checking every row) and again on each pass over them; nothing per row is kept.

    Its `path` column (or only column) holds image paths relative to the list's own folder, its
    optional `id` column the ids (else the paths as listed). A path that leaves the folder (an
    absolute path elsewhere, `..`, a symbolic link pointing out) is refused unless allow_outside.
    The decoded rows count against limits.input_mb: a CSV's bytes, a Parquet list's decoded
    path and id columns (a small Parquet file can hold a hundred million rows)."""

    def __init__(self, path: str, limits: Limits = DEFAULT, allow_outside: bool = False):
        self.path = path
        self.limits = limits
        self.allow_outside = allow_outside
        self.folder = os.path.dirname(path)
        self._absolute = os.path.abspath(self.folder)
        self._inside = os.path.join(self._absolute, "")  # the folder as a prefix of the paths inside it
        self._signature: Optional[Tuple[int, ...]] = None  # the file read when planned: (device, inode, size, mtime)
        self._planned = False
        self.rows = 0
        with self._open() as f:  # the size first: a list over the limit is refused before any row is checked
            if self.path.lower().endswith(".csv"):
                self._check_size(os.fstat(f.fileno()).st_size, "its file holds")
            else:
                for _ in self._parquet_rows(f, decode=False):
                    pass
        rows = sum(len(paths) for paths, _ in self.chunks())
        self.rows, self._planned = rows, True

    def __len__(self) -> int:
        return self.rows

    def __iter__(self) -> Iterator[str]:
        """The image paths, in order (what InputPlan.fingerprint digests)."""
        for paths, _ in self.chunks():
            yield from paths

    def chunks(self) -> Iterator[Tuple[List[str], List[str]]]:
        """(paths, ids) of up to LIST_READ_ROWS rows at a time, every row checked again: a list
        rewritten since it was planned is refused rather than mixed in."""
        planned = self._planned
        places = _Places(self._absolute)  # folders are resolved afresh on every pass
        number = 0
        with self._open() as f:
            read = self._csv_rows if self.path.lower().endswith(".csv") else self._parquet_rows
            for entries, ids in read(f):
                paths, shown = [], []
                for entry, name in zip(entries, ids if ids is not None else itertools.repeat(None)):
                    number += 1
                    if entry is None or str(entry) == "":
                        raise InputError(f"{self.path}: row {number} has no path")
                    entry = str(entry)
                    if "\0" in entry:  # no file name holds one; os calls would raise ValueError
                        raise InputError(f"{self.path}: row {number}: the path holds a NUL character")
                    paths.append(self._resolve(entry, number, places))
                    shown.append(_valid_text(str(name) if name is not None else entry))
                if planned and number > self.rows:
                    break
                yield paths, shown
        if planned and number != self.rows:
            raise self._changed()

    def _open(self):
        fd = open_regular(self.path)
        info = os.fstat(fd)
        signature = (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns)
        if self._signature is not None and signature != self._signature:
            os.close(fd)
            raise self._changed()
        self._signature = signature
        return os.fdopen(fd, "rb")

    def _changed(self) -> InputError:
        return InputError(f"{self.path}: the list changed since the job was planned; give the same list again")

    def _resolve(self, entry: str, number: int, places: "_Places") -> str:
        """The path of the listed image `entry`, checked to stay inside the list's folder."""
        if self.allow_outside:
            return os.path.join(self.folder, entry)
        if _plain_relative(entry):
            path = self._inside + entry
        else:
            path = os.path.normpath(os.path.join(self._absolute, entry))
        if path == self._absolute:  # the folder itself: not an image, its row says so
            return path
        if not places.inside(path):  # judged by real paths: the folder may itself be reached through a link
            how = "is outside the list's folder (list paths are relative to it)" if not path.startswith(self._inside) \
                else "leads outside the list's folder through a symbolic link"
            raise InputError(f"{self.path}: row {number}: {display_name(entry)!r} {how}; --allow-paths-outside reads "
                             "paths anywhere")
        return path

    def _columns(self, names: Sequence[str]) -> Tuple[str, Optional[str]]:
        """(the path column, the id column or None) among the columns read."""
        if PATH_COLUMN in names:
            path_column = PATH_COLUMN
        elif len(set(names)) == 1:
            path_column = names[0]
        else:
            raise InputError(f"{self.path}: a list of images needs a column named {PATH_COLUMN!r} (it has "
                             f"{', '.join(list(dict.fromkeys(names))[:8])})")
        return path_column, ID_COLUMN if ID_COLUMN in names else None

    def _csv_rows(self, f) -> Iterator[Tuple[list, Optional[list]]]:
        self._check_size(os.fstat(f.fileno()).st_size, "its file holds")
        reader = csv.reader(io.TextIOWrapper(f, encoding="utf-8", newline=""))
        try:
            header = next(reader, None)
            if not header:
                raise InputError(f"{self.path}: empty list (a CSV needs a header row naming the {PATH_COLUMN!r} "
                                 "column)")
            where = {name: j for j, name in enumerate(header)}  # a repeated name: its last column
            path_column, id_column = self._columns(list(where))
            p, i = where[path_column], where.get(id_column)
            number = 0
            while True:
                entries: list = []
                ids: Optional[list] = None if i is None else []
                for row in itertools.islice(reader, LIST_READ_ROWS):  # only the two cells are kept
                    number += 1
                    entries.append(self._short(row[p] if p < len(row) else None, number, "path"))
                    if ids is not None:
                        ids.append(self._short(row[i] if i < len(row) else None, number, "id"))
                if not entries:
                    return
                yield entries, ids
        except (UnicodeDecodeError, csv.Error) as err:
            raise InputError(f"{self.path}: cannot read CSV ({first_line(err)})") from None

    def _short(self, value: Optional[str], number: int, what: str) -> Optional[str]:
        if value is not None and len(value) > LIST_VALUE_BYTES // 4 and len(value.encode()) > LIST_VALUE_BYTES:
            raise self._too_long(number, what)
        return value

    def _too_long(self, number: int, what: str) -> InputError:
        return InputError(f"{self.path}: row {number}: its {what} is longer than {LIST_VALUE_BYTES:,} bytes")

    def _parquet_rows(self, f, decode: bool = True) -> Iterator[Tuple[list, Optional[list]]]:
        """(paths, ids) as listed, a batch at a time; decode=False only checks the decoded size.

        String columns are read as dictionaries (pyarrow's read_dictionary): a value repeated in a
        dictionary-encoded file is expanded only after its length has been counted, so a file of
        a few KB cannot expand into gigabytes within one batch."""
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError:
            raise InputError(f"{self.path}: reading a Parquet list needs pyarrow (pip install -e \".[score]\")") \
                from None
        try:
            schema = pq.ParquetFile(f)
            names = schema.schema_arrow.names
            wanted = [name for name in (PATH_COLUMN, ID_COLUMN) if name in names] or names[:2]
            path_column, id_column = self._columns(wanted)
            for name in wanted:
                problem = _list_column_problem(schema.schema_arrow.field(name).type)
                if problem:
                    raise InputError(f"{self.path}: column {name!r} {problem}")
            # Pages as the file states them, before any is inflated; then the decoded rows as read.
            metadata = schema.metadata
            stored = sum(group.column(j).total_uncompressed_size
                         for group in map(metadata.row_group, range(metadata.num_row_groups))
                         for j in range(group.num_columns) if group.column(j).path_in_schema in wanted)
            self._check_size(stored, "its path and id columns hold")
            strings = [name for name in wanted if _is_string(schema.schema_arrow.field(name).type)]
            reader = pq.ParquetFile(f, metadata=metadata, read_dictionary=strings, buffer_size=PARQUET_BUFFER)
            decoded, number = 0, 0
            for batch in reader.iter_batches(batch_size=LIST_READ_ROWS if decode else LIST_SIZE_ROWS,
                                             columns=wanted, use_threads=False):
                columns = {}
                for name in dict.fromkeys((path_column, id_column) if id_column else (path_column,)):
                    size, longest = _expanded_size(batch.column(name))
                    decoded += size
                    self._check_size(decoded, "its path and id columns decode to more than")
                    if longest > LIST_VALUE_BYTES:
                        raise self._too_long(number + 1 + int(np.argmax(_value_lengths(batch.column(name))
                                                                        > LIST_VALUE_BYTES)),
                                             "path" if name == path_column else "id")
                    columns[name] = batch.column(name)
                number += batch.num_rows
                if decode:
                    yield tuple(None if name is None else _plain(columns[name], pa).to_pylist()
                                for name in (path_column, id_column))
        except InputError:
            raise
        except Exception as err:  # noqa: BLE001 - pyarrow raises many types for a corrupt file
            raise InputError(f"{self.path}: cannot read Parquet ({first_line(err)})") from None

    def _check_size(self, size: int, what: str) -> None:
        if size > self.limits.input_bytes:
            raise InputError(f"{self.path}: {what} {size / 2**20:.1f} MiB, over the input_mb limit "
                             f"({self.limits.input_mb:g} MiB); raise it with --limit input_mb=N if you trust this list")

class _Places:
    """Whether paths lexically inside a folder are really inside it: the real path of each
    path's folder (resolved once per folder, a bounded cache), then of the file itself where it
    is a link: one lstat per path."""

    def __init__(self, folder: str):
        self.root = os.path.join(os.path.realpath(folder), "")
        self.folders: Dict[str, str] = {}

    def inside(self, path: str) -> bool:
        folder, _, name = path.rpartition(os.sep)
        real_folder = self.folders.get(folder)
        if real_folder is None:
            if len(self.folders) >= LIST_FOLDER_CACHE:
                self.folders.clear()
            real_folder = self.folders[folder] = os.path.join(os.path.realpath(folder or os.sep), "")
        real = real_folder + name
        if os.path.islink(real):
            real = os.path.join(os.path.realpath(real), "")
        return real.startswith(self.root)


def _plain_relative(entry: str) -> bool:
    """Whether `entry` is a relative path already in normal form (no `.`, `..`, `//` or trailing
    separator), so joining it to a folder needs no os.path.normpath (the common case, made cheap)."""
    return os.sep == "/" and not entry.startswith((".", "/")) and "//" not in entry and "/." not in entry \
        and not entry.endswith("/")


def _is_string(kind) -> bool:
    import pyarrow as pa

    return pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_binary(kind) \
        or pa.types.is_large_binary(kind)


def _offsets(strings) -> np.ndarray:
    """The offsets of a string or binary array's values (a view of its buffer)."""
    import pyarrow as pa

    wide = pa.types.is_large_string(strings.type) or pa.types.is_large_binary(strings.type)
    return np.frombuffer(strings.buffers()[1], np.int64 if wide else np.int32)[strings.offset:
                                                                              strings.offset + len(strings) + 1]


def _value_lengths(column) -> np.ndarray:
    """The byte length of each value of a string column (or a dictionary of strings), from the
    offsets of the values it refers to: nothing is expanded."""
    import pyarrow as pa

    if not isinstance(column, pa.DictionaryArray):
        return np.diff(_offsets(column)).astype(np.int64)
    if not len(column.dictionary):  # every row null
        return np.zeros(len(column), np.int64)
    offsets = _offsets(column.dictionary).astype(np.int64)
    used = column.indices.fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
    return offsets[used + 1] - offsets[used]


def _expanded_size(column) -> Tuple[int, int]:
    """(bytes, longest value) of a batch's column once its values are expanded (its type checked
    by _list_column_problem)."""
    import pyarrow as pa

    kind = column.type.value_type if isinstance(column, pa.DictionaryArray) else column.type
    if _is_string(kind):
        lengths = _value_lengths(column)
        return int(lengths.sum()) + 8 * len(column), int(lengths.max(initial=0))
    return len(column) * (1 + (0 if pa.types.is_null(kind) else kind.bit_width // 8)), 0


def _list_column_problem(kind) -> Optional[str]:
    """Why a Parquet list's path or id column of this Arrow type cannot be read, or None: text,
    numbers and other fixed-width values (each becomes its str()) are read; nested values are not."""
    import pyarrow as pa

    if pa.types.is_dictionary(kind):
        kind = kind.value_type
    if _is_string(kind) or pa.types.is_null(kind):
        return None
    try:
        kind.bit_width
    except ValueError:
        return f"holds {kind} values; a list's paths and ids are text"
    return None


def _plain(column, pa):
    """A dictionary column's values expanded (after _expanded_size has counted them)."""
    return column.dictionary.take(column.indices) if isinstance(column, pa.DictionaryArray) else column


def _valid_text(text: str) -> str:
    return text if text.isascii() else display_name(text)


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
