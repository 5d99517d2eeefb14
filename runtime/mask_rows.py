"""The rows of a shared mask set each run of a predict gets (runtime/format/mask_sets.py draws them).

A set's first passes, as many as fit chunk_plan.MASK_SET_SHARE of the memory bound, are kept
between predicts, drawn as runs first ask for them; a run takes a slice. Passes past those are
drawn for each predict, range by range: a predict whose inputs each split their passes over
several runs makes its runs range by range (chunk_plan.run_order), and a range is drawn once for
all the runs over it and let go after the last of them took it (PlanMasks). Drawing costs more
than the passes themselves on the shipped CNN (docs/DESIGN.md: Session internals).
"""

import threading
from collections import Counter
from concurrent.futures import Future
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np

from .format import members as format_members

Rows = Callable[[int, int], np.ndarray]  # rows(first pass, count): float32 [count, floats_per_pass]


class MaskSets:
    """A session's shared mask sets: `rows` gives a predict's rows(first, count) of the set `seed`.
    The planner is told how many passes are kept (chunk_plan.ChunkPlanner.held_mask_passes)."""

    def __init__(self, info, planner):
        self._info, self._planner = info, planner
        self._members = None  # an ensemble's members (format/members.py), read on the first draw
        self._kept: Optional[KeptPasses] = None
        self._lock = threading.Lock()

    def draw(self, seed: int, first: int, count: int) -> np.ndarray:
        if self._members is None:
            self._members = format_members.members_of(self._info) or ()
        return format_members.draw(self._info.mask_layout, self._members, seed, first, count)

    def rows(self, seed: int, passes: int) -> Rows:
        """rows(first, count) of the set `seed` for a predict of at most `passes` passes. Pass t
        depends on (seed, t) alone, so the kept passes serve every predict of that seed."""
        keep = self._planner.kept_passes(passes)
        with self._lock:
            kept = self._kept
            if kept is None or kept.seed != seed or len(kept.rows) < keep:
                kept = self._kept = KeptPasses(self.draw, seed, keep, self._info.mask_layout.floats_per_pass,
                                               kept if kept is not None and kept.seed == seed else None)
                self._planner.held_mask_passes = len(kept.rows)
        if keep >= passes:
            return kept

        def rows(first: int, count: int) -> np.ndarray:
            inside = max(0, min(first + count, keep) - first)
            if inside == count:
                return kept(first, count)
            drawn = self.draw(seed, first + inside, count - inside)
            return np.concatenate([kept(first, inside), drawn]) if inside else drawn

        return rows


class KeptPasses:
    """The first len(rows) passes of the set `seed`, drawn as they are first asked for (np.empty's
    pages take no memory until then), carrying over the passes `start` had drawn."""

    def __init__(self, draw: Callable[[int, int, int], np.ndarray], seed: int, passes: int, floats: int,
                 start: Optional["KeptPasses"] = None):
        self.seed, self._draw = seed, draw
        self.rows = np.empty((passes, floats), np.float32)
        self.filled = 0
        self._lock = threading.Lock()
        if start is not None:
            with start._lock:
                self.filled = start.filled
                self.rows[:self.filled] = start.rows[:self.filled]

    def __call__(self, first: int, count: int) -> np.ndarray:
        end = first + count
        with self._lock:
            if end > self.filled:
                self.rows[self.filled:end] = self._draw(self.seed, self.filled, end - self.filled)
                self.filled = end
        return self.rows[first:end]


class PlanMasks:
    """masks(i) for the runs of one plan, run i reading passes ranges[i] = (first, count): each
    range fetched from rows(first, count) once, by the first run that asks (the others wait for
    it alone), and let go once the last run over it has taken it."""

    def __init__(self, rows: Rows, ranges: List[Tuple[int, int]]):
        self._rows, self._ranges = rows, ranges
        self._left = Counter(ranges)
        self._held: Dict[Tuple[int, int], Future] = {}
        self._lock = threading.Lock()

    def __call__(self, i: int) -> np.ndarray:
        key = self._ranges[i]
        with self._lock:
            found = self._held.get(key)
            first = found is None
            if first:
                found = self._held[key] = Future()
            self._left[key] -= 1
            if not self._left[key]:
                del self._held[key]
        if first:
            try:
                found.set_result(self._rows(*key))
            except BaseException as err:  # the runs waiting on this range fail with it
                found.set_exception(err)
                raise
        return found.result()
