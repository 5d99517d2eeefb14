"""The rows of a shared mask set each run of a predict gets (runtime/format/mask_sets.py draws them).

A set that fits chunk_plan.MASK_SET_SHARE of the memory bound is kept between predicts, and a run
takes a slice of it. A larger one is drawn range by range of passes: a predict whose inputs each
split their passes over several runs makes its runs range by range (chunk_plan.run_order), and a
range is drawn once for all the runs over it. Drawn per run, the shipped CNN's T=200 on 100 inputs
drew its set 100 times, which cost more than the passes (docs/DESIGN.md: Session internals).
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
        self._kept: Optional[Tuple[int, np.ndarray]] = None  # (seed, the set's first passes)
        self._lock = threading.Lock()

    def draw(self, seed: int, first: int, count: int) -> np.ndarray:
        return format_members.draw(self._layout, self._members, seed, first, count)

    def rows(self, seed: int, passes: int) -> Rows:
        """rows(first, count) of the set `seed` for a predict of at most `passes` passes. Pass t
        depends on (seed, t) alone, so a set drawn for more passes holds the one for fewer."""
        if not self._planner.keeps_mask_set(passes):
            # The runs in flight at once read at most one range each: one worker ahead by a range
            # still finds the range the others are on.
            return RecentRanges(lambda first, count: self.draw(seed, first, count), self._planner.max_workers + 1)
        with self._lock:
            kept = self._kept
        if kept is None or kept[0] != seed or len(kept[1]) < passes:
            kept = (seed, self.draw(seed, 0, passes))
            with self._lock:
                self._kept = kept
        whole = kept[1]
        return lambda first, count: whole[first:first + count]


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
