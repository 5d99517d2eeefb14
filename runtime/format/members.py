"""Deep ensembles in one file: the `members` field (docs/FORMAT.md: Members).

An ensemble file holds K members side by side; each pass runs all of them, so its samples are
[T * K, B, ...], row t * K + k being pass t of member k. In a shared mask set member k's columns
(its stochastic layers' values, `mask_offset` to `mask_offset + mask_floats`) are drawn from its own
seed, member_seed(mask seed, k): member k of an ensemble run with mask seed s gives exactly the
samples of member k exported alone and run with mask seed member_seed(s, k).
"""

from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import numpy as np

from ..checks import is_int
from .mask_sets import MaskEntry, MaskLayout, draw as draw_set

# Member k's seed is the mask seed plus k times this odd constant (2**64 / the golden ratio, as in
# SplitMix64), modulo 2**64: distinct for every member, member 0's is the mask seed itself, and any
# binding computes it with 64-bit integers (examples/lib/mcdrop.mjs).
MEMBER_SEED_STEP = 0x9E3779B97F4A7C15
MAX_MEMBERS = 64


@dataclass(frozen=True)
class Member:
    stochastic_layers: int
    mask_offset: int
    mask_floats: int


def member_seed(seed: int, member: int) -> int:
    return (int(seed) + member * MEMBER_SEED_STEP) % 2**64


def read_members(meta: dict, layout: Optional[MaskLayout]) -> Optional[Tuple[Member, ...]]:
    """The file's members, or None for a single model. Raises ValueError naming what is wrong:
    the members' layers and mask columns must tile the file's, in order."""
    value = meta.get("members")
    if value is None:
        return None
    if not isinstance(value, list) or not 2 <= len(value) <= MAX_MEMBERS:
        raise ValueError(f"members must be a list of 2 to {MAX_MEMBERS} members")
    members, layers, floats = [], 0, 0
    for k, entry in enumerate(value):
        fields = [entry.get(key) if isinstance(entry, dict) else None
                  for key in ("stochastic_layers", "mask_offset", "mask_floats")]
        if not all(is_int(v) and v >= 0 for v in fields) or fields[1] != floats:
            raise ValueError(f"member {k}: stochastic_layers, mask_offset and mask_floats must be integers, "
                             "its mask columns right after the previous member's")
        members.append(Member(*fields))
        layers += fields[0]
        floats += fields[2]
    if layers != len(meta.get("stochastic_layers") or ()):
        raise ValueError(f"the members' {layers} stochastic layers are not the file's")
    if layout is not None and floats != layout.floats_per_pass:
        raise ValueError(f"the members' masks take {floats} floats per pass, the file's {layout.floats_per_pass}")
    return tuple(members)


def member_layout(layout: MaskLayout, member: Member) -> MaskLayout:
    """Member k's part of the file's layout, as its own file would have it."""
    end = member.mask_offset + member.mask_floats
    return MaskLayout(member.mask_floats, tuple(MaskEntry(e.offset - member.mask_offset, e.shape, e.distribution)
                                                for e in layout.entries if member.mask_offset <= e.offset < end))


def draw(layout: MaskLayout, members: Optional[Sequence[Member]], seed: int, first: int, count: int) -> np.ndarray:
    """Passes first .. first + count - 1 of the set `seed` (runtime/format/mask_sets.py's draw for
    a single model; for an ensemble, each member's columns from member_seed(seed, k))."""
    if not members:
        return draw_set(layout, seed, first, count)
    return np.concatenate([draw_set(member_layout(layout, m), member_seed(seed, k), first, count)
                           for k, m in enumerate(members)], axis=1)


def members_of(info) -> Optional[Tuple[Member, ...]]:
    """read_members of a loaded file (runtime/format/metadata.py's ModelInfo); a bad field is a ModelFileError."""
    from ..errors import ModelFileError

    try:
        return read_members(info.metadata, info.mask_layout)
    except ValueError as err:
        raise ModelFileError(f"{info.path}: bad 'members' metadata: {err}") from None
