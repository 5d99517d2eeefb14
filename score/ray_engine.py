"""The Ray engine of `cli.py score`, and `score_dataset` for users who already have a Ray Dataset.

Ray Data's batch-inference pattern: `map_batches` with an actor class (`ScoreActor`) that
creates one MCSession per actor and scores each batch with score/job.py's Scorer, then
`write_parquet`. Ray restarts an actor that dies and retries its batch (Ray Data's defaults for
actor pools: max_restarts=-1, max_task_retries=-1); since every row is scored with the job's
one shared mask set, a retried batch reproduces its rows exactly, and any split of the inputs
into blocks, batches or actors gives the same rows as the local engine.

The model travels to the actors through Ray's object store (a cluster needs no copy of it);
input files are read by the actors, so on a cluster their paths must be on storage every node
sees. Needs the `ray` extra.
"""

import contextlib
import os
import shutil
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Optional

import numpy as np

from ..runtime.errors import InputError, McdropError
from ..runtime.settings import SessionSettings
from .input_plan import REF_COLUMNS

# Test hook (tests/test_score_ray.py): an actor whose batch count reaches this, while the marker
# file named by MCDROP_TEST_ACTOR_EXIT does not exist yet, creates the file and exits: one
# actor death in the middle of a job.
FAULT_ENV = "MCDROP_TEST_ACTOR_EXIT"
FAULT_AFTER_BATCHES = 2
# Blocks the references are cut into: enough for every actor to have work queued, and at most
# BLOCK_BATCHES batches per block, so a retried block redoes little.
BLOCKS_PER_WORKER = 4
BLOCK_BATCHES = 8


def require_ray():
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise InputError('--engine ray needs Ray: pip install -e ".[ray]"') from None
    return ray


class ScoreActor:
    """One MCSession per actor; a batch of input references (or of arrays) in, result rows out."""

    def __init__(self, model, options: dict, settings: SessionSettings, array_column: Optional[str] = None,
                 exit_marker: Optional[str] = None):
        from ..runtime.session import MCSession
        from .job import ScoreOptions, Scorer

        self._folder = tempfile.mkdtemp(prefix="mcdrop-actor-")
        path = os.path.join(self._folder, "model.onnx")
        if not isinstance(model, bytes):  # an ObjectRef: Ray resolves only top-level arguments
            import ray

            model = ray.get(model)
        with open(path, "wb") as f:
            f.write(model)
        session = MCSession(path, settings=settings)
        self.scorer = Scorer(session, ScoreOptions(**options), settings.limits)
        self.array_column = array_column
        self.exit_marker = exit_marker
        self.batches = 0

    def __call__(self, batch):
        import pyarrow as pa

        table = batch if isinstance(batch, pa.Table) else pa.table(batch)
        if self.array_column is None:
            refs = {name: _column(table, name) for name in REF_COLUMNS}
            rows = self.scorer.score_refs(refs)
        else:
            rows = self._score_arrays(table)
        self.batches += 1
        if self.exit_marker and self.batches >= FAULT_AFTER_BATCHES and not os.path.exists(self.exit_marker):
            Path(self.exit_marker).touch()
            os._exit(1)  # the test hook: this actor dies once, mid-job
        return rows

    def _score_arrays(self, table):
        import pyarrow as pa

        # Ray's tensor columns give their arrays, shape and all, per combined array (not per chunk).
        values = table.column(self.array_column).combine_chunks()
        x = values.to_numpy(zero_copy_only=False) if isinstance(values.type, pa.ExtensionType) \
            else np.stack(values.to_numpy(zero_copy_only=False))
        index = _column(table, "index") if "index" in table.column_names else np.full(table.num_rows, -1)
        ids = _column(table, "id") if "id" in table.column_names else np.array([str(i) for i in index], object)
        flat = x.reshape(len(x), -1)
        bad = np.flatnonzero(~np.isfinite(flat).all(axis=1)) if flat.dtype.kind == "f" else []
        errors = {int(i): f"{ids[i]}: holds NaN or infinite values" for i in bad}
        good = np.setdiff1d(np.arange(len(x)), list(errors))
        return self.scorer.score_loaded(x[good] if len(good) else None, index, ids, errors)

    def __del__(self):
        shutil.rmtree(getattr(self, "_folder", ""), ignore_errors=True)


def _column(table, name: str) -> np.ndarray:
    column = table.column(name)
    try:
        return column.to_numpy()
    except Exception:  # noqa: BLE001 - strings, nulls and binaries come back as objects
        return np.array(column.to_pylist(), dtype=object)


def score_dataset(ds, model, passes: Optional[int] = None, mask_seed: Optional[int] = None,
                  output: Optional[str] = None, measures=(), keep_samples: bool = False,
                  uncertain_if: Optional[str] = None, on_error: str = "skip",
                  array_column: Optional[str] = None, batch_size: int = 256, workers: Optional[int] = None,
                  num_gpus: float = 0, settings: Optional[SessionSettings] = None, exit_marker: Optional[str] = None):
    """A Ray Dataset of inputs -> a Dataset of mcdrop rows (score/job.py's columns).

    The inputs are either references as score/input_plan.py makes them (columns index, id, path,
    row, member: `cli.py score --engine ray` builds these), or arrays already preprocessed for the
    model in `array_column`, with optional `index` and `id` columns (index -1 when absent).
    mask_seed None: a fresh seed; read it back from the rows' mask_seed column. workers: actors
    (default: the cluster's CPUs / threads, or its GPUs when num_gpus > 0); each actor holds one
    MCSession of `settings` (default: SessionSettings(threads=1)), with its threads (and num_gpus
    GPUs). Lazy, as Ray Datasets are."""
    from ..runtime.session import MCSession
    from .job import Scorer, require_pyarrow, score_options

    ray = require_ray()
    require_pyarrow()
    model_bytes = Path(model).read_bytes()
    # Checked here once, so that a bad model or option is one error on the driver, not one per actor.
    settings = settings or SessionSettings(threads=1)
    threads = settings.threads or 1
    probe = MCSession(model, settings=SessionSettings(threads=1, limits=settings.limits, verify=settings.verify))
    options = score_options(probe, passes, mask_seed, output, measures, keep_samples, uncertain_if, on_error)
    Scorer(probe, options, settings.limits).close()
    return ds.map_batches(ScoreActor, batch_size=batch_size, batch_format="pyarrow",
                          concurrency=workers or _default_workers(ray, threads, num_gpus),
                          num_cpus=threads, num_gpus=num_gpus or None,
                          fn_constructor_args=(ray.put(model_bytes), asdict(options), settings,
                                               array_column, exit_marker))


def score_with_ray(plan, out, model, options, batch_size: int = 256, workers: Optional[int] = None,
                   num_gpus: float = 0, resume: bool = False, address: Optional[str] = None,
                   settings: Optional[SessionSettings] = None, overwrite: bool = False):
    """The Ray engine: every input of `plan` scored by Ray actors into the Parquet folder `out`.

    Rows are written into `OUT.parts/` (the same checkpoint as the local engine's, Ray's part
    files inside); when the job completes the folder becomes `out`. resume=True skips the inputs
    whose rows are already there; a finished `out` is replaced only with overwrite=True
    (score/checkpoint.py: check_output). settings: each actor's session (default: SessionSettings(threads=1))."""
    import pyarrow as pa

    from .checkpoint import Checkpoint, check_output, checkpoint_folder, job_identity
    from .local import ScoreSummary
    ray = require_ray()
    if options.auto is not None:  # the actors run score_dataset's fixed passes
        raise InputError("--passes auto runs on --engine local; --engine ray takes a fixed --passes")
    out = check_output(out, "ray", resume, overwrite)
    checkpoint = Checkpoint(checkpoint_folder(out), job_identity(model, plan, options, "ray"), resume, overwrite)
    try:
        done = checkpoint.done()
        before = int(done.sum())
        if not ray.is_initialized():
            ray.init(address=address, include_dashboard=False, log_to_driver=False, configure_logging=False)
        settings = settings or SessionSettings(threads=1)
        workers = workers or _default_workers(ray, settings.threads or 1, num_gpus)
        if before < plan.total:
            block = max(batch_size, min(batch_size * BLOCK_BATCHES,
                                        -(-(plan.total - before) // (workers * BLOCKS_PER_WORKER))))
            types = _ref_types()
            tables = [pa.table({name: pa.array(refs[name], types[name]) for name in REF_COLUMNS})
                      for refs in plan.refs(block, skip=done)]
            ds = ray.data.from_arrow(tables)
            scored = score_dataset(ds, model, passes=options.passes, mask_seed=options.mask_seed,
                                   output=options.output, measures=options.measures,
                                   keep_samples=options.keep_samples, uncertain_if=options.uncertain_if,
                                   on_error=options.on_error, batch_size=batch_size, workers=workers,
                                   num_gpus=num_gpus, settings=settings, exit_marker=os.environ.get(FAULT_ENV))
            try:
                scored.write_parquet(str(checkpoint.folder), filename_provider=RayPartNames())
            except Exception as err:  # noqa: BLE001 - Ray wraps the actor's error; say it in one line
                raise _user_error(err) from None
        counts = checkpoint.done()
        if not counts.all():
            raise InputError(f"the Ray job left {int((~counts).sum())} inputs without a row; run it again with "
                             "--resume")
        import pyarrow.parquet as pq

        parts = checkpoint.parts()
        rows = sum(pq.read_metadata(p).num_rows for p in parts)
        failed = rows - sum(pq.read_table(p, columns=["error"]).column("error").null_count for p in parts)
        if rows != plan.total:
            raise InputError(f"{checkpoint.folder}: holds {rows} rows for {plan.total} inputs")
    except (KeyboardInterrupt, SystemExit):
        checkpoint.release()  # Ray's finished files stay for --resume
        raise
    except BaseException:
        checkpoint.discard_if_empty()
        raise
    _finish(checkpoint, out)
    return ScoreSummary(str(out), rows, plan.total - before, failed, options.mask_seed, options.passes)


class RayPartNames:
    """Ray's part files as the checkpoint knows them (scoring.PART_NAMES: `ray-...parquet`), so
    that score removes only files it wrote. Ray Data's FilenameProvider interface."""

    def get_filename_for_task(self, write_uuid: str, task_index: int) -> str:
        return f"ray-{write_uuid}_{task_index:06}.parquet"  # Ray appends -{i} per file of a task


def _finish(checkpoint, out: Path) -> None:
    """The complete checkpoint becomes `out`: a finished `out` (allowed by --overwrite) loses its
    Parquet files first, then the folder is renamed and its bookkeeping files removed."""
    from .checkpoint import INPUTS_FILE, JOB_FILE, LOCK_FILE, signals_deferred

    with signals_deferred():
        try:
            if out.is_dir():
                for entry in os.scandir(out):  # check_output_folder saw only Parquet and score's own files
                    if entry.is_file(follow_symlinks=False):
                        os.unlink(entry.path)
                out.rmdir()
            os.replace(checkpoint.folder, out)
        except OSError as err:
            checkpoint.release()
            raise InputError(f"{out}: cannot write ({err.strerror or err}); the scored rows stay in "
                             f"{checkpoint.folder}: --resume finishes the job once it can") from None
        checkpoint.release(remove_lock=False)  # renamed with the folder; removed below
        for name in (JOB_FILE, INPUTS_FILE, LOCK_FILE):  # Parquet readers skip _ names; removed for tidiness
            with contextlib.suppress(OSError):
                (out / name).unlink()


def _ref_types():
    import pyarrow as pa

    return {"index": pa.int64(), "id": pa.string(), "path": pa.binary(), "row": pa.int64(), "member": pa.string()}


def _default_workers(ray, threads: int, num_gpus: float) -> int:
    resources = ray.cluster_resources()
    if num_gpus:
        return max(1, int(resources.get("GPU", 0) // num_gpus))
    return max(1, int(resources.get("CPU", 1) // threads))


def check_output_folder(out: Path) -> None:
    """`out` becomes a folder of Parquet files: refuse a link, a file, or a folder holding
    anything but Parquet files and score's own files."""
    from .checkpoint import OWN_NAMES

    if out.is_symlink():
        raise InputError(f"{out}: is a symbolic link; mcdrop does not write through links")
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: is a file; the Ray engine writes a folder of Parquet files (choose a new name)")
    if out.is_dir() and any(not ((p.name.endswith(".parquet") or OWN_NAMES.fullmatch(p.name))
                                 and p.is_file() and not p.is_symlink()) for p in out.iterdir()):
        raise InputError(f"{out}: is a folder holding other files; the Ray engine writes a folder of Parquet "
                         "files there (choose a new name)")
    if not out.parent.is_dir():
        raise InputError(f"{out}: folder {out.parent} does not exist")


def _user_error(err: BaseException) -> McdropError:
    """The McdropError an actor raised, found in Ray's wrapping (as an object or in its text),
    else the error's first line."""
    import re

    from ..runtime import errors

    seen = err
    while seen is not None:
        if isinstance(seen, McdropError):
            return type(seen)(str(seen))
        cause = getattr(seen, "cause", None)
        seen = seen.__cause__ or (cause if isinstance(cause, BaseException) else None)
    found = re.findall(r"mcdrop\.runtime\.errors\.(\w+): (.*)", str(err))
    if found:
        name, text = found[-1]
        kind = getattr(errors, name, InputError)
        return kind(text) if isinstance(kind, type) and issubclass(kind, McdropError) else InputError(text)
    return InputError(f"the Ray job failed: {errors.first_line(err)}")
