"""A score job's rows on disk: `PartWriter` appends them to the checkpoint's part files,
`merge_parts` writes the parts as the one output file, `read_scores` reads an output back.
"""

import contextlib
import os
import time
from pathlib import Path

import numpy as np

from ..runtime.errors import InputError, first_line
from ..runtime.safe_files import sync_folder
from .checkpoint import PART_NAMES, PART_PREFIX, Checkpoint, remove_file, checkpoint_folder, read_part
from .job import require_pyarrow

try:
    import pyarrow as pa
    import pyarrow.parquet as pq
except ImportError:  # the CLI says which extra to install (job.require_pyarrow)
    pa = pq = None

# A part file is closed, and so becomes a checkpoint, once it holds this many bytes of rows or
# PART_ROWS rows, or PART_SECONDS after it was opened; the merged output has one row group per
# part. They bound what a crash (SIGKILL, power cut) loses and what merging holds in memory (one
# part); Ctrl-C and SIGTERM close the open part and lose only the batch being scored
# (docs/DESIGN.md: Scoring).
PART_BYTES = 16 * 2**20
PART_ROWS = 2048
PART_SECONDS = 30


class PartWriter:
    """Appends tables to the checkpoint's part files, closing one at PART_ROWS rows, PART_BYTES or
    PART_SECONDS after it was opened; flush() closes the open one (Ctrl-C and SIGTERM do)."""

    def __init__(self, checkpoint: Checkpoint, schema: "pa.Schema"):
        self.checkpoint = checkpoint
        self.schema = schema
        self._next = checkpoint.next_part()
        self._writer = self._file = None
        self._rows = self._bytes = 0
        self._opened = 0.0
        self.broken = False  # a write failed: the open part is unusable

    def write(self, table: "pa.Table") -> None:
        try:
            if self._writer is None:
                self._temporary = self.checkpoint.folder / f".{self._name()}.tmp"
                self._file = open(self._temporary, "xb")  # exclusive: never through a planted link
                self._opened = time.monotonic()
                self._writer = pq.ParquetWriter(self._file, self.schema)
            self._writer.write_table(table.cast(self.schema))
        except OSError as err:
            self.broken = True
            self.abandon()
            raise self._error(err) from None
        self._rows += table.num_rows
        self._bytes += table.nbytes
        if self._rows >= PART_ROWS or self._bytes >= PART_BYTES or time.monotonic() - self._opened >= PART_SECONDS:
            self.flush()

    def flush(self) -> None:
        """Close the open part: its rows become a checkpoint."""
        if self._writer is None:
            if self._file is not None:  # opened, but the Parquet writer never started: nothing to keep
                self.abandon()
            return
        try:
            self._writer.close()
            self._file.flush()
            os.fsync(self._file.fileno())  # the part is on disk before its name says it is complete
            self._file.close()
            os.replace(self._temporary, self.checkpoint.folder / self._name())
        except OSError as err:
            self.broken = True
            self.abandon()
            raise self._error(err) from None
        sync_folder(self.checkpoint.folder)
        self._writer = self._file = None
        self._next, self._rows, self._bytes = self._next + 1, 0, 0

    def stop(self) -> None:
        """The job stops: keep the rows written so far (close the part), unless a write failed."""
        if self.broken:
            self.abandon()
        else:
            self.flush()

    def abandon(self) -> None:
        for thing in (self._writer, self._file):
            with contextlib.suppress(Exception):
                if thing is not None:
                    thing.close()
        if self._writer is not None or self._file is not None:
            remove_file(self._temporary)
        self._writer = self._file = None

    def _name(self) -> str:
        return f"{PART_PREFIX}{self._next:06d}.parquet"

    def _error(self, err: OSError) -> InputError:
        return InputError(f"{self.checkpoint.folder}: cannot write ({err.strerror or first_line(err)}); the rows "
                          "written before are kept: --resume continues once it can write there")


def merge_parts(checkpoint: Checkpoint, out: Path, schema: "pa.Schema") -> int:
    """Write the parts, in index order, as one Parquet file at `out` (one row group per part),
    through a temporary file. Returns the row count; the checkpoint stays (the caller removes it)."""
    from ..runtime.safe_files import atomic_writer

    parts = checkpoint.parts()
    firsts = [read_part(path, ["index"]).column("index").to_numpy()[:1] for path in parts]
    order = sorted(range(len(parts)), key=lambda i: int(firsts[i][0]) if len(firsts[i]) else -1)
    rows = 0
    try:
        with atomic_writer(out) as f:
            with pq.ParquetWriter(f, schema) as writer:
                for i in order:
                    table = read_part(parts[i]).cast(schema)
                    writer.write_table(table, row_group_size=max(1, table.num_rows))
                    rows += table.num_rows
    except OSError as err:
        raise InputError(f"{out}: cannot write ({err.strerror or first_line(err)}); the scored rows stay in "
                         f"{checkpoint.folder}: --resume writes the output once it can") from None
    return rows


def stopped_message(out, total: int, overwrite: bool = False) -> str:
    """What to say when a job was interrupted: the rows kept in OUT.parts and how to continue.
    Reads only (another job may hold the checkpoint by now)."""
    folder = checkpoint_folder(out)
    if folder.is_symlink() or not folder.is_dir():
        return "interrupted"
    rows = 0
    for name in os.listdir(folder):
        if PART_NAMES.fullmatch(name):
            with contextlib.suppress(Exception):
                rows += pq.read_metadata(folder / name).num_rows
    how = "--resume in place of --overwrite" if overwrite else "--resume"
    return f"interrupted; {rows:,} of {total:,} inputs are scored and kept in {folder}: continue with the same " \
           f"command and {how}"


def read_scores(path) -> "pa.Table":
    """A score output (the local engine's file or the Ray engine's folder) in index order."""
    require_pyarrow()
    table = pq.read_table(path)
    return table.take(np.argsort(table.column("index").to_numpy(), kind="stable"))
