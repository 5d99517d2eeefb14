"""The rows of a shared mask set each run of a predict gets (runtime/format/mask_sets.py draws them).

A set's first passes, as many as fit chunk_plan.MASK_SET_SHARE of the memory bound, are kept
between predicts, drawn as runs first ask for them; a run takes a slice. Passes past those are
drawn range by range for each predict: a predict whose inputs each split their passes over several
runs makes its runs range by range (chunk_plan.run_order), and a range is drawn once for all the
runs over it. Drawing costs more than the passes themselves on the shipped CNN (docs/DESIGN.md:
Session internals).
"""

import threading
from collections import OrderedDict
from typing import Callable, Optional, Tuple

import numpy as np

from .format import members as format_members

Rows = Callable[[int, int], np.ndarray]  # rows(first pass, count): float32 [count, floats_per_pass]


class MaskSets:
    """A session's shared mask sets: `rows` gives a predict's rows(first, count) of the set `seed`."""

    def __init__(self, info, planner):
        self._layout, self._members = info.mask_layout, format_members.members_of(info)  # an ensemble's: its own
        self._planner = planner
        self._kept: Optional[KeptPasses] = None
        self._lock = threading.Lock()

    def draw(self, seed: int, first: int, count: int) -> np.ndarray:
        return format_members.draw(self._layout, self._members, seed, first, count)

    def rows(self, seed: int, passes: int) -> Rows:
        """rows(first, count) of the set `seed` for a predict of at most `passes` passes. Pass t
        depends on (seed, t) alone, so the kept passes serve every predict of that seed."""
        keep = self._planner.kept_passes(passes)
        with self._lock:
            kept = self._kept
            if kept is None or kept.seed != seed or len(kept.rows) < keep:
                kept = self._kept = KeptPasses(self.draw, seed, keep, self._layout.floats_per_pass,
                                               kept if kept is not None and kept.seed == seed else None)
        if keep >= passes:
            return kept

        def rows(first: int, count: int) -> np.ndarray:
            inside = max(0, min(first + count, keep) - first)
            if inside == count:
                return kept(first, count)
            drawn = self.draw(seed, first + inside, count - inside)
            return np.concatenate([kept(first, inside), drawn]) if inside else drawn

        # The runs in flight at once read one range each: a worker a range ahead still finds the
        # range the others are on.
        return RecentRanges(rows, self._planner.max_workers + 1)


class KeptPasses:
    """The first len(rows) passes of the set `seed`, drawn as they are first asked for (np.empty's
    pages take no memory until then), carrying over the passes `start` had drawn."""

    def __init__(self, draw: Callable[[int, int, int], np.ndarray], seed: int, passes: int, floats: int,
                 start: Optional["KeptPasses"] = None):
        self.seed, self._draw = seed, draw
        self.rows = np.empty((passes, floats), np.float32)
        self.filled = 0
        if start is not None:
            self.filled = start.filled
            self.rows[:self.filled] = start.rows[:self.filled]
        self._lock = threading.Lock()

    def __call__(self, first: int, count: int) -> np.ndarray:
        end = first + count
        with self._lock:
            if end > self.filled:
                self.rows[self.filled:end] = self._draw(self.seed, self.filled, end - self.filled)
                self.filled = end
        return self.rows[first:end]


class RecentRanges:
    """draw(first, count), each range drawn once while it is among the `keep` latest asked for.
    Threads asking for a range being drawn wait for it rather than draw it again."""

    def __init__(self, draw: Rows, keep: int):
        self._draw, self._keep = draw, max(1, keep)
        self._ranges: "OrderedDict[Tuple[int, int], np.ndarray]" = OrderedDict()
        self._lock = threading.Lock()

    def __call__(self, first: int, count: int) -> np.ndarray:
        key = (int(first), int(count))
        with self._lock:
            if key not in self._ranges:
                self._ranges[key] = self._draw(*key)
                while len(self._ranges) > self._keep:
                    self._ranges.popitem(last=False)
            self._ranges.move_to_end(key)
            return self._ranges[key]
