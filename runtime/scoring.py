"""Score many inputs into Parquet: one row per input with its label, mean, variance, measures and
UNCERTAIN flag, in bounded memory, resumable after a crash.

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

import hashlib
import json
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .errors import InputError
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
# PART_ROWS rows; the merged output has one row group per part. Both bound what a crash loses
# and what merging holds in memory (one part).
PART_BYTES = 16 * 2**20
PART_ROWS = 2048
# What the local engine holds besides the session's max_chunk_bytes: the open part's rows and the
# writer's buffers, then one part while merging (PART_BYTES each), two loaded batches, pyarrow's
# pools. Measured in docs/DESIGN.md: Scoring; tests/test_score.py holds a 100,000-input job to it.
MEMORY_OVERHEAD = 96 * 2**20
JOB_FILE = "_job.json"
PART_PREFIX = "part-"
METADATA_KEY = b"mcdrop"


def require_pyarrow() -> None:
    if pa is None:
        raise InputError('scoring to Parquet needs pyarrow: pip install -e ".[score]"')


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
    from . import masks as mask_sets

    passes = session._check_passes(passes)
    shared = session.default_masks == "shared"
    if mask_seed is None and resume_from is not None and (Path(resume_from) / JOB_FILE).is_file():
        mask_seed = json.loads((Path(resume_from) / JOB_FILE).read_text()).get("mask_seed")
    if shared:
        mask_seed = mask_sets.check_seed(mask_seed) if mask_seed is not None else session.mask_seed
    return ScoreOptions(passes, mask_seed if shared else None, output, tuple(measures), keep_samples,
                        uncertain_if, on_error)


def measure_names(head: str) -> Tuple[str, ...]:
    from .decision import head_kind

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
        from .decision import Rule, file_rule
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

def job_identity(model_path, plan, options: ScoreOptions, engine: str) -> dict:
    """What must match for `--resume` to continue a job: the model's bytes, the inputs, the options."""
    digest = hashlib.sha256()
    with open(model_path, "rb") as f:
        for block in iter(lambda: f.read(2**20), b""):
            digest.update(block)
    return {"model_sha256": digest.hexdigest(), "inputs": plan.fingerprint(), "total": plan.total,
            "engine": engine, **asdict(options)}


class Checkpoint:
    """The folder of a job's finished rows: Parquet part files, each written under a temporary
    name and renamed once closed, so each is complete or absent; `_job.json` says what job."""

    def __init__(self, folder: Path, identity: dict, resume: bool):
        self.folder = Path(folder)
        self.identity = identity = json.loads(json.dumps(identity))  # as read back: tuples are lists
        found = self.folder / JOB_FILE
        if self.folder.exists() and not resume:
            raise InputError(f"{self.folder} holds an unfinished job's rows; continue it with --resume, "
                             "or delete the folder to start again")
        if resume and found.exists():
            earlier = json.loads(found.read_text())
            changed = [key for key in identity if earlier.get(key) != identity[key]]
            if changed:
                raise InputError(f"--resume: the unfinished job in {self.folder} differs in "
                                 f"{', '.join(changed)}; run it with the same model, inputs and options "
                                 "(its mask seed: " + str(earlier.get("mask_seed")) + "), or delete the folder")
        self.folder.mkdir(parents=True, exist_ok=True)
        if not found.exists():
            temporary = self.folder / (JOB_FILE + ".tmp")
            temporary.write_text(json.dumps(identity, indent=2))
            os.replace(temporary, found)

    def parts(self) -> List[Path]:
        """The complete part files (a torn file a crash left is removed), in the order written."""
        found = []
        for path in sorted(self.folder.iterdir()):
            if path.name.startswith(".") or path.name.endswith(".tmp"):
                path.unlink(missing_ok=True)  # a part that was being written when the job stopped
                continue
            if path.name == JOB_FILE:
                continue
            try:
                pq.read_metadata(path)
            except Exception:  # noqa: BLE001 - unreadable: its rows are scored again
                path.unlink(missing_ok=True)
                continue
            found.append(path)
        return found

    def discard_if_empty(self) -> None:
        """After a failure: a checkpoint without rows is nothing to resume, so it goes."""
        if self.folder.is_dir() and not self.parts():
            shutil.rmtree(self.folder, ignore_errors=True)

    def done(self) -> np.ndarray:
        """bool [total]: the indices that already have a row."""
        done = np.zeros(self.identity["total"], bool)
        for path in self.parts():
            index = _read(path, ["index"]).column("index").to_numpy()
            if len(index) and (index.min() < 0 or index.max() >= len(done)):
                raise InputError(f"{path}: holds rows of other inputs; delete {self.folder} to start again")
            done[index] = True
        return done


class PartWriter:
    """Appends tables to the checkpoint's part files, closing one at PART_BYTES or PART_ROWS."""

    def __init__(self, checkpoint: Checkpoint, schema: "pa.Schema"):
        self.checkpoint = checkpoint
        self.schema = schema
        existing = [int(p.stem[len(PART_PREFIX):]) for p in checkpoint.parts() if p.stem[len(PART_PREFIX):].isdigit()]
        self._next = max(existing, default=-1) + 1
        self._writer = None
        self._rows = self._bytes = 0

    def write(self, table: "pa.Table") -> None:
        if self._writer is None:
            self._temporary = self.checkpoint.folder / f".{PART_PREFIX}{self._next:06d}.parquet.tmp"
            self._writer = pq.ParquetWriter(self._temporary, self.schema)
        self._writer.write_table(table.cast(self.schema))
        self._rows += table.num_rows
        self._bytes += table.nbytes
        if self._rows >= PART_ROWS or self._bytes >= PART_BYTES:
            self.flush()

    def flush(self) -> None:
        """Close the open part: its rows become a checkpoint."""
        if self._writer is None:
            return
        self._writer.close()
        os.replace(self._temporary, self.checkpoint.folder / f"{PART_PREFIX}{self._next:06d}.parquet")
        self._writer, self._next, self._rows, self._bytes = None, self._next + 1, 0, 0

    def abandon(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._temporary.unlink(missing_ok=True)
            self._writer = None


def merge_parts(checkpoint: Checkpoint, out: Path, schema: "pa.Schema") -> int:
    """Write the parts, in index order, as one Parquet file at `out` (one row group per part),
    through a temporary file; then remove the checkpoint. Returns the row count."""
    from .files import atomic_writer

    parts = checkpoint.parts()
    firsts = [_read(path, ["index"]).column("index").to_numpy()[:1] for path in parts]
    order = sorted(range(len(parts)), key=lambda i: int(firsts[i][0]) if len(firsts[i]) else -1)
    rows = 0
    with atomic_writer(out) as f:
        with pq.ParquetWriter(f, schema) as writer:
            for i in order:
                table = _read(parts[i]).cast(schema)
                writer.write_table(table, row_group_size=max(1, table.num_rows))
                rows += table.num_rows
    shutil.rmtree(checkpoint.folder)
    return rows


def _read(path: Path, columns=None) -> "pa.Table":
    # Single-threaded: pyarrow's reader threads keep 25-50 MB of heaps resident for good
    # (measured in docs/DESIGN.md: Scoring), more than a part's own rows.
    return pq.ParquetFile(path).read(columns=columns, use_threads=False)


def checkpoint_folder(out) -> Path:
    out = Path(os.path.abspath(out))
    return out.with_name(out.name + ".parts")


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
                limits: Limits = DEFAULT, progress: Optional[Callable[[int, int], None]] = None) -> ScoreSummary:
    """Score every input of `plan` (runtime/sources.py) with `session` into one Parquet file `out`.

    Rows are written as they are scored, a part file at a time, into `OUT.parts/`; on success
    the parts become `out` (index order, one row group per part) and the folder goes. A job that
    stopped (a crash, Ctrl-C, --on-error stop) leaves its finished parts: resume=True skips their
    inputs and writes each input once. Memory: the session's max_chunk_bytes, plus one loaded
    batch and one part of rows (PART_BYTES). progress(done, total) after each batch."""
    from .files import check_writable_target

    require_pyarrow()
    out = check_writable_target(out)
    scorer = Scorer(session, options, limits)
    checkpoint = Checkpoint(checkpoint_folder(out), job_identity(session.path, plan, options, "local"), resume)
    done = checkpoint.done()
    before = int(done.sum())
    writer = PartWriter(checkpoint, scorer.schema)
    if options.mask_seed is None:
        import warnings

        warnings.warn(f"{session.path} takes no shared mask set (an older or input-size-dependent file): rows are "
                      "scored with independent masks and depend on how the inputs are batched")
    failed = 0
    try:
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
                writer.write(scorer.score_loaded(x, refs["index"], refs["id"], errors))
                failed += len(errors)
                finished += len(refs["index"])
                if progress is not None:
                    progress(finished, plan.total)
        writer.flush()
    except InputError as err:  # --on-error stop: the batches before it are complete rows, kept
        writer.flush()
        checkpoint.discard_if_empty()
        kept = f" (the rows scored before it stay in {checkpoint.folder}; --resume continues)" \
            if checkpoint.folder.is_dir() else ""
        raise InputError(f"{err}{kept}") from None
    except BaseException:
        writer.abandon()
        checkpoint.discard_if_empty()
        raise
    finally:
        scorer.close()
    rows = merge_parts(checkpoint, out, scorer.schema)
    return ScoreSummary(str(out), rows, plan.total - before, failed, options.mask_seed, options.passes)


def read_scores(path) -> "pa.Table":
    """A score output (the local engine's file or the Ray engine's folder) in index order."""
    require_pyarrow()
    table = pq.read_table(path)
    return table.take(np.argsort(table.column("index").to_numpy(), kind="stable"))
