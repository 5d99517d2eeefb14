"""Lists of image paths to score: a Parquet or CSV file whose `path` column (or only column)
holds image paths relative to the list's folder, streamed LIST_READ_ROWS rows at a time, each
path checked to stay inside the folder. score/input_plan.py makes each list one segment of a job.
"""

import csv
import io
import itertools
import os
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from ..runtime.errors import InputError, first_line
from ..runtime.safe_files import open_regular, valid_text as display_name
from ..runtime.limits import DEFAULT, Limits

LIST_EXTENSIONS = (".parquet", ".csv")
# The column of a Parquet / CSV list that holds image paths (or its only column), and its optional ids.
PATH_COLUMN = "path"
ID_COLUMN = "id"
# Rows of a list read at a time: the list is streamed, never held whole, and a batch of rows
# with a path and an id of at most LIST_VALUE_BYTES each stays within a few MiB (docs/DESIGN.md: Scoring).
LIST_READ_ROWS = 2048
LIST_VALUE_BYTES = 4096  # PATH_MAX on Linux: no longer path can be opened
LIST_SIZE_ROWS = 65_536  # rows per batch when only the decoded size of a Parquet list is counted
# Folders of listed images whose real path is remembered while a list is read (a bounded cache).
LIST_FOLDER_CACHE = 4096
# pyarrow reads a Parquet list's pages through a buffer of this size instead of whole column chunks.
PARQUET_BUFFER = 2**20


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

