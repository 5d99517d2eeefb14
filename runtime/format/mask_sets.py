"""Mask sets: T passes' worth of random tensors for every stochastic layer, from one seed.

In shared mode ("consistent MC dropout", Gal's reading of MC dropout: T draws of the weights,
each applied to every input) pass t is one sampled network for every input of every call, so an
input's result is a pure function of (input, mask seed, T): it does not depend on its batch, the
chunking, the threads, the worker sessions or the machine, and BatchBALD can compare inputs
pass by pass. The set is drawn here, outside onnxruntime, by a counter-based generator (numpy's
Philox4x64-10): pass t is a function of (seed, t) alone, so any range of passes can be drawn on
its own, and another binding can build the same numbers (docs/FORMAT.md: Mask sets).

Each row of a set holds one pass: the stochastic layers' per-pass values side by side
(`MaskLayout`), uniform on [0, 1) or N(0, 1) as each layer's distribution says; the graph turns
them into masks exactly as it does its own random draws. An empty set ([0, P]) tells the graph
to draw independent masks itself.
"""

from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import numpy as np

from ..checks import is_int
from ..errors import InputError

MASKS = "masks"
MODES = ("shared", "independent")
GENERATOR = "philox4x64-10"
MAX_SEED = 2**64  # the first word of Philox's key; the second is 0


@dataclass(frozen=True)
class MaskEntry:
    """One stochastic layer call's place in a pass row: values [offset, offset + size)."""

    offset: int
    shape: Tuple[int, ...]  # the layer's random tensor for one pass, without the rows axis
    distribution: str  # "uniform" or "normal"

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))


@dataclass(frozen=True)
class MaskLayout:
    floats_per_pass: int
    entries: Tuple[MaskEntry, ...]

    @property
    def bytes_per_pass(self) -> int:
        return 4 * self.floats_per_pass


def check_mode(mode) -> str:
    if mode not in MODES:
        raise InputError(f"masks must be one of {', '.join(MODES)}, got {mode!r}")
    return mode


def pass_words(seed: int, first: int, count: int, size: int) -> np.ndarray:
    """[count, size] uint64: pass t's words are Philox4x64-10 with key (seed, 0) and counter
    (0, t, 0, 0), the words of blocks 1, 2, ... in order (numpy's Philox adds 1 to the counter's
    first word before each block)."""
    key = np.array([seed, 0], dtype=np.uint64)
    words = np.empty((count, size), dtype=np.uint64)
    for row, t in enumerate(range(first, first + count)):
        words[row] = np.random.Philox(key=key, counter=np.array([0, t, 0, 0], dtype=np.uint64)).random_raw(size)
    return words


def uniform(words: np.ndarray) -> np.ndarray:
    """The top 24 bits as float32 on [0, 1): every value is exact, as a float32 draw is."""
    return ((words >> np.uint64(40)).astype(np.float32) * np.float32(2.0**-24))


def normal(words: np.ndarray) -> np.ndarray:
    """Box-Muller on one word: u1 = (high 32 bits + 1) / 2**32 in (0, 1], u2 = low 32 bits / 2**32;
    z = sqrt(-2 ln u1) cos(2 pi u2), computed in float64, rounded to float32."""
    u1 = ((words >> np.uint64(32)).astype(np.float64) + 1.0) * 2.0**-32
    u2 = (words & np.uint64(0xFFFFFFFF)).astype(np.float64) * 2.0**-32
    return (np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * np.pi * u2)).astype(np.float32)


def draw(layout: MaskLayout, seed: int, first: int, count: int) -> np.ndarray:
    """Passes first .. first + count - 1 of the set `seed`: float32 [count, floats_per_pass]."""
    words = pass_words(seed, first, count, layout.floats_per_pass)
    out = uniform(words)
    for entry in layout.entries:
        if entry.distribution == "normal":
            columns = slice(entry.offset, entry.offset + entry.size)
            out[:, columns] = normal(words[:, columns])
    return out


def control_feeds(passes: int, stochastic: bool = True, masks: Optional[np.ndarray] = None,
                  floats_per_pass: int = 0) -> dict:
    """The graph's inputs besides the model's: passes, stochastic and masks (None: an empty set,
    no rows, so the graph draws independent masks itself)."""
    if masks is None:
        masks = np.zeros((0, floats_per_pass), dtype=np.float32)
    return {"passes": np.array(passes, dtype=np.int64), "stochastic": np.array(bool(stochastic)), MASKS: masks}


def layout_from_metadata(meta: dict, layers: Sequence[dict]) -> Optional[MaskLayout]:
    """The layout a format 3 file declares, or None (older formats, or a file whose noise shapes
    depend on the input size). Raises ValueError naming what is wrong."""
    spec = meta.get("masks")
    if spec is None:
        return None
    if not isinstance(spec, dict) or spec.get("generator") != GENERATOR:
        raise ValueError(f"masks must name the generator {GENERATOR}")
    total = spec.get("floats_per_pass")
    if not is_int(total) or total < 0:
        raise ValueError("masks.floats_per_pass must be an integer >= 0")
    entries, end = [], 0
    for layer in layers:
        if not isinstance(layer, dict):
            raise ValueError("each stochastic layer must be an object")
        offset, shape = layer.get("mask_offset"), layer.get("mask_shape")
        if not is_int(offset) or offset != end \
                or not isinstance(shape, list) \
                or not all(is_int(d) and d >= 1 for d in shape):
            raise ValueError(f"stochastic layer {layer.get('name')!r}: mask_offset and mask_shape must "
                             "place its masks right after the previous layer's")
        entry = MaskEntry(offset, tuple(shape), str(layer.get("distribution")))
        end += entry.size
        entries.append(entry)
    if end != total:
        raise ValueError(f"masks.floats_per_pass is {total} but the layers' masks take {end}")
    return MaskLayout(total, tuple(entries))
