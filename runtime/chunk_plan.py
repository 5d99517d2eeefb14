"""The chunk planner: how a predict of `batch` inputs x `passes` is split into onnxruntime runs
that fit the session's memory bound, and which of them go to worker sessions.

The constants are measured; the figures are in docs/DESIGN.md: Session internals.
"""

from typing import List, Optional, Tuple

import numpy as np

from .dropped_units import gathered_floats_per_pass
from .format.metadata import ModelInfo

FLOAT_BYTES = 4
# A run's resident memory is its activations times this (onnxruntime's arena holds freed blocks
# and rounds its growth); DESIGN.md: Session internals.
ARENA_GROWTH = 2.5
# Copies of a predict's samples held at once (pieces, their concatenation, the measures' float64
# temporaries); DESIGN.md: Session internals.
SAMPLE_COPIES = 8
DEFAULT_MAX_CHUNK_BYTES = 256 * 2**20
# On CUDA a run's activations live in the GPU's memory and every run has a fixed cost: the CPU's
# bound split the shipped CNN's T=50 B=32 predict into 16 runs, 5x slower than one run (which held
# 2 GiB of an H200's memory); docs/DESIGN.md: Memory.
CUDA_MAX_CHUNK_BYTES = 4 * 2**30
# A worker session's copy of the weights and kernel buffers, in model-file sizes, and the share of
# max_chunk_bytes all the copies may take; DESIGN.md: Session internals.
SESSION_COPY = 3
WEIGHTS_SHARE = 4
# Activation floats from which a predict goes to the workers once the session has made such a
# predict before, and from which it goes to them at once; DESIGN.md: Session internals.
PARALLEL_MIN_FLOATS = 2**19
PARALLEL_AT_ONCE_FLOATS = 2**24
# Seeds come from one spread of this many streams (runtime/format/seeds.py): the main session takes
# stream 0 and worker i stream i, so the main session's masks do not depend on the core count.
SEED_STREAMS = 64
# A shared mask set's first passes are kept between predicts up to this share of max_chunk_bytes
# (the shipped CNN's set at T=50 is 17.5 MB, at T=200 70 MB); passes past them are drawn per predict.
MASK_SET_SHARE = 4
# A run holds its slice of the set about 3 times: the feed, each layer's part of it, the masks.
MASK_COPIES = 3

Plan = List[Tuple[slice, int]]


def default_max_chunk_bytes(provider: str) -> int:
    """The bound of a session whose settings name none, for the provider that runs it."""
    return CUDA_MAX_CHUNK_BYTES if provider == "CUDAExecutionProvider" else DEFAULT_MAX_CHUNK_BYTES


class ChunkPlanner:
    """The runs of a predict, for one loaded file and one memory bound.

    max_workers: the single-threaded worker sessions a large predict may use (0: the main session
    alone), at most `threads`, and as many as leave 1 - 1/WEIGHTS_SHARE of the bound to runs.
    host_bytes: the bound of what stays in the process's memory between predicts (the kept mask
    set): max_chunk_bytes, or the CPU's default where a CUDA session's runs take a larger one."""

    def __init__(self, info: ModelInfo, max_chunk_bytes: int, threads: int, model_bytes: int,
                 host_bytes: Optional[int] = None, *, workers_allowed: bool):
        self.info = info
        self.max_chunk_bytes = max_chunk_bytes
        self.host_bytes = host_bytes or max_chunk_bytes
        self.session_bytes = SESSION_COPY * model_bytes
        workers = min(threads, SEED_STREAMS - 1, max_chunk_bytes // WEIGHTS_SHARE // self.session_bytes)
        # One single-threaded worker would only be slower than the main session; the GPU draws in
        # parallel inside one session.
        self.max_workers = workers if workers >= 2 and workers_allowed else 0
        # Passes of a shared set the session keeps between predicts (runtime/mask_rows.py sets it).
        self.held_mask_passes = 0
        # A file that skips dropped units (runtime/dropped_units.py): None for any other.
        self.gathered_floats = gathered_floats_per_pass(info.metadata)

    def big(self, batch: int, passes: int) -> bool:
        """Whether a predict is big enough for the workers (once they pay off, see PARALLEL_*)."""
        floats = passes * batch * self.info.activation_floats_per_sample
        return bool(self.max_workers) and floats >= PARALLEL_MIN_FLOATS

    def kept_passes(self, passes: int) -> int:
        """How many of a shared set's first `passes` passes are kept between predicts: those that
        fit MASK_SET_SHARE of the bound (runtime/mask_rows.py draws the rest per predict)."""
        return min(passes, self.host_bytes // MASK_SET_SHARE // max(1, self.info.mask_layout.bytes_per_pass))

    def plan(self, batch: int, passes: int, shared: bool = False, warm: bool = False) -> Tuple[Plan, int]:
        """(The runs predict makes, the workers that share them). A run is (rows of the batch,
        passes), within max_chunk_bytes less what the returned samples and their measures take,
        shared by the runs in flight at once. warm: the session has workers, or has made a big
        predict before.

        A run over `rows` inputs and `p` passes holds rows x once_floats_per_input activations of
        the layers that run once and rows x p x activation_floats_per_sample of the repeated part.
        Runs keep all the passes of their rows where one row's passes fit, so the layers before the
        first stochastic layer run once per input; only an input whose passes do not fit alone has
        its passes split. A shared mask set adds p x MASK_COPIES rows of the set to a run of p
        passes, and the set itself where it is kept. At least 1 pass of 1 row per run. Chunks
        differ by one row or pass at most (runs of alternating sizes fragment onnxruntime's arena;
        DESIGN.md: Session internals). A predict with work for several workers gives each of them
        the same number of runs, where the passes and rows allow.
        """
        info = self.info
        scale = FLOAT_BYTES * ARENA_GROWTH
        per_sample = int(max(1, info.activation_floats_per_sample) * scale)
        per_input = int(info.once_floats_per_input * scale)
        outputs = sum(int(np.prod([d or 1 for d in output.shape[1:]])) for output in info.model_outputs)
        samples = SAMPLE_COPIES * passes * batch * outputs * FLOAT_BYTES
        # The samples are the result and cannot be chunked away: they take at most half the bound,
        # else runs would shrink to one row and one pass (10,000 inputs x 100 passes: 1M runs).
        budget = max(self.max_chunk_bytes - samples, self.max_chunk_bytes // 2)
        per_pass_masks = MASK_COPIES * info.mask_layout.bytes_per_pass if shared else 0
        if shared and self.gathered_floats:  # rows of weights gathered per pass
            per_pass_masks += FLOAT_BYTES * self.gathered_floats
        if info.mask_layout is not None:  # the set's passes kept between predicts: this predict's, or an earlier one's
            budget -= max(self.kept_passes(passes) if shared else 0, self.held_mask_passes) * info.mask_layout.bytes_per_pass
        floats = passes * batch * info.activation_floats_per_sample
        workers = self.max_workers if self.big(batch, passes) and (warm or floats >= PARALLEL_AT_ONCE_FLOATS) else 0
        budget = (budget - workers * self.session_bytes) // max(1, workers)  # runs in flight at once
        rows_fit = (budget - passes * per_pass_masks) // (per_input + passes * per_sample)
        if rows_fit >= 1:
            row_parts, pass_parts = -(-batch // min(batch, rows_fit)), 1
        else:
            row_parts = batch
            pass_parts = -(-passes // min(passes, max(1, (budget - per_input) // (per_sample + per_pass_masks))))
        # Every worker gets the same number of runs: split the rows further, then the passes; a
        # file that skips dropped units (convert/dropped_units.py) wants its rows together.
        while workers and (row_parts * pass_parts) % workers and pass_parts < passes and shared \
                and self.gathered_floats is not None:
            pass_parts += 1
        while workers and (row_parts * pass_parts) % workers and row_parts < batch:
            row_parts += 1
        while workers and (row_parts * pass_parts) % workers and pass_parts < passes:
            pass_parts += 1
        plan, start = [], 0
        for size in even_sizes(batch, row_parts):
            plan += [(slice(start, start + size), count) for count in even_sizes(passes, pass_parts)]
            start += size
        return plan, (workers if len(plan) >= workers else 0)  # too few runs to share: the main session


def pass_starts(plan: Plan) -> List[int]:
    """The first pass of each run: the passes of one row range are split in order."""
    starts, done = [], {}
    for rows, count in plan:
        key = (rows.start, rows.stop)
        starts.append(done.get(key, 0))
        done[key] = starts[-1] + count
    return starts


def run_order(plan: Plan) -> List[int]:
    """The order a predict with a shared mask set makes its runs in: by first pass, then in plan
    order, so the runs over one range of passes follow each other and share one draw of it
    (runtime/mask_rows.py). Shared masks make a run's samples independent of when it runs."""
    starts = pass_starts(plan)
    return sorted(range(len(plan)), key=lambda i: (starts[i], i))


def even_sizes(total: int, parts: int) -> List[int]:
    """total split into `parts` sizes that differ by one at most, the larger first."""
    size, larger = divmod(total, parts)
    return [size + 1] * larger + [size] * (parts - larger)


def assemble(pieces: List[np.ndarray], plan: Plan) -> np.ndarray:
    """The runs' samples, in plan order, as one [T, B, ...] array. The pieces go as they are
    copied, so that the measures computed next share memory with the samples alone."""
    pieces.reverse()
    by_batch = [np.concatenate([pieces.pop() for _ in counts], axis=0) for _, counts in _group_by_rows(plan)]
    return np.concatenate(by_batch, axis=1)


def _group_by_rows(plan: Plan):
    """[(rows, passes), ...] -> [(rows, [passes, ...]), ...] keeping the order."""
    grouped: List[Tuple[slice, List[int]]] = []
    for rows, passes in plan:
        if grouped and grouped[-1][0] == rows:
            grouped[-1][1].append(passes)
        else:
            grouped.append((rows, [passes]))
    return grouped
