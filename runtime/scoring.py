"""Score many inputs into Parquet: one row per input with its label, mean, variance, measures and
UNCERTAIN flag, then the standard errors (confidence_se, mean_se, variance_se, <measure>_se), in
bounded memory, resumable after a crash.

The pieces both engines share:
- `Scorer`: one MCSession and the job's options; turns a batch of input references
  (runtime/sources.py) into an Arrow table of result rows with a fixed schema. Inputs are
  scored with one shared mask set (runtime/masks.py), so a row depends on its input, the mask
  seed and the passes alone: any batch size, worker count or engine gives the same rows, and a
  retried batch reproduces its rows.
- `Checkpoint`: the folder beside the output where a job writes its finished rows as Parquet
  part files (each complete or absent), with the job's identity in `_job.json`; `--resume` reads
  the indices already there and skips them.

`score_local` is the local engine (one process, one session using every core); the Ray engine is
runtime/ray_scoring.py. Needs pyarrow (the `score` extra).
"""

import contextlib
import hashlib
import json
import os
import re
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .checks import positive_int
from .errors import InputError, first_line
from .safe_files import sync_folder
from .limits import DEFAULT, Limits

try:
    import pyarrow as pa
    import pyarrow.parquet as pq
except ImportError:  # the CLI says which extra to install
    pa = pq = None

ON_ERROR = ("skip", "stop")
# Measures written per head kind besides label, confidence, mean and variance (std is the
# square root of variance, top-k is read off mean; neither is repeated).
MEASURES = {
    "categorical": ("margin", "predictive_entropy", "expected_entropy", "mutual_information", "variation_ratio"),
    "sigmoid": ("entropy", "expected_entropy", "mutual_information"),
    "regression": ("std",),
}
# A part file is closed, and so becomes a checkpoint, once it holds this many bytes of rows or
# PART_ROWS rows, or PART_SECONDS after it was opened; the merged output has one row group per
# part. They bound what a crash (SIGKILL, power cut) loses and what merging holds in memory (one
# part); Ctrl-C and SIGTERM close the open part and lose only the batch being scored
# (docs/DESIGN.md: Scoring).
PART_BYTES = 16 * 2**20
PART_ROWS = 2048
PART_SECONDS = 30
# What the local engine holds besides the session's max_chunk_bytes: the open part's rows and the
# writer's buffers, then one part while merging (PART_BYTES each), two loaded batches, pyarrow's
# pools. Measured in docs/DESIGN.md: Scoring; tests/test_score.py holds a 100,000-input job to it.
MEMORY_OVERHEAD = 96 * 2**20
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
METADATA_KEY = b"mcdrop"


def require_pyarrow() -> None:
    if pa is None:
        raise InputError('scoring to Parquet needs pyarrow: pip install -e ".[score]"')


def check_job_flags(engine: str, address, workers, batch_size: int, gpus_per_worker: float, on_error: str, out,
                    resume: bool, overwrite: bool) -> None:
    """`cli.py score`'s flags that need no model, checked before any work (errors name the flags);
    then the engine's packages and the output (check_output)."""
    if workers is not None:
        positive_int("--workers", workers)
    if engine not in ("local", "ray"):
        raise InputError(f"--engine {engine!r}: choose local or ray")
    if address is not None and engine != "ray":
        raise InputError("--address is for --engine ray")
    positive_int("--batch-size", batch_size)
    if not 0 <= gpus_per_worker < 2**20:
        raise InputError(f"--gpus-per-worker must be >= 0, got {gpus_per_worker}")
    ScoreOptions.check_on_error(on_error)
    require_pyarrow()
    if engine == "ray":
        from .ray_scoring import require_ray

        require_ray()
    check_output(out, engine, resume, overwrite)


@dataclass(frozen=True)
class ScoreOptions:
    """What a job computes; the same options give the same rows."""

    passes: int
    mask_seed: Optional[int]  # None: the file takes no mask set (independent masks)
    output: Optional[str] = None  # the output scored, for a model with several
    measures: Tuple[str, ...] = ()  # () : every measure of the head
    keep_samples: bool = False
    uncertain_if: Optional[str] = None
    on_error: str = "skip"

    def __post_init__(self):
        self.check_on_error(self.on_error)

    @staticmethod
    def check_on_error(on_error) -> None:
        if on_error not in ON_ERROR:
            raise InputError(f"--on-error {on_error!r}: choose one of {', '.join(ON_ERROR)}")


def score_options(session, passes: Optional[int] = None, mask_seed: Optional[int] = None,
                  output: Optional[str] = None, measures: Sequence[str] = (), keep_samples: bool = False,
                  uncertain_if: Optional[str] = None, on_error: str = "skip",
                  resume_from: Optional[Path] = None) -> ScoreOptions:
    """The job's options, checked against the session's file. Masks are shared wherever the file
    takes a mask set; the mask seed defaults to that of the unfinished job in `resume_from` (a
    checkpoint folder), else the session's."""
    shared = session.default_masks == "shared"
    if mask_seed is None and resume_from is not None:
        mask_seed = (read_job(resume_from) or {}).get("mask_seed")
    chosen = session.resolve(passes, mask_seed=mask_seed if shared else None)
    return ScoreOptions(chosen.passes, chosen.mask_seed, output, tuple(measures), keep_samples, uncertain_if, on_error)


def measure_names(head: str) -> Tuple[str, ...]:
    from .uncertain_rule import head_kind

    return MEASURES[head_kind(head)]


def check_measures(head: str, wanted: Sequence[str]) -> Tuple[str, ...]:
    """The measure columns to write: `wanted` in the head's order, every one when empty."""
    known = measure_names(head)
    unknown = [name for name in wanted if name not in known]
    if unknown:
        raise InputError(f"--measures {', '.join(unknown)}: a {head} head has {', '.join(known)}")
    return tuple(name for name in known if name in wanted) if wanted else known


class Scorer:
    """One MCSession and a job's options: batches of input references -> result rows (Arrow)."""

    def __init__(self, session, options: ScoreOptions, limits: Limits = DEFAULT):
        from .datasets import pick_output
        from .uncertain_rule import Rule, file_rule
        from .sources import ArrayReaders

        require_pyarrow()
        self.session = session
        self.limits = limits
        self.model_output = pick_output(session.info, options.output)
        head = self.model_output.head
        self.rule = Rule.parse(options.uncertain_if, head, source="override") if options.uncertain_if is not None \
            else file_rule(self.model_output.calibration, head)
        self.options = options
        self.measures = check_measures(self.model_output.head, options.measures)
        self._readers = ArrayReaders()
        self.schema = self._columns(self._probe()).schema

    def score_refs(self, refs: Dict[str, np.ndarray]) -> "pa.Table":
        """Rows for a batch of references (runtime/sources.py), in their order. An input that
        cannot be read gets a row with only `error` set (on_error skip), or stops the job."""
        from .sources import load_refs

        x, errors = load_refs(refs, self.session.info, self._readers, self.limits)
        return self.score_loaded(x, refs["index"], refs["id"], errors)

    def score_loaded(self, x, index, ids, errors: Optional[Dict[int, str]] = None) -> "pa.Table":
        """Rows for inputs already read: `x` holds the inputs of `index` / `ids` not in
        `errors` ({position: message}), in order."""
        errors = errors or {}
        if errors and self.options.on_error == "stop":
            raise InputError(errors[min(errors)])
        index, ids = np.asarray(index, np.int64), np.asarray(ids, dtype=object)
        good = np.setdiff1d(np.arange(len(index)), list(errors), assume_unique=True)
        pieces = []
        if len(good):
            table = self._columns(self._predict(x), index[good], ids[good])
            pieces.append(table)
        if errors:
            bad = np.array(sorted(errors))
            pieces.append(self._error_rows(index[bad], ids[bad], [errors[i] for i in bad]))
        table = pieces[0] if len(pieces) == 1 else pa.concat_tables(pieces)
        return table.take(np.argsort(table.column("index").to_numpy(), kind="stable")) if errors else table

    def close(self) -> None:
        self._readers.close()

    def _predict(self, x):
        o = self.options
        masks = "shared" if o.mask_seed is not None else "independent"
        predicted = self.session.predict(x, passes=o.passes, masks=masks, mask_seed=o.mask_seed, top_k=1,
                                         keep_samples=o.keep_samples, uncertain_if=o.uncertain_if)
        return predicted[self.model_output.name] if isinstance(predicted, dict) else predicted

    def _probe(self):
        """A one-row Prediction of this head, labels and calibration, for the schema."""
        from .prediction import Prediction

        output = self.model_output
        shape = [d or 1 for d in output.shape[1:]]
        samples = np.full((self.options.passes, 1, *shape), 1 / max(1, int(np.prod(shape))), np.float32)
        if output.head == "binary":
            samples[:] = 0.5
        conformal = (output.calibration or {}).get("conformal")
        return Prediction.from_samples(samples, output.head, labels=output.labels, top_k=1,
                                       keep_samples=self.options.keep_samples, rule=self.rule,
                                       conformal_quantile=conformal["quantile"] if conformal else None)

    def _columns(self, prediction, index=None, ids=None) -> "pa.Table":
        n = len(prediction)
        index = np.zeros(n, np.int64) if index is None else index
        ids = [""] * n if ids is None else list(ids)
        labels, confidence = prediction.decided()
        columns = {"index": pa.array(index, pa.int64()), "id": pa.array(ids, pa.string()),
                   "label": pa.array(labels, pa.string()),
                   "confidence": pa.array(confidence, pa.float32(), from_pandas=True),
                   "mean": _lists(prediction.mean), "variance": _lists(prediction.variance)}
        for name in self.measures:
            value = np.asarray(prediction.measures[name], np.float32)
            columns[name] = pa.array(value, pa.float32()) if value.ndim == 1 else _lists(value)
        columns["uncertain"] = pa.array(prediction.uncertain, pa.bool_())
        if "prediction_set" in prediction.measures:
            chosen = prediction.measures["prediction_set"]
            columns["prediction_set"] = pa.array([np.flatnonzero(row).astype(np.int32) for row in chosen],
                                                 pa.list_(pa.int32()))
        seed = self.options.mask_seed
        columns["mask_seed"] = pa.array([seed] * n, pa.uint64())
        columns["passes"] = pa.array(np.full(n, prediction.passes, np.int32), pa.int32())
        columns["error"] = pa.nulls(n, pa.string())
        if self.options.keep_samples:
            samples = np.moveaxis(prediction.samples.reshape(prediction.passes, n, -1), 1, 0)  # [n, T, out]
            columns["samples"] = pa.ListArray.from_arrays(
                np.arange(0, (n + 1) * prediction.passes, prediction.passes, dtype=np.int32),
                _lists(samples.reshape(n * prediction.passes, -1)))
        # Monte Carlo standard errors, after every other column (docs/DESIGN.md: Monte Carlo
        # standard errors): of the confidence, mean, variance and each measure written.
        columns["confidence_se"] = pa.array(prediction.decided_standard_error(), pa.float32(), from_pandas=True)
        columns["mean_se"] = _lists(prediction.standard_errors["mean"])
        columns["variance_se"] = _lists(prediction.standard_errors["variance"])
        errors = prediction.measure_errors()
        for name in self.measures:
            value = np.asarray(errors[name], np.float32)
            columns[f"{name}_se"] = pa.array(value, pa.float32()) if value.ndim == 1 else _lists(value)
        return pa.table(columns).replace_schema_metadata({METADATA_KEY: self._metadata()})

    def _error_rows(self, index, ids, messages) -> "pa.Table":
        n = len(index)
        columns = {field.name: pa.nulls(n, field.type) for field in self.schema}
        columns.update(index=pa.array(index, pa.int64()), id=pa.array(list(ids), pa.string()),
                       mask_seed=pa.array([self.options.mask_seed] * n, pa.uint64()),
                       passes=pa.array(np.full(n, self.options.passes, np.int32)),
                       error=pa.array(messages, pa.string()))
        return pa.Table.from_pydict(columns, schema=self.schema)

    def _metadata(self) -> bytes:
        output = self.model_output
        return json.dumps({"model": os.path.basename(self.session.path), "output": output.name, "head": output.head,
                           "labels": output.labels, "passes": self.options.passes,
                           "masks": "shared" if self.options.mask_seed is not None else "independent",
                           "mask_seed": self.options.mask_seed, "measures": list(self.measures),
                           "uncertain_rule": str(self.rule)}).encode()


def _lists(matrix) -> "pa.ListArray":
    """float32 rows -> a list<float32> column (each row flattened)."""
    matrix = np.asarray(matrix, np.float32)
    n = len(matrix)
    flat = matrix.reshape(n, -1)
    width = flat.shape[1]
    return pa.ListArray.from_arrays(np.arange(0, (n + 1) * width, width, dtype=np.int32),
                                    pa.array(flat.reshape(-1), pa.float32()))


# Checkpoints ------------------------------------------------------------------------------------

@dataclass
class JobIdentity:
    """What must match for `--resume` to continue a job: `fields` (written to _job.json: the
    model's sha256, the inputs' digest, the options) and one digest per input file (`files`,
    written to _inputs.bin) so that a refusal can name the file that changed."""

    fields: dict
    files: bytes
    plan: object  # the InputPlan, to name a file by its position


def job_identity(model_path, plan, options: ScoreOptions, engine: str) -> JobIdentity:
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
    from .safe_files import check_writable_target

    out = Path(os.path.abspath(out))
    if resume and overwrite:
        raise InputError("--resume continues the unfinished job, --overwrite starts it again: choose one")
    suffix = out.suffix.lower()
    if engine == "local":
        if suffix != ".parquet":
            raise InputError(f"--out {out.name}: score writes Parquet; give a name ending in .parquet")
        check_writable_target(out)
    else:
        from .ray_scoring import check_output_folder

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
    from .safe_files import read_regular

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
        from .safe_files import ExclusiveLock

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
        from .safe_files import read_regular

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
        from .safe_files import atomic_writer

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
            _remove_file(path)
        found = []
        for path in self._own(PART_NAMES):
            try:
                pq.read_metadata(path)
            except Exception:  # noqa: BLE001 - unreadable: its rows are scored again
                _remove_file(path)
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
            index = _read(path, ["index"]).column("index").to_numpy()
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
                _remove_file(path)


def _remove_file(path: Path) -> None:
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
            _remove_file(self._temporary)
        self._writer = self._file = None

    def _name(self) -> str:
        return f"{PART_PREFIX}{self._next:06d}.parquet"

    def _error(self, err: OSError) -> InputError:
        return InputError(f"{self.checkpoint.folder}: cannot write ({err.strerror or first_line(err)}); the rows "
                          "written before are kept: --resume continues once it can write there")


def merge_parts(checkpoint: Checkpoint, out: Path, schema: "pa.Schema") -> int:
    """Write the parts, in index order, as one Parquet file at `out` (one row group per part),
    through a temporary file. Returns the row count; the checkpoint stays (the caller removes it)."""
    from .safe_files import atomic_writer

    parts = checkpoint.parts()
    firsts = [_read(path, ["index"]).column("index").to_numpy()[:1] for path in parts]
    order = sorted(range(len(parts)), key=lambda i: int(firsts[i][0]) if len(firsts[i]) else -1)
    rows = 0
    try:
        with atomic_writer(out) as f:
            with pq.ParquetWriter(f, schema) as writer:
                for i in order:
                    table = _read(parts[i]).cast(schema)
                    writer.write_table(table, row_group_size=max(1, table.num_rows))
                    rows += table.num_rows
    except OSError as err:
        raise InputError(f"{out}: cannot write ({err.strerror or first_line(err)}); the scored rows stay in "
                         f"{checkpoint.folder}: --resume writes the output once it can") from None
    return rows


def _read(path: Path, columns=None) -> "pa.Table":
    # Single-threaded: pyarrow's reader threads keep 25-50 MB of heaps resident for good
    # (measured in docs/DESIGN.md: Scoring), more than a part's own rows.
    return pq.ParquetFile(path).read(columns=columns, use_threads=False)


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


# The local engine -------------------------------------------------------------------------------

@dataclass
class ScoreSummary:
    out: str
    rows: int  # rows in the output
    scored: int  # rows scored by this run (the rest were done before a --resume)
    failed: int  # rows with an error
    mask_seed: Optional[int]
    passes: int


def score_local(session, plan, out, options: ScoreOptions, batch_size: int = 256, resume: bool = False,
                limits: Limits = DEFAULT, progress: Optional[Callable[[int, int], None]] = None,
                overwrite: bool = False) -> ScoreSummary:
    """Score every input of `plan` (runtime/sources.py) with `session` into one Parquet file `out`.

    Rows are written as they are scored, a part file at a time, into `OUT.parts/`; on success
    the parts become `out` (index order, one row group per part) and the folder goes. A job that
    stopped (a crash, Ctrl-C, SIGTERM, --on-error stop) leaves its finished parts (Ctrl-C and
    SIGTERM close the open one first): resume=True skips their inputs and writes each input once.
    A finished `out` is replaced only with overwrite=True (see check_output). Memory: the
    session's max_chunk_bytes, plus one loaded batch and one part of rows (PART_BYTES).
    progress(done, total) after each batch."""
    require_pyarrow()
    out = check_output(out, "local", resume, overwrite)
    scorer = Scorer(session, options, limits)
    try:
        checkpoint = Checkpoint(checkpoint_folder(out), job_identity(session.path, plan, options, "local"), resume,
                                overwrite)
    except BaseException:
        scorer.close()
        raise
    if options.mask_seed is None:
        import warnings

        warnings.warn(f"{session.path} takes no shared mask set (an older or input-size-dependent file): rows are "
                      "scored with independent masks and depend on how the inputs are batched")
    failed = before = 0
    writer = None
    try:
        done = checkpoint.done()
        before = int(done.sum())
        writer = PartWriter(checkpoint, scorer.schema)
        with ThreadPoolExecutor(1) as loader:  # reads the next batch while this one is scored
            from .sources import load_refs

            batches = plan.refs(batch_size, skip=done)

            def read(refs):
                return refs, load_refs(refs, session.info, scorer._readers, limits)

            upcoming = loader.submit(read, next(batches, None)) if before < plan.total else None
            finished = before
            while upcoming is not None:
                refs, (x, errors) = upcoming.result()
                following = next(batches, None)
                upcoming = loader.submit(read, following) if following is not None else None
                rows = scorer.score_loaded(x, refs["index"], refs["id"], errors)
                with signals_deferred():  # a stop comes before or after a batch is written, not inside
                    writer.write(rows)
                failed += len(errors)
                finished += len(refs["index"])
                if progress is not None:
                    progress(finished, plan.total)
        with signals_deferred():
            writer.flush()
    except BaseException as err:
        with signals_deferred():
            try:
                if writer is not None:
                    writer.stop()  # the rows of every batch scored so far become a part
            finally:
                if isinstance(err, (KeyboardInterrupt, SystemExit)):
                    checkpoint.release()  # kept even without rows: it holds the job's mask seed for --resume
                else:
                    checkpoint.discard_if_empty()
        if isinstance(err, InputError) and writer is not None and not writer.broken and checkpoint.folder.is_dir():
            # --on-error stop: the batches before it are complete rows, kept
            raise InputError(f"{err} (the rows scored before it stay in {checkpoint.folder}; --resume continues)") \
                from None
        raise
    finally:
        scorer.close()
    try:
        rows = merge_parts(checkpoint, out, scorer.schema)
    except BaseException:
        checkpoint.release()
        raise
    with signals_deferred():
        checkpoint.remove()
    return ScoreSummary(str(out), rows, plan.total - before, failed, options.mask_seed, options.passes)


def read_scores(path) -> "pa.Table":
    """A score output (the local engine's file or the Ray engine's folder) in index order."""
    require_pyarrow()
    table = pq.read_table(path)
    return table.take(np.argsort(table.column("index").to_numpy(), kind="stable"))
