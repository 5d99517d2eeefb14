"""A score job's checkpoint: the folder beside the output (OUT.parts) where a job writes its
finished rows as Parquet part files (each complete or absent), with the job's identity in
`_job.json`; `--resume` reads the indices already there and skips them. Also where a job may
write at all (`check_output`), and Ctrl-C and SIGTERM held off while a part is written whole.
"""

import contextlib
import hashlib
import json
import os
import re
import signal
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import List, Optional

import numpy as np

from ..runtime.errors import InputError, first_line

try:
    import pyarrow as pa
    import pyarrow.parquet as pq
except ImportError:  # the CLI says which extra to install (job.require_pyarrow)
    pa = pq = None

JOB_FILE = "_job.json"
JOB_FILE_LIMIT = 2**20
INPUTS_FILE = "_inputs.bin"  # one digest per input file (InputPlan.fingerprint), to name a changed one
LOCK_FILE = "_lock"
PART_PREFIX = "part-"
# Every name a checkpoint folder holds is one of these, all written by score (the Ray engine's
# parts through RayPartNames); score removes nothing else, and refuses a folder holding anything else.
LOCAL_PART = re.compile(r"part-\d{6}\.parquet")
PART_NAMES = re.compile(r"part-\d{6}\.parquet|ray-[0-9A-Za-z_-]+\.parquet")
OWN_NAMES = re.compile(rf"{PART_NAMES.pattern}|_job\.json|_inputs\.bin|_lock")
OWN_TEMPORARY = re.compile(r"\.part-\d{6}\.parquet\.tmp|\.(_job\.json|_inputs\.bin)\.\d+\.\w+\.tmp")


@dataclass
class JobIdentity:
    """What must match for `--resume` to continue a job: `fields` (written to _job.json: the
    model's sha256, the inputs' digest, the options) and one digest per input file (`files`,
    written to _inputs.bin) so that a refusal can name the file that changed."""

    fields: dict
    files: bytes
    plan: object  # the InputPlan, to name a file by its position


def job_identity(model_path, plan, options, engine: str) -> JobIdentity:
    """The identity of a job: the model's bytes, the inputs (names, sizes, content: see
    InputPlan.fingerprint), the options and the engine."""
    digest = hashlib.sha256()
    with open(model_path, "rb") as f:
        for block in iter(lambda: f.read(2**20), b""):
            digest.update(block)
    files = bytearray()
    inputs = plan.fingerprint(lambda name, short: files.extend(short))
    fields = {"model_sha256": digest.hexdigest(), "inputs": inputs, "total": plan.total, "engine": engine,
              **asdict(options)}
    return JobIdentity(json.loads(json.dumps(fields)), bytes(files), plan)  # as read back: tuples are lists


def checkpoint_folder(out) -> Path:
    out = Path(os.path.abspath(out))
    return out.with_name(out.name + ".parts")


def check_output(out, engine: str = "local", resume: bool = False, overwrite: bool = False) -> Path:
    """`out` (absolute) once it is known the job may write there: a `.parquet` name (a file for
    the local engine; for Ray a folder, named with `.parquet` or no suffix), no symbolic link at
    OUT or OUT.parts, OUT.parts a folder if it exists; a finished OUT is replaced only with
    `overwrite`, an unfinished job (OUT.parts) continued only with `resume` (or started again
    with `overwrite`); `resume` with nothing to continue is refused."""
    from ..runtime.safe_files import check_writable_target

    out = Path(os.path.abspath(out))
    if resume and overwrite:
        raise InputError("--resume continues the unfinished job, --overwrite starts it again: choose one")
    suffix = out.suffix.lower()
    if engine == "local":
        if suffix != ".parquet":
            raise InputError(f"--out {out.name}: score writes Parquet; give a name ending in .parquet")
        check_writable_target(out)
    else:
        from .ray_engine import check_output_folder

        if suffix not in ("", ".parquet"):
            raise InputError(f"--out {out.name}: the Ray engine writes a folder of Parquet files; name it "
                             "with .parquet or no suffix")
        check_output_folder(out)
    finished = _finished(out)
    folder = checkpoint_folder(out)
    _check_folder(folder)
    unfinished = folder.exists()
    if resume and not unfinished:
        if finished:
            raise _finished_refusal(out, resume=True)
        raise _nothing_to_resume(folder)
    if not resume and not overwrite:
        if unfinished:
            raise _unfinished_refusal(folder)
        if finished:
            raise _finished_refusal(out, resume=False)
    return out


def _finished_refusal(out: Path, resume: bool) -> InputError:
    """A finished OUT is replaced only with --overwrite (checked before the lock and again under it)."""
    if resume:
        return InputError(f"{out}: is finished, nothing to resume; --overwrite scores it again")
    return InputError(f"{out}: exists; --overwrite replaces it (or choose another --out)")


def _unfinished_refusal(folder: Path) -> InputError:
    return InputError(f"{folder} holds an unfinished job's rows; continue it with --resume, or start again with "
                      "--overwrite")


def _nothing_to_resume(folder: Path) -> InputError:
    return InputError(f"--resume: no unfinished job at {folder}; run without --resume to start one")


def _finished(out: Path) -> bool:
    """A finished job's output at `out`: the local engine's file, or the Ray engine's folder of files."""
    return any(True for _ in out.iterdir()) if out.is_dir() else os.path.lexists(out)


def _check_folder(folder: Path) -> None:
    if folder.is_symlink():
        raise InputError(f"{folder}: is a symbolic link; mcdrop does not write or delete through links "
                         "(remove the link)")
    if folder.exists() and not folder.is_dir():
        raise InputError(f"{folder}: is a file, not a checkpoint folder mcdrop made; move it away")


def read_job(folder) -> Optional[dict]:
    """The _job.json of a checkpoint folder (None when there is none), as a one-line InputError
    when it cannot be read."""
    from ..runtime.safe_files import read_regular

    path = Path(folder) / JOB_FILE
    if not os.path.lexists(path):
        return None
    hint = "this checkpoint cannot be continued: --overwrite starts the job again"
    try:
        job = json.loads(read_regular(path, JOB_FILE_LIMIT, what="job file"))
        if not isinstance(job, dict):
            raise ValueError("not a JSON object")
    except InputError as err:
        raise InputError(f"{err}; {hint}") from None
    except ValueError as err:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise InputError(f"{path}: corrupt ({first_line(err)}); {hint}") from None
    return job


class Checkpoint:
    """The folder of a job's finished rows (OUT.parts): Parquet part files, each written under a
    temporary name and renamed once closed, so each is complete or absent; `_job.json` and
    `_inputs.bin` say what job; `_lock` is held while a process writes there.

    mcdrop removes only names it writes (OWN_NAMES, OWN_TEMPORARY); a folder holding anything
    else, or a link, is refused rather than cleaned."""

    def __init__(self, folder: Path, job: JobIdentity, resume: bool, overwrite: bool = False):
        from ..runtime.safe_files import ExclusiveLock

        self.folder = Path(os.path.abspath(folder))
        self.out = self.folder.with_name(self.folder.name[: -len(".parts")])
        self.job = job
        self.identity = job.fields
        _check_folder(self.folder)
        created = False
        if not self.folder.exists():
            if resume:
                raise _nothing_to_resume(self.folder)
            try:
                self.folder.mkdir()
                created = True
            except FileExistsError:
                _check_folder(self.folder)
            except OSError as err:
                raise InputError(f"{self.folder}: cannot write here ({err.strerror or err})") from None
        self._lock = ExclusiveLock(self.folder / LOCK_FILE, f"another score job is writing {self.out}")
        try:
            self._check_names()
            if not overwrite and not (self.folder / JOB_FILE).exists() and _finished(self.out):
                # another job finished OUT since check_output looked (it removes its checkpoint last)
                raise _finished_refusal(self.out, resume)
            if not created:
                self._open_existing(resume, overwrite)
            if not (self.folder / JOB_FILE).exists():
                self._write(INPUTS_FILE, job.files)
                self._write(JOB_FILE, json.dumps(self.identity, indent=2).encode())
        except BaseException:
            self.remove() if created else self.release()
            raise

    def _open_existing(self, resume: bool, overwrite: bool) -> None:
        if overwrite:
            self._remove_files()
            return
        if not resume:
            raise _unfinished_refusal(self.folder)
        earlier = read_job(self.folder)
        if earlier is None:
            if self.parts():
                raise InputError(f"{self.folder}: holds rows but no {JOB_FILE}, so not which job they belong to; "
                                 "--overwrite starts the job again")
            return  # a job stopped before it described itself: nothing of it to keep
        changed = [key for key in self.identity if earlier.get(key) != self.identity[key]]
        if "inputs" in changed:
            raise InputError(f"--resume: {self._changed_input()} since the unfinished job in {self.folder} started; "
                             "give the inputs it was started with, or --overwrite to start again")
        if changed:
            raise InputError(f"--resume: the unfinished job in {self.folder} differs in {', '.join(changed)}; run "
                             "it with the same model, inputs and options (its mask seed: "
                             f"{earlier.get('mask_seed')}), or --overwrite to start again")

    def _changed_input(self) -> str:
        """Which input file differs from the one the job started with, as a phrase."""
        from ..runtime.safe_files import read_regular

        width = self.job.plan.DIGEST_BYTES
        try:
            before = read_regular(self.folder / INPUTS_FILE, len(self.job.files) + 2**20, what="inputs file")
        except InputError:
            return "the inputs have changed"
        now = self.job.files
        for position in range(min(len(before), len(now)) // width):
            if before[position * width:(position + 1) * width] != now[position * width:(position + 1) * width]:
                for i, (_, _, shown) in enumerate(self.job.plan.input_files()):
                    if i == position:
                        return f"{shown} has changed (its size, time or content)"
        return f"the inputs have changed ({len(before) // width} files then, {len(now) // width} now)"

    def _check_names(self) -> None:
        """Refuse a folder holding anything mcdrop did not write (it would never delete that)."""
        for entry in os.scandir(self.folder):
            own = OWN_NAMES.fullmatch(entry.name) or OWN_TEMPORARY.fullmatch(entry.name)
            if not own or entry.is_symlink() or not entry.is_file(follow_symlinks=False):
                raise InputError(f"{self.folder}: holds {entry.name!r}, which score did not write; move it away "
                                 "(score deletes only its own files)")

    def _write(self, name: str, data: bytes) -> None:
        from ..runtime.safe_files import atomic_writer

        try:
            with atomic_writer(self.folder / name) as f:
                f.write(data)
        except OSError as err:
            raise InputError(f"{self.folder}: cannot write ({err.strerror or first_line(err)})") from None

    def _own(self, pattern) -> List[Path]:
        return sorted(self.folder / name for name in os.listdir(self.folder) if pattern.fullmatch(name))

    def parts(self) -> List[Path]:
        """The complete part files, in the order written. A temporary or torn part of this
        checkpoint (a crash cut it short) is removed; nothing else is touched."""
        for path in self._own(OWN_TEMPORARY):
            remove_file(path)
        found = []
        for path in self._own(PART_NAMES):
            try:
                pq.read_metadata(path)
            except Exception:  # noqa: BLE001 - unreadable: its rows are scored again
                remove_file(path)
                continue
            found.append(path)
        return found

    def next_part(self) -> int:
        numbers = [int(p.name[len(PART_PREFIX):-len(".parquet")]) for p in self._own(LOCAL_PART)]
        return max(numbers, default=-1) + 1

    def done(self) -> np.ndarray:
        """bool [total]: the indices that already have a row."""
        done = np.zeros(self.identity["total"], bool)
        for path in self.parts():
            index = read_part(path, ["index"]).column("index").to_numpy()
            if len(index) and (index.min() < 0 or index.max() >= len(done)):
                raise InputError(f"{path}: holds rows of other inputs; --overwrite starts the job again")
            done[index] = True
        return done

    def release(self, remove_lock: bool = True) -> None:
        """Stop writing here, leaving the rows for --resume."""
        self._lock.release(remove=remove_lock)

    def discard_if_empty(self) -> None:
        """After a failure: a checkpoint without rows is nothing to resume, so it goes."""
        if self.folder.is_dir() and not self.parts():
            self.remove()
        else:
            self.release()

    def remove(self) -> None:
        """Remove this checkpoint's own files and then its folder (once the output is written)."""
        self._remove_files()
        self._lock.release()
        with contextlib.suppress(OSError):
            self.folder.rmdir()

    def _remove_files(self) -> None:
        for path in self._own(OWN_NAMES) + self._own(OWN_TEMPORARY):
            if path.name != LOCK_FILE:
                remove_file(path)


def remove_file(path: Path) -> None:
    """Unlink one of the checkpoint's own files (never through a link, never a folder)."""
    with contextlib.suppress(FileNotFoundError):
        if path.is_file() and not path.is_symlink():
            path.unlink()


@contextlib.contextmanager
def signals_deferred():
    """Ctrl-C (SIGINT) and SIGTERM wait until the block is done, so that a part file is written
    or closed whole and the interruption comes after. Python runs signal handlers in the main
    thread only, so only there is there anything to defer."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list = []
    previous = {}
    for number in (signal.SIGINT, signal.SIGTERM):
        handler = signal.getsignal(number)
        if handler is not None:  # None: installed outside Python, left alone
            previous[number] = signal.signal(number, lambda n, frame: caught.append((n, frame)))
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
        if caught:
            number, frame = caught[0]
            handler = previous[number]
            if callable(handler):
                handler(number, frame)  # KeyboardInterrupt, or the CLI's SystemExit for SIGTERM
            elif handler == signal.SIG_DFL:
                os.kill(os.getpid(), number)



def read_part(path: Path, columns=None) -> "pa.Table":
    # Single-threaded: pyarrow's reader threads keep 25-50 MB of heaps resident for good
    # (measured in docs/DESIGN.md: Scoring), more than a part's own rows.
    return pq.ParquetFile(path).read(columns=columns, use_threads=False)
