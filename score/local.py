"""`score`'s local engine: one process, one session using every core, the next batch read while
this one is scored. The Ray engine is score/ray_engine.py.
"""

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Optional

from ..runtime.errors import InputError
from ..runtime.limits import DEFAULT, Limits
from . import output
from .checkpoint import Checkpoint, check_output, checkpoint_folder, job_identity, signals_deferred
from .job import ScoreOptions, Scorer, require_pyarrow

# What the local engine holds besides the session's max_chunk_bytes: the open part's rows and the
# writer's buffers, then one part while merging (PART_BYTES each), two loaded batches, pyarrow's
# pools. Measured in docs/DESIGN.md: Scoring; tests/test_score.py holds a 100,000-input job to it.
MEMORY_OVERHEAD = 96 * 2**20


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
    """Score every input of `plan` (score/input_plan.py) with `session` into one Parquet file `out`.

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
        writer = output.PartWriter(checkpoint, scorer.schema)
        with ThreadPoolExecutor(1) as loader:  # reads the next batch while this one is scored
            from .input_plan import load_refs

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
        rows = output.merge_parts(checkpoint, out, scorer.schema)
    except BaseException:
        checkpoint.release()
        raise
    with signals_deferred():
        checkpoint.remove()
    return ScoreSummary(str(out), rows, plan.total - before, failed, options.mask_seed, options.passes)

